"""Argument types: each converts one flag's text or raises ``ArgumentTypeError`` saying what it
expected and what it got. argparse puts the flag in front (``--seed: expected a non-negative
integer, got '-1'``), so every bad value names its flag.
"""

from __future__ import annotations

import argparse
import math
from typing import Callable

from ._limits import MAX_STEPS, steps_text

Bad = argparse.ArgumentTypeError


def int_arg(text: str) -> int:
    """An integer, also written ``100_000`` or ``1e5``."""
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise Bad(f"expected an integer, got {text!r}") from None
    if not math.isfinite(v) or not v.is_integer():
        raise Bad(f"expected an integer, got {text!r}")
    return int(v)


def float_arg(text: str) -> float:
    """A float as Python reads it (``3e-4``, ``1_000.5``, ``nan``, ``inf``)."""
    try:
        return float(text)
    except ValueError:
        raise Bad(f"expected a number, got {text!r}") from None


def integer(lo: int, hi: int, unit: str = "") -> Callable[[str], int]:
    """An ``int_arg`` in ``lo .. hi``; ``unit`` names what is counted (``"columns"``)."""
    what = f" {unit}" if unit else ""

    def convert(text: str) -> int:
        v = int_arg(text)
        if v < lo:
            if unit:
                need = f"at least {lo:,}{what}"
            else:
                need = "a non-negative integer" if lo == 0 else f"an integer >= {lo:,}"
            raise Bad(f"expected {need}, got {text!r}")
        if v > hi:
            raise Bad(f"expected at most {hi:,}{what}, got {text!r}")
        return v
    convert.__name__ = "integer"
    return convert


def magnitude(bound: int) -> Callable[[str], int]:
    """An ``int_arg`` with ``|value| <= bound`` (the integer flags of named schedules)."""
    def convert(text: str) -> int:
        v = int_arg(text)
        if abs(v) > bound:
            power = f"2**{bound.bit_length() - 1} = " if bound & (bound - 1) == 0 else ""
            raise Bad(f"expected an integer of magnitude at most {power}{bound:,}, got {text!r}")
        return v
    convert.__name__ = "integer"
    return convert


def number(*, above: float | None = None, at_least: float | None = None) -> Callable[[str], float]:
    """A finite ``float_arg``, ``> above`` and/or ``>= at_least``."""
    def convert(text: str) -> float:
        v = float_arg(text)
        if not math.isfinite(v):
            raise Bad(f"expected a finite number, got {text!r}")
        if above is not None and not v > above:
            raise Bad(f"expected a number > {above:g}, got {text!r}")
        if at_least is not None and not v >= at_least:
            raise Bad(f"expected a number >= {at_least:g}, got {text!r}")
        return v
    convert.__name__ = "number"
    return convert


def steps_arg(text: str) -> int:
    """``npadam schedule --steps``: 1 .. ``MAX_STEPS``, refused before anything is allocated."""
    v = int_arg(text)
    if v < 1:
        raise Bad(f"expected a number of steps >= 1, got {text!r}")
    if v > MAX_STEPS:
        raise Bad(steps_text(v, text))
    return v
