"""ColossalAI's ``colossalai.nn.lr_scheduler``, exactly as the real objects run.

Every ColossalAI scheduler takes the optimizer's lr as its base ``lr`` and, like
torch's, has already made its initial step when constructed: update ``t`` (0-based)
uses the scheduler at ``last_epoch = t``. Five types are torch's own classes under
ColossalAI's signatures and become ``TorchLR`` / blocks: ``CosineAnnealingLR``
(``T_max = total_steps``), ``StepLR``, ``ExponentialLR``, ``MultiStepLR`` and
``OneCycleLR`` (``max_lr`` = the optimizer's lr; beta1 cycled with ``cycle_momentum``).
``PolynomialLR`` is ``polynomial``; ``LinearWarmupLR`` is ``ColossalAILinearWarmup``.

The others wrap a torch scheduler (built first, on the same optimizer) in a
``WarmupScheduler`` (``(t + 1) / W * lr`` for ``t < W``), a ``DelayerScheduler``
(``lr`` for ``t < D``) or a ``WarmupDelayerScheduler`` (both). At the hand-over step
the wrapper calls the inner scheduler's ``get_lr()`` at its ``last_epoch = 0``
without stepping it, and steps it from then on. Two inner schedulers react to that:

- torch's ``CosineAnnealingLR`` evaluates its *chained* formula on the lr the
  wrapper left in the optimizer (``lr``), so every step ``0 <= e <= A`` of the
  cosine (``A = T_max``) has ``lr - eta_min`` scaled by ``c = 2 / (1 + cos(pi / A))``
  (+33% at ``A = 3``, +2.5% at 10, +0.97% at 16, +2.5e-6 at 1000; at ``A = 1`` torch's
  restart branch gives ``2 lr - eta_min`` at ``e = 0`` and the closed form after);
  past ``A`` the restart branch puts it back on the (periodic) closed form. This is
  ``CosineAnnealingWarmupLR``, ``FlatAnnealingLR`` and ``FlatAnnealingWarmupLR``:
  ``ColossalAICosineWarmup``.
- torch's ``MultiStepLR`` multiplies the optimizer's lr by ``gamma`` at a milestone
  0. With ``warmup_steps = 0`` its constructor already did that, and the hand-over
  (at construction too) does it again: ``MultiStepWarmupLR`` with a milestone at
  ``warmup_steps = 0`` applies ``gamma**2`` (``gamma**(2n)`` for a milestone repeated
  ``n`` times). ``ColossalAIWarmup`` around torch's ``MultiStepLR`` with that
  milestone doubled.

``MultiStepWarmupLR`` drops the milestones inside the warmup and shifts the others by
``W``. ``PolynomialWarmupLR``'s inner scheduler is ColossalAI's own closed-form
``PolynomialLR``: no hand-over effect (``ColossalAIWarmup`` around ``polynomial``).

Most ColossalAI constructors end in ``**kwargs`` and drop an unknown key without a word
(``eta_min`` on ``FlatAnnealingLR``, ``three_phase`` on ``OneCycleLR``); npadam names it
instead, since the real run did not use it.
The ``"colossalai"`` preset reproduces the real objects (``"exact": True``);
``"exact": False`` on the four hand-over types gives the intended closed forms.
Tests: ``tests/test_parity_colossalai.py``, against ColossalAI's classes re-stated on
torch's own schedulers, stepped as a training loop steps them.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from .._blocks import Constant, Polynomial
from ._common import GroupSchedules, ScheduleSet, check_keys, require
from .torch import TorchLR, from_torch


@register
class ColossalAICosineWarmup(Schedule):
    """ColossalAI's warmup / flat / cosine family: ``CosineAnnealingWarmupLR`` (``flat_steps = 0``),
    ``FlatAnnealingLR`` (``warmup_steps = 0``, ``eta_min = 0``) and ``FlatAnnealingWarmupLR``.

    With ``W = warmup_steps``, ``F = flat_steps``, ``A = total_steps - W - F`` (the cosine's
    ``T_max``) and ``e = t - W - F``: ``t < W``: ``(t + 1) / W * lr``; ``W <= t < W + F``: ``lr``;
    then ``eta_min + (lr - eta_min) * (1 + cos(pi e / A)) / 2``, periodic past ``A`` like torch's
    cosine. ``exact`` adds ColossalAI's hand-over (module docstring): on ``0 <= e <= A``,
    ``lr - eta_min`` is scaled by ``2 / (1 + cos(pi / A))`` (``A = 1``: ``2 lr - eta_min`` at
    ``e = 0``). ``exact`` defaults to False here so that schedules saved before it existed keep
    their meaning; the ``"colossalai"`` preset of ``from_config`` sets it. ``flat_steps`` is
    stored only when non-zero (older dicts have none).
    """

    kind = "colossalai_cosine_warmup"

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0,
                 exact: bool = False, flat_steps: int = 0) -> None:
        d = dict(lr=V.real("lr", lr), total_steps=V.integer("total_steps", total_steps, lo=1),
                 warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0), eta_min=V.real("eta_min", eta_min),
                 exact=V.flag("exact", exact))
        flat = V.integer("flat_steps", flat_steps, lo=0)
        if d["warmup_steps"] + flat >= d["total_steps"]:
            what = f"warmup_steps + flat_steps ({warmup_steps} + {flat_steps})" if flat else \
                f"warmup_steps ({warmup_steps})"
            raise ValueError(f"{what} must be < total_steps ({total_steps}): the cosine's "
                             "T_max = total_steps - warmup_steps - flat_steps must be positive")
        self._store(**d, **({"flat_steps": flat} if flat else {}))

    @property
    def horizon(self) -> int | None:
        return self._params["total_steps"]

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        W, F, base, eta = p["warmup_steps"], p.get("flat_steps", 0), p["lr"], p["eta_min"]
        t = k.astype(np.float64)
        out = np.full(t.shape, base)  # the flat phase: the wrapper returns its base lr
        w = t < W
        out[w] = (t[w] + 1) / W * base
        late = t >= W + F
        e = t[late] - (W + F)
        tmax = p["total_steps"] - W - F
        cosine = eta + (base - eta) * (1 + np.cos(np.pi * e / tmax)) / 2
        if p["exact"]:  # ColossalAI's hand-over through torch's chained formula (module docstring)
            if tmax == 1:
                cosine[e == 0] = 2 * base - eta
            else:
                first = e <= tmax
                cosine[first] = eta + 2 / (1 + np.cos(np.pi / tmax)) * (cosine[first] - eta)
        out[late] = cosine
        return out


@register
class ColossalAIWarmup(Schedule):
    """ColossalAI's ``WarmupScheduler`` around ``after``: ``(t + 1) / W * lr`` for ``t < W``
    (``W = warmup_steps``; non-zero at ``t = 0``, ``lr`` at ``t = W - 1``), then ``after(t - W)``.

    ``lr`` is the optimizer's lr (the wrapper's base lr), not necessarily ``after(0)``.
    """

    kind = "colossalai_warmup"

    def __init__(self, after: Schedule, lr: float, warmup_steps: int) -> None:
        if not isinstance(after, Schedule):
            raise TypeError(f"after must be a Schedule, got {after!r}")
        self._store(after=after, lr=V.real("lr", lr), warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0))

    @property
    def horizon(self) -> int | None:
        h = self._params["after"].horizon
        return None if h is None else self._params["warmup_steps"] + h

    @property
    def limit(self) -> int | None:
        lim = self._params["after"].limit
        return None if lim is None else self._params["warmup_steps"] + lim

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        W = p["warmup_steps"]
        out = np.empty(k.shape)
        w = k < W
        out[w] = (k[w].astype(np.float64) + 1) / W * p["lr"]
        if (~w).any():
            out[~w] = p["after"]._values(k[~w] - W)
        return out


@register
class ColossalAILinearWarmup(Schedule):
    """ColossalAI's ``LinearWarmupLR``: ``(t + 1) / (W + 1) * lr`` for ``t < W``, then
    ``(T - t) / (T - W) * lr`` (``W = warmup_steps``, ``T = total_steps``).

    Not clamped, as in ColossalAI: the lr is 0 at ``t = T`` and negative after it.
    """

    kind = "colossalai_linear_warmup"

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0) -> None:
        d = dict(lr=V.real("lr", lr), total_steps=V.integer("total_steps", total_steps, lo=1),
                 warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0))
        if d["warmup_steps"] >= d["total_steps"]:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps}): "
                             "ColossalAI's LinearWarmupLR divides by total_steps - warmup_steps")
        self._store(**d)

    @property
    def horizon(self) -> int | None:
        return self._params["total_steps"]

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        W, T, base = p["warmup_steps"], p["total_steps"], p["lr"]
        t = k.astype(np.float64)
        return np.where(t < W, (t + 1) / (W + 1) * base, (T - t) / (T - W) * base)


# ColossalAI's own argument names per type (besides the optimizer's "lr" and "last_epoch").
_KWARGS: dict[str, tuple[str, ...]] = {
    "CosineAnnealingLR": ("total_steps", "eta_min"),
    "CosineAnnealingWarmupLR": ("total_steps", "warmup_steps", "eta_min"),
    "FlatAnnealingLR": ("total_steps", "pct_start"),
    "FlatAnnealingWarmupLR": ("total_steps", "warmup_steps", "pct_start", "eta_min"),
    "LinearWarmupLR": ("total_steps", "warmup_steps"),
    "MultiStepLR": ("total_steps", "milestones", "gamma"),
    "MultiStepWarmupLR": ("total_steps", "warmup_steps", "milestones", "gamma"),
    "OneCycleLR": ("total_steps", "pct_start", "anneal_strategy", "cycle_momentum", "base_momentum",
                   "max_momentum", "div_factor", "final_div_factor"),
    "PolynomialLR": ("total_steps", "end_lr", "power"),
    "PolynomialWarmupLR": ("total_steps", "warmup_steps", "end_lr", "power"),
    "StepLR": ("total_steps", "step_size", "gamma"),
    "ExponentialLR": ("total_steps", "gamma"),
    "LambdaLR": ("total_steps", "lr_lambda"),
    "MultiplicativeLR": ("total_steps", "lr_lambda"),
}
_TYPES = tuple(_KWARGS)
# Types whose wrapper's hand-over changes the schedule: these take npadam's "exact" key.
_HAND_OVER = ("CosineAnnealingWarmupLR", "FlatAnnealingLR", "FlatAnnealingWarmupLR", "MultiStepWarmupLR")
# Types without **kwargs (an unknown key is a TypeError there); the others drop it without a word.
_NO_KWARGS = ("CosineAnnealingWarmupLR", "StepLR", "ExponentialLR", "LambdaLR", "MultiplicativeLR")


def _pct_start(value: Any) -> float:
    pct = V.real("pct_start", value)
    if not 0.0 <= pct <= 1.0:
        raise ValueError(f"pct_start must >= 0.0 and <= 1.0, got {value!r}")
    return pct


def _milestones(value: Any) -> list[int]:
    if not isinstance(value, (list, tuple)):
        raise ValueError(f"milestones must be a list of step indices, got {value!r}")
    return [V.integer(f"milestones[{i}]", m, lo=0) for i, m in enumerate(value)]


def _flat_cosine(lr: float, c: dict[str, Any], warmup: int) -> ColossalAICosineWarmup:
    """FlatAnnealing(Warmup)LR: ``flat = int((T - W) * pct_start)``, cosine over the rest."""
    total = V.integer("total_steps", c["total_steps"], lo=1)
    pct = _pct_start(c.get("pct_start", 0.72))
    if warmup >= total:
        raise ValueError(f"warmup_steps ({warmup}) must be < total_steps ({total}): nothing is left to anneal")
    flat = int((total - warmup) * pct)
    if flat == total - warmup:
        raise ValueError(f"pct_start={pct!r} leaves no annealing steps (int({total - warmup} * pct_start) = "
                         f"{flat}): ColossalAI's cosine divides by zero (T_max = 0) at step {total}")
    return ColossalAICosineWarmup(lr, total, warmup, V.real("eta_min", c.get("eta_min", 0.0)),
                                  exact=c["exact"], flat_steps=flat)


def _poly(lr: float, total: int, c: dict[str, Any]) -> Schedule:
    """ColossalAI's PolynomialLR: ``(lr - end_lr) * (1 - min(t, T) / T) ** power + end_lr``."""
    end = V.real("end_lr", c.get("end_lr", 0.0001))
    if end < 0:
        raise ValueError(f"end_lr must >= 0, got {c['end_lr']!r}")
    power = V.real("power", c.get("power", 1.0))
    if power < 0:
        raise ValueError(f"power ({power}) must be >= 0: ColossalAI's PolynomialLR raises ZeroDivisionError at "
                         f"step total_steps (0.0 ** {power})")
    if power == 0:  # x ** 0 == 1 everywhere (0.0 ** 0 too): the lr never moves
        return Constant((lr - end) + end)
    return Polynomial(lr, end, total, power)


