"""State of GPU params in host memory (``offload_fraction`` / ``gpu_state_bytes``), tested without a
GPU: under ``npadam._placement.standin`` host params take the GPU-params path, and the "device" side
of ``npadam.tiers.transfer`` is ``HostCopier`` (host memory, each copy stream a worker thread whose
copies land late). The ordering logic (pieces, staging slots, waits, copy-back) is the code that runs
on a GPU; tests/test_gpu.py runs the same checks on CuPy arrays and CUDA tensors.

Every run is compared bit for bit with the run that keeps all state with the params."""

from __future__ import annotations

import random

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npadam
from npadam import _placement, checkpoint
from npadam._placement import engine_offload, offload_placement
from npadam.tiers.transfer import HostCopier, Piece, Staging, _runs

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = [5, 300, 64, 4097, 1, 2000, 130]


def _slow_h2d(stream: str) -> float:
    """Copies land late, the host→device stream later: a missing wait or slot hand-over shows."""
    return random.random() * (0.002 if stream == "h2d" else 0.0004)


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in SIZES]


def _grads(k, dtype, bad=False, missing=()):
    rng = np.random.default_rng(100 + k)
    g = [(rng.standard_normal(n) * 2).astype(np.float32).astype(dtype) for n in SIZES]
    if bad:
        g[3][7] = np.inf
    for i in missing:
        g[i] = None
    return g


def _run(cls, tmp_path=None, *, dtype=np.float32, steps=6, piece=128, depth=2, copier=None, groups=True,
         nvme=0.0, **kw):
    params = _params(dtype)
    spec = [{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}] if groups else params
    if nvme:
        kw.update(nvme_offload_fraction=nvme, nvme_offload_dir=tmp_path, nvme_staging_bytes=1 << 16)
    with _placement.standin(copier or (lambda: HostCopier(delay=_slow_h2d)), piece_elems=piece, depth=depth):
        opt = cls(spec, **kw)
    infos = []
    for k in range(steps):
        info = opt.step(_grads(k, dtype, bad=(k == 2), missing=(1,) if k == 4 else ()))
        infos.append((info.skipped, info.grad_norm))
    return opt, params, infos


def _state_bytes(opt):
    sd = opt.state_dict()
    return {(i, k): np.asarray(v).tobytes() for i, st_ in sd["state"].items() for k, v in st_.items()}


def _same(a, b):
    (oa, pa, ia), (ob, pb, ib) = a, b
    assert ia == ib and ia[2][0]  # the inf step was skipped in both
    assert [p.tobytes() for p in pa] == [p.tobytes() for p in pb]
    assert _state_bytes(oa) == _state_bytes(ob)


