"""``npadam.torch`` optimizers with ``comm=`` on every rank, checked against one process and ZeRO.

``python3 torch_sharded_check.py torch`` with torchrun's environment (``tests/ranks/launch.py``;
gloo), or ``run_all(distributed.SingleComm())`` in process. Each rank computes every rank's local
gradients itself (``sharded_check.local_grad``: sums exact in float32 and bfloat16), puts its own
into ``p.grad`` and steps; the reference is a single-process ``npadam.torch`` optimizer stepped on
the average as the communicator makes it. Params, grad norms, skip flags and the gathered state
must be the same bits for every world size. Then the anchor: a small model trained with
``npadam.torch.AdamW(comm=)`` and with ``torch.distributed.optim.ZeroRedundancyOptimizer`` on the
same data (prints ``ZERO ...`` lines: the largest param difference and each rank's optimizer-state
bytes). Prints ``OK torch_sharded rank r/n <checks>``; a failure prints the traceback and exits 1.
"""

from __future__ import annotations

import os
import sys
import tempfile
import time
import traceback
from typing import Any, Callable

import numpy as np
import torch

import npadam
import npadam.torch as nt
from npadam import distributed
from npadam import schedules as S

try:
    from . import sharded_check as sc
except ImportError:  # run as a script: tests/ranks is on sys.path
    import sharded_check as sc

MAIN = sc.MAIN  # fp32 and bf16 params, two groups (group 1 in rank 0's shard only on 4 ranks)


