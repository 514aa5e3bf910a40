"""npadam.LossScaler: a finite, normal scale under any overflow run; checked construction and state
dicts; Megatron's hysteresis, floor and constant scale; step-by-step parity with megatron-core's
DynamicGradScaler / ConstantGradScaler and torch.amp.GradScaler.

Megatron allocates its scaler tensors with ``device='cuda'``; here its module sees a ``torch``
whose ``tensor`` drops the device argument, so the real class runs on the CPU.
"""

from __future__ import annotations

import contextlib
import io
import math
from typing import Any, Iterator
from unittest import mock

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

import npadam
from npadam.scaler import MAX_SCALE, MIN_SCALE

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

torch = pytest.importorskip("torch")

SETTINGS = settings(max_examples=drv.examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
F32_TINY = float(np.finfo(np.float32).tiny)


def f32(x: float) -> float:
    with np.errstate(over="ignore", under="ignore"):
        return float(np.float32(x))


def is_normal_f32(x: float) -> bool:
    return math.isfinite(x) and x >= F32_TINY and f32(x) == x


# --------------------------------------------------------------------------- the frameworks' scalers
def megatron_grad_scaler() -> Any:
    """``megatron.core.optimizer.grad_scaler`` (skips the test without megatron-core)."""
    drv.importorskip("megatron.core")
    with drv.quiet():
        from megatron.core.optimizer import grad_scaler
    return grad_scaler


class _CpuTorch:
    """``torch`` as Megatron's scaler module sees it: ``torch.tensor(..., device='cuda')`` lands on the CPU."""

    def __getattr__(self, name: str) -> Any:
        return getattr(torch, name)

    @staticmethod
    def tensor(data: Any, **kw: Any) -> Any:
        kw.pop("device", None)
        return torch.tensor(data, **kw)


@contextlib.contextmanager
def megatron_on_cpu() -> Iterator[Any]:
    gs = megatron_grad_scaler()
    with mock.patch.object(gs, "torch", _CpuTorch()):
        yield gs


def torch_update(scaler: Any, param: Any, opt: Any, found_inf: bool) -> None:
    """One iteration of torch's AMP loop on a CPU GradScaler: step (unscale + inf check) then update."""
    param.grad = torch.full((1,), math.inf if found_inf else 1.0)
    scaler.scale(param.sum())  # creates the scale tensors on first use
    scaler.step(opt)
    scaler.update()


def overflows(rate: float, seed: int, n: int) -> list[bool]:
    return [bool(x) for x in np.random.default_rng(seed).random(n) < rate]


sequences = st.tuples(st.sampled_from([0.0, 0.02, 0.1, 0.3, 0.6, 0.95, 1.0]), st.integers(0, 2**32 - 1),
                      st.integers(1, 300))


# --------------------------------------------------------------------------- regressions: the scale stays usable
def test_long_overflow_run_keeps_scale_and_inverse_normal_and_steps_finite():
    scaler = npadam.LossScaler()
    p = np.ones(8, np.float32)
    opt = npadam.AdamW([p], lr=1e-3, loss_scaler=scaler)
    bad = np.full(8, np.inf, np.float32)
    for k in range(300):
        info = opt.step([bad])
        assert info.skipped
        assert is_normal_f32(scaler.scale) and is_normal_f32(scaler.inv_scale), (k, scaler)
    assert scaler.scale == MIN_SCALE == F32_TINY and scaler.inv_scale == MAX_SCALE
    info = opt.step([np.full(8, np.float32(MIN_SCALE))])  # a finite step right after the run
    assert not info.skipped and np.isfinite(p).all() and (p < 1).all()
    npadam.LossScaler().load_state_dict(scaler.state_dict())  # its own state dict still loads


def test_growth_stops_at_max_scale():
    scaler = npadam.LossScaler(init_scale=2.0**120, growth_interval=1, growth_factor=16.0)
    for _ in range(5):
        scaler.update(False)
    assert scaler.scale == MAX_SCALE and is_normal_f32(scaler.inv_scale)
    capped = npadam.LossScaler(init_scale=3.0, growth_interval=1, max_scale=10.0, min_scale=2.5)
    capped.update(False)
    capped.update(False)
    assert capped.scale == 10.0
    for _ in range(3):
        capped.update(True)
    assert capped.scale == 2.5


@pytest.mark.parametrize("kw, exc, text", [
    ({"init_scale": 1e39}, ValueError, "1e+39"),
    ({"init_scale": 3e38}, ValueError, "3e+38"),  # a float32, but past max_scale
    ({"init_scale": float("inf")}, ValueError, "inf"),
    ({"init_scale": float("nan")}, ValueError, "nan"),
    ({"init_scale": 0.0}, ValueError, "0.0"),
    ({"init_scale": -1.0}, ValueError, "-1.0"),
    ({"init_scale": "65536"}, TypeError, "'65536'"),
    ({"init_scale": True}, TypeError, "True"),
    ({"init_scale": 0.5, "min_scale": 1.0}, ValueError, "0.5"),
    ({"init_scale": 100.0, "max_scale": 10.0}, ValueError, "100.0"),
    ({"min_scale": 0.0}, ValueError, "min_scale"),
    ({"min_scale": 1e-39}, ValueError, "1e-39"),  # subnormal
    ({"max_scale": 2.0**127}, ValueError, "max_scale"),  # 1/max_scale would be subnormal
    ({"min_scale": 4.0, "max_scale": 2.0, "init_scale": 3.0}, ValueError, "max_scale"),
    ({"hysteresis": 0}, ValueError, "hysteresis"),
    ({"hysteresis": True}, TypeError, "hysteresis"),
    ({"hysteresis": 1.5}, ValueError, "1.5"),
    ({"dynamic": "no"}, TypeError, "'no'"),
    ({"enabled": 1}, TypeError, "enabled"),
    ({"growth_factor": 1.0}, ValueError, "growth_factor"),
    ({"backoff_factor": 1.0}, ValueError, "backoff_factor"),
    ({"growth_interval": 0}, ValueError, "growth_interval"),
])
def test_constructor_rejects(kw, exc, text):
    with pytest.raises(exc, match=text.replace("+", r"\+").replace(".", r"\.")):
        npadam.LossScaler(**kw)


def test_defaults_and_bounds():
    s = npadam.LossScaler()
    assert (s.min_scale, s.max_scale, s.hysteresis, s.dynamic) == (2.0**-126, 2.0**126, 1, True)
    assert MIN_SCALE == F32_TINY and MAX_SCALE == 1 / F32_TINY
    for v in (MIN_SCALE, MAX_SCALE):
        assert is_normal_f32(v) and is_normal_f32(f32(1 / v))
    edge = npadam.LossScaler(init_scale=MAX_SCALE, min_scale=MAX_SCALE)
    assert edge.inv_scale == MIN_SCALE
    with pytest.raises(TypeError, match="found_inf"):
        s.update(1)


# --------------------------------------------------------------------------- state dicts
def _busy_scaler() -> npadam.LossScaler:
    s = npadam.LossScaler(init_scale=1024.0, growth_interval=5, hysteresis=3, min_scale=1.0, max_scale=2.0**20)
    for f in (False, True, False, False, True, True, False):
        s.update(f)
    return s


def test_state_dict_round_trips_all_fields_and_is_weights_only_loadable():
    s = _busy_scaler()
    sd = s.state_dict()
    assert set(sd) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker", "enabled",
                       "dynamic", "min_scale", "max_scale", "hysteresis", "hysteresis_tracker"}
    assert all(type(v) in (float, int, bool) for v in sd.values())
    assert (sd["scale"], sd["_growth_tracker"], sd["hysteresis_tracker"], sd["hysteresis"]) == (512.0, 1, 0, 3)
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=True)
    clone = npadam.LossScaler()
    clone.load_state_dict(loaded)
    assert clone.state_dict() == sd and repr(clone) == repr(s)
    for f in (True, False, False, True):
        s.update(f)
        clone.update(f)
        assert clone.state_dict() == s.state_dict()
    const = npadam.LossScaler(init_scale=8.0, dynamic=False)
    other = npadam.LossScaler()
    other.load_state_dict(const.state_dict())
    assert other.dynamic is False and other.scale == 8.0
    off = npadam.LossScaler(enabled=False)
    other.load_state_dict(off.state_dict())
    assert other.enabled is False and other.scale == 1.0


