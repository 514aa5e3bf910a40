"""The sharded optimizer (``comm=``) on every rank, checked bit for bit against one process.

``python3 -m mpi4py sharded_check.py mpi`` under ``mpiexec -n N`` (tests/test_sharded.py), or
``run_all(distributed.init("single"))`` in process. Each rank computes every rank's gradients
itself: small integers times 2**-3, so their sum is exact in float32 and bfloat16 and in any
order; the reference is a single-process optimizer stepped on the average as the communicator
makes it (the float32 sum divided by the world size in float32, rounded once to the grad dtype).
Params, norms, skip flags, loss scales and the gathered state must be the same bits for every
world size. Prints ``OK sharded rank r/n <checks>``; any failure prints the traceback and aborts.
"""

from __future__ import annotations

import struct
import sys
import tempfile
import traceback
from typing import Any, Callable

import ml_dtypes
import numpy as np

import npadam
from npadam import distributed

BF16 = np.dtype(ml_dtypes.bfloat16)
#: (name, shape, dtype, group): with 4 ranks every shard of group 0's buffers holds data, group 1's
#: buffer lies in rank 0's shard (the other ranks' shards of it are only padding)
MAIN = [("w1", (300, 700), "float32", 0), ("b1", (37,), "float32", 0), ("e1", (256, 800), "bfloat16", 0),
        ("w2", (129, 65), "float32", 1), ("s2", (3,), "float32", 1)]
TINY = [("a", (5,), "float32", 0), ("b", (7,), "float32", 0)]
MEM = [("m", (512, 512), "float32", 0), ("h", (512, 512), "bfloat16", 0)]  # 4 * 65536 elements each


def dtype(name: str) -> np.dtype:
    return BF16 if name == "bfloat16" else np.dtype(name)


def init_params(spec: list) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    return [(rng.standard_normal(shape) * 0.5).astype(dtype(dt)) for _, shape, dt, _ in spec]


def groups(spec: list, arrays: list[np.ndarray]) -> list[dict[str, Any]]:
    out = []
    for gi in sorted({g for *_, g in spec}):
        idx = [i for i, s in enumerate(spec) if s[3] == gi]
        d: dict[str, Any] = {"params": [arrays[i] for i in idx], "names": [spec[i][0] for i in idx]}
        if gi == 1:
            d["lr"] = 0.02
        out.append(d)
    return out


def local_grad(step: int, rank: int, i: int, shape: tuple, dt: str) -> np.ndarray:
    """bfloat16: integers in [-4, 4] times 2**-3. float32: -1, 0 or 1 times 2**-3 times a factor per
    element with 21 significant bits, the same on every rank: the sums over at most 4 ranks stay
    exact (23 bits), while the float64 sums of squares of the norm round (46-bit squares), so the
    norm depends on the order its blocks are added in."""
    if dt != "float32":
        return (np.random.default_rng([step, rank, i]).integers(-4, 5, shape) * 0.125).astype(dtype(dt))
    ints = np.random.default_rng([step, rank, i]).integers(-1, 2, shape) * 0.125
    return (ints * (1 + np.random.default_rng([step, i]).integers(0, 1 << 20, shape) * 2.0 ** -20)).astype(np.float32)


def average(each: list[np.ndarray], world: int) -> np.ndarray:
    """What reduce-scatter with op "avg" gives: the float32 sum / world in float32, rounded once."""
    total = np.sum([g.astype(np.float32) for g in each], axis=0, dtype=np.float32)
    return (total / np.float32(world)).astype(each[0].dtype)


def bits(a: Any) -> bytes:
    return np.ascontiguousarray(a).tobytes()


def same_float(x: float | None, y: float | None, what: str) -> None:
    if (x is None) != (y is None) or (x is not None and struct.pack("d", x) != struct.pack("d", y)):
        raise AssertionError(f"{what}: {x!r} != {y!r}")


