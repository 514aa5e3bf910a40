"""npadam.distributed communicators: every collective on MPI (1-4 ranks) and torch.distributed/gloo
(2-3 ranks) in launched processes, the single-process communicator and the shared checks in process,
and what the NCCL backend can prove without a GPU (tables, import guards, unique-id exchange).

Launched runs have deadlines: a rank that fails or hangs fails the test with every rank's output.
"""

from __future__ import annotations

import doctest
import importlib
import pickle
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from npadam import distributed

try:
    from .ranks import comm_check, launch
except ImportError:  # run from tests/ as a plain directory
    from ranks import comm_check, launch

RANKS = Path(__file__).resolve().parent / "ranks"
CHECK = RANKS / "comm_check.py"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


needs_mpi = pytest.mark.skipif(not (_has("mpi4py") and launch.mpiexec_path()),
                               reason="needs mpi4py and mpiexec: python3 -m pip install mpi4py mpich")
needs_torch = pytest.mark.skipif(not _has("torch"), reason="needs torch")


# ---------------------------------------------------------------------------------------------- launched ranks
@needs_mpi
@pytest.mark.parametrize("n", [1, 2, 3, 4])
def test_mpi_collectives(n):
    out = launch.mpiexec(n, CHECK, "mpi", timeout=120)
    ranks = re.findall(r"OK mpi rank (\d+)/(\d+)", out)  # mpiexec may interleave the ranks' lines
    assert sorted(ranks) == [(str(r), str(n)) for r in range(n)], out


@needs_torch
@pytest.mark.parametrize("n", [pytest.param(2, marks=pytest.mark.slow), 3])  # each rank imports torch: ~15 s
def test_torch_gloo_collectives(n, tmp_path):
    outs = launch.torchrun(n, CHECK, "torch", timeout=120, env={"NPADAM_TEST_STORE": str(tmp_path / "store")})
    for r, out in enumerate(outs):
        assert f"OK torch rank {r}/{n}" in out, out


@needs_mpi
@pytest.mark.parametrize("mode, timeout", [("raise", 60), ("hang", 3)])
def test_mpiexec_launch_never_hangs(mode, timeout):
    t = time.monotonic()
    with pytest.raises(AssertionError) as err:
        launch.mpiexec(2, RANKS / "fail_rank.py", mode, timeout=timeout)
    assert time.monotonic() - t < 30
    assert ("fails on purpose" in str(err.value)) if mode == "raise" else ("timed out" in str(err.value))


@pytest.mark.parametrize("mode, timeout", [("raise", 60), ("hang", 2)])
def test_torchrun_launch_never_hangs(mode, timeout):
    t = time.monotonic()
    with pytest.raises(AssertionError) as err:
        launch.torchrun(2, RANKS / "fail_rank.py", mode, timeout=timeout, grace=1)
    assert time.monotonic() - t < 30
    if mode == "raise":
        assert "rank 1 exited with 1" in str(err.value) and "fails on purpose" in str(err.value)
    else:
        assert "timed out" in str(err.value)


# ---------------------------------------------------------------------------------------------- in process
def test_single_runs_every_check():
    """The same script, in this process, on the one-process communicator."""
    c = distributed.init("single")
    assert (c.rank, c.size, c.backend) == (0, 1, "single")
    checks = comm_check.Checks(c, "single")
    checks.errors()
    checks.reductions()
    checks.bit_arrays()
    checks.movement()
    checks.overlap()
    checks.objects()
    assert checks.count > 500


def test_single_objects_are_copies():
    c = distributed.SingleComm()
    meta = {"shapes": [(2, 3)]}
    got = c.allgather_object(meta)
    assert got == [meta] and got[0] is not meta and c.broadcast_object(meta) is not meta
    with pytest.raises((pickle.PicklingError, TypeError, AttributeError)):
        c.allgather_object(lambda: 0)


def test_handle_waits_and_finishes_once():
    calls = []
    h = distributed.Handle(lambda: calls.append("wait"), lambda: bool(calls), lambda: calls.append("finish"))
    assert not h.done()
    h.wait()
    h.wait()
    assert h.done() and calls == ["wait", "finish"]
    polled = distributed.Handle(lambda: calls.append("w2"), lambda: True, lambda: calls.append("f2"))
    assert polled.done() and calls[-2:] == ["w2", "f2"]


def test_init_rejects_unknown_backends_and_arguments():
    with pytest.raises(ValueError, match="'gloo'"):
        distributed.init("gloo")
    with pytest.raises(TypeError):
        distributed.init("single", comm=None)
    with pytest.raises(ValueError, match="rank and size come from the MPI"):
        distributed.init("nccl", rank=0)


def test_every_error_names_its_value_before_any_work():
    c = distributed.SingleComm()
    x = np.arange(4, dtype=np.float32)
    with pytest.raises(TypeError, match="async_op"):
        c.reduce_scatter(x, np.empty(2, np.float32), async_op="yes")
    with pytest.raises(ValueError, match=r"1 \* 2 = 2"):
        c.reduce_scatter(x, np.empty(2, np.float32))
    big = np.zeros(4, ">f4")
    with pytest.raises(TypeError, match=">f4"):
        c.all_reduce(big)
    c.all_gather(big, np.zeros(4, ">f4"))  # bytes move whatever the byte order
    assert np.array_equal(x, np.arange(4, dtype=np.float32))


