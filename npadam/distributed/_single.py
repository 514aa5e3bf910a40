"""A communicator of one process: every collective is a copy or nothing, with the same checks."""

from __future__ import annotations

import pickle
from typing import Any

from . import _arrays as A
from ._base import Communicator, Handle


def _copy(dst: Any, src: Any) -> None:
    if type(dst).__module__.startswith("torch"):
        dst.view(-1).copy_(src.reshape(-1))
    else:
        dst.reshape(-1)[...] = src.reshape(-1)


class SingleComm(Communicator):
    """``rank`` 0 of ``size`` 1, for running sharded code paths without launching processes.

    Takes NumPy, CuPy and torch arrays (``x`` and ``out`` of the same kind).
    ``avg`` divides by 1, which changes nothing; objects come back as pickled copies,
    as from the other backends.
    """

    backend = "single"
    _kinds = ("numpy", "cupy", "torch")
    memories = frozenset({"host", "device"})

    def __init__(self) -> None:
        super().__init__(rank=0, size=1)

    @staticmethod
    def _same_kind(x: Any, out: Any) -> None:
        kx, ko = A.describe(x, "x").kind, A.describe(out, "out").kind
        if kx != ko:
            raise TypeError(f"x and out must be arrays of the same kind, got {kx} and {ko}")

    def _all_reduce(self, x, info, dtype, op, async_op):
        return Handle.completed()

    def _reduce_scatter(self, x, out, info, dtype, op, inplace, async_op):
        self._same_kind(x, out)
        if not inplace:
            _copy(out, x)
        return Handle.completed()

    def _all_gather(self, x, out, info, inplace, async_op):
        self._same_kind(x, out)
        if not inplace:
            _copy(out, x)
        return Handle.completed()

    def _broadcast(self, x, info, root, async_op):
        return Handle.completed()

    def _barrier(self) -> None:
        pass

    def _allgather_object(self, obj: Any) -> list:
        return [pickle.loads(pickle.dumps(obj))]

    def _broadcast_object(self, obj: Any, root: int) -> Any:
        return pickle.loads(pickle.dumps(obj))
