"""Parity: ``schedules.from_config("deepspeed", cfg)`` against what DeepSpeed's engine runs.

The scheduler is built by ``DeepSpeedEngine._scheduler_from_config`` itself (the engine
method, on a stand-in that reads the config with DeepSpeed's own readers): the class
named by ``"type"`` from ``deepspeed.runtime.lr_schedules``, else from
``torch.optim.lr_scheduler``, called as ``cls(optimizer, **params)`` on a torch Adam
holding the config's ``"lr"`` / ``"betas"`` (a list: one per param group). It is stepped
after every update as ``DeepSpeedEngine._take_model_step`` does (``step()``, retried as
``step(train_batch_size)`` on TypeError), and every param group's lr and betas are
recorded before each update. DeepSpeed's own types: update 0 uses the constructor's
value, update k >= 1 ``get_lr()`` at ``last_batch_iteration = L + k`` (L = -1 fresh);
OneCycle also writes ``betas = (momentum, 0.99)``. A slow test (``-m slow``) runs the
real ``deepspeed.initialize`` engine and ``engine.step()`` in a subprocess.

Tolerances: DeepSpeed's closed forms rtol=1e-12, atol=1e-12 * peak lr; torch types through
the fallback as in test_parity_torch (chained ``step()`` formulas rtol=1e-6).
"""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import warnings

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

drv.importorskip("torch")
drv.importorskip("deepspeed")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from npadam import schedules  # noqa: E402
from npadam.schedules.frameworks import deepspeed as ds  # noqa: E402
from npadam.schedules.frameworks.torch import from_torch  # noqa: E402

RTOL = 1e-12
CHAINED = 1e-6  # torch's step() recursions (torch types through DeepSpeed's fallback)
SETTINGS = settings(max_examples=drv.examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=drv.examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])

lrs = st.one_of(st.sampled_from([1e-3, 1.0, 3e-4]), st.floats(1e-6, 1.0))
warmup_steps = st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 80))
warmup_types = st.sampled_from(["log", "linear"])


def compare(got: schedules.ScheduleSet, want: dict, betas: tuple, rtol: float, context) -> None:
    """One param group: npadam's schedules against the recorded ``want`` (betas: the optimizer's own,
    which must stay where npadam schedules none)."""
    k = np.arange(len(want["lr"]))
    peak = float(np.max(np.abs(want["lr"]))) or 1.0
    drv.assert_matches("lr", got.lr(k), want["lr"], rtol=rtol, peak=peak, context=context)
    for i in {0, 1, k.size // 2, k.size - 1}:
        if i < k.size:
            assert got.lr(i) == got.lr(k)[i], "scalar and vector evaluation differ"
    for n, (name, s) in enumerate((("beta1", got.beta1), ("beta2", got.beta2))):
        if s is not None:
            drv.assert_matches(name, s(k), want[name], rtol=rtol, peak=1.0, context=context)
        else:
            np.testing.assert_array_equal(want[name], betas[n], err_msg=f"{name} changed, npadam schedules none")
    assert got.weight_decay is None


def check(cfg: dict, steps: int, groups: int | None = None, rtol: float = RTOL):
    """Updates 0..steps-1 of every param group. ``groups=None``: a one-group optimizer, a
    ``ScheduleSet`` expected; else a ``GroupSchedules`` with ``groups`` entries."""
    n = 1 if groups is None else groups
    want = drv.trace_deepspeed_groups(cfg, steps, n)
    got = schedules.from_config("deepspeed", cfg)
    betas = [g["betas"] for g in drv.deepspeed_optimizer(cfg, n).param_groups]
    if groups is None:
        assert isinstance(got, schedules.ScheduleSet), type(got)
        sets = [got]
    else:
        assert isinstance(got, schedules.GroupSchedules) and len(got) == groups, got
        sets = list(got)
    for i, (s, w, b) in enumerate(zip(sets, want, betas)):
        compare(s, w, b, rtol, {"group": i, "config": cfg})
    return got


def block(stype: str, params: dict, lr: float | None = None, **top) -> dict:
    cfg = {"scheduler": {"type": stype, "params": params}, **top}
    if lr is not None:
        cfg["lr"] = lr
    return cfg


# --------------------------------------------------------------------------- WarmupLR / WarmupDecayLR


@SETTINGS
@given(lr=lrs, lo=st.floats(0.0, 1e-3), hi=st.one_of(st.none(), lrs), W=warmup_steps, wt=warmup_types,
       extra=st.integers(1, 100))
def test_warmup_lr(lr, lo, hi, W, wt, extra):
    params = {"warmup_min_lr": lo, "warmup_num_steps": W, "warmup_type": wt}
    if hi is not None:
        params["warmup_max_lr"] = hi  # else DeepSpeed takes the optimizer's lr
    check(block("WarmupLR", params, lr), W + extra)


@SETTINGS
@given(lr=lrs, lo=st.floats(0.0, 1e-3), hi=st.one_of(st.none(), lrs), W=warmup_steps, wt=warmup_types,
       T=st.integers(1, 200), extra=st.integers(1, 100))
def test_warmup_decay_lr(lr, lo, hi, W, wt, T, extra):
    params = {"warmup_min_lr": lo, "warmup_num_steps": W, "warmup_type": wt, "total_num_steps": T}
    if hi is not None:
        params["warmup_max_lr"] = hi  # else DeepSpeed's WarmupDecayLR default 0.001 (not the optimizer lr)
    check(block("WarmupDecayLR", params, lr), max(T, W) + extra)


@SETTINGS
@given(lr=lrs, wmin=st.floats(0.0, 0.5), cmin=st.one_of(st.sampled_from([0.0, 1e-4, -0.1]), st.floats(0.0, 0.5)),
       W=warmup_steps, wt=warmup_types, T=st.integers(1, 200), extra=st.integers(1, 100))
def test_warmup_cosine_lr(lr, wmin, cmin, W, wt, T, extra):
    params = {"total_num_steps": T, "warmup_min_ratio": wmin, "warmup_num_steps": W, "cos_min_ratio": cmin,
              "warmup_type": wt}
    got = check(block("WarmupCosineLR", params, lr), max(T, W) + extra)
    assert got.lr(0) == 0.0  # the constructor's get_lr() before the first step


@pytest.mark.parametrize("stype", ["WarmupLR", "WarmupDecayLR", "WarmupCosineLR"])
@pytest.mark.parametrize("W,T", [(1, 100), (2, 100), (99, 100), (100, 100), (150, 100), (1000, 20_000)])
@pytest.mark.parametrize("wt", ["log", "linear"])
def test_warmup_cases(stype, W, T, wt):
    params = {"warmup_num_steps": W, "warmup_type": wt}
    if stype != "WarmupLR":
        params["total_num_steps"] = T
    if stype != "WarmupCosineLR":
        params["warmup_min_lr"] = 1e-6
    check(block(stype, params, 3e-4), min(3 * T, T + 1000))


def test_unknown_warmup_type_falls_back_to_log():
    params = {"warmup_num_steps": 10, "warmup_type": "cosine"}
    with pytest.warns(UserWarning, match="log"):
        s = schedules.from_config("deepspeed", block("WarmupLR", params, 1e-3))
    log = schedules.from_config("deepspeed", block("WarmupLR", {**params, "warmup_type": "log"}, 1e-3))
    np.testing.assert_array_equal(s.lr(np.arange(30)), log.lr(np.arange(30)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(block("WarmupLR", params, 1e-3), 30)


def test_whole_deepspeed_config():
    """The scheduler block inside a whole DeepSpeed config, lr from the optimizer block."""
    whole = {"optimizer": {"type": "AdamW", "params": {"lr": 2e-4}},
             "scheduler": {"type": "WarmupCosineLR", "params": {"total_num_steps": 50, "warmup_num_steps": 5}}}
    s = schedules.from_config("deepspeed", whole)
    want = drv.trace_deepspeed({"lr": 2e-4, "scheduler": whole["scheduler"]}, 80)
    drv.assert_matches("lr", s.lr(np.arange(80)), want["lr"], rtol=RTOL, peak=2e-4, context=whole)


# --------------------------------------------------------------------------- OneCycle


@st.composite
def one_cycle(draw):
    lo = draw(st.floats(1e-6, 1e-2))
    p = {"cycle_min_lr": lo, "cycle_max_lr": lo + draw(st.floats(0.0, 1.0)),
         "cycle_first_step_size": draw(st.one_of(st.integers(1, 40), st.sampled_from([2.5, 7.25])))}
    if draw(st.booleans()):
        p["cycle_second_step_size"] = draw(st.one_of(st.integers(0, 40), st.sampled_from([0.5, 3.75])))
    if draw(st.booleans()):
        p["cycle_first_stair_count"] = draw(st.integers(0, 6))
        if draw(st.booleans()):
            p["cycle_second_stair_count"] = draw(st.integers(0, 6))
    if draw(st.booleans()):
        p["decay_step_size"] = draw(st.integers(0, 20))
        p["decay_lr_rate"] = draw(st.sampled_from([0.0, 0.001, 0.5]))
        p["decay_mom_rate"] = draw(st.sampled_from([0.0, 0.001, 0.01]))
    p["cycle_momentum"] = draw(st.booleans())
    mlo = draw(st.floats(0.5, 0.95))
    p["cycle_min_mom"], p["cycle_max_mom"] = mlo, draw(st.floats(mlo, 0.99))
    return p


@settings(max_examples=drv.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(params=one_cycle(), lr=lrs, extra=st.integers(1, 120))
def test_one_cycle(params, lr, extra):
    s1 = params["cycle_first_step_size"]
    total = s1 + params.get("cycle_second_step_size", s1)
    check(block("OneCycle", params, lr), int(math.ceil(2 * total)) + extra)  # past the cycle: post-cycle decay


@pytest.mark.parametrize("params", [
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "cycle_second_step_size": 3},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 3, "cycle_second_step_size": 17,
     "cycle_first_stair_count": 3, "cycle_second_stair_count": 4},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 7, "cycle_second_step_size": 0},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "cycle_first_stair_count": 5},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "decay_step_size": 5,
     "decay_lr_rate": 0.1, "decay_mom_rate": 0.01},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10, "decay_step_size": 5,
     "decay_lr_rate": 0.1, "cycle_momentum": False},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 1},
    {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 2000},   # DeepSpeed's default size
], ids=["symmetric", "asymmetric", "stairs", "no-second-half", "stairs-both-halves", "decay", "decay-no-mom",
        "size-1", "size-2000"])
