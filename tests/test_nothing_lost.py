"""Issue 8's review findings: every bad input is rejected before anything changes.

Each test drives the public API with one hostile value and checks both the error
(type, and that it names the value) and that params, state and step counts are
exactly as before.
"""

from __future__ import annotations

import copy

import numpy as np
import pytest

import npadam
from npadam import functional as F
from npadam import schedules as S


def _opt(**kw):
    p = {"a": np.linspace(-1, 1, 6, dtype=np.float32), "b": np.ones((2, 3), np.float32)}
    opt = npadam.AdamW(p, lr=1e-2, **kw)
    return opt, p


def _grads(p, value=0.5):
    return {k: np.full(v.shape, value, np.float32) for k, v in p.items()}


def _snapshot(opt, p):
    return copy.deepcopy(opt.state_dict()), {k: v.copy() for k, v in p.items()}


def _assert_same(opt, p, snap):
    sd, params = snap
    now = opt.state_dict()
    assert now["npadam"]["step"] == sd["npadam"]["step"]
    for i, st in sd["state"].items():
        for k, v in st.items():
            np.testing.assert_array_equal(now["state"][i][k], v)
    for k, v in params.items():
        assert p[k].tobytes() == v.tobytes()


# ------------------------------------------------------------------ schedules at step time (item 2)
@pytest.mark.parametrize("key, schedule, match", [
    ("lr", S.constant(-0.1), "lr at step 0 is -0.1"),
    ("weight_decay", S.constant(-0.5), "weight_decay at step 0 is -0.5"),
    ("lr", S.linear(init=1e-2, final=1e308, steps=2), "lr=5e\+307.*non-finite float32"),
])
def test_schedule_values_checked_before_any_write(key, schedule, match):
    a, b = np.ones(4, np.float32), np.ones(4, np.float32)
    opt = npadam.AdamW([{"params": [a]}, {"params": [b], key: schedule}], lr=1e-2)
    for k in range(3):
        before = a.copy(), b.copy(), copy.deepcopy(opt.state_dict())
        try:
            opt.step([np.ones(4, np.float32), np.ones(4, np.float32)])
        except ValueError as e:
            assert "param_groups[1]" in str(e)
            break
    else:
        pytest.fail("the bad schedule value was applied")
    with pytest.raises(ValueError, match=match):
        opt.step([np.ones(4, np.float32), np.ones(4, np.float32)])
    assert a.tobytes() == before[0].tobytes() and b.tobytes() == before[1].tobytes()
    assert opt.step_count == k
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["exp_avg"], before[2]["state"][0]["exp_avg"])


def test_beta_reaching_one_fails_before_earlier_groups_update():
    """torch OneCycleLR with max_momentum=1.0 drives beta1 to 1: a ZeroDivisionError after the
    first group was updated, before this fix."""
    beta1 = S.from_config("torch", {"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 0.1, "total_steps": 10,
                                    "max_momentum": 1.0, "base_momentum": 0.85}).beta1
    a, b = np.ones(3, np.float32), np.ones(3, np.float32)
    opt = npadam.AdamW([{"params": [a]}, {"params": [b], "betas": (beta1, 0.999)}], lr=1e-3)
    with pytest.raises(ValueError, match=r"param_groups\[1\].*beta1 at step 0 is 1.0"):
        opt.step([np.ones(3, np.float32), np.ones(3, np.float32)])
    assert (a == 1).all() and (b == 1).all() and opt.step_count == 0


def test_lr_that_overflows_float32_is_rejected():
    """1e39 is finite in float64 and inf in float32: the kernel would write NaN everywhere."""
    opt, p = _opt()
    opt.step(_grads(p))
    snap = _snapshot(opt, p)
    opt.param_groups[0]["lr"] = 1e39
    with pytest.raises(ValueError, match="non-finite float32 step_size"):
        opt.step(_grads(p))
    _assert_same(opt, p, snap)


