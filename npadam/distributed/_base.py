"""The communicator interface: validation here, transport in the backends.

Every public collective checks its arguments (kind, dtype, contiguity, sizes,
aliasing, op, root) and only then calls the backend's hook, so a bad argument
raises before anything is sent and every backend reports it with the same message.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, Callable

from .. import _validate as V
from . import _arrays as A


class Handle:
    """A collective in flight (``async_op=True``). ``wait()`` completes it; it is idempotent.

    ``done()`` says whether it has finished without blocking (and completes it when
    it has). The handle holds the arrays and any temporaries until it is waited on.
    On MPI and torch/gloo ``wait()`` blocks the host until the result is in place;
    on NCCL it orders CuPy's current stream after the collective (as torch does
    with NCCL), and the host reads the result after synchronizing that stream.
    """

    __slots__ = ("_wait", "_test", "_finish", "_keep", "_done")

    def __init__(self, wait: Callable[[], Any], test: Callable[[], bool], finish: Callable[[], None] | None = None,
                 keep: tuple = ()) -> None:
        self._wait, self._test, self._finish, self._keep, self._done = wait, test, finish, keep, False

    def wait(self) -> None:
        if self._done:
            return
        self._wait()
        if self._finish is not None:
            self._finish()
        self._done, self._keep, self._finish = True, (), None

    def done(self) -> bool:
        if not self._done and self._test():
            self.wait()
        return self._done

    @classmethod
    def completed(cls) -> "Handle":
        h = cls(lambda: None, lambda: True)
        h._done = True
        return h


class Communicator(ABC):
    """``rank`` of ``size`` processes, and in-place collectives over flat contiguous arrays.

    Sync calls return None once the result is in place (on NCCL: once it is ordered
    on CuPy's current stream); ``async_op=True`` returns a :class:`Handle`. All ranks
    call the same collectives in the same order with the same dtypes and sizes.
    Arguments are checked locally before any communication: a rank that raises
    does not join the collective, so the same bad argument must be passed on every
    rank for every rank to raise (the others would wait for it).
    """

    backend: str = ""
    _kinds: tuple[str, ...] = ("numpy",)
    #: Where the arrays that the collectives move may live: ``"host"`` (NumPy arrays, CPU tensors)
    #: and/or ``"device"`` (CuPy arrays and CUDA tensors on a GPU). A sharded optimizer whose params
    #: are on a GPU stages its collectives through host copies when ``"device"`` is missing.
    memories: frozenset[str] = frozenset({"host"})

    def __init__(self, rank: int, size: int) -> None:
        #: This process's rank in [0, size) and the number of ranks.
        self.rank, self.size = int(rank), int(size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}(backend={self.backend!r}, rank={self.rank}, size={self.size})"

    # ------------------------------------------------------------------ public, validated
    def all_reduce(self, x: Any, op: str = "sum", async_op: bool = False, *, dtype: str | None = None) -> Handle | None:
        """Replace ``x`` on every rank by the elementwise reduction over ranks (``op``: sum, avg, max, min).

        ``dtype`` names the 16-bit float carried by an int16/uint16 bit array
        (CuPy has no bfloat16); other arrays reduce in their own dtype.
        """
        async_op = V.flag("async_op", async_op)
        info = self._check(x, "x", writeable=True)
        name = A.reduce_dtype(info, dtype, "x")
        A.check_op(op, name)
        return self._run(self._all_reduce(x, info, name, op, async_op), async_op)

    def reduce_scatter(self, x: Any, out: Any, op: str = "sum", async_op: bool = False, *,
                       dtype: str | None = None) -> Handle | None:
        """``out`` on rank r = the reduction over ranks of ``x[r*n:(r+1)*n]``, n = ``out.size``.

        ``x`` has ``size * out.size`` elements. ``out`` may be exactly that slice of
        ``x`` (in place); no other overlap is allowed. ``x`` is not changed unless
        ``out`` lies in it.
        """
        async_op = V.flag("async_op", async_op)
        xi = self._check(x, "x", writeable=False)
        oi = self._check(out, "out", writeable=True)
        A.same_dtype(xi, oi, "x", "out")
        name = A.reduce_dtype(xi, dtype, "x")
        A.check_op(op, name)
        if xi.size != self.size * oi.size:
            raise ValueError(f"reduce_scatter: x has {xi.size} elements, expected size * out.size = "
                             f"{self.size} * {oi.size} = {self.size * oi.size}")
        inplace = A.aliased(oi, xi, self.rank, "out", "x")
        return self._run(self._reduce_scatter(x, out, xi, name, op, inplace, async_op), async_op)

    def all_gather(self, x: Any, out: Any, async_op: bool = False) -> Handle | None:
        """``out[r*n:(r+1)*n]`` = rank r's ``x`` on every rank, n = ``x.size``.

        Any numeric dtype (the bytes are moved). ``x`` may be exactly this rank's
        slice of ``out`` (in place, the ZeRO parameter gather).
        """
        async_op = V.flag("async_op", async_op)
        xi = self._check(x, "x", writeable=False)
        oi = self._check(out, "out", writeable=True)
        A.same_dtype(xi, oi, "x", "out")
        if oi.size != self.size * xi.size:
            raise ValueError(f"all_gather: out has {oi.size} elements, expected size * x.size = "
                             f"{self.size} * {xi.size} = {self.size * xi.size}")
        inplace = A.aliased(xi, oi, self.rank, "x", "out")
        return self._run(self._all_gather(x, out, xi, inplace, async_op), async_op)

    def broadcast(self, x: Any, root: int = 0, async_op: bool = False) -> Handle | None:
        """Copy ``x`` of rank ``root`` into ``x`` on every other rank (any numeric dtype)."""
        async_op = V.flag("async_op", async_op)
        root = A.check_rank("root", root, self.size)
        info = self._check(x, "x", writeable=self.rank != root)
        return self._run(self._broadcast(x, info, root, async_op), async_op)

    def barrier(self) -> None:
        """Return on each rank only after every rank has entered."""
        self._barrier()

    def allgather_object(self, obj: Any) -> list:
        """A list of every rank's picklable ``obj``, in rank order (for small metadata)."""
        return self._allgather_object(obj)

    def broadcast_object(self, obj: Any, root: int = 0) -> Any:
        """Rank ``root``'s picklable ``obj``, on every rank (the others' ``obj`` is ignored)."""
        return self._broadcast_object(obj, A.check_rank("root", root, self.size))

    def close(self) -> None:
        """Release backend resources (the NCCL communicator); the object is unusable afterwards."""

    def __enter__(self) -> "Communicator":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # ------------------------------------------------------------------ helpers
    def _check(self, x: Any, what: str, *, writeable: bool) -> A.ArrayInfo:
        info = A.check_array(x, what, self._kinds, writeable=writeable)
        self._check_device(x, info, what)
        return info

    def _check_device(self, x: Any, info: A.ArrayInfo, what: str) -> None:
        """Backends whose arrays live on a device check it here."""

    @staticmethod
    def _run(handle: Handle, async_op: bool) -> Handle | None:
        if async_op:
            return handle
        handle.wait()
        return None

    # ------------------------------------------------------------------ backend hooks
    # Each is called with checked arguments, starts the operation and returns a Handle;
    # ``_run`` waits on it for sync calls (NCCL uses ``async_op`` to pick the stream).
    @abstractmethod
    def _all_reduce(self, x: Any, info: A.ArrayInfo, dtype: str, op: str, async_op: bool) -> Handle: ...

    @abstractmethod
    def _reduce_scatter(self, x: Any, out: Any, info: A.ArrayInfo, dtype: str, op: str, inplace: bool,
                        async_op: bool) -> Handle: ...

    @abstractmethod
    def _all_gather(self, x: Any, out: Any, info: A.ArrayInfo, inplace: bool, async_op: bool) -> Handle: ...

    @abstractmethod
    def _broadcast(self, x: Any, info: A.ArrayInfo, root: int, async_op: bool) -> Handle: ...

    @abstractmethod
    def _barrier(self) -> None: ...

    @abstractmethod
    def _allgather_object(self, obj: Any) -> list: ...

    @abstractmethod
    def _broadcast_object(self, obj: Any, root: int) -> Any: ...
