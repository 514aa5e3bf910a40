"""The closed forms of DeepSpeed's ``deepspeed.runtime.lr_schedules`` (the config side is ``deepspeed.py``).

DeepSpeed's schedulers start at ``last_batch_iteration = -1`` and set an initial
value in their constructor; the engine calls ``lr_scheduler.step()`` after each
successful optimizer step. So update ``k = 0`` uses the constructor's value and
update ``k >= 1`` uses ``f(k - 1)``, where ``f(i)`` is ``get_lr()`` at
``last_batch_iteration = i``. Constructor values: WarmupLR/WarmupDecayLR
``warmup_min_lr``; WarmupCosineLR ``0.0`` (its ``get_lr`` before the first step);
OneCycle ``cycle_min_lr`` and betas ``(cycle_min_mom, 0.99)``; LRRangeTest
``lr_range_test_min_lr``. A scheduler built with ``last_batch_iteration = L >= 0``
(a resumed run) is ``DeepSpeedResumed``: the optimizer's own value at ``k = 0``,
then ``f(L + k)``.
"""

from __future__ import annotations

import math
import warnings
from typing import Any

import numpy as np

from ... import _validate as V
from .._base import Schedule, register

#: the largest last_batch_iteration accepted: k + L + 1 must stay inside int64 for k < 2**62
MAX_LAST_BATCH_ITERATION = 2**61


