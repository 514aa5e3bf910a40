"""npadam.torch in a real training loop: torch parity, torch semantics, resume, threading, flat storage.

Each finding of issue 7 (generators, threads, stale masters, param_groups, not an Optimizer,
None grads, closure, state, float lrs, torch state dicts) has a regression test here."""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

torch = pytest.importorskip("torch")

import npadam  # noqa: E402
import npadam.torch as nt  # noqa: E402
from npadam import schedules as S  # noqa: E402

from . import _gpt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _groups(model, wd=0.1):
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    return [{"params": decay, "weight_decay": wd}, {"params": no_decay, "weight_decay": 0.0}]


def _train(model, opt, steps, sched=None, clip=None, scaler=None, start=0):
    losses = []
    for k in range(start, start + steps):
        opt.zero_grad()
        loss = _gpt.loss_of(model, k)
        loss.backward()
        if clip is not None:
            torch.nn.utils.clip_grad_norm_(model.parameters(), clip)
        opt.step()
        if sched is not None:
            sched.step()
        losses.append(float(loss.detach()))
    return losses


def _sequential(opt, total=50):
    warm = torch.optim.lr_scheduler.LinearLR(opt, start_factor=0.1, total_iters=5)
    cos = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=total - 5, eta_min=1e-4)
    return torch.optim.lr_scheduler.SequentialLR(opt, [warm, cos], milestones=[5])


def _close(a, b, rtol=1e-5):
    for x, y in zip(a.parameters(), b.parameters()):
        np.testing.assert_allclose(x.detach().numpy(), y.detach().numpy(), rtol=rtol, atol=rtol * 1e-1)


def test_gpt_matches_torch_adamw_with_sequential_lr():
    a, b = _gpt.make(), _gpt.make()
    assert len(list(a.parameters())) >= 100
    oa = nt.AdamW(_groups(a), lr=3e-3, betas=(0.9, 0.95))
    ob = torch.optim.AdamW(_groups(b), lr=3e-3, betas=(0.9, 0.95))
    assert isinstance(oa, torch.optim.Optimizer)
    la = _train(a, oa, 50, _sequential(oa))
    lb = _train(b, ob, 50, _sequential(ob))
    assert la[-1] < la[0]
    np.testing.assert_allclose(la, lb, rtol=1e-5)
    _close(a, b)
    assert oa.param_groups[1]["lr"] == ob.param_groups[1]["lr"] and isinstance(oa.param_groups[0]["lr"], float)


def test_adam_l2_matches_torch_adam_amsgrad():
    a, b = _gpt.make(layers=2), _gpt.make(layers=2)
    oa = nt.Adam(a.parameters(), lr=1e-3, weight_decay=0.05, amsgrad=True)
    ob = torch.optim.Adam(b.parameters(), lr=1e-3, weight_decay=0.05, amsgrad=True)
    _train(a, oa, 20)
    _train(b, ob, 20)
    _close(a, b)
    p = next(a.parameters())
    np.testing.assert_allclose(oa.state[p]["max_exp_avg_sq"].numpy(), ob.state[next(b.parameters())]["max_exp_avg_sq"]
                               .numpy(), rtol=1e-5, atol=1e-12)


def test_max_grad_norm_matches_clip_grad_norm():
    a, b = _gpt.make(layers=2), _gpt.make(layers=2)
    oa = nt.AdamW(a.parameters(), lr=1e-2, max_grad_norm=0.5)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2)
    _train(a, oa, 20)
    _train(b, ob, 20, clip=0.5)
    _close(a, b, rtol=2e-5)
    a.zero_grad()
    _gpt.loss_of(a, 99).backward()
    want = float(torch.nn.utils.clip_grad_norm_(a.parameters(), float("inf")))
    oa.step()
    assert abs(oa.last_step.grad_norm - want) <= 1e-5 * want


def test_frozen_and_unused_params_are_skipped_like_torch():
    a, b = _gpt.make(layers=2), _gpt.make(layers=2)
    for m in (a, b):
        m.pos.weight.requires_grad_(False)
    oa = nt.AdamW(a.parameters(), lr=1e-2, weight_decay=0.1)
    ob = torch.optim.AdamW(b.parameters(), lr=1e-2, weight_decay=0.1)
    for k in range(12):
        for m, o in ((a, oa), (b, ob)):
            o.zero_grad()
            _gpt.loss_of(m, k).backward()
            if k % 3 == 0:  # the head is unused on some steps: its grad is None
                m.head.weight.grad = None
            o.step()
    _close(a, b)
    assert int(oa.state[a.head.weight]["step"]) == 8 and int(oa.state[a.pos.weight]["step"]) == 0
    assert torch.equal(a.pos.weight, b.pos.weight)