def _build_warmup(name: str, lr: float, c: dict[str, Any]) -> Schedule:
    """The WarmupScheduler-based types (PolynomialWarmupLR, MultiStepWarmupLR)."""
    warmup = V.integer("warmup_steps", c.get("warmup_steps", 0), lo=0)
    if name == "PolynomialWarmupLR":
        total = V.integer("total_steps", c["total_steps"], lo=1)
        if warmup >= total:
            raise ValueError(f"warmup_steps ({warmup}) must be < total_steps ({total}): ColossalAI's inner "
                             "PolynomialLR(total_steps - warmup_steps) divides by zero")
        return ColossalAIWarmup(_poly(lr, total - warmup, c), lr, warmup)
    V.integer("total_steps", c["total_steps"], lo=1)  # required and checked; MultiStepWarmupLR ignores it
    if c.get("milestones") is None:
        raise ValueError("ColossalAI MultiStepWarmupLR config is missing required parameter 'milestones' "
                         "(ColossalAI raises TypeError: len(None))")
    ms = _milestones(c["milestones"])
    if not ms:
        raise ValueError("milestones cannot be empty")
    shifted = sorted(m - warmup for m in ms if m >= warmup)  # ColossalAI drops the milestones inside the warmup
    if c["exact"] and warmup == 0:  # the constructor and the hand-over both apply milestone 0 (module docstring)
        shifted = sorted(shifted + [0] * shifted.count(0))
    gamma = V.real("gamma", c.get("gamma", 0.1))
    return ColossalAIWarmup(TorchLR("MultiStepLR", lr, milestones=shifted, gamma=gamma), lr, warmup)


