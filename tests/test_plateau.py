"""``schedules.Plateau`` against torch's own ``ReduceLROnPlateau`` (torch 2.13), stepped as a torch
training loop steps it: lr sequences bit for bit with a constant base, the controller's state after
every ``step``, state dicts and checkpoints resuming identically into the caller's object, the
torch front-end's ``LRScheduler``, and the argument / metric / state checks."""

from __future__ import annotations

import io
import math
import pickle

import numpy as np
import pytest
import torch
from hypothesis import given, settings, strategies as st
from torch.optim.lr_scheduler import ReduceLROnPlateau

import npadam
import npadam.torch
from npadam import checkpoint as C
from npadam import schedules as S

SETTINGS = settings(max_examples=50, deadline=None)
FEW = settings(max_examples=25, deadline=None)  # an npadam.AdamW per example
STATE = ("best", "num_bad_epochs", "cooldown_counter", "last_epoch")

# ---------------------------------------------------------------------- strategies
_special = st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0])


@st.composite
def configs(draw):
    """A ReduceLROnPlateau configuration npadam and torch both accept, and a base lr."""
    base = draw(st.sampled_from([0.1, 1.0, 3e-4, 1e-6])) * draw(st.floats(0.5, 2.0))
    min_lr = draw(st.one_of(st.just(0.0), st.floats(0.0, base)))
    return base, {
        "mode": draw(st.sampled_from(["min", "max"])),
        "threshold_mode": draw(st.sampled_from(["rel", "abs"])),
        "factor": draw(st.one_of(st.sampled_from([0.0, 0.1, 0.5, 0.9]), st.floats(0.0, 0.99))),
        "patience": draw(st.integers(0, 4)),
        "threshold": draw(st.one_of(st.sampled_from([0.0, 1e-4, 0.1, 1.0, 2.0]), st.floats(0.0, 1.0))),
        "cooldown": draw(st.integers(0, 3)),
        "min_lr": min_lr,
        "eps": draw(st.one_of(st.sampled_from([0.0, 1e-8]), st.floats(0.0, base))),
    }


@st.composite
def metric_runs(draw, max_size=40):
    """Metric sequences with ties, plateaus, improvements, NaN and +-inf."""
    pool = draw(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=5))
    one = st.one_of(st.sampled_from(pool), _special, st.floats(-10, 10, allow_nan=False))
    return draw(st.lists(one, min_size=1, max_size=max_size))


# ---------------------------------------------------------------------- drivers
class TorchRun:
    """torch.optim.SGD + ReduceLROnPlateau as a torch loop steps them; counts ``_reduce_lr`` calls."""

    def __init__(self, base: float, cfg: dict) -> None:
        self.w = torch.nn.Parameter(torch.zeros(2, dtype=torch.float64))
        self.opt = torch.optim.SGD([self.w], lr=base)
        self.sched = ReduceLROnPlateau(self.opt, **cfg)
        self.reductions = 0
        orig = self.sched._reduce_lr

        def counted(epoch):
            self.reductions += 1
            orig(epoch)

        self.sched._reduce_lr = counted

    @property
    def lr(self) -> float:
        return self.opt.param_groups[0]["lr"]

    def train(self, steps: int) -> list[float]:
        """``steps`` optimizer updates; the lr each one used."""
        used = []
        for _ in range(steps):
            used.append(self.lr)
            self.w.grad = torch.ones_like(self.w)
            self.opt.step()
        return used

    def state(self) -> tuple:
        s = self.sched
        return (s.best, s.num_bad_epochs, s.cooldown_counter, s.last_epoch, self.reductions)


def np_state(p: S.Plateau) -> tuple:
    return tuple(p.state_dict()[k] for k in STATE) + (p.num_reductions,)


