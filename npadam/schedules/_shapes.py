"""Vectorized curve shapes shared by the building blocks and the framework schedules.

Each function maps float64 arrays to float64 arrays with the float64 operation
order of the framework it comes from (noted per function), so that a schedule
built on it agrees with that framework to the last few ulps.
"""

from __future__ import annotations

import numpy as np

DECAY_STYLES = ("linear", "cosine", "inverse-square-root", "constant", "WSD")
WSD_STYLES = ("linear", "cosine", "exponential", "minus_sqrt")


def cosine_coeff(r: np.ndarray) -> np.ndarray:
    """``0.5 * (cos(pi * r) + 1.0)``: 1 at r = 0, 0 at r = 1 (Megatron's order)."""
    return 0.5 * (np.cos(np.pi * r) + 1.0)


def wsd_coeff(q: np.ndarray, style: str) -> np.ndarray:
    """Megatron's WSD annealing coefficient for the decay fraction ``q`` in [0, 1].

    linear ``1 - q``; cosine ``0.5 (cos(pi q) + 1)``; exponential ``2 * 0.5**q - 1``
    (Megatron's normalised form: 1 at q = 0, 0 at q = 1); minus_sqrt ``1 - sqrt(q)``.
    """
    if style == "linear":
        return 1.0 - q
    if style == "cosine":
        return cosine_coeff(q)
    if style == "exponential":
        return (2.0 * np.power(0.5, q)) - 1.0
    if style == "minus_sqrt":
        return 1.0 - np.sqrt(q)
    raise ValueError(f"unknown WSD decay style {style!r}; expected one of {WSD_STYLES}")


def warmup_decay(n: np.ndarray, *, init: float, peak: float, final: float, warmup: float,
                 decay: float, style: str, wsd_decay: float = 0.0,
                 wsd_style: str = "linear") -> np.ndarray:
    """Megatron's ``OptimizerParamScheduler.get_lr`` on an array of step counts ``n``.

    - ``warmup > 0 and n <= warmup``: ``init + (peak - init) * n / warmup``
    - ``constant``: ``peak``
    - ``n > decay``: ``final``
    - ``inverse-square-root``: ``max(final, peak * sqrt(max(warmup, 1)) / sqrt(max(n, 1)))``
    - else ``r = (n - warmup) / (decay - warmup)`` and ``final + c * (peak - final)``
      with ``c = 1 - r`` (linear), ``0.5 (cos(pi r) + 1)`` (cosine) or, for WSD,
      ``c = 1`` until ``decay - wsd_decay`` then ``wsd_coeff(q, wsd_style)`` with
      ``q = (n - (decay - wsd_decay)) / wsd_decay``.
    """
    n = np.asarray(n, dtype=np.float64)
    out = np.empty_like(n)
    in_warmup = (n <= warmup) if warmup > 0 else np.zeros(n.shape, dtype=bool)
    out[in_warmup] = init + ((peak - init) * n[in_warmup] / warmup)
    rest = ~in_warmup
    if style == "constant":
        out[rest] = peak
        return out
    past = rest & (n > decay)
    out[past] = final
    mid = rest & ~past
    m = n[mid]
    if style == "inverse-square-root":
        w = max(warmup, 1.0)
        out[mid] = np.maximum(final, peak * np.sqrt(w) / np.sqrt(np.maximum(m, 1.0)))
        return out
    delta = peak - final
    if style == "linear":
        coeff = 1.0 - (m - warmup) / (decay - warmup)
    elif style == "cosine":
        coeff = cosine_coeff((m - warmup) / (decay - warmup))
    elif style == "WSD":
        start = decay - wsd_decay
        coeff = np.ones_like(m)
        annealing = m > start
        coeff[annealing] = wsd_coeff((m[annealing] - start) / wsd_decay, wsd_style)
    else:
        raise ValueError(f"unknown decay style {style!r}; expected one of {DECAY_STYLES}")
    out[mid] = final + coeff * delta
    return out


def anneal(start: np.ndarray | float, end: np.ndarray | float, pct: np.ndarray, shape: str) -> np.ndarray:
    """torch OneCycleLR's annealing from ``start`` (pct = 0) to ``end`` (pct = 1).

    cos: ``end + (start - end) / 2 * (cos(pi pct) + 1)``; linear: ``(end - start) * pct + start``.
    """
    if shape == "cos":
        return end + (start - end) / 2.0 * (np.cos(np.pi * pct) + 1)
    if shape == "linear":
        return (end - start) * pct + start
    raise ValueError(f"anneal shape must be 'cos' or 'linear', got {shape!r}")
