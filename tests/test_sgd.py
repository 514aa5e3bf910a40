"""SGD with momentum: the reference against torch.optim.SGD, the kernels against the reference,
the front-ends as drop-ins, state dicts, bad input."""

from __future__ import annotations

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from numba import njit

import npadam
from npadam import kernels as K
from npadam import schedules as S
from npadam.kernels import cpu
from npadam.reference import adamw as RA
from npadam.reference import sgd as R

torch = pytest.importorskip("torch")
import npadam.torch as nt  # noqa: E402

BF16 = np.dtype(ml_dtypes.bfloat16)
DTYPES = {"float32": np.dtype(np.float32), "bfloat16": BF16, "float16": np.dtype(np.float16)}
# torch's add(x, y, alpha) is a fused multiply-add on every vectorized CPU build; the DEFAULT build rounds twice
TORCH_FMA = torch.backends.cpu.get_cpu_capability() != "DEFAULT"
needs_torch_fma = pytest.mark.skipif(not TORCH_FMA, reason="torch runs at the DEFAULT CPU capability (no FMA): "
                                                           "it rounds x + a*y twice, see reference/sgd.py")


def _same(a: np.ndarray, b: np.ndarray) -> bool:
    """Bit for bit, NaNs included."""
    return np.asarray(a).tobytes() == np.asarray(b).tobytes()


# ---------------------------------------------------------------------- the fused multiply-add
@njit(cache=False)
def _numba_fma(a, b, c, out):
    for i in range(a.shape[0]):
        out[i] = cpu.fma(a[i], b[i], c[i])


def test_reference_fma_is_the_ieee_fused_multiply_add():
    """The NumPy fma (round-to-odd in float64) against LLVM's fma, on random bit patterns, exact
    float32 halfway cases nudged by tiny addends (where a float64 sum would round twice) and specials."""
    rng = np.random.default_rng(0)
    n = 200_000
    bits = lambda: rng.integers(0, 1 << 32, n, dtype=np.uint64).astype(np.uint32).view(np.float32)  # noqa: E731
    a, b, c = bits(), bits(), bits()
    x = (1 + rng.integers(1, 1 << 11, n) * 2.0 ** -12).astype(np.float32)  # x*x: a float32 halfway case
    tiny = (rng.standard_normal(n) * 2.0 ** -rng.integers(30, 120, n)).astype(np.float32)
    normal = [rng.standard_normal(n).astype(np.float32) for _ in range(3)]
    special = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, 1e-45, -1e-45, 3.4e38, 1.0], np.float32)
    sa, sb, sc = (g.ravel() for g in np.meshgrid(special, special, special))
    for args in ((a, b, c), (x, x, tiny), (x, -x, tiny), normal, (sa, sb, sc)):
        out = np.empty(args[0].size, np.float32)
        _numba_fma(*args, out)
        want = R.fma(*args)
        assert _same(np.isnan(out), np.isnan(want))
        assert _same(out[~np.isnan(out)], want[~np.isnan(want)])
    assert R.fma(np.float32(1 + 2 ** -12), np.float32(1 + 2 ** -12), np.float32(2.0 ** -80)) == \
        np.float32(1 + 2 ** -11 + 2 ** -23)  # the exact value is just above the halfway point


@needs_torch_fma
def test_torch_add_with_alpha_is_a_fused_multiply_add():
    rng = np.random.default_rng(1)
    for n in (1, 7, 8, 9, 31, 1000, 4099):
        x, y = (rng.standard_normal(n).astype(np.float32) for _ in range(2))
        alpha = float(rng.uniform(-1, 1))
        got = torch.add(torch.from_numpy(x), torch.from_numpy(y), alpha=alpha).numpy()
        assert _same(got, R.fma(np.float32(alpha), y, x))