def test_old_state_dict_without_new_keys_loads_with_defaults():
    old = {"scale": 256.0, "growth_factor": 2.0, "backoff_factor": 0.5, "growth_interval": 100,
           "_growth_tracker": 7, "enabled": True}  # npadam before min/max/hysteresis/dynamic
    s = npadam.LossScaler(init_scale=4.0, hysteresis=4, min_scale=2.0, dynamic=False)
    s.load_state_dict(old)
    assert s.state_dict() == {**old, "dynamic": True, "min_scale": MIN_SCALE, "max_scale": MAX_SCALE,
                              "hysteresis": 1, "hysteresis_tracker": 1}


def test_repr_shows_every_field():
    r = repr(_busy_scaler())
    for part in ("scale=512.0", "growth_factor=2.0", "backoff_factor=0.5", "growth_interval=5", "hysteresis=3",
                 "min_scale=1.0", "max_scale=1048576.0", "dynamic=True", "enabled=True", "growth_tracker=1",
                 "hysteresis_tracker=0"):
        assert part in r, (part, r)


def _with(**kw: Any) -> Any:
    return lambda sd: {**sd, **kw}


def _without(key: str) -> Any:
    return lambda sd: {k: v for k, v in sd.items() if k != key}


def _is(value: Any) -> Any:
    return lambda sd: value


