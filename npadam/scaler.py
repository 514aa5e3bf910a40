"""Loss scaling: torch ``GradScaler``'s dynamic rule, Megatron's hysteresis and floor, a constant scale.

Multiply the loss by ``scaler.scale`` before the backward pass and hand the
scaler to the optimizer: ``step`` multiplies the gradients by ``inv_scale``
(fused into the update), skips the whole step when any gradient is non-finite,
and calls ``update(found_inf)``.

Units and conventions. The scale is a dimensionless factor held in float32 (every
value it takes is a float32 value, returned as a Python float); ``inv_scale`` is
``float32(1 / scale)`` with the division in float64, as in torch and Megatron. The
growth and backoff factors are kept as given (Python floats) and each new scale
is ``float32(scale * factor)`` with the product in float64: torch's rule, and also
Megatron's (which multiplies float32 tensors) whenever the factors are float32
values, as Megatron's 2.0 and 0.5 are. An enabled scaler's scale always lies in
``[min_scale, max_scale]``, a subset of ``[MIN_SCALE, MAX_SCALE] = [2**-126, 2**126]``,
where both the scale and ``float32(1 / scale)`` are finite normal float32 values,
so an unscaled gradient never picks up an inf, a NaN or a flushed zero from the scale.

``update(found_inf)`` with ``dynamic=True`` (Megatron's ``DynamicGradScaler``):

- overflow: the growth tracker resets to 0 and the hysteresis tracker decrements;
  when the hysteresis tracker is then ``<= 0`` the scale becomes
  ``max(float32(scale * backoff_factor), min_scale)``. The hysteresis tracker is
  reset only by a growth, so it counts overflows since the last growth (not
  only consecutive ones), and once it is spent every overflow backs off;
- good step: the growth tracker increments; when it reaches ``growth_interval`` it
  resets to 0, the hysteresis tracker resets to ``hysteresis`` and the scale
  becomes ``min(float32(scale * growth_factor), max_scale)``.

With ``hysteresis=1`` this is torch's ``GradScaler`` rule step for step, as long as
torch's scale would stay inside ``[min_scale, max_scale]`` (torch lets it underflow
to subnormals and zero, and grows it up to float32's largest finite value).
``dynamic=False`` is Megatron's ``ConstantGradScaler``: the scale stays
``init_scale`` and ``update`` changes nothing (overflowing steps are still
skipped by the optimizer). ``enabled=False`` holds the scale at 1 and never changes it.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from typing import Any

import numpy as np

from . import _validate as V

MIN_SCALE = 2.0**-126
"""Default and smallest ``min_scale``: float32's smallest normal value (its reciprocal is ``MAX_SCALE``)."""
MAX_SCALE = 2.0**126
"""Default and largest ``max_scale``: the reciprocal of float32's smallest normal value."""

_F32_MAX = float(np.finfo(np.float32).max)
_TORCH_KEYS = ("scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker")
_NPADAM_KEYS = ("enabled", "dynamic", "min_scale", "max_scale", "hysteresis", "hysteresis_tracker")
_MEGATRON_KEYS = ("scale", "growth_tracker", "hysteresis_tracker")