def test_add_param_group_and_groups_appended_directly():
    a, b = _gpt.make(layers=2), _gpt.make(layers=2)
    pa, pb = list(a.parameters()), list(b.parameters())
    oa = nt.AdamW(pa[:10], lr=1e-2)
    ob = torch.optim.AdamW(pb[:10], lr=1e-2)
    _train(a, oa, 3)
    _train(b, ob, 3)
    oa.add_param_group({"params": pa[10:20], "lr": 3e-3})
    ob.add_param_group({"params": pb[10:20], "lr": 3e-3})
    _train(a, oa, 3, start=3)
    _train(b, ob, 3, start=3)
    oa.param_groups.append({**oa.defaults, "params": pa[20:]})  # what some training code does
    ob.param_groups.append({**ob.defaults, "params": pb[20:]})
    _train(a, oa, 3, start=6)
    _train(b, ob, 3, start=6)
    _close(a, b)
    assert len(oa.param_groups) == 3 and oa.state[pa[-1]]["exp_avg"].abs().sum() > 0
    with pytest.raises(ValueError, match="more than one parameter group"):
        oa.add_param_group({"params": pa[:1]})
    with pytest.raises(ValueError, match="lr"):
        oa.add_param_group({"params": [torch.nn.Parameter(torch.ones(3))], "lr": -1.0})
    assert len(oa.param_groups) == 3


def test_lr_through_param_groups_closure_and_state():
    m = _gpt.make(layers=1)
    opt = nt.AdamW(m.parameters(), lr=1e-3)
    for g in opt.param_groups:
        g["lr"] = 0.0
    before = [p.detach().clone() for p in m.parameters()]

    def closure():
        opt.zero_grad()
        loss = _gpt.loss_of(m, 0)
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad is False or loss.grad_fn is not None
    # lr 0 and weight decay * 0: params unchanged, but the moments moved
    assert all(torch.equal(x, y) for x, y in zip(before, m.parameters()))
    w = m.head.weight
    st = opt.state[w]
    assert set(st) == {"step", "exp_avg", "exp_avg_sq"} and int(st["step"]) == 1
    assert st["exp_avg"].shape == w.shape and st["exp_avg"].abs().sum() > 0
    st["exp_avg"].zero_()  # views of npadam's state: edits are seen by the next step
    assert float(opt.state_dict()["state"][len(list(m.parameters())) - 1]["exp_avg"].abs().sum()) == 0.0


def test_torch_schedulers_and_hf_get_scheduler_accept_it():
    transformers = pytest.importorskip("transformers")
    m = _gpt.make(layers=1)
    opt = nt.AdamW(m.parameters(), lr=1e-3)
    sched = transformers.get_scheduler("cosine", optimizer=opt, num_warmup_steps=2, num_training_steps=10)
    lrs = []
    for k in range(4):
        _gpt.loss_of(m, k).backward()
        opt.step()
        sched.step()
        opt.zero_grad()
        lrs.append(opt.param_groups[0]["lr"])
    want = S.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 1e-3, "num_warmup_steps": 2,
                                "num_training_steps": 10}).lr(np.arange(1, 5))
    np.testing.assert_allclose(lrs, want, rtol=1e-12)


def test_npadam_lr_scheduler_drives_npadam_and_torch_optimizers():
    sset = S.from_config("torch", {"lr": 1e-3, "scheduler": "OneCycleLR", "max_lr": 1e-2, "total_steps": 20})
    a, b = _gpt.make(layers=1), _gpt.make(layers=1)
    oa = nt.AdamW(a.parameters(), lr=1.0)
    ob = torch.optim.AdamW(b.parameters(), lr=1.0)
    sa, sb = nt.LRScheduler(oa, sset), nt.LRScheduler(ob, sset)
    seen = []
    for k in range(6):
        seen.append((oa.param_groups[0]["lr"], oa.param_groups[0]["betas"][0]))
        _train(a, oa, 1, sa, start=k)
        _train(b, ob, 1, sb, start=k)
    assert seen == [(sset.lr(k), sset.beta1(k)) for k in range(6)]
    _close(a, b)
    with pytest.raises(TypeError, match="LRScheduler"):
        nt.AdamW(a.parameters(), lr=S.constant(1e-3))