def _build_lr(name: str, lr: float, c: dict[str, Any]) -> Schedule:
    """The lr schedule of every type but OneCycleLR (``c``: the config, ``exact`` filled in)."""
    if name == "CosineAnnealingWarmupLR":
        return ColossalAICosineWarmup(lr, c["total_steps"], c.get("warmup_steps", 0), c.get("eta_min", 0.0),
                                      exact=c["exact"])
    if name == "FlatAnnealingLR":
        return _flat_cosine(lr, c, 0)
    if name == "FlatAnnealingWarmupLR":
        return _flat_cosine(lr, c, V.integer("warmup_steps", c.get("warmup_steps", 0), lo=0))
    if name in ("PolynomialWarmupLR", "MultiStepWarmupLR"):
        return _build_warmup(name, lr, c)
    if name == "LinearWarmupLR":
        return ColossalAILinearWarmup(lr, c["total_steps"], c.get("warmup_steps", 0))
    total = V.integer("total_steps", c["total_steps"], lo=1)
    if name == "PolynomialLR":
        return _poly(lr, total, c)
    if name == "CosineAnnealingLR":
        return TorchLR("CosineAnnealingLR", lr, T_max=total, eta_min=c.get("eta_min", 0.0))
    if name == "MultiStepLR":  # no milestones: torch's Counter(None) is empty, the lr stays
        ms = [] if c.get("milestones") is None else _milestones(c["milestones"])
        return TorchLR("MultiStepLR", lr, milestones=ms, gamma=c.get("gamma", 0.1))
    if name == "StepLR":
        return TorchLR("StepLR", lr, step_size=c.get("step_size", 1), gamma=c.get("gamma", 0.1))
    return TorchLR("ExponentialLR", lr, gamma=c.get("gamma", 1.0))


