"""The sharded optimizer (``comm=``) with its params on a GPU, on ranks that share that GPU.

``python3 -m mpi4py gpu_sharded_check.py gpu`` under ``mpiexec -n 2`` (tests/test_gpu.py: one GPU
is enough, both ranks use it), or ``... host`` (tests/test_sharded.py: the same checks on host
params, so that this script itself is exercised without a GPU). Each check runs twice:

- ``staged``: MPI as it comes from pip (not CUDA-aware) moves host memory only, so every
  collective of the step goes through host copies (``npadam._sharded._Memory``; on the host run
  forced with ``bind(stage=True)``);
- ``direct``: a communicator that takes CuPy arrays (``Bridge``: MPI behind a device <-> host copy,
  as CUDA-aware MPI or NCCL would take them), so the step's buffers, the views of the params and
  grads, and the in-place gathers into flat storage all live on the GPU.

The reference is one process on host copies (the CPU kernel, bit-identical to the GPU kernel by
the numerical contract) stepped on the average as the communicator makes it (the float32 sum
divided by the world size, rounded once to the grad dtype). Prints ``OK gpu-sharded rank r/n
<checks>``; any failure prints the traceback and aborts.
"""

from __future__ import annotations

import sys
import tempfile
from typing import Any

import numpy as np

import npadam
import npadam.checkpoint
from npadam import distributed
from npadam.distributed import Communicator, Handle

try:
    from . import launch
    from . import sharded_check as S
except ImportError:  # run as a script
    import launch
    import sharded_check as S

GPU = len(sys.argv) > 1 and sys.argv[1] == "gpu"
#: fp32, bf16 and fp16 params in two groups; group 1 small (on 2 ranks rank 1's shard of it is padding)
SPEC = [("w1", (300, 500), "float32", 0), ("b1", (37,), "float32", 0), ("e1", (256, 300), "bfloat16", 0),
        ("w2", (129, 65), "float32", 1), ("h2", (70, 90), "float16", 1)]


class Bridge(Communicator):
    """MPI behind a copy: CuPy arrays are copied to the host, moved by MPI, copied back (blocking).
    What a communicator of device memory does, on ranks that share one GPU (NCCL needs a GPU per rank)."""

    backend = "bridge"
    _kinds = ("numpy", "cupy")
    memories = frozenset({"host", "device"})

    def __init__(self, mpi: Any) -> None:
        self.mpi = mpi
        super().__init__(mpi.rank, mpi.size)

    @staticmethod
    def _host(x: Any) -> np.ndarray:
        return x.get() if not isinstance(x, np.ndarray) else x

    @staticmethod
    def _back(host: np.ndarray, dst: Any) -> None:
        if isinstance(dst, np.ndarray):
            if host is not dst:
                dst[...] = host
        else:
            dst.set(host)

    def _all_reduce(self, x, info, dtype, op, async_op):
        h = self._host(x)
        self.mpi.all_reduce(h, op=op, dtype=dtype)
        self._back(h, x)
        return Handle.completed()

    def _reduce_scatter(self, x, out, info, dtype, op, inplace, async_op):
        h = self._host(x).copy()
        o = np.empty(out.size, h.dtype)
        self.mpi.reduce_scatter(h, o, op=op, dtype=dtype)
        self._back(o, out)
        return Handle.completed()

    def _all_gather(self, x, out, info, inplace, async_op):
        h = self._host(x).copy()
        o = np.empty(out.size, h.dtype)
        self.mpi.all_gather(h, o)
        self._back(o, out)
        return Handle.completed()

    def _broadcast(self, x, info, root, async_op):
        h = self._host(x)
        self.mpi.broadcast(h, root)
        self._back(h, x)
        return Handle.completed()

    def _barrier(self) -> None:
        self.mpi.barrier()

    def _allgather_object(self, obj: Any) -> list:
        return self.mpi.allgather_object(obj)

    def _broadcast_object(self, obj: Any, root: int) -> Any:
        return self.mpi.broadcast_object(obj, root)


def to_device(a: np.ndarray) -> Any:
    """``a`` where the params live: a CuPy array (bfloat16 bits marked with ``interop.Bfloat16``), or a copy."""
    if not GPU:
        return a.copy()
    import cupy

    if a.dtype == S.BF16:
        return npadam.interop.Bfloat16(cupy.asarray(a.view(np.uint16)))
    return cupy.asarray(a)


def to_host(x: Any) -> np.ndarray:
    if isinstance(x, np.ndarray):
        return x
    if isinstance(x, npadam.interop.Bfloat16):
        return x.array.get().view(S.BF16)
    return x.get()


