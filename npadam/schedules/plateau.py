"""``Plateau``: torch's ``ReduceLROnPlateau`` as a stateful Schedule (a metric controller).

Every other schedule is a pure function of the update index ``k``. ``Plateau`` wraps
one (or a constant lr) and multiplies it down when a monitored metric stops
improving: the training loop calls ``p.step(val_loss)`` (torch's
``scheduler.step(metrics)``) and the optimizer keeps evaluating ``p(k)``.

Controller (torch 2.13's rules, step for step). ``step(metric)`` advances
``last_epoch`` by one; the metric is *better* than ``best`` when

====== ========== ==========================================
mode   threshold  better
====== ========== ==========================================
min    rel        ``metric < best * (1.0 - threshold)``
min    abs        ``metric < best - threshold``
max    rel        ``metric > best * (threshold + 1.0)``
max    abs        ``metric > best + threshold``
====== ========== ==========================================

``best`` starts at ``+inf`` (``min``) or ``-inf`` (``max``). A better metric becomes
``best`` and clears ``num_bad_epochs``; any other (a NaN included: it compares false)
adds one. During a cooldown (``cooldown_counter > 0``) the counter is decremented and
bad epochs are not counted. When ``num_bad_epochs > patience`` the lr is reduced,
``cooldown_counter = cooldown`` and ``num_bad_epochs = 0``.

Value. With ``n = num_reductions`` reductions so far, ``p(k)`` is the wrapped value
``x = schedule(k)`` with torch's reduction applied ``n`` times in order::

    new = max(x * factor, min_lr)
    x = new if x - new > eps else x

so that with a constant lr the sequence of values is torch's bit for bit (repeated
multiplication, not ``factor ** n``). With a schedule, every reduction applies to the
schedule's current value: ``p(k)`` does not remember the step at which a reduction
happened, it is "the schedule, reduced n times" (a warmup keeps warming up, reduced).
The eps rule, applied to the current value, means a reduction that was too small to
apply at one ``k`` (``x * (1 - factor) <= eps`` or ``x`` already at ``min_lr``) may
apply at another.

State (torch's names): ``best``, ``num_bad_epochs``, ``cooldown_counter``,
``last_epoch`` and ``num_reductions``; ``state_dict()`` / ``load_state_dict()``, and
``to_dict()`` carries it under ``"state"`` (``config_dict()`` does not), so the
optimizer's ``state_dict()`` and ``npadam.checkpoint`` restore it into the very
object the training loop steps.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Mapping

import numpy as np

from .. import _validate as V
from ._base import Schedule, register

__all__ = ["Plateau"]

MODES = ("min", "max")
THRESHOLD_MODES = ("rel", "abs")
STATE_KEYS = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch", "num_reductions")


def _word(name: str, value: Any, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str):  # torch: "mode " + value, a TypeError for a non-string
        raise TypeError(f"{name} must be a string, one of {', '.join(map(repr, choices))}; got {value!r}")
    return V.choice(name, value, choices)


def _as_float(x: Any, what: str) -> float:
    """``x`` as a float; TypeError for a non-number (bools, strings, complex), ValueError for a
    number too large for a float."""
    if isinstance(x, (bool, np.bool_)) or not isinstance(x, numbers.Real):
        raise TypeError(f"{what} must be a real number, got {type(x).__name__} {x!r}")
    try:
        return float(x)
    except OverflowError:
        raise ValueError(f"{what} is too large for a float: {str(x)[:20]}...") from None


def metric_value(metric: Any) -> float:
    """A metric as ``step`` reads it: a real number (Python, NumPy) or a one-element array or
    tensor of a real dtype (a 0-dim torch loss), as a float. NaN and +-inf are metrics (torch
    compares them: they are never better than ``best``, except -inf / +inf in min / max mode)."""
    if not isinstance(metric, numbers.Number) and hasattr(metric, "item") and hasattr(metric, "shape"):
        size = math.prod(tuple(metric.shape))
        if size != 1:
            raise TypeError(f"metric must be one number, got an array of shape {tuple(metric.shape)}")
        return _as_float(metric.item(), "metric")
    return _as_float(metric, "metric")


def _state_float(name: str, x: Any) -> float:
    v = _as_float(x, f"state {name}")
    if math.isnan(v):
        raise ValueError(f"state {name} must not be NaN (a NaN metric is never a best)")
    return v


@register
class Plateau(Schedule):
    """torch's ``ReduceLROnPlateau`` around ``schedule`` (a Schedule or a constant lr >= 0).

    ``p.step(metric)`` is ``scheduler.step(metrics)``; ``p(k)`` is ``schedule(k)`` with the
    reductions so far applied (formulas in the module docstring). Arguments as torch's:
    ``mode`` ("min" | "max"), ``factor`` in [0, 1), ``patience`` >= 0 bad epochs,
    ``threshold`` >= 0 in ``threshold_mode`` ("rel" | "abs"), ``cooldown`` >= 0 epochs,
    ``min_lr`` >= 0 (one number: use one Plateau per group for per-group minimums), ``eps`` >= 0.
    ``state``: a ``state_dict()`` to start from (what ``from_dict`` passes).

    npadam is stricter than torch (which checks only ``factor < 1`` and the two modes):
    negative ``patience``, ``cooldown``, ``threshold``, ``min_lr``, ``eps`` or ``factor``, a
    fractional ``patience``/``cooldown`` and a metric given as a string are errors here.

    >>> from npadam import schedules
    >>> p = schedules.Plateau(0.1, patience=1)
    >>> [p.step(loss) for loss in (1.0, 1.0, 1.0)], p(0), p.num_reductions
    ([False, False, True], 0.010000000000000002, 1)
    """

    kind = "plateau"
    stateful = True

    def __init__(self, schedule: Schedule | float, mode: str = "min", factor: float = 0.1, patience: int = 10,
                 threshold: float = 1e-4, threshold_mode: str = "rel", cooldown: int = 0, min_lr: float = 0.0,
                 eps: float = 1e-8, state: Mapping[str, Any] | None = None) -> None:
        if not isinstance(schedule, Schedule):
            schedule = V.real("schedule (a constant lr)", schedule, lo=0.0)
        if isinstance(min_lr, (list, tuple)):
            raise TypeError(f"min_lr must be one number, got {min_lr!r}; for per-group minimums use one Plateau "
                            "per param group")
        self._store(schedule=schedule, mode=_word("mode", mode, MODES),
                    factor=V.real("factor", factor, lo=0.0, hi=1.0, hi_open=True),
                    patience=V.integer("patience", patience, lo=0),
                    threshold=V.real("threshold", threshold, lo=0.0),
                    threshold_mode=_word("threshold_mode", threshold_mode, THRESHOLD_MODES),
                    cooldown=V.integer("cooldown", cooldown, lo=0),
                    min_lr=V.real("min_lr", min_lr, lo=0.0) + 0.0,  # -0.0 -> 0.0
                    eps=V.real("eps", eps, lo=0.0))
        self._set(self._initial_state() if state is None else self._checked_state(state))

    # ------------------------------------------------------------------ state
    def _initial_state(self) -> dict[str, Any]:
        return {"best": math.inf if self._params["mode"] == "min" else -math.inf, "num_bad_epochs": 0,
                "cooldown_counter": 0, "last_epoch": 0, "num_reductions": 0}

    def _checked_state(self, state: Any) -> dict[str, Any]:
        if not isinstance(state, Mapping):
            raise TypeError(f"a Plateau state must be a mapping with keys {list(STATE_KEYS)}, got {state!r}")
        if set(state) != set(STATE_KEYS):
            raise ValueError(f"a Plateau state has the keys {list(STATE_KEYS)}; got {sorted(map(str, state))}")
        p = self._params
        out = {"best": _state_float("best", state["best"])}
        for key in STATE_KEYS[1:]:
            out[key] = V.integer(f"state {key}", state[key], lo=0)
        for key, top in (("num_bad_epochs", p["patience"]), ("cooldown_counter", p["cooldown"]),
                         ("num_reductions", out["last_epoch"]), ("num_bad_epochs", out["last_epoch"])):
            if out[key] > top:
                raise ValueError(f"state {key} is {out[key]}, more than {top} (patience {p['patience']}, "
                                 f"cooldown {p['cooldown']}, last_epoch {out['last_epoch']})")
        if out["cooldown_counter"] and not out["num_reductions"]:
            raise ValueError(f"state cooldown_counter is {out['cooldown_counter']} with no reduction yet")
        return out

    def _set(self, state: dict[str, Any]) -> None:
        self._best = state["best"]
        self._num_bad_epochs = state["num_bad_epochs"]
        self._cooldown_counter = state["cooldown_counter"]
        self._last_epoch = state["last_epoch"]
        self._num_reductions = state["num_reductions"]

    def state_dict(self) -> dict[str, Any]:
        """``{"best", "num_bad_epochs", "cooldown_counter", "last_epoch", "num_reductions"}`` (plain
        Python numbers; ``best`` is +-inf until a metric improves on it)."""
        return {"best": self._best, "num_bad_epochs": self._num_bad_epochs,
                "cooldown_counter": self._cooldown_counter, "last_epoch": self._last_epoch,
                "num_reductions": self._num_reductions}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output; checked first (keys, types, consistency with this
        Plateau's patience and cooldown), nothing changes on error."""
        self._set(self._checked_state(state))

    @property
    def best(self) -> float:
        """The best metric so far (``+inf`` / ``-inf`` before the first in min / max mode)."""
        return self._best

    @property
    def num_bad_epochs(self) -> int:
        """Consecutive ``step`` calls without improvement (reset by a reduction and in cooldown)."""
        return self._num_bad_epochs

    @property
    def cooldown_counter(self) -> int:
        """``step`` calls left in the cooldown after the last reduction."""
        return self._cooldown_counter

    @property
    def in_cooldown(self) -> bool:
        return self._cooldown_counter > 0

    @property
    def last_epoch(self) -> int:
        """How many times ``step`` was called (torch's ``last_epoch``: 0 after construction)."""
        return self._last_epoch

    @property
    def num_reductions(self) -> int:
        """How many reductions ``step`` triggered: ``p(k)`` applies torch's rule this many times."""
        return self._num_reductions

    # ------------------------------------------------------------------ controller
    def is_better(self, metric: float, best: float) -> bool:
        """torch's ``_is_better``, the same float operations (table in the module docstring)."""
        p = self._params
        if p["mode"] == "min":
            return metric < best * (1.0 - p["threshold"]) if p["threshold_mode"] == "rel" else \
                metric < best - p["threshold"]
        return metric > best * (p["threshold"] + 1.0) if p["threshold_mode"] == "rel" else \
            metric > best + p["threshold"]

    def step(self, metric: Any) -> bool:
        """torch's ``ReduceLROnPlateau.step(metrics)``. ``metric``: a real number or a one-element
        array / tensor (NaN and inf allowed, as in torch; a string or bool is a TypeError, raised
        before anything changes). Returns True when this call triggered a reduction (torch calls
        ``_reduce_lr``); where ``min_lr`` or the eps rule stop it, the value stays the same."""
        current = metric_value(metric)
        self._last_epoch += 1
        if self.is_better(current, self._best):
            self._best = current
            self._num_bad_epochs = 0
        else:
            self._num_bad_epochs += 1
        if self._cooldown_counter > 0:
            self._cooldown_counter -= 1
            self._num_bad_epochs = 0  # bad epochs in a cooldown are ignored
        if self._num_bad_epochs > self._params["patience"]:
            self._num_reductions += 1
            self._cooldown_counter = self._params["cooldown"]
            self._num_bad_epochs = 0
            return True
        return False

    # ------------------------------------------------------------------ value
    @property
    def horizon(self) -> int | None:
        s = self._params["schedule"]
        return s.horizon if isinstance(s, Schedule) else None

    @property
    def limit(self) -> int | None:
        s = self._params["schedule"]
        return s.limit if isinstance(s, Schedule) else None

    def reduce(self, x: np.ndarray, n: int) -> np.ndarray:
        """``x`` (float64) with torch's reduction ``n`` times (stops early once nothing moves)."""
        p = self._params
        factor, min_lr, eps = p["factor"], p["min_lr"], p["eps"]
        for _ in range(n):
            new = np.maximum(x * factor, min_lr)
            move = x - new > eps
            if not move.any():
                break
            x = np.where(move, new, x)
        return x

    def _values(self, k: np.ndarray) -> np.ndarray:
        s = self._params["schedule"]
        if not isinstance(s, Schedule):  # a constant lr: reduce the one value, then fill
            return np.full(k.shape, self.reduce(np.asarray([s], dtype=np.float64), self._num_reductions)[0])
        return self.reduce(np.asarray(s._values(k), dtype=np.float64), self._num_reductions)