def _gpt_bf16(layers=2):
    m = _gpt.make(layers=layers)
    return m.to(torch.bfloat16)


def test_bf16_weights_edited_after_construction_are_not_reverted():
    m = _gpt_bf16()
    opt = nt.AdamW(m.parameters(), lr=1e-3)
    fresh = _gpt.make(seed=7, layers=2).to(torch.bfloat16).state_dict()
    _train(m, opt, 2)
    m.load_state_dict(fresh)  # copy_ in place: the masters must be re-read
    with torch.no_grad():
        m.head.weight.mul_(0.5)  # another in-place edit (EMA swap, re-init ...)
    want = {k: v.float() for k, v in m.state_dict().items()}
    opt.zero_grad()
    for p in m.parameters():
        p.grad = torch.zeros_like(p)
    g0 = opt.param_groups[0]
    g0["lr"] = 0.0  # no movement: the params must stay exactly what the user put there
    opt.step()
    for k, v in m.state_dict().items():
        assert torch.equal(v.float(), want[k]), k
    # re-binding storage (p.data = ...) is followed too
    new = torch.full_like(m.head.weight, 0.25)
    m.head.weight.data = new
    g0["lr"] = 1e-3
    _train(m, opt, 1)
    assert m.head.weight.data_ptr() == new.data_ptr()
    assert abs(float(m.head.weight.detach().float().mean()) - 0.25) < 0.01


def test_version_counter_is_bumped_like_torch():
    w = torch.nn.Parameter(torch.ones(4))
    opt = nt.AdamW([w], lr=0.1)
    y = (w * w).sum()  # saves w for backward
    w.grad = torch.ones(4)
    v = w._version
    opt.step()
    assert w._version > v
    with pytest.raises(RuntimeError, match="modified by an inplace operation"):
        y.backward()


def test_grad_scaler_parity_and_skip():
    a, b = _gpt.make(layers=1), _gpt.make(layers=1)
    oa, ob = nt.AdamW(a.parameters(), lr=1e-2), torch.optim.AdamW(b.parameters(), lr=1e-2)
    sa, sb = torch.amp.GradScaler("cpu", init_scale=1024.0), torch.amp.GradScaler("cpu", init_scale=1024.0)
    for k in range(6):
        for m, o, s in ((a, oa, sa), (b, ob, sb)):
            o.zero_grad()
            with torch.autocast("cpu", dtype=torch.float16):
                loss = _gpt.loss_of(m, k)
            s.scale(loss).backward()
            if k == 2:
                m.head.weight.grad[0, 0] = float("inf")
            s.step(o)
            s.update()
    assert sa.get_scale() == sb.get_scale() == 512.0
    assert oa.step_count == 5
    _close(a, b, rtol=1e-4)  # fp16 autocast: the two runs' forward passes may round differently


def test_npadam_loss_scaler_with_fp16_params():
    m = _gpt.make(layers=1).half()
    scaler = npadam.LossScaler(init_scale=256.0)
    opt = nt.AdamW(m.parameters(), lr=1e-3, loss_scaler=scaler)
    for k in range(3):
        opt.zero_grad()
        (_gpt.loss_of(m, k).float() * scaler.scale).backward()
        if k == 1:
            m.head.weight.grad[0, 0] = float("inf")
        opt.step()
    assert opt.step_count == 2 and scaler.scale == 128.0 and opt.last_step.skipped is False
    assert all(torch.isfinite(p).all() for p in m.parameters())


RESUME = textwrap.dedent("""
    import sys, torch, npadam.torch as nt
    sys.path.insert(0, {root!r})
    from tests import _gpt
    from tests.test_torch import _groups, _train, _sequential
    m = _gpt.make()
    opt = nt.AdamW(_groups(m), lr=3e-3, max_grad_norm=1.0)
    sched = _sequential(opt)
    if sys.argv[1] == "load":
        ck = torch.load(sys.argv[2], weights_only=True)
        m.load_state_dict(ck["model"]); opt.load_state_dict(ck["opt"]); sched.load_state_dict(ck["sched"])
        _train(m, opt, 10, sched, start=10)
    else:
        _train(m, opt, 10, sched)
        torch.save({{"model": m.state_dict(), "opt": opt.state_dict(), "sched": sched.state_dict()}}, sys.argv[2])
        if sys.argv[1] == "full":
            _train(m, opt, 10, sched, start=10)
    torch.save(m.state_dict(), sys.argv[2] + ".final")
""")