ALGOS = [
    (npadam.AdamW, {"lr": 1e-2, "max_grad_norm": 1.0}),
    (npadam.AdamW, {"lr": 1e-2, "amsgrad": True}),
    (npadam.Adam, {"lr": 1e-2, "weight_decay": 0.1}),
    (npadam.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
]


@pytest.mark.parametrize("cls,kw", ALGOS, ids=["adamw-clip", "amsgrad", "adam-l2", "sgd-nesterov"])
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("where", [dict(offload_fraction=0.5), dict(offload_fraction=1.0),
                                   dict(gpu_state_bytes=20_000), dict(offload_fraction=0.6, nvme=0.5)],
                         ids=["half", "all", "budget", "half+disk"])
def test_placement_invariance(cls, kw, dtype, where, tmp_path):
    base = _run(cls, dtype=dtype, **kw)
    where = dict(where)
    nvme = where.pop("nvme", 0.0)
    moved = _run(cls, tmp_path, dtype=dtype, nvme=nvme, **where, **kw)
    eng = moved[0]._engine
    assert eng.host and not base[0]._engine.tiered and bool(eng.disk) == bool(nvme)
    _same(base, moved)
    moved[0].close()


@settings(max_examples=12, deadline=None)
@given(fraction=st.floats(0.01, 1.0), piece=st.sampled_from([64, 128, 640, 4096]), depth=st.integers(1, 3),
       amsgrad_late=st.booleans(), dtype=st.sampled_from([np.float32, BF16]))
def test_any_fraction_piece_and_depth(fraction, piece, depth, amsgrad_late, dtype):
    runs = []
    for f in (0.0, fraction):
        params = _params(dtype, seed=1)
        with _placement.standin(lambda: HostCopier(delay=_slow_h2d), piece_elems=piece, depth=depth):
            opt = npadam.AdamW(params, lr=1e-2, offload_fraction=f)
        for k in range(4):
            if amsgrad_late and k == 2:  # amsgrad switched on mid-run: max_exp_avg_sq starts as exp_avg_sq
                opt.param_groups[0]["amsgrad"] = True
            opt.step(_grads(k, dtype))
        runs.append(([p.tobytes() for p in params], _state_bytes(opt)))
    assert runs[0] == runs[1]


class _NoWait(HostCopier):
    """A broken copier: the host does not wait for device→host copies."""

    def wait(self, token):
        pass


class _NoSlotWait(HostCopier):
    """A broken copier: a staging slot is refilled before its params went back to the device."""

    def d2h_after(self, token):
        pass


@pytest.mark.parametrize("broken", [_NoWait, _NoSlotWait])
def test_the_stand_in_catches_a_missing_wait(broken):
    """The CI stand-in is sharp: an ordering bug (here a copier that skips a wait) changes the bits."""
    base = _run(npadam.AdamW, lr=1e-2, groups=False, steps=3)
    bad = _run(npadam.AdamW, lr=1e-2, groups=False, steps=3, piece=64, offload_fraction=1.0,
               copier=lambda: broken(delay=lambda s: 0.003 if s == "h2d" else 0.001))
    copier = bad[0]._engine.copier()
    for stream in ("d2h", "h2d"):  # let the late copies land before the staging they write is freed
        HostCopier.wait(copier, copier.mark(stream))
    assert [p.tobytes() for p in base[1]] != [p.tobytes() for p in bad[1]]


def test_state_dicts_and_checkpoints_move_between_placements(tmp_path):
    """An offloaded run saves and loads like any other: its state dict equals the GPU-only run's,
    loading it into another placement (and into an optimizer with state on disk) continues bit for bit."""
    base, p0, _ = _run(npadam.AdamW, lr=1e-2, amsgrad=True)
    moved, p1, _ = _run(npadam.AdamW, lr=1e-2, amsgrad=True, offload_fraction=0.7)
    checkpoint.save(tmp_path / "ck", moved)
    sd = base.state_dict()
    for where in (dict(offload_fraction=0.3), dict(offload_fraction=1.0), dict(offload_fraction=0.5, nvme=1.0)):
        where = dict(where)
        nvme = where.pop("nvme", 0.0)
        params = [p.copy() for p in p0]
        kw = dict(nvme_offload_fraction=nvme, nvme_offload_dir=tmp_path, nvme_staging_bytes=1 << 16) if nvme else {}
        with _placement.standin(lambda: HostCopier(delay=_slow_h2d), piece_elems=192):
            opt = npadam.AdamW([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}], lr=1e-2,
                               amsgrad=True, **where, **kw)
        opt.load_state_dict(sd)
        assert _state_bytes(opt) == _state_bytes(base)
        again = [p.copy() for p in p0]
        ck = npadam.AdamW([{"params": again[:3]}, {"params": again[3:], "weight_decay": 0.0}], lr=1e-2, amsgrad=True)
        checkpoint.load(tmp_path / "ck", ck)
        for k in range(6, 9):
            g = _grads(k, np.float32)
            for o in (base, opt, ck):
                o.step(g)
        assert [p.tobytes() for p in params] == [p.tobytes() for p in p0] == [p.tobytes() for p in again]
        assert _state_bytes(opt) == _state_bytes(base) == _state_bytes(ck)
        opt.close()
        base.load_state_dict(sd)  # back for the next placement
        for p, q in zip(p0, p1):
            p[...] = q


