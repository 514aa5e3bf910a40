"""GroupSchedules: one ScheduleSet per param group (per-group framework configs)."""

from __future__ import annotations

import json
import pickle
import subprocess
import sys

import numpy as np
import pytest

import npadam
from npadam import schedules as S


def _gs() -> S.GroupSchedules:
    return S.GroupSchedules([
        S.ScheduleSet(lr=S.constant(0.1)),
        S.ScheduleSet(lr=S.linear(0.2, 0.0, 4), weight_decay=S.constant(0.5), beta1=S.constant(0.8)),
    ])


def test_round_trips_and_names():
    gs = _gs()
    assert pickle.loads(pickle.dumps(gs)) == gs
    assert S.GroupSchedules.from_dict(json.loads(json.dumps(gs.to_dict()))) == gs
    assert [n for n, _ in gs.items()] == ["lr[0]", "lr[1]", "weight_decay[1]", "beta1[1]"]
    with pytest.raises(AttributeError, match=r"schedules\[i\]\.lr"):
        gs.lr  # noqa: B018 - a user treating it as a ScheduleSet gets told what it is


@pytest.mark.parametrize("bad, exc", [([], ValueError), ([S.constant(1.0)], TypeError)])
def test_rejects(bad, exc):
    with pytest.raises(exc):
        S.GroupSchedules(bad)
    with pytest.raises(ValueError, match="groups"):
        S.GroupSchedules.from_dict({"lr": {}})


def _run(opt_cls, lr, groups, steps=4):
    opt = opt_cls(groups, lr=lr)
    for _ in range(steps):
        opt.step([np.full(p.shape, 0.5, np.float32) for g in opt.param_groups for p in g["params"]])
    return opt


@pytest.mark.parametrize("opt_cls", [npadam.AdamW, npadam.Adam, npadam.SGD])
def test_each_group_gets_its_schedules(opt_cls):
    """lr=GroupSchedules equals spelling each group's schedules out by hand, bit for bit."""
    gs = _gs()
    a1, b1 = np.ones(5, np.float32), np.ones(3, np.float32)
    _run(opt_cls, gs, [{"params": [a1]}, {"params": [b1]}])
    a2, b2 = np.ones(5, np.float32), np.ones(3, np.float32)
    mom = "momentum" if opt_cls is npadam.SGD else "betas"
    second = {"params": [b2], "lr": gs[1].lr, "weight_decay": gs[1].weight_decay,
              mom: gs[1].beta1 if mom == "momentum" else (gs[1].beta1, 0.999)}
    _run(opt_cls, 1e-3, [{"params": [a2], "lr": gs[0].lr}, second])
    assert a1.tobytes() == a2.tobytes() and b1.tobytes() == b2.tobytes()
    assert not np.array_equal(a1, np.ones(5, np.float32))


def test_group_count_must_match():
    gs = _gs()
    with pytest.raises(ValueError, match="2 param groups"):
        npadam.AdamW([np.ones(3, np.float32)], lr=gs)
    with pytest.raises(ValueError, match="2 per-group schedules for 3 param groups"):
        npadam.AdamW([{"params": [np.ones(3, np.float32)]} for _ in range(3)], lr=gs)
    with pytest.raises(ValueError, match="beta2"):
        npadam.SGD([{"params": [np.ones(3, np.float32)]}],
                   lr=S.GroupSchedules([S.ScheduleSet(lr=S.constant(1.0), beta2=S.constant(0.9))]))


def test_one_set_takes_any_params_form():
    w = {"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}
    opt = npadam.AdamW(w, lr=S.GroupSchedules([S.ScheduleSet(lr=S.constant(0.25))]), weight_decay=0.0)
    assert opt.step({"a": np.ones(3, np.float32), "b": np.ones(2, np.float32)}).lr == 0.25


def test_torch_scheduler_takes_them():
    torch = pytest.importorskip("torch")
    import npadam.torch

    a, b = torch.nn.Parameter(torch.zeros(2)), torch.nn.Parameter(torch.zeros(2))
    opt = torch.optim.AdamW([{"params": [a]}, {"params": [b]}], lr=1.0)
    sched = npadam.torch.LRScheduler(opt, _gs())
    seen = []
    for _ in range(3):
        seen.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    assert seen == [[0.1, 0.2], [0.1, 0.15000000000000002], [0.1, 0.1]]
    assert opt.param_groups[1]["betas"][0] == 0.8 and opt.param_groups[1]["weight_decay"] == 0.5


def test_cli_dumps_a_saved_group_schedule(tmp_path):
    path = tmp_path / "gs.json"
    path.write_text(json.dumps(_gs().to_dict()))
    out = subprocess.run([sys.executable, "-m", "npadam", "schedule", "--schedule-json", str(path), "--steps", "3"],
                         capture_output=True, text=True, check=True).stdout.splitlines()
    assert out[0] == "step,lr[0],lr[1],weight_decay[1],beta1[1]"
    assert out[2].split(",")[:3] == ["1", "0.1", "0.15000000000000002"]
