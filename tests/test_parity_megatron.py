"""Parity: ``schedules.from_config("megatron", args)`` against Megatron-Core's
``OptimizerParamScheduler``.

The scheduler is built from Megatron-LM argument names exactly as
``megatron.training.training.get_optimizer_param_scheduler`` does (decay/warmup/WSD steps
in samples: iterations x global_batch_size, or the ``*_samples`` arguments for
sample-based training), over a stand-in optimizer with one parameter group. Its
constructor calls ``step(0)``; the train loop calls ``step(increment=global_batch_size)``
after each successful update. ``lr`` and ``weight_decay`` of the group are recorded
before every update. Closed forms: rtol=1e-12, atol=1e-12 * lr.

The second half covers per-group overrides, ``decoupled_lr``, the batch-size ramp-up and the
legacy ``--warmup``, over megatron-core's ``_get_param_groups`` groups and its
num-microbatches calculator (see the comment there).
"""

from __future__ import annotations

import pickle

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


# ----------------------------------------------------------------------------------------------------------------
# Per-group overrides, decoupled_lr, batch-size ramp-up, legacy --warmup.
#
# The driver below is Megatron-LM's training loop (megatron/training/training.py, core_v0.16.1) over
# megatron-core's own objects: the param groups come from ``_get_param_groups`` (its config overrides,
# merging and sorting), the batch size from the num-microbatches calculator, the lr / weight decay from
# ``OptimizerParamScheduler``. Per iteration: ``update_num_microbatches(consumed, consistency_check=False)``
# then ``(..., True)``; the optimizer step (the groups' ``lr`` / ``weight_decay`` are recorded here); then
# ``opt_param_scheduler.step(increment=get_num_microbatches() * micro_batch_size * data_parallel_size)``
# and ``consumed_train_samples += <the same>``. megatron.training itself is not installed: the loop and
# ``update_train_iters`` are re-stated from its source.

with drv.quiet():
    import torch  # noqa: E402
    from megatron.core import num_microbatches_calculator as nmc  # noqa: E402
    from megatron.core.optimizer import OptimizerConfig as McOptimizerConfig  # noqa: E402
    from megatron.core.optimizer import ParamKey, _get_param_groups  # noqa: E402

from npadam import config as C  # noqa: E402
from npadam.schedules.frameworks.megatron import MegatronBatchRampup  # noqa: E402


GROUP_SETTINGS = settings(max_examples=drv.examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(scope="module", autouse=True)
def one_rank_process_group(tmp_path_factory):
    """``_get_param_groups`` all-gathers the group keys across ranks: a one-rank gloo group."""
    import torch.distributed as dist

    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('dist') / 'init'}",
                                rank=0, world_size=1)
    yield
    if mine:
        dist.destroy_process_group()


def trace_training(cfg: dict, iters: int, groups: list | None = None, micro_batch_size: int = 1,
                   data_parallel_size: int = 1) -> dict:
    """``lr`` / ``weight_decay`` (groups x iters) and ``consumed`` / ``batch`` (iters) of Megatron-LM's
    train loop (module comment above) over ``groups`` (Megatron's group dicts; default: one empty group)."""
    with drv.quiet():
        opt = drv.FakeMegatronOptimizer()
        if groups is not None:
            opt.param_groups = groups
        sched = drv.build_megatron_scheduler(opt, cfg)
        nmc.unset_num_microbatches_calculator()
        nmc.init_num_microbatches_calculator(0, cfg.get("rampup_batch_size"), cfg.get("global_batch_size", 1),
                                             micro_batch_size, data_parallel_size, False)
        try:
            out = {"lr": np.empty((len(opt.param_groups), iters)), "consumed": np.empty(iters, np.int64),
                   "batch": np.empty(iters, np.int64)}
            out["weight_decay"] = np.empty_like(out["lr"])
            consumed = 0
            for i in range(iters):
                nmc.update_num_microbatches(consumed, consistency_check=False, verbose=True)
                nmc.update_num_microbatches(consumed, consistency_check=True, verbose=True)
                for gi, g in enumerate(opt.param_groups):
                    out["lr"][gi, i], out["weight_decay"][gi, i] = g["lr"], g["weight_decay"]
                batch = nmc.get_num_microbatches() * micro_batch_size * data_parallel_size
                out["consumed"][i], out["batch"][i] = consumed, batch
                sched.step(increment=batch)
                consumed += batch
            return out
        finally:
            nmc.unset_num_microbatches_calculator()