def _run(code, *args, env=None):
    out = subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=600,
                         env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return out.stdout


def test_resume_bit_exact_in_a_new_process(tmp_path):
    code = RESUME.format(root=ROOT)
    _run(code, "full", str(tmp_path / "full.pt"))
    _run(code, "half", str(tmp_path / "half.pt"))
    _run(code, "load", str(tmp_path / "half.pt"))
    full = torch.load(tmp_path / "full.pt.final", weights_only=True)
    resumed = torch.load(tmp_path / "half.pt.final", weights_only=True)
    for k in full:
        assert torch.equal(full[k], resumed[k]), k


def test_state_dicts_interchange_with_torch_both_ways():
    a, b, c = _gpt.make(layers=2), _gpt.make(layers=2), _gpt.make(layers=2)
    ta = torch.optim.AdamW(_groups(a), lr=1e-3)
    _train(a, ta, 5)
    buf = io.BytesIO()
    torch.save(ta.state_dict(), buf)
    buf.seek(0)
    b.load_state_dict(a.state_dict())
    nb = nt.AdamW(_groups(b), lr=1.0)
    nb.load_state_dict(torch.load(buf, weights_only=True))  # torch -> npadam, mid-run
    assert nb.param_groups[0]["lr"] == 1e-3 and nb.step_count == 5
    _train(a, ta, 5, start=5)
    _train(b, nb, 5, start=5)
    _close(a, b)
    buf = io.BytesIO()
    torch.save(nb.state_dict(), buf)  # npadam -> torch
    buf.seek(0)
    c.load_state_dict(b.state_dict())
    tc = torch.optim.AdamW(_groups(c), lr=1.0)
    tc.load_state_dict(torch.load(buf, weights_only=True))
    _train(b, nb, 5, start=10)
    _train(c, tc, 5, start=10)
    _close(b, c)


def test_state_dict_rejects_mismatch_and_changes_nothing():
    a = _gpt.make(layers=1)
    opt = nt.AdamW(a.parameters(), lr=1e-3)
    _train(a, opt, 2)
    sd = opt.state_dict()
    bad = {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "exp_avg": torch.zeros(3)}}}
    before = {k: v.clone() for k, v in opt.state[next(a.parameters())].items()}
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="param groups"):
        opt.load_state_dict({**sd, "param_groups": sd["param_groups"] * 2})
    with pytest.raises(TypeError):
        opt.load_state_dict([1, 2])
    after = opt.state[next(a.parameters())]
    assert all(torch.equal(before[k], after[k]) for k in before) and opt.step_count == 2


def test_flat_storage_is_bit_identical_to_default():
    a, b = _gpt.make(layers=3), _gpt.make(layers=3)
    oa = nt.AdamW(_groups(a), lr=3e-3, max_grad_norm=1.0)
    ob = nt.AdamW(_groups(b), lr=3e-3, max_grad_norm=1.0, flat_storage=True)
    flat_ptr = ob._flat[0][0].data_ptr()
    _train(a, oa, 10, _sequential(oa, 10))
    _train(b, ob, 10, _sequential(ob, 10))
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    # the params and grads are views into npadam's flat buffers
    w = b.blocks[0].mlp[0].weight
    assert ob._flat[0][0].data_ptr() == flat_ptr and ob._flat[0][0].data_ptr() <= w.data_ptr()
    assert w.grad is not None and w.grad.data_ptr() != 0
    b.zero_grad()  # sets grads to None: copied back with a warning, still identical
    _gpt.loss_of(b, 10).backward()
    a.zero_grad()
    _gpt.loss_of(a, 10).backward()
    oa.step()
    with pytest.warns(UserWarning, match="flat_storage"):
        ob.step()
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)


def test_flat_storage_bf16_and_numpy_flat_storage():
    m = _gpt_bf16(layers=1)
    ref = _gpt_bf16(layers=1)
    o1 = nt.AdamW(m.parameters(), lr=1e-3, flat_storage=True)
    o2 = nt.AdamW(ref.parameters(), lr=1e-3)
    _train(m, o1, 3)
    _train(ref, o2, 3)
    for x, y in zip(m.parameters(), ref.parameters()):
        assert torch.equal(x, y)