BAD_STATE_DICTS = [
    (_with(scale=1e39), ValueError, "scale", "1e+39"),
    (_with(scale="65536"), TypeError, "scale", "'65536'"),
    (_with(scale=float("nan")), ValueError, "scale", "nan"),
    (_with(scale=float("inf")), ValueError, "scale", "inf"),
    (_with(scale=0.0), ValueError, "scale", "0.0"),
    (_with(scale=-512.0), ValueError, "scale", "-512.0"),
    (_with(scale=True), TypeError, "scale", "True"),
    (_with(scale=2.0**21), ValueError, "scale", "2097152.0"),  # past this dict's max_scale
    (_with(scale=torch.tensor([1.0, 2.0])), TypeError, "scale", "tensor"),
    (_with(growth_factor=True), TypeError, "growth_factor", "True"),
    (_with(growth_factor="2"), TypeError, "growth_factor", "'2'"),
    (_with(backoff_factor=1.5), ValueError, "backoff_factor", "1.5"),
    (_with(growth_interval=True), TypeError, "growth_interval", "True"),
    (_with(growth_interval=0), ValueError, "growth_interval", "0"),
    (_with(_growth_tracker=-1), ValueError, "_growth_tracker", "-1"),
    (_with(_growth_tracker=1.5), TypeError, "_growth_tracker", "1.5"),
    (_with(_growth_tracker=2.0), TypeError, "_growth_tracker", "2.0"),
    (_with(_growth_tracker=True), TypeError, "_growth_tracker", "True"),
    (_with(_growth_tracker="3"), TypeError, "_growth_tracker", "'3'"),
    (_with(_growth_tracker=5), ValueError, "_growth_tracker", "5"),  # == growth_interval: unreachable
    (_with(hysteresis_tracker=4), ValueError, "hysteresis_tracker", "4"),  # > hysteresis
    (_with(hysteresis_tracker=False), TypeError, "hysteresis_tracker", "False"),
    (_with(hysteresis=0), ValueError, "hysteresis", "0"),
    (_with(enabled=1), TypeError, "enabled", "1"),
    (_with(enabled=False), ValueError, "scale", "512.0"),  # a disabled scaler holds 1.0
    (_with(dynamic="False"), TypeError, "dynamic", "'False'"),
    (_with(min_scale=0.0), ValueError, "min_scale", "0.0"),
    (_with(min_scale=1024.0), ValueError, "scale", "512.0"),  # scale below min_scale
    (_with(max_scale=float("inf")), ValueError, "max_scale", "inf"),
    (_with(hysteresis_tracker=0, growth_tracker=0), ValueError, "growth_tracker", "unknown"),
    (_with(hystersis=2), ValueError, "hystersis", "unknown"),
    (_without("scale"), ValueError, "scale", "missing"),
    (_without("_growth_tracker"), ValueError, "_growth_tracker", "missing"),
    (_without("growth_interval"), ValueError, "growth_interval", "missing"),
    (_is({}), ValueError, "scale", "missing"),
    (_is({"scale": 1.0, "growth_tracker": 0}), ValueError, "hysteresis_tracker", "missing"),  # Megatron's, short
    (_is([("scale", 1.0)]), TypeError, "mapping", "list"),
    (_is(None), TypeError, "mapping", "NoneType"),
]


