"""The optimizer API: torch parity, skip-on-inf, loss scaling, groups, state dicts, bad input."""

from __future__ import annotations

import copy

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import npadam
from npadam import schedules as S

torch = pytest.importorskip("torch")


def _torch_run(cls, init, grads, steps, clip=None, sched=None, **kw):
    params = [torch.nn.Parameter(torch.tensor(p)) for p in init]
    opt = cls(params, **kw)
    lrs = []
    for k in range(steps):
        for p, g in zip(params, grads(k)):
            p.grad = torch.tensor(g)
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(params, clip)
        if sched is not None:
            for group in opt.param_groups:
                group["lr"] = sched(k)
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
    return [p.detach().numpy() for p in params]


@pytest.mark.parametrize("decoupled, amsgrad, maximize, clip", [
    (True, False, False, None), (True, True, False, 0.5), (True, False, True, 0.5),
    (False, False, False, None), (False, True, True, None), (False, False, False, 0.5)])
def test_matches_torch_over_300_steps(decoupled, amsgrad, maximize, clip):
    rng = np.random.default_rng(0)
    shapes = [(64, 33), (33,), (7, 3, 5)]
    init = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    gs = [[rng.standard_normal(s).astype(np.float32) for s in shapes] for _ in range(300)]
    sched = S.warmup_cosine(peak=3e-3, warmup_steps=30, total_steps=300, final=3e-4)
    kw = dict(betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1, amsgrad=amsgrad, maximize=maximize)
    want = _torch_run(torch.optim.AdamW if decoupled else torch.optim.Adam, init, lambda k: gs[k], 300,
                      clip=clip, sched=sched, lr=1e-3, **kw)
    params = [p.copy() for p in init]
    cls = npadam.AdamW if decoupled else npadam.Adam
    opt = cls(params, lr=sched, max_grad_norm=clip, **kw)
    for k in range(300):
        info = opt.step(gs[k])
        assert not info.skipped and info.lr == sched(k)
    for a, b in zip(params, want):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6)


def test_grad_norm_matches_torch_clip():
    rng = np.random.default_rng(1)
    gs = [rng.standard_normal(s).astype(np.float32) * 10 for s in [(100, 10), (10,)]]
    opt = npadam.AdamW([np.zeros(g.shape, np.float32) for g in gs], max_grad_norm=1.0)
    info = opt.step(gs)
    ref_norm = torch.nn.utils.clip_grad_norm_([torch.nn.Parameter(torch.zeros(g.shape)) for g in gs], 1.0) \
        if False else torch.linalg.vector_norm(torch.cat([torch.tensor(g, dtype=torch.float64).ravel() for g in gs]))
    assert abs(info.grad_norm - float(ref_norm)) < 1e-10 * float(ref_norm)


def test_nonfinite_gradient_skips_everything():
    rng = np.random.default_rng(2)
    params = [rng.standard_normal(100).astype(np.float32), rng.standard_normal(10).astype(ml_dtypes.bfloat16)]
    scaler = npadam.LossScaler(init_scale=1024.0)
    opt = npadam.AdamW(params, lr=1e-2, loss_scaler=scaler)
    opt.step([np.ones(100, np.float32), np.ones(10, ml_dtypes.bfloat16)])
    before = copy.deepcopy(opt.state_dict())
    snapshot = [p.copy() for p in params]
    for bad in (np.inf, -np.inf, np.nan):
        g = np.ones(100, np.float32)
        g[57] = bad
        info = opt.step([g, np.ones(10, ml_dtypes.bfloat16)])
        assert info.skipped and info.step == 1 and not np.isfinite(info.grad_norm)
        assert all(a.tobytes() == b.tobytes() for a, b in zip(params, snapshot))
        after = opt.state_dict()
        for i in before["state"]:
            for key, val in before["state"][i].items():
                assert np.array_equal(val, after["state"][i][key])
    assert scaler.scale == 1024.0 / 8
    assert opt.step_count == 1


