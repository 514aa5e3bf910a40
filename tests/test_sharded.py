"""The sharded optimizer (``comm=``, ZeRO-1/2): the padding rule, refusals, the single-process
communicator in process, and ``tests/ranks/sharded_check.py`` on 1-4 MPI ranks (bit-identical
params, norms and state against one process; inf on one rank; padding-only ranks; ranks that
disagree; per-rank state memory). Launched runs have deadlines and show every rank's output."""

from __future__ import annotations

import importlib.util
import pickle
import re
from pathlib import Path

import ml_dtypes
import numpy as np
import pytest

import npadam
from npadam import distributed
from npadam._sharded import NORM_BLOCK, Sharding, _Memory, pad_multiple, shard_range
from npadam._placement import standin
from npadam.layout import FlatLayout
from npadam.tiers.transfer import HostCopier

try:
    from .ranks import launch, sharded_check
except ImportError:  # run from tests/ as a plain directory
    from ranks import launch, sharded_check

CHECK = Path(__file__).resolve().parent / "ranks" / "sharded_check.py"
needs_mpi = pytest.mark.skipif(not (importlib.util.find_spec("mpi4py") and launch.mpiexec_path()),
                               reason="needs mpi4py and mpiexec: python3 -m pip install mpi4py mpich")


@pytest.mark.parametrize("world", [1, 2, 3, 4])
def test_padding_rule(world):
    specs = [("w", (300, 700), "float32", 0), ("b", (37,), "float32", 0), ("e", (5,), "bfloat16", 0),
             ("z", (0,), "float32", 1)]
    plain, lay = FlatLayout(specs), FlatLayout(specs, pad_to=pad_multiple(world))
    assert [s.offset for s in lay.slots] == [s.offset for s in plain.slots]  # padding only at the end
    for b, p in zip(lay.buffers, plain.buffers):
        assert b.size % pad_multiple(world) == 0 and 0 <= b.size - p.size < pad_multiple(world)
        ranges = [shard_range(b.size, r, world) for r in range(world)]
        assert ranges[0][0] == 0 and ranges[-1][1] == b.size
        assert all(hi == lo2 and hi - lo == ranges[0][1] for (lo, hi), (lo2, _) in zip(ranges, ranges[1:]))
        assert all(lo % NORM_BLOCK == 0 for lo, _ in ranges)
    if world == 1:
        assert [b.size for b in lay.buffers] == [b.size for b in plain.buffers]  # one rank: no padding


def test_block_sums_combine_in_single_process_order():
    """Every rank's block sums, buffer by buffer and rank by rank inside a buffer (the global block order)."""

    class Gather:  # rank 1 of 3; rank r's block sums are this rank's + 100 r
        rank, size = 1, 3

        def all_gather(self, x, out):
            out[...] = np.concatenate([x + 100 * r for r in range(3)])

    sharding = Sharding.__new__(Sharding)
    sharding.comm, sharding.rank, sharding.world = Gather(), 1, 3
    sharding.mem = _Memory(False, None, frozenset({"host"}), False)
    got = sharding.combine_sums(np.array([1.0, 2.0, 3.0]), [2, 1, 0])  # three buffers' blocks, one array
    assert got.tolist() == [1, 2, 101, 102, 201, 202, 3, 103, 203]


def test_single_comm_in_process():
    """Every check of the launched script with the single-process communicator (world 1: no padding)."""
    assert sharded_check.run_all(distributed.init("single")) == len(sharded_check.CHECKS)


def test_world_one_is_the_plain_optimizer():
    params = sharded_check.init_params(sharded_check.MAIN)
    a = npadam.AdamW(sharded_check.groups(sharded_check.MAIN, params), comm=distributed.init("single"))
    b = npadam.AdamW(sharded_check.groups(sharded_check.MAIN, [p.copy() for p in params]))
    assert [x.size for x in a.layout.buffers] == [x.size for x in b.layout.buffers]
    sd = a.state_dict()
    assert sd["npadam"]["shard"] == {"rank": 0, "world": 1, "sizes": [x.size for x in a.layout.buffers],
                                     "ranges": [[0, int(np.prod(s))] for _, s, *_ in sharded_check.MAIN]}


def _tiny(**kw):
    return npadam.AdamW([np.ones(4, np.float32)], comm=distributed.init("single"), **kw)


def test_refusals(tmp_path):
    with pytest.raises(ValueError, match="comm must be a npadam.distributed communicator"):
        npadam.AdamW([np.ones(4, np.float32)], comm=object())
    class DeviceOnly(type(distributed.init("single"))):  # a communicator of GPU memory only, as NCCL
        memories = frozenset({"device"})

    with pytest.raises(ValueError, match="moves GPU memory only; params in host memory need"):
        npadam.AdamW([np.ones(4, np.float32)], comm=DeviceOnly())
    opt = _tiny()
    with pytest.raises(TypeError, match="sharded across ranks"):
        pickle.dumps(opt)
    plain = npadam.AdamW([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match="one rank's shard"):
        plain.load_state_dict(opt.state_dict())


@needs_mpi
@pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.slow), 2, 3, 4])  # 1: as test_single_comm_in_process
def test_mpi_sharded(n):
    out = launch.mpiexec(n, CHECK, "mpi", timeout=150)
    ranks = re.findall(r"OK sharded rank (\d+)/(\d+) (\d+)", out)
    assert sorted((r, w) for r, w, _ in ranks) == [(str(r), str(n)) for r in range(n)], out
    assert all(int(c) == len(sharded_check.CHECKS) for *_, c in ranks), out