def check_arrays(comm: Any, stage: bool) -> None:
    """npadam.AdamW on device arrays: buckets handed over in backward order, one step with the param
    gathers in flight; clipping; then a checkpoint saved by the ranks and loaded into a fresh one."""
    world, rank = comm.size, comm.rank
    host = S.init_params(SPEC)
    params = [to_device(a) for a in host]
    ref_params = [a.copy() for a in host]
    kw = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, bucket_bytes=300_000)
    opt = npadam.AdamW(S.groups(SPEC, params), comm=comm, **kw)
    if stage:
        opt._sharding.bind(opt._engine, stage=True)
    assert opt._sharding.mem.staged == (stage or comm.backend == "mpi"), opt._sharding.mem.staged
    assert opt._sharding.mem.gpu == GPU
    ref = npadam.AdamW(S.groups(SPEC, ref_params), kernel="cpu", **{k: v for k, v in kw.items()})
    names = [n for n, *_ in SPEC]
    for k in range(3):
        each = [[S.local_grad(k, r, i, shape, dt) for i, (_, shape, dt, _) in enumerate(SPEC)] for r in range(world)]
        mine = [to_device(g) for g in each[rank]]
        by_name = dict(zip(names, mine))
        if k:  # step 0 sends every bucket in the step itself
            for bi in reversed(range(len(opt.buckets))):
                opt.grads_ready(bi, {n: by_name[n] for n in opt.buckets[bi]})
        info = opt.step(mine, wait_params=k != 1)
        opt.wait_params()
        r = ref.step([S.average([e[i] for e in each], world) for i in range(len(SPEC))])
        S.same_info(info, r, f"arrays step {k}")
        S.same_params(SPEC, [to_host(p) for p in params], ref_params, f"arrays step {k}")
    S.same_state(opt.full_state_dict(), ref.state_dict(), "arrays: state")
    with tempfile.TemporaryDirectory() as d:
        path = comm.broadcast_object(d if rank == 0 else None)  # one directory (the ranks share a machine)
        npadam.checkpoint.save(path + "/ckpt", opt)
        fresh = [to_device(a) for a in host]
        other = npadam.AdamW(S.groups(SPEC, fresh), comm=comm, **kw)
        npadam.checkpoint.load(path + "/ckpt", other, params=True)
        S.same_state(other.full_state_dict(), ref.state_dict(), "arrays: loaded checkpoint")
        S.same_params(SPEC, [to_host(p) for p in fresh], ref_params, "arrays: loaded params")
        comm.barrier()


def check_torch(comm: Any, stage: bool) -> None:
    """npadam.torch.AdamW on a model's tensors, flat storage, buckets sent from the backward hooks, a
    bf16 layer: 2 ranks (a sum of two floats does not depend on the order, so the average of
    real backward grads is exact to reproduce)."""
    import torch
    import npadam.torch as nt

    world, rank = comm.size, comm.rank
    if world != 2:
        return
    device = torch.device("cuda", 0) if GPU else torch.device("cpu")
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    model[2].to(torch.bfloat16)
    ref_model = torch.nn.Sequential(torch.nn.Linear(64, 256), torch.nn.GELU(), torch.nn.Linear(256, 64))
    ref_model[2].to(torch.bfloat16)
    ref_model.load_state_dict(model.state_dict())
    model.to(device)
    kw = dict(lr=1e-2, weight_decay=0.1, max_grad_norm=1.0, bucket_bytes=40_000)
    opt = nt.AdamW(model.parameters(), comm=comm, flat_storage=True, overlap_grads=True, **kw)
    if stage:
        opt._sharding.bind(opt._engine, stage=True)
    assert opt._sharding.flat, "flat storage registers its buffers for the collectives"
    ref = nt.AdamW(ref_model.parameters(), **kw)
    for k in range(3):
        x = torch.randn(8, 64, generator=torch.Generator().manual_seed(100 * k + rank)).to(device)
        h = model[1](model[0](x))
        model[2](h.to(torch.bfloat16)).float().square().mean().backward()  # buckets sent from the hooks
        local = [p.grad.detach().cpu().clone() for p in model.parameters()]
        every = comm.allgather_object([g.float().numpy() if g.dtype == torch.bfloat16 else g.numpy() for g in local])
        for p, g, a, b in zip(ref_model.parameters(), local, every[0], every[1]):
            avg = (np.float32(a) + np.float32(b)) / np.float32(2)  # float32 sum, divided once
            p.grad = torch.from_numpy(np.asarray(avg, np.float32)).to(g.dtype).reshape(g.shape)
        opt.step()
        ref.step()
        opt.zero_grad()
        ref.zero_grad()
        for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
            a, b = p.detach().cpu(), q.detach()
            if not torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)):
                raise AssertionError(f"torch step {k}: param {name!r} differs")
    S.same_state(_numpy_state(opt.full_state_dict()), _numpy_state(ref.state_dict()), "torch: state")


def _numpy_state(sd: dict) -> dict:
    """A torch state dict with NumPy arrays (bit-comparable by ``sharded_check.same_state``)."""
    import torch

    def arr(v: Any) -> Any:
        if not isinstance(v, torch.Tensor):
            return v
        v = v.detach().cpu()
        return v.view(torch.int16).numpy().view(S.BF16) if v.dtype == torch.bfloat16 else v.numpy()

    state = {i: {k: (v if k == "step" else arr(v)) for k, v in st.items()} for i, st in sd["state"].items()}
    return {**sd, "state": state}


CHECKS = [check_arrays, check_torch]


def run_all(mpi: Any) -> int:
    """Every check, staged (MPI) and direct (``Bridge``): the number run."""
    n = 0
    for name, comm, stage in (("staged", mpi, not GPU), ("direct", Bridge(mpi), False)):
        for check in CHECKS:
            check(comm, stage)
            n += 1
        print(f"rank {mpi.rank}: {name} done", flush=True)
    return n


def main() -> None:
    mpi = distributed.init("mpi")
    launch.rank_main(mpi, "gpu-sharded", lambda: run_all(mpi))

if __name__ == "__main__":
    main()