def same(a, b) -> bool:
    """Equal, NaN equal to NaN, 0.0 and -0.0 told apart (bit for bit on floats)."""
    if isinstance(a, float) and isinstance(b, float):
        return np.float64(a).tobytes() == np.float64(b).tobytes() or (math.isnan(a) and math.isnan(b))
    if isinstance(a, tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return a == b


# ---------------------------------------------------------------------- torch parity
@SETTINGS
@given(configs(), metric_runs(max_size=30), st.integers(1, 2))
def test_constant_base_matches_torch(cfg_base, metrics, steps_per_epoch):
    base, cfg = cfg_base
    ref, p = TorchRun(base, cfg), S.Plateau(base, **cfg)
    k = 0
    for m in metrics:
        used = ref.train(steps_per_epoch)
        mine = [p(k + j) for j in range(steps_per_epoch)]
        assert all(same(a, b) for a, b in zip(mine, used)), (k, mine, used)
        assert np.array_equal(p(np.arange(k, k + steps_per_epoch)), np.asarray(used))
        k += steps_per_epoch
        before = ref.reductions
        ref.sched.step(m)
        assert p.step(m) is (ref.reductions > before)
        assert same(np_state(p), ref.state()), (m, np_state(p), ref.state())
        assert same(p(k), ref.lr)


@FEW
@given(configs(), metric_runs(max_size=25))
def test_npadam_adamw_uses_torchs_lrs(cfg_base, metrics):
    """An npadam.AdamW loop with ``lr=Plateau``: the lr of each update (``info.lr`` and the group's
    float) is the lr torch's optimizer has at that update."""
    base, cfg = cfg_base
    ref, p = TorchRun(base, cfg), S.Plateau(base, **cfg)
    w = np.zeros(3, np.float32)
    opt = npadam.AdamW([w], lr=p, weight_decay=0.0)
    for m in metrics:
        for used in ref.train(2):
            info = opt.step([np.ones(3, np.float32)])
            assert same(info.lr, used)
        ref.sched.step(m)
        p.step(m)
    assert same(opt.step([np.ones(3, np.float32)]).lr, ref.lr)  # a reduction applies at the next update


@SETTINGS
@given(configs(), metric_runs(max_size=25), st.sampled_from(["warmup_cosine", "linear", "wsd"]),
       st.lists(st.integers(0, 400), min_size=1, max_size=20))
def test_schedule_base_is_the_schedule_reduced_n_times(cfg_base, metrics, kind, ks):
    """With a schedule, ``p(k)`` is ``schedule(k)`` with torch's own ``_reduce_lr`` applied
    ``num_reductions`` times (on an optimizer whose lr is ``schedule(k)``)."""
    base, cfg = cfg_base
    inner = {"warmup_cosine": S.warmup_cosine(peak=base, warmup_steps=20, total_steps=300, final=base / 10),
             "linear": S.linear(base, base / 100, 200),
             "wsd": S.wsd(peak=base, warmup_steps=10, total_steps=300, decay_steps=100)}[kind]
    p = S.Plateau(inner, **cfg)
    ref = TorchRun(1.0, cfg)
    for m in metrics:
        ref.sched.step(m)
        p.step(m)
    assert p.num_reductions == ref.reductions
    values = p(np.asarray(ks))
    for k, v in zip(ks, values):
        w = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.SGD([w], lr=inner(k))
        red = ReduceLROnPlateau(opt, **cfg)
        for _ in range(p.num_reductions):
            red._reduce_lr(0)
        assert same(float(v), opt.param_groups[0]["lr"]) and same(p(k), float(v))
    assert p.horizon == inner.horizon


def test_schedule_base_documented_example():
    """A warmup keeps warming up after a reduction: the reduction scales the schedule."""
    inner = S.warmup_cosine(peak=1.0, warmup_steps=10, total_steps=100)
    p = S.Plateau(inner, factor=0.5, patience=0)
    for m in (1.0, 1.0):
        p.step(m)
    assert p.num_reductions == 1
    assert p(5) == inner(5) * 0.5 and p(10) == 0.5 and p(100) == inner(100)  # 0 stays 0 (eps rule)


@pytest.mark.parametrize("mode,threshold_mode,metrics,expected", [
    # best starts at +-inf; equal metrics are not an improvement; rel thresholds scale best
    ("min", "rel", [1.0, 0.99995, 0.9, 0.9, 0.9], [0, 1, 0, 1, 2]),
    ("min", "abs", [1.0, 0.95, 0.8, 0.75, 0.5], [0, 1, 0, 1, 0]),
    ("max", "rel", [1.0, 1.00005, 1.1, 1.1, 2.0], [0, 1, 0, 1, 0]),
    ("max", "abs", [1.0, 1.05, 1.2, 1.25, 1.5], [0, 1, 0, 1, 0]),
])
def test_every_mode_counts_bad_epochs_like_torch(mode, threshold_mode, metrics, expected):
    threshold = 1e-4 if threshold_mode == "rel" else 0.1
    cfg = dict(mode=mode, threshold_mode=threshold_mode, threshold=threshold, patience=10)
    ref, p = TorchRun(0.1, cfg), S.Plateau(0.1, **cfg)
    got = []
    for m in metrics:
        ref.sched.step(m)
        p.step(m)
        got.append(p.num_bad_epochs)
        assert same(np_state(p), ref.state())
    assert got == expected


def test_torch_docstring_patience_zero():
    """torch's docstring: patience 0, the first epoch sets the baseline, every later epoch that is
    worse reduces the lr, an equal or better one does not."""
    ref, p = TorchRun(1.0, {"patience": 0, "factor": 0.5}), S.Plateau(1.0, patience=0, factor=0.5)
    for m, reduced in [(1.0, False), (2.0, True), (2.0, True), (0.5, False), (0.5, True), (0.1, False)]:
        ref.sched.step(m)
        assert p.step(m) is reduced
        assert p(0) == ref.lr
    assert p(0) == 0.125


def test_cooldown_min_lr_and_eps_like_torch():
    cfg = dict(patience=1, cooldown=2, factor=0.1, min_lr=1e-3, eps=1e-4)
    ref, p = TorchRun(0.5, cfg), S.Plateau(0.5, **cfg)
    lrs, cooling = [], []
    for _ in range(14):
        ref.sched.step(1.0)
        p.step(1.0)
        lrs.append(p(0))
        cooling.append(p.in_cooldown)
        assert same(np_state(p), ref.state()) and p(0) == ref.lr
    # reductions at epochs 3, 7 and 11 (2 bad epochs, then a cooldown of 2 that ignores bad ones)
    assert lrs[:4] == [0.5, 0.5, 0.05, 0.05] and cooling[2:5] == [True, True, False]
    assert lrs[6] == 0.005000000000000001 and lrs[-1] == 1e-3  # min_lr reached
    assert p.num_reductions == 3 and p(np.arange(3)).tolist() == [1e-3] * 3
    # eps: a reduction smaller than eps is not applied, now or later
    q = S.Plateau(1e-5, patience=0, eps=1e-5)
    for _ in range(5):
        q.step(1.0)
    assert q.num_reductions == 4 and q(0) == 1e-5


def test_nan_and_inf_metrics_like_torch():
    for mode, metrics in (("min", [math.nan, 1.0, math.nan, math.inf, -math.inf, -1e300, math.nan]),
                          ("max", [math.nan, -math.inf, 1.0, math.inf, math.inf, math.nan])):
        for tm in ("rel", "abs"):
            cfg = dict(mode=mode, threshold_mode=tm, patience=1)
            ref, p = TorchRun(0.1, cfg), S.Plateau(0.1, **cfg)
            for m in metrics:
                ref.sched.step(m)
                p.step(m)
                assert same(np_state(p), ref.state()) and p(0) == ref.lr
            assert not math.isnan(p.best)


def test_repeated_multiplication_not_a_power():
    """The n-th value is ``((base * f) * f) ...``, which differs from ``base * f ** n`` in the last bit."""
    p = S.Plateau(0.3, factor=0.7, patience=0, eps=0.0)
    ref = TorchRun(0.3, dict(factor=0.7, patience=0, eps=0.0))
    differs = 0
    for n in range(1, 60):
        p.step(1.0)
        ref.sched.step(1.0)
        assert p(n) == ref.lr
        differs += p(n) != 0.3 * 0.7 ** (n - 1) if n > 1 else 0
    assert differs > 0


def test_metric_types():
    p = S.Plateau(0.1, patience=0)
    for m in (torch.tensor(2.0), torch.tensor([3.0]), np.float32(4.0), np.array(5.0), np.int64(6), 7,
              torch.tensor(8, dtype=torch.int32)):
        p.step(m)
    assert p.best == 2.0 and p.last_epoch == 7
    before = p.state_dict()
    for bad in ("1.0", None, True, np.bool_(False), torch.tensor(True), 1j, [1.0], {"loss": 1.0}):
        with pytest.raises(TypeError, match="metric"):
            p.step(bad)
    with pytest.raises(TypeError, match=r"shape \(2,\)"):
        p.step(torch.tensor([1.0, 2.0]))
    with pytest.raises(ValueError, match="too large"):
        p.step(10 ** 400)
    assert p.state_dict() == before


# ---------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kwargs,exc", [
    ({"factor": 1.0}, ValueError), ({"factor": 1.5}, ValueError), ({"mode": "minimum"}, ValueError),
    ({"threshold_mode": "relative"}, ValueError), ({"mode": 1}, TypeError), ({"threshold_mode": None}, TypeError),
])
def test_rejected_like_torch(kwargs, exc):
    """What torch rejects, npadam rejects with the same exception type, naming the value."""
    with pytest.raises(exc):
        ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), **kwargs)
    with pytest.raises(exc, match=repr(next(iter(kwargs.values()))).replace("(", r"\(")):
        S.Plateau(0.1, **kwargs)