# ---------------------------------------------------------------------- reference == torch.optim.SGD
@st.composite
def sgd_options(draw):
    momentum = draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
    nesterov = momentum > 0 and draw(st.booleans())
    return dict(lr=draw(st.floats(1e-4, 0.5)), momentum=momentum,
                dampening=0.0 if nesterov else draw(st.sampled_from([0.0, 0.1, 0.5])),
                weight_decay=draw(st.sampled_from([0.0, 1e-4, 0.05])), nesterov=nesterov, maximize=draw(st.booleans()))


@needs_torch_fma
@settings(max_examples=60, deadline=None)
@given(opts=sgd_options(), sizes=st.lists(st.sampled_from([1, 2, 7, 8, 9, 33, 1000]), min_size=1, max_size=3),
       seed=st.integers(0, 2**32 - 1))
def test_reference_matches_torch_sgd_bit_for_bit(opts, sizes, seed):
    """reference.sgd_step against torch.optim.SGD(foreach=False) on float32, with params left out
    (grad None) on some steps: each tensor's buffer starts at its own first step."""
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(n).astype(np.float32) for n in sizes]
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
    topt = torch.optim.SGD(tparams, foreach=False, **opts)
    params = [p.copy() for p in init]
    bufs = [np.zeros(n, np.float32) for n in sizes]
    started = [False] * len(sizes)
    for k in range(5):
        grads = [None if rng.random() < 0.3 else (rng.standard_normal(n) * 3).astype(np.float32) for n in sizes]
        for tp, g in zip(tparams, grads):
            tp.grad = None if g is None else torch.from_numpy(g.copy())
        topt.step()
        for i, g in enumerate(grads):
            if g is None:
                continue
            R.sgd_step(params[i], g, bufs[i], first=not started[i], **opts)
            started[i] = started[i] or opts["momentum"] != 0
    for i, (tp, p) in enumerate(zip(tparams, params)):
        assert _same(tp.detach().numpy(), p), (i, opts)
        buf = topt.state[tp].get("momentum_buffer") if tp in topt.state else None
        assert (buf is not None) == started[i]
        if started[i]:
            assert _same(buf.numpy(), bufs[i])


# ---------------------------------------------------------------------- CPU kernel == reference
@st.composite
def problems(draw):
    sizes = draw(st.lists(st.sampled_from([0, 1, 7, 63, 64, 65, 1000, 40_000, 70_001]), min_size=1, max_size=4))
    pdt, gdt = draw(st.sampled_from(list(DTYPES))), draw(st.sampled_from(list(DTYPES)))
    if pdt == gdt == "bfloat16" and draw(st.booleans()):
        # the buffer reaches cpu.PARALLEL_MIN: the parallel build (the same source as the serial one, which
        # every dtype pair runs; one pair keeps CI's cold compiles down: a parallel build takes ~15 s)
        sizes.append(300_001)
    elif sum(sizes) + 64 * len(sizes) >= cpu.PARALLEL_MIN:
        sizes.pop()
    return (sizes, pdt, gdt, draw(sgd_options()), draw(st.booleans()), draw(st.integers(0, 2**32 - 1)))