class LossScaler:
    """See the module docstring.

    ``init_scale`` (rounded to float32) must lie in ``[min_scale, max_scale]``;
    ``growth_factor > 1``; ``0 < backoff_factor < 1``; ``growth_interval >= 1`` good
    steps between growths; ``hysteresis >= 1`` overflows (since the last growth)
    before the first backoff; ``MIN_SCALE <= min_scale <= max_scale <= MAX_SCALE``
    (Megatron's ``min_loss_scale``; both rounded to float32).
    """

    def __init__(self, init_scale: float = 2.0**16, growth_factor: float = 2.0, backoff_factor: float = 0.5,
                 growth_interval: int = 2000, enabled: bool = True, *, hysteresis: int = 1,
                 min_scale: float = MIN_SCALE, max_scale: float = MAX_SCALE, dynamic: bool = True) -> None:
        self.__dict__.update(_checked("init_scale", init_scale, growth_factor, backoff_factor, growth_interval,
                                      enabled, hysteresis, min_scale, max_scale, dynamic))

    @property
    def scale(self) -> float:
        """The current loss scale (a float32 value)."""
        return self._scale

    @property
    def inv_scale(self) -> float:
        """``float32(1 / scale)``, the factor applied to the gradients (finite and normal)."""
        return float(np.float32(1.0 / self._scale))

    @property
    def growth_tracker(self) -> int:
        """Good steps since the last overflow or growth."""
        return self._growth_tracker

    @property
    def hysteresis_tracker(self) -> int:
        """Megatron's hysteresis tracker: ``hysteresis`` minus the overflows since the last growth."""
        return self._hysteresis_tracker

    def scale_loss(self, loss: Any) -> Any:
        """``loss * scale``."""
        return loss * self._scale

    def update(self, found_inf: bool) -> None:
        """Apply one step's outcome (``found_inf``: a gradient was non-finite); see the module docstring."""
        V.flag("found_inf", found_inf)
        if not (self.enabled and self.dynamic):
            return
        if found_inf:
            self._growth_tracker = 0
            self._hysteresis_tracker -= 1
            if self._hysteresis_tracker <= 0:
                self._scale = max(_f32(self._scale * self.backoff_factor), self.min_scale)
        else:
            self._growth_tracker += 1
            if self._growth_tracker == self.growth_interval:
                self._growth_tracker = 0
                self._hysteresis_tracker = self.hysteresis
                self._scale = min(_f32(self._scale * self.growth_factor), self.max_scale)

    def state_dict(self) -> dict[str, Any]:
        """Plain Python floats, ints and bools (``torch.load(weights_only=True)`` reads them).

        torch ``GradScaler``'s keys ``scale, growth_factor, backoff_factor, growth_interval,
        _growth_tracker`` (so ``torch.amp.GradScaler.load_state_dict`` reads it too), plus
        ``enabled, dynamic, min_scale, max_scale, hysteresis, hysteresis_tracker``."""
        return {"scale": self._scale, "growth_factor": self.growth_factor, "backoff_factor": self.backoff_factor,
                "growth_interval": self.growth_interval, "_growth_tracker": self._growth_tracker,
                "enabled": self.enabled, "dynamic": self.dynamic, "min_scale": self.min_scale,
                "max_scale": self.max_scale, "hysteresis": self.hysteresis,
                "hysteresis_tracker": self._hysteresis_tracker}

    def load_state_dict(self, sd: Mapping[str, Any]) -> None:
        """Restore from ``state_dict()``, a torch ``GradScaler`` state dict or a Megatron
        ``DynamicGradScaler`` state dict; checks everything first and changes nothing on error.

        - npadam's and torch's (``_growth_tracker`` present): the keys npadam added may be
          missing (torch's dicts, npadam's before them); they take the constructor's defaults,
          which reproduce torch's scaler.
        - Megatron's (``scale`` as a one-element tensor, ``growth_tracker``,
          ``hysteresis_tracker``): it holds no configuration, so this scaler's own factors,
          interval, hysteresis and bounds are kept, as in Megatron.

        ValueError/TypeError naming the key and the value: missing or unknown keys, a scale that is
        not a real number (a string, a bool), not finite, not positive, overflowing float32 or
        outside ``[min_scale, max_scale]``, a tracker that is not an int or out of range."""
        if not isinstance(sd, Mapping):
            raise TypeError(f"loss scaler state dict must be a mapping, got {type(sd).__name__}")
        megatron = "growth_tracker" in sd and "_growth_tracker" not in sd
        required, optional = (_MEGATRON_KEYS, ()) if megatron else (_TORCH_KEYS, _NPADAM_KEYS)
        what = "Megatron DynamicGradScaler" if megatron else "npadam/torch GradScaler"
        missing = [k for k in required if k not in sd]
        if missing:
            empty = " (an empty dict is what a disabled torch GradScaler or Megatron's ConstantGradScaler saves)"
            raise ValueError(f"loss scaler state dict ({what} keys) is missing {missing}{empty if not sd else ''}")
        unknown = [k for k in sd if k not in required and k not in optional]
        if unknown:
            raise ValueError(f"loss scaler state dict ({what} keys) has unknown keys {unknown}; "
                             f"expected {list(required + optional)}")
        try:
            if megatron:
                if not self.enabled:
                    raise ValueError("a Megatron DynamicGradScaler state cannot be loaded into a disabled LossScaler")
                fields = _checked("scale", sd["scale"], self.growth_factor, self.backoff_factor,
                                  self.growth_interval, True, self.hysteresis, self.min_scale, self.max_scale,
                                  self.dynamic)
                growth = _tracker("growth_tracker", sd["growth_tracker"], 0, fields["growth_interval"] - 1)
            else:
                get = {**LossScaler().state_dict(), **sd}.__getitem__
                fields = _checked("scale", sd["scale"], get("growth_factor"), get("backoff_factor"),
                                  get("growth_interval"), get("enabled"), get("hysteresis"), get("min_scale"),
                                  get("max_scale"), get("dynamic"))
                if not fields["enabled"] and _unwrap(sd["scale"]) != 1.0:
                    raise ValueError(f"scale must be 1.0 when enabled is False, got {sd['scale']!r}")
                growth = _tracker("_growth_tracker", sd["_growth_tracker"], 0, fields["growth_interval"] - 1)
            hysteresis = _tracker("hysteresis_tracker", sd.get("hysteresis_tracker", fields["hysteresis"]), None,
                                  fields["hysteresis"])
        except (TypeError, ValueError) as exc:
            raise type(exc)(f"loss scaler state dict ({what} keys): {exc}") from None
        fields["_growth_tracker"], fields["_hysteresis_tracker"] = growth, hysteresis
        self.__dict__.update(fields)

    def __repr__(self) -> str:
        return (f"LossScaler(scale={self._scale}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval}, "
                f"hysteresis={self.hysteresis}, min_scale={self.min_scale}, max_scale={self.max_scale}, "
                f"dynamic={self.dynamic}, enabled={self.enabled}, growth_tracker={self._growth_tracker}, "
                f"hysteresis_tracker={self._hysteresis_tracker})")


