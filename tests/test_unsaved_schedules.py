"""Schedules holding Python code (``from_callable``, torch's LambdaLR) in state dicts and checkpoints.

No file can hold a lambda, so a state dict marks it ``{"unsaved_schedule": name}`` and loading takes
the live schedule from the optimizer it loads into, as torch's LambdaLR is rebuilt before
``load_state_dict``; any other optimizer is refused with nothing changed.
"""

from __future__ import annotations

import numpy as np
import pytest

import npadam
from npadam import checkpoint
from npadam import schedules as S


def decay(e: int) -> float:
    return 0.9 ** e


def _opt(lr, w=None):
    w = np.linspace(-1, 1, 6, dtype=np.float32) if w is None else w
    return npadam.AdamW([{"params": [w], "lr": lr, "betas": (S.from_callable(decay, scale=0.9, name="b1"), 0.99)}],
                        weight_decay=0.1), w


def _grad(i: int) -> list[np.ndarray]:
    return [np.full(6, 0.1 * (i + 1), np.float32)]


def test_state_dict_marks_and_loads_into_the_same_callables():
    opt, w = _opt(S.from_callable(decay, scale=0.1))
    for i in range(3):
        opt.step(_grad(i))
    sd = opt.state_dict()
    g = sd["param_groups"][0]
    assert g["lr"]["unsaved_schedule"] == "tests.test_unsaved_schedules.decay" == g["betas"][0]["unsaved_schedule"]
    assert g["lr"]["config"] == {"type": "lambda", "fn": {"python_callable": "tests.test_unsaved_schedules.decay"},
                                 "scale": 0.1, "shift": 0, "product": False, "first": 1, "name": "fn"}
    twin, w2 = _opt(S.from_callable(decay, scale=0.1), w.copy())
    twin.load_state_dict(sd)
    for i in range(3, 6):
        assert opt.step(_grad(i)).lr == twin.step(_grad(i)).lr
    assert w.tobytes() == w2.tobytes()


@pytest.mark.parametrize("lr", [0.1, S.constant(0.1), S.from_callable(lambda e: 1.0)])
def test_other_optimizers_are_refused_and_unchanged(lr):
    opt, _ = _opt(S.from_callable(decay, scale=0.1))
    opt.step(_grad(0))
    sd = opt.state_dict()
    other, w = _opt(lr)
    other.step(_grad(0))
    before = (w.tobytes(), repr(other.state_dict()))
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.lr was a schedule holding the Python callable "
                                         r"tests\.test_unsaved_schedules\.decay"):
        other.load_state_dict(sd)
    assert (w.tobytes(), repr(other.state_dict())) == before


def test_checkpoint_round_trip(tmp_path):
    opt, w = _opt(S.from_callable(decay, scale=0.1))
    for i in range(2):
        opt.step(_grad(i))
    checkpoint.save(tmp_path / "ck", opt)
    twin, w2 = _opt(S.from_callable(decay, scale=0.1), np.zeros(6, np.float32))
    checkpoint.load(tmp_path / "ck", twin)
    assert w.tobytes() == w2.tobytes()
    for i in range(2, 4):
        opt.step(_grad(i))
        twin.step(_grad(i))
    assert w.tobytes() == w2.tobytes()
    plain, _ = _opt(0.1)
    with pytest.raises(ValueError, match="schedules differ"):
        checkpoint.load(tmp_path / "ck", plain)
    with pytest.raises(ValueError, match="Python callable"):
        checkpoint.load(tmp_path / "ck", plain, use_checkpoint_opt_param_scheduler=True)


def test_torch_scheduler_with_a_callable_is_not_saved(tmp_path):
    torch = pytest.importorskip("torch")
    import npadam.torch

    p = torch.nn.Parameter(torch.ones(3))
    opt = npadam.torch.AdamW([p], lr=1.0)
    sched = npadam.torch.LRScheduler(opt, S.from_callable(decay, scale=0.1))
    with pytest.raises(TypeError, match="cannot be serialised"):
        checkpoint.save(tmp_path / "ck", opt, scheduler=sched)
    assert not (tmp_path / "ck").exists()
    checkpoint.save(tmp_path / "ck", opt)  # without the scheduler: the optimizer's plain values
    assert checkpoint.read_index(tmp_path / "ck")["param_groups"][0]["lr"] == pytest.approx(0.1)


def test_plateau_around_a_callable_round_trips_into_the_same_optimizer(tmp_path):
    """A Plateau wrapping a callable schedule is marked unsaved too; loading it back into its own
    optimizer keeps the live Plateau (and its state) instead of raising TypeError from comparing
    configurations that cannot be written down."""
    p = S.Plateau(S.from_callable(decay, scale=0.1), patience=0)
    opt, w = _opt(p)
    opt.step(_grad(0))
    p.step(1.0), p.step(1.0)
    sd = opt.state_dict()
    assert sd["param_groups"][0]["lr"]["unsaved_schedule"] == "tests.test_unsaved_schedules.decay"
    assert sd["param_groups"][0]["lr"]["states"] == [p.state_dict()]
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["schedules"]["lr"] is p and p.num_reductions == 1
    checkpoint.save(tmp_path / "ck", opt)
    checkpoint.load(tmp_path / "ck", opt)
    assert opt.param_groups[0]["schedules"]["lr"] is p and opt.step(_grad(1)).lr == p(1)


def test_a_fresh_run_gets_the_saved_controller_state(tmp_path):
    """Resuming in a new process: a new Plateau around the same callable schedule takes the saved
    state (reductions, best, counters) from the marker, and the run continues as the saved one."""
    p = S.Plateau(S.from_callable(decay, scale=0.1), patience=0, factor=0.5)
    opt, w = _opt(p)
    for i, m in enumerate([1.0, 1.0, 1.0, 0.5]):
        opt.step(_grad(i))
        p.step(m)
    checkpoint.save(tmp_path / "ck", opt)
    p2 = S.Plateau(S.from_callable(decay, scale=0.1), patience=0, factor=0.5)
    opt2, w2 = _opt(p2, np.zeros(6, np.float32))
    checkpoint.load(tmp_path / "ck", opt2)
    assert p2.state_dict() == p.state_dict() and p2.num_reductions == 2
    for i, m in enumerate([0.7, 0.7, 0.2]):
        assert opt.step(_grad(i)).lr == opt2.step(_grad(i)).lr
        p.step(m), p2.step(m)
    assert w.tobytes() == w2.tobytes()
    p3 = S.Plateau(S.from_callable(decay, scale=0.2), patience=0, factor=0.5)  # another base: refused
    opt3, _ = _opt(p3)
    with pytest.raises(ValueError, match="differ"):
        checkpoint.load(tmp_path / "ck", opt3)
    assert p3.num_reductions == 0