# ------------------------------------------------------------------ load_state_dict (item 5)
def _bad_dicts(sd):
    def edit(fn):
        d = copy.deepcopy(sd)
        fn(d)
        return d

    yield "missing exp_avg", edit(lambda d: d["state"][0].pop("exp_avg")), ValueError, "lacks.*exp_avg"
    yield "NaN exp_avg_sq", edit(lambda d: d["state"][0]["exp_avg_sq"].__setitem__(0, np.nan)), ValueError, \
        "exp_avg_sq must be finite and >= 0"
    yield "negative exp_avg_sq", edit(lambda d: d["state"][1]["exp_avg_sq"].__setitem__((0, 0), -1.0)), \
        ValueError, "exp_avg_sq must be finite and >= 0"
    yield "inf exp_avg", edit(lambda d: d["state"][0]["exp_avg"].__setitem__(1, np.inf)), ValueError, \
        "exp_avg must be finite"
    yield "float64 overflow", edit(lambda d: d["state"][0].__setitem__(
        "exp_avg", np.full(6, 1e300))), ValueError, "overflow float32"
    yield "complex", edit(lambda d: d["state"][0].__setitem__(
        "exp_avg", np.zeros(6, np.complex64))), TypeError, "floating-point"
    yield "step 2**63", edit(lambda d: d["state"][0].__setitem__("step", 2**63)), ValueError, "below 2\\*\\*63"
    yield "optimizer step -1", edit(lambda d: d["npadam"].__setitem__("step", -1)), ValueError, "non-negative"
    yield "missing state", edit(lambda d: d.pop("state")), ValueError, "no 'state' entry"
    yield "state None", edit(lambda d: d.__setitem__("state", None)), TypeError, "must be a mapping"
    yield "groups as dict", edit(lambda d: d.__setitem__("param_groups", {})), TypeError, "param_groups"
    yield "group None", edit(lambda d: d["param_groups"].__setitem__(0, None)), TypeError, "param_groups\\[0\\]"
    yield "param state list", edit(lambda d: d["state"].__setitem__(0, [1, 2])), TypeError, "must be a mapping"
    yield "unknown format", edit(lambda d: d["npadam"].__setitem__("format", "npadam.optimizer/99")), \
        ValueError, "unknown npadam state dict format"
    yield "amsgrad switched on", edit(lambda d: d["param_groups"][0].__setitem__("amsgrad", True)), \
        ValueError, "lacks max_exp_avg_sq"
    yield "lr string", edit(lambda d: d["param_groups"][0].__setitem__("lr", "0.1")), TypeError, "lr"
    yield "flag string", edit(lambda d: d["param_groups"][0].__setitem__("maximize", "False")), TypeError, \
        "maximize must be a bool"
    yield "scaler scale 1e39", edit(lambda d: d["npadam"]["loss_scaler"].__setitem__("scale", 1e39)), \
        ValueError, "scale"
    yield "scaler scale string", edit(lambda d: d["npadam"]["loss_scaler"].__setitem__("scale", "65536")), \
        TypeError, "scale"
    yield "no scaler state", edit(lambda d: d["npadam"].__setitem__("loss_scaler", None)), ValueError, \
        "saved without a loss scaler"
    yield "not a mapping", None, TypeError, "must be a mapping"


def test_load_state_dict_rejects_inconsistent_state_and_changes_nothing():
    opt, p = _opt(loss_scaler=npadam.LossScaler(init_scale=256.0))
    for _ in range(2):
        opt.step(_grads(p))
    sd = opt.state_dict()
    opt.step(_grads(p, 0.25))
    opt.loss_scaler.update(True)
    snap = _snapshot(opt, p)
    scale = opt.loss_scaler.scale
    for what, bad, exc, match in _bad_dicts(sd):
        with pytest.raises(exc, match=match):
            opt.load_state_dict(bad)
        _assert_same(opt, p, snap)
        assert opt.loss_scaler.scale == scale, what
    opt.load_state_dict(sd)  # the good one still loads
    assert opt.step_count == 2


def test_saved_scaler_state_is_never_dropped():
    opt, p = _opt(loss_scaler=npadam.LossScaler(init_scale=64.0))
    opt.step(_grads(p))
    plain, q = _opt()
    with pytest.raises(ValueError, match="has no loss_scaler"):
        plain.load_state_dict(opt.state_dict())
    assert plain.step_count == 0


