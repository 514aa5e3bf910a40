"""Communicators: rank, size and in-place collectives over flat arrays, on MPI, NCCL or torch.distributed.

>>> import numpy as np
>>> from npadam import distributed
>>> comm = distributed.init("single")          # one process; "mpi", "torch", "nccl" under a launcher
>>> grads = np.arange(8, dtype=np.float32)
>>> shard = np.empty(grads.size // comm.size, np.float32)
>>> comm.reduce_scatter(grads, shard, op="avg")  # rank r gets the average of slice r
>>> h = comm.all_gather(shard, grads, async_op=True)
>>> h.wait(); grads[:3]
array([0., 1., 2.], dtype=float32)

The backends import mpi4py, torch and CuPy only when they are created. The
interface, the launch lines and the dtype rules are in docs/DISTRIBUTED.md.
"""

from __future__ import annotations

from typing import Any

from ._arrays import OPS, REDUCE_DTYPES
from ._base import Communicator, Handle
from ._single import SingleComm

BACKENDS = ("mpi", "nccl", "torch", "single")


def init(backend: str, **kw: Any) -> Communicator:
    """A communicator of the named backend.

    - ``"mpi"``: ``comm=`` an mpi4py communicator (``MPI.COMM_WORLD`` by default);
      NumPy arrays. Launch with ``mpiexec -n N python3 script.py``.
    - ``"torch"``: ``group=`` a process group (the default one by default); when
      torch.distributed is not initialized yet, it is, from torchrun's environment,
      with ``torch_backend=`` ("gloo", "nccl") and any ``init_process_group``
      arguments. Torch tensors, NumPy arrays (gloo), CuPy arrays (nccl).
    - ``"nccl"``: CuPy arrays on this rank's GPU; ``comm=`` (MPI) or ``store=``,
      ``rank=``, ``size=`` carry the unique id, ``device=`` picks the GPU.
    - ``"single"``: one process, no launcher.
    """
    if backend == "single":
        return SingleComm(**kw)
    if backend == "mpi":
        from ._mpi import MPIComm

        return MPIComm(**kw)
    if backend == "torch":
        from ._torch import init_torch

        return init_torch(**kw)
    if backend == "nccl":
        from ._nccl import init_nccl

        return init_nccl(**kw)
    raise ValueError(f"backend must be one of {', '.join(map(repr, BACKENDS))}, got {backend!r}")


__all__ = ["BACKENDS", "Communicator", "Handle", "OPS", "REDUCE_DTYPES", "SingleComm", "init"]
