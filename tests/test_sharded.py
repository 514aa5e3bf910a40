"""The sharded optimizer (``comm=``, ZeRO-1/2): the padding rule, refusals, the single-process
communicator in process, and ``tests/ranks/sharded_check.py`` on 1-4 MPI ranks (bit-identical
params, norms and state against one process; inf on one rank; padding-only ranks; ranks that
disagree; per-rank state memory). Launched runs have deadlines and show every rank's output."""

from __future__ import annotations

import importlib.util
import pickle
import re
from pathlib import Path

import numpy as np
import pytest

import npadam
from npadam import distributed
from npadam._sharded import NORM_BLOCK, Sharding, pad_multiple, shard_range
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
    got = sharding.combine_sums([np.array([1.0, 2.0]), np.array([3.0]), np.zeros(0)])
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
    with standin(HostCopier), pytest.raises(ValueError, match="offload_fraction / gpu_state_bytes with comm"):
        _tiny(offload_fraction=0.5)  # host params standing in for GPU params: their host tier
    opt = _tiny()
    with pytest.raises(TypeError, match="sharded across ranks"):
        pickle.dumps(opt)
    plain = npadam.AdamW([np.ones(4, np.float32)])
    with pytest.raises(ValueError, match="one rank's shard"):
        plain.load_state_dict(opt.state_dict())


@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_mpi_sharded(n):
    out = launch.mpiexec(n, CHECK, "mpi", timeout=150)
    ranks = re.findall(r"OK sharded rank (\d+)/(\d+) (\d+)", out)
    assert sorted((r, w) for r, w, _ in ranks) == [(str(r), str(n)) for r in range(n)], out
    assert all(int(c) == len(sharded_check.CHECKS) for *_, c in ranks), out
