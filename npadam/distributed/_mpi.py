"""MPI backend (mpi4py): nonblocking collectives on NumPy arrays.

Every collective starts the nonblocking call (Iallreduce, Ireduce_scatter_block,
Iallgather, Ibcast) and a sync call waits on it, so both paths run the same code.
MPI has no 16-bit float type: float16 and bfloat16 reductions widen to float32,
reduce, and round back to nearest-even once, so the result is the float32 sum
(exact when it fits in float32's 24 bits) rounded once. Data movement sends bytes.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from . import _host
from ._arrays import HALF_DTYPES
from ._base import Communicator, Handle

_INSTALL = "the 'mpi' backend needs mpi4py and an MPI library: python3 -m pip install mpi4py mpich (or 'npadam[mpi]')"


def import_mpi() -> Any:
    """``mpi4py.MPI``, or an ImportError that says what to install."""
    try:
        from mpi4py import MPI
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    return MPI


def mpi_types(MPI: Any) -> dict[str, Any]:
    """MPI datatypes of the dtypes MPI reduces natively (16-bit floats go through float32)."""
    return {"float32": MPI.FLOAT, "float64": MPI.DOUBLE, "int32": MPI.INT32_T, "int64": MPI.INT64_T,
            "uint8": MPI.UINT8_T}


class MPIComm(Communicator):
    """A communicator over an mpi4py communicator (``MPI.COMM_WORLD`` by default), for NumPy arrays.

    The communicator is used as given; pass ``comm.Dup()`` to keep npadam's
    collectives apart from the caller's.
    """

    backend = "mpi"
    _kinds = ("numpy",)

    def __init__(self, comm: Any = None) -> None:
        MPI = import_mpi()
        self.comm = MPI.COMM_WORLD if comm is None else comm
        if not isinstance(self.comm, MPI.Intracomm):
            raise TypeError(f"comm must be an mpi4py intracommunicator, got {type(self.comm).__name__}")
        self._MPI = MPI
        self._types = mpi_types(MPI)
        self._ops = {"sum": MPI.SUM, "avg": MPI.SUM, "max": MPI.MAX, "min": MPI.MIN}
        super().__init__(self.comm.Get_rank(), self.comm.Get_size())

    def _handle(self, request: Any, finish: Any = None, keep: tuple = ()) -> Handle:
        return Handle(request.Wait, request.Test, finish, keep)

    def _all_reduce(self, x, info, dtype, op, async_op):
        MPI, v = self._MPI, _host.typed(x, dtype)
        if dtype in HALF_DTYPES:
            wide = _host.widen(v)
            req = self.comm.Iallreduce(MPI.IN_PLACE, [wide, MPI.FLOAT], self._ops[op])
            div = self.size if op == "avg" else 1
            return self._handle(req, lambda: _host.narrow_into(v, wide, div), (x, wide))
        req = self.comm.Iallreduce(MPI.IN_PLACE, [v, self._types[dtype]], self._ops[op])
        return self._handle(req, (lambda: _host.divide(v, self.size)) if op == "avg" else None, (x,))

    def _reduce_scatter(self, x, out, info, dtype, op, inplace, async_op):
        xv, ov = _host.typed(x, dtype), _host.typed(out, dtype)
        div = self.size if op == "avg" else 1
        if dtype in HALF_DTYPES:
            send, recv, mtype = _host.widen(xv), np.empty(ov.size, np.float32), self._MPI.FLOAT

            def finish() -> None:
                _host.narrow_into(ov, recv, div)
        else:
            # In place (out is x's own slice) the result lands in a temporary: x is still being read.
            send, recv, mtype = xv, (np.empty_like(ov) if inplace else ov), self._types[dtype]

            def finish() -> None:
                if recv is not ov:
                    ov[...] = recv
                _host.divide(ov, div)
        req = self.comm.Ireduce_scatter_block([send, mtype], [recv, mtype], self._ops[op])
        return self._handle(req, finish, (x, out, send, recv))

    def _all_gather(self, x, out, info, inplace, async_op):
        ob = _host.as_bytes(out)
        send = self._MPI.IN_PLACE if inplace else [_host.as_bytes(x), self._MPI.BYTE]
        req = self.comm.Iallgather(send, [ob, self._MPI.BYTE])
        return self._handle(req, None, (x, out))

    def _broadcast(self, x, info, root, async_op):
        req = self.comm.Ibcast([_host.as_bytes(x), self._MPI.BYTE], root=root)
        return self._handle(req, None, (x,))

    def _barrier(self) -> None:
        self.comm.Barrier()

    def _allgather_object(self, obj: Any) -> list:
        return self.comm.allgather(obj)

    def _broadcast_object(self, obj: Any, root: int) -> Any:
        return self.comm.bcast(obj, root=root)
