"""Building blocks against the scalar reference oracle, over random parameters."""

from __future__ import annotations

import json
import pickle

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

from npadam import schedules as S
from npadam.reference import schedules as R

lrs = st.floats(1e-6, 1.0)
small = st.floats(0.0, 1e-3)
steps_ = st.integers(1, 5_000)
SETTINGS = settings(max_examples=300, deadline=None)


@st.composite
def block_cases(draw):
    """(npadam schedule, reference function of k, value scale, horizon) for every block."""
    name = draw(st.sampled_from(sorted(CASES)))
    return CASES[name](draw)


def _wc(draw):
    total = draw(st.integers(2, 5_000))
    kw = dict(peak=draw(lrs), warmup_steps=draw(st.integers(0, total - 1)), total_steps=total,
              final=draw(small), init=draw(small))
    return S.warmup_cosine(**kw), lambda k: R.warmup_cosine(k, **kw), kw["peak"], total


def _wsd(draw):
    total = draw(st.integers(2, 5_000))
    warm = draw(st.integers(0, total - 1))
    kw = dict(peak=draw(lrs), warmup_steps=warm, total_steps=total,
              decay_steps=draw(st.integers(1, total - warm)), final=draw(small), init=draw(small),
              decay=draw(st.sampled_from(["linear", "cosine", "exponential", "minus_sqrt", "1-sqrt"])))
    return S.wsd(**kw), lambda k: R.wsd(k, **kw), kw["peak"], total


def _simple(ctor, ref, **strats):
    def make(draw):
        kw = {k: draw(v) for k, v in strats.items()}
        horizon = kw.get("steps", kw.get("total_steps", kw.get("period", 1000)))
        scale = max(abs(v) for v in kw.values() if isinstance(v, float)) if any(
            isinstance(v, float) for v in kw.values()) else 1.0
        return ctor(**kw), lambda k: ref(k, **kw), scale, horizon
    return make


def _warmup(draw):
    inner = dict(init=draw(lrs), steps=draw(steps_), final=draw(small))
    kw = dict(steps=draw(st.integers(2, 2_000)), init=draw(small),
              shape=draw(st.sampled_from(["linear", "log", "cosine", "1-sqrt"])),
              peak=draw(st.none() | lrs))
    after = lambda k: R.cosine(k, **inner)  # noqa: E731
    return (S.warmup(S.cosine(**inner), **kw), lambda k: R.warmup(k, after, **kw), 1.0,
            kw["steps"] + inner["steps"])


def _join(draw):
    a = dict(init=draw(small), final=draw(lrs), steps=draw(steps_))
    b = dict(init=draw(lrs), steps=draw(steps_), final=draw(small))
    c = dict(value=draw(small))
    b1 = draw(st.integers(1, 3_000))
    b2 = b1 + draw(st.integers(1, 3_000))
    refs = [lambda k: R.linear(k, **a), lambda k: R.cosine(k, **b), lambda k: R.constant(k, **c)]
    return (S.join([S.linear(**a), S.cosine(**b), S.constant(**c)], [b1, b2]),
            lambda k: R.join(k, refs, [b1, b2]), 1.0, b2 + 100)


def _one_cycle(draw):
    three = draw(st.booleans())
    total = draw(st.integers(10, 5_000))
    pct = draw(st.floats(0.05, 0.45 if three else 0.9))
    kw = dict(peak=draw(lrs), total_steps=total, pct_start=pct, div_factor=draw(st.floats(1.5, 100)),
              final_div_factor=draw(st.floats(1.5, 1e4)), anneal=draw(st.sampled_from(["cos", "linear"])),
              three_phase=three, quantity=draw(st.sampled_from(["lr", "momentum"])),
              base_momentum=draw(st.floats(0.5, 0.9)), max_momentum=draw(st.floats(0.9, 0.99)))
    return S.one_cycle(**kw), lambda k: R.one_cycle(k, **kw), 1.0, total


CASES = {
    "constant": _simple(S.constant, R.constant, value=lrs),
    "linear": _simple(S.linear, R.linear, init=lrs, final=small, steps=st.integers(0, 5_000)),
    "cosine": _simple(S.cosine, R.cosine, init=lrs, steps=st.integers(0, 5_000), final=small),
    "polynomial": _simple(S.polynomial, R.polynomial, init=lrs, final=small, steps=steps_,
                          power=st.floats(0.1, 4.0)),
    "exponential": _simple(S.exponential, R.exponential, init=lrs, rate=st.floats(0.01, 2.0),
                           transition_steps=st.integers(1, 500), staircase=st.booleans(),
                           final=st.none() | small),
    "inverse_sqrt": _simple(S.inverse_sqrt, R.inverse_sqrt, peak=lrs, timescale=steps_, final=small),
    "one_minus_sqrt": _simple(S.one_minus_sqrt, R.one_minus_sqrt, init=lrs, final=small, steps=steps_),
    "cosine_restarts": _simple(S.cosine_restarts, R.cosine_restarts, peak=lrs, period=st.integers(1, 300),
                               final=small, period_mult=st.integers(1, 4), peak_decay=st.floats(0.3, 1.0)),
    "lr_range_test": _simple(S.lr_range_test, R.lr_range_test, init=lrs, step_size=steps_,
                             rate=st.floats(0.0, 10.0), staircase=st.booleans()),
    "weight_decay": _simple(S.weight_decay, R.weight_decay, start=small, end=st.floats(0.0, 0.3),
                            steps=steps_, style=st.sampled_from(["linear", "cosine"])),
    "warmup_cosine": _wc,
    "wsd": _wsd,
    "warmup": _warmup,
    "join": _join,
    "one_cycle": _one_cycle,
}