def test_one_cycle_cases(params):
    s1 = params["cycle_first_step_size"]
    got = check(block("OneCycle", params), int(2 * (s1 + params.get("cycle_second_step_size", s1))) + 50)
    if params.get("cycle_momentum", True):
        assert got.beta1(0) == 0.8  # the constructor sets cycle_min_mom, not the cycle formula's max_mom
        assert got.beta2(0) == 0.99  # DeepSpeed overwrites the optimizer's beta2 with 0.99


# --------------------------------------------------------------------------- LRRangeTest


@SETTINGS
@given(lo=st.floats(1e-7, 1e-2), size=st.integers(1, 50), rate=st.floats(0.0, 10.0), stair=st.booleans(),
       steps=st.integers(1, 400))
def test_lr_range_test(lo, size, rate, stair, steps):
    check(block("LRRangeTest", {"lr_range_test_min_lr": lo, "lr_range_test_step_size": size,
                                "lr_range_test_step_rate": rate, "lr_range_test_staircase": stair}, 1.0), steps)


def test_lr_range_test_defaults():
    check(block("LRRangeTest", {}), 5000)


# --------------------------------------------------------------------------- documented examples


DOCUMENTED = {
    # deepspeed.ai/docs/config-json (scheduler section)
    "config-json-WarmupLR": block("WarmupLR", {"warmup_min_lr": 0, "warmup_max_lr": 0.001, "warmup_num_steps": 1000},
                                  1e-3),
    # deepspeed.ai/tutorials/one-cycle
    "one-cycle-tutorial": block("OneCycle", {"cycle_first_step_size": 1000, "cycle_first_stair_count": 500,
                                             "cycle_second_step_size": 1000, "cycle_second_stair_count": 500,
                                             "decay_step_size": 1000, "cycle_min_lr": 0.0001, "cycle_max_lr": 0.0010,
                                             "decay_lr_rate": 0.001, "cycle_min_mom": 0.85, "cycle_max_mom": 0.99,
                                             "decay_mom_rate": 0.0}),
    # deepspeed.ai/tutorials/lrrt
    "lrrt-tutorial": block("LRRangeTest", {"lr_range_test_min_lr": 0.0001, "lr_range_test_step_size": 200,
                                           "lr_range_test_step_rate": 5, "lr_range_test_staircase": False}),
    # the class docstrings' examples (over lr=0.1, as their SGD)
    "WarmupLR(optimizer)": block("WarmupLR", {}, 0.1),
    "WarmupDecayLR(optimizer, 1000000)": block("WarmupDecayLR", {"total_num_steps": 1000000}, 0.1),
    "WarmupCosineLR(optimizer, 1000000)": block("WarmupCosineLR", {"total_num_steps": 1000000}, 0.1),
    "OneCycle(optimizer, 0.0001, 0.0010)": block("OneCycle", {"cycle_min_lr": 0.0001, "cycle_max_lr": 0.0010}, 0.1),
    "LRRangeTest(optimizer)": block("LRRangeTest", {}, 0.1),
}


