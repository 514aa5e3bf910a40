"""``npadam.torch.AdamW`` / ``Adam`` / ``SGD`` with ``comm=`` (sharded state, ZeRO-1/2): the checks of
``tests/ranks/torch_sharded_check.py`` in process on the single-process communicator and on 1, 2 and
4 torch.distributed (gloo) ranks launched with torchrun's environment (bit-identical params, norms and
state against one process; a bad value on one rank; ZeroRedundancyOptimizer as the anchor), and the
refusals. Launched runs have deadlines and show every rank's output."""

from __future__ import annotations

import copy
import importlib.util
import pickle
import re
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")

import npadam.checkpoint  # noqa: E402
import npadam.torch as nt  # noqa: E402
from npadam import distributed  # noqa: E402

try:
    from . import _gpt
    from .ranks import launch, torch_sharded_check as check
except ImportError:  # run from tests/ as a plain directory
    import _gpt
    from ranks import launch, torch_sharded_check as check

CHECK = Path(__file__).resolve().parent / "ranks" / "torch_sharded_check.py"
needs_mpi = pytest.mark.skipif(not (importlib.util.find_spec("mpi4py") and launch.mpiexec_path()),
                               reason="needs mpi4py and mpiexec: python3 -m pip install mpi4py mpich")


def _model():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Linear(16, 4))


def test_single_comm_in_process():
    """Every check of the launched script with the single-process communicator (world 1: no padding)."""
    assert check.run_all(distributed.SingleComm()) == len(check.CHECKS)


@pytest.mark.parametrize("flat", [False, True])
def test_world_one_is_the_plain_optimizer(flat):
    """Bit for bit the un-sharded optimizer on a model (bf16 params, groups, amsgrad, clipping), state[p] flat."""
    a, b = _model().to(torch.bfloat16), _model().to(torch.bfloat16)
    groups = lambda m: [{"params": [m[0].weight, m[1].weight]},  # noqa: E731
                        {"params": [m[0].bias, m[1].bias], "lr": 3e-2, "weight_decay": 0.0}]
    opts = [nt.AdamW(groups(m), lr=1e-2, amsgrad=True, max_grad_norm=0.1, flat_storage=flat, comm=c)
            for m, c in ((a, distributed.SingleComm()), (b, None))]
    for k in range(4):
        x = torch.randn(5, 8, generator=torch.Generator().manual_seed(k)).to(torch.bfloat16)
        for m, o in zip((a, b), opts):
            o.zero_grad()
            m(x).float().pow(2).sum().backward()
            o.step()
        assert opts[0].last_step == opts[1].last_step
        assert opts[0].last_step.grad_norm > 0.1
        assert all(check.bits(p) == check.bits(q) for p, q in zip(a.parameters(), b.parameters()))
    st = opts[0].state[a[0].weight]
    assert st["exp_avg"].shape == (128,) and st["max_exp_avg_sq"].shape == (128,)
    assert torch.equal(st["exp_avg"], opts[1].state[b[0].weight]["exp_avg"].reshape(-1))
    check.same_state(opts[0].full_state_dict(), opts[1].state_dict(), "world 1")
    assert opts[0].state_dict()["npadam"]["shard"]["ranges"] == [[0, 128], [0, 64], [0, 16], [0, 4]]


def test_state_entries_set_by_the_caller():
    """torch semantics for ``state[p]`` edited from outside: an emptied entry restarts the param, a
    replaced one is taken in (whole-param or this rank's flat size)."""
    m = _model()
    opt = nt.AdamW(m.parameters(), comm=distributed.SingleComm())
    m(torch.ones(2, 8)).sum().backward()
    opt.step()
    w = m[0].weight
    opt.state[w] = {"step": torch.tensor(3.0), "exp_avg": torch.ones(128), "exp_avg_sq": torch.ones(16, 8)}
    opt.state[m[0].bias] = {}
    opt.step()
    assert int(opt.state[w]["step"]) == 4 and int(opt.state[m[0].bias]["step"]) == 1
    with pytest.raises(ValueError, match=r"has 5 elements, expected 128 \(or 128, this rank's"):
        opt.state[w] = {"step": 1, "exp_avg": torch.ones(5), "exp_avg_sq": torch.ones(5)}
        opt.step()