@pytest.mark.parametrize("kwargs,exc,match", [
    ({"patience": -1}, ValueError, "patience must be >= 0, got -1"),
    ({"patience": 2.5}, ValueError, "patience must be an integer, got 2.5"),
    ({"patience": "10"}, TypeError, "patience"),
    ({"cooldown": -2}, ValueError, "cooldown must be >= 0, got -2"),
    ({"threshold": -1e-4}, ValueError, "threshold must be >= 0.0, got -0.0001"),
    ({"threshold": math.inf}, ValueError, "threshold must be finite"),
    ({"min_lr": -1.0}, ValueError, "min_lr must be >= 0.0, got -1.0"),
    ({"min_lr": [0.0]}, TypeError, "one Plateau per param group"),
    ({"eps": -1e-8}, ValueError, "eps must be >= 0.0"),
    ({"factor": -0.5}, ValueError, "factor must be >= 0.0, got -0.5"),
    ({"factor": math.nan}, ValueError, "factor must be finite, got nan"),
    ({"factor": False}, TypeError, "factor must be a real number, got False"),
])
def test_rejected_where_torch_is_lenient(kwargs, exc, match):
    """npadam checks every value up front; torch takes these (and misbehaves later or never)."""
    ReduceLROnPlateau(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.1), **kwargs)
    with pytest.raises(exc, match=match):
        S.Plateau(0.1, **kwargs)


