"""Soak: a run killed with SIGKILL at random moments (mid-step, mid-save) and resumed from its
last checkpoint in fresh processes, again and again, ends bit for bit where the uninterrupted
run ends. CI runs a short version; ``python3 -m pytest -m slow tests/test_soak.py`` the long one."""

from __future__ import annotations

import random
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from tests import _soak

ROOT = Path(__file__).resolve().parents[1]


def _interrupted(tmp_path: Path, steps: int, every: int, max_delay: float, seed: int) -> tuple[str, int]:
    ckpt = tmp_path / "ck"
    rng = random.Random(seed)
    kills = 0
    for _ in range(10 * steps // every + 20):
        child = subprocess.Popen([sys.executable, str(ROOT / "tests" / "_soak.py"), str(ckpt), str(steps), str(every)],
                                 stdout=subprocess.PIPE, stderr=subprocess.PIPE, bufsize=0, cwd=ROOT)
        first = child.stdout.readline()  # unbuffered: nothing after this line is read ahead
        assert first.startswith(b"loaded"), child.stderr.read().decode()
        try:
            out, err = child.communicate(timeout=rng.uniform(0.0, max_delay))
        except subprocess.TimeoutExpired:
            child.send_signal(signal.SIGKILL)
            child.communicate()
            kills += 1
            continue
        assert child.returncode == 0, err.decode()
        return out.decode().split("digest")[-1].strip(), kills
    pytest.fail("the interrupted run made no progress")


def _uninterrupted(steps: int) -> str:
    opt, p = _soak.make()
    _soak.run(opt, p, 0, steps)
    return _soak.digest(opt, p)


def test_soak_short(tmp_path):
    want = _uninterrupted(400)
    got, kills = _interrupted(tmp_path, 400, 40, max_delay=1.0, seed=1)
    assert got == want
    assert kills >= 1


@pytest.mark.slow
def test_soak_long(tmp_path):
    want = _uninterrupted(3000)
    got, kills = _interrupted(tmp_path, 3000, 50, max_delay=2.0, seed=2)
    assert got == want
    assert kills >= 10
