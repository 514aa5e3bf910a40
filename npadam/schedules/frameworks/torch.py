"""``torch.optim.lr_scheduler`` schedulers, in closed form.

torch's constructor performs the initial step, so update ``k`` uses the scheduler
at ``last_epoch = k``. ``step()`` of most torch schedulers uses *chained*
(recursive) formulas that drift from the closed form by rounding (about 1e-12
relative after 1e3 steps, 2e-8 after 1e5); npadam evaluates the closed form, which
is what torch's own ``_get_closed_form_lr`` returns. CosineAnnealingWarmRestarts
uses integer cycle arithmetic (torch's float-log path can misplace a restart).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from .._blocks import CosineRestarts, Join, OneCycle
from ._common import ScheduleSet, check_keys, require

_KWARGS: dict[str, tuple[str, ...]] = {
    "LinearLR": ("start_factor", "end_factor", "total_iters"),
    "ConstantLR": ("factor", "total_iters"),
    "CosineAnnealingLR": ("T_max", "eta_min"),
    "PolynomialLR": ("total_iters", "power"),
    "ExponentialLR": ("gamma",),
    "StepLR": ("step_size", "gamma"),
    "MultiStepLR": ("milestones", "gamma"),
    "OneCycleLR": ("max_lr", "total_steps", "epochs", "steps_per_epoch", "pct_start", "anneal_strategy",
                   "cycle_momentum", "base_momentum", "max_momentum", "div_factor", "final_div_factor",
                   "three_phase"),
    "CosineAnnealingWarmRestarts": ("T_0", "T_mult", "eta_min"),
    "CyclicLR": ("base_lr", "max_lr", "step_size_up", "step_size_down", "mode", "gamma", "scale_fn", "scale_mode",
                 "cycle_momentum", "base_momentum", "max_momentum"),
    "SequentialLR": ("schedulers", "milestones"),
}


@register
class TorchLR(Schedule):
    """A torch scheduler by class name, with ``lr`` the optimizer's base lr.

    Closed forms at ``t = k`` (``b`` = base lr):

    - LinearLR: ``b * (s + (e - s) * min(T, t) / T)``
    - ConstantLR: ``b * factor`` for ``t < T``, then ``b`` (``T = 0``: ``b * factor`` throughout, as
      torch's ``step()`` gives; factor 0 with ``T > 0`` is rejected: torch divides by zero at T)
    - CosineAnnealingLR: ``eta + (b - eta) * (1 + cos(pi * t / T_max)) / 2`` (periodic past T_max, as torch)
    - PolynomialLR: ``b * (1 - min(T, t) / T) ** power`` (``T = 0``: ``b``)
    - ExponentialLR: ``b * gamma ** t``; StepLR: ``b * gamma ** (t // step_size)``;
      MultiStepLR: ``b * gamma ** bisect_right(milestones, t)``
    - OneCycleLR, CosineAnnealingWarmRestarts: see ``one_cycle`` and ``cosine_restarts``
    - CyclicLR (``base_lr`` replaces the optimizer's lr, as torch's constructor does): with
      ``S = up + down``, ``c = floor(1 + t / S)``, ``x = 1 + t / S - c``, ``f = x / r`` if
      ``x <= r = up / S`` else ``(x - 1) / (r - 1)``: ``base + (max - base) * f * scale``,
      ``scale`` = 1 (triangular), ``1 / 2**(c - 1)`` (triangular2), ``gamma**t``
      (exp_range); its momentum (beta1) ``max_m - (max_m - base_m) * f * scale``
    - SequentialLR: sub-scheduler ``i`` sees ``t - milestones[i-1]``; a sub-scheduler after the
      first starts from torch's closed form at its milestone, so there ``total_iters=0`` gives
      ``b`` for ConstantLR and is rejected for LinearLR / PolynomialLR (torch divides by zero)
    """

    kind = "torch"

    def __init__(self, scheduler: str, lr: float, quantity: str = "lr", **kwargs: Any) -> None:
        V.choice("scheduler", scheduler, tuple(_KWARGS))
        check_keys(f"torch {scheduler}", kwargs, _KWARGS[scheduler])
        lr = V.real("lr", lr)
        quantity = V.choice("quantity", quantity, ("lr", "momentum"))
        if quantity == "momentum" and scheduler not in ("OneCycleLR", "CyclicLR"):
            raise ValueError(f"only OneCycleLR and CyclicLR schedule momentum, not {scheduler}")
        self._store(scheduler=scheduler, lr=lr, **({"quantity": quantity} if quantity != "lr" else {}), **kwargs)
        self._inner = self._build(scheduler, lr, quantity, dict(kwargs))

    @staticmethod
    def _build(name: str, lr: float, quantity: str, kw: dict[str, Any]) -> Any:
        """Validate as torch does; return what ``_values`` needs."""
        if name == "LinearLR":
            s = V.real("start_factor", kw.get("start_factor", 1.0 / 3))
            e = V.real("end_factor", kw.get("end_factor", 1.0))
            if s > 1.0 or s <= 0:
                raise ValueError(f"Starting multiplicative factor expected to be greater than 0 and less or "
                                 f"equal to 1, got start_factor={s}")
            if e > 1.0 or e < 0:
                raise ValueError(f"Ending multiplicative factor expected to be between 0 and 1, got end_factor={e}")
            return (s, e, V.integer("total_iters", kw.get("total_iters", 5), lo=0))
        if name == "ConstantLR":
            f = V.real("factor", kw.get("factor", 1.0 / 3))
            if f > 1.0 or f < 0:
                raise ValueError(f"Constant multiplicative factor expected to be between 0 and 1, got factor={f}")
            T = V.integer("total_iters", kw.get("total_iters", 5), lo=0)
            if f == 0 and T > 0:
                raise ValueError("ConstantLR with factor=0 divides by zero when it undoes the factor at "
                                 f"step total_iters={T} (torch raises ZeroDivisionError there)")
            return (f, T)
        if name == "CosineAnnealingLR":
            require("torch CosineAnnealingLR", kw, "T_max")
            return (V.integer("T_max", kw["T_max"], lo=1), V.real("eta_min", kw.get("eta_min", 0.0)))
        if name == "PolynomialLR":
            return (V.integer("total_iters", kw.get("total_iters", 5), lo=0), V.real("power", kw.get("power", 1.0)))
        if name == "ExponentialLR":
            require("torch ExponentialLR", kw, "gamma")
            return V.real("gamma", kw["gamma"])
        if name == "StepLR":
            require("torch StepLR", kw, "step_size")
            return (V.integer("step_size", kw["step_size"], lo=1), V.real("gamma", kw.get("gamma", 0.1)))
        if name == "MultiStepLR":
            require("torch MultiStepLR", kw, "milestones")
            ms = sorted(V.integer("milestones[]", m, lo=0) for m in kw["milestones"])
            return (np.asarray(ms, dtype=np.int64), V.real("gamma", kw.get("gamma", 0.1)))
        if name == "OneCycleLR":
            return _one_cycle(lr, quantity, kw)
        if name == "CyclicLR":
            return _cyclic(quantity, kw)
        if name == "CosineAnnealingWarmRestarts":
            require("torch CosineAnnealingWarmRestarts", kw, "T_0")
            t0, mult = kw["T_0"], kw.get("T_mult", 1)
            if isinstance(t0, bool) or not isinstance(t0, int) or t0 <= 0:
                raise ValueError(f"Expected positive integer T_0, but got {t0!r}")
            if isinstance(mult, bool) or not isinstance(mult, int) or mult < 1:
                raise ValueError(f"Expected integer T_mult >= 1, but got {mult!r}")
            return CosineRestarts(peak=lr, period=t0, final=V.real("eta_min", kw.get("eta_min", 0.0)),
                                  period_mult=mult)
        require("torch SequentialLR", kw, "schedulers", "milestones")
        subs = kw["schedulers"]
        if not isinstance(subs, (list, tuple)) or not subs:
            raise ValueError("SequentialLR expects at least one scheduler, but got no scheduler.")
        ms = [V.integer(f"milestones[{i}]", m, lo=0) for i, m in enumerate(kw["milestones"])]
        if len(ms) != len(subs) - 1:
            raise ValueError(f"Sequential Schedulers expects number of schedulers provided to be one more than "
                             f"the number of milestone points, but got number of schedulers {len(subs)} and "
                             f"the number of milestones to be equal to {len(ms)}")
        built = [_sub_scheduler(lr, sub, i) for i, sub in enumerate(subs)]
        if any(b <= a for a, b in zip(ms, ms[1:])):
            raise ValueError(f"SequentialLR milestones must be strictly increasing, got {ms}")
        return Join(built, ms)

    @property
    def horizon(self) -> int | None:
        name, inner = self._params["scheduler"], self._inner
        if isinstance(inner, Schedule):
            return inner.horizon
        if name in ("LinearLR", "ConstantLR", "PolynomialLR"):
            return (inner[-1] if name != "PolynomialLR" else inner[0]) or None
        if name == "CosineAnnealingLR":
            return inner[0]
        if name == "MultiStepLR":
            return int(inner[0][-1]) if inner[0].size else None
        return None

    @property
    def limit(self) -> int | None:
        return self._inner.limit if isinstance(self._inner, Schedule) else None

    def _values(self, k: np.ndarray) -> np.ndarray:
        name, b, inner = self._params["scheduler"], self._params["lr"], self._inner
        if isinstance(inner, Schedule):
            return inner._values(k)
        t = k.astype(np.float64)
        if name == "LinearLR":
            s, e, T = inner
            if T == 0:
                return np.full(t.shape, b * s)
            return b * (s + (e - s) * np.minimum(T, t) / T)
        if name == "ConstantLR":
            f, T = inner
            if T == 0:  # torch applies the factor at step 0 and only undoes it *at* step T = 0
                return np.full(t.shape, b * f)
            return np.where(t < T, b * f, b)
        if name == "CosineAnnealingLR":
            T, eta = inner
            return eta + (b - eta) * (1 + np.cos(np.pi * t / T)) / 2
        if name == "PolynomialLR":
            T, power = inner
            if T == 0:  # torch's step() never changes the lr (its closed form would divide by 0)
                return np.full(t.shape, b * 1.0)
            return b * (1.0 - np.minimum(T, t) / T) ** power
        if name == "ExponentialLR":
            return b * np.power(inner, t)
        if name == "StepLR":
            size, gamma = inner
            return b * np.power(gamma, (k // size).astype(np.float64))
        if name == "CyclicLR":
            return _cyclic_values(inner, t)
        ms, gamma = inner
        return b * np.power(gamma, np.searchsorted(ms, k, side="right").astype(np.float64))


def _cyclic(quantity: str, kw: dict[str, Any]) -> tuple[Any, ...]:
    """torch's CyclicLR arguments, checked: ``(low, high, momentum?, total, ratio, mode, gamma)``."""
    require("torch CyclicLR", kw, "base_lr", "max_lr")
    if kw.get("scale_fn") is not None:
        raise ValueError("CyclicLR scale_fn: a Python callable is not a closed form npadam can store; use mode "
                         "'triangular', 'triangular2' or 'exp_range'")
    for key in ("base_lr", "max_lr", "base_momentum", "max_momentum"):
        if isinstance(kw.get(key), (list, tuple)):
            raise ValueError(f"CyclicLR {key} as a per-group list: build one schedule per param group")
    mode = V.choice("mode", kw.get("mode", "triangular"), ("triangular", "triangular2", "exp_range"))
    if "scale_mode" in kw and kw["scale_mode"] != ("iterations" if mode == "exp_range" else "cycle"):
        raise ValueError(f"CyclicLR scale_mode only applies with scale_fn; mode {mode!r} uses "
                         f"{'iterations' if mode == 'exp_range' else 'cycle'}")
    up = V.real("step_size_up", kw.get("step_size_up", 2000), lo=0.0, lo_open=True)
    down = up if kw.get("step_size_down") is None else V.real("step_size_down", kw["step_size_down"], lo=0.0)
    total = up + down
    if quantity == "momentum":
        if not kw.get("cycle_momentum", True):
            raise ValueError("CyclicLR with cycle_momentum=False schedules no momentum")
        low, high = V.real("max_momentum", kw.get("max_momentum", 0.9)), V.real("base_momentum",
                                                                                kw.get("base_momentum", 0.8))
    else:
        low, high = V.real("base_lr", kw["base_lr"]), V.real("max_lr", kw["max_lr"])
    return (low, high, quantity == "momentum", total, up / total, mode, V.real("gamma", kw.get("gamma", 1.0)))


def _cyclic_values(inner: tuple[Any, ...], t: np.ndarray) -> np.ndarray:
    """torch's ``CyclicLR.get_lr`` at ``last_epoch = t``, operation for operation (float64)."""
    start, other, momentum, total, ratio, mode, gamma = inner
    cycle = np.floor(1 + t / total)
    x = 1.0 + t / total - cycle
    with np.errstate(divide="ignore", invalid="ignore"):
        factor = np.where(x <= ratio, x / ratio, (x - 1) / (ratio - 1))
    if mode == "triangular":
        scale = np.ones_like(t)
    elif mode == "triangular2":
        scale = 1 / (2.0 ** (cycle - 1))
    else:
        scale = np.power(gamma, t)
    if momentum:  # start = max_momentum, other = base_momentum
        return start - (start - other) * factor * scale
    return start + (other - start) * factor * scale


def _one_cycle(lr: float, quantity: str, kw: dict[str, Any]) -> OneCycle:
    require("torch OneCycleLR", kw, "max_lr")
    total = kw.get("total_steps")
    if total is None:
        epochs, spe = kw.get("epochs"), kw.get("steps_per_epoch")
        if epochs is None or spe is None:
            raise ValueError("You must define either total_steps OR (epochs AND steps_per_epoch)")
        total = V.integer("epochs", epochs, lo=1) * V.integer("steps_per_epoch", spe, lo=1)
    total = V.integer("total_steps", total)
    if total <= 0:
        raise ValueError(f"Expected positive integer total_steps, but got {total}")
    pct = kw.get("pct_start", 0.3)
    if not isinstance(pct, (int, float)) or isinstance(pct, bool) or not 0 <= pct <= 1:
        raise ValueError(f"Expected float between 0 and 1 pct_start, but got {pct!r}")
    strategy = kw.get("anneal_strategy", "cos")
    if strategy not in ("cos", "linear"):
        raise ValueError(f"anneal_strategy must be one of 'cos' or 'linear', instead got {strategy!r}")
    return OneCycle(peak=kw["max_lr"], total_steps=total, pct_start=pct,
                    div_factor=kw.get("div_factor", 25.0), final_div_factor=kw.get("final_div_factor", 1e4),
                    anneal=strategy, three_phase=kw.get("three_phase", False), quantity=quantity,
                    base_momentum=kw.get("base_momentum", 0.85), max_momentum=kw.get("max_momentum", 0.95),
                    horizon="torch")


def _sub_scheduler(lr: float, sub: Any, i: int) -> TorchLR:
    if not isinstance(sub, Mapping) or "scheduler" not in sub:
        raise ValueError(f"SequentialLR schedulers[{i}] must be a mapping with a 'scheduler' key, got {sub!r}")
    sub = dict(sub)
    name = sub.pop("scheduler")
    if name == "SequentialLR":
        raise ValueError("nested SequentialLR is not supported")
    if name == "OneCycleLR":
        raise ValueError("OneCycleLR inside SequentialLR is not supported: its constructor rewrites the "
                         "group's initial_lr (to max_lr / div_factor), which becomes the base lr of every "
                         "scheduler in the sequence")
    if sub.pop("lr", lr) != lr:
        raise ValueError(f"SequentialLR schedulers[{i}] sets its own 'lr'; all share the optimizer's lr")
    if i > 0 and sub.get("total_iters", 5) == 0:
        # From its milestone on, a later scheduler starts from its closed form at step 0
        # (SequentialLR calls _update_lr(0)), not from its constructor's initial step.
        if name in ("LinearLR", "PolynomialLR"):
            raise ValueError(f"SequentialLR schedulers[{i}]: {name} with total_iters=0 divides by zero at "
                             "its milestone (torch's closed form min(T, t) / T)")
        if name == "ConstantLR":  # closed form: base * (factor + 1 * (1 - factor)), kept from there on
            f = V.real("factor", sub.get("factor", 1.0 / 3))
            sub["factor"] = f + (1 - f)
    return TorchLR(name, lr, **sub)


def from_torch(config: Mapping[str, Any]) -> ScheduleSet:
    """``{"lr": base_lr, "scheduler": "<class name>", **kwargs}`` (SequentialLR nests configs).

    OneCycleLR and CyclicLR with ``cycle_momentum`` (the default) also schedule beta1
    (Adam's momentum), starting at ``max_momentum``.
    """
    cfg = dict(config)
    require("torch", cfg, "lr", "scheduler")
    name, lr = cfg.pop("scheduler"), cfg.pop("lr")
    if name not in _KWARGS:
        raise ValueError(f"unknown torch scheduler {name!r}; supported: {', '.join(_KWARGS)}")
    sched = TorchLR(name, lr, **cfg)
    if name in ("OneCycleLR", "CyclicLR") and cfg.get("cycle_momentum", True):
        return ScheduleSet(lr=sched, beta1=TorchLR(name, lr, quantity="momentum", **cfg))
    return ScheduleSet(lr=sched)