def test_loss_scaler_matches_torch_gradscaler():
    ours = npadam.LossScaler(init_scale=2.0**10, growth_interval=3)
    theirs = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=3)
    p = torch.nn.Parameter(torch.zeros(4))
    topt = torch.optim.SGD([p], lr=0.0)
    pattern = [False, False, False, True, False, True, True, False, False, False, False]
    for found_inf in pattern:
        loss = theirs.scale((p * (float("inf") if found_inf else 1.0)).sum())
        loss.backward()
        theirs.step(topt)
        theirs.update()
        topt.zero_grad()
        ours.update(found_inf)
        assert ours.scale == theirs.get_scale()
    sd = ours.state_dict()
    clone = npadam.LossScaler()
    clone.load_state_dict(sd)
    assert clone.scale == ours.scale and clone.state_dict() == sd


def test_loss_scale_is_divided_out_exactly():
    rng = np.random.default_rng(3)
    g = rng.standard_normal(1000).astype(np.float32)
    a, b = np.zeros(1000, np.float32), np.zeros(1000, np.float32)
    npadam.AdamW([a], lr=1e-2, loss_scaler=npadam.LossScaler(init_scale=2.0**12)).step([g * np.float32(2**12)])
    npadam.AdamW([b], lr=1e-2).step([g])
    assert a.tobytes() == b.tobytes()


def test_param_groups_no_decay_and_schedule_set():
    rng = np.random.default_rng(4)
    w, bias = rng.standard_normal((8, 8)).astype(np.float32), rng.standard_normal(8).astype(np.float32)
    sset = S.from_config("torch", {"lr": 1e-3, "scheduler": "OneCycleLR", "max_lr": 1e-2, "total_steps": 20})
    opt = npadam.AdamW([{"params": {"w": w}, "weight_decay": 0.1},
                        {"params": {"b": bias}, "weight_decay": 0.0}], lr=sset)
    g0 = opt.param_groups[0]
    assert g0["schedules"]["beta1"] is sset.beta1 and g0["schedules"]["lr"] is sset.lr
    # the groups hold floats (what loggers read): the values of the next update
    assert g0["lr"] == sset.lr(0) and g0["betas"][0] == sset.beta1(0) and float(g0["lr"]) == g0["lr"]
    b0 = bias.copy()
    info = opt.step({"w": np.zeros_like(w), "b": np.zeros_like(bias)})
    assert info.lr == sset.lr(0)
    assert g0["lr"] == sset.lr(1) and g0["betas"][0] == sset.beta1(1)
    assert np.array_equal(bias, b0)  # no decay, zero grad: unchanged
    assert opt.layout.names == ["w", "b"] and len(opt.layout.buffers) == 2


def test_mup_groups_feed_the_optimizer():
    shapes = {"w": (64, 64), "b": (64,)}
    params = {n: np.ones(s, np.float32) for n, s in shapes.items()}
    groups = S.mup.mup_param_groups(shapes, {"w": (16, 16), "b": (16,)}, lr=S.constant(1e-2))
    opt = npadam.AdamW([{**g, "params": {n: params[n] for n in g["params"]}} for g in groups
                        if not g.pop("mup", None) or True], weight_decay=0.0)
    opt.step({n: np.ones(s, np.float32) for n, s in shapes.items()})
    assert np.allclose(params["w"], 1 - 1e-2 / 4, atol=1e-6) and np.allclose(params["b"], 1 - 1e-2, atol=1e-6)


def test_state_dict_resume_is_bit_exact():
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(300).astype(np.float32), rng.standard_normal(50).astype(np.float16)]
    grads = [[rng.standard_normal(300).astype(np.float32), rng.standard_normal(50).astype(np.float16)]
             for _ in range(10)]
    lr = S.warmup_cosine(peak=1e-2, warmup_steps=3, total_steps=10)
    full = [p.copy() for p in init]
    opt = npadam.AdamW(full, lr=lr, amsgrad=True, loss_scaler=npadam.LossScaler(init_scale=4.0))
    for g in grads:
        opt.step(g)
    half = [p.copy() for p in init]
    a = npadam.AdamW(half, lr=lr, amsgrad=True, loss_scaler=npadam.LossScaler(init_scale=4.0))
    for g in grads[:5]:
        a.step(g)
    sd = copy.deepcopy(a.state_dict())
    resumed = [p.copy() for p in half]
    b = npadam.AdamW(resumed, lr=0.5, amsgrad=True, loss_scaler=npadam.LossScaler())
    b.load_state_dict(sd)
    assert b.param_groups[0]["schedules"]["lr"] == lr and b.param_groups[0]["lr"] == lr(5) and b.step_count == 5
    for g in grads[5:]:
        b.step(g)
    assert all(x.tobytes() == y.tobytes() for x, y in zip(full, resumed))
    assert sd["state"][0]["step"] == 5 and set(sd["state"][1]) >= {"exp_avg", "exp_avg_sq", "master"}


