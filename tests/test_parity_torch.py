"""Parity: ``schedules.from_config("torch", cfg)`` against the real ``torch.optim.lr_scheduler``.

The real scheduler is stepped the way a torch training loop does (``optimizer.step()``
then ``scheduler.step()``) and ``param_groups[0]["lr"]`` (and ``betas[0]`` for
OneCycleLR) is recorded before every update; npadam must give the same value for the
same update index k (k = 0 first).

Tolerances: torch's ``step()`` uses chained (recursive) formulas for LinearLR,
ConstantLR, CosineAnnealingLR, PolynomialLR, ExponentialLR, StepLR, MultiStepLR and
SequentialLR, which drift from the closed form by rounding, so those are compared
with rtol=1e-6; OneCycleLR and CosineAnnealingWarmRestarts compute every value
directly and are compared with rtol=1e-12. atol is 1e-12 times the peak lr.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

torch = drv.importorskip("torch")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

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


def check(cfg: dict, steps: int, rtol: float) -> None:
    """npadam's lr (and beta1 where scheduled) over k = 0..steps-1 equals torch's."""
    want = drv.trace_torch(cfg, steps)
    got = schedules.from_config("torch", cfg)
    k = np.arange(steps)
    drv.assert_matches("lr", got.lr(k), want["lr"], rtol=rtol, peak=_peak(cfg), context=cfg)
    for i in {0, steps // 2, steps - 1}:
        assert got.lr(i) == got.lr(k)[i], "scalar and vector evaluation differ"
    if got.beta1 is not None:
        drv.assert_matches("beta1", got.beta1(k), want["beta1"], rtol=rtol, peak=1.0, context=cfg)
    else:
        np.testing.assert_array_equal(want["beta1"], 0.9, err_msg="torch changed beta1 but npadam schedules none")
    assert got.weight_decay is None and got.beta2 is None
    np.testing.assert_array_equal(want["beta2"], 0.999)  # torch never schedules beta2


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


REJECTED = [
    # (config, torch also raises)
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "mode": "cosine"}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "step_size_up": 0}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01}, True),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1, "scale_fn": "lambda x: 1"}, False),
    ({"lr": 0.1, "scheduler": "CyclicLR", "base_lr": [0.01, 0.02], "max_lr": 0.1}, False),
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
    ({"lr": 0.1, "scheduler": "SequentialLR", "milestones": [5],  # rewrites initial_lr: unsupported
      "schedulers": [{"scheduler": "ConstantLR"}, {"scheduler": "OneCycleLR", "max_lr": 1.0, "total_steps": 50}]},
     False),
    ({"lr": 0.1, "scheduler": "ReduceLROnPlateau"}, False),                   # not a function of the step
    ({"lr": 0.1, "scheduler": "NoSuchLR"}, True),
    ({"lr": 0.1, "scheduler": "LinearLR", "start_factr": 0.5}, True),         # misspelled kwarg
    ({"scheduler": "LinearLR"}, False),                                       # no lr
]


@pytest.mark.parametrize("cfg,torch_raises", REJECTED, ids=lambda x: str(x)[:70] if isinstance(x, dict) else None)
def test_rejected(cfg, torch_raises):
    with pytest.raises(ValueError):
        schedules.from_config("torch", cfg).lr(np.arange(200))
    if torch_raises:
        assert drv.raises(lambda: drv.trace_torch(cfg, 200)) is not None
