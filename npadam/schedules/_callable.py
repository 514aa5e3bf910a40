"""A schedule given by a Python callable of the step: ``Lambda`` (``from_callable``).

This is the one schedule that is *not* a vectorized closed form: ``fn`` is an
arbitrary Python function, so ``s(array)`` calls it once per element (a Python loop,
about a microsecond per call), and the running product (``product=True``, torch's
``MultiplicativeLR``) calls it once per step up to the largest one asked for. The
product is cached, so a training loop that asks for ``s(0), s(1), ...`` in turn pays
one call per update. ``fn`` must be a pure function of its argument: npadam may call
it more than once for the same step, and in any order.

It works wherever a Schedule does (``npadam.AdamW(lr=...)``, ``join``, ``multiply``,
``npadam.torch.LRScheduler``), but it cannot be written down: ``to_dict()`` raises
``TypeError`` naming the callable (a checkpoint or JSON file cannot hold Python code).

>>> from npadam import schedules
>>> s = schedules.from_callable(lambda e: 0.95 ** e, scale=0.1)
>>> s(0), round(s(2), 6)
(0.1, 0.09025)
>>> p = schedules.from_callable(lambda e: 0.5, scale=1.0, product=True)
>>> [p(k) for k in range(4)]
[1.0, 0.5, 0.25, 0.125]
"""

from __future__ import annotations

import math
import numbers
from typing import Any, Callable, Iterator, Mapping

import numpy as np

from .. import _validate as V
from ._base import Schedule, register

__all__ = ["Lambda", "from_callable", "callables_in", "describe"]


def describe(fn: Any) -> str:
    """A callable's name for messages: its ``__qualname__`` (with the module), else its type."""
    name = getattr(fn, "__qualname__", None) or f"{type(fn).__qualname__} instance"
    module = getattr(fn, "__module__", None)
    return f"{module}.{name}" if module and module not in ("builtins", "__main__") else name


def callables_in(value: Any) -> Iterator[Any]:
    """The Python callables inside ``value`` (nested lists, tuples and mappings), depth first;
    a Schedule is not one of them (its own ``to_dict`` decides about what it holds)."""
    if isinstance(value, Schedule):
        return
    if callable(value) and not isinstance(value, type):
        yield value
    elif isinstance(value, (list, tuple)):
        for v in value:
            yield from callables_in(v)
    elif isinstance(value, Mapping):
        for v in value.values():
            yield from callables_in(v)


def not_serialisable(what: str, fn: Any) -> TypeError:
    """The error ``to_dict()`` raises for a schedule that holds the Python callable ``fn``."""
    return TypeError(f"{what} holds the Python callable {describe(fn)}, which cannot be serialised: "
                     "to_dict() / JSON / checkpoints only store npadam's own schedules; rebuild this "
                     "schedule in code where it is needed, or express it with npadam's schedules")


@register
class Lambda(Schedule):
    """``scale * fn(k + shift)``, or with ``product=True`` the running product
    ``scale * fn(first) * fn(first + 1) * ... * fn(k + shift)`` (``scale`` while
    ``k + shift < first``), multiplied left to right in float64 as torch's
    ``MultiplicativeLR`` does (``lr_t = lr_{t-1} * fn(t)``), so the values are the same
    to the last bit.

    ``fn`` gets a Python ``int`` and must return a finite real number (``int``, ``float``
    or a NumPy scalar; not a bool, not a tensor): anything else raises ``TypeError`` and a
    non-finite value ``ValueError``, naming the callable, the step and the value. ``name``
    says what ``fn`` is in those messages (``"lr_lambda"``). Evaluation calls ``fn`` once
    per requested step (see the module docstring); ``to_dict()`` raises ``TypeError``.
    """

    kind = "lambda"

    def __init__(self, fn: Callable[[int], float], scale: float = 1.0, shift: int = 0, product: bool = False,
                 first: int = 1, name: str = "fn") -> None:
        if not callable(fn) or isinstance(fn, type):
            raise TypeError(f"{name} must be a Python callable of the step, got {fn!r}")
        if not isinstance(name, str):
            raise TypeError(f"name must be a string, got {name!r}")
        self._store(fn=fn, scale=V.real("scale", scale), shift=V.integer("shift", shift, lo=0),
                    product=V.flag("product", product), first=V.integer("first", first, lo=0), name=name)
        # product=True: _prefix[n] is the value at k + shift = n, for n < _filled
        self._prefix, self._filled = np.empty(0), 0

    def _call(self, j: int) -> float:
        """``fn(j)``, checked."""
        p = self._params
        try:
            v = p["fn"](j)
        except Exception as e:  # the user's code failed: say at which step (same exception)
            if hasattr(e, "add_note"):
                e.add_note(f"in {p['name']} {describe(p['fn'])} called for step {j}")
            raise
        if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real):
            raise TypeError(f"{p['name']} {describe(p['fn'])} returned {v!r} for step {j}: expected a real "
                            "number (int or float)")
        f = float(v)
        if not math.isfinite(f):
            raise ValueError(f"{p['name']} {describe(p['fn'])} returned {v!r} for step {j}: expected a "
                             "finite number")
        return f

    def values_at(self, steps: np.ndarray) -> np.ndarray:
        """``fn`` at each of ``steps`` (int64, any shape), checked, as float64 (no scale)."""
        flat = steps.reshape(-1)
        uniq, inv = np.unique(flat, return_inverse=True)
        vals = np.array([self._call(int(j)) for j in uniq], dtype=np.float64)
        return vals[inv].reshape(steps.shape)

    def _extend(self, n: int) -> None:
        """Make the cache cover ``0 .. n - 1``, continuing the product in torch's order (``fn`` is
        called for exactly the steps not cached yet; the buffer grows geometrically)."""
        have = self._filled
        if n <= have:
            return
        p = self._params
        buf = self._prefix
        if n > buf.size:
            buf = np.empty(max(n, 2 * buf.size))
            buf[:have] = self._prefix[:have]
        v = float(buf[have - 1]) if have else p["scale"]
        for j in range(have, n):
            if j >= p["first"]:
                v = v * self._call(j)
            buf[j] = v
        self._prefix, self._filled = buf, n

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        t = k + p["shift"]
        if not p["product"]:
            return p["scale"] * self.values_at(t)
        if t.size:
            self._extend(int(t.max()) + 1)
        return self._prefix[t]

    def to_dict(self) -> dict[str, Any]:
        raise not_serialisable(f"schedule {self.kind!r}", self._params["fn"])

    def config_dict(self) -> dict[str, Any]:
        raise not_serialisable(f"schedule {self.kind!r}", self._params["fn"])

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params == self._params  # type: ignore[attr-defined]

    __hash__ = Schedule.__hash__

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_prefix"], state["_filled"] = np.empty(0), 0  # a cache: rebuilt on demand
        return state


def from_callable(fn: Callable[[int], float], scale: float = 1.0, shift: int = 0, product: bool = False,
                  first: int = 1, name: str = "fn") -> Lambda:
    """A schedule from a Python callable of the step; see ``Lambda`` (``scale * fn(k + shift)``,
    or the running product with ``product=True``)."""
    return Lambda(fn, scale=scale, shift=shift, product=product, first=first, name=name)
