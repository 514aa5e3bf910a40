"""``npadam demo``: the end-to-end main job."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from npadam import schedules
from npadam.cli import _mlp, demo, main


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


@pytest.mark.parametrize("args, match", [
    (["--steps", "0"], "--steps: expected an integer >= 1, got '0'"),
    (["--steps", "1e12"], "--steps: expected at most 1,000,000, got '1e12'"),
    (["--hidden", "1000000000"], "--hidden: expected at most 4,096, got '1000000000'"),
    (["--batch", "1e12"], "--batch: expected at most 20,000, got '1e12'"),
    (["--seed", "-1"], "--seed: expected a non-negative integer, got '-1'"),
    (["--seed", "1e30"], "--seed: expected at most 18,446,744,073,709,551,615"),
    (["--lr", "-1"], "--lr: expected a number > 0, got '-1'"),
    (["--lr", "nan"], "--lr: expected a finite number, got 'nan'"),
    (["--lr", "inf"], "--lr: expected a finite number, got 'inf'"),
    (["--lr=-inf"], "--lr: expected a finite number, got '-inf'"),
    (["--lr", "-inf"], "--lr: expected one argument (a value that starts with '-' is written --lr=VALUE)"),
    (["--weight-decay", "nan"], "--weight-decay: expected a finite number, got 'nan'"),
    (["--weight-decay=-0.1"], "--weight-decay: expected a number >= 0, got '-0.1'"),
    (["--dtype", "fp8"], "--dtype: invalid choice: 'fp8'"),
    (["--kernel", "gpu"], "--kernel: invalid choice: 'gpu'"),
])
def test_demo_bad_input(capsys, args, match):
    """Every bad value is one line naming the flag (``--seed -1`` used to say only "expected
    non-negative integer"; ``--lr inf`` named the schedule's ``peak``; ``--hidden 1e9`` was a
    MemoryError reported as an internal error)."""
    assert main(["demo", *args]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert match in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_demo_accepts_integer_spellings(capsys):
    rc = main(["demo", "--steps", "2e0", "--hidden", "8", "--batch", "1_6", "--no-check", "--no-plot"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "step 2/2" in out


def test_demo_diverged_run_is_still_bit_identical(capsys):
    """``--lr 1e30`` drives the loss to NaN; both kernels give the same bits, NaN included. The
    check compared losses with ``==`` (NaN != NaN) and printed a false MISMATCH."""
    rc = main(["demo", "--steps", "8", "--hidden", "8", "--batch", "16", "--lr", "1e30", "--no-plot"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "MISMATCH" not in err
    assert "check: bit-identical" in out
    warning = [line for line in err.splitlines() if "warning" in line]
    assert len(warning) == 1
    assert "training diverged: the loss is not finite from step" in warning[0]
    assert "--lr 1e+30 is too large" in warning[0] and "e.g. --lr 0.003" in warning[0]


def test_demo_healthy_run_has_no_warning(capsys):
    assert main(["demo", "--steps", "5", "--hidden", "8", "--batch", "16", "--no-check", "--no-plot"]) == 0
    assert "warning" not in capsys.readouterr().err


def _run(flat, losses, skipped=0):
    return _mlp.Run(losses=list(losses), flat=[np.asarray(f, dtype=np.float32) for f in flat], skipped=skipped)


def test_compare_runs_bitwise_with_nan():
    nan = np.float32("nan")
    other_nan = np.array([0x7FC00001], dtype=np.uint32).view(np.float32)[0]     # another NaN payload
    a = _run([[1.0, nan], [np.inf]], [2.0, float("nan")])
    assert demo.compare_runs(a, _run([[1.0, nan], [np.inf]], [2.0, float("nan")])) == ("bits", "")
    assert demo.compare_runs(a, _run([[1.0, other_nan], [np.inf]], [2.0, float("nan")])) == ("values", "")
    verdict, detail = demo.compare_runs(a, _run([[1.5, nan], [np.inf]], [2.0, float("nan")]))
    assert verdict == "differ" and detail.startswith("1 of 3 parameters and 0 of 2 losses differ, max |diff| 0.5")
    assert demo.compare_runs(a, _run([[1.0, nan], [np.inf]], [2.0, 3.0]))[1].startswith(
        "0 of 3 parameters and 1 of 2 losses differ")


def test_divergence_warning_only_for_non_finite_losses():
    assert demo._diverged(_run([[1.0]], [2.0, 1.0]), 1e-3) is None
    text = demo._diverged(_run([[1.0]], [2.0, float("inf"), float("nan")], skipped=1), 10.0)
    assert "from step 2 on" in text and "skipped 1 of 3 steps" in text and "--lr 0.003" in text


def test_python_m_npadam_demo_runs():
    out = subprocess.run([sys.executable, "-m", "npadam", "demo", "--steps", "5", "--hidden", "8", "--no-check",
                          "--no-plot"], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr
    assert "step 5/5" in out.stdout


# -------- npadam demo --lr-find

@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_demo_lr_find(capsys, dtype):
    """The range test on the demo model: the sweep, the suggestion, the plot, and the check that
    params, optimizer state, step count and schedule came back bit for bit."""
    rc = main(["demo", "--lr-find", "--steps", "40", "--hidden", "16", "--batch", "32", "--dtype", dtype])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "lr range test: lr 1e-07 .. 10 (exponential) over 40 updates" in out
    assert "step  1/40" in out and ("step 40/40" in out or "stopped at update" in out)
    assert "suggestion: lr" in out or "suggestion: none" in out
    assert "lr range test: smoothed loss vs lr" in out and "lr (log scale)" in out
    assert "check: put back bit for bit: all 1,482 parameters, the optimizer state, the step count (0)" in out
    assert "MISMATCH" not in err and "held-out accuracy" not in out      # no training run


def test_demo_lr_find_options(capsys):
    assert demo.parse([]).steps == 500 and demo.parse(["--lr-find"]).steps == 100
    assert demo.parse(["--lr-find", "--steps", "7"]).steps == 7 and demo.parse(["--steps", "1"]).steps == 1
    assert main(["demo", "--lr-find", "--steps", "1"]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.strip() == ("npadam: error: --steps: the lr range test (--lr-find) needs at least 2 "
                                         "updates, got 1 (see 'npadam demo --help')")
    rc = main(["demo", "--lr-find", "--steps", "12", "--hidden", "8", "--batch", "16", "--no-plot", "--no-check"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    assert "suggestion: none (the curve needs at least 17 finite points" in out
    assert "smoothed loss vs lr" not in out and "check:" not in out


def test_demo_lr_find_check_can_fail(capsys, monkeypatch):
    """The check is real: a range test that leaves one parameter changed is reported (exit 1)."""
    import npadam

    real = npadam.lr_finder

    def leaky(step_fn, optimizer, **kwargs):
        result = real(step_fn, optimizer, **kwargs)
        optimizer.param_groups[0]["params"][0].reshape(-1)[0] += 1
        return result

    monkeypatch.setattr(npadam, "lr_finder", leaky)
    rc = main(["demo", "--lr-find", "--steps", "5", "--hidden", "8", "--batch", "16", "--no-plot"])
    out, err = capsys.readouterr()
    assert rc == 1 and "check: MISMATCH: the lr range test did not put back the parameters" in err