def update_train_iters(cfg: dict) -> int:
    """Megatron-LM's ``update_train_iters`` (training.py) for sample-based training, on the real calculator."""
    gbs, ramp, train_samples = cfg.get("global_batch_size", 1), cfg.get("rampup_batch_size"), cfg["train_samples"]
    if ramp is None:
        return train_samples // gbs
    with drv.quiet():
        nmc.unset_num_microbatches_calculator()
        nmc.init_num_microbatches_calculator(0, ramp, gbs, 1, 1, False)
        try:
            iterations = consumed = 0
            while consumed <= int(ramp[2]) and consumed <= train_samples:
                nmc.update_num_microbatches(consumed, consistency_check=False)
                consumed += nmc.get_current_global_batch_size()
                iterations += 1
            nmc.update_num_microbatches(0, consistency_check=False)
            if train_samples > consumed:
                iterations += (train_samples - consumed) // gbs
            return iterations
        finally:
            nmc.unset_num_microbatches_calculator()


def megatron_groups(overrides: list, lr: float, min_lr: float) -> list:
    """megatron-core's ``_get_param_groups`` for params ``p0, p1, ...`` with ``overrides[i]`` (None: no
    override) on ``p{i}``: merged, grouped and sorted as Megatron does."""
    model = torch.nn.Module()
    keys = {}
    for i, ov in enumerate(overrides):
        model.register_parameter(f"p{i}", torch.nn.Parameter(torch.zeros(2, 2)))
        if ov is not None:
            keys[ParamKey(name=f"p{i}")] = ov
    with drv.quiet():
        return _get_param_groups([model], McOptimizerConfig(lr=lr, min_lr=min_lr), keys)


def check_groups(got: schedules.GroupSchedules, want: dict, k: np.ndarray, cfg: dict) -> None:
    assert isinstance(got, schedules.GroupSchedules) and len(got) == want["lr"].shape[0], cfg
    for i, s in enumerate(got):
        drv.assert_matches(f"lr[{i}]", s.lr(k), want["lr"][i], rtol=RTOL, peak=max(want["lr"][i].max(), cfg["lr"]),
                           context=cfg)
        drv.assert_matches(f"weight_decay[{i}]", s.weight_decay(k), want["weight_decay"][i], rtol=RTOL,
                           peak=max(want["weight_decay"][i].max(), 1e-300), context=cfg)
        assert s.beta1 is None and s.beta2 is None


@st.composite
def group_overrides(draw, cfg):
    """Random ParamGroupOverrides that Megatron runs and npadam accepts (group max_lr >= min_lr >=
    0, max_lr >= lr_warmup_init, end_wd >= start_wd; equal under the 'constant' wd style)."""
    lr, init = cfg["lr"], cfg.get("lr_warmup_init", 0.0)
    wd_style = cfg.get("weight_decay_incr_style", "constant")
    out = []
    for _ in range(draw(st.integers(1, 5))):
        if draw(st.integers(0, 4)) == 0:
            out.append(None)
            continue
        ov = {}
        if draw(st.booleans()):
            ov["max_lr"] = draw(st.floats(max(init, 1e-7), 3 * lr))
        top = ov.get("max_lr", lr)
        if draw(st.booleans()):
            ov["min_lr"] = top * draw(st.sampled_from([0.0, 1.0]) | st.floats(0.0, 1.0))
        elif cfg.get("min_lr", 0.0) > top:
            ov["min_lr"] = top
        if draw(st.booleans()):
            ov["wd_mult"] = draw(st.sampled_from([0.0, 0.5, 2.0]) | st.floats(0.0, 3.0))
        if draw(st.booleans()):
            lo = draw(st.floats(0.0, 0.2))
            ov["start_wd"], ov["end_wd"] = lo, lo if wd_style == "constant" else lo + draw(st.floats(0.0, 0.2))
        out.append(ov)
    return out