@pytest.mark.parametrize("edit, exc, key, value", BAD_STATE_DICTS,
                         ids=[f"{key}={value}" for _, _, key, value in BAD_STATE_DICTS])
def test_load_state_dict_rejects_and_changes_nothing(edit, exc, key, value):
    s = _busy_scaler()
    before = s.state_dict()
    with pytest.raises(exc) as info:
        s.load_state_dict(edit(s.state_dict()))
    msg = str(info.value)
    assert key in msg and value in msg, msg
    assert s.state_dict() == before


def test_optimizer_state_dict_with_bad_scaler_state_is_rejected_before_any_change():
    p = np.ones(4, np.float32)
    scaler = npadam.LossScaler(init_scale=64.0, hysteresis=2)
    opt = npadam.AdamW([p], lr=1e-2, loss_scaler=scaler)
    opt.step([np.full(4, 64.0, np.float32)])
    sd = opt.state_dict()
    before = (p.copy(), scaler.state_dict(), opt.step_count)
    for bad in ("65536", 1e39, 0.0):
        broken = {**sd, "npadam": {**sd["npadam"], "loss_scaler": {**sd["npadam"]["loss_scaler"], "scale": bad}}}
        with pytest.raises((ValueError, TypeError), match="scale"):
            opt.load_state_dict(broken)
        assert (p.tobytes(), scaler.state_dict(), opt.step_count) == (before[0].tobytes(), *before[1:])
    scaler.update(True)
    opt2 = npadam.AdamW([p.copy()], lr=1e-2, loss_scaler=npadam.LossScaler(hysteresis=2))
    opt2.load_state_dict(opt.state_dict())
    assert opt2.loss_scaler.state_dict() == scaler.state_dict()


def test_loads_torch_gradscaler_state_dicts_and_torch_loads_ours():
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_factor=3.0, backoff_factor=0.25,
                                  growth_interval=7)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    for f in (False, True, False, False):
        torch_update(theirs, p, opt, f)
    sd = theirs.state_dict()
    assert set(sd) == {"scale", "growth_factor", "backoff_factor", "growth_interval", "_growth_tracker"}
    assert type(sd["scale"]) is float and type(sd["_growth_tracker"]) is int
    ours = npadam.LossScaler(hysteresis=3, min_scale=1.0)
    ours.load_state_dict(sd)  # torch's scaler has our defaults' semantics
    assert ours.state_dict() == {**sd, "enabled": True, "dynamic": True, "min_scale": MIN_SCALE,
                                 "max_scale": MAX_SCALE, "hysteresis": 1, "hysteresis_tracker": 1}
    for f in (False, False, True, False, False, False, False, False, False, False):
        torch_update(theirs, p, opt, f)
        ours.update(f)
        assert ours.scale == theirs.get_scale() and ours.growth_tracker == theirs._get_growth_tracker()
    back = torch.amp.GradScaler("cpu")
    back.load_state_dict(ours.state_dict())  # torch reads its five keys from ours
    torch_update(back, p, opt, True)
    ours.update(True)
    assert back.get_scale() == ours.scale
    # torch.cuda.amp.GradScaler is torch.amp.GradScaler("cuda"): the same state dict, and {} when disabled
    with pytest.raises(ValueError, match="disabled torch GradScaler"):
        ours.load_state_dict(torch.amp.GradScaler("cpu", enabled=False).state_dict())


def test_loads_megatron_dynamic_grad_scaler_state_dicts():
    with megatron_on_cpu() as gs:
        meg = gs.DynamicGradScaler(initial_scale=2.0**12, min_scale=4.0, growth_factor=2.0, backoff_factor=0.5,
                                   growth_interval=3, hysteresis=2)
    for f in (True, False, True, True):
        meg.update(f)
    sd = meg.state_dict()
    assert set(sd) == {"scale", "growth_tracker", "hysteresis_tracker"} and isinstance(sd["scale"], torch.Tensor)
    ours = npadam.LossScaler(init_scale=2.0**12, min_scale=4.0, growth_interval=3, hysteresis=2)
    ours.load_state_dict(sd)  # Megatron's dict carries no configuration: ours is kept
    assert (ours.scale, ours.growth_tracker, ours.hysteresis_tracker) == (2.0**10, 0, -1)
    assert (ours.min_scale, ours.growth_interval, ours.hysteresis) == (4.0, 3, 2)
    for f in (False, False, False, True, True, False):
        meg.update(f)
        ours.update(f)
        assert ours.scale == meg.scale.item() and ours.hysteresis_tracker == meg._hysteresis_tracker
    before = ours.state_dict()
    for bad, key in (({**sd, "hysteresis_tracker": 3}, "hysteresis_tracker"),  # > this scaler's hysteresis
                     ({**sd, "scale": torch.tensor([2.0])}, "scale"),  # < min_scale
                     ({**sd, "scale": "4096"}, "scale"),
                     ({**sd, "growth_tracker": -2}, "growth_tracker"),
                     ({**sd, "growth_factor": 2.0}, "growth_factor")):
        with pytest.raises((ValueError, TypeError), match=key):
            ours.load_state_dict(bad)
        assert ours.state_dict() == before
    with pytest.raises(ValueError, match="disabled"):
        npadam.LossScaler(enabled=False).load_state_dict(sd)


