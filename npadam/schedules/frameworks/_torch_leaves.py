"""torch's single (non-composite) lr schedulers, one param group each, as models to compose.

Every class here validates its torch keyword arguments as torch does and describes what
torch's ``step()`` does to the group's lr, counted by the scheduler's own ``last_epoch``
``t`` (0 at the constructor's initial step). Three kinds:

- ``factor``: ``step()`` multiplies the lr by a ratio that does not depend on it
  (``lr * ratio(t)``): LinearLR, ConstantLR, PolynomialLR, ExponentialLR, StepLR,
  MultiStepLR, MultiplicativeLR. Alone, the lr is ``start * F(t)`` with ``F`` the product
  of the ratios (torch's closed form divided by the base lr);
- ``cosine``: CosineAnnealingLR, ``eta_min + ratio(t) * (lr - eta_min)`` (a factor when
  ``eta_min = 0``), except one step per period where it *adds*
  ``(base - eta_min) * (1 - cos(pi / T_max)) / 2`` (the step after the minimum);
- ``absolute``: the lr is set from ``t`` alone (LambdaLR, CyclicLR, OneCycleLR,
  CosineAnnealingWarmRestarts, in ``_torch_absolute``), whatever it was.

The first step (``t = 0``) comes in four modes: ``"construct"`` (the constructor's own
initial step), ``"initial"`` (a later ``_initial_step()``: SequentialLR's constructor
re-steps its first scheduler; both in torch's initial mode, they differ only for CyclicLR),
``"step"`` (a plain ``step()`` from ``last_epoch = -1``, which is what a composite's own
initial step does to the schedulers inside it) and ``"closed"`` (``_update_lr(0)``,
SequentialLR's restart at a milestone: torch's closed form at 0).
``base`` is the scheduler's ``base_lrs`` entry, the group's ``initial_lr`` when it was
built; ``_torch_compose`` sets it (and OneCycleLR's group values) by replaying the
constructors.
"""

from __future__ import annotations

import math
from typing import Any, ClassVar

import numpy as np

from ... import _validate as V
from .._callable import Lambda
from ._common import require

#: torch's keyword arguments per scheduler class (``last_epoch`` is handled by the caller)
KWARGS: dict[str, tuple[str, ...]] = {
    "LambdaLR": ("lr_lambda",),
    "MultiplicativeLR": ("lr_lambda",),
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
}

#: the keyword arguments torch accepts as one value per param group (a list or tuple)
PER_GROUP: dict[str, tuple[str, ...]] = {
    "LambdaLR": ("lr_lambda",), "MultiplicativeLR": ("lr_lambda",),
    "CyclicLR": ("base_lr", "max_lr", "base_momentum", "max_momentum"),
    "OneCycleLR": ("max_lr", "base_momentum", "max_momentum"),
}


#: the first-step modes in torch's initial mode
INITIAL = ("construct", "initial")


def floats(t: np.ndarray) -> np.ndarray:
    """Counters as float64 (torch computes with Python floats)."""
    return t.astype(np.float64)


