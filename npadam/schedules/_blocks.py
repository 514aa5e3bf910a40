"""Building-block schedules.

``k`` is the 0-based optimizer-update index as seen by the schedule (inside a
``join`` it is the index relative to the segment start). ``T`` is a schedule's
length in updates. Every formula below is exactly what ``_values`` computes.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np

from .. import _validate as V
from ._base import Schedule, register
from ._shapes import WSD_STYLES, anneal, cosine_coeff, warmup_decay


def _ceil_div(n: int | None, d: int) -> int | None:
    return None if n is None else -(-n // d)


class _Ramp(Schedule):
    """A schedule that reaches its end value after ``params["steps"]`` updates."""

    @property
    def horizon(self) -> int | None:
        return self._params["steps"] or None


def _frac(k: np.ndarray, steps: int) -> np.ndarray:
    """``min(k, steps) / steps`` (1 everywhere when ``steps == 0``)."""
    if steps == 0:
        return np.ones(k.shape)
    return np.minimum(k, steps) / steps


@register
class Constant(Schedule):
    """``value`` at every step."""

    kind = "constant"

    def __init__(self, value: float) -> None:
        self._store(value=V.real("value", value))

    def _values(self, k: np.ndarray) -> np.ndarray:
        return np.full(k.shape, self._params["value"])


@register
class Linear(_Ramp):
    """``init + (final - init) * min(k, T) / T``: a ramp over ``steps = T``, then ``final``."""

    kind = "linear"

    def __init__(self, init: float, final: float, steps: int) -> None:
        self._store(init=V.real("init", init), final=V.real("final", final),
                    steps=V.integer("steps", steps, lo=0))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        return p["init"] + (p["final"] - p["init"]) * _frac(k, p["steps"])


@register
class Cosine(_Ramp):
    """Half-cosine from ``init`` to the floor ``final`` over ``steps = T``, then ``final``.

    ``final + 0.5 * (cos(pi * min(k, T) / T) + 1) * (init - final)``
    """

    kind = "cosine"

    def __init__(self, init: float, steps: int, final: float = 0.0) -> None:
        self._store(init=V.real("init", init), steps=V.integer("steps", steps, lo=0),
                    final=V.real("final", final))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        return p["final"] + cosine_coeff(_frac(k, p["steps"])) * (p["init"] - p["final"])


@register
class Polynomial(_Ramp):
    """``final + (init - final) * (1 - min(k, T) / T) ** power`` (power 1 is linear)."""

    kind = "polynomial"

    def __init__(self, init: float, final: float, steps: int, power: float = 1.0) -> None:
        self._store(init=V.real("init", init), final=V.real("final", final),
                    steps=V.integer("steps", steps, lo=0), power=V.real("power", power, lo=0.0, lo_open=True))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        return (p["init"] - p["final"]) * (1.0 - _frac(k, p["steps"])) ** p["power"] + p["final"]


@register
class Exponential(Schedule):
    """Rate-based decay: ``init * rate ** (k / transition_steps)``.

    With ``staircase`` the exponent is ``floor(k / transition_steps)``. ``final``,
    when given, bounds the value: from below when ``rate < 1``, from above when
    ``rate > 1`` (a growing exponential is an exponential LR range test).
    """

    kind = "exponential"

    def __init__(self, init: float, rate: float, transition_steps: int = 1,
                 staircase: bool = False, final: float | None = None) -> None:
        self._store(init=V.real("init", init), rate=V.real("rate", rate, lo=0.0, lo_open=True),
                    transition_steps=V.integer("transition_steps", transition_steps, lo=1),
                    staircase=bool(staircase),
                    final=None if final is None else V.real("final", final))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        e = k // p["transition_steps"] if p["staircase"] else k / p["transition_steps"]
        with np.errstate(over="ignore", under="ignore"):  # a growing rate may pass the float range
            out = p["init"] * np.power(p["rate"], e.astype(np.float64))
        if p["final"] is not None:
            out = np.maximum(out, p["final"]) if p["rate"] < 1 else np.minimum(out, p["final"])
        return out


@register
class InverseSqrt(Schedule):
    """``max(final, peak / sqrt((k + timescale) / timescale))``: ``peak`` at k = 0."""

    kind = "inverse_sqrt"

    def __init__(self, peak: float, timescale: int = 10_000, final: float = 0.0) -> None:
        self._store(peak=V.real("peak", peak), timescale=V.integer("timescale", timescale, lo=1),
                    final=V.real("final", final))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        return np.maximum(p["final"], p["peak"] / np.sqrt((k + p["timescale"]) / p["timescale"]))


@register
class OneMinusSqrt(_Ramp):
    """``final + (init - final) * (1 - sqrt(min(k, T) / T))`` (the "1-sqrt" cooldown)."""

    kind = "one_minus_sqrt"

    def __init__(self, init: float, final: float, steps: int) -> None:
        self._store(init=V.real("init", init), final=V.real("final", final),
                    steps=V.integer("steps", steps, lo=0))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        return p["final"] + (1.0 - np.sqrt(_frac(k, p["steps"]))) * (p["init"] - p["final"])


WARMUP_SHAPES = ("linear", "log", "cosine", "1-sqrt")


@register
class Warmup(Schedule):
    """A warmup prefix of ``steps = W`` updates in front of ``after``.

    For ``k < W`` the value is ``init + (peak - init) * g(k)``; from ``k = W`` on it is
    ``after(k - W)``. ``peak`` defaults to ``after(0)``. Shapes ``g``:

    - ``linear``: ``k / W`` (reaches ``peak`` at k = W, the first step of ``after``)
    - ``log``: ``log(k + 1) / log(W)`` (DeepSpeed's: reaches ``peak`` at k = W - 1; W >= 2)
    - ``cosine``: ``0.5 * (1 - cos(pi * k / W))``
    - ``1-sqrt``: ``1 - sqrt(1 - k / W)``
    """

    kind = "warmup"

    def __init__(self, after: Schedule, steps: int, init: float = 0.0, shape: str = "linear",
                 peak: float | None = None) -> None:
        if not isinstance(after, Schedule):
            raise TypeError(f"after must be a Schedule, got {after!r}")
        shape = V.choice("shape", shape, WARMUP_SHAPES)
        steps = V.integer("steps", steps, lo=2 if shape == "log" else 0)
        self._store(after=after, steps=steps, init=V.real("init", init), shape=shape,
                    peak=None if peak is None else V.real("peak", peak))

    @property
    def horizon(self) -> int | None:
        h = self._params["after"].horizon
        return None if h is None else self._params["steps"] + h

    @property
    def limit(self) -> int | None:
        lim = self._params["after"].limit
        return None if lim is None else self._params["steps"] + lim

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        W, after = p["steps"], p["after"]
        peak = p["peak"] if p["peak"] is not None else float(after._values(np.zeros(1, np.int64))[0])
        out = np.empty(k.shape)
        w = k < W
        x = k[w].astype(np.float64)
        if p["shape"] == "linear":
            g = x / W
        elif p["shape"] == "log":
            g = np.log(x + 1) / np.log(W)
        elif p["shape"] == "cosine":
            g = 0.5 * (1.0 - np.cos(np.pi * x / W))
        else:
            g = 1.0 - np.sqrt(1.0 - x / W)
        out[w] = p["init"] + (peak - p["init"]) * g
        out[~w] = after._values(k[~w] - W)
        return out


@register
class Join(Schedule):
    """Piecewise composition: ``schedules[i]`` runs on ``boundaries[i-1] <= k < boundaries[i]``.

    Each piece sees the index relative to its own start, ``k - boundaries[i-1]``
    (optax's ``join_schedules``). ``len(boundaries) == len(schedules) - 1``.
    """

    kind = "join"

    def __init__(self, schedules: Sequence[Schedule], boundaries: Sequence[int]) -> None:
        schedules = list(schedules)
        if not schedules or not all(isinstance(s, Schedule) for s in schedules):
            raise TypeError(f"schedules must be a non-empty list of Schedule, got {schedules!r}")
        bounds = [V.integer(f"boundaries[{i}]", b, lo=0) for i, b in enumerate(boundaries)]
        if len(bounds) != len(schedules) - 1:
            raise ValueError(f"join needs len(boundaries) == len(schedules) - 1, got "
                             f"{len(bounds)} boundaries for {len(schedules)} schedules")
        if any(b1 <= b0 for b0, b1 in zip(bounds, bounds[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {bounds}")
        self._store(schedules=schedules, boundaries=bounds)

    @property
    def horizon(self) -> int | None:
        last, bounds = self._params["schedules"][-1], self._params["boundaries"]
        return None if last.horizon is None else (bounds[-1] if bounds else 0) + last.horizon

    @property
    def limit(self) -> int | None:
        last, bounds = self._params["schedules"][-1], self._params["boundaries"]
        return None if last.limit is None else (bounds[-1] if bounds else 0) + last.limit

    def _values(self, k: np.ndarray) -> np.ndarray:
        scheds, bounds = self._params["schedules"], self._params["boundaries"]
        idx = np.searchsorted(np.asarray(bounds, dtype=np.int64), k, side="right")
        out = np.empty(k.shape)
        starts = [0] + bounds
        for i, s in enumerate(scheds):
            m = idx == i
            if m.any():
                out[m] = s._values(k[m] - starts[i])
        return out


@register
class ScaleSteps(Schedule):
    """``schedule(k * factor)``: run a schedule defined in other units (samples, tokens).
    ``k * factor`` saturates at 2**62 (past the int64 range it would wrap)."""

    kind = "scale_steps"

    def __init__(self, schedule: Schedule, factor: int) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
        self._store(schedule=schedule, factor=V.integer("factor", factor, lo=1))

    @property
    def horizon(self) -> int | None:
        return _ceil_div(self._params["schedule"].horizon, self._params["factor"])

    @property
    def limit(self) -> int | None:
        return _ceil_div(self._params["schedule"].limit, self._params["factor"])

    def _values(self, k: np.ndarray) -> np.ndarray:
        f = self._params["factor"]  # k * f saturates at 2**62 instead of wrapping past int64
        return self._params["schedule"]._values(np.minimum(k, 2**62 // f) * f)


@register
class Multiply(Schedule):
    """``factor * schedule(k)``: e.g. a per-group lr multiplier (muP) on a shared schedule."""

    kind = "multiply"

    def __init__(self, schedule: Schedule, factor: float) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
        self._store(schedule=schedule, factor=V.real("factor", factor))

    @property
    def horizon(self) -> int | None:
        return self._params["schedule"].horizon

    @property
    def limit(self) -> int | None:
        return self._params["schedule"].limit

    def _values(self, k: np.ndarray) -> np.ndarray:
        return self._params["factor"] * self._params["schedule"]._values(k)


class _WarmupDecay(Schedule):
    """Shared evaluation for the Megatron-shaped warmup + decay schedules."""

    _style = ""

    @property
    def horizon(self) -> int | None:
        return self._params["total_steps"]

    def _shape_args(self) -> dict[str, Any]:
        p = self._params
        return dict(init=p["init"], peak=p["peak"], final=p["final"],
                    warmup=float(p["warmup_steps"]), decay=float(p["total_steps"]), style=self._style)

    def _check_common(self, peak: float, warmup_steps: int, total_steps: int,
                      final: float, init: float) -> dict[str, Any]:
        d = dict(peak=V.real("peak", peak), warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0),
                 total_steps=V.integer("total_steps", total_steps, lo=1),
                 final=V.real("final", final), init=V.real("init", init))
        if d["warmup_steps"] >= d["total_steps"]:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps})")
        return d

    def _values(self, k: np.ndarray) -> np.ndarray:
        return warmup_decay(k.astype(np.float64), **self._shape_args())


@register
class WarmupCosine(_WarmupDecay):
    """Linear warmup from ``init`` to ``peak`` over ``warmup_steps = W``, cosine to ``final``
    at ``total_steps = T`` (T counts the warmup), then ``final``.

    ``k <= W``: ``init + (peak - init) * k / W``; ``W < k <= T``:
    ``final + 0.5 * (cos(pi * (k - W) / (T - W)) + 1) * (peak - final)``; ``k > T``: ``final``.
    This is Megatron's ``cosine`` style with iterations as steps.
    """

    kind = "warmup_cosine"
    _style = "cosine"

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, final: float = 0.0,
                 init: float = 0.0) -> None:
        self._store(**self._check_common(peak, warmup_steps, total_steps, final, init))


@register
class WSD(_WarmupDecay):
    """Warmup-stable-decay (Megatron's ``WSD`` style).

    Linear warmup over ``warmup_steps = W``, ``peak`` until ``T - S`` (``T =
    total_steps``, ``S = decay_steps``), then ``final + c(q) * (peak - final)`` with
    ``q = (k - (T - S)) / S`` and ``c`` one of ``linear`` (1 - q), ``cosine``,
    ``exponential`` (Megatron's normalised ``2 * 0.5**q - 1``) or ``minus_sqrt``
    (1 - sqrt(q), also accepted as ``"1-sqrt"``); ``final`` after T.
    """

    kind = "wsd"
    _style = "WSD"

    def __init__(self, peak: float, warmup_steps: int, total_steps: int, decay_steps: int,
                 final: float = 0.0, init: float = 0.0, decay: str = "linear") -> None:
        d = self._check_common(peak, warmup_steps, total_steps, final, init)
        decay = "minus_sqrt" if decay == "1-sqrt" else decay
        d["decay"] = V.choice("decay", decay, WSD_STYLES)
        d["decay_steps"] = V.integer("decay_steps", decay_steps, lo=1)
        if d["decay_steps"] > d["total_steps"] - d["warmup_steps"]:
            raise ValueError(f"decay_steps ({decay_steps}) must be <= total_steps - warmup_steps "
                             f"({d['total_steps'] - d['warmup_steps']})")
        self._store(**d)

    def _shape_args(self) -> dict[str, Any]:
        return dict(super()._shape_args(), wsd_decay=float(self._params["decay_steps"]),
                    wsd_style=self._params["decay"])


@register
class CosineRestarts(Schedule):
    """SGDR: cosine from ``peak`` to ``final`` over cycles of ``period * period_mult**i`` updates.

    Inside cycle ``i`` of length ``T_i`` at offset ``t`` (integers, found by exact
    integer arithmetic): ``final + (peak - final) * (1 + cos(pi * t / T_i)) / 2``;
    ``peak_decay`` multiplies the peak of cycle ``i`` by ``peak_decay**i``.
    """

    kind = "cosine_restarts"

    def __init__(self, peak: float, period: int, final: float = 0.0, period_mult: int = 1,
                 peak_decay: float = 1.0) -> None:
        self._store(peak=V.real("peak", peak), period=V.integer("period", period, lo=1),
                    final=V.real("final", final), period_mult=V.integer("period_mult", period_mult, lo=1),
                    peak_decay=V.real("peak_decay", peak_decay, lo=0.0))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        cycle, t, length = restart_position(k, p["period"], p["period_mult"])
        peak = p["peak"] * np.power(p["peak_decay"], cycle.astype(np.float64))
        return p["final"] + (peak - p["final"]) * (1 + np.cos(np.pi * t / length)) / 2


def restart_position(k: np.ndarray, period: int, mult: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Return ``(cycle, offset, cycle_length)`` int64 arrays for SGDR cycles.

    Cycle ``i`` starts at ``period * (mult**i - 1) / (mult - 1)`` (``period * i`` when
    ``mult == 1``). The cycle starts are tabulated with Python integers (exact, no
    overflow) up to the int64 range and looked up with a binary search.
    """
    k = np.asarray(k, dtype=np.int64)
    if mult == 1:
        return k // period, k % period, np.full(k.shape, period, dtype=np.int64)
    limit = np.iinfo(np.int64).max
    starts, length = [0], period
    while starts[-1] <= limit - length:
        starts.append(starts[-1] + length)
        length *= mult
    starts.append(limit)  # the last cycle runs to the end of the int64 range
    table = np.asarray(starts, dtype=np.int64)
    cycle = np.searchsorted(table, k, side="right") - 1
    return cycle, k - table[cycle], table[cycle + 1] - table[cycle]


ANNEAL_SHAPES = ("cos", "linear")


@register
class OneCycle(Schedule):
    """One-cycle policy, torch ``OneCycleLR`` semantics, for the lr or for beta1.

    Knots (floats, as torch computes them) with ``T = total_steps``, ``p = pct_start``:
    two-phase ``[0, p*T - 1, T - 1]``, three-phase ``[0, p*T - 1, 2*p*T - 2, T - 1]``.
    lr values at the knots: ``peak/div_factor -> peak -> peak/div_factor/final_div_factor``
    (three-phase: ``initial -> peak -> initial -> min``). beta1 (``quantity="momentum"``)
    runs inversely: ``max_momentum -> base_momentum -> max_momentum`` (three-phase ends
    flat at ``max_momentum``). Between knots ``a`` and ``b`` the value anneals with
    ``pct = (k - a) / (b - a)`` (``cos``: ``end + (start - end) / 2 * (cos(pi pct) + 1)``).

    ``horizon="hold"`` keeps the last value after ``T - 1``; ``horizon="torch"``
    reproduces torch exactly: the last phase extrapolates at ``k = T`` and any
    ``k > T`` raises ``ValueError``.
    """

    kind = "one_cycle"

    def __init__(self, peak: float, total_steps: int, pct_start: float = 0.3, div_factor: float = 25.0,
                 final_div_factor: float = 1e4, anneal: str = "cos", three_phase: bool = False,
                 quantity: str = "lr", base_momentum: float = 0.85, max_momentum: float = 0.95,
                 horizon: str = "hold") -> None:
        d = dict(peak=V.real("peak", peak), total_steps=V.integer("total_steps", total_steps, lo=1),
                 pct_start=V.real("pct_start", pct_start, lo=0.0, hi=1.0),
                 div_factor=V.real("div_factor", div_factor, lo=0.0, lo_open=True),
                 final_div_factor=V.real("final_div_factor", final_div_factor, lo=0.0, lo_open=True),
                 anneal=V.choice("anneal", anneal, ANNEAL_SHAPES), three_phase=bool(three_phase),
                 quantity=V.choice("quantity", quantity, ("lr", "momentum")),
                 base_momentum=V.real("base_momentum", base_momentum),
                 max_momentum=V.real("max_momentum", max_momentum),
                 horizon=V.choice("horizon", horizon, ("hold", "torch")))
        ends = self._knots(d["total_steps"], d["pct_start"], d["three_phase"])[1:]
        if any(b == a for a, b in zip([0.0] + ends, ends)):
            raise ValueError(f"one_cycle has an empty phase: knots {[0.0] + ends} from total_steps="
                             f"{total_steps}, pct_start={pct_start} (torch divides by zero here)")
        self._store(**d)

    @property
    def horizon(self) -> int | None:
        return self._params["total_steps"]

    @property
    def limit(self) -> int | None:
        return self._params["total_steps"] + 1 if self._params["horizon"] == "torch" else None

    @staticmethod
    def _knots(total: int, pct: float, three: bool) -> list[float]:
        if three:
            return [0.0, float(pct * total) - 1, float(2 * pct * total) - 2, float(total) - 1]
        return [0.0, float(pct * total) - 1, float(total) - 1]

    def knot_values(self) -> list[float]:
        """The values at the knots, in order."""
        p = self._params
        if p["quantity"] == "momentum":
            lo, hi = p["base_momentum"], p["max_momentum"]
            return [hi, lo, hi, hi] if p["three_phase"] else [hi, lo, hi]
        initial = p["peak"] / p["div_factor"]
        low = initial / p["final_div_factor"]
        return [initial, p["peak"], initial, low] if p["three_phase"] else [initial, p["peak"], low]

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        knots = self._knots(p["total_steps"], p["pct_start"], p["three_phase"])
        vals = self.knot_values()
        if p["horizon"] == "torch" and k.size and k.max() > p["total_steps"]:
            raise ValueError(f"OneCycleLR is defined for steps 0..{p['total_steps']} "
                             f"(total_steps={p['total_steps']}); got step {int(k.max())}")
        x = k.astype(np.float64)
        if p["horizon"] == "hold":
            x = np.minimum(x, knots[-1])
        # torch's walk: the first phase whose end is >= x, else the last phase (knots may
        # be out of order when pct_start * total_steps < 1; torch then skips phase 0)
        last = len(knots) - 2
        phase = np.full(x.shape, last)
        for i in reversed(range(last)):
            phase[x <= knots[i + 1]] = i
        a = np.asarray(knots)[phase]
        b = np.asarray(knots)[phase + 1]
        start = np.asarray(vals)[phase]
        end = np.asarray(vals)[phase + 1]
        return anneal(start, end, (x - a) / (b - a), p["anneal"])


@register
class LRRangeTest(Schedule):
    """Linear LR range test (DeepSpeed's): ``init * (1 + rate * u)``, ``u = k / step_size``.

    With ``staircase``, ``u = floor(k / step_size)``. For an exponential range test
    use ``exponential(init, rate > 1)``.
    """

    kind = "lr_range_test"

    def __init__(self, init: float, step_size: int = 2000, rate: float = 1.0, staircase: bool = False) -> None:
        self._store(init=V.real("init", init), step_size=V.integer("step_size", step_size, lo=1),
                    rate=V.real("rate", rate), staircase=bool(staircase))

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        u = np.floor(k / p["step_size"]) if p["staircase"] else k / p["step_size"]
        return p["init"] * (1 + p["rate"] * u)


WEIGHT_DECAY_STYLES = ("constant", "linear", "cosine")


@register
class WeightDecaySchedule(_Ramp):
    """Weight decay from ``start`` to ``end`` over ``steps = N`` (Megatron's semantics).

    ``k > N``: ``end``; else with ``r = k / N``: constant ``end`` (requires ``start ==
    end``), linear ``start + r * (end - start)``, cosine
    ``start + 0.5 * (cos(pi * (1 - r)) + 1) * (end - start)``.
    """

    kind = "weight_decay"

    def __init__(self, start: float, end: float, steps: int, style: str = "linear") -> None:
        d = dict(start=V.real("start", start, lo=0.0), end=V.real("end", end, lo=0.0),
                 steps=V.integer("steps", steps, lo=1), style=V.choice("style", style, WEIGHT_DECAY_STYLES))
        if d["style"] == "constant" and d["start"] != d["end"]:
            raise ValueError(f"constant weight decay needs start == end, got start={start}, end={end}")
        self._store(**d)

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        out = np.full(k.shape, p["end"])
        if p["style"] == "constant":
            return out
        m = k <= p["steps"]
        r = k[m] / p["steps"]
        coeff = r if p["style"] == "linear" else 0.5 * (np.cos(np.pi * (1 - r)) + 1.0)
        out[m] = p["start"] + coeff * (p["end"] - p["start"])
        return out