@pytest.mark.parametrize("base,exc", [(-0.1, ValueError), (math.inf, ValueError), ("0.1", TypeError),
                                      (None, TypeError)])
def test_rejected_base(base, exc):
    with pytest.raises(exc, match="schedule"):
        S.Plateau(base)


# ---------------------------------------------------------------------- state
@SETTINGS
@given(configs(), metric_runs(), st.data())
def test_state_dict_round_trip_mid_run(cfg_base, metrics, data):
    """Saved mid-run and loaded into a new Plateau (state_dict, to_dict/from_dict, pickle), the run
    continues identically, and like torch's own scheduler resumed from its state dict."""
    base, cfg = cfg_base
    cut = data.draw(st.integers(0, len(metrics)))
    ref, p = TorchRun(base, cfg), S.Plateau(base, **cfg)
    for m in metrics[:cut]:
        ref.sched.step(m)
        p.step(m)
    q = S.Plateau(base, **cfg)
    q.load_state_dict(p.state_dict())
    copies = [q, S.from_dict(p.to_dict()), pickle.loads(pickle.dumps(p))]
    assert all(c == p for c in copies) and p.config_dict() == S.Plateau(base, **cfg).config_dict()
    ref2 = TorchRun(ref.lr, cfg)  # torch's resume: the optimizer's lr and the scheduler's state dict
    ref2.sched.load_state_dict({k: v for k, v in ref.sched.state_dict().items() if k != "_reduce_lr"})
    ref2.reductions = ref.reductions
    for m in metrics[cut:]:
        ref2.sched.step(m)
        p.step(m)
        for c in copies:
            c.step(m)
        assert all(same(np_state(c), ref2.state()) and same(c(7), ref2.lr) for c in copies + [p])


