"""``npadam.lr_finder`` / ``npadam.torch.lr_finder``: the lr range test, its suggestions, and the restore.

The restore is checked bit for bit twice over: the optimizer's state dict, params and
groups equal what they were, and a twin optimizer that never ran the test follows the
same trajectory afterwards. The lr sequence, the smoothing and the suggestion are
compared with torch-lr-finder (its real schedulers and ``LRFinder`` on the same torch
model, data and seed) where it is installed, and with fastai's / Lightning's formulas.
"""

from __future__ import annotations

import contextlib
import copy
import doctest
import importlib
import io
import math
import subprocess
import sys
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

import npadam
from npadam import schedules as S
from npadam.lr_finder import LRFinderResult, lr_range, smooth_losses, suggest

SETTINGS = settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@pytest.fixture(autouse=True)
def _one_torch_thread():
    """The torch models here are tiny: one intra-op thread (torch's pool of 2 on a busy 2-core
    machine spins for ~100 ms per BatchNorm call); the caller's setting is put back."""
    try:
        import torch
    except ImportError:
        yield
        return
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


# ---------------------------------------------------------------------- helpers
def _bits(x):
    """A comparable, bit-exact image of a state dict / group / value (arrays and tensors by bytes)."""
    if type(x).__module__.startswith("torch") and hasattr(x, "detach"):
        x = x.detach().cpu()
        x = (x.view(x.new_empty(0, dtype=__import__("torch").int16).dtype) if x.element_size() == 2 else x).numpy()
    if isinstance(x, np.ndarray):
        return ("array", x.dtype.str, x.shape, x.tobytes())
    if isinstance(x, dict):
        return {k: _bits(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_bits(v) for v in x)
    if isinstance(x, S.Schedule):
        return ("schedule", id(x))
    return x


def _groups(opt):
    return [_bits({k: v for k, v in g.items() if k != "params"}) for g in opt.param_groups]


def _np_params(seed, dtype):
    import ml_dtypes

    rng = np.random.default_rng(seed)
    store = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype(np.float32)
    return {"w": rng.standard_normal((6, 5)).astype(store), "b": (0.1 * rng.standard_normal(5)).astype(store)}


def _np_opt(params, algo, amsgrad, scheduled, scaler):
    lr = S.warmup_cosine(peak=1e-2, warmup_steps=2, total_steps=20, final=1e-3) if scheduled else 1e-2
    opts = dict(loss_scaler=npadam.LossScaler(init_scale=2.0**8) if scaler else None, max_grad_norm=1.0)
    groups = [{"params": {"w": params["w"]}, "weight_decay": S.linear(0.1, 0.0, 10) if scheduled else 0.1},
              {"params": {"b": params["b"]}, "weight_decay": 0.0}]
    if algo == "sgd":
        return npadam.SGD(groups, lr=lr, momentum=0.9, **opts)
    return npadam.AdamW(groups, lr=lr, betas=(0.9, 0.95), amsgrad=amsgrad, **opts)


def _np_grads(params, k, x):
    """Deterministic least-squares gradients of batch ``k`` (scaled by the loss scale if any)."""
    w, b = (params[n].astype(np.float32) for n in ("w", "b"))
    xb = x[(k % 4) * 8:(k % 4) * 8 + 8]
    r = xb @ w + b - 1.0
    loss = float(np.mean(r * r))
    return loss, {"w": (2 / r.size) * xb.T @ r, "b": (2 / r.size) * r.sum(0)}


def _cast(grads, params):
    return [np.ascontiguousarray(grads[n]).astype(params[n].dtype) for n in ("w", "b")]


# ---------------------------------------------------------------------- the lrs
@settings(max_examples=10, deadline=None)
@given(start=st.floats(1e-9, 1e-2), ratio=st.floats(1.5, 1e9), n=st.integers(2, 120),
       mode=st.sampled_from(["exp", "linear"]))
def test_lrs_are_torch_lr_finders(start, ratio, n, mode):
    """Against torch-lr-finder's own ``ExponentialLR``/``LinearLR``, stepped as ``range_test`` steps
    them (its history records ``get_lr()[0]`` before each ``step()``): equal bit for bit."""
    tlf = pytest.importorskip("torch_lr_finder")
    import torch

    end = start * ratio
    lrs = lr_range(start, end, n, mode)
    opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=start)
    sched = (tlf.lr_finder.ExponentialLR if mode == "exp" else tlf.lr_finder.LinearLR)(opt, end, n)
    theirs = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for _ in range(n):
            theirs.append(sched.get_lr()[0])
            opt.step()
            sched.step()
    assert lrs.tolist() == theirs