def test_pieces_copy_only_the_tensors_and_merge_contiguous_ones():
    """Padding between tensors is never written on the device, and tensors adjacent on both sides go
    in one copy (flat storage: one copy per piece and direction)."""
    dev = np.full(400, -1.0, np.float32)
    base = dev.__array_interface__["data"][0]
    # tensors at [0, 100), [128, 200) (gap 100..128), [200, 300): the last two are contiguous
    offsets, sizes = np.array([0, 128, 200]), np.array([100, 72, 100])
    ptrs = base + offsets * 4
    copier = HostCopier(delay=_slow_h2d)
    stage = Staging(copier, 192, depth=2)
    pieces = [Piece(a, b, *_cut(ptrs, ptrs, offsets, sizes, a, b)) for a, b in stage.pieces(0, 300)]
    for (hp, _), piece in zip(stage.run(pieces, 4, 4), pieces):  # +1 on every staged param element
        for h, n in zip(hp.tolist(), piece.sizes.tolist()):
            np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * n).from_address(h))[...] += 1
    assert np.array_equal(dev[:100], np.zeros(100)) and np.array_equal(dev[128:300], np.zeros(172))
    assert np.array_equal(dev[100:128], np.full(28, -1.0)) and np.array_equal(dev[300:], np.full(100, -1.0))
    # piece [0, 192): [0,100) and [128,192) (gap: 2 copies); piece [192, 300): [192,200)+[200,300) merge: 1
    assert copier.copies == {"d2h": 2 * 3, "h2d": 3}
    assert _runs(np.array([0, 400, 800]), np.array([0, 400, 900]), np.array([100, 100, 100]), 4) == \
        [(0, 0, 800), (800, 900, 400)]


def _cut(pp, gp, offsets, sizes, a, b):
    lo, hi = np.maximum(offsets, a), np.minimum(offsets + sizes, b)
    m = hi > lo
    return pp[m] + (lo[m] - offsets[m]) * 4, gp[m] + (lo[m] - offsets[m]) * 4, lo[m], hi[m] - lo[m]



def test_an_early_exit_copies_back_only_finished_pieces():
    """An exception in the caller's loop: the pieces finished before are on the device, the current
    and later ones are untouched, and every copy in flight has landed before ``run`` returns."""
    dev = np.zeros(640, np.float32)
    ptr = dev.__array_interface__["data"][0]
    stage = Staging(HostCopier(delay=_slow_h2d), 128, depth=2)
    pieces = [Piece(a, b, np.array([ptr + 4 * a]), np.array([ptr + 4 * a]), np.array([a]), np.array([b - a]))
              for a, b in stage.pieces(0, 640)]
    with pytest.raises(RuntimeError, match="stop"):
        for i, (hp, _) in enumerate(stage.run(pieces, 4, 4)):
            np.ctypeslib.as_array((np.ctypeslib.ctypes.c_float * 128).from_address(int(hp[0])))[...] = i + 1
            if i == 2:
                raise RuntimeError("stop")
    assert dev.reshape(5, 128)[:, 0].tolist() == [1.0, 2.0, 0.0, 0.0, 0.0]
    assert stage.nbytes == 3 * 8 * 128  # depth + 1 slots of params and grads, whatever the buffer size


def test_host_params_ignore_offload_fraction():
    """Without a GPU the state is in host memory already: offload_fraction changes nothing."""
    params = _params(np.float32)
    opt = npadam.AdamW(params, lr=1e-2, offload_fraction=0.5, pin_memory=False)
    assert opt.offload_fraction == 0.5 and opt.pin_memory is False and not opt._engine.tiered
    base = _run(npadam.AdamW, lr=1e-2, groups=False)
    for k in range(6):
        opt.step(_grads(k, np.float32, bad=(k == 2), missing=(1,) if k == 4 else ()))
    assert [p.tobytes() for p in params] == [p.tobytes() for p in base[1]]


@pytest.mark.parametrize("kw,err,match", [
    (dict(offload_fraction=1.5), ValueError, "offload_fraction"),
    (dict(offload_fraction=-0.1), ValueError, "offload_fraction"),
    (dict(offload_fraction="half"), TypeError, "offload_fraction"),
    (dict(offload_fraction=float("nan")), ValueError, "offload_fraction"),
    (dict(gpu_state_bytes=-1), ValueError, "gpu_state_bytes"),
    (dict(gpu_state_bytes=1.5), ValueError, "gpu_state_bytes"),
    (dict(gpu_state_bytes="1G"), TypeError, "gpu_state_bytes"),
    (dict(gpu_state_bytes=1 << 20, offload_fraction=0.5), ValueError, "not both"),
    (dict(pin_memory="yes"), TypeError, "pin_memory"),
])
def test_bad_options_are_named(kw, err, match):
    with pytest.raises(err, match=match):
        npadam.AdamW([np.ones(4, np.float32)], **kw)
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    with pytest.raises(err, match=match):
        nt.AdamW([torch.nn.Parameter(torch.ones(4))], **kw)


