"""The disk tier (``nvme_offload_fraction``): the same run with any share of the state in files is
bit-identical to the all-in-memory run (params, state, grad norms), on every path that touches state
(steps, skipped steps, amsgrad, SGD momentum, state dicts, checkpoints, load_master); the files go
away on close, and bad options are errors naming the value."""

from __future__ import annotations

import os

import ml_dtypes
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import npadam
from npadam import checkpoint

BF16 = np.dtype(ml_dtypes.bfloat16)
SIZES = [5, 300, 64, 4097, 1, 2000]


def _params(dtype, seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in SIZES]


def _grads(k, dtype, bad=False):
    rng = np.random.default_rng(100 + k)
    g = [(rng.standard_normal(n) * 2).astype(np.float32).astype(dtype) for n in SIZES]
    if bad:
        g[3][7] = np.inf
    return g


def _run(cls, fraction, tmp_path, *, dtype=np.float32, steps=6, staging=1 << 16, groups=False, **kw):
    params = _params(dtype)
    spec = ([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}] if groups else params)
    opt = cls(spec, nvme_offload_fraction=fraction, nvme_offload_dir=tmp_path if fraction else None,
              nvme_staging_bytes=staging, **kw)
    infos = []
    for k in range(steps):
        info = opt.step(_grads(k, dtype, bad=(k == 2)))
        infos.append((info.skipped, info.grad_norm))
    return opt, params, infos


def _state_bytes(opt):
    sd = opt.state_dict()
    return {(i, k): np.asarray(v).tobytes() for i, st_ in sd["state"].items() for k, v in st_.items()}


@pytest.mark.parametrize("cls,kw", [
    (npadam.AdamW, {"lr": 1e-2, "max_grad_norm": 1.0}),
    (npadam.AdamW, {"lr": 1e-2, "amsgrad": True}),
    (npadam.Adam, {"lr": 1e-2, "weight_decay": 0.1}),
    (npadam.SGD, {"lr": 1e-2, "momentum": 0.9, "nesterov": True}),
], ids=["adamw-clip", "amsgrad", "adam-l2", "sgd-nesterov"])
@pytest.mark.parametrize("dtype", [np.float32, BF16], ids=["fp32", "bf16"])
@pytest.mark.parametrize("fraction", [0.3, 1.0])
def test_placement_invariance(cls, kw, dtype, fraction, tmp_path):
    base, p0, i0 = _run(cls, 0.0, tmp_path, dtype=dtype, groups=True, **kw)
    disk, p1, i1 = _run(cls, fraction, tmp_path, dtype=dtype, groups=True, **kw)
    assert disk._engine.disk and i0 == i1 and i0[2][0]  # the inf step was skipped in both
    assert all(a.tobytes() == b.tobytes() for a, b in zip(p0, p1))
    assert _state_bytes(base) == _state_bytes(disk)
    disk.close()


@settings(max_examples=15, deadline=None)
@given(fraction=st.floats(0.01, 1.0), staging=st.sampled_from([1 << 16, 1 << 17, 1 << 20]),
       amsgrad_late=st.booleans())