@pytest.mark.parametrize("mode", ["exp", "linear"])
def test_lrs_fixed_cases(mode):
    lrs = lr_range(1e-7, 10, 100, mode)  # fastai's / torch-lr-finder's defaults
    assert lrs[0] == 1e-7 and lrs.size == 100 and np.all(np.diff(lrs) > 0)
    assert abs(lrs[-1] - 10) <= 1e-14 * 10
    if mode == "exp":
        assert np.allclose(np.diff(np.log(lrs)), np.log(1e8) / 99, rtol=1e-9)
    else:
        assert np.allclose(np.diff(lrs), (10 - 1e-7) / 99, rtol=1e-9)
    assert lr_range(0.0, 1.0, 3, "linear").tolist() == [0.0, 0.5, 1.0]


# ---------------------------------------------------------------------- smoothing and suggestions
@SETTINGS
@given(losses=st.lists(st.floats(1e-3, 1e3), min_size=1, max_size=80), smooth=st.floats(1e-3, 1.0))
def test_smoothing_is_fastai_and_lightning(losses, smooth):
    """Bias-corrected EMA against Lightning's statement (``beta * avg + (1 - beta) * loss``,
    ``/ (1 - beta ** (k + 1))``) and fastai's (``torch.lerp`` then the same correction)."""
    got = smooth_losses(losses, smooth)
    beta, avg, lightning = 1 - smooth, 0.0, []
    for k, loss in enumerate(losses):
        avg = beta * avg + (1 - beta) * loss
        lightning.append(avg / (1 - beta ** (k + 1)))
    assert got.tolist() == lightning                    # the same operations: bit for bit
    assert math.isclose(got[0], losses[0], rel_tol=1e-15)
    if smooth == 1.0:
        assert got.tolist() == list(losses)
    try:
        import torch
    except ImportError:
        return
    val, count, fastai = torch.tensor(0.0, dtype=torch.float64), 0, []
    for loss in losses:  # fastai.learner.AvgSmoothLoss
        count += 1
        val = torch.lerp(torch.tensor(loss, dtype=torch.float64), val, beta)
        fastai.append(float(val / (1 - beta ** count)))
    np.testing.assert_allclose(got, fastai, rtol=1e-10)


@SETTINGS
@given(curve=st.lists(st.floats(0.1, 10.0), min_size=0, max_size=60), skip=st.tuples(st.integers(0, 12),
       st.integers(0, 6)))
def test_suggestions_are_torch_lr_finders_and_fastais(curve, skip):
    """``suggestion``: torch-lr-finder's ``plot`` rule (argmin of ``np.gradient`` over the window);
    ``min_lr_over_10``: fastai's ``minimum`` (lr of the lowest loss / 10)."""
    skip_start, skip_end = skip
    lrs = lr_range(1e-6, 1.0, max(len(curve), 2), "exp")[:len(curve)]
    steepest, lowest = suggest(lrs, curve, skip_start, skip_end)
    window = slice(skip_start, len(curve) - skip_end) if skip_end else slice(skip_start, None)
    x, y = lrs[window], np.asarray(curve, np.float64)[window]
    if len(curve) - skip_start - skip_end >= 2:
        assert steepest == x[np.gradient(y).argmin()]
    else:
        assert steepest is None
    if y.size >= 1 and len(curve) - skip_end > skip_start:
        assert lowest == x[y.argmin()] / 10
    else:
        assert lowest is None


def test_suggestion_window_ends_before_the_first_non_finite_point():
    lrs = lr_range(1e-3, 1.0, 8, "exp")
    curve = [5.0, 4.0, 2.0, 1.5, 1.4, float("nan"), 9.0, 9.0]
    assert suggest(lrs, curve, 0, 0) == (lrs[1], lrs[4] / 10)     # the NaN and all after it are cut
    assert suggest(lrs, curve, 5, 0) == (None, None)
    with pytest.raises(ValueError, match="same length, got 8 and 3"):
        suggest(lrs, [1.0, 2.0, 3.0])


# ---------------------------------------------------------------------- the test loop
def _quadratic(w, scale=1.0):
    return lambda: (scale * float(w @ w), [2 * scale * w])


