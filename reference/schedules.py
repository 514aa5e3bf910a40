"""Reference schedules: one plain-Python scalar function per building block.

This is the readable specification the vectorized ``npadam.schedules`` are tested
against. ``k`` is the 0-based optimizer-update index (an ``int``); every function
returns a ``float``. Nothing here is vectorized or clever on purpose.
"""

from __future__ import annotations

import math


def constant(k: int, value: float) -> float:
    return value


def linear(k: int, init: float, final: float, steps: int) -> float:
    if steps == 0 or k >= steps:
        return final
    return init + (final - init) * k / steps


def cosine(k: int, init: float, steps: int, final: float = 0.0) -> float:
    if steps == 0 or k >= steps:
        return final
    return final + (init - final) * 0.5 * (1.0 + math.cos(math.pi * k / steps))


def polynomial(k: int, init: float, final: float, steps: int, power: float = 1.0) -> float:
    if steps == 0 or k >= steps:
        return final
    return final + (init - final) * (1.0 - k / steps) ** power


def exponential(k: int, init: float, rate: float, transition_steps: int = 1, staircase: bool = False,
                final: float | None = None) -> float:
    exponent = k // transition_steps if staircase else k / transition_steps
    try:
        value = init * rate ** exponent
    except OverflowError:  # IEEE: a growing exponential overflows to infinity
        value = math.inf
    if final is not None:
        value = max(value, final) if rate < 1 else min(value, final)
    return value


def inverse_sqrt(k: int, peak: float, timescale: int = 10_000, final: float = 0.0) -> float:
    return max(final, peak * math.sqrt(timescale / (k + timescale)))


def one_minus_sqrt(k: int, init: float, final: float, steps: int) -> float:
    if steps == 0 or k >= steps:
        return final
    return final + (init - final) * (1.0 - math.sqrt(k / steps))


def warmup(k: int, after, steps: int, init: float = 0.0, shape: str = "linear", peak: float | None = None) -> float:
    """``after`` is a function of the step (called with ``k - steps`` once warm)."""
    if k >= steps:
        return after(k - steps)
    if peak is None:
        peak = after(0)
    x = k / steps
    g = {"linear": lambda: x,
         "log": lambda: math.log(k + 1) / math.log(steps),
         "cosine": lambda: (1.0 - math.cos(math.pi * x)) / 2.0,
         "1-sqrt": lambda: 1.0 - math.sqrt(1.0 - x)}[shape]()
    return init + (peak - init) * g


def join(k: int, schedules, boundaries) -> float:
    """``schedules`` are functions of the step; each sees the index from its own start."""
    start = 0
    for schedule, boundary in zip(schedules, list(boundaries) + [math.inf]):
        if k < boundary:
            return schedule(k - start)
        start = boundary
    raise AssertionError("unreachable")


def warmup_cosine(k: int, peak: float, warmup_steps: int, total_steps: int, final: float = 0.0,
                  init: float = 0.0) -> float:
    if warmup_steps > 0 and k <= warmup_steps:
        return init + (peak - init) * k / warmup_steps
    if k > total_steps:
        return final
    r = (k - warmup_steps) / (total_steps - warmup_steps)
    return final + (peak - final) * (math.cos(math.pi * r) + 1.0) / 2.0


def wsd(k: int, peak: float, warmup_steps: int, total_steps: int, decay_steps: int, final: float = 0.0,
        init: float = 0.0, decay: str = "linear") -> float:
    if warmup_steps > 0 and k <= warmup_steps:
        return init + (peak - init) * k / warmup_steps
    if k > total_steps:
        return final
    start = total_steps - decay_steps
    if k <= start:
        return peak
    q = (k - start) / decay_steps
    c = {"linear": 1.0 - q,
         "cosine": (math.cos(math.pi * q) + 1.0) / 2.0,
         "exponential": 2.0 * 0.5 ** q - 1.0,
         "minus_sqrt": 1.0 - math.sqrt(q),
         "1-sqrt": 1.0 - math.sqrt(q)}[decay]
    return final + c * (peak - final)


def cosine_restarts(k: int, peak: float, period: int, final: float = 0.0, period_mult: int = 1,
                    peak_decay: float = 1.0) -> float:
    """SGDR, with the cycle found by walking the cycles one by one."""
    cycle, start, length = 0, 0, period
    while k >= start + length:
        start += length
        length *= period_mult
        cycle += 1
    top = peak * peak_decay ** cycle
    return final + (top - final) * (1.0 + math.cos(math.pi * (k - start) / length)) / 2.0


def one_cycle(k: int, peak: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
              final_div_factor: float = 1e4, anneal: str = "cos", three_phase: bool = False,
              quantity: str = "lr", base_momentum: float = 0.85, max_momentum: float = 0.95,
              horizon: str = "hold") -> float:
    """torch OneCycleLR's phase walk; ``horizon="hold"`` stays at the last value after T - 1."""
    initial = peak / div_factor
    lowest = initial / final_div_factor
    ends = [pct_start * total_steps - 1, total_steps - 1]
    lrs = [initial, peak, lowest]
    moms = [max_momentum, base_momentum, max_momentum]
    if three_phase:
        ends = [pct_start * total_steps - 1, 2 * pct_start * total_steps - 2, total_steps - 1]
        lrs = [initial, peak, initial, lowest]
        moms = [max_momentum, base_momentum, max_momentum, max_momentum]
    values = lrs if quantity == "lr" else moms
    if horizon == "torch" and k > total_steps:
        raise ValueError("past total_steps")
    x = min(k, ends[-1]) if horizon == "hold" else k
    start = 0.0
    for i, end in enumerate(ends):
        if x <= end or i == len(ends) - 1:
            pct = (x - start) / (end - start)
            a, b = values[i], values[i + 1]
            if anneal == "cos":
                return b + (a - b) / 2.0 * (math.cos(math.pi * pct) + 1)
            return (b - a) * pct + a
        start = end
    raise AssertionError("unreachable")


def lr_range_test(k: int, init: float, step_size: int = 2000, rate: float = 1.0, staircase: bool = False) -> float:
    u = math.floor(k / step_size) if staircase else k / step_size
    return init * (1 + rate * u)


def weight_decay(k: int, start: float, end: float, steps: int, style: str = "linear") -> float:
    if k > steps or style == "constant":
        return end
    r = k / steps
    if style == "linear":
        return start + r * (end - start)
    return start + (math.cos(math.pi * (1 - r)) + 1.0) / 2.0 * (end - start)