@settings(max_examples=30, deadline=None)
@given(problems())
def test_cpu_kernel_is_bit_identical_to_reference(problem):
    """npadam.SGD with kernel="cpu" and "reference": every param/grad dtype, momentum mode, weight
    decay, dampening, maximize; None grads, a skipped (non-finite) step, clipping, params written
    behind the optimizer's back (low precision: they win over the master)."""
    sizes, pdt, gdt, opts, clip, seed = problem
    init = [np.random.default_rng(seed).standard_normal(n).astype(np.float32).astype(DTYPES[pdt]) for n in sizes]
    runs = {}
    for kernel in ("cpu", "reference"):
        params = [p.copy() for p in init]
        opt = npadam.SGD(params, kernel=kernel, max_grad_norm=0.5 if clip else None, **opts)
        rng = np.random.default_rng(seed + 1)
        infos = []
        for k in range(4):
            grads = [None if rng.random() < 0.25 else
                     (rng.standard_normal(n) * 3).astype(np.float32).astype(DTYPES[gdt]) for n in sizes]
            if k == 2 and any(g is not None and g.size for g in grads):
                g = next(g for g in grads if g is not None and g.size)
                g[g.size // 2] = np.nan  # skipped: nothing changes
            infos.append(opt.step(grads))
            if k == 1:
                for p in params:
                    p[::5] = (rng.standard_normal(p[::5].size) * 4).astype(np.float32).astype(p.dtype)
        runs[kernel] = (params, opt.state_dict(), [(i.skipped, repr(i.grad_norm), i.step) for i in infos])
    (p1, s1, i1), (p2, s2, i2) = runs["cpu"], runs["reference"]
    assert i1 == i2
    assert all(_same(a, b) for a, b in zip(p1, p2))
    assert s1["state"].keys() == s2["state"].keys()
    for i in s1["state"]:
        assert s1["state"][i].keys() == s2["state"][i].keys()
        for key, v in s1["state"][i].items():
            assert _same(v, s2["state"][i][key]), key


@pytest.mark.parametrize("mode", [R.PLAIN, R.MOMENTUM, R.NESTEROV])
def test_serial_and_parallel_builds_agree_and_cache_apart(mode):
    n = cpu.PARALLEL_MIN + 1001
    out = []
    for parallel in (False, True):
        kernel = cpu.sgd_pass(cpu.BF16, cpu.F32, mode, parallel)
        cells = dict(zip(kernel.py_func.__code__.co_freevars, (c.cell_contents for c in kernel.py_func.__closure__)))
        assert cells.get("PARALLEL") is parallel and kernel.targetoptions.get("parallel", False) is parallel
        r = np.random.default_rng(3)
        p = r.standard_normal(n).astype(np.float32).astype(BF16)
        master, buf = p.astype(np.float32), np.zeros(n, np.float32)
        for step in range(3):
            g = np.random.default_rng(step).standard_normal(n).astype(np.float32)
            s = R.host_scalars(lr=0.1, momentum=0.9, dampening=0.0, weight_decay=0.01, grad_scale=0.5)
            t, lo, hi = npadam.layout.work_items(np.array([n]), cpu.CHUNK)
            kernel(K.pointers([p.view(np.uint16)]), K.pointers([g]), np.zeros(1, np.int64), t, lo, hi, master, buf,
                   buf, buf, buf, buf, buf, step == 1, s.scale, np.uint32(0), np.uint32(0), np.int64(0), s.weight_decay, s.momentum, s.one_minus_dampening, s.neg_lr, True,
                   step == 0)
        out.append((p.tobytes(), master.tobytes(), buf.tobytes()))
    assert out[0] == out[1]


# ---------------------------------------------------------------------- front-ends against torch
def _mlp(seed: int = 0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 3))


def _train(model, opt, steps: int, seed: int = 1, late: torch.nn.Parameter | None = None):
    """A classification loop; ``late`` (a param) has no gradient for the first two steps."""
    g = torch.Generator().manual_seed(seed)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    for k in range(steps):
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        if late is not None and k < 2:
            late.grad = None
        opt.step()


OPTIONS = [dict(lr=0.1), dict(lr=0.1, momentum=0.9), dict(lr=0.05, momentum=0.9, nesterov=True, weight_decay=1e-2),
           dict(lr=0.05, momentum=0.8, dampening=0.3, weight_decay=1e-3, maximize=True)]