class _DeepSpeedSchedule(Schedule):
    """``initial`` at k = 0, ``f(k - 1)`` after (DeepSpeed's step convention)."""

    def _initial(self) -> float:  # pragma: no cover - abstract
        raise NotImplementedError

    def _f(self, i: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def _values(self, k: np.ndarray) -> np.ndarray:
        out = np.full(k.shape, self._initial())
        later = k > 0
        out[later] = self._f(k[later] - 1)
        return out


def warmup_steps(value: Any) -> int:
    """DeepSpeed's check of ``warmup_num_steps``: a positive int (floats and bools are refused)."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"warmup_num_steps must be a positive integer, got {value!r}")
    return value


def _warmup_type(value: str) -> str:
    if value not in ("log", "linear"):
        warnings.warn(f"DeepSpeed uses log warmup for the unknown warmup_type {value!r}", stacklevel=3)
        return "log"
    return value


def _warmup_gamma(i: np.ndarray, steps: int, wtype: str) -> np.ndarray:
    """DeepSpeed's warmup fraction at ``last_batch_iteration = i`` (< steps)."""
    if wtype == "log":
        return (1.0 / math.log(steps)) * np.log(i + 1.0)
    return i / steps


@register
class DeepSpeedWarmupLR(_DeepSpeedSchedule):
    """WarmupLR (``total_num_steps=None``) and WarmupDecayLR.

    ``W = max(2, warmup_num_steps)``; ``lr = min + (max - min) * gamma(i)`` with
    ``gamma = log(i + 1) / log(W)`` (log) or ``i / W`` (linear) for ``i < W``, then 1
    (WarmupLR) or ``max(0, (T - i) / max(1, T - W))`` (WarmupDecayLR, ``T =
    total_num_steps``).
    """

    kind = "deepspeed_warmup_lr"

    def __init__(self, warmup_min_lr: float = 0.0, warmup_max_lr: float = 0.001,
                 warmup_num_steps: int = 1000, warmup_type: str = "log",
                 total_num_steps: int | None = None) -> None:
        self._store(warmup_min_lr=V.real("warmup_min_lr", warmup_min_lr),
                    warmup_max_lr=V.real("warmup_max_lr", warmup_max_lr),
                    warmup_num_steps=warmup_steps(warmup_num_steps), warmup_type=_warmup_type(warmup_type),
                    total_num_steps=None if total_num_steps is None else
                    V.integer("total_num_steps", total_num_steps))

    @property
    def horizon(self) -> int | None:
        T = self._params["total_num_steps"]
        return None if T is None else T + 1  # DeepSpeed's k-th update uses f(k - 1)

    def _initial(self) -> float:
        return self._params["warmup_min_lr"]

    def _f(self, i: np.ndarray) -> np.ndarray:
        p = self._params
        W, T = max(2, p["warmup_num_steps"]), p["total_num_steps"]
        gamma = np.ones(i.shape)
        w = i < W
        gamma[w] = _warmup_gamma(i[w], W, p["warmup_type"])
        if T is not None:
            gamma[~w] = np.maximum(0.0, (T - i[~w]).astype(np.float64) / float(max(1.0, T - W)))
        lo = p["warmup_min_lr"]
        return lo + ((p["warmup_max_lr"] - lo) * gamma)


@register
class DeepSpeedWarmupCosineLR(_DeepSpeedSchedule):
    """WarmupCosineLR: ``lr = base_lr * ratio(i)``; ``0.0`` for the first update.

    ``i < W``: ``ratio = wmin + g(i) * (1 - wmin)`` (g as WarmupLR); else
    ``p = min(1, (i - W + 1) / max(1, T - W))`` and
    ``ratio = max(0, cmin + (1 - cmin) * (1 + cos(pi p)) / 2)``.
    """

    kind = "deepspeed_warmup_cosine_lr"

    def __init__(self, base_lr: float, total_num_steps: int, warmup_min_ratio: float = 0.0,
                 warmup_num_steps: int = 1000, cos_min_ratio: float = 0.0001,
                 warmup_type: str = "log") -> None:
        self._store(base_lr=V.real("lr", base_lr), total_num_steps=V.integer("total_num_steps", total_num_steps),
                    warmup_min_ratio=V.real("warmup_min_ratio", warmup_min_ratio),
                    warmup_num_steps=warmup_steps(warmup_num_steps),
                    cos_min_ratio=V.real("cos_min_ratio", cos_min_ratio), warmup_type=_warmup_type(warmup_type))

    @property
    def horizon(self) -> int | None:
        return self._params["total_num_steps"] + 1

    def _initial(self) -> float:
        return 0.0

    def _f(self, i: np.ndarray) -> np.ndarray:
        p = self._params
        W, T = max(2, p["warmup_num_steps"]), p["total_num_steps"]
        ratio = np.empty(i.shape)
        w = i < W
        g = _warmup_gamma(i[w], W, p["warmup_type"])
        ratio[w] = p["warmup_min_ratio"] + g * (1.0 - p["warmup_min_ratio"])
        real_last = i[~w] - W + 1
        progress = np.minimum(1.0, real_last / max(1, T - W))
        r = (1 + np.cos(np.pi * progress)) / 2
        ratio[~w] = np.maximum(0.0, p["cos_min_ratio"] + (1.0 - p["cos_min_ratio"]) * r)
        return p["base_lr"] * ratio


@register
class DeepSpeedOneCycle(_DeepSpeedSchedule):
    """OneCycle (lr, or beta1 with ``quantity="momentum"``), stairs and post-cycle decay included.

    ``b = i + 1``, ``S = s1 + s2``, ``x = 1 + b/S - floor(1 + b/S)``, ``rho = s1 / S``;
    ``scale = x / rho`` if ``x <= rho`` else ``(x - 1) / (rho - 1)`` (stair counts
    quantise it). In the cycle (``i < S``): ``lr = min + (max - min) * scale``,
    ``beta1 = max_mom - (max_mom - min_mom) * scale``. After: ``lr = min / (1 + rate *
    d / decay_step_size)``, ``beta1 = max_mom * (1 + mom_rate * d / decay_step_size)``,
    ``d = i - S + 1`` (held at min / max_mom when the rate or step size is 0).
    """

    kind = "deepspeed_one_cycle"

    def __init__(self, cycle_min_lr: float, cycle_max_lr: float, decay_lr_rate: float = 0.0,
                 cycle_first_step_size: float = 2000, cycle_second_step_size: float | None = None,
                 cycle_first_stair_count: int = 0, cycle_second_stair_count: int | None = None,
                 decay_step_size: float = 0, cycle_min_mom: float = 0.8, cycle_max_mom: float = 0.9,
                 decay_mom_rate: float = 0.0, quantity: str = "lr") -> None:
        first = V.real("cycle_first_step_size", cycle_first_step_size)
        second = first if cycle_second_step_size is None else V.real("cycle_second_step_size", cycle_second_step_size)
        if first <= 0:
            raise ValueError(f"cycle_first_step_size must be positive, got {cycle_first_step_size}")
        if second < 0:
            raise ValueError(f"cycle_second_step_size must be non-negative, got {cycle_second_step_size}")
        self._store(cycle_min_lr=V.real("cycle_min_lr", cycle_min_lr),
                    cycle_max_lr=V.real("cycle_max_lr", cycle_max_lr),
                    decay_lr_rate=V.real("decay_lr_rate", decay_lr_rate),
                    cycle_first_step_size=cycle_first_step_size, cycle_second_step_size=cycle_second_step_size,
                    cycle_first_stair_count=V.integer("cycle_first_stair_count", cycle_first_stair_count),
                    cycle_second_stair_count=None if cycle_second_stair_count is None else
                    V.integer("cycle_second_stair_count", cycle_second_stair_count),
                    decay_step_size=V.real("decay_step_size", decay_step_size),
                    cycle_min_mom=V.real("cycle_min_mom", cycle_min_mom),
                    cycle_max_mom=V.real("cycle_max_mom", cycle_max_mom),
                    decay_mom_rate=V.real("decay_mom_rate", decay_mom_rate),
                    quantity=V.choice("quantity", quantity, ("lr", "momentum")))

    @property
    def horizon(self) -> int | None:
        p = self._params
        first = float(p["cycle_first_step_size"])
        second = first if p["cycle_second_step_size"] is None else float(p["cycle_second_step_size"])
        return int(np.ceil(first + second)) + 1

    def _initial(self) -> float:
        p = self._params
        return p["cycle_min_lr"] if p["quantity"] == "lr" else p["cycle_min_mom"]

    def _scale(self, i: np.ndarray) -> np.ndarray:
        p = self._params
        s1 = float(p["cycle_first_step_size"])
        s2 = s1 if p["cycle_second_step_size"] is None else float(p["cycle_second_step_size"])
        total = s1 + s2
        rho = s1 / total
        c1 = p["cycle_first_stair_count"]
        c2 = c1 if p["cycle_second_stair_count"] is None else p["cycle_second_stair_count"]
        b = (i + 1).astype(np.float64)
        x = 1.0 + b / total - np.floor(1 + b / total)
        first = x <= rho
        scale = np.empty(b.shape)
        scale[first] = x[first] / rho
        scale[~first] = (x[~first] - 1) / (rho - 1)
        stairs = np.where(first, c1, c2)
        q = stairs > 0
        if q.any():
            it = np.mod(b[q], total)
            st = stairs[q]
            pos = np.where(it <= s1, it * st / s1, (total - it) * st / (s2 if s2 else 1.0))
            scale[q] = np.floor(pos) / st
        return scale

    def _f(self, i: np.ndarray) -> np.ndarray:
        p = self._params
        s1 = float(p["cycle_first_step_size"])
        total = s1 + (s1 if p["cycle_second_step_size"] is None else float(p["cycle_second_step_size"]))
        out = np.empty(i.shape)
        cyc = i < total
        scale = self._scale(i[cyc])
        d = (i[~cyc] - total + 1) / p["decay_step_size"] if p["decay_step_size"] != 0 else None
        if p["quantity"] == "lr":
            lo, hi, rate = p["cycle_min_lr"], p["cycle_max_lr"], p["decay_lr_rate"]
            out[cyc] = lo + (hi - lo) * scale
            out[~cyc] = lo if d is None or rate == 0 else lo / (1 + rate * d)
        else:
            lo, hi, rate = p["cycle_min_mom"], p["cycle_max_mom"], p["decay_mom_rate"]
            out[cyc] = hi - (hi - lo) * scale
            out[~cyc] = hi if d is None or rate == 0 else hi * (1 + rate * d)
        return out


@register
class DeepSpeedResumed(Schedule):
    """A DeepSpeed scheduler built with ``last_batch_iteration = L >= 0`` (a resumed run).

    DeepSpeed's constructors set the group's lr (and OneCycle's betas) only when
    ``last_batch_iteration == -1``; with ``L >= 0`` they leave the optimizer's value alone,
    so update ``k = 0`` uses ``start`` (the optimizer's lr, or beta). Each engine step then
    advances the index from ``L``: update ``k >= 1`` uses ``f(L + k)``. ``schedule`` is the
    same scheduler started fresh (``L = -1``), whose update ``j >= 1`` is ``f(j - 1)``, so

    ``value(0) = start``, ``value(k) = schedule(k + L + 1)`` for ``k >= 1``.

    ``L = 0`` differs from a fresh start only at ``k = 0`` (the optimizer's value instead
    of the constructor's).
    """

    kind = "deepspeed_resumed"

    def __init__(self, schedule: Schedule, last_batch_iteration: int, start: float) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {type(schedule).__name__}")
        last = V.integer("last_batch_iteration", last_batch_iteration, lo=0)
        if last > MAX_LAST_BATCH_ITERATION:
            raise ValueError(f"last_batch_iteration must be <= 2**61, got {last_batch_iteration!r}")
        self._store(schedule=schedule, last_batch_iteration=last, start=V.real("start", start))

    def _shifted(self, n: int | None) -> int | None:
        return None if n is None else max(1, n - self._params["last_batch_iteration"] - 1)

    @property
    def horizon(self) -> int | None:
        return self._shifted(self._params["schedule"].horizon)

    @property
    def limit(self) -> int | None:
        return self._shifted(self._params["schedule"].limit)

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        out = np.full(k.shape, p["start"])
        later = k > 0
        out[later] = p["schedule"]._values(k[later] + (p["last_batch_iteration"] + 1))
        return out