def same_params(spec: list, ps: list, qs: list, what: str, to_bytes: Callable[[Any], bytes] = bits) -> None:
    """The params ``ps`` and ``qs`` (arrays, or tensors with a ``to_bytes`` for them) bit for bit."""
    for (name, *_), p, q in zip(spec, ps, qs):
        a, b = to_bytes(p), to_bytes(q)
        if a != b:
            bad = np.flatnonzero(np.frombuffer(a, np.uint8) != np.frombuffer(b, np.uint8))[:4]
            raise AssertionError(f"{what}: param {name!r} differs at bytes {bad.tolist()}")


def same_info(a: Any, b: Any, what: str) -> None:
    """Two steps' ``StepInfo``: the same skip, step count, norm and loss scale, bit for bit."""
    assert a.skipped == b.skipped and a.step == b.step, (what, a, b)
    same_float(a.grad_norm, b.grad_norm, f"{what}: grad_norm")
    same_float(a.loss_scale, b.loss_scale, f"{what}: loss_scale")


def same_state(a: dict, b: dict, what: str) -> None:
    assert a["npadam"] == b["npadam"], (what, a["npadam"], b["npadam"])
    assert a["param_groups"] == b["param_groups"], (what, a["param_groups"], b["param_groups"])
    assert sorted(a["state"]) == sorted(b["state"]), what
    for i in a["state"]:
        sa, sb = a["state"][i], b["state"][i]
        assert sorted(sa) == sorted(sb), (what, i, sorted(sa), sorted(sb))
        for k in sa:
            if k == "step":
                assert sa[k] == sb[k], (what, i, sa[k], sb[k])
            else:
                assert sa[k].dtype == sb[k].dtype and sa[k].shape == sb[k].shape, (what, i, k, sa[k].shape, sb[k].shape)
                assert bits(sa[k]) == bits(sb[k]), f"{what}: state[{i}][{k!r}] differs"


def state_nbytes(opt: Any) -> int:
    fields = ("master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq", "m_scale", "v_scale", "vmax_scale")
    return sum(getattr(b, f).nbytes for b in opt._engine.bufs for f in fields if getattr(b, f) is not None)


class Run:
    """A sharded optimizer and its single-process reference, stepped together."""

    def __init__(self, comm: Any, make: Callable[..., Any], spec: list = MAIN) -> None:
        self.comm, self.spec = comm, spec
        self.params = init_params(spec)
        self.ref_params = [p.copy() for p in self.params]
        self.make = make
        self.opt = make(groups(spec, self.params), comm=comm)
        self.ref = make(groups(spec, self.ref_params), comm=None)
        self.k = 0

    def grads(self, rank: int, none: tuple = (), inf_rank: int | None = None) -> list:
        out = []
        for i, (name, shape, dt, _) in enumerate(self.spec):
            if name in none:
                out.append(None)
                continue
            g = local_grad(self.k, rank, i, shape, dt)
            if rank == inf_rank and i == 0:
                g.reshape(-1)[len(g.reshape(-1)) // 2] = np.inf
            out.append(g)
        return out

    def step(self, none: tuple = (), inf_rank: int | None = None) -> Any:
        world, rank = self.comm.size, self.comm.rank
        each = [self.grads(r, none, inf_rank) for r in range(world)]
        avg = [None if each[0][i] is None else average([e[i] for e in each], world) for i in range(len(self.spec))]
        a = self.opt.step(each[rank])
        b = self.ref.step(avg)
        what = f"step {self.k}"
        same_info(a, b, what)
        self.same_params(what)
        self.k += 1
        return a

    def same_params(self, what: str) -> None:
        same_params(self.spec, self.params, self.ref_params, what)

    def same_state(self) -> None:
        same_state(self.opt.full_state_dict(), self.ref.state_dict(), f"state after {self.k} steps")


def check_adamw(comm: Any) -> None:
    """AdamW, fp32 and bf16 params, two groups, clipping on; a param without grad in step 1."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, comm=comm))
    infos = [run.step(), run.step(none=("b1",)), run.step()]
    assert infos[0].grad_norm > 0.5  # the clipping is active
    run.same_state()
    # state dicts: this rank's shard back into a fresh sharded optimizer, and a whole one into another
    shard = run.opt.state_dict()
    assert shard["npadam"]["shard"]["world"] == comm.size
    for sd in (shard, run.ref.state_dict()):
        other = npadam.AdamW(groups(MAIN, [p.copy() for p in run.params]), lr=1e-2, weight_decay=0.1,
                             max_grad_norm=0.5, comm=comm)
        other.load_state_dict(sd)
        same_state(other.full_state_dict(), run.ref.state_dict(), "loaded state")


def check_adam_amsgrad(comm: Any) -> None:
    """Adam (L2 decay) with amsgrad, on the reference kernel."""
    run = Run(comm, lambda p, comm: npadam.Adam(p, lr=1e-2, weight_decay=0.01, amsgrad=True, max_grad_norm=1.0,
                                                kernel="reference", comm=comm))
    for _ in range(3):
        run.step()
    run.same_state()


def check_sgd(comm: Any) -> None:
    """SGD with momentum and weight decay, clipping on."""
    run = Run(comm, lambda p, comm: npadam.SGD(p, lr=1e-2, momentum=0.9, weight_decay=1e-3, max_grad_norm=1.0,
                                               comm=comm))
    for _ in range(3):
        run.step()
    run.same_state()


def check_precision(comm: Any) -> None:
    """bf16 moments with stochastic rounding (keyed on the flat index), fp8 second moments, param remainders."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, exp_avg_dtype="bfloat16", rounding="stochastic",
                                                 exp_avg_sq_dtype="float8_e4m3fn", store_param_remainders=True,
                                                 max_grad_norm=1.0, comm=comm))
    for _ in range(2):
        run.step()
    run.same_state()