def test_load_state_dict_rejects_and_changes_nothing():
    p = S.Plateau(0.1, patience=2, cooldown=1)
    for m in (1.0, 2.0, 2.0, 2.0):
        p.step(m)
    good = p.state_dict()
    assert good == {"best": 1.0, "num_bad_epochs": 0, "cooldown_counter": 1, "last_epoch": 4,
                    "num_reductions": 1}
    bad = [({**good, "extra": 1}, ValueError, "keys"), ({k: v for k, v in good.items() if k != "best"}, ValueError,
                                                        "keys"),
           ({**good, "best": math.nan}, ValueError, "NaN"), ({**good, "best": "1.0"}, TypeError, "best"),
           ({**good, "num_bad_epochs": 3}, ValueError, "num_bad_epochs is 3"),
           ({**good, "cooldown_counter": 2}, ValueError, "cooldown_counter is 2"),
           ({**good, "num_reductions": 5}, ValueError, "num_reductions is 5"),
           ({**good, "num_reductions": 0}, ValueError, "no reduction"),
           ({**good, "last_epoch": -1}, ValueError, "last_epoch must be >= 0"),
           ({**good, "last_epoch": 4.5}, ValueError, "last_epoch"), ([1, 2], TypeError, "mapping")]
    for state, exc, match in bad:
        with pytest.raises(exc, match=match):
            p.load_state_dict(state)
        assert p.state_dict() == good
    with pytest.raises(ValueError, match="bad parameters|num_bad_epochs"):
        S.from_dict({**p.to_dict(), "state": {**good, "num_bad_epochs": 9}})
    with pytest.raises(ValueError, match="cannot load the state"):
        p.load_state_from(S.Plateau(0.1, patience=3))
    with pytest.raises(TypeError, match="no state"):
        S.constant(1.0).state_dict()


def test_stateful_hook_generic():
    """``has_state``, ``config_dict`` and ``load_state_from`` see a Plateau inside composites."""
    p = S.Plateau(S.linear(1.0, 0.0, 10), patience=0)
    j = S.join([S.constant(0.5), S.multiply(p, 2.0)], [3])
    assert j.has_state and not S.linear(1.0, 0.0, 10).has_state
    for m in (1.0, 1.0):
        p.step(m)
    assert "state" in str(j.to_dict()) and "state" not in str(j.config_dict())
    fresh = S.from_dict(j.config_dict())
    fresh.load_state_from(j)
    assert fresh == j and np.array_equal(fresh(np.arange(20)), j(np.arange(20)))


# ---------------------------------------------------------------------- optimizer and checkpoint
def _loop(opt, p, w, epochs, metrics):
    """A training loop: 3 updates per epoch on a quadratic, then ``p.step(val_loss)``."""
    for e in epochs:
        for j in range(3):
            g = (w - np.float32(0.5 + 0.1 * j)).astype(np.float32)
            opt.step([g[:8], g[8:]])
        p.step(metrics[e])


def _adamw(p):
    w = np.linspace(-1, 1, 16, dtype=np.float32)
    groups = [{"params": [w[:8]]}, {"params": [w[8:]], "lr": S.multiply(p, 0.5)}]
    return npadam.AdamW(groups, lr=p, weight_decay=0.1), w


METRICS = [1.0, 0.8, 0.8, 0.9, 0.85, 0.8, 0.7, 0.75, 0.75, 0.8, 0.8, 0.8, 0.6, 0.6, 0.65, 0.7]
CFG = dict(patience=1, factor=0.5, cooldown=1, threshold=0.05)


def test_checkpoint_resume_bit_identical_into_the_callers_plateau(tmp_path):
    p = S.Plateau(S.warmup(S.constant(1e-2), 4), **CFG)
    opt, w = _adamw(p)
    _loop(opt, p, w, range(8), METRICS)
    C.save(tmp_path / "ck", opt)
    sd, w_cut = opt.state_dict(), w.copy()
    _loop(opt, p, w, range(8, 16), METRICS)
    assert p.num_reductions >= 3

    for how in ("checkpoint", "state_dict"):
        p2 = S.Plateau(S.warmup(S.constant(1e-2), 4), **CFG)  # the caller's fresh object, same config
        opt2, w2 = _adamw(p2)
        if how == "checkpoint":
            C.load(tmp_path / "ck", opt2)
        else:
            w2[:] = w_cut  # a state dict holds no float32 params: the model's own checkpoint does
            opt2.load_state_dict(sd)
        g0, g1 = opt2.param_groups
        assert g0["schedules"]["lr"] is p2 and g1["schedules"]["lr"].params["schedule"] is p2
        assert p2.state_dict() == S.from_dict(sd["param_groups"][0]["lr"]["schedule"]).state_dict()
        assert p2.last_epoch == 8
        _loop(opt2, p2, w2, range(8, 16), METRICS)
        assert np.array_equal(w2, w) and p2 == p, how
        assert g0["lr"] == opt.param_groups[0]["lr"] and g1["lr"] == opt.param_groups[1]["lr"]


