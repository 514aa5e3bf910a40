"""Megatron-LM / Megatron-Core ``OptimizerParamScheduler``, exactly.

Megatron counts *samples*: its constructor calls ``step(0)`` and each successful
iteration calls ``step(increment=global_batch_size)`` after the optimizer step, so
optimizer update ``k`` (0-based) uses ``get_lr`` at ``num_steps = k * global_batch_size``.
Warmup given as ``lr_warmup_fraction`` is a fraction of the decay steps and may be
a non-integer number of samples, as in Megatron.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from .._blocks import ScaleSteps, WeightDecaySchedule
from .._shapes import DECAY_STYLES, WSD_STYLES, warmup_decay
from ._common import ScheduleSet, check_keys


@register
class MegatronLR(Schedule):
    """Megatron's learning rate as a function of the update index ``k``.

    All step arguments are in samples (Megatron's ``num_steps``); ``n = k *
    global_batch_size``. The formula is ``npadam.schedules._shapes.warmup_decay``
    (copied operation for operation from ``OptimizerParamScheduler.get_lr``).
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
        n = (k * p["global_batch_size"]).astype(np.float64)
        return warmup_decay(n, init=p["init_lr"], peak=p["max_lr"], final=p["min_lr"],
                            warmup=p["lr_warmup_steps"], decay=float(p["lr_decay_steps"]),
                            style=p["lr_decay_style"], wsd_decay=float(p["wsd_decay_steps"] or 0),
                            wsd_style=p["lr_wsd_decay_style"])


_KEYS = ("lr", "min_lr", "lr_decay_style", "lr_decay_iters", "lr_warmup_iters", "lr_warmup_fraction",
         "lr_warmup_init", "lr_wsd_decay_style", "lr_wsd_decay_iters", "train_iters", "weight_decay",
         "start_weight_decay", "end_weight_decay", "weight_decay_incr_style", "global_batch_size",
         "train_samples", "lr_decay_samples", "lr_warmup_samples", "lr_wsd_decay_samples",
         "micro_batch_size", "override_opt_param_scheduler", "use_checkpoint_opt_param_scheduler")


def _get(cfg: Mapping[str, Any], key: str, default: Any = None) -> Any:
    value = cfg.get(key, default)
    return default if value is None else value


def from_megatron(config: Mapping[str, Any]) -> ScheduleSet:
    """Build Megatron's lr and weight-decay schedules from its argument names.

    Iteration-based (``train_iters``) and sample-based (``train_samples``) training
    are both supported, as in ``megatron.training.get_optimizer_param_scheduler``.
    Hyphenated names (``lr-decay-style``) are accepted too.
    """
    cfg = {str(k).replace("-", "_"): v for k, v in config.items()}
    check_keys("megatron", cfg, _KEYS)
    if "lr" not in cfg:
        raise ValueError("megatron config needs 'lr'")
    gbs = V.integer("global_batch_size", _get(cfg, "global_batch_size", 1), lo=1)
    frac = cfg.get("lr_warmup_fraction")
    if frac is not None:
        frac = V.real("lr_warmup_fraction", frac, lo=0.0, hi=1.0)
    if cfg.get("train_iters") is not None:
        train_iters = V.integer("train_iters", cfg["train_iters"], lo=1)
        if frac is not None and _get(cfg, "lr_warmup_iters", 0):
            raise ValueError("can only specify one of lr_warmup_fraction and lr_warmup_iters")
        decay_iters = V.integer("lr_decay_iters", _get(cfg, "lr_decay_iters", train_iters), lo=1)
        decay_steps = decay_iters * gbs
        wd_steps = train_iters * gbs
        wsd = cfg.get("lr_wsd_decay_iters")
        wsd_steps = None if wsd is None else V.integer("lr_wsd_decay_iters", wsd, lo=0) * gbs
        warmup = frac * decay_steps if frac is not None else \
            V.integer("lr_warmup_iters", _get(cfg, "lr_warmup_iters", 0), lo=0) * gbs
    elif cfg.get("train_samples") is not None:
        train_samples = V.integer("train_samples", cfg["train_samples"], lo=1)
        if frac is not None and _get(cfg, "lr_warmup_samples", 0):
            raise ValueError("can only specify one of lr_warmup_fraction and lr_warmup_samples")
        decay_steps = V.integer("lr_decay_samples", _get(cfg, "lr_decay_samples", train_samples), lo=1)
        wd_steps = train_samples
        wsd = cfg.get("lr_wsd_decay_samples")
        wsd_steps = None if wsd is None else V.integer("lr_wsd_decay_samples", wsd, lo=0)
        warmup = frac * decay_steps if frac is not None else \
            V.integer("lr_warmup_samples", _get(cfg, "lr_warmup_samples", 0), lo=0)
    else:
        raise ValueError("megatron config needs 'train_iters' (or 'train_samples')")
    if cfg.get("override_opt_param_scheduler") and cfg.get("use_checkpoint_opt_param_scheduler"):
        raise ValueError("both override_opt_param_scheduler and use_checkpoint_opt_param_scheduler are set")

    lr = MegatronLR(max_lr=cfg["lr"], min_lr=_get(cfg, "min_lr", 0.0), lr_warmup_steps=warmup,
                    lr_decay_steps=decay_steps, lr_decay_style=_get(cfg, "lr_decay_style", "linear"),
                    init_lr=_get(cfg, "lr_warmup_init", 0.0), wsd_decay_steps=wsd_steps,
                    lr_wsd_decay_style=_get(cfg, "lr_wsd_decay_style", "exponential"), global_batch_size=gbs)

    style = _get(cfg, "weight_decay_incr_style", "constant")
    V.choice("weight_decay_incr_style", style, ("constant", "linear", "cosine"))
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
    wd = WeightDecaySchedule(start, end, wd_steps, style)
    return ScheduleSet(lr=lr, weight_decay=wd if gbs == 1 else ScaleSteps(wd, gbs))
