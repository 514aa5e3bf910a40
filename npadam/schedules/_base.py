"""The `Schedule` base class: step validation, vectorized evaluation, serialization.

A schedule is a pure function of ``k``, the 0-based index of the optimizer update
(``k = 0`` is the first ``step()``). Every schedule is a plain, picklable object
that carries the parameters it was built from:

- ``s(k)`` for an integer returns a Python ``float``;
- ``s(array)`` returns a ``float64`` ndarray of the same shape, computed with array
  operations (no Python loop over steps);
- ``s.to_dict()`` is JSON-able and ``from_dict(s.to_dict())`` rebuilds an equal
  schedule.

Subclasses set ``kind`` (the registry name used by ``to_dict``), validate their
arguments in ``__init__``, store them with ``_store`` and implement ``_values``.

A *stateful* schedule (``stateful = True``; ``Plateau``) also holds state that changes
as training runs (a metric controller). It implements ``state_dict()`` /
``load_state_dict()`` and takes ``state=`` in its constructor; ``to_dict()`` then
carries ``"state"`` (so a state dict or checkpoint restores it), ``config_dict()``
leaves it out (what "the same schedule" means when a checkpoint is compared), and
``load_state_from(other)`` copies the state of an equally configured schedule into
this one in place, so the object a training loop holds stays the one in use.
"""

from __future__ import annotations

import numbers
from typing import Any, ClassVar, Iterator, Mapping

import numpy as np

__all__ = ["Schedule", "from_dict", "as_steps", "register"]

_REGISTRY: dict[str, type["Schedule"]] = {}


def register(cls: type["Schedule"]) -> type["Schedule"]:
    """Class decorator: make ``cls`` reachable from ``from_dict`` under ``cls.kind``."""
    if not getattr(cls, "kind", None):
        raise TypeError(f"{cls.__name__} needs a non-empty 'kind' to be registered")
    if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
        raise TypeError(f"schedule kind {cls.kind!r} is registered twice")
    _REGISTRY[cls.kind] = cls
    return cls


def as_steps(step: Any) -> tuple[np.ndarray, bool]:
    """Validate optimizer-update indices; return ``(int64 array, is_scalar)``.

    Accepts Python/NumPy integers, integral floats (``3.0``) and arrays of either.
    Raises ``ValueError`` for negative, fractional or non-finite steps and
    ``TypeError`` for anything that is not a number (bools included).
    """
    scalar = isinstance(step, (numbers.Number, np.generic)) and not isinstance(step, np.ndarray)
    if isinstance(step, (bool, np.bool_)):
        raise TypeError(f"step must be an integer, got the bool {step!r}")
    arr = np.asarray(step)
    if arr.dtype.kind in "iu":
        k = arr.astype(np.int64, copy=False)
    elif arr.dtype.kind == "f":
        if arr.size and not np.all(np.isfinite(arr)):
            raise ValueError(f"steps must be finite integers, got {_first_bad(arr, ~np.isfinite(arr))}")
        frac = arr != np.floor(arr)
        if arr.size and np.any(frac):
            raise ValueError(f"steps must be integers, got {_first_bad(arr, frac)}")
        if arr.size and np.max(np.abs(arr)) >= 2.0**62:
            raise ValueError(f"step {np.max(np.abs(arr))!r} is too large (at most 2**62)")
        k = arr.astype(np.int64)
    else:
        raise TypeError(f"steps must be integers, got {type(step).__name__} with dtype {arr.dtype}")
    if k.size and np.min(k) < 0:
        raise ValueError(f"steps must be >= 0, got {_first_bad(k, k < 0)}")
    return k, scalar and k.ndim == 0


def _first_bad(arr: np.ndarray, mask: np.ndarray) -> Any:
    return arr[mask].flat[0].item() if arr.ndim else arr.item()


def _to_jsonable(value: Any, how: str = "dict") -> Any:
    """``value`` as JSON; nested schedules by ``to_dict`` (``how="dict"``), ``config_dict``
    (``"config"``) or ``described`` (``"described"``, where a Python callable becomes its name)."""
    if isinstance(value, Schedule):
        if how == "described":
            return described(value)
        return value.config_dict() if how == "config" else value.to_dict()
    if how == "described" and callable(value) and not isinstance(value, type):
        from ._callable import describe

        return {"python_callable": describe(value)}
    if isinstance(value, (list, tuple)):
        return [_to_jsonable(v, how) for v in value]
    if isinstance(value, Mapping):
        return {str(k): _to_jsonable(v, how) for k, v in value.items()}
    if isinstance(value, np.generic):
        return value.item()
    return value


def described(s: "Schedule") -> dict[str, Any]:
    """``s.config_dict()`` with each Python callable written as ``{"python_callable": name}``: what a
    state dict keeps of a schedule holding code (its base lr, scale, ... are compared on load)."""
    return {"type": s.kind, **_to_jsonable(s._params, "described")}