def test_checkpoint_compares_configuration_not_state(tmp_path):
    p = S.Plateau(1e-2, **CFG)
    opt, w = _adamw(p)
    _loop(opt, p, w, range(6), METRICS)
    C.save(tmp_path / "ck", opt)
    other = S.Plateau(1e-2, **{**CFG, "patience": 3})
    opt2, _ = _adamw(other)
    with pytest.raises(ValueError, match="schedules differ"):
        C.load(tmp_path / "ck", opt2)
    assert other.last_epoch == 0
    C.load(tmp_path / "ck", opt2, override_opt_param_scheduler=True)  # keeps the caller's, state and all
    assert opt2.param_groups[0]["schedules"]["lr"] is other and other.last_epoch == 0
    opt3, _ = _adamw(S.Plateau(1e-2, **{**CFG, "patience": 3}))
    C.load(tmp_path / "ck", opt3, use_checkpoint_opt_param_scheduler=True)  # the saved one, its state
    assert opt3.param_groups[0]["schedules"]["lr"] == p


# ---------------------------------------------------------------------- torch front-end
def _torch_pair(cfg, base=0.1):
    w1, w2 = (torch.nn.Parameter(torch.ones(3, dtype=torch.float64)) for _ in range(2))
    o1, o2 = torch.optim.SGD([w1], lr=base), torch.optim.SGD([w2], lr=base)
    return (w1, o1, ReduceLROnPlateau(o1, **cfg)), (w2, o2)


@SETTINGS
@given(configs(), metric_runs(max_size=20))
def test_lrscheduler_with_plateau_matches_torch_each_update(cfg_base, metrics):
    """``LRScheduler(opt, ScheduleSet(lr=Plateau))`` stepped every update, the Plateau every epoch:
    every optimizer step uses torch's ReduceLROnPlateau lr (written before the step by the hook)."""
    base, cfg = cfg_base
    (w1, o1, ref), (w2, o2) = _torch_pair(cfg, base)
    p = S.Plateau(base, **cfg)
    sched = npadam.torch.LRScheduler(o2, S.ScheduleSet(lr=p))
    seen1, seen2 = [], []
    o1.register_step_pre_hook(lambda o, *_: seen1.append(o.param_groups[0]["lr"]))
    o2.register_step_pre_hook(lambda o, *_: seen2.append(o.param_groups[0]["lr"]))
    for m in metrics:
        for _ in range(2):
            for w, o in ((w1, o1), (w2, o2)):
                w.grad = torch.ones_like(w)
                o.step()
            sched.step()
        ref.step(m)
        p.step(m)
    assert all(same(a, b) for a, b in zip(seen1, seen2)) and len(seen2) == 2 * len(metrics)
    assert torch.equal(w1, w2)