@needs_torch_fma
@pytest.mark.parametrize("opts", OPTIONS, ids=lambda o: ",".join(f"{k}={v}" for k, v in o.items()))
@pytest.mark.parametrize("flat_storage", [False, True])
def test_torch_front_end_is_a_bit_exact_drop_in(opts, flat_storage):
    a, b = _mlp(), _mlp()
    oa = nt.SGD(a.parameters(), flat_storage=flat_storage, **opts)
    ob = torch.optim.SGD(b.parameters(), foreach=False, **opts)
    assert isinstance(oa, torch.optim.Optimizer)
    # flat_storage turns a None grad into zeros (its grads are views of one buffer): no late param there
    _train(a, oa, 12, late=None if flat_storage else a[2].bias)
    _train(b, ob, 12, late=None if flat_storage else b[2].bias)
    for (name, p), q in zip(a.named_parameters(), b.parameters()):
        assert _same(p.detach().numpy(), q.detach().numpy()), name
        if opts.get("momentum"):
            assert _same(oa.state[p]["momentum_buffer"].numpy(), ob.state[q]["momentum_buffer"].numpy()), name
        else:
            assert "momentum_buffer" not in oa.state[p]
    assert int(oa.state[a[2].bias]["step"]) == (12 if flat_storage else 10) and int(oa.state[a[0].weight]["step"]) == 12


@needs_torch_fma
def test_numpy_front_end_matches_torch_with_a_momentum_schedule_through_zero():
    """npadam.SGD with a Schedule for momentum that starts at 0 (no buffer yet: torch creates it at
    the first step with momentum) against torch.optim.SGD with the momentum set before each step."""
    mom = S.linear(0.0, 0.9, 4)
    rng = np.random.default_rng(5)
    init = [rng.standard_normal(n).astype(np.float32) for n in (10, 3)]
    params = [p.copy() for p in init]
    opt = npadam.SGD(params, lr=0.1, momentum=mom, dampening=0.25, weight_decay=0.01)
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
    topt = torch.optim.SGD(tparams, lr=0.1, momentum=0.0, dampening=0.25, weight_decay=0.01, foreach=False)
    for k in range(6):
        grads = [rng.standard_normal(p.size).astype(np.float32) for p in params]
        assert opt.param_groups[0]["momentum"] == float(mom(k))
        opt.step(grads)
        topt.param_groups[0]["momentum"] = float(mom(k))
        for tp, g in zip(tparams, grads):
            tp.grad = torch.from_numpy(g)
        topt.step()
        assert all(_same(p, tp.detach().numpy()) for p, tp in zip(params, tparams)), k
    sd = opt.state_dict()
    assert sd["param_groups"][0]["momentum"] == {"schedule": mom.to_dict()}
    assert all(_same(sd["state"][i]["momentum_buffer"], topt.state[tp]["momentum_buffer"].numpy())
               for i, tp in enumerate(tparams))


def test_skip_on_nonfinite_clipping_and_loss_scaling():
    """The Adam engine's step rules: a non-finite grad skips everything (the buffers do not start,
    the scaler backs off); clipping and the loss scale fold into the one gradient scale."""
    w = np.ones(5, BF16)
    scaler = npadam.LossScaler(init_scale=4.0)
    opt = npadam.SGD([w], lr=0.5, momentum=0.9, loss_scaler=scaler, max_grad_norm=1.0)
    bad = np.full(5, 4.0, np.float32)
    bad[2] = np.inf
    info = opt.step([bad])
    assert info.skipped and opt.step_count == 0 and scaler.scale == 2.0
    assert (w == 1).all() and opt._engine.bufs[0].exp_avg is None
    assert "momentum_buffer" not in opt.state_dict()["state"][0]
    g = np.full(5, 2.0 * 3.0, np.float32)  # grads of scale * loss: unscaled 3.0 each, norm 3 * sqrt(5)
    info = opt.step([g])
    assert not info.skipped and info.grad_norm == pytest.approx(3.0 * np.sqrt(5))
    scale = np.float32(0.5 * RA.clip_coefficient(info.grad_norm, 1.0))
    p, buf = np.ones(5, np.float32), np.zeros(5, np.float32)
    R.apply_step(p, g, buf, R.host_scalars(lr=0.5, momentum=0.9, dampening=0.0, weight_decay=0.0, grad_scale=scale),
                 momentum=R.MOMENTUM, first=True)
    assert _same(opt.state_dict()["state"][0]["master"], p) and _same(w, p.astype(BF16))
    assert _same(opt.state_dict()["state"][0]["momentum_buffer"], buf)


