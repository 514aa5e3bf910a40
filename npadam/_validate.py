"""Argument checks shared by the package: each raises with the name and the bad value."""

from __future__ import annotations

import math
import numbers
from typing import Any, Iterable

import numpy as np


def real(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
         lo_open: bool = False, hi_open: bool = False) -> float:
    """Return ``value`` as a finite float, checked against optional bounds."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number, got {value!r}")
    try:
        v = float(value)
    except OverflowError:
        raise ValueError(f"{name} must be finite, got a number too large for a float ({str(value)[:20]}...)") from None
    if not math.isfinite(v):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if lo is not None and (v < lo or (lo_open and v == lo)):
        raise ValueError(f"{name} must be {'>' if lo_open else '>='} {lo}, got {value!r}")
    if hi is not None and (v > hi or (hi_open and v == hi)):
        raise ValueError(f"{name} must be {'<' if hi_open else '<='} {hi}, got {value!r}")
    return v


#: The largest integer any npadam count (steps, sizes, batch sizes) may be: step arithmetic is int64.
MAX_INT = 2**62


def integer(name: str, value: Any, *, lo: int | None = None) -> int:
    """Return ``value`` as an int (integral floats such as ``1e4`` are accepted), at most ``MAX_INT``
    in magnitude (beyond it int64 step arithmetic would overflow)."""
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if isinstance(value, numbers.Integral):
        v = int(value)
    elif isinstance(value, numbers.Real) and math.isfinite(value) and float(value).is_integer():
        v = int(value)
    else:
        raise (TypeError if not isinstance(value, numbers.Real) else ValueError)(
            f"{name} must be an integer, got {value!r}")
    if lo is not None and v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    if abs(v) > MAX_INT:
        raise ValueError(f"{name} is too large: {value!r} (at most 2**62)")
    return v


def flag(name: str, value: Any) -> bool:
    """Return ``value`` (a Python or NumPy bool) as a bool; TypeError for anything else (the string
    ``"False"`` and the integer 1 are not flags)."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return bool(value)


def choice(name: str, value: Any, choices: Iterable[str]) -> str:
    """Return ``value`` if it is one of ``choices``."""
    options = tuple(choices)
    if value not in options:
        raise ValueError(f"{name} must be one of {', '.join(map(repr, options))}, got {value!r}")
    return value
