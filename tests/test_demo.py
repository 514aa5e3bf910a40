"""``npadam demo``: the end-to-end main job."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from npadam import schedules
from npadam.cli import _mlp, main


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_demo_trains_and_matches_reference(capsys, dtype):
    rc = main(["demo", "--steps", "60", "--hidden", "32", "--batch", "64", "--dtype", dtype])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert f"({'{:,}'.format(64 * 32 + 32 + 32 * 32 + 32 + 32 * 10 + 10)} params, {dtype})" in out
    assert "step 60/60" in out and "held-out accuracy" in out and "throughput" in out
    assert "bit-identical" in out and "training loss" in out


def test_demo_loss_goes_down_and_lr_follows_schedule():
    task = _mlp.make_task(16, 10, 2_000, 500, seed=1)
    lr = schedules.warmup_cosine(peak=3e-3, warmup_steps=10, total_steps=100, final=3e-4)
    run = _mlp.train(task, hidden=64, classes=10, steps=100, batch=64, lr=lr, weight_decay=0.1, dtype="fp32",
                     kernel="cpu", seed=1)
    assert np.mean(run.losses[-10:]) < 0.6 * np.mean(run.losses[:10])
    assert run.lrs == [lr(k) for k in range(100)]
    assert _mlp.accuracy(run.params, task.x_test, task.y_test) > 0.3


def test_demo_gradients_are_right():
    """The hand-written backward pass against central differences."""
    rng = np.random.default_rng(0)
    p = {k: v.astype(np.float64) for k, v in _mlp.init_params(5, 7, 3, seed=0).items()}
    p = {k: v + 0.1 * rng.standard_normal(v.shape) for k, v in p.items()}
    x, y = rng.standard_normal((9, 5)), rng.integers(0, 3, 9)
    _, g = _mlp.loss_and_grads({k: v.copy() for k, v in p.items()}, x, y)
    for name in p:
        flat = p[name].reshape(-1)
        for i in range(min(flat.size, 6)):
            old = flat[i]
            flat[i] = old + 1e-6
            up, _ = _mlp.loss_and_grads({k: v.copy() for k, v in p.items()}, x, y)
            flat[i] = old - 1e-6
            down, _ = _mlp.loss_and_grads({k: v.copy() for k, v in p.items()}, x, y)
            flat[i] = old
            assert abs((up - down) / 2e-6 - g[name].reshape(-1)[i]) < 1e-4, (name, i)


@pytest.mark.parametrize("args, match", [(["--steps", "0"], "--steps must be >= 1"),
                                         (["--lr", "-1"], "--lr must be > 0"),
                                         (["--dtype", "fp8"], "invalid choice")])
def test_demo_bad_input(capsys, args, match):
    assert main(["demo", *args]) == 2
    err = capsys.readouterr().err
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1


def test_python_m_npadam_demo_runs():
    out = subprocess.run([sys.executable, "-m", "npadam", "demo", "--steps", "5", "--hidden", "8", "--no-check",
                          "--no-plot"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "step 5/5" in out.stdout