def test_refusals():
    m = _model()
    one = distributed.SingleComm()
    with pytest.raises(ValueError, match="comm must be a npadam.distributed communicator"):
        nt.AdamW(m.parameters(), comm=object())
    with pytest.raises(ValueError, match=r"nvme_offload_fraction must be <= 1.0, got 1.5"):  # checked as without comm
        nt.AdamW(m.parameters(), nvme_offload_fraction=1.5, nvme_offload_dir="/tmp", comm=one)
    opt = nt.AdamW(m.parameters(), comm=one)
    with pytest.raises(TypeError, match="sharded across ranks"):
        pickle.dumps(opt)
    with pytest.raises(TypeError, match="sharded across ranks"):
        copy.deepcopy(opt)
    plain = nt.AdamW(_model().parameters())
    with pytest.raises(ValueError, match="one rank's shard"):
        plain.load_state_dict(opt.state_dict())
    precise = nt.AdamW(_model().parameters(), exp_avg_dtype="bfloat16", store_param_remainders=True, comm=one)
    precise.load_state_dict(opt.state_dict(), convert=True)  # a shard's moments convert (no masters: fp32 params)
    assert precise.state[list(precise._params)[0]]["exp_avg"].dtype == torch.bfloat16
    m.to(torch.bfloat16)  # the state would have to be laid out again: refused, nothing changed
    m(torch.ones(2, 8, dtype=torch.bfloat16)).sum().backward()
    with pytest.raises(ValueError, match=r"param '0' changed dtype \(was float32\).*full_state_dict"):
        opt.step()
    assert opt.step_count == 0
    opt.param_groups[0]["params"].pop()
    m.to(torch.float32)
    with pytest.raises(ValueError, match="params were removed from or replaced in a param group"):
        opt.step()


def test_communicator_of_gpu_memory_refuses_cpu_params():
    class DeviceOnly(distributed.SingleComm):  # moves GPU memory only, as NCCL
        memories = frozenset({"device"})

    with pytest.raises(ValueError, match="moves GPU memory only; params in host memory need"):
        nt.AdamW(torch.nn.Linear(4, 4).parameters(), comm=DeviceOnly())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_params_with_comm_step_like_one_process():
    """World 1 (no collectives): the sharded optimizer on CUDA params is the plain one, bit for bit.
    Two ranks on one GPU: tests/test_gpu.py::test_gpu_params_sharded_on_two_ranks."""
    torch.manual_seed(0)
    a = torch.nn.Linear(64, 32).cuda()
    b = torch.nn.Linear(64, 32).cuda()
    b.load_state_dict(a.state_dict())
    oa = nt.AdamW(a.parameters(), lr=1e-2, max_grad_norm=0.1, comm=distributed.SingleComm(), flat_storage=True)
    ob = nt.AdamW(b.parameters(), lr=1e-2, max_grad_norm=0.1)
    x = torch.randn(8, 64, device="cuda")
    for _ in range(3):
        for m, o in ((a, oa), (b, ob)):
            m(x).square().mean().backward()
            o.step()
            o.zero_grad()
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


# 1: as test_single_comm_in_process; 4 (46 s cold): the sharding logic is the MPI tests' on 4 ranks, the gloo
# communicator the 2-rank run's; the 4-rank ZeroRedundancyOptimizer numbers of BENCHMARKS.md come from it
@pytest.mark.parametrize("n", [pytest.param(1, marks=pytest.mark.slow), 2, pytest.param(4, marks=pytest.mark.slow)])
def test_torchrun_sharded(n, capsys):
    outs = launch.torchrun(n, CHECK, "torch", timeout=240)
    for r, out in enumerate(outs):
        assert f"OK torch_sharded rank {r}/{n} {len(check.CHECKS)}" in out, out
    zero = [line for out in outs for line in re.findall(r"ZERO .*", out)]
    shared = [float(x) for x in re.findall(r"grads=shared .*max_abs_diff=(\S+)", "\n".join(zero))]
    assert len(shared) == n and max(shared) <= 1e-7, zero  # AdamW in npadam's and torch's operation orders
    with capsys.disabled():  # the numbers of docs/BENCHMARKS.md
        print("\n" + "\n".join(zero))