def test_load_state_dict_validates_and_changes_nothing():
    opt = npadam.AdamW({"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)})
    opt.step([np.ones(3, np.float32), np.ones(2, np.float32)])
    sd = opt.state_dict()
    other = npadam.AdamW({"a": np.zeros(3, np.float32), "c": np.zeros(2, np.float32)})
    with pytest.raises(ValueError, match="do not match"):
        other.load_state_dict(sd)
    reshaped = npadam.AdamW({"a": np.zeros(3, np.float32), "b": np.zeros(4, np.float32)})
    with pytest.raises(ValueError, match="shape"):
        reshaped.load_state_dict(sd)
    bad = copy.deepcopy(sd)
    bad["state"][1]["exp_avg"] = np.zeros(5, np.float32)
    fresh = npadam.AdamW({"a": np.zeros(3, np.float32), "b": np.zeros(2, np.float32)}, lr=0.5)
    with pytest.raises(ValueError, match="exp_avg"):
        fresh.load_state_dict(bad)
    assert fresh.step_count == 0 and fresh.param_groups[0]["lr"] == 0.5
    assert not fresh.state_dict()["state"][0]["exp_avg"].any()


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-1e-3), ValueError, "lr must be >= 0"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be < 1"),
    (dict(betas=(0.9, -0.1)), ValueError, r"betas\[1\] must be >= 0"),
    (dict(betas=(0.9,)), ValueError, "pair"),
    (dict(eps=-1e-8), ValueError, "eps must be >= 0"),
    (dict(weight_decay=-0.1), ValueError, "weight_decay must be >= 0"),
    (dict(max_grad_norm=0.0), ValueError, "max_grad_norm must be > 0"),
    (dict(kernel="gpu2"), ValueError, "kernel must be one of"),
    (dict(amsgrad=1), TypeError, "amsgrad must be a bool"),
    (dict(comm=object()), ValueError, "comm"),
])
def test_constructor_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        npadam.AdamW([np.zeros(3, np.float32)], **kwargs)


def test_param_rejects():
    with pytest.raises(TypeError, match="int32"):
        npadam.AdamW([np.zeros(3, np.int32)])
    with pytest.raises(ValueError, match="not contiguous"):
        npadam.AdamW([np.zeros((4, 4), np.float32)[:, 1]])
    base = np.zeros(10, np.float32)
    with pytest.raises(ValueError, match="share memory"):
        npadam.AdamW([base[:6], base[4:]])
    with pytest.raises(ValueError, match="empty parameter list"):
        npadam.AdamW([])
    with pytest.raises(ValueError, match="unknown keys"):
        npadam.AdamW([{"params": [base], "momentum": 0.9}])


def test_step_rejects_bad_grads_and_changes_nothing():
    p = np.ones(4, np.float32)
    q = np.ones((2, 2), np.float32)
    opt = npadam.AdamW([p, q], lr=1e-2)
    cases = [
        ([np.ones(4, np.float32)], ValueError, "expected 2 gradients"),
        ([np.ones(5, np.float32), np.ones((2, 2), np.float32)], ValueError, r"shape \(5,\), expected \(4,\)"),
        ([np.ones(4, np.int64), np.ones((2, 2), np.float32)], TypeError, "int64"),
        ([np.ones(8, np.float32)[::2], np.ones((2, 2), np.float32)], ValueError, "not contiguous"),
        ([p, np.ones((2, 2), np.float32)], ValueError, "share memory"),
        ({"0": np.ones(4, np.float32)}, ValueError, "missing"),
    ]
    for grads, exc, match in cases:
        with pytest.raises(exc, match=match):
            opt.step(grads)
    assert opt.step_count == 0 and np.all(p == 1) and np.all(q == 1)