@GROUP_SETTINGS
@given(data=st.data(), sample_based=st.booleans())
def test_param_group_overrides(data, sample_based):
    """Groups made by megatron-core's ``_get_param_groups`` from random overrides (max_lr, min_lr,
    start_wd, end_wd, wd_mult), passed as they are in ``param_groups``: one ScheduleSet per group."""
    cfg = data.draw(sample_args() if sample_based else iteration_args())
    overrides = data.draw(group_overrides(cfg))
    groups = megatron_groups(overrides, cfg["lr"], cfg["min_lr"])
    iters = 2 * (cfg.get("train_iters") or -(-cfg["train_samples"] // cfg["global_batch_size"])) + 5
    want = trace_training(cfg, iters, [dict(g) for g in groups])
    check_groups(schedules.from_config("megatron", {**cfg, "param_groups": groups}), want, np.arange(iters), cfg)


def _decoupled_model():
    m = torch.nn.Module()
    m.embedding = torch.nn.Embedding(8, 4)
    m.linear = torch.nn.Linear(4, 4)                        # default group (weight), no-wd group (bias)
    m.output_layer = torch.nn.Linear(4, 8)                  # decoupled (weight), decoupled no-wd (bias)
    for p in (m.embedding.weight, m.output_layer.weight, m.output_layer.bias):
        p.is_embedding_or_output_parameter = True
    return m


@GROUP_SETTINGS
@given(data=st.data(), sample_based=st.booleans(), with_min=st.booleans())
def test_decoupled_lr(data, sample_based, with_min):
    """``decoupled_lr`` / ``decoupled_min_lr`` without explicit groups: ``[default, decoupled]``, equal to
    the first two of megatron-core's standard groups ([default, decoupled, decoupled no-wd, no-wd]);
    the no-weight-decay groups have the same lr and weight decay 0. ``config.param_groups`` on the same
    model gives groups whose schedules match all four."""
    cfg = data.draw(sample_args() if sample_based else iteration_args())
    cfg["decoupled_lr"] = data.draw(st.floats(max(cfg.get("lr_warmup_init", 0.0), 1e-7), 10 * cfg["lr"]))
    if with_min:
        cfg["decoupled_min_lr"] = cfg["decoupled_lr"] * data.draw(st.floats(0.0, 1.0))
    elif cfg["min_lr"] > cfg["decoupled_lr"]:
        cfg["min_lr"] = cfg["decoupled_lr"]
    model = _decoupled_model()
    mc = McOptimizerConfig(lr=cfg["lr"], min_lr=cfg["min_lr"], decoupled_lr=cfg["decoupled_lr"],
                           decoupled_min_lr=cfg.get("decoupled_min_lr"))
    with drv.quiet():
        theirs = _get_param_groups([model], mc, None)
    assert [g.get("wd_mult") for g in theirs] == [1.0, 1.0, 0.0, 0.0]
    iters = 2 * (cfg.get("train_iters") or -(-cfg["train_samples"] // cfg["global_batch_size"])) + 5
    want = trace_training(cfg, iters, [dict(g) for g in theirs])
    k = np.arange(iters)
    got = schedules.from_config("megatron", cfg)
    first_two = {n: v[:2] for n, v in want.items() if n in ("lr", "weight_decay")}
    check_groups(got, first_two, k, cfg)
    np.testing.assert_array_equal(want["lr"][3], got[0].lr(k))        # no-wd default group: same lr
    np.testing.assert_array_equal(want["lr"][2], got[1].lr(k))
    assert not want["weight_decay"][2:].any()
    oc = C.OptimizerConfig(lr=cfg["lr"], min_lr=cfg["min_lr"], decoupled_lr=cfg["decoupled_lr"],
                           decoupled_min_lr=cfg.get("decoupled_min_lr"), weight_decay=cfg.get("weight_decay", 0.01))
    flat = {k_: v for k_, v in cfg.items() if k_ not in ("decoupled_lr", "decoupled_min_lr")}
    check_groups(schedules.from_config("megatron", {**flat, "param_groups": C.param_groups(model, oc)}), want, k,
                 cfg)


@st.composite
def rampup_args(draw):
    """Sample-based configs with ``rampup_batch_size`` (Megatron-LM allows the ramp-up only there)."""
    cfg = draw(sample_args())
    start = draw(st.integers(1, 48))
    inc = draw(st.integers(1, 16))
    gbs = start + inc * draw(st.integers(1, 24))
    ramp = draw(st.integers(1, 60) | st.integers(1, 20 * gbs))
    cfg.update(global_batch_size=gbs, rampup_batch_size=[start, inc, ramp])
    cfg["train_samples"] = draw(st.integers(1, 3 * ramp + 20 * gbs))
    for key in ("lr_decay_samples", "lr_warmup_samples", "lr_wsd_decay_samples"):
        if key in cfg:  # redraw on the scale of this run
            cfg[key] = draw(st.integers(0 if key != "lr_decay_samples" else 1, 2 * cfg["train_samples"]))
    decay = cfg.get("lr_decay_samples", cfg["train_samples"])
    if cfg.get("lr_warmup_samples", 0) >= decay:
        cfg["lr_warmup_samples"] = decay - 1
    return cfg


@GROUP_SETTINGS
@given(cfg=rampup_args(), extra=st.integers(1, 40), decoupled=st.booleans())
def test_rampup_batch_size(cfg, extra, decoupled):
    """The batch size grows from ``start`` by ``increment`` over ``ramp_samples``: the scheduler's
    increment per iteration follows the calculator (consumed samples after k iterations, the batch of
    iteration k), and so do lr and weight decay, per group too; ``steps()["train_iters"]`` is
    ``update_train_iters``."""
    if decoupled:
        cfg["decoupled_lr"] = max(cfg["lr"] / 2, cfg.get("min_lr", 0.0), cfg.get("lr_warmup_init", 0.0))
    train_iters = update_train_iters(cfg)
    iters = train_iters + extra
    groups = [{}, {"max_lr": cfg["decoupled_lr"]}] if decoupled else None
    want = trace_training(cfg, iters, groups)
    got = schedules.from_config("megatron", cfg)
    k = np.arange(iters)
    if decoupled:
        check_groups(got, want, k, cfg)
        lr = got[0].lr
    else:
        drv.assert_matches("lr", got.lr(k), want["lr"][0], rtol=RTOL, peak=cfg["lr"], context=cfg)
        drv.assert_matches("weight_decay", got.weight_decay(k), want["weight_decay"][0], rtol=RTOL,
                           peak=max(want["weight_decay"].max(), 1e-300), context=cfg)
        lr = got.lr
    assert isinstance(lr, MegatronBatchRampup)
    np.testing.assert_array_equal(lr.consumed_samples(k), want["consumed"])
    np.testing.assert_array_equal(lr.batch_size(k), want["batch"])
    assert lr.consumed_samples(iters // 2) == want["consumed"][iters // 2] and lr(iters - 1) == lr(k)[-1]
    sc = C.SchedulerConfig(**{k_: cfg[k_] for k_ in ("train_samples", "global_batch_size", "rampup_batch_size")})
    assert sc.steps()["train_iters"] == train_iters
    h = lr.horizon  # the first iteration whose consumed samples reach the decay length
    decay = cfg.get("lr_decay_samples", cfg["train_samples"])
    assert lr.consumed_samples(h) >= decay and (h == 0 or lr.consumed_samples(h - 1) < decay)


@pytest.mark.parametrize("cfg, mbs, dp", [
    # Megatron-LM's documented example (TrainingConfig.rampup_batch_size): 16 -> 1024 in 126 steps of 8
    ({"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "cosine", "lr_warmup_samples": 50_000, "train_samples": 900_000,
      "global_batch_size": 1024, "rampup_batch_size": [16, 8, 300_000]}, 1, 1),
    # GPT-3 175B (Megatron-LM examples/gpt3/train_gpt3_175b_distributed.sh): 32 -> 1536 over 2M samples
    ({"lr": 6e-5, "min_lr": 6e-6, "lr_decay_style": "cosine", "lr_warmup_samples": 183_105, "train_samples": 3_000_000,
      "lr_decay_samples": 2_600_000, "global_batch_size": 1536, "rampup_batch_size": [32, 32, 2_000_000],
      "weight_decay": 0.1}, 1, 1),
    # micro batches x data parallel (every ramp batch divisible by 2 x 4), WSD, a weight-decay ramp, groups
    ({"lr": 1e-3, "min_lr": 0.0, "lr_decay_style": "WSD", "lr_wsd_decay_style": "minus_sqrt",
      "lr_wsd_decay_samples": 2_000, "train_samples": 12_000, "global_batch_size": 64,
      "rampup_batch_size": [16, 8, 3000],
      "weight_decay_incr_style": "cosine", "start_weight_decay": 0.0, "end_weight_decay": 0.1,
      "lr_warmup_fraction": 0.05, "decoupled_lr": 2e-3, "decoupled_min_lr": 1e-5}, 2, 4),
    # samples per increment below one batch: stages are skipped (the batch jumps by several increments)
    ({"lr": 1e-3, "train_samples": 500, "global_batch_size": 40, "rampup_batch_size": [10, 1, 45],
      "lr_decay_style": "linear"}, 1, 1),
    # 11 * (122 / 11) is 122.00000000000001 in floats while 122 / (122 / 11) is 11.0: the last stage starts
    # one sample before the rounded-up boundary estimate (RampupTable's downward correction)
    ({"lr": 1e-3, "train_samples": 400, "global_batch_size": 12, "rampup_batch_size": [1, 1, 122],
      "lr_decay_style": "cosine", "lr_warmup_samples": 30}, 1, 1),
], ids=["documented-example", "gpt3-175b", "mbs-dp-wsd-decoupled", "skipped-stages", "float-boundary"])
def test_rampup_cases(cfg, mbs, dp):
    iters = update_train_iters(cfg) + 10
    groups = None
    if "decoupled_lr" in cfg:
        groups = [{}, {"max_lr": cfg["decoupled_lr"], "min_lr": cfg["decoupled_min_lr"]}]
    want = trace_training(cfg, iters, groups, micro_batch_size=mbs, data_parallel_size=dp)
    got = schedules.from_config("megatron", cfg)
    sets = got if groups else [got]
    for i, s in enumerate(sets):
        drv.assert_matches("lr", s.lr(np.arange(iters)), want["lr"][i], rtol=RTOL, peak=cfg["lr"], context=cfg)
        drv.assert_matches("weight_decay", s.weight_decay(np.arange(iters)), want["weight_decay"][i], rtol=RTOL,
                           peak=max(want["weight_decay"].max(), 1e-300), context=cfg)
    np.testing.assert_array_equal(sets[0].lr.consumed_samples(np.arange(iters)), want["consumed"])
    lr = sets[0].lr
    for copy in (schedules.from_dict(lr.to_dict()), pickle.loads(pickle.dumps(lr))):
        assert copy == lr and np.array_equal(copy(np.arange(iters)), lr(np.arange(iters)))


def test_rampup_documented_numbers():
    """Megatron-LM's own description: 16 -> 1024 by 8 is (1024 - 16) / 8 = 126 increments of about
    300000 / 126 = 2380 samples."""
    lr = schedules.from_config("megatron", {"lr": 1e-3, "train_samples": 10**6, "global_batch_size": 1024,
                                            "rampup_batch_size": [16, 8, 300_000]}).lr
    t = lr.table
    assert t.samples_per_increment == 300_000 / 126 and int(t.samples_per_increment) == 2380
    assert list(t.batch) == list(range(16, 1025, 8))                     # every increment once
    assert lr.batch_size(0) == 16 and lr.batch_size(10**9) == 1024
    assert 2**62 - 1024 < lr.consumed_samples(2**62) <= 2**62           # saturates instead of wrapping
    assert lr(2**62) == 0.0                                              # min_lr, far past the decay
    # without a ramp-up too: k * global_batch_size would pass int64 at k = 2**62
    far = schedules.from_config("megatron", {**BASE, "global_batch_size": 1024, "weight_decay_incr_style": "linear",
                                             "start_weight_decay": 0.0, "end_weight_decay": 0.1})
    assert far.lr(2**62) == BASE["min_lr"] and far.weight_decay(2**62) == 0.1


def test_lr_mult_is_not_read_by_megatron_core_0_16():
    """The reason npadam rejects ``lr_mult != 1``: megatron-core 0.16's scheduler ignores it."""
    cfg = {**BASE, "lr_decay_style": "cosine"}
    want = trace_training(cfg, 50, [{"lr_mult": 1.0}, {"lr_mult": 0.5}])
    np.testing.assert_array_equal(want["lr"][0], want["lr"][1])
    with pytest.raises(ValueError, match="lr_mult=0.5 has no effect in megatron-core >= 0.16"):
        schedules.from_config("megatron", {**cfg, "param_groups": [{"lr_mult": 0.5}]})
    got = schedules.from_config("megatron", {**cfg, "param_groups": [{"lr_mult": 1.0}]})
    np.testing.assert_array_equal(got[0].lr(np.arange(50)), schedules.from_config("megatron", cfg).lr(np.arange(50)))


SAMPLES = {"lr": 3e-4, "train_samples": 1000, "global_batch_size": 32, "lr_warmup_samples": 10}

GROUP_REJECTED = [
    # (args, Megatron (core, or Megatron-LM's argument checks where noted) also raises)
    ({**BASE, "param_groups": [{"start_wd": 0.0, "end_wd": 0.1}]}, True),      # 'constant' wd style: get_wd asserts
    ({**BASE, "param_groups": [{"max_lr": 1e-5}]}, False),                       # group max_lr < min_lr (3e-5)
    ({**BASE, "param_groups": [{"min_lr": -1e-6}]}, False),
    ({**BASE, "lr_warmup_init": 1e-4, "param_groups": [{"max_lr": 5e-5, "min_lr": 0.0}]}, False),   # below init
    ({**BASE, "weight_decay_incr_style": "linear", "start_weight_decay": 0.0, "end_weight_decay": 0.1,
      "param_groups": [{"start_wd": 0.2, "end_wd": 0.1}]}, False),               # a falling group weight decay
    ({**BASE, "param_groups": [{"wd_mult": -1.0}]}, False),
    ({**BASE, "param_groups": [{"lr": 1e-3}]}, False),                           # written by the scheduler
    ({**BASE, "param_groups": [{"weight_decay": 0.0}]}, False),
    ({**BASE, "param_groups": [{"max-lr": 1e-3, "maxlr": 1}]}, False),           # misspelled
    ({**BASE, "param_groups": []}, False),
    ({**BASE, "param_groups": {"max_lr": 1e-3}}, False),                         # not a list
    ({**BASE, "param_groups": [1e-3]}, False),
    ({**BASE, "decoupled_lr": 1e-3, "param_groups": [{}]}, False),               # ambiguous: drop one
    ({**BASE, "decoupled_min_lr": 1e-5}, False),                                 # Megatron ignores it silently
    ({**BASE, "decoupled_lr": 1e-5}, False),                                     # decoupled max < min_lr (3e-5)
    ({**BASE, "decoupled_lr": -1e-3}, False),
    ({**BASE, "decoupled_lr": 1e-3, "decoupled_min_lr": 2e-3}, False),
    ({**BASE, "warmup": 10}, False),                       # Megatron-LM: '--warmup argument is no longer valid'
    ({**BASE, "rampup_batch_size": [1, 1, 10]}, False),    # Megatron-LM: 'expected no batch-size rampup for iter...'
    ({**SAMPLES, "rampup_batch_size": [64, 8, 100]}, True),                      # start > global batch size
    ({**SAMPLES, "rampup_batch_size": [8, 5, 100]}, True),                       # 32 - 8 not a multiple of 5
    ({**SAMPLES, "rampup_batch_size": [32, 8, 100]}, True),                      # no increments: 0-division
    ({**SAMPLES, "rampup_batch_size": [8, 8, 0]}, True),                         # no ramp samples: 0-division
    ({**SAMPLES, "rampup_batch_size": [0, 8, 100]}, True),
    ({**SAMPLES, "rampup_batch_size": [8, 0, 100]}, True),
    ({**SAMPLES, "rampup_batch_size": [8, 8, -1]}, True),
    ({**SAMPLES, "rampup_batch_size": [8, 8]}, True),
    ({**SAMPLES, "rampup_batch_size": [8.5, 8, 100]}, False),
    ({**SAMPLES, "rampup_batch_size": "8 8 100"}, False),
]


@pytest.mark.parametrize("cfg,mg_raises", GROUP_REJECTED, ids=lambda x: str(x)[-90:] if isinstance(x, dict) else None)
def test_groups_and_rampup_rejected(cfg, mg_raises):
    with pytest.raises(ValueError):
        schedules.from_config("megatron", cfg)
    if mg_raises:
        groups = [dict(g) for g in cfg["param_groups"]] if "param_groups" in cfg else None
        assert drv.raises(lambda: trace_training(cfg, 5, groups)) is not None


def test_group_labels_in_messages():
    with pytest.raises(ValueError, match=r"megatron param_groups\[1\]: Megatron requires lr >= min_lr"):
        schedules.from_config("megatron", {**BASE, "param_groups": [{}, {"max_lr": 1e-5}]})
    with pytest.raises(ValueError, match=r"decoupled group .*: Megatron requires lr >= min_lr"):
        schedules.from_config("megatron", {**BASE, "decoupled_lr": 1e-5})
    with pytest.raises(ValueError, match=r"unknown megatron param_groups\[0\] parameter 'maxlr' \(did you mean"):
        schedules.from_config("megatron", {**BASE, "param_groups": [{"maxlr": 1e-3}]})
    with pytest.raises(ValueError, match="use --lr-warmup-fraction instead"):
        schedules.from_config("megatron", {**BASE, "warmup": 10})
    assert isinstance(schedules.from_config("megatron", {**BASE, "warmup": None}), schedules.ScheduleSet)


def test_group_schedules_drive_npadam_groups():
    """Megatron-shaped groups and their GroupSchedules run an npadam optimizer: group i gets
    schedule i, the no-weight-decay group a weight decay of 0."""
    import npadam

    oc = C.OptimizerConfig(lr=1e-3, min_lr=1e-5, decoupled_lr=3e-3, weight_decay=0.1)
    sc = C.SchedulerConfig(train_samples=4000, global_batch_size=32, rampup_batch_size=[8, 8, 1000],
                           lr_warmup_samples=100, lr_decay_style="cosine")
    params = {"embedding.weight": np.ones((6, 4), np.float32), "linear.weight": np.ones((4, 4), np.float32),
              "linear.bias": np.ones(4, np.float32)}
    groups = C.param_groups(params, oc, decoupled=["embedding.weight"])
    gs = C.schedules_for(oc, sc, groups)
    assert [g["param_names"] for g in groups] == [["linear.weight"], ["embedding.weight"], ["linear.bias"]]
    opt = npadam.AdamW([{"params": g["params"]} for g in groups], lr=gs, kernel="reference")
    for k in range(3):
        assert [g["lr"] for g in opt.param_groups] == [float(s.lr(k)) for s in gs]
        assert [g["weight_decay"] for g in opt.param_groups] == [float(gs[0].weight_decay(k)),
                                                                 float(gs[1].weight_decay(k)), 0.0]
        opt.step([np.ones_like(p) for g in groups for p in g["params"]])