def test_generators_and_named_parameters_train():
    """Finding 1: a generator was consumed before the params were read (0 params, silent no-op)."""
    for make in (lambda m: m.parameters(), lambda m: m.named_parameters()):
        m = _gpt.make(layers=1)
        before = m.head.weight.detach().clone()
        opt = npadam.AdamW(make(m), lr=1e-2)
        assert len(opt.layout.slots) == len(list(m.parameters()))
        _gpt.loss_of(m, 0).backward()
        opt.step()
        assert not torch.equal(before, m.head.weight)
        m2 = _gpt.make(layers=1)
        o2 = nt.AdamW(make(m2), lr=1e-2)
        _gpt.loss_of(m2, 0).backward()
        o2.step()
        assert torch.equal(m.head.weight, m2.head.weight)
    with pytest.raises(ValueError, match="empty"):
        npadam.AdamW(iter([]))


def test_generic_adamw_skips_none_grads_and_has_add_param_group():
    w, b = np.ones(4, np.float32), np.ones(2, np.float32)
    opt = npadam.AdamW({"w": w, "b": b}, lr=0.1, weight_decay=0.0)
    opt.step({"w": np.ones(4, np.float32), "b": None})
    assert np.all(b == 1) and np.all(w < 1)
    c = np.ones(3, np.float32)
    opt.add_param_group({"params": {"c": c}, "lr": 0.5})
    opt.step({"w": np.ones(4, np.float32), "b": np.ones(2, np.float32), "c": np.ones(3, np.float32)})
    assert np.allclose(c, 0.5) and np.allclose(b, 0.9)
    sd = opt.state_dict()
    assert [sd["state"][i]["step"] for i in range(3)] == [2, 1, 1] and sd["npadam"]["step"] == 2
    d = np.ones(1, np.float32)
    opt.param_groups.append({"params": [d], "lr": 0.1, "betas": (0.9, 0.999), "eps": 1e-8, "weight_decay": 0.0,
                             "amsgrad": False, "maximize": False, "bias_correction": True})
    opt.step([np.ones(4, np.float32), None, None, np.ones(1, np.float32)])
    assert np.allclose(d, 0.9)


THREADS = textwrap.dedent("""
    import sys, hashlib, torch
    torch.set_num_threads(1)
    import numpy as np, numba, npadam.torch as nt
    torch.manual_seed(0)
    ws = [torch.nn.Parameter(torch.randn(n)) for n in (300_001, 5, 70_000)]
    opt = nt.AdamW(ws, lr=1e-3, max_grad_norm=1.0, num_threads=int(sys.argv[1]) if sys.argv[1] != "-" else None)
    h = hashlib.sha256()
    for k in range(3):
        g = torch.Generator().manual_seed(k)
        for w in ws:
            w.grad = torch.randn(w.shape, generator=g)
        opt.step()
        h.update(np.float64(opt.last_step.grad_norm).tobytes())
    for w in ws:
        h.update(w.detach().numpy().tobytes())
    print(torch.get_num_threads(), numba.threading_layer(), numba.get_num_threads(), h.hexdigest())
""")


def test_torch_threads_unchanged_and_results_identical_across_threading_layers():
    """Finding 2: Numba's OpenMP layer reset torch's thread count on its first launch."""
    env = {k: v for k, v in os.environ.items() if k != "NUMBA_THREADING_LAYER"}
    from npadam.kernels.threads import _tbb_available

    out = _run(THREADS, "-", env=env).split()
    assert out[0] == "1" and out[1] == ("tbb" if _tbb_available() else "workqueue")
    digests = {out[3]}
    for layer in ("workqueue", "tbb", "omp"):
        res = _run(THREADS, "1", env={**env, "NUMBA_THREADING_LAYER": layer}).split()
        assert res[1] == layer
        digests.add(res[3])
    assert len(digests) == 1


def test_num_threads_is_honoured_and_checked():
    import numba

    from npadam.kernels.threads import limited

    before = numba.get_num_threads()
    with limited(1):
        assert numba.get_num_threads() == 1
    assert numba.get_num_threads() == before
    with pytest.raises(ValueError, match="num_threads=999"):
        nt.AdamW([torch.nn.Parameter(torch.ones(2))], num_threads=999)
    with pytest.raises(ValueError, match="num_threads=999"):
        npadam.AdamW([np.ones(2, np.float32)], num_threads=999)