def test_stops_when_the_smoothed_loss_diverges():
    """A loss that grows with the lr: the test stops at the first update where the smoothed loss
    exceeds ``diverge`` x its minimum (re-stated here), and that update is recorded."""
    w = np.ones(3, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, weight_decay=0.0)
    lrs = lr_range(1e-4, 10.0, 100, "exp")
    k = iter(range(100))
    losses = [1.0 + 100 * lr + 0.01 * np.sin(i) for i, lr in enumerate(lrs)]
    res = npadam.lr_finder(lambda: (losses[next(k)], [np.zeros(3, np.float32)]), opt, 1e-4, 10.0, 100,
                           diverge=3.0, progress=False)
    sm = smooth_losses(losses, 0.05)
    stop = next(i for i in range(100) if sm[i] > 3.0 * sm[:i + 1].min())
    assert res.stopped == "diverged" and res.lrs.size == stop + 1
    assert res.losses.tolist() == losses[:stop + 1] and res.smoothed.tolist() == sm[:stop + 1].tolist()
    assert res.lrs.tolist() == lrs[:stop + 1].tolist()
    assert "stopped at update" in str(res) and "> 3 x its minimum" in str(res)
    k = iter(range(100))
    full = npadam.lr_finder(lambda: (losses[next(k)], [np.zeros(3, np.float32)]), opt, 1e-4, 10.0, 100,
                            diverge=None, progress=False)
    assert full.stopped == "completed" and full.lrs.size == 100


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_stops_at_a_non_finite_loss(bad):
    w = np.ones(3, np.float32)
    opt = npadam.AdamW([w], lr=1e-3)
    seq = iter([1.0, 0.9, 0.8, bad, 0.5])
    res = npadam.lr_finder(lambda: (next(seq), [np.ones(3, np.float32)]), opt, num_steps=5, progress=False)
    assert res.stopped == "non-finite" and res.lrs.size == 4 and not np.isfinite(res.smoothed[-1])
    assert res.suggestion is None and w.tolist() == [1.0, 1.0, 1.0] and opt.step_count == 0


def test_ratio_test_needs_a_positive_minimum():
    """A loss that goes negative (a log-likelihood, say): the ratio test is skipped, not misread."""
    w = np.ones(2, np.float32)
    opt = npadam.AdamW([w], lr=1e-3)
    seq = iter(np.linspace(1.0, -3.0, 30).tolist())
    res = npadam.lr_finder(lambda: (next(seq), [np.ones(2, np.float32)]), opt, num_steps=30, progress=False)
    assert res.stopped == "completed" and res.lrs.size == 30


def test_callback_and_progress_bar(capsys):
    pytest.importorskip("tqdm")
    w = np.full(4, 2.0, np.float32)
    opt = npadam.AdamW([w], lr=1e-3)
    seen = []
    res = npadam.lr_finder(_quadratic(w), opt, num_steps=20, progress=True, diverge=None,
                           callback=lambda *a: seen.append(a))
    assert [s[0] for s in seen] == list(range(20))
    assert [s[1] for s in seen] == res.lrs.tolist() and [s[2] for s in seen] == res.losses.tolist()
    assert [s[3] for s in seen] == res.smoothed.tolist()
    assert "lr range test" in capsys.readouterr().err


def test_loss_may_be_an_array_or_tensor_scalar():
    w = np.ones(2, np.float32)
    opt = npadam.AdamW([w], lr=1e-3)
    values = iter([np.float32(2.0), np.array(1.5), np.array([1.25])])
    res = npadam.lr_finder(lambda: (next(values), [np.ones(2, np.float32)]), opt, num_steps=3, progress=False)
    assert res.losses.tolist() == [2.0, 1.5, 1.25]


# ---------------------------------------------------------------------- restore: npadam.AdamW / SGD
@SETTINGS
@given(algo=st.sampled_from(["adamw", "sgd"]), dtype=st.sampled_from(["fp32", "bf16"]), amsgrad=st.booleans(),
       scheduled=st.booleans(), scaler=st.booleans(), pre=st.integers(0, 3), n=st.integers(2, 40),
       mode=st.sampled_from(["exp", "linear"]), fail_at=st.none() | st.integers(0, 39),
       seed=st.integers(0, 2**16))
@example(algo="sgd", dtype="fp32", amsgrad=False, scheduled=False, scaler=False, pre=0, n=16, mode="linear",
         fail_at=15, seed=0)   # CI: the test diverged before the call planned to raise