def test_sgd_state_is_only_the_momentum_buffer():
    a, b = np.zeros(100, np.float32), np.zeros(100, BF16)
    plain = npadam.SGD([a, b], lr=0.1)
    plain.step([np.ones(100, np.float32), np.ones(100, BF16)])
    bufs = plain._engine.bufs
    assert all(x.exp_avg is None and x.exp_avg_sq is None and x.max_exp_avg_sq is None for x in bufs)
    assert [sorted(s) for s in plain.state_dict()["state"].values()] == [["step"], ["master", "step"]]
    heavy = npadam.SGD([a.copy()], lr=0.1, momentum=0.9)
    assert heavy._engine.bufs[0].exp_avg is None  # allocated at the first step with momentum
    heavy.step([np.ones(100, np.float32)])
    assert heavy._engine.bufs[0].exp_avg is not None and heavy._engine.bufs[0].exp_avg_sq is None


# ---------------------------------------------------------------------- state dicts
def test_state_dict_round_trip_resumes_bit_exactly():
    rng = np.random.default_rng(2)
    init = [rng.standard_normal(n).astype(np.float32).astype(dt) for n, dt in ((50, np.float32), (7, BF16))]
    grads = [[rng.standard_normal(p.size).astype(np.float32) for p in init] for _ in range(6)]
    kw = dict(lr=S.linear(0.1, 0.01, 6), momentum=0.9, nesterov=True, weight_decay=0.01)
    full = [p.copy() for p in init]
    opt = npadam.SGD(full, **kw)
    for g in grads:
        opt.step([x.astype(p.dtype) for x, p in zip(g, full)])
    half = [p.copy() for p in init]
    first = npadam.SGD(half, **kw)
    for g in grads[:3]:
        first.step([x.astype(p.dtype) for x, p in zip(g, half)])
    sd = first.state_dict()
    resumed = [p.copy() for p in half]
    second = npadam.SGD(resumed, lr=1.0)
    second.load_state_dict(sd)
    assert second.param_groups[0]["momentum"] == 0.9 and second.param_groups[0]["nesterov"] is True
    assert second.step_count == 3
    for g in grads[3:]:
        second.step([x.astype(p.dtype) for x, p in zip(g, resumed)])
    assert all(_same(a, b) for a, b in zip(full, resumed))


@needs_torch_fma
def test_state_dicts_interchange_with_torch_sgd_both_ways():
    kw = dict(lr=0.05, momentum=0.9, dampening=0.1, weight_decay=1e-3)
    ref, ours, theirs = _mlp(), _mlp(), _mlp()
    oref = torch.optim.SGD(ref.parameters(), foreach=False, **kw)
    _train(ref, oref, 10, late=ref[2].bias)
    # torch -> npadam.torch, then npadam.torch -> torch, each continuing the same run
    t1 = torch.optim.SGD(ours.parameters(), foreach=False, **kw)
    _train(ours, t1, 1, late=ours[2].bias)  # ours[2].bias has no buffer yet in this state dict
    assert ours[2].bias not in t1.state or t1.state[ours[2].bias].get("momentum_buffer") is None
    n1 = nt.SGD(ours.parameters(), lr=1.0)
    n1.load_state_dict(t1.state_dict())
    assert n1.param_groups[0]["momentum"] == 0.9 and "momentum_buffer" not in n1.state[ours[2].bias]
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(32, 6, generator=g), torch.randint(0, 3, (32,), generator=g)
    for k in range(1, 5):
        n1.zero_grad()
        torch.nn.functional.cross_entropy(ours(x), y).backward()
        if k < 2:
            ours[2].bias.grad = None
        n1.step()
    t2 = torch.optim.SGD(theirs.parameters(), lr=1.0)
    with torch.no_grad():
        for p, q in zip(theirs.parameters(), ours.parameters()):
            p.copy_(q)
    t2.load_state_dict(n1.state_dict())
    for _ in range(5, 10):
        t2.zero_grad()
        torch.nn.functional.cross_entropy(theirs(x), y).backward()
        t2.step()
    for p, q in zip(ref.parameters(), theirs.parameters()):
        assert _same(p.detach().numpy(), q.detach().numpy())
    # npadam.SGD (NumPy front-end) reads torch's state dict too
    arrays = [p.detach().numpy().copy() for p in theirs.parameters()]
    n2 = npadam.SGD(arrays, lr=1.0)
    n2.load_state_dict(t2.state_dict())
    assert all(_same(n2.state_dict()["state"][i]["momentum_buffer"], t2.state[p]["momentum_buffer"].numpy())
               for i, p in enumerate(theirs.parameters()))


