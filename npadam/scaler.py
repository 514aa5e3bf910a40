"""Dynamic loss scaling with ``torch.cuda.amp.GradScaler`` semantics.

Multiply the loss by ``scaler.scale`` before the backward pass and hand the
scaler to the optimizer: ``step`` divides the gradients by the scale (fused into
the update), skips the whole step when any gradient is non-finite, and calls
``update``. ``update(found_inf)``: on overflow the scale is multiplied by
``backoff_factor`` and the growth counter resets; after ``growth_interval``
consecutive good steps it is multiplied by ``growth_factor``. As in torch the
scale is held in float32 and the inverse scale is ``float32(1 / scale)``.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validate as V


class LossScaler:
    """See the module docstring. ``enabled=False`` keeps the scale at 1 and never changes it."""

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True) -> None:
        self.growth_factor = V.real("growth_factor", growth_factor, lo=1.0, lo_open=True)
        self.backoff_factor = V.real("backoff_factor", backoff_factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True)
        self.growth_interval = V.integer("growth_interval", growth_interval, lo=1)
        self.enabled = bool(enabled)
        self._scale = float(np.float32(V.real("init_scale", init_scale, lo=0.0, lo_open=True))) if enabled else 1.0
        self._growth_tracker = 0

    @property
    def scale(self) -> float:
        """The current loss scale (a float32 value)."""
        return self._scale

    @property
    def inv_scale(self) -> float:
        """``float32(1 / scale)``, the factor applied to the gradients."""
        return float(np.float32(1.0 / self._scale))

    def scale_loss(self, loss: Any) -> Any:
        """``loss * scale``."""
        return loss * self._scale

    def update(self, found_inf: bool) -> None:
        """Back off after an overflow, grow after ``growth_interval`` good steps."""
        if not self.enabled:
            return
        if found_inf:
            self._scale = float(np.float32(self._scale * self.backoff_factor))
            self._growth_tracker = 0
            return
        self._growth_tracker += 1
        if self._growth_tracker == self.growth_interval:
            grown = float(np.float32(self._scale * self.growth_factor))
            if math.isfinite(grown):
                self._scale = grown
            self._growth_tracker = 0

    def state_dict(self) -> dict[str, Any]:
        """torch GradScaler's keys: scale, growth_factor, backoff_factor, growth_interval, _growth_tracker."""
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker,
                "enabled": self.enabled}

    def load_state_dict(self, sd: dict[str, Any]) -> None:
        """Restore from ``state_dict()`` (a torch GradScaler state dict works too)."""
        missing = [k for k in ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
                   if k not in sd]
        if missing:
            raise ValueError(f"loss scaler state dict is missing {missing}")
        fresh = LossScaler(float(sd["scale"]), sd["growth_factor"], sd["backoff_factor"], sd["growth_interval"],
                           sd.get("enabled", True))
        fresh._growth_tracker = V.integer("_growth_tracker", sd["_growth_tracker"], lo=0)
        self.__dict__.update(fresh.__dict__)

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self._scale}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")
