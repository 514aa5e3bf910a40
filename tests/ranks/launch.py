"""Launch a script on N ranks for a test, with a deadline: ``mpiexec`` or torchrun's environment.

A rank that fails makes the run fail with every rank's output shown; a rank that
hangs is killed (its whole process group) at the deadline. Ranks run with one
Numba/OpenMP thread and the repository on PYTHONPATH.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parents[2]


def rank_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    env.update(extra)
    return env


def mpiexec_path() -> str | None:
    """The mpiexec installed next to this Python (``pip install mpich``), else the one on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _kill(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the process group this launcher started
    except ProcessLookupError:
        pass


def mpiexec(n: int, script: str | Path, *args: str, timeout: float = 120.0) -> str:
    """Run ``mpiexec -n n python3 -m mpi4py script args``; return its output, or raise AssertionError with it.

    ``-m mpi4py`` aborts every rank when one raises (mpiexec alone would leave the others waiting).
    """
    cmd = [mpiexec_path() or "mpiexec", "-n", str(n), sys.executable, "-m", "mpi4py", str(script), *args]
    with tempfile.TemporaryFile("w+") as out:
        proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=rank_env(), cwd=ROOT,
                                start_new_session=True)
        try:
            rc = proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill(proc)
            proc.wait()
            rc = None
        out.seek(0)
        text = out.read()
    if rc != 0:
        what = f"timed out after {timeout:.0f} s" if rc is None else f"exited with {rc}"
        raise AssertionError(f"mpiexec -n {n} {Path(script).name} {' '.join(args)} {what}; output:\n{text[-8000:]}")
    return text


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(n: int, script: str | Path, *args: str, timeout: float = 120.0, grace: float = 10.0,
             env: dict[str, str] | None = None) -> list[str]:
    """Run n copies of ``python3 script args`` with torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK,
    MASTER_ADDR, MASTER_PORT); return each rank's output, or raise AssertionError with all of them.
    Once a rank fails the others get ``grace`` seconds before they are killed."""
    port = _free_port()
    files, procs = [], []
    try:
        for r in range(n):
            f = tempfile.TemporaryFile("w+")
            files.append(f)
            e = rank_env(RANK=str(r), LOCAL_RANK=str(r), WORLD_SIZE=str(n), LOCAL_WORLD_SIZE=str(n),
                         MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), **(env or {}))
            procs.append(subprocess.Popen([sys.executable, str(script), *args], stdout=f, stderr=subprocess.STDOUT,
                                          env=e, cwd=ROOT, start_new_session=True))
        deadline, why = time.monotonic() + timeout, ""
        while any(p.poll() is None for p in procs):
            now = time.monotonic()
            failed = [r for r, p in enumerate(procs) if p.poll() not in (None, 0)]
            if failed and not why:
                why = f"rank {failed[0]} exited with {procs[failed[0]].returncode}"
                deadline = min(deadline, now + grace)
            if now > deadline:
                why = why or f"timed out after {timeout:.0f} s"
                for p in procs:
                    _kill(p)
                break
            time.sleep(0.05)
        for p in procs:
            p.wait()
        texts = []
        for f in files:
            f.seek(0)
            texts.append(f.read())
    finally:
        for p in procs:
            if p.poll() is None:
                _kill(p)
                p.wait()
        for f in files:
            f.close()
    bad = [r for r, p in enumerate(procs) if p.returncode != 0]
    if bad or why:
        shown = "\n".join(f"--- rank {r} (exit {procs[r].returncode}):\n{t[-4000:]}" for r, t in enumerate(texts))
        why = why or f"ranks {bad} failed"
        raise AssertionError(f"{n} ranks of {Path(script).name} {' '.join(args)}: {why}\n{shown}")
    return texts


def rank_main(comm: object, label: str, body: Callable[[], object]) -> None:
    """A launched rank's main: ``body()``; on any exception print ``rank r/n FAILED`` and the
    traceback, then re-raise (under ``python3 -m mpi4py`` that aborts every rank); else print
    ``OK <label> rank r/n <what body returned>`` and close the communicator."""
    import traceback

    try:
        result = body()
    except BaseException:
        sys.stdout.write(f"rank {comm.rank}/{comm.size} FAILED\n{traceback.format_exc()}")
        sys.stdout.flush()
        raise
    print(f"OK {label} rank {comm.rank}/{comm.size} {result}", flush=True)
    comm.close()
