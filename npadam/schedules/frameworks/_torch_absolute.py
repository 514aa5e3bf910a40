"""torch's schedulers that set the lr from their own count, whatever it was (the
``absolute`` kind of ``_torch_leaves``): LambdaLR, CosineAnnealingWarmRestarts, CyclicLR and
OneCycleLR. CyclicLR and OneCycleLR also set beta1 when they cycle the momentum."""

from __future__ import annotations

from typing import Any

import numpy as np

from ... import _validate as V
from .._blocks import CosineRestarts, OneCycle
from .._callable import Lambda
from ._common import require
from ._torch_leaves import Leaf, floats, lambda_fn


class LambdaLR(Leaf):
    """``base * lr_lambda(t)``."""

    name = "LambdaLR"
    kind = "absolute"

    def _parse(self, kw: dict[str, Any]) -> None:
        self.fn = lambda_fn(kw, self.name)

    def finalize(self, group: Any) -> None:
        self._value = Lambda(self.fn, scale=self.base, name="lr_lambda")

    def value(self, t: np.ndarray) -> np.ndarray:
        return self._value._values(t)


class CosineAnnealingWarmRestarts(Leaf):
    """SGDR from ``base`` to ``eta_min`` (the ``cosine_restarts`` block, integer cycles as torch's
    plain ``step()`` counts them)."""

    name = "CosineAnnealingWarmRestarts"
    kind = "absolute"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch CosineAnnealingWarmRestarts", kw, "T_0")
        t0, mult = kw["T_0"], kw.get("T_mult", 1)
        if isinstance(t0, bool) or not isinstance(t0, int) or t0 <= 0:
            raise ValueError(f"Expected positive integer T_0, but got {t0!r}")
        if isinstance(mult, bool) or not isinstance(mult, int) or mult < 1:
            raise ValueError(f"Expected integer T_mult >= 1, but got {mult!r}")
        self.t0, self.mult, self.eta = t0, mult, V.real("eta_min", kw.get("eta_min", 0.0))

    def finalize(self, group: Any) -> None:
        self._sgdr = CosineRestarts(peak=self.base, period=self.t0, final=self.eta, period_mult=self.mult)

    def value(self, t: np.ndarray) -> np.ndarray:
        return self._sgdr._values(t)

    def resumed(self, k: np.ndarray, s: int) -> np.ndarray:
        if self.mult == 1 or s < self.t0:
            return self.value(k + s)
        # torch's resume: T_cur = last_epoch + 1 >= T_0 wraps once, to (last_epoch + 1) % T_0, and the
        # cycle length becomes T_0 * T_mult, whatever cycle last_epoch + 1 was really in
        later = CosineRestarts(peak=self.base, period=self.t0 * self.mult, final=self.eta, period_mult=self.mult)
        return later._values(k + s % self.t0)