@pytest.mark.parametrize("name", list(DOCUMENTED))
def test_documented_examples(name):
    check(DOCUMENTED[name], 2600)


# --------------------------------------------------------------------------- per-param-group lists


def spread(draw, n: int, elems):
    """A scalar for every group, or one value per group as a list or a tuple (DeepSpeed takes both)."""
    form = draw(st.sampled_from(["scalar", "list", "list", "tuple"]))
    if form == "scalar":
        return draw(elems)
    values = draw(st.lists(elems, min_size=n, max_size=n))
    return values if form == "list" else tuple(values)


def betas_for(draw, n: int):
    pair = st.tuples(st.floats(0.5, 0.95), st.floats(0.9, 0.9999)).map(list)
    return draw(pair) if draw(st.booleans()) else draw(st.lists(pair, min_size=n, max_size=n))


@st.composite
def grouped(draw, stype: str, resume: bool | None = None):
    """``(config, steps, groups)``: random params with per-group lists (or ``num_param_groups``),
    sometimes resumed (``last_batch_iteration >= 0``, with the optimizer's lr and betas given)."""
    n = draw(st.integers(1, 4))
    lr = spread(draw, n, lrs)
    if stype in ("WarmupLR", "WarmupDecayLR"):
        p = {"warmup_num_steps": draw(warmup_steps), "warmup_type": draw(warmup_types),
             "warmup_min_lr": spread(draw, n, st.floats(0.0, 1e-3))}
        if draw(st.booleans()):
            p["warmup_max_lr"] = spread(draw, n, lrs)  # else WarmupLR: each group's lr; WarmupDecayLR: 0.001
        if stype == "WarmupDecayLR":
            p["total_num_steps"] = draw(st.integers(1, 150))
        horizon = max(p["warmup_num_steps"], p.get("total_num_steps", 0))
    elif stype == "WarmupCosineLR":
        p = {"total_num_steps": draw(st.integers(1, 150)), "warmup_num_steps": draw(warmup_steps),
             "warmup_min_ratio": draw(st.floats(0.0, 0.5)), "cos_min_ratio": draw(st.floats(0.0, 0.5)),
             "warmup_type": draw(warmup_types)}
        horizon = max(p["total_num_steps"], p["warmup_num_steps"])
    elif stype == "OneCycle":
        p = draw(one_cycle())
        for key in ("cycle_min_lr", "cycle_max_lr"):
            p[key] = spread(draw, n, st.floats(1e-6, 1.0))
        for key, lo in (("cycle_min_mom", 0.5), ("cycle_max_mom", 0.8)):
            p[key] = spread(draw, n, st.floats(lo, 0.99))
        s1 = p["cycle_first_step_size"]
        horizon = int(math.ceil(2 * (s1 + p.get("cycle_second_step_size", s1))))
    else:
        p = {"lr_range_test_min_lr": spread(draw, n, st.floats(1e-7, 1e-2)),
             "lr_range_test_step_size": draw(st.integers(1, 50)), "lr_range_test_step_rate": draw(st.floats(0.0, 10.0)),
             "lr_range_test_staircase": draw(st.booleans())}
        horizon = draw(st.integers(1, 150))
    cfg = {"lr": lr, "scheduler": {"type": stype, "params": p}}
    if draw(st.booleans()) if resume is None else resume:
        p["last_batch_iteration"] = draw(st.one_of(st.integers(0, 200), st.sampled_from([0, 1, 10**6])))
        cfg["betas"] = betas_for(draw, n)
    listed = any(isinstance(v, (list, tuple)) for v in [lr, *p.values()]) or (
        stype == "OneCycle" and isinstance(cfg.get("betas", [0])[0], list))  # only a resumed OneCycle reads betas
    if not listed and draw(st.booleans()):
        return cfg, horizon + draw(st.integers(1, 60)), None  # scalars only: one ScheduleSet for all groups
    if not listed or draw(st.booleans()):
        cfg["num_param_groups"] = n
    return cfg, horizon + draw(st.integers(1, 60)), n


@pytest.mark.parametrize("stype", ds._TYPES)
@FEW
@given(data=st.data())
def test_per_group_lists(stype, data):
    """One schedule per param group, from DeepSpeed's per-group lists, on an optimizer with that many
    groups (each group's own lr where DeepSpeed reads it); fresh and resumed."""
    cfg, steps, groups = data.draw(grouped(stype))
    check(cfg, steps, groups=groups)