def test_npadam_optimizer_is_put_back_bit_for_bit(algo, dtype, amsgrad, scheduled, scaler, pre, n, mode, fail_at, seed):
    """After the test (completed, diverged, or ended by an exception from ``step_fn``): the same
    state dict, params, groups (the Schedule objects included), and the same next updates as a
    twin that never ran it."""
    x = np.random.default_rng(seed + 1).standard_normal((32, 6)).astype(np.float32)
    pa, pb = _np_params(seed, dtype), _np_params(seed, dtype)
    a, b = (_np_opt(p, algo, amsgrad, scheduled, scaler) for p in (pa, pb))
    for k in range(pre):
        for p, o in ((pa, a), (pb, b)):
            o.step(_cast(_np_grads(p, k, x)[1], p))
    sd, groups = _bits(a.state_dict()), _groups(a)
    sched_objects = [dict(g["schedules"]) for g in a.param_groups]
    group_objects = [id(g) for g in a.param_groups] + [id(g["schedules"]) for g in a.param_groups]
    values = {n_: v.tobytes() for n_, v in pa.items()}
    calls = iter(range(10**6))

    def step_fn():
        k = next(calls)
        if fail_at is not None and k == fail_at:
            raise RuntimeError("boom")
        loss, g = _np_grads(pa, k, x)
        return loss, _cast(g, pa)

    try:
        res = npadam.lr_finder(step_fn, a, start_lr=1e-5 if mode == "exp" else 0.0, end_lr=5.0, num_steps=n,
                               mode=mode, progress=False)
    except RuntimeError as e:
        assert str(e) == "boom" and fail_at is not None and fail_at < n
    else:
        # no exception: either no failure was planned inside the run, or the test stopped (diverged or
        # a non-finite loss) before the call that would have raised
        assert fail_at is None or fail_at >= res.lrs.size, (fail_at, res.stopped, res.lrs.size)
        assert fail_at is None or fail_at >= n or res.stopped in ("diverged", "non-finite")
    assert {n_: v.tobytes() for n_, v in pa.items()} == values
    assert _bits(a.state_dict()) == sd and _groups(a) == groups
    assert all(g["schedules"] == s and all(g["schedules"][k] is s[k] for k in s)
               for g, s in zip(a.param_groups, sched_objects))
    assert [id(g) for g in a.param_groups] + [id(g["schedules"]) for g in a.param_groups] == group_objects
    for k in range(pre, pre + 3):
        for p, o in ((pa, a), (pb, b)):
            o.step(_cast(_np_grads(p, k, x)[1], p))
    assert {n_: v.tobytes() for n_, v in pa.items()} == {n_: v.tobytes() for n_, v in pb.items()}
    assert _bits(a.state_dict()) == _bits(b.state_dict())


def test_keyboard_interrupt_puts_everything_back():
    w = np.full(5, 0.5, np.float32)
    opt = npadam.AdamW([w], lr=S.constant(1e-3))
    opt.step([np.ones(5, np.float32)])
    sd, before = _bits(opt.state_dict()), w.tobytes()
    calls = iter(range(100))

    def step_fn():
        if next(calls) == 7:
            raise KeyboardInterrupt
        return float(w @ w), [2 * w]

    with pytest.raises(KeyboardInterrupt):
        npadam.lr_finder(step_fn, opt, num_steps=50, progress=False)
    assert w.tobytes() == before and _bits(opt.state_dict()) == sd and opt.step_count == 1


def test_a_float_lr_assigned_but_not_yet_adopted_stays_pending():
    """npadam.AdamW adopts an lr float assigned over a schedule at its next step; the test must
    leave that pending assignment exactly as it found it."""
    w = np.ones(3, np.float32)
    opt = npadam.AdamW([w], lr=S.constant(1e-3), weight_decay=0.0)
    opt.param_groups[0]["lr"] = 0.5          # replaces the schedule at the next step
    npadam.lr_finder(_quadratic(w), opt, num_steps=10, progress=False)
    assert opt.param_groups[0]["lr"] == 0.5 and "lr" in opt.param_groups[0]["schedules"]
    assert opt.step([np.ones(3, np.float32)]).lr == 0.5 and "lr" not in opt.param_groups[0]["schedules"]


def test_callable_schedules_are_put_back():
    """Schedules holding Python code (torch's LambdaLR / MultiplicativeLR, from_callable) cannot
    be written into a state dict; the test's lr floats replace them in the groups, so the restore
    must not depend on finding them there (it raised in the finally, leaving the params trained)."""
    w = np.full(4, 3.0, np.float32)
    lr = S.from_callable(lambda e: 0.9 ** e, scale=1e-3)
    b1 = S.from_callable(lambda e: 0.5, scale=0.9, product=True)
    opt = npadam.AdamW([{"params": [w], "lr": lr, "betas": (b1, 0.99)}], weight_decay=0.0)
    opt.step([2 * w])
    sd, before, groups = _bits(opt.state_dict()), w.tobytes(), _groups(opt)
    npadam.lr_finder(_quadratic(w), opt, start_lr=1e-4, end_lr=10, num_steps=30, progress=False)
    assert w.tobytes() == before and _bits(opt.state_dict()) == sd and opt.step_count == 1
    assert _groups(opt) == groups and opt.param_groups[0]["schedules"]["lr"] is lr
    assert opt.step([2 * w]).lr == lr(1)


