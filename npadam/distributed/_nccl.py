"""NCCL backend through ``cupy.cuda.nccl``, for CuPy arrays on this rank's GPU.

Collectives are enqueued on CuPy's current stream (sync calls: ordered before
later work on that stream, the host is not blocked, as with torch's NCCL
backend). ``async_op=True`` runs them on a communication stream that first waits
for the current stream; ``Handle.wait()`` makes the current stream wait for the
collective. bfloat16 arrays are CuPy uint16/int16 bit arrays passed with
``dtype="bfloat16"`` (CuPy has no bfloat16) and reduce with NCCL's own bfloat16
type (NCCL >= 2.10). ``avg`` is NCCL's sum followed by a division by ``size``
(through float32 for 16-bit types, rounded once), not ncclAvg, which pre-scales.

The unique id is made on rank 0 and sent over MPI, or over a key-value store
(torch's TCPStore from torchrun's environment, or any store with set/get).

Not run on a GPU yet: only the argument checks, the tables and the id exchange are
tested without one (see docs/DISTRIBUTED.md, "What a GPU run still owes").
"""

from __future__ import annotations

import itertools
import os
import pickle
from typing import Any, Callable

import numpy as np

from .. import _validate as V
from ._arrays import HALF_DTYPES, check_rank
from ._base import Communicator, Handle

_INSTALL = ("the 'nccl' backend needs CuPy with NCCL on a CUDA GPU: python3 -m pip install 'npadam[cuda12]' "
            "(or cuda13) and nvidia-nccl-cu12")

#: NCCL's ncclDataType_t values (nccl.h) for the dtypes it reduces; bytes move as ncclUint8.
NCCL_DTYPES = {"uint8": 1, "int32": 2, "int64": 4, "float16": 6, "float32": 7, "float64": 8, "bfloat16": 9}
NCCL_UINT8 = NCCL_DTYPES["uint8"]
#: ncclRedOp_t values; "avg" is a sum followed by a division (ncclAvg = 4 pre-scales instead).
NCCL_OPS = {"sum": 0, "avg": 0, "max": 2, "min": 3}
#: The first NCCL version with ncclBfloat16 (2.10.0).
NCCL_BF16_VERSION = 21000
_init_count = itertools.count()

_DIV_BF16 = r"""
unsigned int b = __float_as_uint(__uint_as_float(((unsigned int)x) << 16) / n);
if ((b & 0x7fffffffu) > 0x7f800000u) x = (unsigned short)((b >> 16) | 0x0040u);
else x = (unsigned short)((b + 0x7fffu + ((b >> 16) & 1u)) >> 16);
"""


def import_nccl() -> tuple[Any, Any]:
    """``(cupy, cupy.cuda.nccl)``, or an ImportError that says what to install."""
    try:
        import cupy
        from cupy.cuda import nccl
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    if not getattr(nccl, "available", False) or not hasattr(nccl, "NcclCommunicator"):
        raise ImportError(f"{_INSTALL}: CuPy is installed but cannot load the NCCL library")
    return cupy, nccl


def unique_id_over_mpi(comm: Any, make_id: Callable[[], Any]) -> Any:
    """Rank 0's ``make_id()``, on every rank of the mpi4py communicator ``comm``."""
    return comm.bcast(make_id() if comm.Get_rank() == 0 else None, root=0)


def unique_id_over_store(store: Any, rank: int, make_id: Callable[[], Any], key: str) -> Any:
    """Rank 0's ``make_id()``, through ``store`` (``set(key, bytes)`` / blocking ``get(key)``)."""
    if rank == 0:
        store.set(key, pickle.dumps(make_id()))
    return pickle.loads(store.get(key))


def _check_rank(rank: Any, size: Any) -> tuple[int, int]:
    size = V.integer("size", size, lo=1)
    return check_rank("rank", rank, size), size