class CyclicLR(Leaf):
    """``base + (max - base) * f * scale`` (see ``TorchLR``), beta1 with ``cycle_momentum``."""

    name = "CyclicLR"
    kind = "absolute"

    def _parse(self, kw: dict[str, Any]) -> None:
        require("torch CyclicLR", kw, "base_lr", "max_lr")
        fn = kw.get("scale_fn")
        if fn is not None and (not callable(fn) or isinstance(fn, type)):
            raise TypeError(f"CyclicLR scale_fn must be a Python callable (of the cycle or the iteration), "
                            f"got {fn!r}")
        mode = kw.get("mode", "triangular")
        if fn is None:
            mode = V.choice("mode", mode, ("triangular", "triangular2", "exp_range"))
            implied = "iterations" if mode == "exp_range" else "cycle"
            if "scale_mode" in kw and kw["scale_mode"] != implied:
                raise ValueError(f"CyclicLR scale_mode only applies with scale_fn; mode {mode!r} uses {implied}")
            scale_mode = implied
        else:  # torch ignores mode when scale_fn is given
            scale_mode = V.choice("scale_mode", kw.get("scale_mode", "cycle"), ("cycle", "iterations"))
        up = V.real("step_size_up", kw.get("step_size_up", 2000), lo=0.0, lo_open=True)
        down = up if kw.get("step_size_down") is None else V.real("step_size_down", kw["step_size_down"], lo=0.0)
        self.low, self.high = V.real("base_lr", kw["base_lr"]), V.real("max_lr", kw["max_lr"])
        self.total, self.ratio = up + down, up / (up + down)
        self.mode, self.scale_mode, self.gamma = mode, scale_mode, V.real("gamma", kw.get("gamma", 1.0))
        self.scale_fn = None if fn is None else Lambda(fn, name="CyclicLR scale_fn")
        self.cycler = V.flag("cycle_momentum", kw.get("cycle_momentum", True))
        self.m_low = V.real("base_momentum", kw.get("base_momentum", 0.8))
        self.m_high = V.real("max_momentum", kw.get("max_momentum", 0.9))

    def construct(self, group: Any) -> None:
        group.lr = self.low  # the constructor sets the group's lr to base_lr before LRScheduler's setdefault
        super().construct(group)
        # its constructor assigns its own base_lrs only after LRScheduler.__init__ made the initial
        # step, which therefore starts from the group's initial_lr (base_lr unless another scheduler
        # was built on the group first)
        self.ctor_low = group.initial_lr
        self.base = self.low
        if self.cycler:
            group.momenta = (self.m_low, self.m_high)

    def _shape(self, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """torch's ``get_lr`` at ``last_epoch = t``: ``(factor, scale)``, operation for operation."""
        tf = floats(t)
        cycle = np.floor(1 + tf / self.total)
        x = 1.0 + tf / self.total - cycle
        with np.errstate(divide="ignore", invalid="ignore"):
            factor = np.where(x <= self.ratio, x / self.ratio, (x - 1) / (self.ratio - 1))
        if self.scale_fn is not None:
            arg = cycle.astype(np.int64) if self.scale_mode == "cycle" else t
            return factor, self.scale_fn.values_at(arg)
        if self.mode == "triangular":
            return factor, np.ones_like(tf)
        if self.mode == "triangular2":
            with np.errstate(over="ignore"):  # past cycle 1025 the scale is 0 (torch's float pow raises there)
                return factor, 1 / (2.0 ** (cycle - 1))
        return factor, np.power(self.gamma, tf)

    def value(self, t: np.ndarray, low: float | None = None) -> np.ndarray:
        low = self.low if low is None else low
        factor, scale = self._shape(t)
        return low + (self.high - low) * factor * scale

    def run(self, x0: float, t: np.ndarray, mode: str) -> np.ndarray:
        out = self.value(t)
        if mode == "construct":
            out[t == 0] = self.value(np.zeros(1, np.int64), self.ctor_low)[0]
        return out

    def momentum(self, t: np.ndarray) -> np.ndarray:
        factor, scale = self._shape(t)
        return self.m_high - (self.m_high - self.m_low) * factor * scale


class OneCycleLR(Leaf):
    """torch's one-cycle policy (the ``one_cycle`` block), reading the group's ``initial_lr``,
    ``max_lr``, ``min_lr`` (and momenta) as torch's ``get_lr`` does: the last OneCycleLR built on
    the group wrote them (the last CyclicLR or OneCycleLR with ``cycle_momentum`` the momenta)."""

    name = "OneCycleLR"
    kind = "absolute"

    def _parse(self, kw: dict[str, Any]) -> None:
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
        self.shape = dict(total_steps=total, pct_start=pct, anneal=strategy,
                          three_phase=kw.get("three_phase", False), horizon="torch")
        self.lrs = (V.real("max_lr", kw["max_lr"]), V.real("div_factor", kw.get("div_factor", 25.0)),
                    V.real("final_div_factor", kw.get("final_div_factor", 1e4)))
        self.cycler = V.flag("cycle_momentum", kw.get("cycle_momentum", True))
        self.momenta = (V.real("base_momentum", kw.get("base_momentum", 0.85)),
                        V.real("max_momentum", kw.get("max_momentum", 0.95)))
        self._build(self.lrs, self.momenta)  # validates as the block does

    def _build(self, lrs: tuple[float, float, float], momenta: tuple[float, float]) -> None:
        peak, div, final_div = lrs
        self._lr = OneCycle(peak=peak, div_factor=div, final_div_factor=final_div, **self.shape)
        self._mom = OneCycle(peak=peak, div_factor=div, final_div_factor=final_div, quantity="momentum",
                             base_momentum=momenta[0], max_momentum=momenta[1], **self.shape)

    def construct(self, group: Any) -> None:
        peak, div, _ = self.lrs
        group.initial_lr = peak / div  # written before LRScheduler's setdefault
        group.one_cycle = self.lrs
        self.base = group.initial_lr
        if self.cycler:
            group.momenta = self.momenta

    def finalize(self, group: Any) -> None:
        self._build(group.one_cycle, group.momenta if group.momenta is not None else self.momenta)

    def momentum_now(self, momenta: tuple[float, float]) -> float:
        """beta1 at counter 0 with the group's momenta as they are during construction."""
        m = OneCycle(peak=1.0, quantity="momentum", base_momentum=momenta[0], max_momentum=momenta[1], **self.shape)
        return float(m._values(np.zeros(1, np.int64))[0])

    @property
    def horizon(self) -> int | None:
        return self.shape["total_steps"]

    @property
    def limit(self) -> int | None:
        return self.shape["total_steps"] + 1

    def value(self, t: np.ndarray) -> np.ndarray:
        return self._lr._values(t)

    def momentum(self, t: np.ndarray) -> np.ndarray:
        return self._mom._values(t)