def test_a_disk_tier_on_gpu_params_needs_a_host_part(tmp_path):
    disk = npadam._placement.disk_placement(0.5, tmp_path, 1 << 16)
    with pytest.raises(ValueError, match="nvme_offload_fraction with params on a GPU needs offload_fraction"):
        engine_offload(None, disk, "gpu")
    budget = npadam._placement.disk_placement(0.0, tmp_path, 1 << 16, host_state_bytes=1000)
    with pytest.raises(ValueError, match="host_state_bytes with params on a GPU"):
        engine_offload(None, budget, "gpu")
    off = offload_placement(0.5, True, None)
    assert engine_offload(off, disk, "gpu") is off and engine_offload(off, disk, "cpu") is None


def test_offloaded_optimizers_refuse_copies_and_keep_groups_apart():
    import copy

    opt, params, _ = _run(npadam.AdamW, lr=1e-2, offload_fraction=0.5)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        copy.deepcopy(opt)
    extra = [np.ones(700, np.float32)]
    with _placement.standin(lambda: HostCopier(delay=_slow_h2d), piece_elems=128):
        opt.add_param_group({"params": extra, "lr": 0.1})
    assert len(opt._engine.host) == 3  # the new group's buffer has its own host part
    twin = npadam.AdamW([np.ones(700, np.float32)], lr=0.1)
    for k in range(3):
        g = _grads(10 + k, np.float32) + [np.full(700, 0.5 + k, np.float32)]
        opt.step(g)
        twin.step(g[-1:])
    assert extra[0].tobytes() == twin._arrays[0].tobytes()


def test_lr_finder_puts_offloaded_state_back():
    opt, params, _ = _run(npadam.AdamW, lr=1e-2, offload_fraction=0.8)
    before, state = [p.tobytes() for p in params], _state_bytes(opt)
    res = npadam.lr_finder(lambda: (float(sum(float(np.sum(p.astype(np.float32) ** 2)) for p in params)),
                                    [2 * p for p in params]), opt, num_steps=8, progress=False)
    assert res.lrs.size >= 2 and [p.tobytes() for p in params] == before and _state_bytes(opt) == state


def test_torch_front_end_with_offloaded_state():
    """npadam.torch on the stand-in: a model trains bit-identically with its state half in host
    memory; state[p] gives host tensors whose in-place edits are taken in at the next step."""
    torch = pytest.importorskip("torch")
    import npadam.torch as nt

    def train(**kw):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(16, 33), torch.nn.GELU(), torch.nn.Linear(33, 5))
        with _placement.standin(lambda: HostCopier(delay=_slow_h2d), piece_elems=192):
            opt = nt.AdamW(model.parameters(), lr=1e-2, max_grad_norm=1.0, **kw)
        sched = torch.optim.lr_scheduler.StepLR(opt, 2, 0.5)
        x, y = torch.randn(64, 16, generator=torch.Generator().manual_seed(1)), torch.randn(64, 5)
        for k in range(5):
            opt.zero_grad()
            torch.nn.functional.mse_loss(model(x), y).backward()
            opt.step()
            sched.step()
            if k == 2:
                opt.state[model[0].weight]["exp_avg"].mul_(0.5)  # an in-place edit of the state
        return model, opt

    m0, o0 = train()
    m1, o1 = train(offload_fraction=0.5)
    assert o1._engine.host and not o0._engine.tiered
    for a, b in zip(m0.parameters(), m1.parameters()):
        assert torch.equal(a, b)
    for p0, p1 in zip(m0.parameters(), m1.parameters()):
        for key in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(o0.state[p0][key], o1.state[p1][key])
    sd = o1.state_dict()
    m2, o2 = train(offload_fraction=1.0)
    o2.load_state_dict(sd)
    assert all(torch.equal(o2.state[p2]["exp_avg"], o1.state[p1]["exp_avg"])
               for p1, p2 in zip(m1.parameters(), m2.parameters()))