@needs_mpi
@pytest.mark.slow  # ~20 s; the sharded step is the same for every communicator (tests/test_sharded.py runs MPI)
def test_mpiexec_sharded():
    """The same checks under mpiexec with the MPI communicator (the ZeRO anchor needs torch.distributed)."""
    out = launch.mpiexec(2, CHECK, "mpi", timeout=240)
    ranks = re.findall(r"OK torch_sharded rank (\d+)/(\d+) (\d+)", out)
    assert sorted((r, w) for r, w, _ in ranks) == [("0", "2"), ("1", "2")], out


def _loss(m, k=0):
    x = torch.randn(5, 8, generator=torch.Generator().manual_seed(k))
    return m(x).pow(2).sum()


def test_overlap_grads_hands_buckets_over_during_backward():
    """The hooks send each bucket when its last grad is accumulated; no_sync holds them back; a second
    backward pass after the buckets were sent refuses the step (its grads would be stale) and the
    optimizer stays usable; the results equal the plain optimizer's."""
    a, b = _model(), _model()
    opt = nt.AdamW(a.parameters(), lr=1e-2, comm=distributed.SingleComm(), bucket_bytes=256, overlap_grads=True)
    ref = nt.AdamW(b.parameters(), lr=1e-2, bucket_bytes=256)
    assert [len(x) for x in opt.buckets] == [1, 1, 1, 1] and opt.buckets[0][0] is a[0].weight
    for o, m in ((opt, a), (ref, b)):
        o.zero_grad()
        if o is opt:
            with opt.no_sync():
                _loss(m, 0).backward()
            assert opt._early == {}
        else:
            _loss(m, 0).backward()
        _loss(m, 1).backward()
        o.step()
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters()))
    opt.zero_grad()
    _loss(a).backward()
    assert sorted(opt._early) == [0, 1, 2, 3]
    before = [p.detach().clone() for p in a.parameters()]
    with pytest.raises(ValueError, match="second backward pass"):
        _loss(a).backward()
    with pytest.raises(ValueError, match="second backward pass"):
        opt.step()
    assert opt.step_count == 1 and all(torch.equal(p, q) for p, q in zip(a.parameters(), before))
    opt.zero_grad()
    _loss(a).backward()
    opt.step()
    assert opt.step_count == 2


def test_handing_over_buckets_checks_each_bucket_once():
    """Regression (an 800-tensor model in 50 buckets spent 60 % of its step re-checking every grad at
    each grads_ready): a bucket's hand-over checks that bucket's grads only, the caller's changes are
    caught up with once per step (at its first bucket), and the step checks everything once more.
    A bad grad in a later bucket is still named by its grads_ready."""
    m = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])
    opt = nt.AdamW(m.parameters(), lr=1e-2, comm=distributed.SingleComm(), bucket_bytes=8 * 9 * 4,
                   overlap_grads=True, flat_storage=True)
    assert len(opt.buckets) == 6
    calls = {"_sync": 0, "_collect": 0}
    for name in calls:
        def counted(*a, _f=getattr(opt, name), _n=name, **k):
            calls[_n] += 1
            return _f(*a, **k)
        setattr(opt, name, counted)
    for _ in range(2):
        m(torch.ones(2, 8)).sum().backward()
        assert sorted(opt._early) == list(range(6))
        opt.step()
        opt.zero_grad()
    assert calls == {"_sync": 2 * 2, "_collect": 2}, calls  # per step: the first bucket's, the step's
    m(torch.ones(2, 8)).sum().backward()
    opt.step()
    opt.zero_grad()
    m = torch.nn.Sequential(*[torch.nn.Linear(8, 8) for _ in range(6)])  # grads of the caller's: checked
    opt = nt.AdamW(m.parameters(), lr=1e-2, comm=distributed.SingleComm(), bucket_bytes=8 * 9 * 4)
    m(torch.ones(2, 8)).sum().backward()  # no hooks: the buckets are handed over by hand, a bad grad in the last
    m[5].bias.grad = torch.zeros(8, 2)[:, 0]
    for bi in range(5):
        opt.grads_ready(bi)
    with pytest.raises(ValueError, match="grad of '11' must be a contiguous dense tensor"):
        opt.grads_ready(5)


