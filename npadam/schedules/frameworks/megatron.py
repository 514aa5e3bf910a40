"""Megatron-LM / Megatron-Core ``OptimizerParamScheduler`` (megatron-core 0.16), exactly.

Megatron counts *samples*: its constructor calls ``step(0)`` and each successful
iteration calls ``step(increment=global_batch_size)`` after the optimizer step, so
optimizer update ``k`` (0-based) uses ``get_lr`` at ``num_steps = k * global_batch_size``.
Warmup given as ``lr_warmup_fraction`` is a fraction of the decay steps and may be
a non-integer number of samples, as in Megatron.

Per param group (``step()`` writes every group), megatron-core 0.16 reads ``max_lr``,
``min_lr`` (``get_lr``), ``start_wd``, ``end_wd`` (``get_wd``) and ``wd_mult`` from the
group, each defaulting to the scheduler's own value::

    group["lr"] = get_lr(group)                         # warmup from the shared init_lr
    group["weight_decay"] = get_wd(group) * group.get("wd_mult", 1.0)

``lr_mult`` is *not* read since 0.16 (0.15 and earlier multiplied the lr by it). With a
batch-size ramp-up (``rampup_batch_size``) the increment per iteration grows; see
``_megatron_rampup``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from .._blocks import Multiply, ScaleSteps, WeightDecaySchedule
from .._shapes import DECAY_STYLES, WSD_STYLES, warmup_decay
from ._common import GroupSchedules, ScheduleSet, check_keys
from ._megatron_rampup import SAMPLE_CAP, MegatronBatchRampup, check_rampup


@register
class MegatronLR(Schedule):
    """Megatron's learning rate as a function of the update index ``k``.

    All step arguments are in samples (Megatron's ``num_steps``); ``n = k *
    global_batch_size`` (saturating at 2**62 samples, where every style is constant). The
    formula is ``npadam.schedules._shapes.warmup_decay`` (copied operation for operation from
    ``OptimizerParamScheduler.get_lr``).
    """

    kind = "megatron_lr"

    def __init__(self, max_lr: float, min_lr: float, lr_warmup_steps: float, lr_decay_steps: int,
                 lr_decay_style: str = "linear", init_lr: float = 0.0, wsd_decay_steps: int | None = None,
                 lr_wsd_decay_style: str = "exponential", global_batch_size: int = 1) -> None:
        d = dict(max_lr=V.real("lr", max_lr), min_lr=V.real("min_lr", min_lr, lo=0.0),
                 lr_warmup_steps=V.real("lr_warmup_steps", lr_warmup_steps, lo=0.0),
                 lr_decay_steps=V.integer("lr_decay_steps", lr_decay_steps),
                 lr_decay_style=V.choice("lr_decay_style", lr_decay_style, DECAY_STYLES),
                 init_lr=V.real("lr_warmup_init", init_lr),
                 wsd_decay_steps=None if wsd_decay_steps is None else V.integer("wsd_decay_steps", wsd_decay_steps),
                 lr_wsd_decay_style=V.choice("lr_wsd_decay_style", lr_wsd_decay_style, WSD_STYLES),
                 global_batch_size=V.integer("global_batch_size", global_batch_size, lo=1))
        if d["max_lr"] < d["min_lr"]:
            raise ValueError(f"Megatron requires lr >= min_lr, got lr={max_lr}, min_lr={min_lr}")
        if d["init_lr"] > d["max_lr"]:
            raise ValueError(f"Megatron requires lr_warmup_init <= lr, got lr_warmup_init={init_lr}, lr={max_lr}")
        if d["lr_decay_steps"] <= 0:
            raise ValueError(f"Megatron requires lr_decay_steps > 0, got {lr_decay_steps}")
        if d["lr_warmup_steps"] >= d["lr_decay_steps"]:
            raise ValueError(f"Megatron requires warmup steps < decay steps, got warmup "
                             f"{lr_warmup_steps} >= decay {lr_decay_steps} (in samples)")
        if d["lr_decay_style"] == "WSD":
            if d["wsd_decay_steps"] is None:
                raise ValueError("lr_decay_style 'WSD' needs lr_wsd_decay_iters (or lr_wsd_decay_samples)")
            # Megatron does not bound it: 0 holds the peak until lr_decay_steps (then min_lr);
            # more than lr_decay_steps starts the annealing part-way (before step 0).
            if d["wsd_decay_steps"] < 0:
                raise ValueError(f"WSD decay steps must be >= 0, got {wsd_decay_steps}")
        self._store(**d)

    @property
    def horizon(self) -> int | None:
        return -(-self._params["lr_decay_steps"] // self._params["global_batch_size"])

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        gbs = p["global_batch_size"]
        n = (np.minimum(k, SAMPLE_CAP // gbs) * gbs).astype(np.float64)
        return warmup_decay(n, init=p["init_lr"], peak=p["max_lr"], final=p["min_lr"],
                            warmup=p["lr_warmup_steps"], decay=float(p["lr_decay_steps"]),
                            style=p["lr_decay_style"], wsd_decay=float(p["wsd_decay_steps"] or 0),
                            wsd_style=p["lr_wsd_decay_style"])


_KEYS = ("lr", "min_lr", "lr_decay_style", "lr_decay_iters", "lr_warmup_iters", "lr_warmup_fraction",
         "lr_warmup_init", "lr_wsd_decay_style", "lr_wsd_decay_iters", "train_iters", "weight_decay",
         "start_weight_decay", "end_weight_decay", "weight_decay_incr_style", "global_batch_size",
         "train_samples", "lr_decay_samples", "lr_warmup_samples", "lr_wsd_decay_samples",
         "micro_batch_size", "override_opt_param_scheduler", "use_checkpoint_opt_param_scheduler",
         "decoupled_lr", "decoupled_min_lr", "param_groups", "rampup_batch_size", "warmup")

#: What OptimizerParamScheduler reads from a param group (0.16), and ``lr_mult`` (must be 1).
GROUP_KEYS = ("max_lr", "min_lr", "start_wd", "end_wd", "wd_mult", "lr_mult")
#: Keys of megatron-core's group dicts that the scheduler does not read (accepted, ignored).
GROUP_BOOKKEEPING = ("params", "param_names", "is_expert_parallel", "default_config", "is_decoupled_lr")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def _steps(cfg: Mapping[str, Any], gbs: int) -> dict[str, Any]:
    """``get_optimizer_param_scheduler``'s step counts, in samples: ``decay``, ``warmup``,
    ``wsd`` (or None), ``wd`` (weight-decay increment steps)."""
    frac = cfg.get("lr_warmup_fraction")
    if frac is not None:
        frac = V.real("lr_warmup_fraction", frac, lo=0.0, hi=1.0)
    if cfg.get("train_iters") is not None:
        train_iters = V.integer("train_iters", cfg["train_iters"], lo=1)
        if frac is not None and _get(cfg, "lr_warmup_iters", 0):
            raise ValueError("can only specify one of lr_warmup_fraction and lr_warmup_iters")
        if cfg.get("rampup_batch_size") is not None:
            raise ValueError("rampup_batch_size needs sample-based training (train_samples): Megatron-LM asserts "
                             "'expected no batch-size rampup for iteration-based training'")
        decay = V.integer("lr_decay_iters", _get(cfg, "lr_decay_iters", train_iters), lo=1) * gbs
        wsd = cfg.get("lr_wsd_decay_iters")
        wsd = None if wsd is None else V.integer("lr_wsd_decay_iters", wsd, lo=0) * gbs
        warmup = frac * decay if frac is not None else \
            V.integer("lr_warmup_iters", _get(cfg, "lr_warmup_iters", 0), lo=0) * gbs
        return dict(decay=decay, warmup=warmup, wsd=wsd, wd=train_iters * gbs)
    if cfg.get("train_samples") is not None:
        train_samples = V.integer("train_samples", cfg["train_samples"], lo=1)
        if frac is not None and _get(cfg, "lr_warmup_samples", 0):
            raise ValueError("can only specify one of lr_warmup_fraction and lr_warmup_samples")
        decay = V.integer("lr_decay_samples", _get(cfg, "lr_decay_samples", train_samples), lo=1)
        wsd = cfg.get("lr_wsd_decay_samples")
        wsd = None if wsd is None else V.integer("lr_wsd_decay_samples", wsd, lo=0)
        warmup = frac * decay if frac is not None else \
            V.integer("lr_warmup_samples", _get(cfg, "lr_warmup_samples", 0), lo=0)
        return dict(decay=decay, warmup=warmup, wsd=wsd, wd=train_samples)
    raise ValueError("megatron config needs 'train_iters' (or 'train_samples')")


def _weight_decay(cfg: Mapping[str, Any]) -> tuple[float, float, str]:
    """The scheduler's ``(start_wd, end_wd, wd_incr_style)``, as Megatron-LM's ``validate_args``
    derives them (``constant``: both ``weight_decay``)."""
    style = V.choice("weight_decay_incr_style", _get(cfg, "weight_decay_incr_style", "constant"),
                     ("constant", "linear", "cosine"))
    start, end = cfg.get("start_weight_decay"), cfg.get("end_weight_decay")
    if style == "constant":
        if start is not None or end is not None:
            if start is None or end is None or start != end:
                raise ValueError(f"weight_decay_incr_style 'constant' needs start_weight_decay == "
                                 f"end_weight_decay (or neither), got {start} and {end}")
        start = end = _get(cfg, "weight_decay", 0.01) if start is None else start
    elif start is None or end is None:
        raise ValueError(f"weight_decay_incr_style {style!r} needs start_weight_decay and end_weight_decay")
    start = V.real("start_weight_decay", start, lo=0.0)
    end = V.real("end_weight_decay", end, lo=0.0)
    if end < start:
        raise ValueError(f"Megatron requires end_weight_decay >= start_weight_decay, got {end} < {start}")
    return start, end, style


def _groups(cfg: Mapping[str, Any]) -> list[tuple[str, dict[str, Any]]] | None:
    """``(label, overrides)`` per param group: ``param_groups`` as given, else the default and the
    decoupled group when ``decoupled_lr`` is set, else None (one group, a ScheduleSet)."""
    dlr, dmin = cfg.get("decoupled_lr"), cfg.get("decoupled_min_lr")
    if dlr is not None:
        dlr = V.real("decoupled_lr", dlr, lo=0.0)
    if dmin is not None:
        dmin = V.real("decoupled_min_lr", dmin, lo=0.0)
        if dlr is None:
            raise ValueError("decoupled_min_lr is set without decoupled_lr (Megatron ignores it then)")
    groups = cfg.get("param_groups")
    if groups is None:
        if dlr is None:
            return None
        decoupled = {"max_lr": dlr} if dmin is None else {"max_lr": dlr, "min_lr": dmin}
        return [("default group", {}), ("decoupled group (decoupled_lr / decoupled_min_lr)", decoupled)]
    if dlr is not None:
        raise ValueError("decoupled_lr / decoupled_min_lr and param_groups are both given: the groups carry "
                         "every group's max_lr / min_lr (config.param_groups(params, optimizer_config) puts "
                         "decoupled_lr into the embedding/output groups); drop one")
    if isinstance(groups, (str, bytes, Mapping)) or not isinstance(groups, Sequence):
        raise TypeError(f"param_groups must be a list of group dicts, got {type(groups).__name__}")
    if not groups:
        raise ValueError("param_groups is empty: give one dict per param group ({} for the defaults)")
    out = []
    for i, g in enumerate(groups):
        if not isinstance(g, Mapping):
            raise TypeError(f"param_groups[{i}] must be a dict, got {type(g).__name__}")
        g = {str(k).replace("-", "_"): v for k, v in g.items()}
        for key in ("lr", "weight_decay"):
            if key in g:
                raise ValueError(f"param_groups[{i}]: {key!r} is written by the scheduler at every step; give "
                                 + ("max_lr / min_lr" if key == "lr" else "start_wd / end_wd / wd_mult"))
        check_keys(f"megatron param_groups[{i}]", g, GROUP_KEYS + GROUP_BOOKKEEPING)
        mult = g.get("lr_mult")
        if mult is not None and V.real(f"param_groups[{i}] lr_mult", mult) != 1.0:
            raise ValueError(f"param_groups[{i}]: lr_mult={mult!r} has no effect in megatron-core >= 0.16 (its "
                             "OptimizerParamScheduler no longer reads it; 0.15 multiplied the lr by it): scale "
                             "max_lr / min_lr instead")
        out.append((f"param_groups[{i}]", {k: g[k] for k in GROUP_KEYS[:5] if g.get(k) is not None}))
    return out


def from_megatron(config: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """Build Megatron's lr and weight-decay schedules from its argument names.

    Iteration-based (``train_iters``) and sample-based (``train_samples``) training
    are both supported, as in ``megatron.training.get_optimizer_param_scheduler``.
    Hyphenated names (``lr-decay-style``) are accepted too.

    Per-group schedules (a ``GroupSchedules``, one ScheduleSet per group, in group order):

    - ``param_groups``: a list of group dicts with the keys the scheduler reads
      (``max_lr``, ``min_lr``, ``start_wd``, ``end_wd``, ``wd_mult``; unset or None: the
      scheduler's value), as megatron-core's ``_get_param_groups`` makes them
      (``npadam.config.param_groups`` does the same); its bookkeeping keys are ignored and
      ``lr_mult`` must be 1. Group ``i``'s lr is Megatron's formula with the group's
      ``max_lr``/``min_lr`` (warming up from the shared ``lr_warmup_init``), its weight
      decay ``wd_mult`` times the increment from ``start_wd`` to ``end_wd``.
    - ``decoupled_lr`` (and ``decoupled_min_lr``, default ``min_lr``) without
      ``param_groups``: two groups, ``[default, decoupled]`` in megatron-core's order (the
      default group sorts first); both with the full weight decay, as the no-weight-decay
      groups are these with ``weight_decay`` 0.

    ``rampup_batch_size = [start, increment, ramp_samples]`` (sample-based training only,
    as Megatron-LM asserts) wraps each schedule in ``MegatronBatchRampup``: update ``k`` uses
    the samples consumed before iteration ``k`` instead of ``k * global_batch_size``. The
    legacy ``warmup`` argument is rejected as Megatron-LM rejects it (None is accepted).
    """
    cfg = {str(k).replace("-", "_"): v for k, v in config.items()}
    check_keys("megatron", cfg, _KEYS)
    if "lr" not in cfg:
        raise ValueError("megatron config needs 'lr'")
    if cfg.get("warmup") is not None:
        raise ValueError(f"warmup={cfg['warmup']!r}: Megatron-LM rejects the legacy --warmup ('--warmup argument "
                         "is no longer valid, use --lr-warmup-fraction instead'); use lr_warmup_fraction, "
                         "lr_warmup_iters or lr_warmup_samples")
    gbs = V.integer("global_batch_size", _get(cfg, "global_batch_size", 1), lo=1)
    steps = _steps(cfg, gbs)
    ramp = cfg.get("rampup_batch_size")
    if ramp is not None:
        ramp = list(check_rampup(ramp, gbs))
    if cfg.get("override_opt_param_scheduler") and cfg.get("use_checkpoint_opt_param_scheduler"):
        raise ValueError("both override_opt_param_scheduler and use_checkpoint_opt_param_scheduler are set")
    start_wd, end_wd, wd_style = _weight_decay(cfg)
    lr_args = dict(lr_warmup_steps=steps["warmup"], lr_decay_steps=steps["decay"],
                   lr_decay_style=_get(cfg, "lr_decay_style", "linear"), init_lr=_get(cfg, "lr_warmup_init", 0.0),
                   wsd_decay_steps=steps["wsd"], lr_wsd_decay_style=_get(cfg, "lr_wsd_decay_style", "exponential"),
                   global_batch_size=1 if ramp else gbs)

    def in_samples(s: Schedule, per_iteration: bool) -> Schedule:
        """``s`` (a function of Megatron's samples) as a function of the update index."""
        if ramp is not None:
            return MegatronBatchRampup(s, gbs, ramp)
        return s if per_iteration or gbs == 1 else ScaleSteps(s, gbs)

    def group_set(max_lr: float, min_lr: float, start: float, end: float, wd_mult: float) -> ScheduleSet:
        lr = in_samples(MegatronLR(max_lr=max_lr, min_lr=min_lr, **lr_args), per_iteration=True)
        wd = in_samples(WeightDecaySchedule(start, end, steps["wd"], wd_style), per_iteration=False)
        return ScheduleSet(lr=lr, weight_decay=wd if wd_mult == 1.0 else Multiply(wd, wd_mult))

    max_lr, min_lr = cfg["lr"], _get(cfg, "min_lr", 0.0)
    default = group_set(max_lr, min_lr, start_wd, end_wd, 1.0)  # checks the scheduler's own values
    groups = _groups(cfg)
    if groups is None:
        return default
    sets = []
    for label, g in groups:
        try:
            g_max = V.real("max_lr", g.get("max_lr", max_lr))
            g_min = V.real("min_lr", g.get("min_lr", min_lr), lo=0.0)
            g_start = V.real("start_wd", g.get("start_wd", start_wd), lo=0.0)
            g_end = V.real("end_wd", g.get("end_wd", end_wd), lo=0.0)
            g_mult = V.real("wd_mult", g.get("wd_mult", 1.0), lo=0.0)
            if wd_style == "constant" and g_start != g_end:
                raise ValueError(f"weight_decay_incr_style 'constant' needs start_wd == end_wd (Megatron's get_wd "
                                 f"asserts it), got {g_start} and {g_end}")
            if g_end < g_start:
                raise ValueError(f"end_wd ({g_end}) is below start_wd ({g_start}): the weight decay would fall")
            sets.append(group_set(g_max, g_min, g_start, g_end, g_mult))
        except (ValueError, TypeError) as exc:
            raise type(exc)(f"megatron {label}: {exc}") from None
    return GroupSchedules(sets)