def _f32(x: float) -> float:
    """``x`` rounded to float32 (inf past float32's range, 0 or a subnormal below it), as a Python float."""
    with np.errstate(over="ignore", under="ignore"):
        return float(np.float32(x))


def _unwrap(value: Any) -> Any:
    """A one-element tensor or array (Megatron saves its scale as a tensor) as its Python scalar."""
    if isinstance(value, (numbers.Number, str, bytes)) or not hasattr(value, "item"):
        return value
    numel = getattr(value, "numel", None)
    size = numel() if callable(numel) else getattr(value, "size", None)
    return value.item() if size == 1 else value


def _scale_value(name: str, value: Any, lo: float, lo_name: str, hi: float, hi_name: str) -> float:
    """``value`` rounded to float32: a finite float32 in ``[lo, hi]`` (``lo``, ``hi``: float32 values)."""
    v = V.real(name, _unwrap(value))
    r = _f32(v)
    if math.isinf(r):
        raise ValueError(f"{name}={value!r} overflows float32 (largest finite value {_F32_MAX!r})")
    if not lo <= r <= hi:
        raise ValueError(f"{name} must be in [{lo_name}, {hi_name}] = [{lo!r}, {hi!r}], got {value!r}")
    return r


def _checked(scale_name: str, scale: Any, growth_factor: Any, backoff_factor: Any, growth_interval: Any,
             enabled: Any, hysteresis: Any, min_scale: Any, max_scale: Any, dynamic: Any) -> dict[str, Any]:
    """A scaler's attributes (trackers at their start values) from checked arguments."""
    min_scale = _scale_value("min_scale", min_scale, MIN_SCALE, "MIN_SCALE", MAX_SCALE, "MAX_SCALE")
    max_scale = _scale_value("max_scale", max_scale, min_scale, "min_scale", MAX_SCALE, "MAX_SCALE")
    hysteresis = V.integer("hysteresis", hysteresis, lo=1)
    enabled = V.flag("enabled", enabled)
    if enabled:
        scale = _scale_value(scale_name, scale, min_scale, "min_scale", max_scale, "max_scale")
    else:  # checked all the same, then held at 1
        _scale_value(scale_name, scale, MIN_SCALE, "MIN_SCALE", MAX_SCALE, "MAX_SCALE")
        scale = 1.0
    return {"growth_factor": V.real("growth_factor", growth_factor, lo=1.0, lo_open=True),
            "backoff_factor": V.real("backoff_factor", backoff_factor, lo=0.0, hi=1.0, lo_open=True, hi_open=True),
            "growth_interval": V.integer("growth_interval", growth_interval, lo=1),
            "hysteresis": hysteresis, "min_scale": min_scale, "max_scale": max_scale,
            "enabled": enabled, "dynamic": V.flag("dynamic", dynamic), "_scale": scale,
            "_growth_tracker": 0, "_hysteresis_tracker": hysteresis}


def _tracker(name: str, value: Any, lo: int | None, hi: int) -> int:
    """A saved tracker: an int (not a bool, not a float) in ``[lo, hi]`` (``lo=None``: no lower bound)."""
    v = _unwrap(value)
    if isinstance(v, bool) or not isinstance(v, numbers.Integral):
        raise TypeError(f"{name} must be an int, got {value!r}")
    if (lo is not None and v < lo) or v > hi:
        raise ValueError(f"{name} must be in [{'-inf' if lo is None else lo}, {hi}], got {value!r}")
    return int(v)