def test_reference_is_not_a_top_level_package(tmp_path):
    out = subprocess.run([sys.executable, "-c", "import npadam.reference.adamw, importlib.util as u;"
                          "print(u.find_spec('reference') is None)"], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "True"


def test_import_npadam_does_not_import_torch():
    out = _run("import sys, npadam; print('torch' in sys.modules, 'numba' in sys.modules)")
    assert out.split() == ["False", "False"]


def test_bad_grads_are_named_and_change_nothing():
    w = torch.nn.Parameter(torch.ones(4, 4))
    b = torch.nn.Parameter(torch.ones(4))
    opt = nt.AdamW([w, b], lr=0.1)
    b.grad_dtype = None  # torch then lets any dtype through to the optimizer
    cases = [(torch.ones(4, dtype=torch.float64), TypeError, "float64"),
             (torch.ones(8)[::2], ValueError, "contiguous"), (torch.ones(4).to_sparse(), ValueError, "dense")]
    w.grad = torch.ones(4, 4)
    for g, exc, match in cases:
        b.grad = g
        with pytest.raises(exc, match=match) as info:
            opt.step()
        assert "'1'" in str(info.value)
    b.grad = w.grad.view(-1)[:4]  # aliases another grad: fine; aliasing a param is not
    opt.step()
    b.grad = w.detach().view(-1)[:4]
    with pytest.raises(ValueError, match="share memory"):
        opt.step()
    assert opt.step_count == 1 and int(opt.state[b]["step"]) == 1


def test_model_to_dtype_mid_run_is_followed():
    """Finding 3: model.to(dtype) re-binds every param's storage; npadam lays its state out again."""
    m = _gpt.make(layers=1)
    opt = nt.AdamW(m.parameters(), lr=1e-2, amsgrad=True)
    _train(m, opt, 3)
    moments = {k: v.clone() for k, v in opt.state[m.head.weight].items()}
    m.to(torch.bfloat16)
    before = m.head.weight.detach().clone()
    opt.zero_grad()
    _gpt.loss_of(m, 3).backward()
    g = m.head.weight.grad.float()
    opt.step()
    st = opt.state[m.head.weight]
    assert m.head.weight.dtype == torch.bfloat16 and not torch.equal(before, m.head.weight)
    assert int(st["step"]) == 4 and opt.step_count == 4 and "master" in opt.state_dict()["state"][0]
    # the moments carried over: exactly one more step from them, not from zero
    b1, omb1 = torch.tensor(0.9, dtype=torch.float32), torch.tensor(1 - 0.9, dtype=torch.float32)
    assert torch.equal(st["exp_avg"], b1 * moments["exp_avg"] + omb1 * g)
    m.float()
    _train(m, opt, 1, start=4)
    assert m.head.weight.dtype == torch.float32 and int(opt.state[m.head.weight]["step"]) == 5
    m.double()
    with pytest.raises(TypeError, match="float64"):
        _train(m, opt, 1, start=5)
    m.float()  # the refused relayout left the optimizer as it was
    _train(m, opt, 1, start=5)
    assert int(opt.state[m.head.weight]["step"]) == 6


def test_deepcopy_and_pickle_keep_the_state():
    import copy
    import pickle

    a = _gpt.make(layers=1)
    opt = nt.AdamW(a.parameters(), lr=1e-2)
    _train(a, opt, 2)
    for clone in (lambda m, o: copy.deepcopy((m, o)), lambda m, o: pickle.loads(pickle.dumps((m, o)))):
        b, ob = clone(a, opt)
        assert ob.step_count == 2 and ob.state[b.head.weight]["exp_avg"].data_ptr() != \
            opt.state[a.head.weight]["exp_avg"].data_ptr()
        _train(b, ob, 2, start=2)
    _train(a, opt, 2, start=2)
    for x, y in zip(a.parameters(), b.parameters()):
        assert torch.equal(x, y)
    with pytest.raises(TypeError, match="flat_storage"):
        copy.deepcopy(nt.AdamW(_gpt.make(layers=1).parameters(), flat_storage=True))


# ---- regressions from the adversarial review of the front-end -------------------------------


def test_non_contiguous_params_are_refused_everywhere_before_anything_changes():
    w = torch.nn.Parameter(torch.zeros(4))
    opt = nt.AdamW([w], lr=1.0, weight_decay=0.0)
    base = torch.zeros(4, 8)
    for p in (torch.nn.Parameter(base[:, :4]), torch.nn.Parameter(torch.zeros(1).expand(16))):
        with pytest.raises(ValueError, match="contiguous"):
            opt.add_param_group({"params": [p]})
        opt.param_groups.append({**opt.defaults, "params": [p]})  # appended directly: checked at the step
        w.grad = torch.ones(4)
        with pytest.raises(ValueError, match="contiguous"):
            opt.step()
        opt.param_groups.pop()
    assert not base.any()
    opt.step()  # a refused group left the optimizer working
    assert opt.step_count == 1 and len(opt.param_groups) == 1
    with pytest.raises(ValueError, match="share memory"):
        opt.add_param_group({"params": [torch.nn.Parameter(w.data[1:3])]})
    opt.step()
    assert opt.step_count == 2


def test_params_replaced_added_or_removed_inside_a_group_follow_torch():
    """State follows each Parameter object, as in torch: kept params keep theirs."""
    runs = []
    for cls in (torch.optim.AdamW, nt.AdamW):
        torch.manual_seed(0)
        ps = [torch.nn.Parameter(torch.randn(5)) for _ in range(4)]
        opt = cls([{"params": ps[:2]}, {"params": ps[2:3], "lr": 0.01}], lr=0.1)

        def step():
            for p in opt.param_groups[0]["params"] + opt.param_groups[1]["params"]:
                p.grad = torch.ones(5) * p.detach().sum().sign()
            opt.step()

        step()
        opt.param_groups[0]["params"][0] = ps[3]  # replaced
        step()
        opt.param_groups[1]["params"].append(ps[0])  # the old one, appended to another group
        step()
        del opt.param_groups[0]["params"][1]  # removed
        step()
        runs.append([p.detach().clone() for p in ps])
    for x, y in zip(*runs):
        torch.testing.assert_close(x, y, rtol=1e-6, atol=1e-7)


def test_load_state_dict_after_groups_were_appended_and_in_hf_order():
    a, b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    t = torch.optim.AdamW([a], lr=0.1)
    t.add_param_group({"params": [b]})
    for _ in range(3):
        a.grad, b.grad = torch.ones(2), torch.ones(2)
        t.step()
    sd = t.state_dict()
    a2, b2 = torch.nn.Parameter(a.detach().clone()), torch.nn.Parameter(b.detach().clone())
    o = nt.AdamW([a2], lr=0.1)
    o.param_groups.append({**o.defaults, "params": [b2]})
    o.load_state_dict(sd)  # the appended group is adopted first, then loaded
    a2.grad, b2.grad = torch.ones(2), torch.ones(2)
    o.step()
    assert int(o.state[b2]["step"]) == 4
    # bf16: optimizer built before the model's weights are loaded (the HF Trainer's order): the
    # checkpoint's fp32 masters must win over the freshly loaded bf16 params
    m = _gpt_bf16(layers=1)
    opt = nt.AdamW(m.parameters(), lr=1e-3)
    _train(m, opt, 3)
    ck = {"model": {k: v.clone() for k, v in m.state_dict().items()}, "opt": opt.state_dict()}
    _train(m, opt, 2, start=3)
    m2 = _gpt_bf16(layers=1)
    o2 = nt.AdamW(m2.parameters(), lr=1e-3)
    m2.load_state_dict(ck["model"])
    o2.load_state_dict(ck["opt"])
    _train(m2, o2, 2, start=3)
    for x, y in zip(m.parameters(), m2.parameters()):
        assert torch.equal(x, y)


def test_flat_storage_params_frozen_mid_run_are_skipped():
    moved = {}
    for flat in (False, True):
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.Linear(8, 1))
        opt = nt.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1, flat_storage=flat)
        x = torch.randn(16, 8)
        for _ in range(3):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
        model[0].requires_grad_(False)
        before = model[0].weight.detach().clone()
        for _ in range(3):
            model(x).sum().backward()
            opt.step()
            opt.zero_grad()
        moved[flat] = float((model[0].weight - before).abs().max())
    assert moved == {False: 0.0, True: 0.0}