def test_lrscheduler_state_dict_and_checkpoint_carry_the_plateau(tmp_path):
    def make():
        w = torch.nn.Parameter(torch.linspace(-1, 1, 8))
        opt = npadam.torch.AdamW([w], lr=1e-2, weight_decay=0.0)
        p = S.Plateau(S.linear(1e-2, 1e-3, 40), **CFG)
        return w, opt, p, npadam.torch.LRScheduler(opt, S.ScheduleSet(lr=p))

    def epochs(w, opt, p, sched, es):
        for e in es:
            for _ in range(3):
                w.grad = (w.detach() - 0.3).clone()
                opt.step()
                sched.step()
            p.step(METRICS[e])

    w, opt, p, sched = make()
    epochs(w, opt, p, sched, range(8))
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    C.save(tmp_path / "ck", opt, scheduler=sched)
    assert sched.state_dict()["schedule_states"][0]["lr"]["state"] == p.state_dict()
    epochs(w, opt, p, sched, range(8, 16))

    w2, opt2, p2, sched2 = make()
    C.load(tmp_path / "ck", opt2, scheduler=sched2)
    assert sched2.schedules[0].lr is p2 and p2.last_epoch == 8 and p2.num_reductions > 0
    epochs(w2, opt2, p2, sched2, range(8, 16))
    assert torch.equal(w2, w) and p2 == p

    _, _, p3, sched3 = make()
    buf.seek(0)
    sched3.load_state_dict(torch.load(buf, weights_only=True))
    assert p3.last_epoch == 8 and sched3.last_epoch == sched2.last_epoch - 24
    _, _, _, sched4 = make()
    sched4.schedules[0].lr.load_state_dict(p3.state_dict())
    bad = sched.state_dict()
    bad["schedule_states"][0]["lr"]["patience"] = 7
    with pytest.raises(ValueError, match="configured as"):
        sched4.load_state_dict(bad)
    assert sched4.last_epoch == 0 and sched4.schedules[0].lr.last_epoch == 8


def test_lrscheduler_without_stateful_schedules_state_dict_unchanged():
    w = torch.nn.Parameter(torch.zeros(2))
    sched = npadam.torch.LRScheduler(torch.optim.SGD([w], lr=1.0), S.linear(1.0, 0.0, 4))
    assert "schedule_states" not in sched.state_dict()


# ---------------------------------------------------------------------- docs and CLI
def test_docstring_example():
    import doctest

    from npadam.schedules import plateau

    result = doctest.testmod(plateau)
    assert result.failed == 0 and result.attempted > 0


def test_cli_dumps_a_saved_plateau(tmp_path):
    import json

    from npadam.cli import main

    p = S.Plateau(S.warmup_cosine(peak=1e-3, warmup_steps=10, total_steps=100), patience=0, factor=0.5)
    for m in (1.0, 2.0, 3.0):
        p.step(m)
    (tmp_path / "p.json").write_text(json.dumps(p.to_dict()))
    out = tmp_path / "lr.csv"
    assert main(["schedule", "--schedule-json", str(tmp_path / "p.json"), "--format", "csv", "-o", str(out)]) == 0
    rows = [line.split(",") for line in out.read_text().split()[1:]]
    assert len(rows) >= 100 and all(float(v) == p(int(k)) for k, v in rows)


def test_torch_checkpoint_rules_when_the_plateau_differs(tmp_path):
    """Megatron's rules with a scheduler whose stateful schedule differs from the saved one (or
    is missing): an error by default, the saved Plateau with its state under use_checkpoint, the
    scheduler's own (and its state) under override."""
    def make(schedule):
        w = torch.nn.Parameter(torch.zeros(4))
        opt = npadam.torch.AdamW([w], lr=1e-2)
        w.grad = torch.ones(4)
        return opt, npadam.torch.LRScheduler(opt, schedule)

    p = S.Plateau(1e-2, patience=0)
    opt, sched = make(p)
    for m in (1.0, 2.0, 3.0):
        opt.step()
        sched.step()
        p.step(m)
    C.save(tmp_path / "ck", opt, scheduler=sched)
    for other in (S.constant(1e-2), S.Plateau(1e-2, patience=4)):
        opt2, sched2 = make(other)
        with pytest.raises(ValueError, match="schedules differ"):
            C.load(tmp_path / "ck", opt2, scheduler=sched2)
        C.load(tmp_path / "ck", opt2, scheduler=sched2, override_opt_param_scheduler=True)
        assert sched2.schedules[0].lr is other and sched2.last_epoch == 3 and opt2.param_groups[0]["lr"] == 1e-2
        opt3, sched3 = make(other)
        C.load(tmp_path / "ck", opt3, scheduler=sched3, use_checkpoint_opt_param_scheduler=True)
        assert sched3.schedules[0].lr == p and opt3.param_groups[0]["lr"] == p(3) == 1e-4
    opt4, sched4 = make(S.Plateau(1e-2, patience=4))
    C.save(tmp_path / "ck2", opt4, scheduler=sched4)
    opt5, sched5 = make(S.constant(1e-3))
    C.load(tmp_path / "ck2", opt5, scheduler=sched5, use_checkpoint_opt_param_scheduler=True)
    assert sched5.schedules[0].lr == S.Plateau(1e-2, patience=4) and "schedule_states" in sched5.state_dict()