def test_torch_state_dict_keeps_the_current_scaler():
    torch = pytest.importorskip("torch")
    w = torch.nn.Parameter(torch.ones(4))
    topt = torch.optim.AdamW([w], lr=1e-2)
    w.grad = torch.ones(4)
    topt.step()
    arr = np.ones(4, np.float32)
    opt = npadam.AdamW([arr], lr=1e-2, loss_scaler=npadam.LossScaler(init_scale=32.0))
    opt.load_state_dict(topt.state_dict())
    assert opt.loss_scaler.scale == 32.0 and opt.step_count == 1


# ------------------------------------------------------------------ arrays and flags (item 6)
def test_masked_arrays_are_refused():
    w = np.ma.masked_array(np.ones(4, np.float32), mask=[0, 1, 0, 0])
    with pytest.raises(TypeError, match="masked array"):
        npadam.AdamW([w])
    opt = npadam.AdamW([np.ones(4, np.float32)])
    with pytest.raises(TypeError, match="masked array"):
        opt.step([np.ma.masked_array(np.ones(4, np.float32), mask=[0, 1, 0, 0])])
    assert opt.step_count == 0


@pytest.mark.filterwarnings("ignore::PendingDeprecationWarning")
def test_np_matrix_params_update_like_arrays():
    m = np.matrix(np.full((2, 3), 0.5, np.float32))
    a = np.full((2, 3), 0.5, np.float32)
    for w in (m, a):
        opt = npadam.AdamW([w], lr=0.1)
        opt.step([np.full((2, 3), 0.25, np.float32)])
    assert np.asarray(m).tobytes() == a.tobytes()


@pytest.mark.parametrize("flag", ["amsgrad", "maximize", "bias_correction"])
@pytest.mark.parametrize("value", ["False", "true", 0, 1, None])
def test_flags_must_be_bools(flag, value):
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        npadam.AdamW([np.ones(3, np.float32)], **{flag: value})
    with pytest.raises(TypeError, match=f"{flag} must be a bool"):
        npadam.AdamW([{"params": [np.ones(3, np.float32)], flag: value}])


@pytest.mark.parametrize("pdtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("algo", ["adamw", "adam", "sgd"])
def test_nonfinite_steps_are_bit_identical_nan_included(pdtype, algo):
    """skip_nonfinite=False with NaN grads of both signs, maximize and amsgrad: the x86 kernel gave
    -nan where the reference gave nan (IEEE 754 leaves a NaN's sign and payload open). Every
    written value now goes through reference.adamw.canonical_nan: all bits equal, NaN included."""
    import ml_dtypes

    dt = ml_dtypes.bfloat16 if pdtype == "bfloat16" else np.dtype(pdtype)
    rng = np.random.default_rng(3)
    g0 = rng.standard_normal((3, 200)).astype(np.float32)
    g0[:, ::7] = np.nan
    g0[1, ::5] = -np.nan
    g0[2, ::11] = np.float32(-np.inf)
    out = {}
    for kernel in ("cpu", "reference"):
        w = np.linspace(-1, 1, 200, dtype=np.float32).astype(dt)
        if algo == "sgd":
            opt = npadam.SGD([w], lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.01, maximize=True,
                             skip_nonfinite=False, kernel=kernel)
        else:
            cls = npadam.AdamW if algo == "adamw" else npadam.Adam
            opt = cls([w], lr=0.1, maximize=True, amsgrad=True, weight_decay=0.01, skip_nonfinite=False,
                      kernel=kernel)
        for g in g0:
            opt.step([g.copy()])
        st = opt.state_dict()["state"][0]
        out[kernel] = [w.view(np.uint16 if pdtype != "float32" else np.uint32)] + [
            np.asarray(st[k]).view(np.uint32) for k in sorted(st) if k != "step"]
    for a, b in zip(out["cpu"], out["reference"]):
        assert a.tobytes() == b.tobytes()
    assert np.isnan(out["cpu"][1].view(np.float32)).any()
    nan_bits = out["cpu"][1][np.isnan(out["cpu"][1].view(np.float32))]
    assert (nan_bits == 0x7FC00000).all()


# ------------------------------------------------------------------ functional.update (item 6)
def _fstate(n=8, amsgrad=False):
    p = np.linspace(-1, 1, n, dtype=np.float32)
    return p, np.full(n, 0.5, np.float32), F.init(p, amsgrad=amsgrad)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(lr=-1e-3), ValueError, "lr must be >= 0"),
    (dict(lr=float("nan")), ValueError, "lr must be finite"),
    (dict(lr=1e39), ValueError, "non-finite step_size"),
    (dict(betas=(1.0, 0.999)), ValueError, r"betas\[0\] must be < 1"),
    (dict(betas=(0.9, 1.0)), ValueError, r"betas\[1\] must be < 1"),
    (dict(betas=0.9), ValueError, "pair"),
    (dict(eps=-1.0), ValueError, "eps must be >= 0"),
    (dict(weight_decay=float("inf")), ValueError, "weight_decay must be finite"),
    (dict(grad_scale=0.0), ValueError, "grad_scale must be > 0"),
    (dict(amsgrad="False"), TypeError, "amsgrad must be a bool"),
    (dict(decoupled=1), TypeError, "decoupled must be a bool"),
    (dict(maximize=None), TypeError, "maximize must be a bool"),
])
def test_functional_update_validates_hyperparameters(kwargs, exc, match):
    p, g, st = _fstate()
    kwargs = {"lr": 1e-2, **kwargs}
    before = p.copy()
    with pytest.raises(exc, match=match):
        F.update(p, g, st, **kwargs)
    assert p.tobytes() == before.tobytes() and not st.exp_avg.any() and st.step == 0


