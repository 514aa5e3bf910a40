"""torch.distributed backend, for processes already inside torchrun (gloo for CPU, nccl for GPU).

Arrays may be torch tensors, NumPy arrays (wrapped zero-copy by ``torch.from_numpy``,
bfloat16 through an int16 view) or CuPy arrays (through DLPack). Every call uses
``async_op=True`` and a sync call waits on the returned work. Reductions run in
the process group's own arithmetic: a 16-bit sum over more than two ranks is
rounded at each partial sum (exact when every partial sum is representable).
``avg`` is the sum divided by ``size`` afterwards (one more rounding, through
float32 for 16-bit dtypes), never a pre-scaled sum.
"""

from __future__ import annotations

import os
import warnings
from typing import Any

import numpy as np

from ._arrays import HALF_DTYPES
from ._base import Communicator, Handle

_INSTALL = "the 'torch' backend needs PyTorch with torch.distributed: python3 -m pip install torch (or 'npadam[torch]')"


def import_dist() -> tuple[Any, Any]:
    """``(torch, torch.distributed)``, or an ImportError that says what to install."""
    try:
        import torch
        import torch.distributed as dist
    except ImportError as exc:
        raise ImportError(f"{_INSTALL} ({exc})") from exc
    if not dist.is_available():
        raise ImportError(f"{_INSTALL}: this torch build has no torch.distributed")
    return torch, dist


def backend_memories(name: str) -> frozenset[str]:
    """Where a torch.distributed backend's tensors live: ``"gloo"`` and ``"mpi"`` move CPU tensors
    (``"host"``; gloo's CUDA support leaves out reduce-scatter), ``"nccl"`` CUDA tensors
    (``"device"``); a group with a backend per device type (``"cpu:gloo,cuda:nccl"``) both."""
    out = set()
    for part in str(name).split(","):
        dev, _, backend = part.strip().rpartition(":")
        if dev:
            out.add("device" if dev == "cuda" else "host")
        else:
            out.add("device" if backend in ("nccl", "xccl") else "host")
    return frozenset(out)