# ---------------------------------------------------------------------- from_config
@FEW
@given(configs(), metric_runs(max_size=20), st.sampled_from(["torch", "hf"]))
def test_from_config_is_the_frameworks_reduce_lr_on_plateau(cfg_base, metrics, framework):
    """``from_config("torch", ReduceLROnPlateau)`` and HF's ``reduce_lr_on_plateau`` (transformers'
    ``get_scheduler``, which builds torch's with ``lr_scheduler_kwargs`` and no warmup) give a Plateau
    whose lr follows the real scheduler's, stepped on the same metrics."""
    base, cfg = cfg_base
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=base)
    if framework == "torch":
        real = ReduceLROnPlateau(opt, **cfg)
        sset = S.from_config("torch", {"lr": base, "scheduler": "ReduceLROnPlateau", **cfg})
    else:
        from transformers import get_scheduler

        real = get_scheduler("reduce_lr_on_plateau", opt, num_warmup_steps=5, num_training_steps=50,
                             scheduler_specific_kwargs=cfg)
        sset = S.from_config("hf", {"lr_scheduler_type": "reduce_lr_on_plateau", "learning_rate": base,
                                    "num_warmup_steps": 5, "num_training_steps": 50, "lr_scheduler_kwargs": cfg})
    assert isinstance(sset.lr, S.Plateau) and sset.weight_decay is None and sset.beta1 is None
    for k, m in enumerate(metrics):
        assert same(sset.lr(k), opt.param_groups[0]["lr"]), k
        real.step(m)
        sset.lr.step(m)
    assert same(sset.lr(len(metrics)), opt.param_groups[0]["lr"])


@pytest.mark.parametrize("framework,cfg,match", [
    ("torch", {"lr": 0.1, "scheduler": "ReduceLROnPlateau", "patince": 2}, "did you mean 'patience'"),
    ("torch", {"lr": [0.1, 0.2], "scheduler": "ReduceLROnPlateau", "min_lr": [0.0]}, "one value per group"),
    ("torch", {"lr": [], "scheduler": "ReduceLROnPlateau"}, "one value per group"),
    ("hf", {"lr_scheduler_type": "reduce_lr_on_plateau", "lr_scheduler_kwargs": {"factor": 1.0}}, "factor"),
    ("hf", {"lr_scheduler_type": "reduce_lr_on_plateau", "lr_scheduler_kwargs": {"state": {}}}, "state"),
])
def test_from_config_rejects(framework, cfg, match):
    with pytest.raises(ValueError, match=match):
        S.from_config(framework, cfg)


def test_per_group_lrs_step_together_like_torchs_one_scheduler():
    """``lr`` / ``min_lr`` lists: one Plateau per group, stepped together by ``GroupSchedules.step``;
    every group's lr is torch's (one ReduceLROnPlateau over groups with different lrs and minimums)."""
    kw = {"factor": 0.5, "patience": 1, "cooldown": 1}
    gs = S.from_config("torch", {"lr": [0.1, 0.02, 1e-3], "scheduler": "ReduceLROnPlateau",
                                 "min_lr": [0.0, 0.01, 5e-4], **kw})
    assert isinstance(gs, S.GroupSchedules) and len(gs) == 3
    ws = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [w], "lr": lr} for w, lr in zip(ws, [0.1, 0.02, 1e-3])])
    real = ReduceLROnPlateau(opt, min_lr=[0.0, 0.01, 5e-4], **kw)
    for k, m in enumerate([1.0, 1.0, 1.0, 0.9, 0.95, 0.95, 0.95, 0.95, 0.1, 0.2, 0.3, 0.4]):
        before = [g["lr"] for g in opt.param_groups]
        real.step(m)
        assert gs.step(m) is ([g["lr"] for g in opt.param_groups] != before)
        assert [s.lr(k) for s in gs] == [g["lr"] for g in opt.param_groups], k
    with pytest.raises(TypeError, match="no Plateau"):
        S.from_config("torch", {"lr": [0.1], "scheduler": "StepLR", "step_size": 2}).step(1.0)