def init_nccl(comm: Any = None, store: Any = None, rank: int | None = None, size: int | None = None,
              device: int | None = None) -> "NCCLComm":
    """An :class:`NCCLComm`, its unique id sent over ``store`` or over MPI.

    - ``store`` given, or torchrun's environment (RANK, WORLD_SIZE, MASTER_ADDR,
      MASTER_PORT) and no ``comm``: the id goes through the store (a new
      ``torch.distributed.TCPStore`` on MASTER_ADDR:MASTER_PORT when none is given);
      ``rank``/``size`` default to RANK/WORLD_SIZE, the GPU to LOCAL_RANK.
    - otherwise over the mpi4py communicator ``comm`` (COMM_WORLD by default); the
      GPU defaults to the rank within the node.
    ``device`` picks the GPU explicitly (modulo the number of visible GPUs by default).
    """
    env = os.environ
    torchrun = all(k in env for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT"))
    if store is not None or (comm is None and torchrun):
        rank, size = _check_rank(int(env["RANK"]) if rank is None else rank,
                                 int(env["WORLD_SIZE"]) if size is None else size)
        cupy, nccl = import_nccl()
        if store is None:
            from ._torch import import_dist

            _, dist = import_dist()
            store = dist.TCPStore(env["MASTER_ADDR"], int(env["MASTER_PORT"]), size, rank == 0)
        uid = unique_id_over_store(store, rank, nccl.get_unique_id, f"npadam/nccl/unique_id/{next(_init_count)}")
        local = int(env.get("LOCAL_RANK", rank))
    else:
        if rank is not None or size is not None:
            raise ValueError("rank and size come from the MPI communicator; pass them only with a store")
        from ._mpi import import_mpi

        MPI = import_mpi()
        comm = MPI.COMM_WORLD if comm is None else comm
        cupy, nccl = import_nccl()
        rank, size = comm.Get_rank(), comm.Get_size()
        uid = unique_id_over_mpi(comm, nccl.get_unique_id)
        node = comm.Split_type(MPI.COMM_TYPE_SHARED)
        local = node.Get_rank()
        node.Free()
    if device is None:
        device = local % cupy.cuda.runtime.getDeviceCount()
    with cupy.cuda.Device(device):
        raw = nccl.NcclCommunicator(size, uid, rank)
    return NCCLComm(raw, rank, size, device)


class NCCLComm(Communicator):
    """A communicator over a ``cupy.cuda.nccl.NcclCommunicator`` on GPU ``device`` (CuPy arrays only).

    Build it with ``npadam.distributed.init("nccl", ...)``; the constructor takes
    an existing NCCL communicator.
    """

    backend = "nccl"
    _kinds = ("cupy",)
    memories = frozenset({"device"})

    def __init__(self, nccl_comm: Any, rank: int, size: int, device: int) -> None:
        self._cupy, nccl = import_nccl()
        self._comm, self.device, self._stream, self._kernels = nccl_comm, int(device), None, {}
        self._bf16 = nccl.get_version() >= NCCL_BF16_VERSION
        super().__init__(*_check_rank(rank, size))

    def _check_device(self, x: Any, info: Any, what: str) -> None:
        if x.device.id != self.device:
            raise ValueError(f"{what} is on GPU {x.device.id}; this communicator runs on GPU {self.device}")

    def _code(self, dtype: str) -> int:
        if dtype == "bfloat16" and not self._bf16:
            raise TypeError("bfloat16 reductions need NCCL >= 2.10; this NCCL has no ncclBfloat16")
        return NCCL_DTYPES[dtype]

    def _launch(self, call: Callable[[int], None], async_op: bool, finish: Callable[[], None] | None = None,
                keep: tuple = ()) -> Handle:
        """Enqueue ``call(stream_ptr)`` (then ``finish``) on the current stream, or for async on the
        communication stream after the current stream's work."""
        cupy = self._cupy
        with cupy.cuda.Device(self.device):
            current = cupy.cuda.get_current_stream()
            if not async_op:
                call(current.ptr)
                if finish is not None:
                    finish()
                return Handle.completed()
            if self._stream is None:
                self._stream = cupy.cuda.Stream(non_blocking=True)
            stream = self._stream
            stream.wait_event(current.record())
            with stream:
                call(stream.ptr)
                if finish is not None:
                    finish()
            event = stream.record()

        def wait() -> None:
            with cupy.cuda.Device(self.device):
                cupy.cuda.get_current_stream().wait_event(event)
        return Handle(wait, lambda: event.done, None, keep)

    def _divide(self, x: Any, dtype: str) -> None:
        """``x /= size`` on the current stream, true division; 16-bit floats through float32, rounded once."""
        cupy, flat = self._cupy, x.reshape(-1)
        if dtype == "bfloat16":
            if "div_bf16" not in self._kernels:
                self._kernels["div_bf16"] = cupy.ElementwiseKernel("float32 n", "uint16 x", _DIV_BF16,
                                                                   "npadam_div_bf16")
            self._kernels["div_bf16"](np.float32(self.size), flat.view(cupy.uint16))
        elif dtype in HALF_DTYPES:
            v = flat.view(cupy.float16)
            v[...] = (v.astype(cupy.float32) / np.float32(self.size)).astype(cupy.float16)
        else:
            cupy.divide(flat, flat.dtype.type(self.size), out=flat)

    def _all_reduce(self, x, info, dtype, op, async_op):
        code = self._code(dtype)
        if info.size == 0:
            return Handle.completed()
        finish = (lambda: self._divide(x, dtype)) if op == "avg" and self.size > 1 else None
        return self._launch(lambda s: self._comm.allReduce(info.ptr, info.ptr, info.size, code, NCCL_OPS[op], s),
                            async_op, finish, (x,))

    def _reduce_scatter(self, x, out, info, dtype, op, inplace, async_op):
        code, n = self._code(dtype), out.size  # in place (out = x's own slice) is native to NCCL
        if n == 0:
            return Handle.completed()
        finish = (lambda: self._divide(out, dtype)) if op == "avg" and self.size > 1 else None
        return self._launch(lambda s: self._comm.reduceScatter(info.ptr, out.data.ptr, n, code, NCCL_OPS[op], s),
                            async_op, finish, (x, out))

    def _all_gather(self, x, out, info, inplace, async_op):
        if info.nbytes == 0:  # in place (x = out's own slice) is native to NCCL
            return Handle.completed()
        return self._launch(lambda s: self._comm.allGather(info.ptr, out.data.ptr, info.nbytes, NCCL_UINT8, s),
                            async_op, None, (x, out))

    def _broadcast(self, x, info, root, async_op):
        if info.nbytes == 0:
            return Handle.completed()
        return self._launch(lambda s: self._comm.bcast(info.ptr, info.nbytes, NCCL_UINT8, root, s),
                            async_op, None, (x,))

    def _barrier(self) -> None:
        cupy = self._cupy
        with cupy.cuda.Device(self.device):
            self.all_reduce(cupy.zeros(1, cupy.int32))
            cupy.cuda.get_current_stream().synchronize()

    def _allgather_object(self, obj: Any) -> list:
        cupy, data = self._cupy, np.frombuffer(pickle.dumps(obj), np.uint8)
        with cupy.cuda.Device(self.device):
            sizes = cupy.empty(self.size, cupy.int64)
            self.all_gather(cupy.full(1, data.size, cupy.int64), sizes)
            sizes = cupy.asnumpy(sizes)
            width = int(sizes.max())
            mine = cupy.zeros(width, cupy.uint8)
            mine[:data.size] = cupy.asarray(data)
            every = cupy.empty(self.size * width, cupy.uint8)
            self.all_gather(mine, every)
            host = cupy.asnumpy(every).reshape(self.size, width)
        return [pickle.loads(host[r, :sizes[r]].tobytes()) for r in range(self.size)]

    def _broadcast_object(self, obj: Any, root: int) -> Any:
        cupy = self._cupy
        data = np.frombuffer(pickle.dumps(obj), np.uint8) if self.rank == root else np.zeros(0, np.uint8)
        with cupy.cuda.Device(self.device):
            n = cupy.full(1, data.size, cupy.int64)
            self.broadcast(n, root)
            buf = cupy.asarray(data) if self.rank == root else cupy.empty(int(n.get()[0]), cupy.uint8)
            self.broadcast(buf, root)
            return pickle.loads(cupy.asnumpy(buf).tobytes())

    def close(self) -> None:
        if self._comm is not None:
            self._comm.destroy()
            self._comm = None