class TorchComm(Communicator):
    """A communicator over a torch.distributed process group (the default group when ``group`` is None)."""

    backend = "torch"
    _kinds = ("torch", "numpy", "cupy")

    def __init__(self, group: Any = None) -> None:
        torch, dist = import_dist()
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call torch.distributed.init_process_group "
                               "first, or npadam.distributed.init('torch', torch_backend='gloo') inside torchrun")
        self._torch, self._dist, self.group = torch, dist, group
        # torch >= 2.13 names them *_single and deprecates the *_tensor names.
        self._gather = getattr(dist, "all_gather_single", None) or dist.all_gather_into_tensor
        self._scatter = getattr(dist, "reduce_scatter_single", None) or dist.reduce_scatter_tensor
        self._ops = {"sum": dist.ReduceOp.SUM, "avg": dist.ReduceOp.SUM, "max": dist.ReduceOp.MAX,
                     "min": dist.ReduceOp.MIN}
        #: The process group's backend ("gloo", "nccl", ...).
        self.torch_backend = str(dist.get_backend(group))
        self._owns_group = False  # init_torch initialized the default group: close() destroys it
        self.memories = backend_memories(self.torch_backend)
        super().__init__(dist.get_rank(group), dist.get_world_size(group))

    def close(self) -> None:
        """Destroy the default process group if ``npadam.distributed.init("torch")`` created it (after a
        barrier, so that rank 0's store outlives every rank's last use): a gloo rank that exits with
        the group alive can abort in torch's teardown ("terminate called without an active exception",
        seen with 3 ranks). A group the caller created stays the caller's to destroy."""
        if self._owns_group and self._dist.is_initialized():
            self._dist.barrier()
            self._dist.destroy_process_group()
        self._owns_group = False

    # ------------------------------------------------------------------ arrays as tensors
    def _tensor(self, x: Any, dtype: str | None) -> Any:
        """A flat tensor sharing x's memory: typed as ``dtype``, or as bytes when dtype is None."""
        torch = self._torch
        if isinstance(x, torch.Tensor):
            t = x.detach().reshape(-1)
        else:  # NumPy or CuPy: no bfloat16 type there, so 16-bit floats and bytes travel as integer views
            flat = x.reshape(-1)
            flat = flat.view("uint8") if dtype is None else flat.view("int16") if dtype in HALF_DTYPES else flat
            if isinstance(flat, np.ndarray):
                with warnings.catch_warnings():  # from_numpy warns on read-only inputs; they are only read
                    warnings.simplefilter("ignore", UserWarning)
                    t = torch.from_numpy(flat)
            else:
                t = torch.from_dlpack(flat)
        if dtype is None:
            return t if t.dtype == torch.uint8 else t.view(torch.uint8)
        want = getattr(torch, dtype)
        return t if t.dtype == want else t.view(want)

    def _divide(self, t: Any) -> None:
        """``t /= size`` by true division (a device tensor divisor: CUDA multiplies by the reciprocal
        of a Python scalar), 16-bit dtypes through float32 and rounded once."""
        torch = self._torch
        if t.dtype in (torch.float16, torch.bfloat16):
            t.copy_(t.to(torch.float32).div_(torch.full((), float(self.size), device=t.device)))
        else:
            t.div_(torch.full((), self.size, dtype=t.dtype, device=t.device))

    def _handle(self, work: Any, finish: Any = None, keep: tuple = ()) -> Handle:
        return Handle(work.wait, work.is_completed, finish, keep)

    # ------------------------------------------------------------------ hooks
    def _all_reduce(self, x, info, dtype, op, async_op):
        t = self._tensor(x, dtype)
        work = self._dist.all_reduce(t, op=self._ops[op], group=self.group, async_op=True)
        return self._handle(work, (lambda: self._divide(t)) if op == "avg" and self.size > 1 else None, (x, t))

    def _reduce_scatter(self, x, out, info, dtype, op, inplace, async_op):
        xt, ot = self._tensor(x, dtype), self._tensor(out, dtype)
        recv = self._torch.empty_like(ot) if inplace else ot  # x is read while the result is written

        def finish() -> None:
            if recv is not ot:
                ot.copy_(recv)
            if op == "avg" and self.size > 1:
                self._divide(ot)
        work = self._scatter(recv, xt, op=self._ops[op], group=self.group, async_op=True)
        return self._handle(work, finish, (x, out, xt, ot, recv))

    def _all_gather(self, x, out, info, inplace, async_op):
        xt, ot = self._tensor(x, None), self._tensor(out, None)
        if inplace:
            xt = xt.clone()  # the input must not alias the output for every process group
        work = self._gather(ot, xt, group=self.group, async_op=True)
        return self._handle(work, None, (x, out, xt, ot))

    def _broadcast(self, x, info, root, async_op):
        t = self._tensor(x, None)
        work = self._dist.broadcast(t, src=self._global(root), group=self.group, async_op=True)
        return self._handle(work, None, (x, t))

    def _global(self, rank: int) -> int:
        return rank if self.group is None else self._dist.get_global_rank(self.group, rank)

    def _barrier(self) -> None:
        self._dist.barrier(group=self.group)

    def _allgather_object(self, obj: Any) -> list:
        out: list = [None] * self.size
        self._dist.all_gather_object(out, obj, group=self.group)
        return out

    def _broadcast_object(self, obj: Any, root: int) -> Any:
        box = [obj]
        self._dist.broadcast_object_list(box, src=self._global(root), group=self.group)
        return box[0]


def init_torch(group: Any = None, torch_backend: str | None = None, **init_kw: Any) -> TorchComm:
    """A :class:`TorchComm`; initializes the default process group first when it is not yet
    (``torch_backend`` and ``init_kw`` go to ``init_process_group``, which reads torchrun's
    environment: RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT)."""
    _, dist = import_dist()
    if not dist.is_initialized():
        if group is not None:
            raise ValueError("group was given but torch.distributed is not initialized")
        missing = [k for k in ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT") if k not in os.environ]
        if missing and "init_method" not in init_kw and "store" not in init_kw:
            raise RuntimeError(f"torch.distributed is not initialized and {', '.join(missing)} not set: "
                               "launch with torchrun, or pass init_method=/store=, rank= and world_size=")
        dist.init_process_group(backend=torch_backend, **init_kw)
        comm = TorchComm(group)
        comm._owns_group = True
        return comm
    if torch_backend is not None or init_kw:
        raise ValueError("torch.distributed is already initialized; torch_backend and init arguments apply only "
                         "when npadam initializes it")
    return TorchComm(group)