def test_torch_tensors_in_place_through_dlpack():
    w = torch.nn.Parameter(torch.randn(5, 3))
    b16 = torch.randn(7).to(torch.bfloat16)
    before = w.detach().clone()
    opt = npadam.AdamW([w, b16], lr=1e-2)
    w.grad = torch.ones(5, 3)
    opt.step([w.grad, torch.ones(7, dtype=torch.bfloat16)])
    assert not torch.equal(before, w.detach())
    assert torch.allclose(w.detach(), before * (1 - 1e-4) - 1e-2, atol=1e-6)
    opt.zero_grad()
    assert w.grad is None


def test_read_only_producer_is_never_written():
    p = np.ones(4, np.float32)
    p.flags.writeable = False
    opt = npadam.AdamW([p], lr=1e-2, weight_decay=0.0)
    info = opt.step([np.ones(4, np.float32)])
    assert np.all(p == 1)
    assert info.params is not None and np.allclose(info.params[0], 0.99, atol=1e-6)
    assert opt.params[0] is info.params[0]


def test_low_precision_params_keep_fp32_master():
    p = np.full(1000, 1.0, dtype=ml_dtypes.bfloat16)
    opt = npadam.AdamW([p], lr=1e-5, weight_decay=0.0)
    for _ in range(10):
        opt.step([np.ones(1000, ml_dtypes.bfloat16)])
    master = opt.state_dict()["state"][0]["master"]
    assert np.allclose(master, 1 - 1e-4, atol=1e-7)  # the fp32 master moved...
    assert np.all(p.astype(np.float32) == master.astype(ml_dtypes.bfloat16).astype(np.float32))  # ...p is its rounding


def test_num_threads_option_restores_numba():
    import numba

    before = numba.get_num_threads()
    opt = npadam.AdamW([np.ones(10, np.float32)], num_threads=1)
    opt.step([np.ones(10, np.float32)])
    assert numba.get_num_threads() == before


def test_bfloat16_marker_for_uint16_bits():
    bits = np.zeros(8, np.uint16)
    opt = npadam.AdamW([npadam.interop.Bfloat16(bits)], lr=0.1, weight_decay=0.0)
    opt.step([npadam.interop.Bfloat16(np.full(8, 0x3F80, np.uint16))])  # grads of 1.0
    ref = np.zeros(8, ml_dtypes.bfloat16)
    npadam.AdamW([ref], lr=0.1, weight_decay=0.0).step([np.ones(8, ml_dtypes.bfloat16)])
    assert bits.tobytes() == ref.tobytes() and bits[0] != 0
    with pytest.raises(TypeError, match="16-bit"):
        npadam.interop.Bfloat16(np.zeros(3, np.float32))


def test_gpu_requests_fail_clearly_on_host_arrays():
    with pytest.raises(ValueError, match="kernel='gpu' needs params in GPU memory"):
        npadam.AdamW([np.zeros(3, np.float32)], kernel="gpu")


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), min_size=0, max_size=6),
       st.lists(st.tuples(st.integers(0, 60), st.integers(0, 12)), min_size=0, max_size=6))
def test_check_apart_matches_brute_force(params, grads):
    from npadam._params import check_apart

    ps = []  # disjoint param ranges
    for s, n in params:
        if all(s + n <= a or b <= s for a, b in ps) or n == 0:
            ps.append((s, s + n))
    clash = any(gs < pe and ps_ < gs + gn and gn and pe > ps_ for gs, gn in grads for ps_, pe in ps)
    arr = lambda xs: np.asarray(xs, dtype=np.int64).reshape(-1)  # noqa: E731
    args = (arr([a for a, _ in ps]), arr([b for _, b in ps]), arr([s for s, _ in grads]),
            arr([s + n for s, n in grads]), lambda g, p: f"g{g} p{p}")
    if clash:
        with pytest.raises(ValueError, match="share memory"):
            check_apart(*args)
    else:
        check_apart(*args)


def test_non_native_byte_order_is_refused():
    """The kernels read raw memory: a big-endian array would be read as garbage (issue 8, finding 1)."""
    big = np.ones(4, ">f4")
    with pytest.raises(TypeError, match="byte order"):
        npadam.AdamW([big])
    p = np.ones(4, np.float32)
    opt = npadam.AdamW([p])
    with pytest.raises(TypeError, match="byte order"):
        opt.step([np.ones(4, ">f4")])
    assert np.all(p == 1) and opt.step_count == 0