def test_any_fraction_and_staging(fraction, staging, amsgrad_late, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("nvme")
    runs = []
    for f in (0.0, fraction):
        params = _params(BF16, seed=1)
        opt = npadam.AdamW(params, lr=1e-2, nvme_offload_fraction=f, nvme_offload_dir=tmp if f else None,
                           nvme_staging_bytes=staging)
        for k in range(4):
            if amsgrad_late and k == 2:  # amsgrad switched on mid-run: max_exp_avg_sq starts as exp_avg_sq
                opt.param_groups[0]["amsgrad"] = True
            opt.step(_grads(k, BF16))
        runs.append((b"".join(p.tobytes() for p in params), _state_bytes(opt)))
        opt.close()
    assert runs[0] == runs[1]
    assert not any(tmp.iterdir())  # close() removed the files


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    (tmp_path / "a").mkdir()
    opt, params, _ = _run(npadam.AdamW, 0.5, tmp_path / "a", dtype=BF16, lr=1e-2)
    sd = opt.state_dict()
    checkpoint.save(tmp_path / "ck", opt)
    # into an all-memory optimizer and into another disk one: the same continuation
    twins = []
    for f in (0.0, 0.7):
        ps = [np.zeros_like(p) for p in params]
        o = npadam.AdamW(ps, lr=1e-2, nvme_offload_fraction=f, nvme_offload_dir=tmp_path if f else None)
        checkpoint.load(tmp_path / "ck", o)
        twins.append((o, ps))
    d2 = npadam.AdamW([p.copy() for p in params], lr=1e-2, nvme_offload_fraction=0.2, nvme_offload_dir=tmp_path)
    d2.load_state_dict(sd)
    assert _state_bytes(d2) == _state_bytes(opt)
    for k in range(6, 9):
        opt.step(_grads(k, BF16))
        for o, _ in twins:
            o.step(_grads(k, BF16))
    for o, ps in twins:
        assert all(a.tobytes() == b.tobytes() for a, b in zip(params, ps))
        assert _state_bytes(o) == _state_bytes(opt)


@pytest.mark.parametrize("kw,exc,match", [
    ({"nvme_offload_fraction": 0.5}, ValueError, "needs nvme_offload_dir"),
    ({"nvme_offload_fraction": 1.5, "nvme_offload_dir": "."}, ValueError, "nvme_offload_fraction"),
    ({"nvme_offload_fraction": 0.5, "nvme_offload_dir": "/no/such/dir"}, ValueError, "not a directory"),
    ({"nvme_offload_fraction": 0.5, "nvme_offload_dir": 3}, TypeError, "nvme_offload_dir must be a path"),
    ({"nvme_offload_fraction": 0.5, "nvme_offload_dir": ".", "nvme_staging_bytes": 10}, ValueError,
     "nvme_staging_bytes"),
])
def test_bad_options(kw, exc, match):
    with pytest.raises(exc, match=match):
        npadam.AdamW([np.ones(4, np.float32)], **kw)


def test_files_live_under_the_directory_and_go_on_close(tmp_path):
    opt, _, _ = _run(npadam.AdamW, 1.0, tmp_path, lr=1e-2)
    files = [p for p in tmp_path.rglob("*") if p.is_file()]
    assert files and all(str(p).startswith(str(tmp_path)) for p in files)
    with pytest.raises(TypeError, match="cannot be copied or pickled"):
        import copy

        copy.deepcopy(opt)
    opt.close()
    opt.close()
    assert not any(tmp_path.iterdir())
    if os.geteuid() != 0:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(OSError):
            npadam.AdamW([np.ones(4, np.float32)], nvme_offload_fraction=1.0, nvme_offload_dir=ro)


_RSS = r"""
import sys, numpy as np, npadam
n, f, d = 8_000_000, float(sys.argv[1]), sys.argv[2]
def hwm():
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
w, g = np.full(n, 0.5, np.float32), np.full(n, 0.1, np.float32)  # resident before the base line
for m in (1_000, 300_000):  # compile the serial and parallel kernels first (~100 MB of JIT)
    warm = npadam.AdamW([np.zeros(m, np.float32)], lr=1e-3)
    warm.step([np.ones(m, np.float32)])
base = hwm()
opt = npadam.AdamW([w], lr=1e-3, nvme_offload_fraction=f, nvme_offload_dir=d if f else None,
                   nvme_staging_bytes=4 << 20)
for _ in range(2):
    opt.step([g])
print(hwm() - base, float(w[0]))
opt.close()
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/status"), reason="peak RSS from /proc (Linux)")
def test_disk_state_does_not_count_in_memory(tmp_path):
    """8M params: 64 MB of exp_avg + exp_avg_sq. In memory the peak RSS grows by them; on disk by the
    4 MiB of staging (plus the kernel's small tables), whatever the state's size."""
    import subprocess
    import sys

    out = {}
    for f in (0.0, 1.0):
        r = subprocess.run([sys.executable, "-c", _RSS, str(f), str(tmp_path)], capture_output=True, text=True,
                           timeout=120, check=True)
        grow, w0 = r.stdout.split()
        out[f] = (int(grow), w0)
    assert out[0.0][1] == out[1.0][1]  # the same update
    assert out[0.0][0] > 60e6 and out[1.0][0] < 20e6, out


def test_lr_finder_and_add_param_group_with_state_on_disk(tmp_path):
    """The LR finder restores disk-resident state exactly; a group added later gets its own disk part."""
    rng = np.random.default_rng(0)
    X = rng.standard_normal((128, 300)).astype(np.float32)
    y = X @ rng.standard_normal(300).astype(np.float32)
    w = np.zeros(300, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, nvme_offload_fraction=1.0, nvme_offload_dir=tmp_path, nvme_staging_bytes=1 << 16)
    opt.step([np.ones(300, np.float32)])
    before = (w.tobytes(), _state_bytes(opt))

    def step_fn():
        r = X @ w - y
        return float((r * r).mean()), [(2 * X.T @ r / len(y)).astype(np.float32)]

    npadam.lr_finder(step_fn, opt, num_steps=20, progress=False)
    assert (w.tobytes(), _state_bytes(opt)) == before
    b = np.ones(200, np.float32)
    opt.add_param_group({"params": [b], "weight_decay": 0.0})
    opt.step([np.ones(300, np.float32), np.ones(200, np.float32)])
    assert len(opt._engine.disk) == 2 and b[0] != 1.0
    opt.close()
    assert not any(tmp_path.iterdir())


def test_after_close_nothing_is_half_applied(tmp_path):
    """A step (or state export) after close() is a RuntimeError that says so, before any param or
    in-memory state is written (with half the state in memory a late failure would half-apply it)."""
    w = np.zeros(1000, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, nvme_offload_fraction=0.5, nvme_offload_dir=tmp_path)
    opt.step([np.ones(1000, np.float32)])
    before = w.tobytes()
    opt.close()
    with pytest.raises(RuntimeError, match="this optimizer was closed"):
        opt.step([np.ones(1000, np.float32)])
    assert w.tobytes() == before and opt.step_count == 1
    with pytest.raises(RuntimeError, match="closed"):
        opt.state_dict()


def test_a_failed_write_stops_the_optimizer(tmp_path, monkeypatch):
    """An IO error while a step writes the disk part surfaces from step() as an OSError naming the
    file; the optimizer then refuses to step (part of its state is undefined) until replaced."""
    import errno

    from npadam.tiers import DiskStateError

    w = np.zeros(20_000, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, nvme_offload_fraction=1.0, nvme_offload_dir=tmp_path,
                       nvme_staging_bytes=1 << 16)
    opt.step([np.ones(20_000, np.float32)])
    real = os.pwritev

    def full(fd, bufs, off):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "pwritev", full)
    with pytest.raises(DiskStateError) as info:
        opt.step([np.ones(20_000, np.float32)])
    assert info.value.errno == errno.ENOSPC and "npadam-state-" in str(info.value.filename)
    monkeypatch.setattr(os, "pwritev", real)
    with pytest.raises(RuntimeError, match="restore the last checkpoint"):
        opt.step([np.ones(20_000, np.float32)])
    opt.close()
    assert not any(tmp_path.iterdir())


# ---------------------------------------------------------------------- npadam.torch
def _torch_run(cls, f, tmp_path, *, dtype=None, edit=None, **kw):
    torch = pytest.importorskip("torch")
    import npadam.torch

    torch.manual_seed(0)
    m = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 4))
    if dtype is not None:
        m = m.to(dtype)
    groups = [{"params": [m[0].weight, m[2].weight]}, {"params": [m[0].bias, m[2].bias], "weight_decay": 0.0}]
    opt = getattr(npadam.torch, cls)(groups, nvme_offload_fraction=f, nvme_offload_dir=tmp_path if f else None,
                                     nvme_staging_bytes=1 << 16, **kw)
    x, y = torch.randn(16, 48), torch.randn(16, 4)
    held = None
    for k in range(5):
        loss = ((m(x.to(m[0].weight.dtype)).float() - y) ** 2).mean()
        loss.backward()
        opt.step()
        opt.zero_grad()
        if edit is not None and k == 1:
            held = edit(opt, m)
    return m, opt, held


def _torch_same(a, b):
    import torch

    (m0, o0, h0), (m1, o1, h1) = a, b
    assert all(torch.equal(p, q) for p, q in zip(m0.parameters(), m1.parameters()))
    s0, s1 = o0.state_dict()["state"], o1.state_dict()["state"]
    assert s0.keys() == s1.keys() and all(torch.equal(s0[i][k], s1[i][k]) for i in s0 for k in s0[i])
    if h0 is not None:
        assert torch.equal(h0, h1)


@pytest.mark.parametrize("cls,kw,dtype", [
    ("AdamW", {"lr": 1e-2, "max_grad_norm": 0.5}, None),
    ("AdamW", {"lr": 1e-2, "amsgrad": True}, "bfloat16"),
    ("SGD", {"lr": 1e-2, "momentum": 0.9}, None),
])
def test_torch_placement_invariance(cls, kw, dtype, tmp_path):
    torch = pytest.importorskip("torch")
    dt = getattr(torch, dtype) if dtype else None
    base = _torch_run(cls, 0.0, tmp_path, dtype=dt, **kw)
    disk = _torch_run(cls, 0.6, tmp_path, dtype=dt, **kw)
    assert disk[1]._engine.disk
    _torch_same(base, disk)
    disk[1].close()
    assert not any(tmp_path.iterdir())


def test_torch_state_entries_behave_like_views(tmp_path):
    """``state[p]`` of a disk-resident param: an in-place edit is taken in at the next step, a tensor
    held across steps shows the new state, a replaced entry is adopted, an emptied one resets."""
    def edit(opt, m):
        p, b = m[0].weight, m[2].bias
        opt.state[p]["exp_avg"].mul_(0.5)                      # in place
        held = opt.state[p]["exp_avg_sq"]                     # kept across steps
        opt.state[b] = {}                                     # reset: zero moments, step 0
        return held

    base = _torch_run("AdamW", 0.0, tmp_path, edit=edit, lr=1e-2)
    disk = _torch_run("AdamW", 1.0, tmp_path, edit=edit, lr=1e-2)
    _torch_same(base, disk)
    m, opt, held = disk
    assert held is opt.state[m[0].weight]["exp_avg_sq"]  # the same tensor, refreshed after each step
    assert sorted(opt.state[m[0].weight]) == ["exp_avg", "exp_avg_sq", "step"]
    opt.close()


def test_torch_checkpoint_between_disk_and_memory(tmp_path):
    torch = pytest.importorskip("torch")
    import npadam.torch

    m, opt, _ = _torch_run("AdamW", 0.5, tmp_path, lr=1e-2)
    checkpoint.save(tmp_path / "ck", opt)
    torch.manual_seed(1)
    m2 = torch.nn.Sequential(torch.nn.Linear(48, 96), torch.nn.ReLU(), torch.nn.Linear(96, 4))
    opt2 = npadam.torch.AdamW([{"params": [m2[0].weight, m2[2].weight]},
                               {"params": [m2[0].bias, m2[2].bias], "weight_decay": 0.0}], lr=1e-2)
    checkpoint.load(tmp_path / "ck", opt2)
    assert all(torch.equal(p, q) for p, q in zip(m.parameters(), m2.parameters()))
    s0, s1 = opt.state_dict()["state"], opt2.state_dict()["state"]
    assert all(torch.equal(s0[i][k], s1[i][k]) for i in s0 for k in s0[i])
    opt.close()


def test_torch_copy_refused_and_files_cleaned(tmp_path):
    import copy

    _, opt, _ = _torch_run("AdamW", 1.0, tmp_path, lr=1e-2)
    with pytest.raises(TypeError, match="cannot be copied"):
        copy.deepcopy(opt)
    opt.close()
    assert not any(tmp_path.iterdir())
    with pytest.raises(RuntimeError, match="closed"):
        opt.step()


@pytest.mark.parametrize("budget, on_disk", [(2080, 0), (2079, 256)])
def test_host_state_bytes_counts_the_fp8_block_scales(budget, on_disk, tmp_path):
    """fp8 moments take 1 byte per element each plus one float32 scale per 256 elements: 2080 bytes for
    1024 fp32-param elements. The budget counted 2 bytes per element (2048), so 2079 kept everything
    in memory, over the budget; now it keeps 768 elements (1560 bytes) and puts 256 on disk."""
    opt = npadam.AdamW([np.ones(1024, np.float32)], lr=1e-2, exp_avg_dtype="float8_e4m3fn",
                       exp_avg_sq_dtype="float8_e4m3fn", host_state_bytes=budget, nvme_offload_dir=tmp_path)
    eng = opt._engine
    assert (eng.disk[0][1].size if eng.disk else 0) == on_disk
    buf = eng.bufs[0]
    in_memory = sum(a.nbytes for a in (buf.exp_avg, buf.exp_avg_sq, buf.m_scale, buf.v_scale))
    assert in_memory <= budget, in_memory
    opt.close()


@pytest.mark.parametrize("budget", [0, 4 * 2 * 64 * 10, 10**9])
def test_host_state_bytes_chooses_the_split(budget, tmp_path):
    """``host_state_bytes``: buffers in order keep in memory what the budget covers (multiples of 64
    elements), the rest goes to disk; the run is bit-identical to all-in-memory at any budget."""
    base, p0, i0 = _run(npadam.AdamW, 0.0, tmp_path, lr=1e-2, groups=True)
    params = _params(np.float32)
    opt = npadam.AdamW([{"params": params[:3]}, {"params": params[3:], "weight_decay": 0.0}], lr=1e-2,
                       host_state_bytes=budget, nvme_offload_dir=tmp_path, nvme_staging_bytes=1 << 16)
    infos = [(i.skipped, i.grad_norm) for i in (opt.step(_grads(k, np.float32, bad=(k == 2))) for k in range(6))]
    assert infos == i0 and all(a.tobytes() == b.tobytes() for a, b in zip(p0, params))
    assert _state_bytes(opt) == _state_bytes(base)
    eng = opt._engine
    in_memory = sum(buf.exp_avg.size * 8 for buf in eng.bufs)  # exp_avg + exp_avg_sq, fp32 params
    total = sum(b.size for b in eng.layout.buffers) * 8
    assert in_memory <= budget and (budget >= total or budget - in_memory < 8 * 64)
    assert bool(eng.disk) == (budget < 10**9)
    opt.close()


@pytest.mark.parametrize("kw,match", [
    ({"host_state_bytes": 100}, "needs nvme_offload_dir"),
    ({"host_state_bytes": -1, "nvme_offload_dir": "."}, "host_state_bytes"),
    ({"host_state_bytes": 100, "nvme_offload_fraction": 0.5, "nvme_offload_dir": "."}, "not both"),
])
def test_host_state_bytes_rejected(kw, match):
    with pytest.raises(ValueError, match=match):
        npadam.AdamW([np.ones(4, np.float32)], **kw)