def test_state_entries_replaced_from_outside_follow_torch():
    from collections import defaultdict

    results = []
    for cls in (torch.optim.AdamW, nt.AdamW):
        w = torch.nn.Parameter(torch.zeros(3))
        opt = cls([w], lr=0.1, weight_decay=0.0)
        for _ in range(3):
            w.grad = torch.tensor([1.0, -1.0, 1.0])
            opt.step()
        opt.state = defaultdict(dict)  # reset, as some training code does
        w.grad = torch.tensor([-1.0, -1.0, -1.0])
        before = w.detach().clone()
        opt.step()
        results.append(((w - before).tolist(), int(opt.state[w]["step"])))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-6)
    assert results[0][1] == results[1][1] == 1


def test_hostile_group_values_and_state_dicts_are_named():
    w = torch.nn.Parameter(torch.ones(2))
    opt = nt.AdamW([w], lr=0.1)
    w.grad = torch.ones(2)
    for key, value, match in (("betas", (0.9,), "betas"), ("lr", torch.tensor([0.1, 0.2]), "lr"),
                              ("lr", float("nan"), "lr"), ("betas", (0.9, 1.0), "beta2")):
        good = opt.param_groups[0][key]
        opt.param_groups[0][key] = value
        with pytest.raises(ValueError, match=match):
            opt.step()
        opt.param_groups[0][key] = good
    opt.step()
    sd = opt.state_dict()
    bad = [
        ({**sd, "param_groups": [{**sd["param_groups"][0], "params": 5}]}, TypeError),
        ({**sd, "state": {0: {**sd["state"][0], "step": torch.tensor([3.0, 4.0])}}}, ValueError),
        ({**sd, "state": {0: {**sd["state"][0], "exp_avg": torch.ones(2, dtype=torch.complex64)}}}, TypeError),
        ({**sd, "state": {0: {**sd["state"][0], "exp_avg_sq": torch.full((2,), float("inf"))}}}, ValueError),
        ({**sd, "npadam": {**sd["npadam"], "names": None}}, ValueError),
        ({**sd, "npadam": {**sd["npadam"], "shapes": []}}, ValueError),
    ]
    before = {k: v.clone() for k, v in opt.state[w].items()}
    for d, exc in bad:
        with pytest.raises(exc):
            opt.load_state_dict(d)
    assert all(torch.equal(before[k], opt.state[w][k]) for k in before) and opt.step_count == 1