def check_inf(comm: Any) -> None:
    """inf in one rank's grads skips the step on every rank; the loss scaler backs off everywhere."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, loss_scaler=npadam.LossScaler(), comm=comm))
    run.step()
    before = [p.copy() for p in run.params]
    info = run.step(inf_rank=comm.size - 1)
    assert info.skipped and info.step == 1, info
    assert all(bits(p) == bits(q) for p, q in zip(before, run.params))
    run.step()
    run.same_state()


def check_nvme(comm: Any) -> None:
    """The tail of each rank's shard of the state in files (nvme_offload_fraction), streamed in chunks,
    amsgrad's max appearing there at the first step; the reference keeps its state in memory. Float32
    state, and precision-aware state kept in its own dtypes there (bf16 moments with stochastic
    rounding, fp8 second moments and their block scales, param remainders)."""
    for prec_kw in ({}, dict(exp_avg_dtype="bfloat16", rounding="stochastic", exp_avg_sq_dtype="float8_e4m3fn",
                             store_param_remainders=True)):
        with tempfile.TemporaryDirectory() as d:
            disk = dict(nvme_offload_fraction=0.5, nvme_offload_dir=d, nvme_staging_bytes=1 << 20)
            run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, amsgrad=True, max_grad_norm=1.0, comm=comm,
                                                         **prec_kw, **({} if comm is None else disk)))
            assert run.opt._engine.disk
            for _ in range(2):
                run.step()
            run.same_state()
            shard = run.opt.state_dict()  # read back from the files too
            other = npadam.AdamW(groups(MAIN, [p.copy() for p in run.params]), lr=1e-2, amsgrad=True,
                                 max_grad_norm=1.0, comm=comm, **prec_kw, **disk)
            other.load_state_dict(shard)
            same_state(other.full_state_dict(), run.ref.state_dict(), f"loaded into files {prec_kw}")
            run.opt.close()
            other.close()


def check_staged(comm: Any) -> None:
    """The collectives staged through host copies (GPU params on a communicator of host memory):
    buckets sent ahead, gathers in flight, a failed grads_ready; then a plain step with clipping."""
    check_overlap(comm, stage=True)
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, comm=comm))
    run.opt._sharding.bind(run.opt._engine, stage=True)
    for _ in range(2):
        run.step()
    run.same_state()
    if comm.size > 1:  # staged: the shard buffers on the host were made and used
        assert run.opt._sharding._host_grads and run.opt._sharding._host_params


def check_offload(comm: Any) -> None:
    """Host params standing in for GPU params (``npadam._placement.standin``): the tail of each rank's
    shard of the state in "host" memory behind the copier, streamed piece by piece; amsgrad's max
    appearing there; its state dict loaded back. The reference keeps its state with the params."""
    from npadam._placement import standin
    from npadam.tiers.transfer import HostCopier

    with standin(HostCopier, piece_elems=40_000):
        run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, amsgrad=True, max_grad_norm=1.0, comm=comm,
                                                     **({} if comm is None else dict(offload_fraction=0.6))))
        assert run.opt._engine.host and not run.ref._engine.host
        for _ in range(2):
            run.step()
        run.same_state()
        other = npadam.AdamW(groups(MAIN, [p.copy() for p in run.params]), lr=1e-2, amsgrad=True, max_grad_norm=1.0,
                             comm=comm, offload_fraction=0.6)
        other.load_state_dict(run.opt.state_dict())
        same_state(other.full_state_dict(), run.ref.state_dict(), "loaded into the host tier")


def check_tiny(comm: Any) -> None:
    """A model smaller than one norm block: every rank but 0 holds only padding, and joins every collective."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, max_grad_norm=0.1, comm=comm), TINY)
    for _ in range(3):
        run.step()
    run.same_state()


