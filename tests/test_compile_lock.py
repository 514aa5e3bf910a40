"""Processes that load or compile npadam's kernels at the same time take turns (kernels/compile_lock.py).

Numba's disk cache can hand a process the wrong kernel when others compile variants of the same
function into it at the same time (ranks started together); every cache load and compilation of
npadam's kernels therefore holds a file lock in the cache directory."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

HOLDER = """
import os, sys, time
import numpy as np
import npadam
from npadam.kernels import cpu
from npadam.kernels.compile_lock import held, lock_path
d = sys.argv[1]
p = np.ones(1000, np.float32)
npadam.AdamW([p], lr=1e-3, amsgrad=True, num_threads=1).step([np.full(1000, 0.5, np.float32)])  # compiled, cached
path = lock_path(cpu.adam_pass(0, 0, True, True, parallel=False))
assert path.startswith(os.environ["NUMBA_CACHE_DIR"]), path  # next to the kernel's own cache files
with held(path):
    open(os.path.join(d, "held"), "w").close()
    for _ in range(600):  # the stepper has started its step (and must now wait for this lock)
        if os.path.exists(os.path.join(d, "stepping")):
            break
        time.sleep(0.05)
    time.sleep(1.0)
    open(os.path.join(d, "released"), "w").close()
"""

STEPPER = """
import os, sys, time
import numpy as np
import npadam
d = sys.argv[1]
p = np.ones(1000, np.float32)
opt = npadam.AdamW([p], lr=1e-3, amsgrad=True, num_threads=1)
g = np.full(1000, 0.5, np.float32)
for _ in range(1200):
    if os.path.exists(os.path.join(d, "held")):
        break
    time.sleep(0.05)
open(os.path.join(d, "stepping"), "w").close()
opt.step([g])  # loads the cached kernel: only once the holder has released the lock
print("waited" if os.path.exists(os.path.join(d, "released")) else "did not wait")
"""


def _run(code: str, *args: str, env: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", textwrap.dedent(code), *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_a_kernel_load_waits_for_another_process_holding_the_cache_lock(tmp_path):
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "1"}
    holder = _run(HOLDER, str(tmp_path), env=env)
    stepper = _run(STEPPER, str(tmp_path), env=env)
    out_h, err_h = holder.communicate(timeout=300)
    out_s, err_s = stepper.communicate(timeout=300)
    assert holder.returncode == 0, err_h
    assert stepper.returncode == 0, err_s
    assert out_s.strip() == "waited"


def test_the_lock_is_not_taken_by_calls_that_run_compiled_code(monkeypatch):
    import npadam
    from npadam.kernels import compile_lock

    p = np.ones(100, np.float32)
    opt = npadam.AdamW([p], lr=1e-3, num_threads=1)
    g = np.full(100, 0.5, np.float32)
    opt.step([g])  # compiled (or loaded) here
    entered = []
    real = compile_lock.held

    def counting(path):
        entered.append(path)
        return real(path)

    monkeypatch.setattr(compile_lock, "held", counting)
    opt.step([g])
    assert entered == []


@pytest.mark.slow
def test_processes_compiling_different_variants_at_once_leave_a_correct_cache(tmp_path):
    """Four processes compile four Adam variants into one fresh cache at the same time; a fifth
    loads them all from the cache and gets the bits each compiling process got."""
    env = {**os.environ, "NUMBA_CACHE_DIR": str(tmp_path / "cache"), "NUMBA_NUM_THREADS": "1"}
    code = """
    import sys, numpy as np, npadam
    variants = [dict(amsgrad=a, decoupled=d) for a in (False, True) for d in (False, True)]
    mine = variants if sys.argv[1] == "all" else [variants[int(sys.argv[1])]]
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(3000).astype(np.float32)
    g = rng.standard_normal(3000).astype(np.float32)
    for v in mine:
        cls = npadam.AdamW if v["decoupled"] else npadam.Adam
        p = p0.copy()
        cls([p], lr=1e-2, weight_decay=0.1, amsgrad=v["amsgrad"], num_threads=1).step([g])
        print(v, p.tobytes().hex(), flush=True)
    """
    procs = [_run(code, str(i), env=env) for i in range(4)]
    outs = [pr.communicate(timeout=600) for pr in procs]
    for pr, (out, err) in zip(procs, outs):
        assert pr.returncode == 0, err
    first = sorted(line for out, _ in outs for line in out.splitlines())
    again = _run(code, "all", env=env)
    out, err = again.communicate(timeout=600)
    assert again.returncode == 0, err
    assert sorted(out.splitlines()) == first