def test_per_group_examples():
    """Fixed cases: two groups with their own lrs (a backbone and a head)."""
    two = {"lr": [1e-4, 1e-3]}
    check(block("WarmupLR", {"warmup_num_steps": 10}, **two), 30, groups=2)  # warmup_max_lr: each group's lr
    check(block("WarmupDecayLR", {"warmup_min_lr": [0.0, 1e-5], "warmup_max_lr": [3e-4, 1e-3],
                                  "warmup_num_steps": 10, "total_num_steps": 40}), 60, groups=2)
    check(block("WarmupDecayLR", {"warmup_max_lr": None, "warmup_num_steps": 10, "total_num_steps": 40},
                **two), 60, groups=2)  # an explicit null max: each group's lr (an absent one: 0.001)
    check(block("WarmupCosineLR", {"total_num_steps": 40, "warmup_num_steps": 5}, **two), 60, groups=2)
    check(block("OneCycle", {"cycle_min_lr": (1e-5, 1e-4), "cycle_max_lr": (1e-4, 1e-3), "cycle_first_step_size": 5,
                             "cycle_min_mom": [0.85, 0.8], "cycle_max_mom": [0.95, 0.9]}), 40, groups=2)
    check(block("LRRangeTest", {"lr_range_test_min_lr": [1e-5, 1e-4], "lr_range_test_step_size": 3}), 40, groups=2)
    got = check(block("WarmupLR", {"warmup_num_steps": 10}, 1e-3, num_param_groups=3), 20, groups=3)
    assert got[0] == got[1] == got[2]
    # a GroupSchedules round-trips and drives an npadam optimizer group by group
    gs = schedules.from_config("deepspeed", block("OneCycle", {"cycle_min_lr": [1e-5, 1e-4], "cycle_max_lr": 1e-3,
                                                               "cycle_first_step_size": 5}))
    assert schedules.GroupSchedules.from_dict(json.loads(json.dumps(gs.to_dict()))) == gs
    gs = schedules.from_config("deepspeed", block("OneCycle", {"cycle_min_lr": [1e-5, 1e-4], "cycle_max_lr": 1e-3,
                                                               "cycle_first_step_size": 5, "cycle_momentum": False}))
    import npadam

    params = [np.zeros(1, np.float32), np.zeros(1, np.float32)]
    opt = npadam.AdamW([{"params": [params[0]]}, {"params": [params[1]]}], lr=gs, eps=1e-30)
    for _ in range(3):  # a constant gradient of 1: Adam moves each param by exactly its group's lr
        opt.step([np.ones(1, np.float32), np.ones(1, np.float32)])
    for p, s in zip(params, gs):
        np.testing.assert_allclose(-p[0], s.lr(np.arange(3)).sum(), rtol=1e-5)  # float32 params