@SETTINGS
@given(case=block_cases(), data=st.data())
def test_block_matches_reference(case, data):
    sched, ref, scale, horizon = case
    ks = data.draw(st.lists(st.integers(0, 2 * horizon + 10), min_size=1, max_size=50))
    ks += [0, max(horizon - 1, 0), horizon, horizon + 1]
    got = sched(np.asarray(ks))
    want = np.asarray([ref(k) for k in ks])
    np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-12 * scale)
    # scalar and vector evaluation are the same computation, bit for bit
    assert [sched(k) for k in ks[:5]] == got[:5].tolist()


@SETTINGS
@given(case=block_cases())
def test_round_trip_json_and_pickle(case):
    sched = case[0]
    k = np.arange(0, 3 * case[3] + 7, max(1, case[3] // 50))
    again = S.from_dict(json.loads(json.dumps(sched.to_dict())))
    assert again == sched and np.array_equal(again(k), sched(k))
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched and np.array_equal(clone(k), sched(k))


def test_contract_example():
    lr = S.warmup_cosine(peak=3e-4, warmup_steps=2_000, total_steps=100_000, final=3e-5, init=0.0)
    assert lr(0) == 0.0 and isinstance(lr(0), float)
    assert lr(2_000) == 3e-4 and lr(100_000) == 3e-5 and lr(10**9) == 3e-5
    v = lr(np.arange(100_000))
    assert v.dtype == np.float64 and v.shape == (100_000,)
    assert lr(np.arange(6).reshape(2, 3)).shape == (2, 3)
    assert lr(np.array(5)).shape == () and isinstance(lr(np.int32(5)), float)
    assert lr(np.array([], dtype=np.int64)).shape == (0,)
    assert lr(7.0) == lr(7) and np.array_equal(lr(np.array([7.0])), lr(np.array([7])))


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, ValueError), (float("nan"), ValueError),
                                      (float("inf"), ValueError), (np.array([0, -3]), ValueError),
                                      (np.array([0.0, 2.5]), ValueError), (True, TypeError),
                                      ("3", TypeError), (np.array(["a"]), TypeError), (None, TypeError)])
def test_bad_steps(bad, exc):
    with pytest.raises(exc):
        S.constant(1.0)(bad)


def test_bad_step_message_names_the_value():
    with pytest.raises(ValueError, match="-7"):
        S.linear(1.0, 0.0, 10)(np.array([1, 2, -7]))
    with pytest.raises(ValueError, match="2.5"):
        S.linear(1.0, 0.0, 10)(2.5)