def test_failed_hand_over_sends_zeros_in_the_grads_dtype():
    """A rank whose grads_ready fails still sends the bucket (zeros) in the dtype the other ranks send
    theirs in (NCCL and gloo need the same bytes on every rank): the dtype of the grads last seen for
    that buffer, else the params' (a torch grad always has its param's)."""
    bf16 = np.dtype(ml_dtypes.bfloat16)
    for last, want in ((None, "bfloat16"), (np.float32, "float32")):
        opt = npadam.AdamW([np.ones(8, bf16)], lr=1e-2, comm=distributed.init("single"))
        if last is not None:
            opt.step([np.ones(8, last)])
        with pytest.raises(ValueError, match="shape"):
            opt.grads_ready(0, [np.ones(3, np.float32)])
        assert opt._sharding.early[0][1] == want
        with pytest.raises(ValueError, match="grads_ready"):
            opt.step([np.ones(8, np.float32)])
        assert not opt._sharding.early


def test_checkpoint_reads_bf16_params_held_as_bits():
    """npadam.AdamW keeps bf16 params on a GPU as uint16 CuPy arrays: the checkpoint reads them as
    bfloat16 values, not as integers (a review found 1.0 saved as 16256.0)."""
    from npadam import checkpoint

    bits = np.array([1.0, -2.5], ml_dtypes.bfloat16).view(np.uint16)
    got = checkpoint._host(bits, "bfloat16")
    assert got.dtype.name == "bfloat16" and got.astype(np.float32).tolist() == [1.0, -2.5]
    assert checkpoint._host(bits).dtype == np.uint16  # other dtypes as they are


@needs_mpi
def test_jax_loop_on_two_ranks():
    """A JAX loop (flat dict of params, jax.grad on each rank's batch) with comm on 2 MPI ranks: the
    dict comes back from each step, bit for bit one process on the averaged grads."""
    pytest.importorskip("jax")
    out = launch.mpiexec(2, Path(__file__).resolve().parent / "ranks" / "jax_sharded_check.py", timeout=150)
    assert sorted(re.findall(r"OK jax-sharded rank (\d)/2 3", out)) == ["0", "1"], out


@needs_mpi
def test_gpu_check_script_on_host_params():
    """tests/ranks/gpu_sharded_check.py (run on a GPU by tests/test_gpu.py) on host params: the script's
    checks themselves, staged through host copies and through a communicator of device memory."""
    out = launch.mpiexec(2, Path(__file__).resolve().parent / "ranks" / "gpu_sharded_check.py", "host", timeout=150)
    assert sorted(re.findall(r"OK gpu-sharded rank (\d)/2 4", out)) == ["0", "1"], out


def test_bucket_bytes_splits_buffers_in_order():
    specs = [("a", (100,), "float32", 0), ("b", (100,), "float32", 0), ("c", (1000,), "float32", 0),
             ("h", (10,), "bfloat16", 0), ("d", (10,), "float32", 0), ("e", (5,), "float32", 1)]
    lay = FlatLayout(specs, 64, 1, bucket_bytes=1000)
    got = [[lay.slots[t].name for t in b.tensors] for b in lay.buffers]
    # a + b fit (a at 0, b at 128: 228 * 4 bytes); c alone (larger than a bucket); h its own dtype; d after c
    assert got == [["a", "b"], ["c"], ["h"], ["d"], ["e"]], got
    assert [b.group for b in lay.buffers] == [0, 0, 0, 0, 1]
    assert FlatLayout(specs, 64, 1).buffers.__len__() == 3  # without buckets: one per group and dtype
    wide = FlatLayout(specs, 64, 4 * NORM_BLOCK, bucket_bytes=1000)
    assert all(b.size == 4 * NORM_BLOCK for b in wide.buffers)  # each bucket padded to split into shards


def test_grads_ready_and_wait_params_refuse_bad_arguments():
    ws = [np.ones(300, np.float32), np.ones(300, np.float32)]
    opt = npadam.AdamW(ws, lr=0.1, bucket_bytes=1000, comm=distributed.init("single"))
    assert opt.buckets == [["0"], ["1"]]
    g = [np.ones(300, np.float32), np.ones(300, np.float32)]
    for bad in (2, -1, True, "0", 1.0):
        with pytest.raises(ValueError, match="bucket must be an int"):
            opt.grads_ready(bad, [g[0]])
        with pytest.raises(ValueError, match="bucket must be an int"):
            opt.wait_params(bad)
    with pytest.raises(ValueError, match="has 1 params, got 2"):
        opt.grads_ready(0, g)
    with pytest.raises(ValueError, match="not params of bucket 0"):
        opt.grads_ready(0, {"1": g[1]})
    with pytest.raises(ValueError, match="shape"):
        opt.grads_ready(0, [np.ones(3, np.float32)])
    with pytest.raises(TypeError, match="wait_params"):
        opt.step(g, wait_params="no")
    with pytest.raises(ValueError, match="bucket_bytes"):
        npadam.AdamW(ws, bucket_bytes=0)
    opt.grads_ready(0, [g[0]])
    with pytest.raises(ValueError, match="already handed over"):
        opt.grads_ready(0, [g[0]])
    before = [w.copy() for w in ws]
    with pytest.raises(ValueError, match="not the array given to grads_ready"):
        opt.step([g[0].copy(), g[1]])
    assert opt.step_count == 0 and all((w == b).all() for w, b in zip(ws, before))
    opt.grads_ready(1, {"1": g[1]})
    assert opt.step(g).step == 1  # a failed step forgot the handed-over buckets; these were handed anew
    plain = npadam.AdamW([w.copy() for w in before], lr=0.1, bucket_bytes=1000)
    plain.step(g)
    assert all((a == b).all() for a, b in zip(ws, plain.params))