def test_scalar_config_stays_one_schedule_set():
    s = schedules.from_config("deepspeed", block("OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3}))
    assert isinstance(s, schedules.ScheduleSet)


# --------------------------------------------------------------------------- last_batch_iteration (resume)


@pytest.mark.parametrize("stype", ds._TYPES)
@FEW
@given(data=st.data())
def test_resumed(stype, data):
    """DeepSpeed's constructor with last_batch_iteration = L >= 0 leaves the optimizer's lr (and betas)
    for the first update; each engine step then moves on from L: update k >= 1 is get_lr() at L + k."""
    cfg, steps, groups = data.draw(grouped(stype, resume=True))
    got = check(cfg, steps, groups=groups)
    params = dict(cfg["scheduler"]["params"])
    last = params.pop("last_batch_iteration")
    fresh = schedules.from_config("deepspeed", dict(cfg, scheduler={"type": stype, "params": params},
                                                    **({"num_param_groups": groups} if groups else {})))
    k = np.arange(1, 40)
    for r, f in zip(*((got, fresh) if groups else ([got], [fresh]))):
        for (_, rs), (_, fs) in zip(r.items(), f.items()):  # resumed update k >= 1 is fresh update k + L + 1
            np.testing.assert_array_equal(rs(k), fs(k + last + 1))


@pytest.mark.parametrize("cfg", [
    block("WarmupLR", {"warmup_num_steps": 100, "last_batch_iteration": 49}, 1e-3),
    block("WarmupDecayLR", {"warmup_num_steps": 10, "total_num_steps": 100, "last_batch_iteration": 0,
                            "warmup_min_lr": 1e-5}, 1e-3),
    block("WarmupDecayLR", {"warmup_num_steps": 10, "total_num_steps": 100, "last_batch_iteration": 150}, 1e-3),
    block("WarmupCosineLR", {"warmup_num_steps": 10, "total_num_steps": 100, "last_batch_iteration": 9}, 3e-4),
    block("OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 10,
                       "last_batch_iteration": 15}, 5e-4, betas=[0.9, 0.95]),
    {"optimizer": {"type": "AdamW", "params": {"lr": 5e-4, "betas": [0.9, 0.95]}},
     "scheduler": {"type": "OneCycle", "params": {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3,
                                                  "cycle_first_step_size": 10, "last_batch_iteration": 25,
                                                  "decay_step_size": 5, "decay_lr_rate": 0.1,
                                                  "decay_mom_rate": 0.01}}},
    block("LRRangeTest", {"lr_range_test_step_size": 10, "lr_range_test_staircase": True,
                          "last_batch_iteration": 33}, 0.1),
], ids=["WarmupLR", "WarmupDecayLR-0", "WarmupDecayLR-past-end", "WarmupCosineLR", "OneCycle",
        "OneCycle-whole-config", "LRRangeTest"])
def test_resumed_cases(cfg):
    got = check(cfg, 120)
    assert got.lr(0) == drv.deepspeed_optimizer(cfg).param_groups[0]["lr"]  # the optimizer's, untouched
    assert schedules.ScheduleSet.from_dict(json.loads(json.dumps(got.to_dict()))) == got
    last, fresh = cfg["scheduler"]["params"]["last_batch_iteration"], got.lr.params["schedule"]
    assert got.lr.horizon == (None if fresh.horizon is None else max(1, fresh.horizon - last - 1))


def test_last_batch_iteration_minus_one_is_the_default():
    params = {"warmup_num_steps": 10, "total_num_steps": 30}
    a = schedules.from_config("deepspeed", block("WarmupDecayLR", params, 1e-3))
    b = schedules.from_config("deepspeed", block("WarmupDecayLR", {**params, "last_batch_iteration": -1}, 1e-3))
    assert a.to_dict() == b.to_dict() and a.lr.kind == "deepspeed_warmup_lr"


# --------------------------------------------------------------------------- torch types (the engine's fallback)


@st.composite
def torch_type(draw):
    name = draw(st.sampled_from(["StepLR", "MultiStepLR", "ExponentialLR", "LinearLR", "ConstantLR",
                                 "CosineAnnealingLR", "PolynomialLR", "CosineAnnealingWarmRestarts",
                                 "OneCycleLR", "CyclicLR"]))
    gamma = st.floats(0.05, 1.0)
    p = {
        "StepLR": lambda: {"step_size": draw(st.integers(1, 30)), "gamma": draw(gamma)},
        "MultiStepLR": lambda: {"milestones": draw(st.lists(st.integers(0, 120), max_size=6)), "gamma": draw(gamma)},
        "ExponentialLR": lambda: {"gamma": draw(st.floats(0.8, 1.0))},
        "LinearLR": lambda: {"start_factor": draw(st.floats(1e-3, 1.0)), "end_factor": draw(st.floats(0.0, 1.0)),
                             "total_iters": draw(st.integers(0, 60))},
        "ConstantLR": lambda: {"factor": draw(st.floats(1e-3, 1.0)), "total_iters": draw(st.integers(0, 60))},
        "CosineAnnealingLR": lambda: {"T_max": draw(st.integers(1, 80)), "eta_min": draw(st.floats(0.0, 1e-4))},
        "PolynomialLR": lambda: {"total_iters": draw(st.integers(0, 60)), "power": draw(st.floats(0.0, 4.0))},
        "CosineAnnealingWarmRestarts": lambda: {"T_0": draw(st.integers(1, 40)), "T_mult": draw(st.integers(1, 3)),
                                                "eta_min": draw(st.floats(0.0, 1e-4))},
        "OneCycleLR": lambda: {"max_lr": draw(lrs), "total_steps": draw(st.integers(2, 200)),
                               "pct_start": draw(st.floats(0.05, 0.95)),
                               "anneal_strategy": draw(st.sampled_from(["cos", "linear"])),
                               "cycle_momentum": draw(st.booleans())},
        "CyclicLR": lambda: {"base_lr": draw(st.floats(1e-6, 1e-3)), "max_lr": draw(st.floats(1e-3, 1.0)),
                             "step_size_up": draw(st.integers(1, 30)),
                             "mode": draw(st.sampled_from(["triangular", "triangular2", "exp_range"])),
                             "gamma": draw(st.floats(0.9, 1.0))},
    }[name]()
    return name, p


DIRECT_TORCH = ("OneCycleLR", "CosineAnnealingWarmRestarts", "CyclicLR")  # torch computes each value directly


@SETTINGS
@given(t=torch_type(), data=st.data(), steps=st.integers(1, 250), whole=st.booleans())
def test_torch_fallback(t, data, steps, whole):
    """A torch.optim.lr_scheduler name in "type": the engine builds it with "params" as keyword arguments
    (torch's constructor makes the initial step) and steps it after every update, which is torch's own
    training-loop convention: npadam's torch translator, unchanged (``"lr"`` a list: one per group)."""
    name, params = t
    n = data.draw(st.integers(1, 3))
    lr = spread(data.draw, n, lrs) if not whole else data.draw(lrs)  # DeepSpeed's optimizer block: one lr
    groups = n if isinstance(lr, (list, tuple)) else None
    cfg = ({"optimizer": {"type": "AdamW", "params": {"lr": lr}}, "zero_optimization": {"stage": 0},
            "scheduler": {"type": name, "params": params}} if whole else block(name, params, lr))
    if name == "OneCycleLR":
        steps = min(steps, params["total_steps"] + 1)  # torch raises past total_steps
        if drv.raises(lambda: drv.trace_deepspeed(cfg, steps)) is not None:  # an empty phase: torch divides by 0
            with pytest.raises(ValueError):
                schedules.from_config("deepspeed", cfg).lr(np.arange(steps))
            return
    got = check(cfg, steps, groups=groups, rtol=RTOL if name in DIRECT_TORCH else CHAINED)
    assert got == from_torch({"lr": lr, "scheduler": name, **params})


def test_torch_fallback_last_epoch():
    """torch's last_epoch = L >= 0 through the engine: torch then needs initial_lr in the optimizer's groups.
    An optimizer built fresh (DeepSpeed's from its config, or a new client one) has none and torch raises
    KeyError; one restored from a torch-scheduled run (as test_parity_torch builds it) resumes, and npadam's
    torch translator (update k is step L + 1 + k) matches it."""
    cfg = block("StepLR", {"step_size": 4, "gamma": 0.5, "last_epoch": 9}, [1e-3, 4e-3])
    assert isinstance(drv.raises(lambda: drv.trace_deepspeed_groups(cfg, 5, 2)), KeyError)
    with drv.quiet():
        opt = drv.torch_adam_groups([1e-3, 4e-3])
        fresh = drv.build_torch_scheduler(opt, {"lr": cfg["lr"], "scheduler": "StepLR", "step_size": 4, "gamma": 0.5})
        for _ in range(10):
            fresh.step()
        restored = drv.torch_adam_groups([1e-3, 4e-3])
        restored.load_state_dict(opt.state_dict())
        sched = drv.build_deepspeed_scheduler(restored, cfg)
        want = []
        for _ in range(20):
            want.append([g["lr"] for g in restored.param_groups])
            drv.deepspeed_engine_step(sched)
    got = schedules.from_config("deepspeed", cfg)
    for i in range(2):
        drv.assert_matches("lr", got[i].lr(np.arange(20)), np.array(want)[:, i], rtol=CHAINED, peak=4e-3,
                           context=cfg)


def test_torch_fallback_cases():
    check(block("StepLR", {"step_size": 30, "gamma": 0.1}, 0.05), 200, rtol=CHAINED)  # torch's docstring example
    check(block("CosineAnnealingLR", {"T_max": 100, "eta_min": 1e-6}, 3e-4), 350, rtol=CHAINED)  # periodic past T_max
    check(block("OneCycleLR", {"max_lr": 0.01, "total_steps": 100}, 1e-3, betas=[0.9, 0.95]), 101)
    check(block("LinearLR", {"start_factor": 0.1, "total_iters": 10}, 1e-3, num_param_groups=2), 30, groups=2,
          rtol=CHAINED)


WRAPPERS = [({}, None), ({"zero_optimization": {"stage": 0}}, None), ({"zero_optimization": {"stage": 1}}, "ZeRO"),
            ({"zero_optimization": {"stage": 3}}, "ZeRO"), ({"zero_optimization": True}, "ZeRO"),
            ({"zero_optimization": False}, None), ({"fp16": {"enabled": True}}, "fp16"),
            ({"fp16": {"enabled": False}}, None), ({"bf16": {"enabled": True}}, "bf16"),
            ({"bfloat16": {"enabled": True}}, "bf16"),
            ({"bf16": {"enabled": False}, "bfloat16": {"enabled": True}}, None)]


@pytest.mark.parametrize("extra,wrapper", WRAPPERS, ids=[str(w[0]) for w in WRAPPERS])
def test_torch_fallback_needs_the_torch_optimizer(extra, wrapper):
    """With ZeRO, fp16 or bf16 the engine hands the scheduler its optimizer wrapper, not a torch
    Optimizer: DeepSpeed's own types unwrap it, torch's constructor raises TypeError (seen through the
    real engine in test_real_engine). Which configs wrap is read with DeepSpeed's own config readers."""
    from deepspeed.runtime.precision_config import get_bfloat16_config, get_float16_config
    from deepspeed.runtime.zero.config import get_zero_config

    cfg = {"optimizer": {"type": "AdamW", "params": {"lr": 1e-3}}, **extra,
           "scheduler": {"type": "StepLR", "params": {"step_size": 5}}}
    with drv.quiet():
        wrapped = get_zero_config(cfg).stage > 0 or get_float16_config(cfg).enabled or get_bfloat16_config(cfg).enabled
    assert wrapped == (wrapper is not None)
    if wrapper is None:
        schedules.from_config("deepspeed", cfg)
    else:
        with pytest.raises(ValueError, match=wrapper):
            schedules.from_config("deepspeed", cfg)
    own = dict(cfg, scheduler={"type": "WarmupLR", "params": {"warmup_num_steps": 5}})
    assert isinstance(schedules.from_config("deepspeed", own), schedules.ScheduleSet)  # DeepSpeed's types unwrap


def test_torch_types_are_torchs():
    import torch

    assert set(ds.TORCH_TYPES) == set(torch.optim.lr_scheduler.__all__)


def test_cli(tmp_path, capsys):
    """``npadam schedule --framework deepspeed --config FILE`` with per-group lists and with a torch type."""
    from npadam.cli import main

    cfg = block("OneCycle", {"cycle_min_lr": [1e-5, 1e-4], "cycle_max_lr": 1e-3, "cycle_first_step_size": 5,
                             "last_batch_iteration": 3}, [2e-4, 3e-4], betas=[0.9, 0.95])
    (tmp_path / "ds.json").write_text(json.dumps(cfg))
    assert main(["schedule", "--framework", "deepspeed", "--config", str(tmp_path / "ds.json"), "--steps", "20"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "step,lr[0],beta1[0],beta2[0],lr[1],beta1[1],beta2[1]" and len(lines) == 21
    want = drv.trace_deepspeed_groups(cfg, 20, 2)
    table = np.array([[float(x) for x in line.split(",")] for line in lines[1:]])
    np.testing.assert_allclose(table[:, 1], want[0]["lr"], rtol=1e-15)
    np.testing.assert_allclose(table[:, 5], want[1]["beta1"], rtol=1e-15)
    step = block("StepLR", {"step_size": 4}, 1e-3)
    (tmp_path / "step.json").write_text(json.dumps(step))
    assert main(["schedule", "--framework", "deepspeed", "--config", str(tmp_path / "step.json"), "--steps", "9"]) == 0
    rows = capsys.readouterr().out.strip().splitlines()[1:]
    assert [float(r.split(",")[1]) for r in rows] == list(schedules.from_config("deepspeed", step).lr(np.arange(9)))


# --------------------------------------------------------------------------- rejections


def onecycle(**params) -> dict:
    return {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, **params}


WL, LR, OC = "WarmupLR", "LRRangeTest", "OneCycle"
REJECTED = [
    # (config, the param-group counts for which DeepSpeed's engine fails too (() where it runs or where that
    # cannot be seen here), a fragment of npadam's message)
    (block(WL, {"warmup_num_steps": 0}, 1e-3), (1,), "warmup_num_steps"),
    (block(WL, {"warmup_num_steps": 10.0}, 1e-3), (1,), "warmup_num_steps"),
    (block(WL, {"warmup_num_steps": -5}, 1e-3), (1,), "warmup_num_steps"),
    (block("WarmupDecayLR", {"warmup_num_steps": 0, "total_num_steps": 100}, 1e-3), (1,), "warmup_num_steps"),
    (block("WarmupDecayLR", {"warmup_num_steps": 10}, 1e-3), (1,), "total_num_steps"),
    (block("WarmupCosineLR", {"warmup_num_steps": 0, "total_num_steps": 100}, 1e-3), (1,), "warmup_num_steps"),
    (block("WarmupCosineLR", {"warmup_num_steps": 10}, 1e-3), (1,), "total_num_steps"),
    (block(OC, onecycle(cycle_first_step_size=0)), (1,), "cycle_first_step_size"),
    (block(OC, onecycle(cycle_first_step_size=-3)), (1,), "cycle_first_step_size"),
    (block(OC, onecycle(cycle_second_step_size=-1)), (1,), "cycle_second_step_size"),
    (block(OC, {"cycle_max_lr": 1e-3}), (1,), "cycle_min_lr"),
    (block(LR, {"lr_range_test_step_size": 0}), (1,), "lr_range_test_step_size"),
    (block(LR, {"lr_range_test_step_size": 2.5}), (1,), "lr_range_test_step_size"),
    (block("NoSuchLR", {}), (1,), "neither deepspeed.runtime.lr_schedules"),
    (block("Optimizer", {}), (1,), "'Optimizer'"),  # lr_schedules imports torch's Optimizer: the engine takes it
    (block(WL, {"warmup_num_stepz": 10}, 1e-3), (1,), "did you mean 'warmup_num_steps'"),
    ({"scheduler": {"params": {}}}, (), "'type'"),  # no type: DeepSpeed builds no scheduler
    ({"scheduler": {"type": WL}, "lr": 1e-3}, (1,), "'params'"),  # the engine calls cls(optimizer, **None)
    # per-group lists
    (block(WL, {"warmup_min_lr": [0.0, 1e-5], "warmup_max_lr": [1e-3] * 3}), (1, 2, 3),
     "warmup_max_lr has 3 values but warmup_min_lr has 2"),
    (block(OC, onecycle(cycle_min_lr=[1e-5, 1e-4]), num_param_groups=3), (3,),
     "expected 3 values for cycle_min_lr (num_param_groups=3), got 2"),
    (block(OC, onecycle(cycle_min_mom=[0.8, 0.85, 0.9]), [1e-3, 1e-3]), (2,),
     "cycle_min_mom has 3 values but lr has 2"),
    (block(LR, {"lr_range_test_min_lr": [1e-4, 1e-3]}, num_param_groups=1), (1,),
     "expected 1 values for lr_range_test_min_lr"),
    (block(LR, {"lr_range_test_min_lr": []}), (), "empty list"),  # no optimizer has 0 groups
    (block(WL, {"warmup_num_steps": 10}, [1e-3, 2e-3], num_param_groups=3), (), "expected 3 values for lr"),
    (block("WarmupCosineLR", {"total_num_steps": 10, "warmup_min_ratio": [0.0, 0.1]}, [1e-3, 1e-3]), (2,),
     "TypeError during warmup"),
    (block("WarmupCosineLR", {"total_num_steps": 10, "warmup_num_steps": 2, "cos_min_ratio": [0.0, 0.1]},
           [1e-3, 1e-3]), (), "TypeError after warmup"),  # the engine's retry, step(1), goes back into warmup
    (block(WL, {"warmup_num_steps": [10, 20]}, [1e-3, 1e-3]), (2,), "warmup_num_steps"),  # not a per-group param
    (block(WL, {"warmup_num_steps": 10}, 1e-3, num_param_groups=0), (), "num_param_groups"),
    (block(WL, {"warmup_max_lr": ["a", 1e-3]}, 1e-3), (2,), "warmup_max_lr"),
    # last_batch_iteration
    (block(WL, {"warmup_num_steps": 10, "last_batch_iteration": -2}, 1e-3), (), "last_batch_iteration must be -1"),
    (block(WL, {"warmup_num_steps": 10, "last_batch_iteration": 2.5}, 1e-3), (), "last_batch_iteration"),
    (block(WL, {"warmup_num_steps": 10, "last_batch_iteration": 2**62}, 1e-3), (), "2**61"),
    (block(LR, {"last_batch_iteration": 5}), (), "give the optimizer's 'lr'"),  # its first update keeps that lr
    (block(OC, onecycle(last_batch_iteration=5), 1e-3), (), "give the optimizer's 'betas'"),  # and these betas
    # torch types
    (block("SequentialLR", {"schedulers": [{"scheduler": "LinearLR"}, {"scheduler": "ConstantLR"}],
                            "milestones": [5]}, 1e-3), (1,), "scheduler objects"),
    (block("ChainedScheduler", {"schedulers": [{"scheduler": "LinearLR"}]}, 1e-3), (1,), "scheduler objects"),
    (block("ReduceLROnPlateau", {}, 1e-3), (), "schedules.Plateau"),  # runs, with the batch size as its metric
    (block("LRScheduler", {}, 1e-3), (1,), "abstract base class"),
    (block("StepLR", {"step_size": 5, "last_batch_iteration": 3}, 1e-3), (1,), "last_epoch, not last_batch_iteration"),
    (block("StepLR", {"step_sise": 5}, 1e-3), (1,), "did you mean 'step_size'"),
    (block("StepLR", {"step_size": 5}), (), "'lr'"),  # the optimizer's lr not given
    (block("CosineAnnealingLR", {}, 1e-3), (1,), "T_max"),
    ({"optimizer": {"params": {"lr": 1e-3}}, "bf16": {"enabled": True},  # the engine: see test_real_engine
      "scheduler": {"type": "StepLR", "params": {"step_size": 5}}}, (), "bf16 (BF16_Optimizer)"),
]


@pytest.mark.parametrize("cfg,ds_groups,fragment", REJECTED, ids=[str(c)[:90] for c, _, _ in REJECTED])
def test_rejected(cfg, ds_groups, fragment):
    """npadam refuses with a ValueError naming the problem, and DeepSpeed's engine fails too where it can
    be seen here (for each optimizer param-group count listed)."""
    with pytest.raises(ValueError) as err:
        schedules.from_config("deepspeed", cfg).lr(np.arange(50))
    assert fragment in str(err.value)
    for n in ds_groups:
        assert drv.raises(lambda: drv.trace_deepspeed_groups(cfg, 50, n)) is not None, n


@pytest.mark.parametrize("cfg", [
    block("WarmupLR", {"warmup_num_steps": 1000, "warmup_min_lr": 1e-6}, 3e-4),
    block("WarmupDecayLR", {"warmup_num_steps": 1000, "total_num_steps": 10**6, "warmup_type": "linear"}, 3e-4),
    block("WarmupCosineLR", {"warmup_num_steps": 1000, "total_num_steps": 10**6}, 3e-4),
    block("OneCycle", {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-3, "cycle_first_step_size": 1000,
                       "cycle_second_step_size": 3000, "decay_step_size": 100, "decay_lr_rate": 0.01,
                       "decay_mom_rate": 1e-4}),
    block("OneCycle", {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-3, "cycle_first_step_size": 1000,
                       "cycle_first_stair_count": 7}),
    block("LRRangeTest", {"lr_range_test_min_lr": 1e-7, "lr_range_test_step_size": 100,
                          "lr_range_test_step_rate": 0.5, "lr_range_test_staircase": True}),
], ids=["WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "OneCycle-stairs", "LRRangeTest"])
def test_far_steps(cfg):
    """Far-away updates through DeepSpeed's own resume API (``step(last_batch_iteration)``
    sets the iteration before update k to k - 1), inside and far past the horizon."""
    got = schedules.from_config("deepspeed", cfg)
    for k in (1, 2, 999, 1000, 1001, 4001, 10**6 - 1, 10**6 + 1, 10**9, 2**40):
        with drv.quiet():
            opt = drv.torch_adam(cfg.get("lr", 1e-3))
            sched = drv.build_deepspeed_scheduler(opt, cfg)
            sched.step(k - 1)
        g = opt.param_groups[0]
        assert got.lr(k) == pytest.approx(g["lr"], rel=RTOL, abs=1e-12 * cfg.get("lr", 1e-3)), (k, cfg)
        if got.beta1 is not None:
            assert (got.beta1(k), got.beta2(k)) == pytest.approx(g["betas"], rel=RTOL), (k, cfg)


@pytest.mark.parametrize("cfg", [
    block("WarmupDecayLR", {"warmup_num_steps": 1000, "total_num_steps": 10**6, "last_batch_iteration": 5000}, 3e-4),
    block("OneCycle", {"cycle_min_lr": 1e-5, "cycle_max_lr": 1e-3, "cycle_first_step_size": 1000,
                       "decay_step_size": 100, "decay_lr_rate": 0.01, "decay_mom_rate": 1e-4,
                       "last_batch_iteration": 123_456}, 1e-3, betas=[0.9, 0.95]),
    block("LRRangeTest", {"lr_range_test_step_size": 100, "last_batch_iteration": 10**7}, 0.1),
], ids=["WarmupDecayLR", "OneCycle", "LRRangeTest"])
def test_far_steps_resumed(cfg):
    """A resumed scheduler far away: update k >= 1 is DeepSpeed's step(L + k) (DeepSpeed's resume API)."""
    got = schedules.from_config("deepspeed", cfg)
    last = cfg["scheduler"]["params"]["last_batch_iteration"]
    for k in (1, 2, 999, 10**6 + 1, 10**9, 2**40):
        with drv.quiet():
            opt = drv.deepspeed_optimizer(cfg)
            sched = drv.build_deepspeed_scheduler(opt, cfg)
            sched.step(last + k)
        g = opt.param_groups[0]
        assert got.lr(k) == pytest.approx(g["lr"], rel=RTOL, abs=1e-12 * cfg["lr"]), (k, cfg)
        if got.beta1 is not None:
            assert (got.beta1(k), got.beta2(k)) == pytest.approx(g["betas"], rel=RTOL), (k, cfg)


# --------------------------------------------------------------------------- the real engine (slow)

ENGINE = r"""
import json, os, sys
os.environ.update(DS_ACCELERATOR="cpu", RANK="0", WORLD_SIZE="1", LOCAL_RANK="0", MASTER_ADDR="127.0.0.1",
                  MASTER_PORT=sys.argv[1])
import torch, deepspeed, torch.distributed as dist
dist.init_process_group("gloo", rank=0, world_size=1)
out = []
for case in json.load(open(sys.argv[2])):
    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    lr, betas = case["lr"], case["betas"]
    per = [(lr[i] if isinstance(lr, list) else lr, betas) for i in range(2)]
    groups = [{"params": [p], "lr": a, "betas": tuple(b)} for p, (a, b) in zip((model.weight, model.bias), per)]
    opt = torch.optim.AdamW(groups) if case["groups"] == 2 else torch.optim.AdamW(model.parameters(), lr=per[0][0],
                                                                                  betas=tuple(betas))
    config = {"train_batch_size": 1, "scheduler": case["scheduler"], **case["extra"]}
    try:
        engine, _, _, _ = deepspeed.initialize(model=model, optimizer=opt, config=config, dist_init_required=False)
    except Exception as exc:  # what the engine refuses
        out.append({"error": type(exc).__name__ + ": " + str(exc)})
        continue
    rows = []
    for k in range(case["steps"]):
        rows.append([[g["lr"], *g["betas"]] for g in opt.param_groups])
        engine.backward(engine(torch.ones(1, 3)).sum())
        engine.step()
    out.append({"rows": rows})
json.dump(out, open(sys.argv[3], "w"))
"""

ENGINE_CASES = [  # scheduler block, optimizer lr, betas, param groups, steps, extra DeepSpeed config
    ({"type": "WarmupDecayLR", "params": {"warmup_min_lr": [0.0, 1e-5], "warmup_num_steps": 5,
                                          "total_num_steps": 20, "warmup_max_lr": None}}, [1e-3, 2e-3], 2, 30, {}),
    ({"type": "OneCycle", "params": {"cycle_min_lr": [1e-4, 2e-4], "cycle_max_lr": 1e-3, "cycle_first_step_size": 4,
                                     "cycle_min_mom": [0.8, 0.85], "last_batch_iteration": 6}}, 5e-4, 2, 20, {}),
    ({"type": "WarmupCosineLR", "params": {"total_num_steps": 15, "warmup_num_steps": 3}}, 3e-4, 1, 20, {}),
    ({"type": "LRRangeTest", "params": {"lr_range_test_step_size": 3, "last_batch_iteration": 4}}, 0.01, 1, 10, {}),
    ({"type": "StepLR", "params": {"step_size": 3, "gamma": 0.5}}, 1e-3, 1, 10, {}),
    ({"type": "CosineAnnealingLR", "params": {"T_max": 6}}, [1e-3, 4e-4], 2, 15, {}),
    ({"type": "OneCycleLR", "params": {"max_lr": 0.01, "total_steps": 12}}, 1e-3, 1, 12, {}),  # engine steps after each
    ({"type": "StepLR", "params": {"step_size": 3}}, 1e-3, 1, 5, {"zero_optimization": {"stage": 1}}),
    ({"type": "WarmupLR", "params": {"warmup_num_steps": 4}}, 1e-3, 1, 8, {"zero_optimization": {"stage": 1}}),
]


@pytest.mark.slow
def test_real_engine(tmp_path):
    """``deepspeed.initialize`` (one CPU process, gloo) with a client AdamW, then ``engine.step()`` after each
    backward: every param group's lr and betas before each update, against npadam; the torch fallback with
    ZeRO fails in the engine as npadam says."""
    betas = [0.9, 0.95]
    cases = [{"scheduler": s, "lr": lr, "betas": betas, "groups": g, "steps": n, "extra": extra}
             for s, lr, g, n, extra in ENGINE_CASES]
    (tmp_path / "cases.json").write_text(json.dumps(cases))
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([sys.executable, "-c", ENGINE, str(port), str(tmp_path / "cases.json"),
                           str(tmp_path / "out.json")], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    results = json.loads((tmp_path / "out.json").read_text())
    assert len(results) == len(cases)
    for case, result in zip(cases, results):
        cfg = {"lr": case["lr"], "betas": betas, **case["extra"], "scheduler": case["scheduler"]}
        if "error" in result:
            assert case["scheduler"]["type"] == "StepLR" and "not an Optimizer" in result["error"], result
            with pytest.raises(ValueError, match="ZeRO stage 1"):
                schedules.from_config("deepspeed", cfg)
            continue
        got = schedules.from_config("deepspeed", cfg)
        sets = list(got) if isinstance(got, schedules.GroupSchedules) else [got] * case["groups"]
        rows = np.asarray(result["rows"])  # [step, group, (lr, beta1, beta2)]
        rtol = CHAINED if case["scheduler"]["type"] in ("StepLR", "CosineAnnealingLR") else RTOL
        for i, s in enumerate(sets):
            want = {"lr": rows[:, i, 0], "beta1": rows[:, i, 1], "beta2": rows[:, i, 2]}
            compare(s, want, tuple(betas), rtol, {"group": i, "config": cfg})