def test_adam_and_sgd_state_dicts_do_not_mix():
    w = np.zeros(4, np.float32)
    adam = npadam.AdamW([w.copy()], lr=0.1)
    adam.step([np.ones(4, np.float32)])
    sgd = npadam.SGD([w.copy()], lr=0.1, momentum=0.9)
    sgd.step([np.ones(4, np.float32)])
    before = sgd.state_dict()
    with pytest.raises(ValueError, match="Adam/AdamW optimizer .*kind 'AdamW'.*SGD"):
        sgd.load_state_dict(adam.state_dict())
    with pytest.raises(ValueError, match="from an SGD optimizer"):
        adam.load_state_dict(before)
    after = sgd.state_dict()
    assert _same(before["state"][0]["momentum_buffer"], after["state"][0]["momentum_buffer"])
    # torch's own dicts, told apart by their keys
    p = torch.nn.Parameter(torch.zeros(4))
    tsgd = torch.optim.SGD([p], lr=0.1)  # momentum 0: no state at all, only the group keys tell
    with pytest.raises(ValueError, match="SGD optimizer .*momentum"):
        nt.AdamW([torch.nn.Parameter(torch.zeros(4))]).load_state_dict(tsgd.state_dict())
    tadam = torch.optim.Adam([p], lr=0.1)
    p.grad = torch.ones(4)
    tadam.step()
    with pytest.raises(ValueError, match="Adam/AdamW optimizer .*exp_avg"):
        nt.SGD([torch.nn.Parameter(torch.zeros(4))], lr=0.1).load_state_dict(tadam.state_dict())


# ---------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs, match", [
    (dict(lr=-0.1), "lr must be >= 0.0, got -0.1"),
    (dict(lr=0.1, momentum=-0.5), "momentum must be >= 0.0, got -0.5"),
    (dict(lr=0.1, weight_decay=-1e-4), "weight_decay must be >= 0.0"),
    (dict(lr=0.1, momentum=0.9, dampening=0.1, nesterov=True), "nesterov=True needs momentum > 0 and dampening == 0"),
    (dict(lr=0.1, nesterov=True), "nesterov=True needs momentum > 0.*momentum is 0.0"),
    (dict(lr=0.1, dampening=float("nan")), "dampening must be finite"),
    (dict(lr=0.1, nesterov=1), "nesterov must be a bool"),
])
def test_constructors_reject_bad_hyperparameters(kwargs, match):
    with pytest.raises((ValueError, TypeError), match=match):
        npadam.SGD([np.zeros(3, np.float32)], **kwargs)
    with pytest.raises((ValueError, TypeError), match=match):
        nt.SGD([torch.nn.Parameter(torch.zeros(3))], **kwargs)


