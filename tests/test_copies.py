"""Second review's findings (each failed before its fix): copies and pickles of optimizers,
torch.optim.SGD's step-time rules, the last unchecked inputs."""

from __future__ import annotations

import copy
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import npadam
from npadam import functional as F

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_numpy_optimizer_copies_update_their_own_arrays(how):
    """The copy's raw pointers were the original's: it wrote the original's params (and crashed
    with SIGSEGV when unpickled in another process)."""
    w = np.ones(4, np.float32)
    opt = npadam.AdamW({"w": w}, lr=0.1)
    opt.step({"w": np.ones(4, np.float32)})
    other = copy.deepcopy(opt) if how == "deepcopy" else pickle.loads(pickle.dumps(opt))
    before = w.copy()
    other.step({"w": np.ones(4, np.float32)})
    assert w.tobytes() == before.tobytes()
    opt.step({"w": np.ones(4, np.float32)})
    assert other.params[0].tobytes() == w.tobytes()


def test_numpy_optimizer_pickle_resumes_in_another_process(tmp_path):
    w = np.ones(4, np.float32)
    opt = npadam.AdamW({"w": w}, lr=0.1)
    opt.step({"w": np.ones(4, np.float32)})
    (tmp_path / "opt.pkl").write_bytes(pickle.dumps(opt))
    opt.step({"w": np.ones(4, np.float32)})
    code = (f"import pickle, numpy as np; o = pickle.loads(open({str(tmp_path / 'opt.pkl')!r}, 'rb').read()); "
            "o.step({'w': np.ones(4, np.float32)}); print(o.params[0].tobytes().hex())")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == w.tobytes().hex()


def test_torch_tensor_params_of_a_numpy_front_end_copy():
    torch = pytest.importorskip("torch")
    t = torch.ones(4)
    opt = npadam.AdamW([t], lr=0.1)
    other = copy.deepcopy(opt)
    other.step([torch.ones(4)])
    assert torch.equal(t, torch.ones(4)) and not torch.equal(other.params[0], torch.ones(4))


def _torch_model(dtype):
    import torch

    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)).to(dtype)


def _train(torch, model, opt, steps, seed, sched=None):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(5, 6, generator=g).to(next(model.parameters()).dtype)
        model(x).float().pow(2).mean().backward()
        opt.step()
        if sched is not None:
            sched.step()
        opt.zero_grad()


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
@pytest.mark.parametrize("how", ["deepcopy", "pickle"])
def test_torch_copies_with_a_scheduler_continue_like_the_original(dtype, how):
    """A torch scheduler's per-instance step wrapper made the copy step the original (and pickling
    fail); a bf16 copy re-read its masters from the params and lost their precision."""
    torch = pytest.importorskip("torch")
    import npadam.torch as NT

    model = _torch_model(getattr(torch, dtype))
    opt = NT.SGD(model.parameters(), lr=0.05, momentum=0.9)
    sched = torch.optim.lr_scheduler.StepLR(opt, 2, gamma=0.5)
    _train(torch, model, opt, 3, seed=1, sched=sched)
    pair = copy.deepcopy((model, opt)) if how == "deepcopy" else pickle.loads(pickle.dumps((model, opt)))
    model2, opt2 = pair
    before = [p.detach().clone() for p in model.parameters()]
    _train(torch, model2, opt2, 4, seed=2)
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()))  # the original untouched
    _train(torch, model, opt, 4, seed=2)
    sched.step()  # (the copy has no scheduler; keep the lr equal)
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)


def test_rebinding_a_bf16_param_keeps_its_master():
    """p.data = p.data.clone() re-read the master from the bf16 param (losing its precision)."""
    torch = pytest.importorskip("torch")
    import npadam.torch as NT

    runs = []
    for rebind in (False, True):
        model = _torch_model(torch.bfloat16)
        opt = NT.AdamW(model.parameters(), lr=1e-3)
        _train(torch, model, opt, 3, seed=1)
        if rebind:
            for p in model.parameters():
                p.data = p.data.clone()
        _train(torch, model, opt, 3, seed=2)
        runs.append([p.detach().clone() for p in model.parameters()] +
                    [v["master"].clone() for v in opt.state.values()])
    assert all(torch.equal(a, b) for a, b in zip(*runs))


def test_nesterov_rule_is_checked_at_construction_only_like_torch():
    torch = pytest.importorskip("torch")
    import npadam.torch as NT

    results = []
    for cls in (torch.optim.SGD, NT.SGD):
        model = _torch_model(torch.float32)
        opt = cls(model.parameters(), lr=0.05, momentum=0.9, nesterov=True)
        _train(torch, model, opt, 2, seed=1)
        opt.param_groups[0]["momentum"] = 0.0  # a scheduler writing momentum 0 mid-run
        _train(torch, model, opt, 2, seed=2)
        opt.param_groups[0]["momentum"] = 0.9
        opt.param_groups[0]["dampening"] = 0.1
        _train(torch, model, opt, 2, seed=3)
        results.append([p.detach().clone() for p in model.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results))
    with pytest.raises(ValueError, match="nesterov=True needs momentum > 0"):
        NT.SGD(_torch_model(torch.float32).parameters(), lr=0.1, momentum=0.0, nesterov=True)


def test_last_unchecked_inputs():
    p = np.ones(4, np.float32)
    with pytest.raises(ValueError, match="non-finite weight_decay"):
        F.update(p, np.ones(4, np.float32), F.init(p), lr=1e-3, weight_decay=1e300, decoupled=False)
    with pytest.raises(ValueError, match="grad_scale=1e-50 is 0 in float32"):
        F.update(p, np.ones(4, np.float32), F.init(p), lr=1e-3, grad_scale=1e-50)
    assert (p == 1).all()
    with pytest.raises(TypeError, match="masked array"):
        F.grad_norm(np.ma.array(np.ones(3, np.float32), mask=[1, 0, 0]))
    with pytest.raises(TypeError, match="must be a NumPy array"):
        F.init([1.0, 2.0])
    opt = npadam.SGD([np.ones(3, np.float32)], lr=0.1)
    with pytest.raises(TypeError, match="grads must be a list"):
        opt.step(3)
    sd = opt.state_dict()
    sd["state"][0]["step"] = 2**63 - 1
    with pytest.raises(ValueError, match="below 2\\*\\*63 - 1"):
        opt.load_state_dict(sd)
    assert opt.step_count == 0