# --------------------------------------------------------------------------- hysteresis and the constant scale
def test_hysteresis_rules_by_hand():
    s = npadam.LossScaler(init_scale=64.0, growth_interval=2, hysteresis=2, min_scale=16.0)
    trace = []
    for f in (True, False, True, True, True, False, False, True, False, False, False, False):
        s.update(f)
        trace.append((s.scale, s.growth_tracker, s.hysteresis_tracker))
    assert trace == [
        (64.0, 0, 1),   # first overflow: hysteresis absorbs it
        (64.0, 1, 1),   # a good step does not refill the hysteresis
        (32.0, 0, 0),   # second overflow since the last growth: back off
        (16.0, 0, -1),  # spent: every overflow backs off ...
        (16.0, 0, -2),  # ... down to min_scale
        (16.0, 1, -2),
        (32.0, 0, 2),   # growth_interval good steps: grow, refill the hysteresis
        (32.0, 0, 1),
        (32.0, 1, 1),
        (64.0, 0, 2),
        (64.0, 1, 2),
        (128.0, 0, 2),
    ]


def test_constant_scale_never_changes_and_overflow_steps_are_still_skipped():
    scaler = npadam.LossScaler(init_scale=512.0, dynamic=False, growth_interval=1)
    p = np.ones(4, np.float32)
    opt = npadam.AdamW([p], lr=1e-2, loss_scaler=scaler)
    with megatron_on_cpu() as gs:
        meg = gs.ConstantGradScaler(512.0)
    for k in range(6):
        bad = k % 2 == 0
        g = np.full(4, np.inf if bad else 512.0, np.float32)
        info = opt.step([g])
        meg.update(bad)
        assert info.skipped is bad and info.loss_scale == 512.0
        assert scaler.scale == meg.scale.item() == 512.0 and scaler.inv_scale == meg.inv_scale.item()
    assert opt.step_count == 3 and scaler.growth_tracker == 0 and scaler.hysteresis_tracker == 1


# --------------------------------------------------------------------------- parity with the frameworks
@st.composite
def megatron_configs(draw: Any) -> dict[str, Any]:
    f32s = {"width": 32, "allow_nan": False, "allow_infinity": False}
    init = draw(st.floats(2.0**-20, 2.0**40, **f32s))
    return {"initial_scale": init,
            "min_scale": draw(st.one_of(st.just(MIN_SCALE), st.floats(MIN_SCALE, init, **f32s))),
            "max_scale": draw(st.one_of(st.just(MAX_SCALE), st.floats(init, MAX_SCALE, **f32s))),
            "growth_factor": draw(st.one_of(st.just(2.0), st.floats(1.0, 64.0, exclude_min=True, **f32s))),
            "backoff_factor": draw(st.one_of(st.just(0.5), st.floats(0.0, 1.0, exclude_min=True, exclude_max=True,
                                                                     **f32s))),
            "growth_interval": draw(st.integers(1, 20)), "hysteresis": draw(st.integers(1, 6))}