def test_functional_update_validates_arrays_and_writes_nothing():
    p, g, st = _fstate()
    ro = p.copy()
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="param is read-only"):
        F.update(ro, g, st, lr=1e-2)
    frozen = F.init(p)
    frozen.exp_avg_sq.flags.writeable = False
    with pytest.raises(ValueError, match="state.exp_avg_sq is read-only"):
        F.update(p, g, frozen, lr=1e-2)
    shared = F.AdamState(st.exp_avg, st.exp_avg)
    with pytest.raises(ValueError, match="share memory"):
        F.update(p, g, shared, lr=1e-2)
    with pytest.raises(ValueError, match="share memory"):
        F.update(p, p, st, lr=1e-2)
    with pytest.raises(TypeError, match="must be float32"):
        F.update(p, g, F.AdamState(st.exp_avg.astype(np.float64), st.exp_avg_sq), lr=1e-2)
    with pytest.raises(ValueError, match="state.step"):
        F.update(p, g, F.AdamState(st.exp_avg, st.exp_avg_sq, step=-1), lr=1e-2)
    with pytest.raises(ValueError, match="state.step"):
        F.update(p, g, F.AdamState(st.exp_avg, st.exp_avg_sq, step=True), lr=1e-2)
    with pytest.raises(TypeError, match="masked array"):
        F.update(p, np.ma.masked_array(g), st, lr=1e-2)
    with pytest.raises(TypeError, match="AdamState"):
        F.update(p, g, {"exp_avg": st.exp_avg}, lr=1e-2)
    with pytest.raises(ValueError, match="amsgrad needs"):
        F.update(p, g, st, lr=1e-2, amsgrad=True)
    assert p.tobytes() == np.linspace(-1, 1, 8, dtype=np.float32).tobytes()
    assert not st.exp_avg.any() and not st.exp_avg_sq.any()
    st = F.update(p, g, st, lr=1e-2, kernel="reference")  # the good call still works
    assert st.step == 1 and st.exp_avg.all()


def test_scheduled_betas_survive_a_state_dict_with_tuples():
    """Found by the soak run: betas holding a Schedule, given back as a tuple of dumps, failed to load."""
    beta1 = S.linear(0.9, 0.8, 10)
    opt = npadam.AdamW([np.ones(3, np.float32)], betas=(beta1, 0.99))
    opt.step([np.ones(3, np.float32)])
    sd = opt.state_dict()
    sd["param_groups"][0]["betas"] = tuple(sd["param_groups"][0]["betas"])
    other = npadam.AdamW([np.ones(3, np.float32)], betas=(0.5, 0.5))
    other.load_state_dict(sd)
    assert other.param_groups[0]["schedules"]["beta1"].to_dict() == beta1.to_dict()