def to_torch(a: np.ndarray) -> torch.Tensor:
    """A NumPy array (bfloat16 from ml_dtypes) as a new torch tensor of the same dtype and bits."""
    if a.dtype == sc.BF16:
        return torch.from_numpy(a.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(a.copy())


def bits(t: torch.Tensor) -> bytes:
    return t.detach().contiguous().view(-1).view(torch.uint8).numpy().tobytes()


def make_params(spec: list) -> list[torch.nn.Parameter]:
    return [torch.nn.Parameter(to_torch(a)) for a in sc.init_params(spec)]


def groups(spec: list, params: list[torch.Tensor]) -> list[dict[str, Any]]:
    out = []
    for gi in sorted({g for *_, g in spec}):
        d: dict[str, Any] = {"params": [p for p, s in zip(params, spec) if s[3] == gi]}
        if gi == 1:
            d["lr"] = 0.02
        out.append(d)
    return out


def set_grads(params: list[torch.Tensor], grads: list[torch.Tensor | None]) -> None:
    """``p.grad = g``, in place where there is a grad already (flat storage keeps its views)."""
    for p, g in zip(params, grads):
        if g is None:
            p.grad = None
        elif p.grad is not None and p.grad.is_contiguous():
            p.grad.copy_(g)
        else:
            p.grad = g.clone()


def same_state(a: dict, b: dict, what: str) -> None:
    assert a["npadam"] == b["npadam"], (what, a["npadam"], b["npadam"])
    assert a["param_groups"] == b["param_groups"], (what, a["param_groups"], b["param_groups"])
    assert sorted(a["state"]) == sorted(b["state"]), what
    for i, sa in a["state"].items():
        sb = b["state"][i]
        assert sorted(sa) == sorted(sb), (what, i, sorted(sa), sorted(sb))
        for k in sa:
            assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, (what, i, k, sa[k].shape, sb[k].shape)
            assert bits(sa[k]) == bits(sb[k]), f"{what}: state[{i}][{k!r}] differs"


def state_nbytes(opt: Any) -> int:
    """The optimizer state this rank holds (npadam's flat state arrays)."""
    return sc.state_nbytes(opt)


class Run:
    """A sharded ``npadam.torch`` optimizer and its single-process reference, stepped together."""

    def __init__(self, comm: Any, make: Callable[..., Any], spec: list = MAIN, sched: Callable | None = None) -> None:
        self.comm, self.spec = comm, spec
        self.params = make_params(spec)
        self.ref_params = make_params(spec)
        self.make = make
        self.opt = make(groups(spec, self.params), comm=comm)
        self.ref = make(groups(spec, self.ref_params), comm=None)
        self.scheds = [sched(self.opt), sched(self.ref)] if sched is not None else []
        self.k = 0

    def grads(self, rank: int, none: tuple = (), inf_rank: int | None = None) -> list[np.ndarray | None]:
        out = []
        for i, (name, shape, dt, _) in enumerate(self.spec):
            if name in none:
                out.append(None)
                continue
            g = sc.local_grad(self.k, rank, i, shape, dt)
            if rank == inf_rank and i == 0:
                g.reshape(-1)[g.size // 2] = np.inf
            out.append(g)
        return out

    def step(self, none: tuple = (), inf_rank: int | None = None) -> Any:
        world, rank = self.comm.size, self.comm.rank
        each = [self.grads(r, none, inf_rank) for r in range(world)]
        avg = [None if each[0][i] is None else sc.average([e[i] for e in each], world) for i in range(len(self.spec))]
        set_grads(self.params, [None if g is None else to_torch(g) for g in each[rank]])
        set_grads(self.ref_params, [None if g is None else to_torch(g) for g in avg])
        self.opt.step()
        self.ref.step()
        for s in self.scheds:
            s.step()
        a, b = self.opt.last_step, self.ref.last_step
        what = f"step {self.k}"
        assert a.lr == b.lr, (what, a, b)
        sc.same_info(a, b, what)
        self.same_params(what)
        self.k += 1
        return a

    def same_params(self, what: str) -> None:
        sc.same_params(self.spec, self.params, self.ref_params, what, bits)

    def same_state(self) -> None:
        same_state(self.opt.full_state_dict(), self.ref.state_dict(), f"state after {self.k} steps")

    def check_views(self) -> None:
        """``state[p]`` holds flat views of this rank's elements of the param (the shard's ranges)."""
        ranges = self.opt.state_dict()["npadam"]["shard"]["ranges"]
        full = self.ref.state_dict()["state"]
        for i, (p, (a, b)) in enumerate(zip(self.params, ranges)):
            st = self.opt.state[p]
            assert int(st["step"]) == int(full[i]["step"]), (i, st["step"])
            for k, t in st.items():
                if k == "step" or k.endswith("_scale"):
                    continue
                assert t.shape == (b - a,), (i, k, tuple(t.shape), (a, b))
                assert bits(t) == bits(full[i][k].reshape(-1)[a:b]), (i, k)


# ---------------------------------------------------------------------------------------------- the checks
def check_adamw(comm: Any) -> None:
    """AdamW, fp32 and bf16 params, two groups, clipping, a torch scheduler; a param without grad in
    step 1; state[p]; the shard and whole state dicts loaded back."""
    make = lambda p, comm: nt.AdamW(p, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, comm=comm)  # noqa: E731
    run = Run(comm, make, sched=lambda o: torch.optim.lr_scheduler.LinearLR(o, start_factor=0.5, total_iters=3))
    infos = [run.step(), run.step(none=("b1",)), run.step()]
    assert infos[0].grad_norm > 0.5  # the clipping is active
    run.same_state()
    run.check_views()
    shard = run.opt.state_dict()
    assert shard["npadam"]["shard"]["world"] == comm.size and shard["npadam"]["shard"]["rank"] == comm.rank
    for sd in (shard, run.ref.state_dict(), run.opt.full_state_dict()):
        other = make(groups(MAIN, make_params(MAIN)), comm)
        other.load_state_dict(sd)
        same_state(other.full_state_dict(), run.ref.state_dict(), "loaded state")
    # the checkpoint's way: this rank's shard, then every param's whole fp32 values on every rank
    other = make(groups(MAIN, make_params(MAIN)), comm)
    other.load_state_dict(shard)
    other._checkpoint_write_params([p.detach().float().reshape(-1).numpy() for p in run.params])
    assert all(bits(p) == bits(q) for p, q in zip(other.param_groups[0]["params"] + other.param_groups[1]["params"],
                                                  run.params))


def check_adam_amsgrad(comm: Any) -> None:
    """Adam (L2 decay) with amsgrad on the reference kernel, lr from npadam.torch.LRScheduler."""
    sched = S.warmup_cosine(peak=1e-2, warmup_steps=2, total_steps=10, final=1e-3)
    run = Run(comm, lambda p, comm: nt.Adam(p, lr=1e-2, weight_decay=0.01, amsgrad=True, max_grad_norm=1.0,
                                            kernel="reference", comm=comm),
              sched=lambda o: nt.LRScheduler(o, sched))
    for _ in range(3):
        run.step()
    run.same_state()
    run.check_views()


def check_sgd(comm: Any) -> None:
    """SGD with momentum and weight decay, clipping on."""
    run = Run(comm, lambda p, comm: nt.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-3, max_grad_norm=1.0, comm=comm))
    for _ in range(3):
        run.step()
    run.same_state()
    run.check_views()


def check_flat_storage(comm: Any) -> None:
    """flat_storage=True: params and grads are views into padded flat buffers."""
    run = Run(comm, lambda p, comm: nt.AdamW(p, lr=1e-2, max_grad_norm=1.0, flat_storage=True, comm=comm))
    for _ in range(2):
        run.step()
    run.same_state()


def check_precision(comm: Any) -> None:
    """bf16 moments with stochastic rounding, param remainders: state tensors in bfloat16 / int16, also
    in the shard state dict that loads back."""
    make = lambda p, comm: nt.AdamW(p, lr=1e-2, exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16",  # noqa: E731
                                    rounding="stochastic", store_param_remainders=True, comm=comm)
    run = Run(comm, make)
    for _ in range(2):
        run.step()
    run.same_state()
    other = make(groups(MAIN, [p.detach().clone().requires_grad_() for p in run.params]), comm)
    other.load_state_dict(run.opt.state_dict())
    same_state(other.full_state_dict(), run.ref.state_dict(), "loaded bf16 state")


def check_inf(comm: Any) -> None:
    """inf in one rank's grads skips the step on every rank; the loss scaler backs off everywhere."""
    run = Run(comm, lambda p, comm: nt.AdamW(p, lr=1e-2, loss_scaler=npadam.LossScaler(), comm=comm))
    run.step()
    before = [bits(p) for p in run.params]
    info = run.step(inf_rank=comm.size - 1)
    assert info.skipped and info.step == 1, info
    assert [bits(p) for p in run.params] == before
    run.step()
    run.same_state()


def check_memory(comm: Any) -> None:
    """Each rank holds 1/world of the state (4 * 65536 elements per buffer: no padding on 1, 2, 4 ranks)."""
    run = Run(comm, lambda p, comm: nt.AdamW(p, lr=1e-2, amsgrad=True, comm=comm), sc.MEM)
    run.step()
    mine, whole = state_nbytes(run.opt), state_nbytes(run.ref)
    if 4 % comm.size == 0:
        assert mine * comm.size == whole, (mine, whole)
    print(f"state bytes rank {comm.rank}/{comm.size}: {mine} (one process: {whole})", flush=True)


expect_error = sc.expect_error


def check_disagreement(comm: Any) -> None:
    """A bad value on one rank raises on every rank (or skips on every rank), nothing changes, no hang."""
    if comm.size == 1:
        return
    last = comm.rank == comm.size - 1
    spec = [("a", (5,), "float32", 0), ("b", (7 + last,), "float32", 0)]
    expect_error(lambda: nt.AdamW(make_params(spec), comm=comm), "different params")
    expect_error(lambda: nt.AdamW(make_params(sc.TINY), lr=-1.0 if last else 1e-3, comm=comm),
                 "lr" if last else "rank")
    kind = nt.Adam if last else nt.AdamW  # Adam's L2 decay on one rank: its shard would step differently
    expect_error(lambda: kind(make_params(sc.TINY), comm=comm), "first difference at algorithm")
    expect_error(lambda: nt.AdamW(make_params(sc.TINY), exp_avg_dtype="bfloat16" if last else "float32", comm=comm),
                 "first difference at algorithm")
    run = Run(comm, lambda p, comm: nt.AdamW(p, lr=1e-2, comm=comm), sc.TINY)
    before = [bits(p) for p in run.params]
    extra = torch.nn.Parameter(torch.ones(3))
    group = {"params": [run.params[0] if last else extra]}  # a param already in the optimizer, on one rank
    expect_error(lambda: run.opt.add_param_group(group), "more than one" if last else "rank")
    assert len(run.opt.param_groups) == 1
    g = [to_torch(x) for x in run.grads(comm.rank)]
    set_grads(run.params, [None, g[1]] if comm.rank == 0 else g)
    expect_error(run.opt.step, "has a grad on some ranks")
    set_grads(run.params, g)
    if last:  # a grad that fails this rank's checks (not contiguous)
        run.params[0].grad = torch.zeros(5, 2).t()[0]
    expect_error(run.opt.step, "contiguous" if last else "another rank")
    set_grads(run.params, g)
    run.opt.param_groups[0]["lr"] = 2e-2 if last else 1e-2
    expect_error(run.opt.step, "hyperparameters of param group 0 differ across ranks")
    run.opt.param_groups[0]["lr"] = 1e-2
    run.opt.max_grad_norm = 1.0 if comm.rank == 0 else None
    expect_error(run.opt.step, "max_grad_norm / skip_nonfinite differ across ranks")
    run.opt.max_grad_norm = None
    assert run.opt.step_count == 0 and [bits(p) for p in run.params] == before
    # a state dict that is bad on one rank: an error everywhere, nothing loaded anywhere
    sd = run.ref.state_dict()
    if last:
        sd["state"][0]["exp_avg_sq"] = -torch.ones(5)
    expect_error(lambda: run.opt.load_state_dict(sd), "exp_avg_sq must be finite and >= 0" if last else "rank")
    shard = run.opt.state_dict()
    if last:  # this rank's shard, but with the ranges of another
        shard["npadam"]["shard"]["ranges"] = [[0, 1]] + shard["npadam"]["shard"]["ranges"][1:]
    expect_error(lambda: run.opt.load_state_dict(shard), "do not match this rank's shard" if last else "rank")
    assert run.opt.step_count == 0
    run.step()  # still usable, and in step with the reference
    if last:  # state[p] removed on one rank only (torch: the param restarts there): an error everywhere
        del run.opt.state[run.params[0]]
    set_grads(run.params, g)
    expect_error(run.opt.step, "update counts differ across ranks")


def check_zero_anchor(comm: Any) -> None:
    """npadam.torch.AdamW(comm=) against torch's ZeroRedundancyOptimizer(optimizer_class=AdamW) on the
    same model (two param groups), data and grad averaging, 5 steps; prints the largest param
    difference and each rank's optimizer-state bytes. Twice: (1) "shared": both optimizers get the
    same local grads (model ``a``'s, rounded to multiples of 2**-20 so that their sums are exact in any
    order): only the AdamW arithmetic differs (npadam's operation order is not torch's: an ulp
    here and there); (2) "independent": each model runs its own forward and backward on the same
    data with raw grads, so the ulps of (1) and the two reductions' rounding feed back through the
    model (Adam's normalisation amplifies them where grads are tiny or cancel across ranks)."""
    if comm.backend != "torch":
        return
    import torch.distributed as dist
    from torch.distributed.optim import ZeroRedundancyOptimizer

    world, rank = comm.size, comm.rank

    def model() -> torch.nn.Module:
        torch.manual_seed(0)  # the same init on every rank
        return torch.nn.Sequential(torch.nn.Linear(256, 1024), torch.nn.ReLU(), torch.nn.Linear(1024, 1024),
                                   torch.nn.ReLU(), torch.nn.Linear(1024, 16))

    def param_groups(m: torch.nn.Module) -> list[dict[str, Any]]:
        return [{"params": [p for p in m.parameters() if p.ndim == 2], "weight_decay": 0.1},
                {"params": [p for p in m.parameters() if p.ndim < 2], "weight_decay": 0.0}]

    lr, steps = 1e-3, 5
    hyper = dict(lr=lr, betas=(0.9, 0.95), eps=1e-8)
    for shared in (True, False):
        a, b = model(), model()
        npa = nt.AdamW(param_groups(a), comm=comm, **hyper)
        zero = ZeroRedundancyOptimizer(param_groups(b), optimizer_class=torch.optim.AdamW, **hyper)
        for k in range(steps):
            gen = torch.Generator().manual_seed(1000 * k + rank)  # this rank's batch
            x, y = torch.randn(32, 256, generator=gen), torch.randn(32, 16, generator=gen)
            for m in (a,) if shared else (a, b):
                m.zero_grad()
                torch.nn.functional.mse_loss(m(x), y).backward()
            if shared:
                for p, q in zip(a.parameters(), b.parameters()):
                    assert p.grad.abs().max() < 4  # multiples of 2**-20 below 4: 4 of them sum exactly
                    p.grad.copy_(torch.round(p.grad * 2.0 ** 20) / 2.0 ** 20)
                    q.grad = p.grad.clone()
            npa.step()  # averages the local grads itself
            for p in b.parameters():  # ZeRO takes averaged grads (what DDP would give)
                dist.all_reduce(p.grad)
                p.grad.div_(world)
            zero.step()
        diff = max(float((p.detach() - q.detach()).abs().max()) for p, q in zip(a.parameters(), b.parameters()))
        print(f"ZERO world={world} rank={rank} grads={'shared' if shared else 'independent'} steps={steps} lr={lr} "
              f"max_abs_diff={diff:.3g}", flush=True)
        assert diff <= (1e-4 if shared else 1e-2) * lr, diff
    one = nt.AdamW(param_groups(model()), **hyper)  # one process's state
    zero_bytes = sum(t.nbytes for st in zero.optim.state.values() for t in st.values() if torch.is_tensor(t))
    mine, whole = state_nbytes(npa), state_nbytes(one)
    comm_bytes = sum(x.nbytes for d in (npa._sharding._send, npa._sharding._gather) for x in d.values())
    print(f"ZERO world={world} rank={rank} params={sum(p.numel() for p in a.parameters())} "
          f"npadam_state_bytes={mine} single_process_state_bytes={whole} zero_state_bytes={zero_bytes} "
          f"npadam_comm_buffer_bytes={comm_bytes}", flush=True)
    pad = len(npa._engine.layout.buffers) * 65536 * 8  # at most one norm block of exp_avg + exp_avg_sq per buffer
    assert mine <= whole / world + pad, (mine, whole)


def check_overlap(comm: Any) -> None:
    """overlap_grads + bucket_bytes + flat_storage (DDP-style buckets): a real backward pass whose grads
    are each rank's local grads (loss = sum(p * g)), two micro-batches (the first inside no_sync), the
    buckets handed over by the post-accumulate-grad hooks while the backward pass runs, the param
    all-gathers left in flight (step(wait_params=False)) and waited for bucket by bucket: the same
    bits as one process with the same buckets stepped on the averaged grads."""
    make = lambda p, comm: nt.AdamW(p, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, bucket_bytes=300_000,  # noqa: E731
                                    flat_storage=True, comm=comm, overlap_grads=comm is not None)
    run = Run(comm, make)
    opt = run.opt
    assert len(opt.buckets) > 2, [len(b) for b in opt.buckets]
    for k in range(3):
        world, rank = comm.size, comm.rank
        each = [run.grads(r) for r in range(world)]
        mine = [to_torch(g) for g in each[rank]]
        opt.zero_grad()
        with opt.no_sync():  # gradient accumulation: half of each grad in a first micro-batch
            sum((p * (g / 2)).sum() for p, g in zip(run.params, mine)).backward()
        assert not opt._early
        sum((p * (g / 2)).sum() for p, g in zip(run.params, mine)).backward()
        assert sorted(opt._early) == list(range(len(opt.buckets))), sorted(opt._early)  # all sent by the hooks
        opt.step(wait_params=k == 2)
        avg = [sc.average([e[i] for e in each], world) for i in range(len(run.spec))]
        set_grads(run.ref_params, [to_torch(g) for g in avg])
        run.ref.step()
        sc.same_info(opt.last_step, run.ref.last_step, f"overlap step {k}")
        for bi in range(len(opt.buckets)):  # as a forward pass reaches them
            opt.wait_params(bi)
        run.k += 1
        run.same_params(f"overlap step {k}")
    if comm.size > 1:  # flat storage: reduced from the flat grads, gathered into the flat params, no copies
        sh = opt._sharding
        assert sh._recv and not sh._send and not sh._gather, (sorted(sh._recv), sorted(sh._send), sorted(sh._gather))
    run.same_state()


def check_tiers(comm: Any) -> None:
    """Each rank's shard of the state partly in another tier: files (nvme_offload_fraction), and with
    host params standing in for GPU params (``npadam._placement.standin``) host memory behind the
    copier (offload_fraction). ``state[p]`` of a param there: flat copies of this rank's elements; an
    in-place edit of one is written back at the next step (every rank halves its elements, the
    reference all of them); shard state dicts load back. The reference keeps its state in memory."""
    from npadam._placement import standin
    from npadam.tiers.transfer import HostCopier

    with tempfile.TemporaryDirectory() as d, standin(HostCopier, piece_elems=40_000):
        for tier in (dict(nvme_offload_fraction=0.5, nvme_offload_dir=d, nvme_staging_bytes=1 << 20),
                     dict(offload_fraction=0.6)):
            make = lambda p, comm, tier=tier: nt.AdamW(  # noqa: E731
                p, lr=1e-2, amsgrad=True, max_grad_norm=1.0, comm=comm, **(tier if comm is not None else {}))
            run = Run(comm, make)
            assert run.opt._engine.tiered and not run.ref._engine.tiered, tier
            run.step()
            a, b = run.opt.state_dict()["npadam"]["shard"]["ranges"][0]
            st = run.opt.state[run.params[0]]
            assert st["exp_avg"].shape == (b - a,), (tier, tuple(st["exp_avg"].shape), (a, b))
            st["exp_avg"].mul_(0.5)
            run.ref.state[run.ref_params[0]]["exp_avg"].mul_(0.5)
            run.step()
            run.same_state()
            other = make(groups(MAIN, [p.detach().clone().requires_grad_() for p in run.params]), comm)
            other.load_state_dict(run.opt.state_dict())
            same_state(other.full_state_dict(), run.ref.state_dict(), f"loaded into the tiers {sorted(tier)}")
            run.opt.close()
            other.close()


CHECKS = [check_overlap, check_adamw, check_adam_amsgrad, check_sgd, check_flat_storage, check_precision, check_inf, check_memory,
          check_disagreement, check_zero_anchor, check_tiers]


def run_all(comm: Any) -> int:
    for check in CHECKS:
        t = time.perf_counter()
        check(comm)
        if os.environ.get("NPADAM_CHECK_TIMES"):
            print(f"{check.__name__} {time.perf_counter() - t:.2f} s", flush=True)
    return len(CHECKS)


def main() -> None:
    t = time.perf_counter()
    backend = sys.argv[1] if len(sys.argv) > 1 else "torch"
    comm = distributed.init(backend, torch_backend="gloo") if backend == "torch" else distributed.init(backend)
    if os.environ.get("NPADAM_CHECK_TIMES"):
        print(f"init {time.perf_counter() - t:.2f} s", flush=True)
    try:
        n = run_all(comm)
    except BaseException:
        sys.stdout.write(f"rank {comm.rank}/{comm.size} FAILED\n{traceback.format_exc()}")
        sys.stdout.flush()
        sys.exit(1)
    print(f"OK torch_sharded rank {comm.rank}/{comm.size} {n}", flush=True)
    comm.close()


if __name__ == "__main__":
    main()