def _schedules_in(value: Any) -> Iterator["Schedule"]:
    """Every schedule in ``value`` (a schedule, or lists / mappings of them), depth first."""
    if isinstance(value, Schedule):
        yield from value._tree()
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from _schedules_in(v)
    elif isinstance(value, Mapping):
        yield from _schedules_in(list(value.values()))


def _from_jsonable(value: Any) -> Any:
    if isinstance(value, Mapping) and "type" in value and value["type"] in _REGISTRY:
        return from_dict(value)
    if isinstance(value, list):
        return [_from_jsonable(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _from_jsonable(v) for k, v in value.items()}
    return value


class Schedule:
    """Base class of every schedule; see the module docstring for the contract."""

    kind: ClassVar[str] = ""
    #: True when the schedule holds state beyond its params (see the module docstring)
    stateful: ClassVar[bool] = False

    def _store(self, **params: Any) -> None:
        """Record the constructor arguments (what ``to_dict`` and ``repr`` show)."""
        self._params = params

    @property
    def params(self) -> dict[str, Any]:
        """The constructor arguments, as given after validation."""
        return dict(self._params)

    @property
    def horizon(self) -> int | None:
        """Updates after which the schedule has done what it was configured to do
        (its total steps, decay length, ...), or None when it has no end."""
        return None

    @property
    def limit(self) -> int | None:
        """How many updates (0 .. limit - 1) the schedule can be evaluated on; None: all.
        Only schedules that raise past their end have one (torch's OneCycleLR)."""
        return None

    def _values(self, k: np.ndarray) -> np.ndarray:  # pragma: no cover - abstract
        """Return float64 values for the int64 step array ``k`` (any shape): a new array (``s(k)``
        hands it to the caller), or a scalar / broadcastable one."""
        raise NotImplementedError

    def __call__(self, step: Any) -> Any:
        k, scalar = as_steps(step)
        # always evaluate on a 1-d array: NumPy's scalar and SIMD array paths of
        # pow/log/cos can differ by an ulp, and s(k) must equal s(array)[i] bit for bit
        flat = np.asarray(self._values(k.reshape(-1)), dtype=np.float64)
        if flat.shape != (k.size,):  # a scalar or broadcastable result: a full array of its own
            flat = np.array(np.broadcast_to(flat, (k.size,)))
        out = flat.reshape(k.shape)
        return float(out) if scalar else out if out.flags.writeable else out.copy()

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able description: ``{"type": kind, **params}``, plus ``"state": state_dict()``
        for a stateful schedule (nested schedules likewise)."""
        d = {"type": self.kind, **_to_jsonable(self._params)}
        if self.stateful:
            d["state"] = self.state_dict()
        return d

    def config_dict(self) -> dict[str, Any]:
        """``to_dict()`` without the state of any stateful schedule in it: the configuration."""
        return {"type": self.kind, **_to_jsonable(self._params, "config")}

    def state_dict(self) -> dict[str, Any]:
        """The state of a stateful schedule; a pure function of the step has none."""
        raise TypeError(f"a {type(self).__name__} schedule has no state (it is a function of the step)")

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore ``state_dict()`` output (stateful schedules only)."""
        raise TypeError(f"a {type(self).__name__} schedule has no state (it is a function of the step)")

    def _tree(self) -> Iterator["Schedule"]:
        """This schedule, then those in its params, depth first in params order."""
        yield self
        yield from _schedules_in(list(self._params.values()))

    @property
    def has_state(self) -> bool:
        """Whether this schedule or one inside it is stateful."""
        return any(s.stateful for s in self._tree())

    def load_state_from(self, other: "Schedule") -> None:
        """Copy the state of ``other``, a schedule with the same ``config_dict()``, into the stateful
        schedules inside this one, in place (ValueError naming both configs otherwise)."""
        if not isinstance(other, Schedule) or other.config_dict() != self.config_dict():
            mine, theirs = self.config_dict(), other.config_dict() if isinstance(other, Schedule) else other
            raise ValueError(f"cannot load the state of {theirs!r} into a schedule configured as {mine!r}")
        for mine_s, theirs_s in zip(self._tree(), other._tree()):
            if mine_s.stateful:
                mine_s.load_state_dict(theirs_s.state_dict())

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._params.items())
        return f"{type(self).__name__}({args})"

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.to_dict() == self.to_dict()  # type: ignore[union-attr]

    def __hash__(self) -> int:
        return hash(repr(self))


def from_dict(d: Mapping[str, Any]) -> Schedule:
    """Rebuild a schedule from ``Schedule.to_dict()`` output."""
    if not isinstance(d, Mapping) or "type" not in d:
        raise ValueError(f"a schedule dict needs a 'type' key, got {d!r}")
    kind = d["type"]
    if kind not in _REGISTRY:
        raise ValueError(f"unknown schedule type {kind!r}; known: {', '.join(sorted(_REGISTRY))}")
    params = {k: _from_jsonable(v) for k, v in d.items() if k != "type"}
    try:
        return _REGISTRY[kind](**params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for schedule type {kind!r}: {exc}") from None