@pytest.mark.parametrize("bad, k, match", [
    (dict(momentum=S.linear(0.5, -0.5, 4)), 3, r"momentum at step 3 is -0.25"),
    (dict(momentum=0.9, lr=S.linear(0.1, -0.1, 2)), 2, r"lr at step 2 is -0.1"),
    (dict(momentum=0.9, weight_decay=S.linear(0.01, -0.01, 2)), 2, r"weight_decay at step 2 is -0.01"),
])
def test_a_schedule_reaching_a_bad_value_changes_nothing(bad, k, match):
    w = np.ones(8, BF16)
    opt = npadam.SGD([w], **{"lr": 0.1, **bad})
    g = np.ones(8, BF16)
    for _ in range(k):
        opt.step([g])
    before = (w.copy(), opt.state_dict(), opt.step_count)
    with pytest.raises(ValueError, match=r"param_groups\[0\]\." + match + ".*Nothing was changed"):
        opt.step([g])
    assert _same(w, before[0]) and opt.step_count == before[2] == k
    sd = opt.state_dict()
    for key, v in before[1]["state"][0].items():
        assert _same(v, sd["state"][0][key])


def test_torch_front_end_checks_group_values_at_each_step():
    p = torch.nn.Parameter(torch.ones(4))
    opt = nt.SGD([p], lr=0.1, momentum=0.9)
    p.grad = torch.ones(4)
    opt.step()
    before = (p.detach().clone(), opt.state[p]["momentum_buffer"].clone())
    opt.param_groups[0]["momentum"] = -0.1
    with pytest.raises(ValueError, match=r"param_groups\[0\]\.momentum at step 1 is -0.1"):
        opt.step()
    opt.param_groups[0]["momentum"] = 0.9  # (Nesterov's rule is torch's constructor check only:
    opt.param_groups[0]["lr"] = 1e39       # tests/test_copies.py) finite, but -lr overflows float32
    with pytest.raises(ValueError, match="non-finite float32 neg_lr"):
        opt.step()
    assert torch.equal(p, before[0]) and torch.equal(opt.state[p]["momentum_buffer"], before[1])
    assert opt.step_count == 1
    with pytest.raises(ValueError, match="differentiable"):
        nt.SGD([p], lr=0.1, differentiable=True)


def test_state_entries_replaced_or_removed_follow_torch():
    a, b = _mlp(), _mlp()
    oa = nt.SGD(a.parameters(), lr=0.1, momentum=0.9)
    ob = torch.optim.SGD(b.parameters(), lr=0.1, momentum=0.9, foreach=False)
    _train(a, oa, 3)
    _train(b, ob, 3)
    for opt, model in ((oa, a), (ob, b)):
        del opt.state[model[0].weight]  # starts afresh: the next step clones the grad
        opt.state[model[0].bias] = {"momentum_buffer": torch.full_like(model[0].bias, 0.25)}
    _train(a, oa, 3, seed=2)
    _train(b, ob, 3, seed=2)
    for p, q in zip(a.parameters(), b.parameters()):
        close = np.allclose(p.detach().numpy(), q.detach().numpy(), rtol=1e-6, atol=1e-7)
        assert _same(p.detach().numpy(), q.detach().numpy()) if TORCH_FMA else close


def test_model_to_bfloat16_mid_run_keeps_the_buffers():
    model = _mlp()
    opt = nt.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _train(model, opt, 2)
    bufs = [opt.state[p]["momentum_buffer"].clone() for p in model.parameters()]
    model.to(torch.bfloat16)
    opt.zero_grad()
    g = torch.Generator().manual_seed(1)
    model(torch.randn(4, 6, generator=g).to(torch.bfloat16)).float().sum().backward()
    opt.step()
    for p, before in zip(model.parameters(), bufs):
        st = opt.state[p]
        assert st["momentum_buffer"].dtype == torch.float32 and not torch.equal(st["momentum_buffer"], before)
        assert "master" in st and int(st["step"]) == 3