# ---------------------------------------------------------------------- restore: torch optimizers
torch_cases = [("torch.optim.AdamW", {}), ("torch.optim.Adam", {"amsgrad": True}), ("torch.optim.SGD",
               {"momentum": 0.9}), ("npadam.torch.AdamW", {}), ("npadam.torch.AdamW", {"flat_storage": True}),
               ("npadam.torch.SGD", {"momentum": 0.9, "nesterov": True}), ("npadam.torch.Adam", {"amsgrad": True})]


def _torch_model(dtype=None):
    import torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.BatchNorm1d(12), torch.nn.ReLU(),
                            torch.nn.Dropout(0.1), torch.nn.Linear(12, 3))
    return m.to(dtype) if dtype is not None else m


def _torch_opt(name, params, kw):
    mod, cls = name.rsplit(".", 1)
    return getattr(importlib.import_module(mod), cls)(params, lr=1e-3, **kw)


def _torch_data(dtype=None):
    import torch

    g = torch.Generator().manual_seed(1)
    x = torch.randn(96, 6, generator=g)
    y = (x[:, :3] * 2).argmax(1)
    x = x.to(dtype) if dtype is not None else x
    return [(x[i:i + 16], y[i:i + 16]) for i in range(0, 96, 16)]


def _train(model, opt, data, steps, sched=None):
    """``steps`` updates with a seeded dropout (twins draw the same masks)."""
    import torch

    torch.manual_seed(steps)
    model.train()
    for k in range(steps):
        x, y = data[k % len(data)]
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x).float(), y).backward()
        opt.step()
        if sched is not None:
            sched.step()


torch_cases = [(n, kw, False) for n, kw in torch_cases] + [(n, kw, True) for n, kw in torch_cases[::2]]


@pytest.mark.parametrize("name, kw, bf16", torch_cases, ids=[f"{n}{kw}{'-bf16' * b}" for n, kw, b in torch_cases])
def test_torch_optimizer_and_model_are_put_back_bit_for_bit(name, kw, bf16):
    """``npadam.torch.lr_finder`` on a model with BatchNorm and Dropout, with a scheduler attached:
    params, buffers, grads, optimizer state and groups, training flags, RNG and scheduler are
    what they were, and training continues exactly like a twin that never ran the test."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    dtype = torch.bfloat16 if bf16 else None
    data = _torch_data(dtype)
    models = [_torch_model(dtype) for _ in range(2)]
    opts = [_torch_opt(name, m.parameters(), kw) for m in models]
    scheds = [torch.optim.lr_scheduler.LinearLR(o, 0.5, 1.0, total_iters=10) for o in opts]
    for m, o, s in zip(models, opts, scheds):
        _train(m, o, data, 2, s)
        m.eval()                     # the test trains; the flags must come back
        torch.nn.functional.cross_entropy(m(data[0][0]).float(), data[0][1]).backward()  # pending grads
    m, o = models[0], opts[0]
    before = {k: v.clone() for k, v in m.state_dict().items()}
    grads = [p.grad.clone() for p in m.parameters()]
    osd, groups = copy.deepcopy(_bits(o.state_dict())), _groups(o)
    group_objects = [id(g) for g in o.param_groups] + [id(o.param_groups), id(o.state)]
    torch.manual_seed(123)
    rng_next = torch.rand(3)
    torch.manual_seed(123)
    res = nt.lr_finder(m, torch.nn.functional.cross_entropy if not bf16 else
                       (lambda out, y: torch.nn.functional.cross_entropy(out.float(), y)), data, o,
                       num_steps=20, progress=False)
    assert res.lrs.size >= 2
    assert torch.equal(torch.rand(3), rng_next)
    assert all(torch.equal(before[k], v) for k, v in m.state_dict().items())
    assert all(torch.equal(g, p.grad) for g, p in zip(grads, m.parameters()))
    assert not any(mod.training for mod in m.modules())
    assert _bits(o.state_dict()) == osd and _groups(o) == groups
    if name.startswith("torch.optim"):  # npadam.torch rebuilds its state views on load_state_dict
        assert [id(g) for g in o.param_groups] + [id(o.param_groups), id(o.state)] == group_objects
    else:
        assert [id(g) for g in o.param_groups] + [id(o.param_groups)] == group_objects[:-1]
    for mm, oo, ss in zip(models, opts, scheds):
        oo.zero_grad()
        _train(mm, oo, data, 3, ss)
    for a, b in zip(models[0].state_dict().values(), models[1].state_dict().values()):
        assert torch.equal(a, b)
    assert _bits(opts[0].state_dict()) == _bits(opts[1].state_dict())
    assert scheds[0].state_dict() == scheds[1].state_dict()


@pytest.mark.parametrize("name", ["torch.optim.SGD", "npadam.torch.SGD"])
def test_torch_step_pre_hooks_do_not_change_the_lr(name):
    """A step pre-hook that writes the lr (npadam.torch.LRScheduler does for stateful schedules)
    is overridden during the test: the same losses as without it; the hook stays registered."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    def zero_lr(o, args, kwargs):
        for g in o.param_groups:
            g["lr"] = 0.0

    data = _torch_data()
    runs, hooks = [], []
    for hooked in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Linear(6, 3)
        opt = _torch_opt(name, model.parameters(), {"momentum": 0.9})
        if hooked:
            hooks.append(opt.register_step_pre_hook(zero_lr))
        runs.append(nt.lr_finder(model, torch.nn.functional.cross_entropy, data, opt, num_steps=20, diverge=None,
                                 progress=False))
    assert runs[0].losses.tolist() == runs[1].losses.tolist() and len(set(runs[1].losses.tolist())) > 1
    assert list(opt._optimizer_step_pre_hooks) == [hooks[0].id]