def test_grads_ready_wait_params_and_refusals():
    m = _model()
    opt = nt.AdamW(m.parameters(), lr=1e-2, comm=distributed.SingleComm(), bucket_bytes=256)
    for bad in (4, -1, True, "0"):
        with pytest.raises(ValueError, match="bucket must be an int"):
            opt.grads_ready(bad)
        with pytest.raises(ValueError, match="bucket must be an int"):
            opt.wait_params(bad)
    with pytest.raises(TypeError, match="wait_params must be a bool"):
        opt.step(wait_params=1)
    with pytest.raises(ValueError, match="bucket_bytes"):
        nt.AdamW(_model().parameters(), bucket_bytes=0)
    with pytest.raises(TypeError, match="overlap_grads"):
        nt.AdamW(_model().parameters(), overlap_grads="yes")
    _loss(m).backward()
    opt.grads_ready(0)
    with pytest.raises(ValueError, match="already handed over"):
        opt.grads_ready(0)
    m[0].weight.grad = m[0].weight.grad.clone()  # replaced after it was handed over
    with pytest.raises(ValueError, match="not the tensor it was at grads_ready"):
        opt.step()
    assert opt.step_count == 0
    opt.grads_ready(0)
    opt.step(wait_params=False)
    opt.wait_params(0)
    opt.wait_params()
    assert opt.step_count == 1
    c = copy.deepcopy(nt.AdamW(_model().parameters(), overlap_grads=True))  # the copy hooks its own params
    assert c.overlap_grads and len(c._hooks) == 4


@pytest.mark.parametrize("tiers", [False, True], ids=["fp32", "tiers"])
def test_gpt_training_loop_resumes_bit_for_bit_on_two_gloo_ranks(tmp_path, tiers):
    """A user's loop (tests/ranks/gpt_sharded_check.py): a GPT on 2 gloo ranks with flat storage,
    buckets sent from the backward hooks, two micro-batches, clipping, a warmup-cosine LRScheduler,
    params waited for in a forward pre-hook. Resumed in new processes from the checkpoint saved after
    step 3, the eval losses of steps 3-5 are the uninterrupted run's, bit for bit; the same
    checkpoint loaded into one process without comm gives the model the saving run had. ``tiers``:
    bf16 first moments (stochastic rounding), fp8 second moments, half of each shard in files."""
    gpt = Path(__file__).resolve().parent / "ranks" / "gpt_sharded_check.py"

    def evals(phase):
        outs = launch.torchrun(2, gpt, str(tmp_path), phase, *(["tiers"] if tiers else []), timeout=240)
        for r, out in enumerate(outs):
            assert f"OK gpt rank {r}/2 {phase}" in out, out
        got = [dict(re.findall(r"EVAL (\d+) (\S+)", out)) for out in outs]
        assert got[0] == got[1], outs  # the same params on both ranks
        return got[0]

    full, resumed = evals("full"), evals("resume")
    assert sorted(full) == [str(k) for k in range(6)] and sorted(resumed) == ["3", "4", "5"]
    assert {k: full[k] for k in ("3", "4", "5")} == resumed
    if tiers:
        return
    model = _gpt.make(0, layers=4)  # one process, no comm, no buckets: the checkpoint is canonical
    decay = [p for p in model.parameters() if p.ndim >= 2]
    opt = nt.AdamW([{"params": decay, "weight_decay": 0.1},
                    {"params": [p for p in model.parameters() if p.ndim < 2], "weight_decay": 0.0}],
                   lr=3e-3, betas=(0.9, 0.95))
    npadam.checkpoint.load(tmp_path / "ckpt", opt)
    with torch.no_grad():
        assert _gpt.loss_of(model, 10_000).item().hex() == full["2"]
