"""Parity: ``schedules.from_config("megatron", args)`` against Megatron-Core's
``OptimizerParamScheduler``.

The scheduler is built from Megatron-LM argument names exactly as
``megatron.training.training.get_optimizer_param_scheduler`` does (decay/warmup/WSD steps
in samples: iterations x global_batch_size, or the ``*_samples`` arguments for
sample-based training), over a stand-in optimizer with one parameter group. Its
constructor calls ``step(0)``; the train loop calls ``step(increment=global_batch_size)``
after each successful update. ``lr`` and ``weight_decay`` of the group are recorded
before every update. Closed forms: rtol=1e-12, atol=1e-12 * lr.
"""

from __future__ import annotations

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

drv.importorskip("torch")
drv.importorskip("megatron.core")

from hypothesis import HealthCheck, given, settings, strategies as st  # noqa: E402

from npadam import schedules  # noqa: E402

RTOL = 1e-12
SETTINGS = settings(max_examples=drv.examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])

STYLES = ["linear", "cosine", "constant", "inverse-square-root", "WSD"]
WSD_STYLES = ["linear", "cosine", "exponential", "minus_sqrt"]
gbs_st = st.one_of(st.just(1), st.sampled_from([2, 3, 8, 32, 256]))


def check(cfg: dict, iters: int) -> None:
    want = drv.trace_megatron(cfg, iters)
    got = schedules.from_config("megatron", cfg)
    k = np.arange(iters)
    drv.assert_matches("lr", got.lr(k), want["lr"], rtol=RTOL, peak=cfg["lr"], context=cfg)
    drv.assert_matches("weight_decay", got.weight_decay(k), want["weight_decay"], rtol=RTOL,
                       peak=max(want["weight_decay"].max(), 1e-300), context=cfg)
    for i in {0, iters // 2, iters - 1}:
        assert got.lr(i) == got.lr(k)[i] and got.weight_decay(i) == got.weight_decay(k)[i]
    assert got.beta1 is None and got.beta2 is None


@st.composite
def weight_decay(draw):
    style = draw(st.sampled_from(["constant", "linear", "cosine", None]))
    if style is None:
        return {}
    if style == "constant":
        return {"weight_decay_incr_style": "constant", "weight_decay": draw(st.floats(0.0, 0.3))}
    lo = draw(st.floats(0.0, 0.3))
    return {"weight_decay_incr_style": style, "start_weight_decay": lo,
            "end_weight_decay": lo + draw(st.floats(0.0, 0.3))}


@st.composite
def iteration_args(draw):
    lr = draw(st.one_of(st.sampled_from([3e-4, 1e-3]), st.floats(1e-6, 1.0)))
    cfg = {"lr": lr, "min_lr": lr * draw(st.sampled_from([0.0, 0.1, 1.0]) | st.floats(0.0, 1.0)),
           "lr_decay_style": draw(st.sampled_from(STYLES)),
           "train_iters": draw(st.integers(1, 200)), "global_batch_size": draw(gbs_st)}
    if draw(st.booleans()):
        cfg["lr_decay_iters"] = draw(st.integers(1, 250))
    D = cfg.get("lr_decay_iters", cfg["train_iters"])
    if draw(st.booleans()):
        cfg["lr_warmup_fraction"] = draw(st.floats(0.0, 0.99))
    else:
        cfg["lr_warmup_iters"] = draw(st.integers(0, D - 1))
    if draw(st.booleans()):
        cfg["lr_warmup_init"] = lr * draw(st.floats(0.0, 1.0))
    if cfg["lr_decay_style"] == "WSD":
        cfg["lr_wsd_decay_style"] = draw(st.sampled_from(WSD_STYLES))
        cfg["lr_wsd_decay_iters"] = draw(st.integers(0, D + 20))
    cfg.update(draw(weight_decay()))
    return cfg


@SETTINGS
@given(cfg=iteration_args(), extra=st.integers(1, 80))
def test_iteration_based(cfg, extra):
    D = cfg.get("lr_decay_iters", cfg["train_iters"])
    check(cfg, max(D, cfg["train_iters"]) + extra)


@st.composite
def sample_args(draw):
    lr = draw(st.floats(1e-6, 1e-2))
    gbs = draw(st.sampled_from([1, 4, 7, 64]))
    cfg = {"lr": lr, "min_lr": lr * draw(st.floats(0.0, 1.0)), "lr_decay_style": draw(st.sampled_from(STYLES)),
           "train_samples": draw(st.integers(1, 150 * gbs)), "global_batch_size": gbs}
    if draw(st.booleans()):
        cfg["lr_decay_samples"] = draw(st.integers(1, 200 * gbs))
    D = cfg.get("lr_decay_samples", cfg["train_samples"])
    if draw(st.booleans()):
        cfg["lr_warmup_fraction"] = draw(st.floats(0.0, 0.99))
    else:
        cfg["lr_warmup_samples"] = draw(st.integers(0, D - 1))
    if cfg["lr_decay_style"] == "WSD":
        cfg["lr_wsd_decay_style"] = draw(st.sampled_from(WSD_STYLES))
        cfg["lr_wsd_decay_samples"] = draw(st.integers(0, D + 20))
    cfg.update(draw(weight_decay()))
    return cfg


@SETTINGS
@given(cfg=sample_args(), extra=st.integers(1, 60))
def test_sample_based(cfg, extra):
    """``train_samples``: decay, warmup and WSD lengths are given in samples (need not be
    multiples of the batch size); iterations still advance by ``global_batch_size``."""
    gbs = cfg["global_batch_size"]
    D = max(cfg.get("lr_decay_samples", 0), cfg["train_samples"])
    check(cfg, -(-D // gbs) + extra)


BASE = {"lr": 3e-4, "min_lr": 3e-5, "train_iters": 100, "lr_warmup_iters": 10}


@pytest.mark.parametrize("cfg", [
    *({**BASE, "lr_decay_style": s} for s in STYLES[:4]),
    *({**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_style": w, "lr_wsd_decay_iters": 20} for w in WSD_STYLES),
    {**BASE, "lr_decay_style": "cosine", "lr_warmup_iters": 0},
    {**BASE, "lr_decay_style": "cosine", "lr_warmup_iters": 99},                 # warmup == decay - 1
    {**BASE, "lr_decay_style": "linear", "lr_warmup_iters": 0, "lr_warmup_fraction": 0.1},
    {**BASE, "lr_decay_style": "cosine", "lr_warmup_iters": 0, "lr_warmup_fraction": 0.013,
     "global_batch_size": 7},                                                     # fractional warmup samples
    {**BASE, "lr_decay_style": "cosine", "lr_warmup_init": 1e-5, "global_batch_size": 16},
    {**BASE, "lr_decay_style": "inverse-square-root", "lr_warmup_iters": 0, "min_lr": 0.0},
    {**BASE, "lr_decay_style": "cosine", "lr_decay_iters": 60},                   # decays before train_iters
    {**BASE, "lr_decay_style": "cosine", "lr_decay_iters": 160},                  # ... or after
    {**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_iters": 100},                 # WSD window == decay
    {**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_iters": 150},                 # ... longer (Megatron allows)
    {**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_iters": 0},                   # ... empty: peak, then min
    {**BASE, "lr_decay_style": "constant", "min_lr": 3e-4},
    {**BASE, "weight_decay_incr_style": "linear", "start_weight_decay": 0.0, "end_weight_decay": 0.1,
     "global_batch_size": 4},
    {**BASE, "weight_decay_incr_style": "cosine", "start_weight_decay": 0.01, "end_weight_decay": 0.1},
    {**BASE, "weight_decay": 0.1},
    {"lr": 1e-3, "train_samples": 1000, "lr_warmup_samples": 50, "lr_decay_style": "cosine",
     "global_batch_size": 24, "lr_wsd_decay_samples": 10},
    {"lr": 6e-4, "min_lr": 6e-5, "train_iters": 5000, "lr_warmup_iters": 200, "lr_decay_style": "cosine",
     "global_batch_size": 512, "weight_decay_incr_style": "linear", "start_weight_decay": 0.0,
     "end_weight_decay": 0.1},
], ids=lambda c: "-".join(f"{k}={v}" for k, v in c.items() if k not in ("lr", "min_lr")))
def test_cases(cfg):
    check(cfg, 3 * cfg.get("train_iters", 100) + 10)


def test_hyphenated_names():
    cfg = {"lr": 3e-4, "min-lr": 3e-5, "train-iters": 100, "lr-warmup-iters": 10, "lr-decay-style": "cosine"}
    plain = {k.replace("-", "_"): v for k, v in cfg.items()}
    k = np.arange(150)
    np.testing.assert_array_equal(schedules.from_config("megatron", cfg).lr(k),
                                  schedules.from_config("megatron", plain).lr(k))
    check(plain, 150)


REJECTED = [
    # (args, Megatron also raises)
    ({**BASE, "min_lr": 1e-3}, True),                                           # min_lr > lr
    ({**BASE, "min_lr": -1e-5}, True),
    ({**BASE, "lr_warmup_init": 1e-3}, True),                                   # init > lr
    ({**BASE, "lr_warmup_iters": 100}, True),                                   # warmup >= decay
    ({**BASE, "lr_warmup_iters": 150}, True),
    ({**BASE, "lr_warmup_iters": 0, "lr_warmup_fraction": 1.0}, True),
    ({**BASE, "lr_decay_style": "WSD"}, True),                                  # no lr_wsd_decay_iters
    ({**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_iters": 20, "lr_wsd_decay_style": "square"}, True),
    ({**BASE, "lr_decay_style": "step"}, True),                                 # unknown style
    ({**BASE, "lr_decay_iters": 0}, True),                                      # decay steps must be > 0
    ({**BASE, "weight_decay_incr_style": "linear", "start_weight_decay": 0.1, "end_weight_decay": 0.01}, True),
    ({**BASE, "weight_decay_incr_style": "linear", "start_weight_decay": -0.1, "end_weight_decay": 0.01}, True),
    ({**BASE, "weight_decay_incr_style": "linear"}, True),                      # start/end missing
    ({**BASE, "weight_decay_incr_style": "constant", "start_weight_decay": 0.0, "end_weight_decay": 0.1}, True),
    ({**BASE, "weight_decay_incr_style": "exponential", "start_weight_decay": 0.0, "end_weight_decay": 0.1},
     True),
    ({"lr": 3e-4}, True),                                                       # no train_iters / train_samples
    ({**BASE, "override_opt_param_scheduler": True, "use_checkpoint_opt_param_scheduler": True}, True),
    ({**BASE, "lr_warmup_fraction": 0.1}, False),    # Megatron-LM's validate_args: one of fraction / iters
    ({**BASE, "lr_warmup_itres": 10}, False),                                   # misspelled
]


@pytest.mark.parametrize("cfg,mg_raises", REJECTED, ids=lambda x: str(x)[:80] if isinstance(x, dict) else None)
def test_rejected(cfg, mg_raises):
    with pytest.raises(ValueError):
        schedules.from_config("megatron", cfg).lr(np.arange(400))
    if mg_raises:
        assert drv.raises(lambda: drv.trace_megatron(cfg, 400)) is not None


@pytest.mark.parametrize("cfg", [
    {**BASE, "lr_decay_style": "cosine", "global_batch_size": 1024},
    {**BASE, "lr_decay_style": "inverse-square-root", "min_lr": 0.0, "train_iters": 10**6, "lr_warmup_iters": 0},
    {**BASE, "lr_decay_style": "WSD", "lr_wsd_decay_iters": 30, "lr_wsd_decay_style": "minus_sqrt",
     "train_iters": 10**7, "global_batch_size": 4096, "weight_decay_incr_style": "cosine",
     "start_weight_decay": 0.0, "end_weight_decay": 0.1},
], ids=["cosine", "inverse-sqrt", "wsd"])
def test_far_steps(cfg):
    """Single jumps to far-away iterations (``step(increment=k * global_batch_size)`` from 0),
    inside and far past the decay horizon, up to 2**40 iterations."""
    got = schedules.from_config("megatron", cfg)
    gbs = cfg.get("global_batch_size", 1)
    for k in (1, 12_345, 10**6 - 1, 10**6 + 1, 10**7 // 2, 10**9, 2**40):
        with drv.quiet():
            opt = drv.FakeMegatronOptimizer()
            sched = drv.build_megatron_scheduler(opt, cfg)
            sched.step(increment=k * gbs)
        g = opt.param_groups[0]
        assert got.lr(k) == pytest.approx(g["lr"], rel=RTOL, abs=1e-12 * cfg["lr"]), (k, cfg)
        assert got.weight_decay(k) == pytest.approx(g["weight_decay"], rel=RTOL, abs=1e-15), (k, cfg)
