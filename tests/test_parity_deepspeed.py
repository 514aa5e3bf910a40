"""Parity: ``schedules.from_config("deepspeed", cfg)`` against ``deepspeed.runtime.lr_schedules``.

The scheduler class named by ``cfg["type"]`` is built as ``DeepSpeedEngine`` builds it
(``cls(optimizer, **params)``) over a torch Adam whose lr is ``cfg["lr"]``, and stepped
after every update as ``engine.step()`` does. DeepSpeed starts at
``last_batch_iteration = -1``: update 0 uses the constructor's value and update k >= 1
uses ``get_lr()`` at ``last_batch_iteration = k - 1``. OneCycle also writes
``betas = (momentum, 0.99)``. Closed forms: rtol=1e-12, atol=1e-12 * peak lr.
"""

from __future__ import annotations

import math
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

RTOL = 1e-12
SETTINGS = settings(max_examples=drv.examples(150), deadline=None, suppress_health_check=[HealthCheck.too_slow])

lrs = st.one_of(st.sampled_from([1e-3, 1.0, 3e-4]), st.floats(1e-6, 1.0))
warmup_steps = st.one_of(st.sampled_from([1, 2, 3]), st.integers(1, 80))
warmup_types = st.sampled_from(["log", "linear"])


def _peak(cfg):
    p = cfg["scheduler"]["params"]
    return max(abs(v) for v in (cfg.get("lr", 0.0), p.get("warmup_max_lr", 0.0), p.get("cycle_max_lr", 0.0),
                                p.get("lr_range_test_min_lr", 0.0)) if v is not None) or 1.0


def check(cfg: dict, steps: int) -> schedules.ScheduleSet:
    want = drv.trace_deepspeed(cfg, steps)
    got = schedules.from_config("deepspeed", cfg)
    k = np.arange(steps)
    peak = _peak(cfg)
    drv.assert_matches("lr", got.lr(k), want["lr"], rtol=RTOL, peak=peak, context=cfg)
    for i in {0, 1, steps // 2, steps - 1}:
        if i < steps:
            assert got.lr(i) == got.lr(k)[i]
    if got.beta1 is not None:
        drv.assert_matches("beta1", got.beta1(k), want["beta1"], rtol=RTOL, peak=1.0, context=cfg)
        drv.assert_matches("beta2", got.beta2(k), want["beta2"], rtol=RTOL, peak=1.0, context=cfg)
    else:  # the optimizer's own betas stay
        np.testing.assert_array_equal(want["beta1"], 0.9)
        np.testing.assert_array_equal(want["beta2"], 0.999)
        assert got.beta2 is None
    assert got.weight_decay is None
    return got


def block(stype: str, params: dict, lr: float | None = None) -> dict:
    cfg = {"scheduler": {"type": stype, "params": params}}
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


# --------------------------------------------------------------------------- rejections


REJECTED = [
    # (config, DeepSpeed also raises)
    (block("WarmupLR", {"warmup_num_steps": 0}, 1e-3), True),
    (block("WarmupLR", {"warmup_num_steps": 10.0}, 1e-3), True),
    (block("WarmupLR", {"warmup_num_steps": -5}, 1e-3), True),
    (block("WarmupDecayLR", {"warmup_num_steps": 0, "total_num_steps": 100}, 1e-3), True),
    (block("WarmupDecayLR", {"warmup_num_steps": 10}, 1e-3), True),            # total_num_steps missing
    (block("WarmupCosineLR", {"warmup_num_steps": 0, "total_num_steps": 100}, 1e-3), True),
    (block("WarmupCosineLR", {"warmup_num_steps": 10}, 1e-3), True),           # total_num_steps missing
    (block("OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": 0}), True),
    (block("OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_first_step_size": -3}), True),
    (block("OneCycle", {"cycle_min_lr": 1e-4, "cycle_max_lr": 1e-3, "cycle_second_step_size": -1}), True),
    (block("OneCycle", {"cycle_max_lr": 1e-3}), True),                          # cycle_min_lr missing
    (block("LRRangeTest", {"lr_range_test_step_size": 0}), True),
    (block("LRRangeTest", {"lr_range_test_step_size": 2.5}), True),
    (block("NoSuchLR", {}), True),
    (block("WarmupLR", {"warmup_num_stepz": 10}, 1e-3), True),                 # misspelled
    (block("WarmupLR", {"warmup_num_steps": 10, "last_batch_iteration": 5}, 1e-3), False),  # resume state
    ({"scheduler": {"params": {}}}, False),                                     # no type
]


@pytest.mark.parametrize("cfg,ds_raises", REJECTED, ids=lambda x: str(x)[:80] if isinstance(x, dict) else None)
def test_rejected(cfg, ds_raises):
    with pytest.raises(ValueError):
        schedules.from_config("deepspeed", cfg).lr(np.arange(50))
    if ds_raises:
        assert drv.raises(lambda: drv.trace_deepspeed(cfg, 50)) is not None


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
        assert got.lr(k) == pytest.approx(g["lr"], rel=RTOL, abs=1e-12 * _peak(cfg)), (k, cfg)
        if got.beta1 is not None:
            assert (got.beta1(k), got.beta2(k)) == pytest.approx(g["betas"], rel=RTOL), (k, cfg)