def test_torch_data_iterators_are_cycled():
    """A re-iterable (list) starts over; a generator is replayed; extra items in a batch are ignored."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    data = _torch_data()
    seen = []
    model = torch.nn.Linear(6, 3)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)

    def loss_fn(out, y):
        seen.append(int(y[0]))
        return torch.nn.functional.cross_entropy(out, y)

    nt.lr_finder(model, loss_fn, data, opt, num_steps=14, diverge=None, progress=False)
    firsts = [int(y[0]) for _, y in data]
    assert seen == [firsts[k % 6] for k in range(14)]
    seen.clear()
    nt.lr_finder(model, loss_fn, ((x, y, "id") for x, y in data[:4]), opt, num_steps=10, diverge=None,
                 progress=False)
    assert seen == [firsts[k % 4] for k in range(10)]
    with pytest.raises(ValueError, match="data gave no batches"):
        nt.lr_finder(model, loss_fn, [], opt, num_steps=3, progress=False)
    with pytest.raises(TypeError, match="data must give \\(inputs, targets\\) batches; batch 0 is a Tensor"):
        nt.lr_finder(model, loss_fn, [torch.zeros(2, 6)], opt, num_steps=3, progress=False)


@pytest.mark.parametrize("mode, optim", [("exp", "AdamW"), ("linear", "AdamW"), ("exp", "SGD"), ("linear", "SGD")])
def test_against_torch_lr_finder(mode, optim):
    """torch-lr-finder's ``LRFinder.range_test`` and ``npadam.torch.lr_finder`` on the same model,
    data (a DataLoader) and seed: the same lrs and raw losses bit for bit (its smoothed curve is
    rebuilt exactly from ours), its suggestion is our rule on its curve, and ours (on the
    bias-corrected curve) is within half a decade of it."""
    tlf = pytest.importorskip("torch_lr_finder")
    torch = pytest.importorskip("torch")
    from matplotlib.figure import Figure
    from torch.utils.data import DataLoader, TensorDataset

    import npadam.torch as nt

    def make():
        torch.manual_seed(0)
        return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.ReLU(), torch.nn.Linear(16, 3))

    g = torch.Generator().manual_seed(1)
    x = torch.randn(320, 8, generator=g)
    y = (x @ torch.randn(8, 3, generator=g)).argmax(1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=False)
    crit = torch.nn.CrossEntropyLoss()
    cls = getattr(torch.optim, optim)
    kw = {"momentum": 0.9} if optim == "SGD" else {}
    start, end = (1e-6, 1.0) if mode == "exp" else (1e-4, 0.05)
    m1 = make()
    finder = tlf.LRFinder(m1, cls(m1.parameters(), lr=1e-3, **kw), crit)
    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()), \
            warnings.catch_warnings():
        warnings.simplefilter("ignore")
        finder.range_test(loader, start_lr=start, end_lr=end, num_iter=80, step_mode=mode, smooth_f=0.05,
                          diverge_th=1e9)
        _, theirs = finder.plot(ax=Figure().subplots(), skip_start=10, skip_end=5)
    m2 = make()
    res = nt.lr_finder(m2, crit, loader, cls(m2.parameters(), lr=1e-3, **kw), start_lr=start, end_lr=end,
                       num_steps=80, mode=mode, diverge=None, progress=False)
    assert res.lrs.tolist() == finder.history["lr"]
    curve = []
    for k, loss in enumerate(res.losses.tolist()):   # torch-lr-finder's smoothing, re-stated
        curve.append(loss if k == 0 else 0.05 * loss + (1 - 0.05) * curve[-1])
    assert curve == finder.history["loss"]
    assert suggest(res.lrs, curve, 10, 5)[0] == theirs
    span = math.log10(res.lrs[-1] / res.lrs[0]) if mode == "exp" else res.lrs[-1] - res.lrs[0]
    dist = abs(math.log10(res.suggestion / theirs)) if mode == "exp" else abs(res.suggestion - theirs)
    assert dist <= 0.5 if mode == "exp" else dist <= 0.25 * span


# ---------------------------------------------------------------------- plots
def _result(n=40, mode="exp"):
    w = np.full(4, 3.0, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, weight_decay=0.0)
    return npadam.lr_finder(_quadratic(w), opt, start_lr=1e-4, end_lr=10.0, num_steps=n, mode=mode, progress=False)


def test_terminal_plot():
    res = _result()
    buf = io.StringIO()
    text = res.plot("terminal", width=60, height=14, file=buf)
    assert buf.getvalue() == text + "\n"
    lines = text.splitlines()
    assert lines[0] == "lr range test: smoothed loss vs lr" and len(lines) <= 14
    assert max(map(len, lines)) <= 60
    assert f"{res.lrs[10]:.3g}" in lines[-2] and "lr (log scale)" in lines[-2]
    assert f"suggestion: lr {res.suggestion:.3g}" in lines[-1] and "smoothed loss" in lines[-1]
    assert "lr (log scale)" not in _result(mode="linear").plot("terminal", file=io.StringIO())


def test_image_plot(tmp_path):
    pytest.importorskip("matplotlib")
    res = _result()
    path = tmp_path / "lr.png"
    assert res.plot(path) == str(path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    res.plot(str(tmp_path / "lr.svg"))
    assert (tmp_path / "lr.svg").read_text().lstrip().startswith("<?xml")
    with pytest.raises(ValueError, match=r"extension must name an image format .* got 'txt'"):
        res.plot(tmp_path / "lr.txt")
    with pytest.raises(ValueError, match="does not exist"):
        res.plot(tmp_path / "no" / "lr.png")
    with pytest.raises(ValueError, match="file= is for plot\\('terminal'\\)"):
        res.plot(path, file=io.StringIO())


@pytest.mark.parametrize("kwargs, error, match", [
    ({"target": 3}, TypeError, "plot target must be 'terminal' or a file path, got int"),
    ({"width": 10}, ValueError, "width must be >= 20, got 10"),
    ({"height": 2.5}, ValueError, "height must be an integer, got 2.5"),
    ({"file": "out.txt"}, TypeError, "file must be a text stream with write\\(\\), got str"),
])
def test_plot_bad_arguments(kwargs, error, match):
    with pytest.raises(error, match=match):
        _result().plot(**kwargs)


def test_result_is_frozen_and_readable():
    res = _result(n=12)
    assert isinstance(res, LRFinderResult) and res.suggestion is None and res.min_lr_over_10 is None
    assert "suggestion: none (the curve needs at least 17 finite points" in str(res)
    with pytest.raises(AttributeError):
        res.suggestion = 1.0
    with pytest.raises(ValueError, match="read-only"):
        res.lrs[0] = 1.0


# ---------------------------------------------------------------------- bad input
_W = np.ones(3, np.float32)


@pytest.mark.parametrize("kwargs, error, match", [
    ({"start_lr": 0.0}, ValueError, "start_lr must be > 0.0, got 0.0"),
    ({"start_lr": -1e-3, "mode": "linear"}, ValueError, "start_lr must be >= 0.0, got -0.001"),
    ({"start_lr": float("nan")}, ValueError, "start_lr must be finite, got nan"),
    ({"start_lr": "1e-7"}, TypeError, "start_lr must be a real number, got '1e-7'"),
    ({"end_lr": 1e-8}, ValueError, "end_lr must be > start_lr \\(1e-07\\), got 1e-08"),
    ({"end_lr": 1e39}, ValueError, "end_lr must be <= 3.40282"),
    ({"end_lr": float("inf")}, ValueError, "end_lr must be finite, got inf"),
    ({"num_steps": 1}, ValueError, "num_steps must be >= 2, got 1"),
    ({"num_steps": 2.5}, ValueError, "num_steps must be an integer, got 2.5"),
    ({"num_steps": True}, TypeError, "num_steps must be an integer, got True"),
    ({"mode": "log"}, ValueError, "mode must be one of 'exp', 'linear', got 'log'"),
    ({"smooth": 0.0}, ValueError, "smooth must be > 0.0, got 0.0"),
    ({"smooth": 1.5}, ValueError, "smooth must be <= 1.0, got 1.5"),
    ({"diverge": 1.0}, ValueError, "diverge must be > 1.0, got 1.0"),
    ({"diverge": float("nan")}, ValueError, "diverge must be finite, got nan"),
    ({"skip_start": -1}, ValueError, "skip_start must be >= 0, got -1"),
    ({"skip_end": 0.5}, ValueError, "skip_end must be an integer, got 0.5"),
    ({"progress": "yes"}, TypeError, "progress must be a bool, got 'yes'"),
    ({"callback": 3}, TypeError, "callback must be callable or None, got int"),
    ({"step_fn": "loss"}, TypeError, "step_fn must be callable, got str"),
    ({"optimizer": object()}, TypeError, "optimizer must be an npadam optimizer .* got object"),
])
def test_bad_arguments_change_nothing(kwargs, error, match):
    w = _W.copy()
    opt = npadam.AdamW([w], lr=1e-3)
    calls = []
    args = {"step_fn": lambda: calls.append(1) or (1.0, [np.ones(3, np.float32)]), "optimizer": opt, **kwargs}
    with pytest.raises(error, match=match):
        npadam.lr_finder(**args)
    assert calls == [] and w.tobytes() == _W.tobytes() and opt.step_count == 0


@pytest.mark.parametrize("ret, match", [
    (1.0, "step_fn must return \\(loss, grads\\) for AdamW; at update 0 it returned float"),
    (("1.0", [np.ones(3, np.float32)]), "loss that is a real number .* at update 0 it returned str 1.0"),
    ((True, [np.ones(3, np.float32)]), "at update 0 it returned bool"),
    ((np.ones(2), [np.ones(3, np.float32)]), "at update 0 it returned ndarray"),
])
def test_bad_step_fn_returns(ret, match):
    w = _W.copy()
    opt = npadam.AdamW([w], lr=1e-3)
    with pytest.raises(TypeError, match=match):
        npadam.lr_finder(lambda: ret, opt, num_steps=3, progress=False)
    assert w.tobytes() == _W.tobytes() and opt.step_count == 0


def test_torch_step_fn_must_return_the_loss():
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.ones(3))
    opt = torch.optim.SGD([p], lr=0.1)

    def step_fn():
        loss = (p * p).sum()
        loss.backward()
        return loss, [p.grad]

    with pytest.raises(TypeError, match="must run backward\\(\\) and return the loss for a torch optimizer"):
        npadam.lr_finder(step_fn, opt, num_steps=3, progress=False)
    assert torch.equal(p.detach(), torch.ones(3)) and p.grad is None


@pytest.mark.parametrize("args, error, match", [
    ((None, "loss", "data"), TypeError, "model must be a torch.nn.Module, got NoneType"),
    (("model", 3, "data"), TypeError, "loss_fn must be callable"),
    (("model", "loss", 5), TypeError, "data must be an iterable or iterator of \\(inputs, targets\\) batches, got int"),
    (("model", "loss", "data", 3), TypeError, "optimizer must be an npadam.torch or torch.optim optimizer, got int"),
])
def test_torch_convenience_bad_arguments(args, error, match):
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    model = torch.nn.Linear(2, 1)
    real = {"model": model, "loss": torch.nn.functional.mse_loss, "data": [(torch.ones(1, 2), torch.ones(1, 1))],
            "opt": torch.optim.SGD(model.parameters(), lr=0.1)}
    values = [real.get(a, a) if isinstance(a, str) else a for a in args]
    values += [real["opt"]] * (4 - len(values))
    with pytest.raises(error, match=match):
        nt.lr_finder(*values)


def test_non_finite_state_is_refused_before_the_test():
    w = np.ones(2, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, skip_nonfinite=False)
    opt.step([np.array([np.inf, 1.0], np.float32)])
    with pytest.raises(ValueError, match="optimizer state of param '0': exp_avg has non-finite values"):
        npadam.lr_finder(lambda: (1.0, [np.ones(2, np.float32)]), opt, progress=False)
    assert opt.step_count == 1


# ---------------------------------------------------------------------- layering and docs
def test_layers_and_shared_text_plot():
    """``import npadam`` loads neither the CLI, torch nor matplotlib; the CLI's terminal plot is the
    one the library draws (moved down to ``npadam._textplot``), with its old defaults."""
    code = ("import sys, npadam; assert callable(npadam.lr_finder); "
            "print(sorted(m for m in ('npadam.cli', 'torch', 'matplotlib', 'tqdm') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "[]", out.stderr
    from npadam import _textplot
    from npadam.cli import _textplot as cli_textplot

    assert cli_textplot.render is _textplot.render
    text = _textplot.render([("a", np.arange(5.0))], width=30, height=8)
    assert text.splitlines()[-2].split() == ["0", "step", "4"]


@pytest.mark.parametrize("module", ["npadam.lr_finder", "npadam.torch._lr_finder"])
def test_docstring_examples(module):
    if module.startswith("npadam.torch"):
        pytest.importorskip("torch")
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