def _one_cycle(lr: float, c: dict[str, Any]) -> ScheduleSet:
    """torch's OneCycleLR with ``max_lr`` = the optimizer's lr (ColossalAI reads it from the groups)."""
    kw = {k: c[k] for k in _KWARGS["OneCycleLR"] if k in c}
    cycle = V.flag("cycle_momentum", kw.get("cycle_momentum", True))
    sched = TorchLR("OneCycleLR", lr, max_lr=lr, **kw)
    if cycle:
        return ScheduleSet(lr=sched, beta1=TorchLR("OneCycleLR", lr, quantity="momentum", max_lr=lr, **kw))
    return ScheduleSet(lr=sched)


def _check_config(name: str, cfg: Mapping[str, Any]) -> None:
    known = _KWARGS[name] + ("lr", "last_epoch") + (("exact",) if name in _HAND_OVER else ())
    try:
        check_keys(f"ColossalAI {name}", cfg, known)
    except ValueError as exc:
        if "exact" in cfg and "exact" not in known:
            raise ValueError(f"ColossalAI {name} has no hand-over effect: 'exact' applies to "
                             f"{', '.join(_HAND_OVER)} only") from None
        if name in _NO_KWARGS:
            raise
        raise ValueError(f"{exc}; ColossalAI's {name}(..., **kwargs) would ignore it without a word, so "
                         "drop it from the config (the real run did not use it)") from None
    if cfg.get("last_epoch", -1) != -1:
        raise ValueError(f"last_epoch must be -1, got {cfg['last_epoch']!r} (ColossalAI resumes from the "
                         "optimizer's saved initial_lr; to resume, evaluate the schedule at later steps)")
    require(f"ColossalAI {name}", cfg, "lr", "total_steps")