def check_memory(comm: Any) -> None:
    """Each rank holds 1/world of the state (buffers of 4 * 65536 elements: no padding on 1, 2, 4 ranks);
    with padding, at most one norm block of state per buffer more."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, amsgrad=True, comm=comm), MEM)
    run.step()
    mine, whole = state_nbytes(run.opt), state_nbytes(run.ref)
    if 4 % comm.size == 0:
        assert mine * comm.size == whole, (mine, whole)
    per_elem = whole // sum(int(np.prod(s)) for _, s, *_ in MEM)  # bytes per element, buffers alike here
    assert mine <= whole / comm.size + len(run.opt.layout.buffers) * 65536 * per_elem, (mine, whole)
    print(f"state bytes rank {comm.rank}/{comm.size}: {mine} (one process: {whole})", flush=True)


def expect_error(fn: Callable[[], Any], text: str, exc: type = ValueError) -> str:
    try:
        fn()
    except exc as e:
        assert text in str(e), (text, str(e))
        return str(e)
    raise AssertionError(f"no {exc.__name__} ({text!r})")


def check_disagreement(comm: Any) -> None:
    """Ranks that disagree raise the same kind of error on every rank, and nothing changes."""
    if comm.size == 1:
        return
    spec = [("a", (5,), "float32", 0), ("b", (7 + (comm.rank == comm.size - 1),), "float32", 0)]
    expect_error(lambda: npadam.AdamW(groups(spec, init_params(spec)), comm=comm), "different params")
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, comm=comm), TINY)
    before = [p.copy() for p in run.params]
    g = run.grads(comm.rank)
    expect_error(lambda: run.opt.step([None, g[1]] if comm.rank == 0 else g), "has a grad on some ranks")
    bad = [np.zeros(6, np.float32), g[1]] if comm.rank == comm.size - 1 else g  # a wrong shape on one rank
    try:
        run.opt.step(bad)
        raise AssertionError("no error")
    except ValueError as e:
        assert ("shape" in str(e)) == (comm.rank == comm.size - 1) or "another rank" in str(e), str(e)
    assert run.opt.step_count == 0 and all(bits(p) == bits(q) for p, q in zip(before, run.params))
    # a different lr on one rank (each rank would update its shard with its own): an error everywhere
    run.opt.param_groups[0]["lr"] = 2e-2 if comm.rank == comm.size - 1 else 1e-2
    expect_error(lambda: run.opt.step(g), "hyperparameters of param group 0 differ across ranks")
    run.opt.param_groups[0]["lr"] = 1e-2
    run.opt.max_grad_norm = 1.0 if comm.rank == 0 else None
    expect_error(lambda: run.opt.step(g), "max_grad_norm / skip_nonfinite differ across ranks")
    run.opt.max_grad_norm = None
    # a param's update count different on one rank (its state reset there only): an error everywhere
    run.opt._engine.steps[0] += comm.rank == comm.size - 1
    expect_error(lambda: run.opt.step(g), "update counts differ across ranks")
    run.opt._engine.steps[0] = 0
    assert run.opt.step_count == 0 and all(bits(p) == bits(q) for p, q in zip(before, run.params))
    run.step()  # still usable, and in step


def check_overlap(comm: Any, stage: bool = False) -> None:
    """Buckets (bucket_bytes) handed over by grads_ready in backward order while the others are
    computed, params gathered in flight (step(wait_params=False)) and waited for bucket by bucket:
    the same bits as one process with the same buckets; a step given other grads than grads_ready
    raises on every rank and the optimizer stays usable. ``stage``: every collective of the step
    goes through host copies, as for GPU params on MPI or gloo (here host -> host)."""
    run = Run(comm, lambda p, comm: npadam.AdamW(p, lr=1e-2, weight_decay=0.1, max_grad_norm=0.5, comm=comm,
                                                 bucket_bytes=300_000))
    opt = run.opt
    if stage:
        opt._sharding.bind(opt._engine, stage=True)
        assert opt._sharding.mem.staged
    names = [n for n, *_ in MAIN]
    assert len(opt.buckets) > len({(g, dt) for _, _, dt, g in MAIN}), opt.buckets  # w1 / b1+e1 ... split
    for k in range(3):
        world, rank = comm.size, comm.rank
        each = [run.grads(r) for r in range(world)]
        mine = dict(zip(names, each[rank]))
        for bi in reversed(range(len(opt.buckets))):  # as a backward pass produces them
            opt.grads_ready(bi, {n: mine[n] for n in opt.buckets[bi]})
        info = opt.step(each[rank], wait_params=k == 2)
        avg = [average([e[i] for e in each], world) for i in range(len(MAIN))]
        ref = run.ref.step(avg)
        same_float(info.grad_norm, ref.grad_norm, f"overlap step {k}: grad_norm")
        for bi in range(len(opt.buckets)):  # as a forward pass needs them
            opt.wait_params(bi)
        run.k += 1
        run.same_params(f"overlap step {k}")
    run.same_state()
    g = run.grads(comm.rank)
    opt.grads_ready(0, {n: g[names.index(n)] for n in opt.buckets[0]})
    other = [x.copy() if x is not None else None for x in g]
    expect_error(lambda: opt.step(other), "grads_ready")
    assert opt.step_count == 3
    # grads_ready failing its checks on the last rank only: that rank raises there and still sends the
    # bucket (zeros), so the ranks stay in step; the next step raises on every rank, nothing changes
    before = [p.copy() for p in run.params]
    last = comm.rank == comm.size - 1
    bucket = {n: (np.zeros(3, np.float32) if last and n == opt.buckets[0][0] else g[names.index(n)])
              for n in opt.buckets[0]}
    if last:
        expect_error(lambda: opt.grads_ready(0, bucket), "shape")
    else:
        opt.grads_ready(0, bucket)
    expect_error(lambda: opt.step(g), "grads_ready" if last else "another rank")
    assert opt.step_count == 3 and all(bits(p) == bits(q) for p, q in zip(before, run.params))
    run.step()  # still usable, and in step


CHECKS = [check_overlap, check_staged, check_adamw, check_adam_amsgrad, check_sgd, check_precision, check_nvme,
          check_offload, check_inf, check_tiny, check_memory, check_disagreement]


def run_all(comm: Any) -> int:
    for check in CHECKS:
        check(comm)
    return len(CHECKS)


def main() -> None:
    comm = distributed.init(sys.argv[1] if len(sys.argv) > 1 else "mpi")
    try:
        n = run_all(comm)
    except BaseException:
        sys.stdout.write(f"rank {comm.rank}/{comm.size} FAILED\n{traceback.format_exc()}")
        sys.stdout.flush()
        raise
    print(f"OK sharded rank {comm.rank}/{comm.size} {n}", flush=True)


if __name__ == "__main__":
    main()