class Leaf:
    """One torch scheduler on one param group; see the module docstring."""

    name: ClassVar[str] = ""
    kind: ClassVar[str] = "factor"
    cycler = False          # schedules beta1 (OneCycleLR / CyclicLR with cycle_momentum)
    needs_prev = False      # a restart continues from the lr before it (MultiplicativeLR)

    def __init__(self, kw: dict[str, Any], where: str) -> None:
        self.where = where
        self.base = math.nan
        for key in PER_GROUP.get(self.name, ()):
            if isinstance(kw.get(key), (list, tuple)):
                raise ValueError(f"{where}: {key} is a per-param-group list; from_config('torch', ...) gives one "
                                 "schedule per group (a GroupSchedules)")
        self._parse(kw)

    def _parse(self, kw: dict[str, Any]) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    # -- construction (called by _torch_compose while replaying the constructors)
    def construct(self, group: Any) -> None:
        """The constructor's effect on the group (``LRScheduler.__init__``: ``setdefault('initial_lr', lr)``)."""
        if group.initial_lr is None:
            group.initial_lr = group.lr
        self.base = group.initial_lr

    def finalize(self, group: Any) -> None:
        """Called once every constructor has run (the group as training sees it)."""

    def check_first(self, mode: str) -> None:
        """Raise where torch raises on the first step in ``mode``."""

    @property
    def horizon(self) -> int | None:
        """Counters after which it has done what it was configured to do (None: no end)."""
        return None

    @property
    def limit(self) -> int | None:
        """Counters ``0 .. limit - 1`` are defined (None: all)."""
        return None

    # -- factor and cosine kinds
    def first(self, x: Any, mode: str) -> Any:
        """The lr after the first step (``t = 0``) from ``x``."""
        return x * self.ratio0(mode)

    def ratio0(self, mode: str) -> float:
        """The factor of the first step in ``mode`` (factor kind)."""
        return 1.0

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """``step()`` at counters ``t >= 1`` on the lrs ``x``, torch's arithmetic."""
        raise NotImplementedError

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The product of the ratios ``step()`` applies at counters ``a .. b`` (``1 <= a <= b + 1``)."""
        raise NotImplementedError

    def span_from_1(self, b: np.ndarray) -> np.ndarray:
        """``span(1, b)``, the same bits; leaves with a cheaper expression of it override this."""
        return self.span(np.ones(b.shape, dtype=np.int64), b)

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:  # pragma: no cover - abstract
        """``F(t)``: the product of every ratio up to ``t``, the first step's in ``mode``."""
        raise NotImplementedError

    def run(self, x0: float, t: np.ndarray, mode: str) -> np.ndarray:
        """The lr at counters ``t`` when the first step (``mode``) starts from ``x0``."""
        if self.kind == "absolute":
            return self.value(t)
        return x0 * self.factor(t, mode)

    def restart(self, t: np.ndarray, prev: float) -> np.ndarray:
        """The lr at counters ``t`` after SequentialLR's ``_update_lr(0)``; ``prev`` is the lr before."""
        if self.kind == "absolute":
            return self.value(t)
        return self.base * self.factor(t, "closed")

    def resumed(self, k: np.ndarray, s: int) -> np.ndarray:
        """Update ``k`` after construction with ``last_epoch = s - 1`` on a group holding
        ``initial_lr = base`` and the lr of counter ``s``: counter ``k + s``."""
        if self.kind == "absolute":
            return self.value(k + s)
        return self.base * self.factor(k + s, "initial") * self.resume_ratio(s)

    def resume_ratio(self, s: int) -> float:
        """What the initial step multiplies on resuming at counter ``s`` (StepLR, MultiStepLR and
        ConstantLR do not check torch's initial mode: their boundary step is applied again)."""
        return 1.0

    # -- absolute kind
    def value(self, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """The lr at counters ``t``, whatever it was before."""
        raise NotImplementedError

    def momentum(self, t: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """beta1 at counters ``t`` (``cycler`` only)."""
        raise NotImplementedError


class LinearLR(Leaf):
    name = "LinearLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        s = V.real("start_factor", kw.get("start_factor", 1.0 / 3))
        e = V.real("end_factor", kw.get("end_factor", 1.0))
        if s > 1.0 or s <= 0:
            raise ValueError(f"Starting multiplicative factor expected to be greater than 0 and less or "
                             f"equal to 1, got start_factor={s}")
        if e > 1.0 or e < 0:
            raise ValueError(f"Ending multiplicative factor expected to be between 0 and 1, got end_factor={e}")
        self.s, self.e, self.T = s, e, V.integer("total_iters", kw.get("total_iters", 5), lo=0)

    def check_first(self, mode: str) -> None:
        if mode == "closed" and self.T == 0:
            raise ValueError(f"{self.where}: LinearLR with total_iters=0 divides by zero when SequentialLR "
                             "restarts it (torch's closed form min(T, t) / T)")

    @property
    def horizon(self) -> int | None:
        return self.T or None

    def ratio0(self, mode: str) -> float:
        return self.s

    def _g(self, u: np.ndarray) -> np.ndarray:
        # torch's closed form with min(T, t) / T rounded first: exactly end_factor at T (torch's
        # (e - s) * T / T can leave -1e-24 there for end_factor 0, a negative lr)
        return self.s + (self.e - self.s) * (u / self.T)

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        if self.T == 0:
            return np.full(t.shape, self.s)
        return self._g(np.minimum(self.T, floats(t)))

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        s, e, T = self.s, self.e, self.T
        out = np.array(x, dtype=np.float64)
        m = (t >= 1) & (t <= T)
        out[m] = x[m] * (1.0 + (e - s) / (T * s + (floats(t[m]) - 1) * (e - s)))
        return out

    def span_from_1(self, b: np.ndarray) -> np.ndarray:
        # _g(0.0) is start_factor exactly, so this is span(1, b) bit for bit
        if self.T == 0:  # no step changes the lr
            return np.ones(b.shape)
        return self._g(np.minimum(floats(b), self.T)) / self.s

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.ones(a.shape)
        m = a - 1 < self.T
        out[m] = self._g(np.minimum(floats(b[m]), self.T)) / self._g(floats(a[m] - 1))
        return out


class ConstantLR(Leaf):
    name = "ConstantLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        f = V.real("factor", kw.get("factor", 1.0 / 3))
        if f > 1.0 or f < 0:
            raise ValueError(f"Constant multiplicative factor expected to be between 0 and 1, got factor={f}")
        T = V.integer("total_iters", kw.get("total_iters", 5), lo=0)
        if f == 0 and T > 0:
            raise ValueError("ConstantLR with factor=0 divides by zero when it undoes the factor at "
                             f"step total_iters={T} (torch raises ZeroDivisionError there)")
        self.f, self.T = f, T

    @property
    def horizon(self) -> int | None:
        return self.T or None

    def ratio0(self, mode: str) -> float:
        return self.f

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        if self.T == 0:  # applied at t = 0 and only undone *at* t = 0; the closed form has it undone
            return np.full(t.shape, self.f + (1 - self.f) if mode == "closed" else self.f)
        return np.where(t < self.T, self.f, 1.0)

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        if self.T == 0:
            return np.array(x, dtype=np.float64)
        return np.where(t == self.T, x * (1.0 / self.f), x)

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        if self.T == 0:
            return np.ones(a.shape)
        return np.where((a <= self.T) & (self.T <= b), 1.0 / self.f, 1.0)

    def resume_ratio(self, s: int) -> float:
        return 1.0 / self.f if s == self.T else 1.0


class PolynomialLR(Leaf):
    name = "PolynomialLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        self.T = V.integer("total_iters", kw.get("total_iters", 5), lo=0)
        self.p = V.real("power", kw.get("power", 1.0))
        if self.p < 0 and self.T > 0:
            raise ValueError(f"PolynomialLR with power={self.p} < 0 raises ZeroDivisionError at step "
                             f"total_iters={self.T} in torch (0.0 to a negative power)")

    def check_first(self, mode: str) -> None:
        if self.T == 0 and mode not in INITIAL:
            raise ValueError(f"{self.where}: PolynomialLR with total_iters=0 divides by zero on its first "
                             f"{'restart by SequentialLR' if mode == 'closed' else 'plain step()'} "
                             "(torch's last_epoch / total_iters)")

    @property
    def horizon(self) -> int | None:
        return self.T or None

    def ratio0(self, mode: str) -> float:
        if mode == "step":
            return ((1.0 - 0 / self.T) / (1.0 - (0 - 1) / self.T)) ** self.p
        return 1.0

    def _h(self, u: np.ndarray) -> np.ndarray:
        return (1.0 - u / self.T) ** self.p

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        if self.T == 0:  # torch's step() never changes the lr (its closed form would divide by 0)
            return np.full(t.shape, 1.0)
        h = self._h(np.minimum(self.T, floats(t)))
        return self.ratio0(mode) * h if mode == "step" else h

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        T, out = self.T, np.array(x, dtype=np.float64)
        m = (t >= 1) & (t <= T)
        u = floats(t[m])
        out[m] = x[m] * ((1.0 - u / T) / (1.0 - (u - 1) / T)) ** self.p
        return out

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.ones(a.shape)
        m = a - 1 < self.T
        out[m] = self._h(np.minimum(floats(b[m]), self.T)) / self._h(floats(a[m] - 1))
        return out


class ExponentialLR(Leaf):
    name = "ExponentialLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch ExponentialLR", kw, "gamma")
        self.gamma = V.real("gamma", kw["gamma"])

    def ratio0(self, mode: str) -> float:
        return self.gamma if mode == "step" else 1.0

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        return np.power(self.gamma, floats(t + 1 if mode == "step" else t))

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return x * self.gamma

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.power(self.gamma, floats(b - a + 1))

    def span_from_1(self, b: np.ndarray) -> np.ndarray:
        return np.power(self.gamma, floats(b))


class StepLR(Leaf):
    name = "StepLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch StepLR", kw, "step_size")
        self.size = V.integer("step_size", kw["step_size"], lo=1)
        self.gamma = V.real("gamma", kw.get("gamma", 0.1))

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        return np.power(self.gamma, floats(t // self.size))

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return np.where(t % self.size == 0, x * self.gamma, x)

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.power(self.gamma, floats(b // self.size - (a - 1) // self.size))

    def resume_ratio(self, s: int) -> float:
        return self.gamma if s % self.size == 0 else 1.0


class MultiStepLR(Leaf):
    name = "MultiStepLR"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch MultiStepLR", kw, "milestones")
        ms = kw["milestones"]
        if not isinstance(ms, (list, tuple)):
            raise ValueError(f"MultiStepLR milestones must be a list of integers, got {ms!r}")
        self.ms = np.asarray(sorted(V.integer(f"milestones[{i}]", m, lo=0) for i, m in enumerate(ms)),
                             dtype=np.int64)
        self.gamma = V.real("gamma", kw.get("gamma", 0.1))

    @property
    def horizon(self) -> int | None:
        return int(self.ms[-1]) if self.ms.size else None

    def _count(self, t: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.ms, t, side="right") - np.searchsorted(self.ms, t, side="left")

    def first(self, x: Any, mode: str) -> Any:
        c = int(self._count(np.zeros(1, np.int64))[0])
        return x * self.gamma ** c if c else x

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        return np.power(self.gamma, floats(np.searchsorted(self.ms, t, side="right")))

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        c = self._count(t)
        return np.where(c > 0, x * np.power(self.gamma, floats(c)), x)

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        return np.power(self.gamma, floats(np.searchsorted(self.ms, b, side="right")
                                       - np.searchsorted(self.ms, a - 1, side="right")))

    def resume_ratio(self, s: int) -> float:
        c = int(self._count(np.asarray([s]))[0])
        return self.gamma ** c if c else 1.0


def lambda_fn(kw: dict[str, Any], name: str) -> Any:
    require(f"torch {name}", kw, "lr_lambda")
    fn = kw["lr_lambda"]
    if not callable(fn) or isinstance(fn, type):
        raise TypeError(f"{name} lr_lambda should be a function (a Python callable of the step), got {fn!r}")
    return fn


class MultiplicativeLR(Leaf):
    """``lr_t = lr_{t-1} * lr_lambda(t)`` for ``t >= 1`` (the initial step leaves the lr)."""

    name = "MultiplicativeLR"
    needs_prev = True

    def _parse(self, kw: dict[str, Any]) -> None:
        self.fn = lambda_fn(kw, self.name)
        self._f = Lambda(self.fn, name="lr_lambda")
        self._runs: dict[tuple[float, int, int], Lambda] = {}

    def _product(self, x0: float, first: int, shift: int = 0) -> Lambda:
        key = (x0, first, shift)
        if key not in self._runs:
            self._runs[key] = Lambda(self.fn, scale=x0, shift=shift, product=True, first=first, name="lr_lambda")
        return self._runs[key]

    def first(self, x: Any, mode: str) -> Any:
        return x * self._f.values_at(np.zeros(1, np.int64))[0] if mode == "step" else x

    def factor(self, t: np.ndarray, mode: str) -> np.ndarray:
        return self._product(1.0, 0 if mode == "step" else 1)._values(t)

    def run(self, x0: float, t: np.ndarray, mode: str) -> np.ndarray:
        return self._product(x0, 0 if mode == "step" else 1)._values(t)

    def restart(self, t: np.ndarray, prev: float) -> np.ndarray:
        # no closed form: _update_lr(0) calls get_lr(), which multiplies the lr by lr_lambda(0)
        return self.run(prev, t, "step")

    def resumed(self, k: np.ndarray, s: int) -> np.ndarray:
        return self._product(self.base, 1, s)._values(k)

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        return x * self._f.values_at(t)

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:
        out = np.ones(a.shape)
        for a0 in np.unique(a):
            m = a == a0
            if a0 == 1:  # from the start: the cached running product
                out[m] = self._product(1.0, 1)._values(b[m])
                continue
            top = int(b[m].max())  # after a cosine's restart: at most one cosine period
            if top < a0:
                continue
            cp = np.cumprod(self._f.values_at(np.arange(a0, top + 1)))
            i = b[m] - a0
            out[m] = np.where(i >= 0, cp[np.maximum(i, 0)], 1.0)
        return out


class CosineAnnealingLR(Leaf):
    name = "CosineAnnealingLR"
    kind = "cosine"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch CosineAnnealingLR", kw, "T_max")
        self.T, self.eta = V.integer("T_max", kw["T_max"], lo=1), V.real("eta_min", kw.get("eta_min", 0.0))

    @property
    def horizon(self) -> int | None:
        return self.T

    def _bump(self) -> float:
        """What the step after each minimum adds: ``(base - eta_min) * (1 - cos(pi / T_max)) / 2``."""
        return (self.base - self.eta) * (1 - math.cos(math.pi / self.T)) / 2

    def first(self, x: Any, mode: str) -> Any:
        T, eta = self.T, self.eta
        if mode in INITIAL:
            return x
        if mode == "closed":
            return eta + (self.base - eta) * (1 + math.cos(math.pi * 0 / T)) / 2
        if (0 - 1 - T) % (2 * T) == 0:  # T_max = 1
            return x + self._bump()
        return (1 + math.cos(math.pi * 0 / T)) / (1 + math.cos(math.pi * (0 - 1) / T)) * (x - eta) + eta

    def apply(self, x: np.ndarray, t: np.ndarray) -> np.ndarray:
        T, eta = self.T, self.eta
        out = np.empty(x.shape)
        add = (t - 1 - T) % (2 * T) == 0
        out[add] = x[add] + self._bump()
        u = floats(t[~add])
        out[~add] = (1 + np.cos(np.pi * u / T)) / (1 + np.cos(np.pi * (u - 1) / T)) * (x[~add] - eta) + eta
        return out

    def _c(self, t: np.ndarray) -> np.ndarray:
        return (1 + np.cos(np.pi * floats(t) / self.T)) / 2

    def span(self, a: np.ndarray, b: np.ndarray) -> np.ndarray:  # eta_min = 0, no minimum inside [a - 1, b)
        return self._c(b) / self._c(a - 1)

    def run(self, x0: float, t: np.ndarray, mode: str) -> np.ndarray:
        """``eta + (v0 - eta) c(t)`` up to T_max (``v0`` the first step's lr), then torch's additive
        step after the minimum puts it on ``eta + (base - eta) c(t)``, ``c(t) = (1 + cos(pi t / T)) / 2``."""
        T, eta, b = self.T, self.eta, self.base
        tf = floats(t)
        if mode in INITIAL and x0 == b:
            return eta + (b - eta) * (1 + np.cos(np.pi * tf / T)) / 2
        v0 = self.first(x0, mode)
        c = (1 + np.cos(np.pi * tf / T)) / 2
        out = np.where(t <= T, eta + (v0 - eta) * c, eta + (b - eta) * c)
        out[t == 0] = v0
        return out

    def restart(self, t: np.ndarray, prev: float) -> np.ndarray:
        return self.run(self.base, t, "initial")

    def resumed(self, k: np.ndarray, s: int) -> np.ndarray:
        return self.run(self.base, k + s, "initial")