@SETTINGS
@given(cfg=megatron_configs(), seq=sequences, reload_at=st.integers(0, 300))
def test_matches_megatron_dynamic_grad_scaler(cfg, seq, reload_at):
    """Megatron's DynamicGradScaler step for step (scale, inverse scale, both trackers); npadam adds
    the ceiling max_scale, so Megatron's scale is capped there too when it passes it."""
    with megatron_on_cpu() as gs:
        meg = gs.DynamicGradScaler(**{k: v for k, v in cfg.items() if k != "max_scale"})
    ours = npadam.LossScaler(init_scale=cfg["initial_scale"], min_scale=cfg["min_scale"], max_scale=cfg["max_scale"],
                             growth_factor=cfg["growth_factor"], backoff_factor=cfg["backoff_factor"],
                             growth_interval=cfg["growth_interval"], hysteresis=cfg["hysteresis"])
    assert ours.scale == meg.scale.item()
    for k, found_inf in enumerate(overflows(*seq)):
        meg.update(found_inf)
        ours.update(found_inf)
        if meg.scale.item() > ours.max_scale:  # Megatron has no ceiling (it even reaches inf)
            assert ours.scale == ours.max_scale, (k, cfg)
            meg._scale = torch.tensor([ours.max_scale], dtype=torch.float32)
        assert ours.scale == meg.scale.item(), (k, cfg, ours)
        assert ours.inv_scale == meg.inv_scale.item()
        assert (ours.growth_tracker, ours.hysteresis_tracker) == (meg._growth_tracker, meg._hysteresis_tracker)
        assert is_normal_f32(ours.scale) and is_normal_f32(ours.inv_scale)
        if k == reload_at:  # Megatron's own state dict, and ours through torch.save, resume identically
            clone = npadam.LossScaler(init_scale=ours.scale, min_scale=ours.min_scale, max_scale=ours.max_scale,
                                      growth_factor=cfg["growth_factor"], backoff_factor=cfg["backoff_factor"],
                                      growth_interval=cfg["growth_interval"], hysteresis=cfg["hysteresis"])
            clone.load_state_dict(meg.state_dict())
            assert clone.state_dict() == ours.state_dict()
            buf = io.BytesIO()
            torch.save(ours.state_dict(), buf)
            buf.seek(0)
            ours = npadam.LossScaler()
            ours.load_state_dict(torch.load(buf, weights_only=True))


@st.composite
def torch_configs(draw: Any) -> dict[str, Any]:
    # growth_factor <= 2: torch then never declines a growth for overflowing float32 (its scale is at
    # most 2**126 here, which it may double), so its rule, capped to [2**-126, 2**126], is npadam's.
    return {"init_scale": draw(st.floats(2.0**-30, 2.0**60)),
            "growth_factor": draw(st.one_of(st.just(2.0), st.floats(1.0, 2.0, exclude_min=True))),
            "backoff_factor": draw(st.one_of(st.just(0.5), st.floats(0.0, 1.0, exclude_min=True, exclude_max=True))),
            "growth_interval": draw(st.integers(1, 20))}


@SETTINGS
@given(cfg=torch_configs(), seq=sequences)
def test_matches_torch_gradscaler(cfg, seq):
    """torch.amp.GradScaler on the CPU, driven through its own step/update, step for step: with the
    defaults (hysteresis=1, min/max_scale) npadam is torch's rule while torch's scale stays within
    [2**-126, 2**126]; outside, npadam holds the bound (torch goes subnormal, to 0, or past 2**126)."""
    theirs = torch.amp.GradScaler("cpu", **cfg)
    ours = npadam.LossScaler(**cfg)
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=0.0)
    for k, found_inf in enumerate(overflows(*seq)):
        torch_update(theirs, p, opt, found_inf)
        ours.update(found_inf)
        t = theirs.get_scale()
        if not MIN_SCALE <= t <= MAX_SCALE:
            assert ours.scale == (MIN_SCALE if t < MIN_SCALE else MAX_SCALE), (k, cfg, t)
            theirs._scale.fill_(ours.scale)
        else:
            assert ours.scale == t, (k, cfg, ours)
        assert ours.growth_tracker == theirs._get_growth_tracker()
        assert is_normal_f32(ours.scale) and is_normal_f32(ours.inv_scale)


def test_growth_past_float32_is_capped_where_torch_declines_it():
    """The documented difference at the top: torch keeps a scale whose growth overflows float32,
    npadam takes max_scale."""
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0**125, growth_factor=16.0, growth_interval=1)
    ours = npadam.LossScaler(init_scale=2.0**125, growth_factor=16.0, growth_interval=1)
    p = torch.nn.Parameter(torch.zeros(1))
    torch_update(theirs, p, torch.optim.SGD([p], lr=0.0), False)
    ours.update(False)
    assert theirs.get_scale() == 2.0**125 and ours.scale == MAX_SCALE