def test_generic_optimizer_follows_rebinding_and_padding_after_add_param_group():
    a, b = torch.nn.Parameter(torch.ones(8)), torch.nn.Parameter(torch.ones(8))
    opt = npadam.AdamW([a, b], lr=0.1)
    b.data = a.data  # ties two params: refused
    with pytest.raises(ValueError, match="share memory"):
        opt.step([torch.ones(8), torch.ones(8)])
    w = np.ones(3, np.float32)
    g = np.ones(3, np.float32)
    o2 = npadam.AdamW([w], lr=0.1, weight_decay=0.0)
    o2.step([g])
    o2.add_param_group({"params": [np.ones(2, np.float32)]})
    o2.step([g, np.ones(2, np.float32)])  # the same grad array as before the group was added
    assert o2.step_count == 2


def test_bf16_edits_through_data_are_not_reverted():
    """p.data.clamp_() (WGAN clipping), p.data.copy_() (EMA) move no version counter; the kernel
    itself sees that the param is not its master's rounding any more."""
    results = []
    for cls in (torch.optim.AdamW, nt.AdamW):
        p = torch.nn.Parameter(torch.ones(4, dtype=torch.bfloat16))
        o = cls([p], lr=1e-3, weight_decay=0.0)
        p.grad = torch.ones_like(p)
        o.step()
        p.data.clamp_(-0.5, 0.5)
        p.grad = torch.zeros_like(p)
        o.param_groups[0]["lr"] = 0.0
        o.step()
        results.append(p.detach().float().tolist())
    assert results[0] == results[1] == [0.5] * 4


def test_lr_scheduler_follows_added_groups_and_its_state_loads_weights_only():
    w = torch.nn.Parameter(torch.zeros(2))
    opt = nt.AdamW([w], lr=1.0)
    sched = nt.LRScheduler(opt, S.linear(1.0, 0.0, 4))
    w.grad = torch.ones(2)
    opt.step()
    sched.step()
    opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2))]})
    opt.step()
    sched.step()
    assert [g["lr"] for g in opt.param_groups] == [0.5, 0.5]
    buf = io.BytesIO()
    torch.save(sched.state_dict(), buf)
    buf.seek(0)
    again = nt.LRScheduler(opt, S.linear(1.0, 0.0, 4))
    again.load_state_dict(torch.load(buf, weights_only=True))
    assert again.last_epoch == 2
    per_group = nt.LRScheduler(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0),
                               [S.constant(0.1)])
    per_group.optimizer.add_param_group({"params": [torch.nn.Parameter(torch.zeros(1))]})
    with pytest.raises(ValueError, match="one schedule per group"), pytest.warns(UserWarning, match="before"):
        per_group.step()  # (torch also warns: no optimizer.step() yet)