def test_docstring_example():
    result = doctest.testmod(distributed)
    assert result.failed == 0 and result.attempted > 0


def test_import_does_not_load_a_backend():
    code = ("import sys, npadam, npadam.distributed as d; d.init('single'); "
            "heavy = [m for m in ('mpi4py', 'torch', 'cupy') if m in sys.modules]; print(heavy); sys.exit(bool(heavy))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=launch.rank_env())
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("backend, blocked, text", [("mpi", "mpi4py", "pip install mpi4py mpich"),
                                                    ("torch", "torch", "pip install torch"),
                                                    ("nccl", "cupy", "needs CuPy with NCCL")])
def test_missing_library_says_what_to_install(backend, blocked, text, monkeypatch):
    monkeypatch.setitem(sys.modules, blocked, None)  # import fails as if it were not installed
    kw = {"store": {}, "rank": 0, "size": 1} if backend == "nccl" else {}
    with pytest.raises(ImportError, match=text):
        distributed.init(backend, **kw)


# ---------------------------------------------------------------------------------------------- NCCL, no GPU
def test_nccl_tables_match_cupy():
    from npadam.distributed import _nccl

    assert set(_nccl.NCCL_DTYPES) == set(distributed.REDUCE_DTYPES)
    assert set(_nccl.NCCL_OPS) == set(distributed.OPS)
    nccl = pytest.importorskip("cupy.cuda.nccl")
    if not getattr(nccl, "available", False):
        pytest.skip("CuPy without an NCCL library")
    names = {"uint8": "NCCL_UINT8", "int32": "NCCL_INT32", "int64": "NCCL_INT64", "float16": "NCCL_FLOAT16",
             "float32": "NCCL_FLOAT32", "float64": "NCCL_FLOAT64", "bfloat16": "NCCL_BFLOAT16"}
    assert {k: getattr(nccl, v) for k, v in names.items()} == _nccl.NCCL_DTYPES
    assert (nccl.NCCL_SUM, nccl.NCCL_MAX, nccl.NCCL_MIN) == (_nccl.NCCL_OPS["sum"], _nccl.NCCL_OPS["max"],
                                                            _nccl.NCCL_OPS["min"])
    assert _nccl.NCCL_OPS["avg"] == nccl.NCCL_SUM != nccl.NCCL_AVG  # a sum, then a division


def test_nccl_checks_arguments_without_a_gpu():
    from npadam.distributed import _nccl

    try:
        _nccl.import_nccl()
    except ImportError:
        pytest.skip("CuPy with NCCL is not installed")
    c = _nccl.NCCLComm(object(), rank=1, size=2, device=0)
    assert (c.rank, c.size, c.backend, c.device) == (1, 2, "nccl", 0)
    x = np.zeros(4, np.float32)
    with pytest.raises(TypeError, match="numpy array; this communicator takes cupy"):
        c.all_reduce(x)
    with pytest.raises(TypeError, match="numpy array"):
        c.all_gather(x[:2], x)
    with pytest.raises(ValueError, match="root must be a rank in \\[0, 2\\), got 2"):
        c.broadcast(x, root=2)
    with pytest.raises(ValueError, match="rank must be a rank in"):
        _nccl.NCCLComm(object(), rank=2, size=2, device=0)


def test_nccl_unique_id_over_a_store():
    from npadam.distributed import _nccl

    class Store(dict):
        set = dict.__setitem__

        def get(self, key):
            return self[key]

    store, made = Store(), []
    make = lambda: made.append(1) or bytes(range(128))  # noqa: E731
    ids = [_nccl.unique_id_over_store(store, r, make, "k") for r in range(3)]
    assert ids == [bytes(range(128))] * 3 and made == [1]


#: the python blocks of docs/DISTRIBUTED.md written to run on many ranks (they read NPADAM_COMM)
_DOC = Path(__file__).resolve().parents[1] / "docs" / "DISTRIBUTED.md"
DOC_BLOCKS = [b for b in re.findall(r"```python\n(.*?)```", _DOC.read_text(), re.S) if "NPADAM_COMM" in b]


def test_distributed_docs_have_rank_examples():
    assert len(DOC_BLOCKS) >= 3


@needs_mpi
def test_distributed_doc_examples_on_two_mpi_ranks(tmp_path, monkeypatch):
    """docs/DISTRIBUTED.md's examples as its launch lines run them (test_docs runs them on one
    process): one launch runs every block, each in a fresh namespace, so torch and the kernels load once."""
    script = tmp_path / "examples.py"
    script.write_text(f"BLOCKS = {DOC_BLOCKS!r}\n"
                      "for i, code in enumerate(BLOCKS):\n"
                      "    exec(compile(code, f'DISTRIBUTED.md block {i}', 'exec'), {'__name__': '__docs__'})\n"
                      "    print(f'DOC OK {i}', flush=True)\n")
    monkeypatch.setenv("NPADAM_COMM", "mpi")
    monkeypatch.setenv("CKPT", str(tmp_path / "ckpt"))  # the same path on every rank
    out = launch.mpiexec(2, script, timeout=240)
    done = re.findall(r"DOC OK (\d)", out)  # two ranks' lines may interleave on the shared stream
    assert sorted(done) == sorted([str(i) for i in range(len(DOC_BLOCKS))] * 2), out
