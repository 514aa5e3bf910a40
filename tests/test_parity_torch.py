"""Parity: ``schedules.from_config("torch", cfg)`` against the real ``torch.optim.lr_scheduler``.

The real scheduler is stepped the way a torch training loop does (``optimizer.step()``
then ``scheduler.step()``) and every param group's ``lr`` (and ``betas[0]`` where
OneCycleLR / CyclicLR cycle it) is recorded before every update; npadam must give the
same value for the same update index k (k = 0 first). Composites are built as a user
builds them: the schedulers inside first, in list order, on the same optimizer. A
resumed scheduler (``last_epoch = L``) is built on an optimizer loaded with the state
of a fresh run stepped ``L + 1`` times (``_framework_drivers.trace_torch_groups``).

Tolerances: torch's ``step()`` uses chained (recursive) formulas for LinearLR,
ConstantLR, CosineAnnealingLR, PolynomialLR, ExponentialLR, StepLR, MultiStepLR,
SequentialLR and ChainedScheduler, which drift from the closed form by rounding, so
those are compared with rtol=1e-6; OneCycleLR, CosineAnnealingWarmRestarts and CyclicLR
compute every value directly and are compared with rtol=1e-12, and LambdaLR and
MultiplicativeLR are equal to the last bit. atol is 1e-12 times the peak lr.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

torch = drv.importorskip("torch")

from hypothesis import (HealthCheck, currently_in_test_context, event, given, settings,  # noqa: E402
                        strategies as st)

from npadam import schedules  # noqa: E402

CHAINED = 1e-6   # torch step() recursions
DIRECT = 1e-12   # torch computes each value from scratch

SETTINGS = settings(max_examples=drv.examples(150), deadline=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

lrs = st.one_of(st.sampled_from([1.0, 0.1, 3e-4, 1e-6]), st.floats(1e-6, 1.0))
factors = st.one_of(st.sampled_from([1e-8, 1.0]), st.floats(1e-4, 1.0))  # torch: (0, 1]; chained steps lose a tiny one
unit = st.floats(0.0, 1.0)


def _peak(cfg: dict) -> float:
    return float(cfg.get("max_lr", cfg["lr"]))


def _sets(got) -> list:
    return list(got) if isinstance(got, schedules.GroupSchedules) else [got]


def check(cfg: dict, steps: int, rtol: float, groups: int = 1) -> None:
    """npadam's lr (and beta1 where scheduled) over k = 0..steps-1 equals torch's, for every param
    group (``groups`` of them, or one per entry of a ``"lr"`` list)."""
    want = drv.trace_torch_groups(cfg, steps, groups)
    result = schedules.from_config("torch", cfg)
    got = _sets(result) if isinstance(result, schedules.GroupSchedules) else [result] * len(want)  # no lists: one
    assert len(got) == len(want), f"{len(got)} schedule sets for {len(want)} param groups"
    k = np.arange(steps)
    base = [v for c in _configs(cfg) for key in ("lr", "max_lr", "base_lr")
            for v in (c[key] if isinstance(c.get(key), list) else [c.get(key, 0.0)])]
    for g, (s, w) in enumerate(zip(got, want)):
        peak = max([float(np.max(np.abs(w["lr"])))] + [abs(v) for v in base])  # the largest lr in play
        drv.assert_matches(f"lr[{g}]", s.lr(k), w["lr"], rtol=rtol, peak=peak, context=cfg)
        for i in {0, steps // 2, steps - 1}:
            assert s.lr(i) == s.lr(k)[i], "scalar and vector evaluation differ"
        if s.beta1 is not None:  # every momentum torch cycles is computed directly
            drv.assert_matches(f"beta1[{g}]", s.beta1(k), w["beta1"], rtol=DIRECT, peak=1.0, context=cfg)
        else:
            np.testing.assert_array_equal(w["beta1"], 0.9, err_msg="torch changed beta1 but npadam schedules none")
        assert s.weight_decay is None and s.beta2 is None
        np.testing.assert_array_equal(w["beta2"], 0.999)  # torch never schedules beta2


# --------------------------------------------------------------------------- single schedulers


@st.composite
def linear_lr(draw):
    return {"scheduler": "LinearLR", "start_factor": draw(factors), "end_factor": draw(unit),
            "total_iters": draw(st.integers(0, 60))}


@st.composite
def constant_lr(draw):
    return {"scheduler": "ConstantLR", "factor": draw(factors), "total_iters": draw(st.integers(0, 60))}


@st.composite
def cosine_lr(draw):
    return {"scheduler": "CosineAnnealingLR", "T_max": draw(st.integers(1, 80)),
            "eta_min": draw(st.one_of(st.sampled_from([0.0, 1e-7]), st.floats(0.0, 1e-3)))}


@st.composite
def polynomial_lr(draw):
    return {"scheduler": "PolynomialLR", "total_iters": draw(st.integers(0, 60)),
            "power": draw(st.one_of(st.sampled_from([0.0, 0.5, 1.0, 2.0]), st.floats(0.0, 4.0)))}


@st.composite
def exponential_lr(draw):
    return {"scheduler": "ExponentialLR", "gamma": draw(st.floats(0.8, 1.0))}


@st.composite
def step_lr(draw):
    return {"scheduler": "StepLR", "step_size": draw(st.integers(1, 30)), "gamma": draw(st.floats(0.05, 1.0))}


@st.composite
def multistep_lr(draw):
    ms = draw(st.lists(st.integers(0, 120), min_size=0, max_size=6))  # repeats and any order allowed
    return {"scheduler": "MultiStepLR", "milestones": ms, "gamma": draw(st.floats(0.05, 1.0))}


@st.composite
def cawr(draw):
    cfg = {"scheduler": "CosineAnnealingWarmRestarts", "T_0": draw(st.integers(1, 40)),
           "T_mult": draw(st.integers(1, 3))}
    if draw(st.booleans()):
        cfg["eta_min"] = draw(st.floats(0.0, 1e-4))
    return cfg


SINGLE = {"LinearLR": linear_lr, "ConstantLR": constant_lr, "CosineAnnealingLR": cosine_lr,
          "PolynomialLR": polynomial_lr, "ExponentialLR": exponential_lr, "StepLR": step_lr,
          "MultiStepLR": multistep_lr}


@pytest.mark.parametrize("name", sorted(SINGLE))
@SETTINGS
@given(data=st.data())
def test_single_scheduler(name, data):
    cfg = {"lr": data.draw(lrs), **data.draw(SINGLE[name]())}
    steps = data.draw(st.integers(1, 260))
    check(cfg, steps, CHAINED)


@SETTINGS
@given(cfg=cawr(), lr=lrs, steps=st.integers(1, 700))
def test_cosine_annealing_warm_restarts(cfg, lr, steps):
    check({"lr": lr, **cfg}, steps, DIRECT)


@pytest.mark.parametrize("t0,mult", [(1, 1), (1, 2), (3, 2), (1, 3), (10, 2), (7, 1)])
def test_cosine_annealing_warm_restarts_long(t0, mult):
    check({"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": t0, "T_mult": mult,
           "eta_min": 1e-5}, 3000, DIRECT)


def test_cawr_epoch_path_misplaces_restarts():
    """torch's ``step(epoch)`` finds the cycle with a float log and gets it wrong at some
    restarts (T_0=1, T_mult=3: epoch 121 starts cycle 5, but int(log(243, 3)) = 4 puts it at
    the *end* of cycle 4, i.e. eta_min instead of the peak). A training loop calls ``step()``
    without an epoch (integer T_cur/T_i bookkeeping), which is right, and npadam uses the
    integer definition everywhere."""
    cfg = {"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 1, "T_mult": 3, "eta_min": 0.0}
    ours = schedules.from_config("torch", cfg).lr
    loop = drv.trace_torch(cfg, 200)["lr"]

    def epoch_path(epoch):
        with drv.quiet():
            opt = drv.torch_adam(0.1)
            s = torch.optim.lr_scheduler.CosineAnnealingWarmRestarts(opt, T_0=1, T_mult=3)
            s.step(epoch)
            return opt.param_groups[0]["lr"]

    assert ours(121) == loop[121] == 0.1              # first step of cycle 5 (starts at 1+3+9+27+81)
    assert epoch_path(121) == pytest.approx(0.0, abs=1e-15)   # torch's float path: misplaced
    wrong = [e for e in range(200) if abs(epoch_path(e) - loop[e]) > 1e-12]
    assert wrong and all(abs(ours(e) - loop[e]) <= 1e-15 for e in wrong)


# --------------------------------------------------------------------------- SequentialLR

SUB = st.one_of(linear_lr(), constant_lr(), cosine_lr(), polynomial_lr(), exponential_lr(), step_lr(),
                multistep_lr(), cawr())


@st.composite
def sequential(draw):
    n = draw(st.integers(2, 4))
    subs = [draw(SUB) for _ in range(n)]
    cuts = sorted(draw(st.sets(st.integers(1, 150), min_size=n - 1, max_size=n - 1)))
    return {"scheduler": "SequentialLR", "schedulers": subs, "milestones": cuts}


@SETTINGS
@given(cfg=sequential(), lr=lrs, extra=st.integers(1, 150))
def test_sequential_random(cfg, lr, extra):
    cfg = {"lr": lr, **cfg}
    subs = cfg["schedulers"]
    # a later LinearLR/PolynomialLR with total_iters=0 divides by zero in torch (see rejections)
    if any(s.get("total_iters") == 0 and s["scheduler"] in ("LinearLR", "PolynomialLR") for s in subs[1:]):
        assert drv.raises(lambda: drv.trace_torch(cfg, cfg["milestones"][-1] + 2)) is not None
        with pytest.raises(ValueError):
            schedules.from_config("torch", cfg)
        return
    check(cfg, cfg["milestones"][-1] + extra, CHAINED)


@pytest.mark.parametrize("warmup,total,start", [(1, 100, 0.01), (10, 100, 1e-3), (99, 100, 0.1),
                                                (50, 51, 0.5), (2000, 10_000, 1e-4)])
def test_sequential_warmup_cosine(warmup, total, start):
    """The usual torch recipe: LinearLR warmup, then CosineAnnealingLR; run 3x past the horizon."""
    cfg = {"lr": 3e-4, "scheduler": "SequentialLR", "milestones": [warmup],
           "schedulers": [{"scheduler": "LinearLR", "start_factor": start, "end_factor": 1.0,
                           "total_iters": warmup},
                          {"scheduler": "CosineAnnealingLR", "T_max": total - warmup, "eta_min": 3e-5}]}
    check(cfg, 3 * total if total <= 100 else total + 500, CHAINED)


@pytest.mark.parametrize("cfg", [
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],
     "schedulers": [{"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 5},
                    {"scheduler": "ExponentialLR", "gamma": 0.9}]},
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [3, 40],
     "schedulers": [{"scheduler": "LinearLR", "start_factor": 0.25, "total_iters": 3},
                    {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 10},
                    {"scheduler": "CosineAnnealingLR", "T_max": 60}]},
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [10],
     "schedulers": [{"scheduler": "ExponentialLR", "gamma": 0.95},
                    {"scheduler": "MultiStepLR", "milestones": [5, 5, 20], "gamma": 0.5}]},
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [4],
     "schedulers": [{"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 4},
                    {"scheduler": "CosineAnnealingWarmRestarts", "T_0": 5, "T_mult": 2}]},
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [0],  # milestone 0: second scheduler from the start
     "schedulers": [{"scheduler": "ConstantLR", "factor": 0.5},
                    {"scheduler": "PolynomialLR", "total_iters": 30, "power": 2.0}]},
    {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [6],
     "schedulers": [{"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 0},
                    {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 0}]},
], ids=["constant-exponential", "linear-constant-cosine", "exponential-multistep", "linear-cawr",
        "milestone-0", "constant-total-0"])
def test_sequential_cases(cfg):
    check(cfg, 200, CHAINED)


# --------------------------------------------------------------------------- OneCycleLR


@st.composite
def one_cycle(draw):
    cfg = {"scheduler": "OneCycleLR", "max_lr": draw(lrs)}
    if draw(st.booleans()):
        cfg["total_steps"] = draw(st.integers(1, 300))
    else:
        cfg["epochs"], cfg["steps_per_epoch"] = draw(st.integers(1, 10)), draw(st.integers(1, 30))
    cfg["pct_start"] = draw(st.one_of(st.sampled_from([0.0, 0.25, 0.3, 0.5, 1.0]), unit))
    cfg["anneal_strategy"] = draw(st.sampled_from(["cos", "linear"]))
    cfg["three_phase"] = draw(st.booleans())
    cfg["div_factor"] = draw(st.floats(1.0, 100.0))
    cfg["final_div_factor"] = draw(st.floats(1.0, 1e4))
    cfg["cycle_momentum"] = draw(st.booleans())
    lo = draw(st.floats(0.5, 0.95))
    cfg["base_momentum"], cfg["max_momentum"] = lo, draw(st.floats(lo, 0.999))
    return cfg


def _total(cfg):
    return cfg.get("total_steps") or cfg["epochs"] * cfg["steps_per_epoch"]


@settings(max_examples=drv.examples(300), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=one_cycle(), lr=lrs)
def test_one_cycle(cfg, lr):
    """lr and beta1 for every update 0..total_steps (torch raises after that); configs
    torch cannot run (it divides by zero in an empty phase) must be rejected by npadam."""
    cfg = {"lr": lr, **cfg}
    steps = _total(cfg) + 1
    err = drv.raises(lambda: drv.trace_torch(cfg, steps))
    if err is not None:
        with pytest.raises(ValueError):
            s = schedules.from_config("torch", cfg)
            s.lr(np.arange(steps))
        return
    check(cfg, steps, DIRECT)
    s = schedules.from_config("torch", cfg)
    with pytest.raises(ValueError):  # torch: "Tried to step total_steps + 1 times"
        s.lr(steps)


@pytest.mark.parametrize("three", [False, True])
@pytest.mark.parametrize("anneal", ["cos", "linear"])
@pytest.mark.parametrize("total,pct", [(1000, 0.3), (10, 0.25), (7, 0.5), (2, 0.3), (1, 0.3),
                                       (100, 0.0), (3, 0.3)])
def test_one_cycle_cases(three, anneal, total, pct):
    cfg = {"lr": 1e-3, "scheduler": "OneCycleLR", "max_lr": 0.01, "total_steps": total, "pct_start": pct,
           "anneal_strategy": anneal, "three_phase": three}
    if drv.raises(lambda: drv.trace_torch(cfg, total + 1)) is not None:
        with pytest.raises(ValueError):
            schedules.from_config("torch", cfg).lr(np.arange(total + 1))
        return
    check(cfg, total + 1, DIRECT)


# --------------------------------------------------------------------------- edge cases


@pytest.mark.parametrize("cfg,steps", [
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factor": 0.5, "total_iters": 0}, 20),
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factor": 1e-3, "end_factor": 0.0, "total_iters": 1}, 20),
    ({"lr": 0.1, "scheduler": "LinearLR"}, 20),                       # defaults: 1/3 -> 1 over 5
    ({"lr": 0.1, "scheduler": "ConstantLR", "factor": 0.5, "total_iters": 0}, 20),
    ({"lr": 0.1, "scheduler": "ConstantLR"}, 20),
    ({"lr": 0.1, "scheduler": "ConstantLR", "factor": 0.0, "total_iters": 0}, 20),
    ({"lr": 0.1, "scheduler": "PolynomialLR", "total_iters": 0}, 20),
    ({"lr": 0.1, "scheduler": "PolynomialLR", "total_iters": 1, "power": 3.0}, 20),
    ({"lr": 0.1, "scheduler": "CosineAnnealingLR", "T_max": 1}, 50),   # periodic past T_max
    ({"lr": 0.1, "scheduler": "CosineAnnealingLR", "T_max": 7, "eta_min": 0.2}, 50),  # eta_min > lr
    ({"lr": 3e-4, "scheduler": "CosineAnnealingLR", "T_max": 1000, "eta_min": 3e-5}, 5000),
    ({"lr": 0.1, "scheduler": "MultiStepLR", "milestones": [0, 3, 3, 3, 10], "gamma": 0.5}, 20),
    ({"lr": 0.1, "scheduler": "StepLR", "step_size": 1, "gamma": 0.5}, 60),
    ({"lr": 0.1, "scheduler": "ExponentialLR", "gamma": 0.999}, 5000),
])
def test_edge_cases(cfg, steps):
    check(cfg, steps, CHAINED)


# --------------------------------------------------------------------------- rejections


# --------------------------------------------------------------------------- CyclicLR


@st.composite
def cyclic(draw):
    base = draw(lrs)
    cfg = {"scheduler": "CyclicLR", "base_lr": base, "max_lr": base * draw(st.sampled_from([1.0, 2.0, 10.0, 0.5])),
           "step_size_up": draw(st.one_of(st.integers(1, 40), st.floats(0.5, 40.0)))}
    if draw(st.booleans()):
        cfg["step_size_down"] = draw(st.one_of(st.integers(0, 40), st.floats(0.0, 40.0)))
    cfg["mode"] = draw(st.sampled_from(["triangular", "triangular2", "exp_range"]))
    if cfg["mode"] == "exp_range" or draw(st.booleans()):
        cfg["gamma"] = draw(st.floats(0.9, 1.0))
    if draw(st.booleans()):
        cfg["cycle_momentum"] = draw(st.booleans())
    if draw(st.booleans()):
        lo = draw(st.floats(0.5, 0.95))
        cfg.update(base_momentum=lo, max_momentum=min(0.999, lo + draw(st.floats(0.0, 0.3))))
    return cfg


@SETTINGS
@given(cfg=cyclic(), lr=lrs)
def test_cyclic(cfg, lr):
    """lr and (with cycle_momentum) beta1 of torch's CyclicLR, which computes every value directly:
    equal to the last bit (rtol 1e-12 allowed, 0 observed)."""
    cfg = {"lr": lr, **cfg}
    steps = int(3 * (cfg["step_size_up"] + cfg.get("step_size_down", cfg["step_size_up"]))) + 5
    check(cfg, steps, DIRECT)


@pytest.mark.parametrize("mode", ["triangular", "triangular2", "exp_range"])
def test_cyclic_documented_example(mode):
    cfg = {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 4, "mode": mode,
           "gamma": 0.99}
    check(cfg, 60, DIRECT)
    k = np.arange(60)
    want = drv.trace_torch(cfg, 60)
    np.testing.assert_array_equal(schedules.from_config("torch", cfg).lr(k), want["lr"])


def test_cyclic_triangular2_long_runs_are_quiet():
    """triangular2 halves the amplitude each cycle: past cycle 1025, 2.0 ** (cycle - 1) overflows
    float64 and the scale is exactly 0 (base_lr), without a NumPy overflow warning."""
    import warnings

    s = schedules.from_config("torch", {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1,
                                        "step_size_up": 2, "mode": "triangular2", "cycle_momentum": False}).lr
    k = np.arange(1_000_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        v = s(k)
        assert s(999_999) == v[-1] == 0.01
    assert np.all(np.isfinite(v)) and v[4 * 1100] == 0.01


REJECTED = [
    # (config, torch also raises)
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "mode": "cosine"}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "scale_fn": "lambda x: 1"}, False),
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factor": 0.0}, True),
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factor": 1.5}, True),
    ({"lr": 0.1, "scheduler": "LinearLR", "end_factor": -0.1}, True),
    ({"lr": 0.1, "scheduler": "ConstantLR", "factor": 1.5}, True),
    ({"lr": 0.1, "scheduler": "ConstantLR", "factor": -0.5}, True),
    ({"lr": 0.1, "scheduler": "ConstantLR", "factor": 0.0, "total_iters": 5}, True),  # 1 / factor at step 5
    ({"lr": 0.1, "scheduler": "CosineAnnealingLR"}, True),                    # T_max missing
    ({"lr": 0.1, "scheduler": "CosineAnnealingLR", "T_max": 0}, True),        # divides by zero
    ({"lr": 0.1, "scheduler": "ExponentialLR"}, True),                        # gamma missing
    ({"lr": 0.1, "scheduler": "StepLR"}, True),                               # step_size missing
    ({"lr": 0.1, "scheduler": "StepLR", "step_size": 0}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 100, "pct_start": 1.5}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 100, "pct_start": -0.1}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 100, "anneal_strategy": "exp"}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0}, True),            # no total_steps / epochs
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 0}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 10, "pct_start": 0.1}, True),  # pT = 1
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 10, "pct_start": 1.0}, True),
    ({"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 0}, True),
    ({"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 2.5}, True),
    ({"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 0}, True),
    ({"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": 1.5}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5, 10],
      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "ConstantLR"}]}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [],
      "schedulers": []}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],
      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "LinearLR", "total_iters": 0}]}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],
      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "PolynomialLR", "total_iters": 0}]}, True),
    ({"lr": 0.1, "scheduler": "ReduceLROnPlateau", "factor": 1.0}, True),     # torch: factor must be < 1
    ({"lr": 0.1, "scheduler": "ReduceLROnPlateau", "patince": 3}, True),      # misspelled kwarg
    ({"lr": 0.1, "scheduler": "NoSuchLR"}, True),
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factr": 0.5}, True),         # misspelled kwarg
    ({"scheduler": "LinearLR"}, False),                                       # no lr
    # callables
    ({"lr": 0.1, "scheduler": "LambdaLR"}, True),                             # no lr_lambda
    ({"lr": 0.1, "scheduler": "LambdaLR", "lr_lambda": 0.5}, True),           # not callable
    ({"lr": 0.1, "scheduler": "MultiplicativeLR", "lr_lambda": "lambda e: 0.9"}, True),
    ({"lr": [0.1, 0.2], "scheduler": "LambdaLR", "lr_lambda": [lambda e: 1.0]}, True),   # one per group
    ({"lr": 0.1, "scheduler": "LambdaLR", "lr_lambda": lambda e: float("nan")}, False),  # torch: a nan lr
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "scale_fn": lambda x: 0.9 ** x,
      "scale_mode": "epochs"}, False),                                        # torch treats it as iterations
    # per-group lists
    ({"lr": [0.1, 0.2], "scheduler": "OneCycleLR", "max_lr": [1.0, 2.0, 3.0], "total_steps": 10}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": [0.01, 0.02], "max_lr": [0.1, 0.2, 0.3]}, True),
    ({"lr": [], "scheduler": "LinearLR"}, True),
    ({"lr": 0.1, "scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": [0.0, 0.1]}, True),  # one eta_min
    # last_epoch
    ({"lr": 0.1, "scheduler": "LinearLR", "last_epoch": -2}, False),
    ({"lr": 0.1, "scheduler": "LinearLR", "last_epoch": 2.5}, True),
    ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 10, "last_epoch": 10}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5], "last_epoch": 3,
      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "ExponentialLR", "gamma": 0.9}]}, False),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],
      "schedulers": [{"scheduler": "ConstantLR", "last_epoch": 2}, {"scheduler": "ExponentialLR", "gamma": 0.9}]},
     False),
    ({"lr": 0.1, "scheduler": "ChainedScheduler", "last_epoch": -1,             # ChainedScheduler takes none
      "schedulers": [{"scheduler": "ConstantLR"}]}, True),
    # composites
    ({"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": []}, True),
    ({"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "NoSuchLR"}]}, True),
    ({"lr": 0.1, "scheduler": "ChainedScheduler", "optimizer": None,
      "schedulers": [{"scheduler": "ConstantLR"}]}, False),                   # the optimizer is implied
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],                # composite after a milestone
      "schedulers": [{"scheduler": "ConstantLR"},
                     {"scheduler": "SequentialLR", "milestones": [3],
                      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "ConstantLR"}]}]}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],
      "schedulers": [{"scheduler": "ConstantLR"},
                     {"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "ConstantLR"}]}]}, True),
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],                # plain first step: 0 / 0
      "schedulers": [{"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "PolynomialLR", "total_iters": 0},
                                                                      {"scheduler": "ConstantLR"}]},
                     {"scheduler": "ConstantLR"}]}, True),
    ({"lr": 0.1, "scheduler": "ChainedScheduler",                              # affine cosine, no closed form
      "schedulers": [{"scheduler": "LinearLR"}, {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-3}]},
     False),
    ({"lr": 0.1, "scheduler": "ChainedScheduler",
      "schedulers": [{"scheduler": "CosineAnnealingLR", "T_max": 10}, {"scheduler": "CosineAnnealingLR", "T_max": 7}]},
     False),
    ({"lr": 0.1, "scheduler": "ChainedScheduler",
      "schedulers": [{"scheduler": "SequentialLR", "milestones": [3],
                      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "ConstantLR"}]},
                     {"scheduler": "ExponentialLR", "gamma": 0.9}]}, False),
    ({"lr": 0.1, "scheduler": "PolynomialLR", "total_iters": 5, "power": -1.0}, True),   # 0.0 ** -1 at step 5
]


@pytest.mark.parametrize("cfg,torch_raises", REJECTED, ids=lambda x: str(x)[:70] if isinstance(x, dict) else None)
def test_rejected(cfg, torch_raises):
    with pytest.raises(ValueError):
        for _, s in schedules.from_config("torch", cfg).items():
            s(np.arange(200))
    if torch_raises:
        assert drv.raises(lambda: drv.trace_torch_groups(cfg, 200)) is not None


def test_rejection_messages():
    """What the errors say: the value and why."""
    cases = [
        ({"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": [
            {"scheduler": "LinearLR"}, {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-3}]},
         r"eta_min=0.001 .* affine .* no closed form"),
        ({"lr": [0.1, 0.2], "scheduler": "OneCycleLR", "max_lr": [1.0, 2.0, 3.0], "total_steps": 10},
         r"max_lr has 3 values but lr has 2"),
        ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5], "schedulers": [
            {"scheduler": "ConstantLR"},
            {"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "ConstantLR"}]}]},
         r"ChainedScheduler at schedulers\[1\] .* milestone 5 .* NotImplementedError"),
        ({"lr": 0.1, "scheduler": "LambdaLR", "lr_lambda": lambda e: float("inf")},
         r"lr_lambda .*<lambda>.* returned inf for step 0"),
        ({"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 10, "last_epoch": 10},
         r"last_epoch=10 starts at step 11, past its last one \(10\)"),
    ]
    for cfg, text in cases:
        with pytest.raises(ValueError, match=text):
            schedules.from_config("torch", cfg)
    # after construction a callable's failure surfaces when its step is evaluated, as in torch: a
    # non-number as TypeError naming the step and the value, its own exceptions unchanged
    bad = {"lr": 0.1, "scheduler": "MultiplicativeLR", "lr_lambda": lambda e: "x" if e == 4 else 0.5}
    lr = schedules.from_config("torch", bad).lr
    assert lr(3) == 0.1 * 0.5 ** 3
    with pytest.raises(TypeError, match=r"lr_lambda .*<lambda> returned 'x' for step 4"):
        lr(np.arange(10))
    assert drv.raises(lambda: drv.trace_torch(bad, 10)) is not None
    zero = {"lr": 0.1, "scheduler": "LambdaLR", "lr_lambda": lambda e: 1 / (10 - e)}
    with pytest.raises(ZeroDivisionError):
        schedules.from_config("torch", zero).lr(10)
    assert isinstance(drv.raises(lambda: drv.trace_torch(zero, 11)), ZeroDivisionError)


# --------------------------------------------------------------------------- Python callables


class Fn:
    """A printable, picklable lr_lambda / scale_fn for the tests: ``Fn(kind, a)(e)``."""

    def __init__(self, kind: str, a: float) -> None:
        self.kind, self.a = kind, a

    def __call__(self, e: int):
        a = self.a
        if self.kind == "pow":
            return a ** e
        if self.kind == "inv":
            return 1.0 / (1.0 + a * e)
        if self.kind == "warmup":
            return min(1.0, (e + 1) / a)
        if self.kind == "halving":
            return 0.5 ** (e // a)
        if self.kind == "floor":  # torch's documented example: an int, 0 before the first step
            return e // a
        if self.kind == "const":
            return a
        return a if e % 2 else 1.0 / a  # "wobble"

    def __repr__(self) -> str:
        return f"Fn({self.kind!r}, {self.a!r})"


lambda_fns = st.one_of(st.builds(Fn, st.just("pow"), st.floats(0.8, 1.0)),
                       st.builds(Fn, st.just("inv"), st.floats(0.0, 1.0)),
                       st.builds(Fn, st.sampled_from(["warmup", "halving", "floor"]), st.integers(1, 30)))
factor_fns = st.one_of(st.builds(Fn, st.just("const"), st.floats(0.8, 1.05)),
                       st.builds(Fn, st.just("wobble"), st.floats(0.9, 1.1)))
scale_fns = st.one_of(st.builds(Fn, st.just("pow"), st.floats(0.8, 1.0)),
                      st.builds(Fn, st.just("inv"), st.floats(0.0, 1.0)))


@st.composite
def lambda_lr(draw):
    return {"scheduler": "LambdaLR", "lr_lambda": draw(lambda_fns)}


@st.composite
def multiplicative_lr(draw):
    return {"scheduler": "MultiplicativeLR", "lr_lambda": draw(factor_fns)}


@SETTINGS
@given(cfg=st.one_of(lambda_lr(), multiplicative_lr()), lr=lrs, steps=st.integers(1, 200))
def test_lambda_and_multiplicative(cfg, lr, steps):
    """LambdaLR (``base * f(t)``) and MultiplicativeLR (``lr_{t-1} * f(t)``, torch's running
    product in torch's order): equal to the last bit."""
    cfg = {"lr": lr, **cfg}
    want = drv.trace_torch_groups(cfg, steps)[0]["lr"]
    np.testing.assert_array_equal(schedules.from_config("torch", cfg).lr(np.arange(steps)), want)


def test_lambda_documented_examples():
    """torch's docstrings: ``LambdaLR(optimizer, lr_lambda=[lambda1, lambda2])`` with ``lambda1 =
    epoch // 30`` and ``lambda2 = 0.95 ** epoch`` (two param groups), ``LambdaLR(opt, lambda epoch:
    epoch // 30)`` and ``MultiplicativeLR(optimizer, lr_lambda=lambda epoch: 0.95)``."""
    two = {"lr": 0.05, "scheduler": "LambdaLR", "lr_lambda": [lambda epoch: epoch // 30, lambda epoch: 0.95 ** epoch]}
    want = drv.trace_torch_groups(two, 100, groups=2)
    got = schedules.from_config("torch", two)
    assert isinstance(got, schedules.GroupSchedules) and len(got) == 2
    for s, w in zip(got, want):
        np.testing.assert_array_equal(s.lr(np.arange(100)), w["lr"])
    for cfg in ({"lr": 0.05, "scheduler": "LambdaLR", "lr_lambda": lambda epoch: epoch // 30},
                {"lr": 0.05, "scheduler": "MultiplicativeLR", "lr_lambda": lambda epoch: 0.95}):
        np.testing.assert_array_equal(schedules.from_config("torch", cfg).lr(np.arange(100)),
                                      drv.trace_torch_groups(cfg, 100)[0]["lr"])


@SETTINGS
@given(cfg=cyclic(), fn=scale_fns, mode=st.sampled_from(["cycle", "iterations"]), lr=lrs)
def test_cyclic_scale_fn(cfg, fn, mode, lr):
    """CyclicLR with a ``scale_fn`` (of the cycle or of the iteration): torch ignores ``mode`` then."""
    cfg = {"lr": lr, **{k: v for k, v in cfg.items() if k != "mode"}, "scale_fn": fn, "scale_mode": mode}
    check(cfg, int(3 * (cfg["step_size_up"] + cfg.get("step_size_down", cfg["step_size_up"]))) + 5, DIRECT)


def warm(epoch: int) -> float:
    return min(1.0, (epoch + 1) / 10)


def test_callable_block():
    """``schedules.from_callable``: per-step values, the running product, checks on what the
    callable returns (naming the step and the value), pickling, equality."""
    import pickle

    s = schedules.from_callable(warm, scale=0.5)
    k = np.arange(30)
    np.testing.assert_array_equal(s(k), [0.5 * warm(e) for e in k])
    assert s(3) == s(k)[3] and s(np.int64(3)) == s(3)
    assert s == schedules.Lambda(warm, scale=0.5) and s != schedules.Lambda(warm) and hash(s) == hash(s)
    assert schedules.from_callable(warm, shift=5)(0) == warm(5)
    calls = []

    def f(e):
        calls.append(e)
        return 1.0 - 0.01 * e

    p = schedules.from_callable(f, scale=2.0, product=True)
    want, v = [], 2.0
    for e in range(40):
        v = v * f(e) if e >= 1 else v
        want.append(v)
    calls.clear()
    assert p(20) == want[20] and p(5) == want[5]                    # out of order, from the cache
    np.testing.assert_array_equal(p(np.asarray([39, 0, 7])), [want[39], want[0], want[7]])
    assert sorted(calls) == list(range(1, 40))                      # each step's factor once
    q = schedules.from_callable(f, product=True, first=0)
    assert q(0) == f(0) and q(2) == f(0) * f(1) * f(2)
    r = pickle.loads(pickle.dumps(schedules.from_callable(warm, product=True)))
    np.testing.assert_array_equal(r(k), schedules.from_callable(warm, product=True)(k))
    for bad, err, text in [(lambda e: "x", TypeError, "'x' for step 3"), (lambda e: True, TypeError, "True"),
                           (lambda e: float("nan"), ValueError, "nan for step 3"),
                           (lambda e: np.inf, ValueError, "inf for step 3"),
                           (lambda e: np.asarray([1.0]), TypeError, "array")]:
        with pytest.raises(err, match=text.replace("(", r"\(").replace("[", r"\[")):
            schedules.from_callable(bad, name="lr_lambda")(3)
    with pytest.raises(TypeError, match="callable"):
        schedules.from_callable(0.5)
    with pytest.raises(ValueError, match="shift"):
        schedules.from_callable(warm, shift=-1)


def test_callable_everywhere_a_schedule_is():
    """A callable schedule composes with the blocks and drives ``npadam.AdamW``."""
    import npadam

    s = schedules.from_callable(warm, scale=1e-3)
    j = schedules.join([schedules.constant(1.0), s], [5])
    assert j(4) == 1.0 and j(5) == s(0) and j(7) == s(2)
    assert schedules.multiply(s, 2.0)(3) == 2.0 * s(3)
    assert schedules.warmup(s, 4)(6) == s(2)
    params = [np.zeros(4, np.float32)]
    opt = npadam.AdamW(params, lr=s)
    got = [opt.step([np.ones(4, np.float32)]).lr for _ in range(5)]
    assert got == [s(e) for e in range(5)]


def test_callables_are_not_serialisable():
    """``to_dict()`` (JSON, checkpoints) raises TypeError naming the callable, at every level."""
    cfg = {"lr": [0.1, 0.2], "scheduler": "SequentialLR", "milestones": [5],
           "schedulers": [{"scheduler": "LinearLR"}, {"scheduler": "LambdaLR", "lr_lambda": warm}]}
    gs = schedules.from_config("torch", cfg)
    for obj in (schedules.from_callable(warm), gs[0].lr, gs[1], gs):
        with pytest.raises(TypeError, match=r"callable .*warm.* cannot be serialised"):
            obj.to_dict()
    with pytest.raises(TypeError, match="warm"):
        gs[0].lr.config_dict()
    assert gs[0].lr == schedules.from_config("torch", cfg)[0].lr  # equality does not need to_dict
    plain = schedules.from_config("torch", {"lr": 0.1, "scheduler": "LinearLR"}).lr
    assert schedules.from_dict(plain.to_dict()) == plain


# --------------------------------------------------------------------------- ChainedScheduler

FACTOR = st.one_of(linear_lr(), constant_lr(), polynomial_lr(), exponential_lr(), step_lr(), multistep_lr(),
                   multiplicative_lr())


@st.composite
def cosine0(draw):
    return {**draw(cosine_lr()), "eta_min": draw(st.sampled_from([0.0, 0.0, 0.0, 1e-4]))}


@st.composite
def one_cycle_sub(draw):
    return {"scheduler": "OneCycleLR", "max_lr": draw(lrs), "total_steps": draw(st.integers(20, 200)),
            "pct_start": draw(st.floats(0.1, 0.45)), "three_phase": draw(st.booleans()),
            "anneal_strategy": draw(st.sampled_from(["cos", "linear"])), "cycle_momentum": draw(st.booleans())}


@st.composite
def cyclic_sub(draw):
    cfg = draw(cyclic())
    if draw(st.integers(0, 3)) == 0:
        cfg["scale_fn"] = draw(scale_fns)
    return cfg


ABSOLUTE = st.one_of(lambda_lr(), cyclic_sub(), one_cycle_sub(), cawr())
LEAF = st.one_of(FACTOR, cosine0(), ABSOLUTE)


@st.composite
def chained(draw, nest=True):
    units = []
    for _ in range(draw(st.integers(2, 4))):
        r = draw(st.integers(0, 11))
        units.append(draw(FACTOR) if r < 6 else draw(cosine0()) if r < 8 else draw(ABSOLUTE) if r < 11 or not nest
                     else draw(chained(nest=False)))
    return {"scheduler": "ChainedScheduler", "schedulers": units}


#: what npadam rejects that torch runs: chained recurrences without a closed form
NO_CLOSED_FORM = "no closed form"


def _event(what: str) -> None:
    """Count an outcome in hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event(what)


def run_both(cfg: dict, steps: int, rtol: float, groups: int = 1) -> str:
    """``check`` where npadam accepts ``cfg``; where it rejects it, torch must raise too (within
    ``steps``) or the reason be a recurrence without a closed form; past a schedule's ``limit``
    torch must raise. Returns what happened."""
    try:
        got = schedules.from_config("torch", cfg)
    except ValueError as exc:
        err = drv.raises(lambda: drv.trace_torch_groups(cfg, steps, groups))
        assert err is not None or NO_CLOSED_FORM in str(exc), f"npadam rejects what torch runs: {exc}\n{cfg!r}"
        _event("rejected: " + ("torch raises too" if err is not None else "no closed form"))
        return "rejected"
    lims = [s.limit for _, s in got.items() if s.limit is not None]
    if lims and min(lims) < steps:
        assert drv.raises(lambda: drv.trace_torch_groups(cfg, min(lims) + 1, groups)) is not None, \
            f"npadam stops at update {min(lims)} but torch goes on\n{cfg!r}"
        steps = min(lims)
        _event("checked up to a OneCycleLR's end")
    check(cfg, steps, rtol, groups)
    _event("checked")
    return "checked"


@SETTINGS
@given(cfg=chained(), lr=lrs, steps=st.integers(1, 250))
def test_chained_random(cfg, lr, steps):
    """Random chains: factors multiply, the last absolute scheduler (LambdaLR, CyclicLR,
    OneCycleLR, CosineAnnealingWarmRestarts) sets the lr with the one-step maps of those after it,
    a CosineAnnealingLR with eta_min 0 revives the lr after each minimum; affine ones rejected."""
    run_both({"lr": lr, **cfg}, steps, CHAINED)


@pytest.mark.parametrize("cfg", [
    [{"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 10},
     {"scheduler": "CosineAnnealingLR", "T_max": 40}],
    [{"scheduler": "CosineAnnealingLR", "T_max": 7}, {"scheduler": "StepLR", "step_size": 5, "gamma": 0.5},
     {"scheduler": "LinearLR", "start_factor": 0.2, "end_factor": 0.0, "total_iters": 9}],
    [{"scheduler": "MultiplicativeLR", "lr_lambda": Fn("const", 0.97)}, {"scheduler": "CosineAnnealingLR", "T_max": 1}],
    [{"scheduler": "ExponentialLR", "gamma": 0.9}, {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 300},
     {"scheduler": "CosineAnnealingLR", "T_max": 6, "eta_min": 0.01}, {"scheduler": "StepLR", "step_size": 3}],
    [{"scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 5},
     {"scheduler": "MultiStepLR", "milestones": [3, 3, 9]}, {"scheduler": "CosineAnnealingLR", "T_max": 1}],
    [{"scheduler": "LambdaLR", "lr_lambda": Fn("inv", 0.5)},
     {"scheduler": "PolynomialLR", "total_iters": 8, "power": 2.0},
     {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 4}],
    [{"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 300},
     {"scheduler": "OneCycleLR", "max_lr": 3.0, "total_steps": 100, "div_factor": 5.0, "pct_start": 0.1}],
    [{"scheduler": "CyclicLR", "base_lr": 0.3, "max_lr": 0.5, "step_size_up": 4},
     {"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "ExponentialLR", "gamma": 0.99},
                                                      {"scheduler": "LambdaLR", "lr_lambda": Fn("pow", 0.95)}]}],
], ids=["warmup-cosine", "cosine-restarts-revive", "multiplicative-T1", "absolute-then-affine", "cyclic-first",
        "lambda-factors", "two-onecycle", "nested-chain"])
def test_chained_cases(cfg):
    assert run_both({"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": cfg}, 101, CHAINED) == "checked"


def test_chained_documented_example():
    """torch's ChainedScheduler docstring: ConstantLR(factor=0.1, total_iters=20) then ExponentialLR(0.9)
    at lr 0.05. torch runs 0.005, 0.0045, 0.00405, ..., 0.000675 (19), 0.006078 (20), 0.00547 (21);
    the docstring's comment shows ten times that (it leaves out the factor 0.1)."""
    cfg = {"lr": 0.05, "scheduler": "ChainedScheduler",
           "schedulers": [{"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 20},
                          {"scheduler": "ExponentialLR", "gamma": 0.9}]}
    check(cfg, 100, CHAINED)
    lr = schedules.from_config("torch", cfg).lr
    np.testing.assert_allclose(lr(np.asarray([0, 1, 2, 19, 20, 21])),
                               [0.005, 0.0045, 0.00405, 0.05 * 0.1 * 0.9 ** 19, 0.05 * 0.9 ** 20, 0.05 * 0.9 ** 21],
                               rtol=1e-12)


def test_several_schedulers_on_one_optimizer():
    """torch.optim's "how to adjust the learning rate" example: ExponentialLR(0.9) and
    MultiStepLR([30, 80], 0.1) built on one optimizer, both stepped every update, is what
    ChainedScheduler does (and what npadam's ChainedScheduler config gives)."""
    subs = [{"scheduler": "ExponentialLR", "gamma": 0.9}, {"scheduler": "MultiStepLR", "milestones": [30, 80]}]
    cfg = {"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": subs}

    def loop(opt):
        scheds = [drv.build_torch_scheduler(opt, s) for s in subs]
        return types.SimpleNamespace(step=lambda: [s.step() for s in scheds])

    import types

    by_hand = drv.trace_torch_scheduler(loop, 0.1, 120)["lr"]
    np.testing.assert_array_equal(by_hand, drv.trace_torch(cfg, 120)["lr"])
    check(cfg, 120, CHAINED)


# --------------------------------------------------------------------------- SequentialLR, nested


@st.composite
def sequential_any(draw, nest=2):
    n = draw(st.integers(2, 4))
    subs = [draw(LEAF) for _ in range(n)]
    if nest and draw(st.integers(0, 2)) == 0:  # a composite runs only as the first scheduler
        subs[0] = draw(st.one_of(sequential_any(nest=nest - 1), chained(nest=False)))
    cuts = sorted(draw(st.sets(st.integers(0 if draw(st.booleans()) else 1, 60), min_size=n - 1, max_size=n - 1)))
    return {"scheduler": "SequentialLR", "schedulers": subs, "milestones": cuts}


@SETTINGS
@given(cfg=sequential_any(), lr=lrs, extra=st.integers(1, 100))
def test_sequential_any(cfg, lr, extra):
    """Every scheduler in a SequentialLR (OneCycleLR rewriting initial_lr, CyclicLR setting the lr
    and beta1, callables) and a nested SequentialLR / ChainedScheduler first, whose schedulers take a
    plain first step and whose milestones come one update earlier per enclosing SequentialLR."""
    run_both({"lr": lr, **cfg}, cfg["milestones"][-1] + extra, CHAINED)


@pytest.mark.parametrize("cfg", [
    {"milestones": [5], "schedulers": [{"scheduler": "ConstantLR", "factor": 0.5},
                                       {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 50}]},
    {"milestones": [5], "schedulers": [{"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 50},
                                       {"scheduler": "ExponentialLR", "gamma": 0.9}]},
    {"milestones": [3, 9], "schedulers": [{"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 3},
                                          {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 20},
                                          {"scheduler": "CosineAnnealingLR", "T_max": 30, "eta_min": 1e-3}]},
    {"milestones": [8], "schedulers": [
        {"scheduler": "SequentialLR", "milestones": [3],
         "schedulers": [{"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 3},
                        {"scheduler": "ExponentialLR", "gamma": 0.8}]},
        {"scheduler": "CosineAnnealingLR", "T_max": 10}]},
    {"milestones": [8], "schedulers": [
        {"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "ExponentialLR", "gamma": 0.8},
                                                         {"scheduler": "PolynomialLR", "total_iters": 4}]},
        {"scheduler": "MultiplicativeLR", "lr_lambda": Fn("const", 1.1)}]},
    {"milestones": [10], "schedulers": [
        {"scheduler": "SequentialLR", "milestones": [4], "schedulers": [
            {"scheduler": "SequentialLR", "milestones": [2],
             "schedulers": [{"scheduler": "CosineAnnealingLR", "T_max": 3, "eta_min": 0.01},
                            {"scheduler": "StepLR", "step_size": 2}]},
            {"scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.2, "step_size_up": 3}]},
        {"scheduler": "OneCycleLR", "max_lr": 0.5, "total_steps": 90}]},
], ids=["onecycle-second", "onecycle-first", "onecycle-middle", "nested-sequential", "nested-chained",
        "nested-twice"])
def test_sequential_composite_cases(cfg):
    assert run_both({"lr": 0.1, "scheduler": "SequentialLR", **cfg}, 100, CHAINED) == "checked"


def test_sequential_documented_example():
    """torch's SequentialLR docstring: ConstantLR(factor=0.1, total_iters=20), ExponentialLR(0.9),
    milestones [20], lr 0.05: 0.005 up to update 19, then 0.05, 0.045, 0.0405 (the exponential
    restarts from its closed form at the milestone)."""
    cfg = {"lr": 0.05, "scheduler": "SequentialLR", "milestones": [20],
           "schedulers": [{"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 20},
                          {"scheduler": "ExponentialLR", "gamma": 0.9}]}
    check(cfg, 100, CHAINED)
    lr = schedules.from_config("torch", cfg).lr
    np.testing.assert_allclose(lr(np.asarray([0, 1, 2, 19, 20, 21, 22])),
                               [0.005, 0.005, 0.005, 0.005, 0.05, 0.045, 0.0405], rtol=1e-12)


def test_composite_horizon_and_limit():
    """How far the CLI dumps: a chain's longest horizon, a sequence's last milestone plus its last
    scheduler's; the limit where a OneCycleLR inside stops torch."""
    lin, cos = {"scheduler": "LinearLR", "total_iters": 10}, {"scheduler": "CosineAnnealingLR", "T_max": 90}
    one = {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 20}
    lr = lambda cfg: schedules.from_config("torch", {"lr": 0.1, **cfg}).lr  # noqa: E731
    chain = lr({"scheduler": "ChainedScheduler",
                "schedulers": [lin, cos, {"scheduler": "ExponentialLR", "gamma": 0.9}]})
    assert (chain.horizon, chain.limit) == (90, None)
    seq = lr({"scheduler": "SequentialLR", "milestones": [30], "schedulers": [
        {"scheduler": "SequentialLR", "milestones": [10], "schedulers": [lin, one]}, cos]})
    assert (seq.horizon, seq.limit) == (120, None)  # the inner OneCycleLR is done with before update 30
    seq = lr({"scheduler": "SequentialLR", "milestones": [5, 60], "schedulers": [lin, one, cos]})
    assert (seq.horizon, seq.limit) == (150, 26)    # OneCycleLR from 5: updates 5 .. 25
    assert lr({**one, "last_epoch": 4}).limit == 16 and lr({**lin, "last_epoch": 3}).horizon == 6


# --------------------------------------------------------------------------- last_epoch (resume)


@SETTINGS
@given(cfg=st.one_of(LEAF, cosine_lr()), lr=lrs, last=st.integers(0, 80), steps=st.integers(1, 120))
def test_resume(cfg, lr, last, steps):
    """``last_epoch = L``: update k after construction is step ``L + 1 + k`` (StepLR, MultiStepLR,
    ConstantLR re-apply their boundary step and CosineAnnealingWarmRestarts with T_mult > 1 wraps
    its cycle, as torch does)."""
    run_both({"lr": lr, **cfg, "last_epoch": last}, steps, CHAINED)


@pytest.mark.parametrize("last", [0, 3, 4, 9, 19, 40])
@pytest.mark.parametrize("cfg", [
    {"scheduler": "StepLR", "step_size": 5, "gamma": 0.5},
    {"scheduler": "MultiStepLR", "milestones": [5, 5, 10]},
    {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 5},
    {"scheduler": "CosineAnnealingWarmRestarts", "T_0": 3, "T_mult": 2},
    {"scheduler": "MultiplicativeLR", "lr_lambda": Fn("wobble", 0.95)},
    {"scheduler": "LambdaLR", "lr_lambda": Fn("halving", 7)},
    {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 45},
], ids=["step", "multistep", "constant", "cawr", "multiplicative", "lambda", "onecycle"])
def test_resume_cases(cfg, last):
    """Resuming on a boundary (StepLR at a multiple of step_size, MultiStepLR at a repeated
    milestone, ConstantLR at total_iters, CAWR past T_0) and the callables (equal to the bit)."""
    cfg = {"lr": 0.1, **cfg, "last_epoch": last}
    assert run_both(cfg, 30, CHAINED) == "checked"
    if "lr_lambda" in cfg:
        np.testing.assert_array_equal(schedules.from_config("torch", cfg).lr(np.arange(30)),
                                      drv.trace_torch_groups(cfg, 30)[0]["lr"])


# --------------------------------------------------------------------------- per-group values

_GROUP_KEYS = {"LambdaLR": {"lr_lambda": lambda_fns}, "MultiplicativeLR": {"lr_lambda": factor_fns},
               "CyclicLR": {"base_lr": lrs, "max_lr": lrs, "base_momentum": st.floats(0.5, 0.8),
                            "max_momentum": st.floats(0.8, 0.95)},
               "OneCycleLR": {"max_lr": lrs, "base_momentum": st.floats(0.5, 0.8),
                              "max_momentum": st.floats(0.8, 0.95)}}


def _per_group(draw, cfg: dict, n: int) -> dict:
    cfg = dict(cfg)
    for key, values in _GROUP_KEYS.get(cfg["scheduler"], {}).items():
        if draw(st.booleans()):
            cfg[key] = [draw(values) for _ in range(n)]
    if "schedulers" in cfg:
        cfg["schedulers"] = [_per_group(draw, s, n) for s in cfg["schedulers"]]
    return cfg


@st.composite
def grouped(draw):
    n = draw(st.integers(1, 3))
    cfg = _per_group(draw, draw(st.one_of(LEAF, LEAF, sequential_any(), chained())), n)
    lr = [draw(lrs) for _ in range(n)] if draw(st.integers(0, 3)) else draw(lrs)
    return {"lr": lr, **cfg}, n


@SETTINGS
@given(case=grouped(), extra=st.integers(1, 100))
def test_per_group(case, extra):
    """Lists (``"lr"``, ``max_lr``, ``base_lr``, momenta, ``lr_lambda``) on an optimizer with that
    many param groups: a GroupSchedules with one ScheduleSet per group."""
    cfg, n = case
    listed = any(isinstance(v, list) and k != "milestones" and k != "schedulers" for c in _configs(cfg)
                 for k, v in c.items())
    if run_both(cfg, max(cfg.get("milestones", [0]), default=0) + extra, CHAINED, groups=n) == "checked":
        got = schedules.from_config("torch", cfg)
        assert isinstance(got, schedules.GroupSchedules) == listed and len(_sets(got)) == (n if listed else 1)


def _configs(cfg: dict) -> list:
    return [cfg] + [c for s in cfg.get("schedulers", []) for c in _configs(s)]


def test_per_group_cases():
    """OneCycleLR / CyclicLR with per-group max_lr and momenta (three param groups), and resumed
    per-group schedulers."""
    for cfg in ({"lr": [0.1, 0.2, 0.3], "scheduler": "OneCycleLR", "max_lr": [1.0, 2.0, 3.0], "total_steps": 50,
                 "base_momentum": [0.8, 0.7, 0.85]},
                {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": [0.01, 0.02, 0.03], "max_lr": 0.1,
                 "step_size_up": 4, "max_momentum": [0.9, 0.95, 0.99]}):
        check(cfg, 51, DIRECT, groups=3)
    for cfg in ({"lr": [0.1, 0.2], "scheduler": "OneCycleLR", "max_lr": [1.0, 2.0], "total_steps": 30, "last_epoch": 5},
                {"lr": [0.1, 0.2], "scheduler": "LambdaLR", "lr_lambda": [Fn("pow", 0.9), Fn("inv", 1.0)],
                 "last_epoch": 7},
                {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": [0.01, 0.02], "max_lr": 0.3, "step_size_up": 4,
                 "last_epoch": 11}):
        check(cfg, 25, DIRECT, groups=2)


# --------------------------------------------------------------------------- the CLI


def test_cli_dumps_composites(tmp_path, capsys):
    """``npadam schedule --framework torch --config FILE`` with a ChainedScheduler over two groups."""
    import json

    from npadam.cli import main

    cfg = {"lr": [0.05, 0.1], "scheduler": "ChainedScheduler",
           "schedulers": [{"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 5},
                          {"scheduler": "OneCycleLR", "max_lr": [1.0, 2.0], "total_steps": 30},
                          {"scheduler": "StepLR", "step_size": 7}]}
    path = tmp_path / "chain.json"
    path.write_text(json.dumps(cfg))
    assert main(["schedule", "--framework", "torch", "--config", str(path)]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "step,lr[0],beta1[0],lr[1],beta1[1]" and len(lines) == 1 + 31  # OneCycleLR stops at 30
    got = np.asarray([[float(x) for x in line.split(",")] for line in lines[1:]])
    want = drv.trace_torch_groups(cfg, 31)
    np.testing.assert_allclose(got[:, 1], want[0]["lr"], rtol=CHAINED)
    np.testing.assert_allclose(got[:, 3], want[1]["lr"], rtol=CHAINED)
    np.testing.assert_allclose(got[:, 4], want[1]["beta1"], rtol=DIRECT)


@pytest.mark.parametrize("cfg", [
    {"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 5},
    {"scheduler": "LinearLR", "start_factor": 1.0, "end_factor": 0.0, "total_iters": 7},
    {"scheduler": "LinearLR", "start_factor": 0.37, "end_factor": 0.91, "total_iters": 2000},
    {"scheduler": "LinearLR", "total_iters": 0},
    {"scheduler": "ExponentialLR", "gamma": 0.99},
    {"scheduler": "StepLR", "step_size": 3, "gamma": 0.5},
    {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 4},
    {"scheduler": "MultiStepLR", "milestones": [2, 9, 9], "gamma": 0.3},
    {"scheduler": "PolynomialLR", "total_iters": 6, "power": 1.7},
], ids=lambda c: c["scheduler"])
def test_chain_fast_path_is_the_general_span(cfg):
    """A chain's spans from 1 (the vectorized fast path) equal ``span(1, b)`` bit for bit."""
    from npadam.schedules.frameworks import _torch_compose as C

    b = np.arange(1, 3000, dtype=np.int64)
    for leaf in C.leaves(C.parse(cfg, 0.1, "torch", top=True)):
        assert leaf.span_from_1(b).tobytes() == leaf.span(np.ones_like(b), b).tobytes()
