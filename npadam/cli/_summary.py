"""The one-screen summary of a dumped schedule (peak, warmup end, final value, budget)."""

from __future__ import annotations

from typing import Mapping

import numpy as np


def _g(v: float) -> str:
    return f"{v:.6g}"


def describe_lr(values: np.ndarray, name: str = "lr") -> list[str]:
    """Peak and where it occurs, warmup end, final value and the sum over the steps."""
    v = np.asarray(values, dtype=np.float64)
    ok = np.isfinite(v)
    if not ok.any():
        return [f"  {name}: no finite values"]
    w = np.where(ok, v, -np.inf)
    peak = float(w.max())
    at = np.flatnonzero(w == peak)
    first, last = int(at[0]), int(at[-1])
    if first == 0:
        warm = "no warmup (peak at step 0)"
    else:
        warm = f"warmup ends at step {first:,}"
    held = f", held to step {last:,}" if last > first and at.size == last - first + 1 else ""
    low = float(np.where(ok, v, np.inf).min())
    lines = [
        f"  {name:<12} peak {_g(peak)} at step {first:,} ({warm}{held})",
        f"  {'':<12} final {_g(float(v[-1]))} at step {v.size - 1:,}; "
        f"min {_g(low)} at step {int(np.flatnonzero(v == low)[0]):,}",
        f"  {'':<12} budget sum({name}) over {v.size:,} steps = {_g(float(np.sum(v[ok])))}",
    ]
    return lines


def describe_other(values: np.ndarray, name: str) -> list[str]:
    v = np.asarray(values, dtype=np.float64)
    if v.size == 0:
        return [f"  {name}: empty"]
    return [f"  {name:<12} {_g(float(v[0]))} -> {_g(float(v[-1]))} "
            f"(min {_g(float(np.nanmin(v)))}, max {_g(float(np.nanmax(v)))})"]


def _defined(v: np.ndarray) -> np.ndarray:
    """Drop the NaN padding after the last defined step (a compared schedule that stops early)."""
    ok = np.flatnonzero(~np.isnan(v))
    return v[:ok[-1] + 1] if ok.size else v[:0]


def summary(label: str, columns: Mapping[str, np.ndarray]) -> list[str]:
    """Lines describing one schedule (set): the lr in detail, the other quantities briefly."""
    cols = {name: _defined(np.asarray(v, dtype=np.float64)) for name, v in columns.items()}
    n = max((c.size for c in cols.values()), default=0)
    lines = [f"{label}: {n:,} steps (0 .. {n - 1:,})"]
    for i, (name, values) in enumerate(cols.items()):
        lines += describe_lr(values, name) if i == 0 else describe_other(values, name)
    return lines
