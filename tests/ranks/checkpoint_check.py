"""Sharded checkpoints (``npadam.checkpoint`` with ``comm=``) on every rank: save on one world size,
resume on another.

``python3 -m mpi4py checkpoint_check.py <config> <dir> <phase> ...`` under ``mpiexec -n N``
(tests/test_sharded_checkpoint.py):

- ``start K``: a fresh sharded optimizer, K steps, ``save(<dir>/ckpt)``; then a save that fails
  on the last rank (disk full), and one given different paths on different ranks, must raise on
  every rank and leave that checkpoint as it was;
- ``resume K``: ``load(<dir>/ckpt)`` into a fresh sharded optimizer whose params are zeros (the
  checkpoint must restore them), after a load of a damaged copy (one byte flipped in one rank's
  file) failed on every rank and changed nothing; K more steps; ``save`` over the checkpoint.

Grads are ``sharded_check.local_grad`` (exact sums), each rank passing its own: the test
steps one process on their averages for the same world-size history and compares bits. Every
rank counts the bytes it reads: a rank reads its shard's checksum chunks, not the checkpoint.
Prints ``OK ckpt rank r/n <phase> <bytes read>``.
"""

from __future__ import annotations

import errno
import os
import shutil
import sys
from pathlib import Path
from typing import Any

import numpy as np

import npadam
from npadam import checkpoint as C
from npadam import distributed

sys.path.insert(0, str(Path(__file__).resolve().parent))
import launch  # noqa: E402
from sharded_check import MAIN, groups, init_params, local_grad  # noqa: E402

CHUNK = 4096
CONFIGS = {
    "adamw": dict(lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, amsgrad=True),
    "precision": dict(lr=1e-2, exp_avg_dtype="bfloat16", rounding="stochastic", exp_avg_sq_dtype="float8_e4m3fn",
                      store_param_remainders=True, max_grad_norm=1.0, seed=7),
}


def make(config: str, params: list[np.ndarray], comm: Any) -> Any:
    return npadam.AdamW(groups(MAIN, params), comm=comm, **CONFIGS[config])


def step(opt: Any, k: int, comm: Any) -> None:
    opt.step([local_grad(k, comm.rank, i, shape, dt) for i, (_, shape, dt, _) in enumerate(MAIN)])


class Counter:
    """Bytes this rank reads from tensor files (``checkpoint._Files.read``)."""

    def __init__(self) -> None:
        self.n = 0
        self.orig = C._Files.read

        def read(files: Any, fname: str, key: str, dtype: str, lo: int, hi: int) -> np.ndarray:
            a = self.orig(files, fname, key, dtype, lo, hi)
            self.n += a.nbytes
            return a

        C._Files.read = read


def failing_save(opt: Any, path: Path, comm: Any) -> None:
    """The last rank's disk is full: every rank raises, the checkpoint at ``path`` is unchanged."""
    before = (path / "index.json").read_bytes()
    orig = C._write_file

    def full(p: Path, *a: Any, **kw: Any) -> int:
        if comm.rank == comm.size - 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(p))
        return orig(p, *a, **kw)

    C._write_file = full
    try:
        C.save(path, opt)
    except C.CheckpointError as e:
        assert "no space left" in str(e) or f"rank {comm.size - 1}" in str(e), str(e)
    else:
        raise AssertionError("a save with a full disk on one rank did not raise")
    finally:
        C._write_file = orig
    comm.barrier()
    assert (path / "index.json").read_bytes() == before
    assert not list(path.parent.glob(".ckpt.npadam-tmp-*")), list(path.parent.iterdir())
    C.verify(path)


def damaged_load(config: str, path: Path, comm: Any) -> None:
    """A copy with one byte flipped in the last rank's first file: every rank raises, nothing changes."""
    bad = path.parent / "damaged"
    if comm.rank == 0:
        shutil.rmtree(bad, ignore_errors=True)
        shutil.copytree(path, bad)
        f = sorted(bad.glob("tensors-*.safetensors"))[-1]
        raw = bytearray(f.read_bytes())
        raw[-3] ^= 1
        f.write_bytes(bytes(raw))
    comm.barrier()
    params = [np.zeros_like(p) for p in init_params(MAIN)]
    opt = make(config, params, comm)
    try:
        C.load(bad, opt)
    except ValueError as e:
        assert "checksum" in str(e) or "rank" in str(e), str(e)
    else:
        raise AssertionError("loading a damaged checkpoint did not raise")
    assert opt.step_count == 0 and all(not p.any() for p in params)
    comm.barrier()
    if comm.rank == 0:
        shutil.rmtree(bad)


def run(config: str, where: Path, phase: str, k: int, comm: Any) -> str:
    """One phase on this rank; what ``OK ckpt`` reports: the phase and the bytes this rank read."""
    C.CHUNK = CHUNK  # small checksum chunks: a rank's slices of these small tensors are a fraction of them
    path = where / "ckpt"
    read = 0
    if phase == "start":
        params = init_params(MAIN)
        opt = make(config, params, comm)
        for j in range(k):
            step(opt, j, comm)
        C.save(path, opt, metadata={"world": comm.size})
        failing_save(opt, path, comm)
        if comm.size > 1:  # ranks given different paths: an error on every rank, nothing written
            try:
                C.save(path if comm.rank == 0 else where / "elsewhere", opt)
            except ValueError as e:
                assert "different paths" in str(e) or "rank" in str(e), str(e)
            else:
                raise AssertionError("a save with different paths did not raise")
            comm.barrier()
            assert not (where / "elsewhere").exists() and not list(where.glob(".ckpt.npadam-tmp-*"))
    else:
        damaged_load(config, path, comm)
        params = [np.zeros_like(p) for p in init_params(MAIN)]
        opt = make(config, params, comm)
        count = Counter()
        index = C.load(path, opt)
        read = count.n
        start = opt.step_count
        assert start == index["step"]
        for j in range(start, start + k):
            step(opt, j, comm)
        C.save(path, opt, metadata={"world": comm.size})
    assert C.read_index(path)["world_size"] == comm.size
    return f"{phase} {read}"


def main() -> None:
    comm = distributed.init("mpi")
    launch.rank_main(comm, "ckpt", lambda: run(sys.argv[1], Path(sys.argv[2]), sys.argv[3], int(sys.argv[4]), comm))


if __name__ == "__main__":
    main()