@pytest.mark.parametrize("ctor, kwargs, match", [
    (S.linear, dict(init=1.0, final=0.0, steps=-1), "steps must be >= 0, got -1"),
    (S.cosine, dict(init=float("nan"), steps=10), "init must be finite"),
    (S.warmup_cosine, dict(peak=1.0, warmup_steps=10, total_steps=10), r"warmup_steps \(10\) must be < total_steps"),
    (S.wsd, dict(peak=1.0, warmup_steps=5, total_steps=10, decay_steps=6), "decay_steps"),
    (S.wsd, dict(peak=1.0, warmup_steps=0, total_steps=10, decay_steps=5, decay="square"), "'square'"),
    (S.warmup, dict(after=S.constant(1.0), steps=1, shape="log"), "steps must be >= 2"),
    (S.join, dict(schedules=[S.constant(1.0), S.constant(2.0)], boundaries=[]), "len\\(boundaries\\)"),
    (S.join, dict(schedules=[S.constant(1.0)] * 3, boundaries=[5, 5]), "strictly increasing"),
    (S.one_cycle, dict(peak=1.0, total_steps=10, pct_start=0.1), "empty phase"),
    (S.exponential, dict(init=1.0, rate=0.0), "rate must be > 0"),
    (S.weight_decay, dict(start=0.1, end=0.2, steps=10, style="constant"), "start == end"),
    (S.cosine_restarts, dict(peak=1.0, period=0), "period must be >= 1, got 0"),
    (S.constant, dict(value="0.1"), "value must be a real number"),
])
def test_constructor_validation(ctor, kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        ctor(**kwargs)


def test_from_dict_errors():
    with pytest.raises(ValueError, match="unknown schedule type 'nope'"):
        S.from_dict({"type": "nope"})
    with pytest.raises(ValueError, match="needs a 'type'"):
        S.from_dict({"peak": 1.0})
    with pytest.raises(ValueError, match="bad parameters for schedule type 'linear'"):
        S.from_dict({"type": "linear", "init": 1.0, "final": 0.0, "steps": 3, "bogus": 1})


def test_one_cycle_torch_horizon():
    s = S.one_cycle(peak=1e-2, total_steps=100, horizon="torch")
    s(100)  # torch extrapolates the last phase one step past T - 1
    with pytest.raises(ValueError, match="steps 0..100"):
        s(101)
    held = S.one_cycle(peak=1e-2, total_steps=100)
    assert held(10**6) == held(99) == 1e-2 / 25 / 1e4


def test_one_cycle_momentum_pairs_with_lr():
    lr = S.one_cycle(peak=1.0, total_steps=100)
    mom = S.one_cycle_momentum(total_steps=100)
    k = np.arange(100)
    assert np.argmax(lr(k)) == np.argmin(mom(k)) == 29
    assert mom(0) == 0.95 and mom(29) == 0.85 and mom(99) == 0.95


def test_restarts_integer_arithmetic_far_out():
    s = S.cosine_restarts(peak=1.0, period=3, period_mult=2)
    starts = [3 * (2**i - 1) for i in range(45)]
    ks = np.asarray(starts + [x - 1 for x in starts[1:]], dtype=np.int64)
    v = s(ks)
    assert np.all(v[: len(starts)] == 1.0)  # every restart lands exactly on its step
    want = [R.cosine_restarts(int(k), peak=1.0, period=3, period_mult=2) for k in ks]
    np.testing.assert_allclose(v, want, rtol=1e-12, atol=1e-15)


def test_scale_steps_and_multiply():
    base = S.linear(1.0, 0.0, 100)
    assert S.scale_steps(base, 4)(10) == base(40)
    assert S.multiply(base, 0.5)(10) == 0.5 * base(10)


def test_exponential_range_test_grows_to_bound():
    s = S.exponential(init=1e-7, rate=10.0, transition_steps=100, final=1.0)
    assert s(0) == 1e-7 and s(700) == 1.0 and s(10**6) == 1.0


def test_horizon_and_limit():
    assert S.warmup_cosine(peak=1.0, warmup_steps=10, total_steps=100).horizon == 100
    assert S.linear(1.0, 0.0, 50).horizon == 50 and S.linear(1.0, 0.0, 0).horizon is None
    assert S.constant(1.0).horizon is None and S.exponential(1.0, 0.5).horizon is None
    assert S.warmup(S.cosine(1.0, 90), steps=10).horizon == 100
    assert S.join([S.constant(0.1), S.cosine(1.0, 40)], [60]).horizon == 100
    assert S.scale_steps(S.cosine(1.0, 1000), 256).horizon == 4
    torch_like = S.one_cycle(peak=1.0, total_steps=100, horizon="torch")
    assert torch_like.horizon == 100 and torch_like.limit == 101 and S.one_cycle(1.0, 100).limit is None
    sets = {
        "megatron": ({"lr": 1e-3, "train_iters": 100, "lr_decay_iters": 80, "global_batch_size": 3}, 80),
        "deepspeed": ({"type": "WarmupDecayLR", "params": {"total_num_steps": 50, "warmup_num_steps": 5}}, 51),
        "hf": ({"lr_scheduler_type": "linear", "learning_rate": 1e-3, "num_training_steps": 70}, 70),
        "colossalai": ({"lr": 1e-3, "total_steps": 30, "warmup_steps": 3}, 30),
        "torch": ({"lr": 1e-3, "scheduler": "SequentialLR", "milestones": [10],
                   "schedulers": [{"scheduler": "LinearLR", "total_iters": 10},
                                  {"scheduler": "CosineAnnealingLR", "T_max": 90}]}, 100),
    }
    for fw, (cfg, h) in sets.items():
        assert S.from_config(fw, cfg).lr.horizon == h, fw
    assert S.from_config("torch", {"lr": 1e-3, "scheduler": "OneCycleLR", "max_lr": 1e-2,
                                   "total_steps": 20}).lr.limit == 21


@pytest.mark.parametrize("framework,cfg", [
    ("torch", {"lr": 0.1, "scheduler": "StepLR", "step_size": 10**30}),
    ("torch", {"lr": 0.1, "scheduler": "MultiStepLR", "milestones": [10**30]}),
    ("colossalai", {"type": "MultiStepLR", "lr": 0.1, "total_steps": 5, "milestones": [10**30]}),
    ("megatron", {"lr": 1e-3, "train_iters": 10, "global_batch_size": 10**30}),
    ("deepspeed", {"type": "WarmupDecayLR", "lr": 0.1, "params": {"total_num_steps": 10**30}}),
    ("hf", {"lr_scheduler_type": "linear", "num_warmup_steps": 0, "num_training_steps": 10**30}),
])
def test_huge_integers_are_a_value_error_at_construction(framework, cfg):
    """An integer past int64's step arithmetic is a ValueError naming it, not an OverflowError later."""
    with pytest.raises(ValueError, match="too large|out of range"):
        S.from_config(framework, cfg).lr(np.arange(4))