def from_colossalai(config: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """``{"type": <colossalai.nn.lr_scheduler class>, "lr": <optimizer lr>, **its arguments}``, as the
    real object runs; ``type`` defaults to ``"CosineAnnealingWarmupLR"``.

    Arguments keep ColossalAI's names and defaults (``total_steps`` always required). On the
    hand-over types (``CosineAnnealingWarmupLR``, ``FlatAnnealingLR``, ``FlatAnnealingWarmupLR``,
    ``MultiStepWarmupLR``) npadam's ``"exact": False`` gives the intended closed form instead.
    ``OneCycleLR`` with ``cycle_momentum`` (the default) also schedules beta1. ``LambdaLR`` and
    ``MultiplicativeLR`` are torch's (``lr_lambda`` a Python callable, or one per param group:
    a ``GroupSchedules``; see ``schedules.from_callable``).
    """
    cfg = dict(config)
    name = cfg.pop("type", "CosineAnnealingWarmupLR")
    if name not in _TYPES:
        raise ValueError(f"unknown ColossalAI scheduler type {name!r}; supported: {', '.join(_TYPES)}")
    _check_config(name, cfg)
    lr = V.real("lr", cfg.pop("lr"))
    cfg.pop("last_epoch", None)
    cfg["exact"] = V.flag("exact", cfg.get("exact", True))
    if name == "OneCycleLR":
        return _one_cycle(lr, cfg)
    if name in ("LambdaLR", "MultiplicativeLR"):  # torch's, with an unused total_steps in front
        V.integer("total_steps", cfg["total_steps"], lo=1)
        return from_torch({"lr": lr, "scheduler": name, "lr_lambda": cfg.get("lr_lambda")})
    return ScheduleSet(lr=_build_lr(name, lr, cfg))
