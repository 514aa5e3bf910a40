"""Every collective of one backend on every rank, checked exactly: ``python3 comm_check.py mpi|torch``.

Run by tests/test_distributed_comm.py under ``mpiexec -n N`` or with torchrun's
environment. Each rank computes every rank's inputs itself, so it knows the exact
expected result: sums of small integer-valued inputs (exact in every dtype and
every order), max/min of arbitrary values. Prints ``OK <backend> rank r/n <count>``;
on any failure prints the traceback and aborts all ranks.
"""

from __future__ import annotations

import os
import sys
import traceback

import ml_dtypes
import numpy as np

from npadam import distributed

DTYPES = ["float32", "float64", "int32", "int64", "uint8", "float16", "bfloat16"]
SIZES = [0, 1, 7, 1000]
OPS = ["sum", "avg", "max", "min"]


def dt(name: str) -> np.dtype:
    return np.dtype(ml_dtypes.bfloat16) if name == "bfloat16" else np.dtype(name)


def inputs(rank: int, m: int, dtype: str, op: str) -> np.ndarray:
    """Rank ``rank``'s input: small integers for sum/avg (every partial sum exact), anything for max/min."""
    if op in ("sum", "avg"):
        v = (np.arange(m) * 7 + 3 * rank) % 5 - (0 if dtype == "uint8" else 2)
        return v.astype(dt(dtype))
    rng = np.random.default_rng([rank, m, DTYPES.index(dtype)])
    if dtype in ("int32", "int64", "uint8"):
        lo, hi = (0, 256) if dtype == "uint8" else (-(2 ** 30), 2 ** 30)
        return rng.integers(lo, hi, m).astype(dt(dtype))
    return (rng.standard_normal(m) * 100).astype(dt(dtype))


def expected(size: int, m: int, dtype: str, op: str) -> np.ndarray:
    every = np.stack([inputs(q, m, dtype, op).astype(np.float64) for q in range(size)]) if m else np.zeros((size, 0))
    if op == "sum":
        r = every.sum(0)
    elif op == "avg":
        r = every.sum(0) / size  # the exact sum, divided and rounded once (float64 then the dtype: innocuous)
    else:
        r = every.max(0) if op == "max" else every.min(0)
    return r.astype(dt(dtype))


def same(got: np.ndarray, want: np.ndarray, what: str) -> None:
    assert got.dtype == want.dtype and got.shape == want.shape, (what, got.dtype, want.dtype, got.shape, want.shape)
    if not np.array_equal(got.reshape(-1).view(np.uint8), want.reshape(-1).view(np.uint8)):
        bad = np.flatnonzero(got.reshape(-1) != want.reshape(-1))[:5]
        raise AssertionError(f"{what}: elements {bad.tolist()} got {got.reshape(-1)[bad]} want {want.reshape(-1)[bad]}")


class Checks:
    def __init__(self, comm, backend: str) -> None:
        self.comm, self.backend, self.count = comm, backend, 0
        self.r, self.n = comm.rank, comm.size

    def call(self, fn, *args, async_op: bool, **kw) -> None:
        h = fn(*args, async_op=async_op, **kw)
        if async_op:
            assert isinstance(h, distributed.Handle), h
            h.wait()
            assert h.done()
            h.wait()  # idempotent
        else:
            assert h is None, h
        self.count += 1

    def reductions(self) -> None:
        c, r, n = self.comm, self.r, self.n
        for dtype in DTYPES:
            for m in SIZES:
                for op in OPS:
                    if op == "avg" and dtype not in ("float32", "float64", "float16", "bfloat16"):
                        continue
                    for k, async_op in enumerate((False, True)):
                        what = f"{dtype} m={m} {op} async={async_op}"
                        x = inputs(r, m, dtype, op).reshape((m,) if m % 2 else (-1, 1) if m else (0,))
                        self.call(c.all_reduce, x, op, async_op=async_op)
                        same(x.reshape(-1), expected(n, m, dtype, op), "all_reduce " + what)
                        # reduce_scatter: x holds n slices of m; alternately into a new array and in place
                        full = np.concatenate([inputs(r, m, dtype, op)] * n)[: n * m]
                        whole = np.stack([expected(n, m, dtype, op)] * n).reshape(-1) if m else full.copy()
                        if k == 0:
                            out = np.full(m, 7, dt(dtype))
                            keep = full.copy()
                            self.call(c.reduce_scatter, full, out, op, async_op=async_op)
                            same(full, keep, "reduce_scatter leaves x " + what)
                        else:
                            out = full[r * m:(r + 1) * m]
                            self.call(c.reduce_scatter, full, out, op, async_op=async_op)
                        same(out, whole[r * m:(r + 1) * m], "reduce_scatter " + what)

    def bit_arrays(self) -> None:
        """16-bit float bits in an integer array with an explicit dtype (how CuPy passes bfloat16)."""
        c, r, n = self.comm, self.r, self.n
        for dtype in ("bfloat16", "float16"):
            for bits in (np.uint16, np.int16):
                x = inputs(r, 9, dtype, "sum").view(bits).copy()
                c.all_reduce(x, dtype=dtype)
                same(x.view(dt(dtype)), expected(n, 9, dtype, "sum"), f"all_reduce {dtype} as {bits.__name__}")
                full = np.concatenate([inputs(r, 3, dtype, "avg")] * n).view(bits)
                out = np.empty(3, bits)
                c.reduce_scatter(full, out, "avg", dtype=dtype)
                same(out.view(dt(dtype)), expected(n, 3, dtype, "avg"),
                     f"reduce_scatter avg {dtype} as {bits.__name__}")
                self.count += 2

    def rounding_once(self) -> None:
        """MPI widens 16-bit sums to float32 and rounds once: 1 + 2**-8 + 2**-8 is 1 + 2**-7 in bfloat16,
        where rounding after each partial sum would give 1 (a tie to even)."""
        c, r, n = self.comm, self.r, self.n
        for dtype, tiny in (("bfloat16", 2.0 ** -8), ("float16", 2.0 ** -11)):
            x = np.array([1.0 if r == 0 else tiny] * 3, dt(dtype))
            c.all_reduce(x)
            want = np.full(3, np.float32(1.0) + np.float32(tiny) * (n - 1), np.float32).astype(dt(dtype))
            same(x, want, f"single rounding {dtype}")
            if n == 3:
                assert float(x[0]) == 1.0 + 2 * tiny, float(x[0])
            self.count += 1

    def movement(self) -> None:
        c, r, n = self.comm, self.r, self.n
        kinds = DTYPES + ["float8_e4m3fn", "complex64", "bool", "int16"]
        for name in kinds:
            d = np.dtype(getattr(ml_dtypes, name)) if name == "float8_e4m3fn" else dt(name)
            for m in SIZES:
                def mine(q: int) -> np.ndarray:  # rank q's bytes, any bit patterns (NaNs too; bools 0/1)
                    b = (np.arange(m * d.itemsize) * 31 + q * 17) % (2 if name == "bool" else 251)
                    return b.astype(np.uint8).view(d)
                want = np.concatenate([mine(q) for q in range(n)])
                for k, async_op in enumerate((False, True)):
                    what = f"{name} m={m} async={async_op}"
                    out = np.zeros(n * m, d)
                    if k == 0:
                        x = mine(r)
                        x.flags.writeable = False  # inputs may be read-only
                        self.call(c.all_gather, x, out, async_op=async_op)
                    else:  # in place: x is this rank's slice of out (the ZeRO parameter gather)
                        out[r * m:(r + 1) * m] = mine(r)
                        self.call(c.all_gather, out[r * m:(r + 1) * m], out, async_op=async_op)
                    same(out, want, "all_gather " + what)
                    for root in sorted({0, n - 1}):
                        x = mine(r) if r == root else np.zeros(m, d)
                        x.flags.writeable = r != root  # the root's array is only read
                        self.call(c.broadcast, x, root, async_op=async_op)
                        same(x, mine(root), f"broadcast root={root} " + what)

    def overlap(self) -> None:
        """Several collectives in flight at once, waited on in another order."""
        c, r, n = self.comm, self.r, self.n
        a = np.full(5, r + 1, np.float32)
        g = np.zeros(3 * n, np.int64)
        g[3 * r:3 * r + 3] = r
        b = np.full(4, r, np.float64)
        h1 = c.all_reduce(a, async_op=True)
        h2 = c.all_gather(g[3 * r:3 * r + 3], g, async_op=True)
        h3 = c.broadcast(b, root=n - 1, async_op=True)
        h3.wait()
        h2.wait()
        h1.wait()
        same(a, np.full(5, n * (n + 1) // 2, np.float32), "overlap all_reduce")
        same(g, np.repeat(np.arange(n), 3).astype(np.int64), "overlap all_gather")
        same(b, np.full(4, n - 1, np.float64), "overlap broadcast")
        self.count += 3

    def objects(self) -> None:
        c, r, n = self.comm, self.r, self.n
        got = c.allgather_object({"rank": r, "shape": (r, 2)})
        assert got == [{"rank": q, "shape": (q, 2)} for q in range(n)], got
        assert c.broadcast_object(["meta", r] if r == n - 1 else None, root=n - 1) == ["meta", n - 1]
        c.barrier()
        self.count += 3

    def errors(self) -> None:
        """The same bad argument on every rank: every rank raises, nothing is sent, the comm still works."""
        c, r, n = self.comm, self.r, self.n
        f32 = np.zeros(4, np.float32)
        ro = np.zeros(4, np.float32)
        ro.flags.writeable = False
        buf = np.zeros(4 * n, np.float32)
        cases = [
            (lambda: c.all_reduce(f32, op="prod"), ValueError, "'prod'"),
            (lambda: c.all_reduce(f32, op=None), ValueError, "None"),
            (lambda: c.all_reduce(np.zeros(4, np.complex64)), TypeError, "complex64"),
            (lambda: c.all_reduce(np.zeros(4, np.int32), op="avg"), TypeError, "int32"),
            (lambda: c.all_reduce(np.zeros(8, np.float32)[::2]), ValueError, "contiguous"),
            (lambda: c.all_reduce(ro), ValueError, "read-only"),
            (lambda: c.all_reduce(np.zeros(4, np.uint16)), TypeError, "uint16"),
            (lambda: c.all_reduce(f32, dtype="bfloat16"), TypeError, "bfloat16"),
            (lambda: c.all_reduce(np.zeros(4, np.uint16), dtype=np.float16), TypeError, "float16"),
            (lambda: c.all_reduce([1.0, 2.0]), TypeError, "list"),
            (lambda: c.all_reduce(np.zeros(2, object)), TypeError, "object"),
            (lambda: c.all_reduce(f32, async_op=1), TypeError, "async_op"),
            (lambda: c.reduce_scatter(np.zeros(3 * n + 1, np.float32), np.zeros(3, np.float32)), ValueError,
             str(3 * n + 1)),
            (lambda: c.reduce_scatter(np.zeros(3 * n, np.float32), np.zeros(3, np.float64)), TypeError, "float64"),
            (lambda: c.reduce_scatter(np.zeros(3 * n, np.float32), ro[:3]), ValueError, "read-only"),
            (lambda: c.reduce_scatter(np.zeros(3 * n, np.int64), np.zeros(3, np.int64), "avg"), TypeError, "int64"),
            (lambda: c.all_gather(np.zeros(3, np.float32), np.zeros(3 * n + 1, np.float32)), ValueError,
             str(3 * n + 1)),
            (lambda: c.all_gather(np.zeros(3, np.float32), np.zeros(3 * n, np.int32)), TypeError, "int32"),
            (lambda: c.all_gather(np.zeros(3, "U2"), np.zeros(3 * n, "U2")), TypeError, "<U2"),
            (lambda: c.broadcast(f32, root=n), ValueError, str(n)),
            (lambda: c.broadcast(f32, root=-1), ValueError, "-1"),
            (lambda: c.broadcast(f32, root="0"), TypeError, "'0'"),
            (lambda: c.broadcast_object(1, root=n), ValueError, str(n)),
        ]
        if n >= 2:  # overlapping, but not the in-place slice of any rank
            cases += [(lambda: c.reduce_scatter(buf, buf[1:5]), ValueError, "overlaps"),
                      (lambda: c.all_gather(buf[1:5], buf), ValueError, "overlaps")]
        for fn, exc, text in cases:
            try:
                fn()
            except exc as e:
                assert text in str(e), (text, str(e))
            else:
                raise AssertionError(f"no {exc.__name__} for the case naming {text}")
        x = np.full(3, r, np.int64)
        c.all_reduce(x)
        same(x, np.full(3, n * (n - 1) // 2, np.int64), "all_reduce after the errors")
        self.count += len(cases)

    def nccl_unique_id(self) -> None:
        """The NCCL unique id made on rank 0 reaches every rank (over MPI, or over a torch FileStore)."""
        from npadam.distributed import _nccl

        make = lambda: os.urandom(128)  # noqa: E731  (cupy.cuda.nccl.get_unique_id's shape, no GPU needed)
        if self.backend == "mpi":
            uid = _nccl.unique_id_over_mpi(self.comm.comm, make)
        else:
            import torch.distributed as dist

            store = dist.FileStore(os.environ["NPADAM_TEST_STORE"], self.n)
            uid = _nccl.unique_id_over_store(store, self.r, make, "npadam/test/uid")
        ids = self.comm.allgather_object(uid)
        assert len(uid) == 128 and all(u == uid for u in ids), ids
        self.count += 1

    def torch_tensors(self) -> None:
        """torch tensors directly, bfloat16 included, and the in-place layouts on them."""
        import torch

        c, r, n = self.comm, self.r, self.n
        t = torch.tensor(inputs(r, 11, "float32", "sum")).to(torch.bfloat16)
        c.all_reduce(t, "avg")
        want = expected(n, 11, "bfloat16", "avg")
        same(t.view(torch.int16).numpy().view(ml_dtypes.bfloat16), want, "torch bf16 avg")
        full = torch.tensor(np.concatenate([inputs(r, 4, "int64", "max")] * n))
        c.reduce_scatter(full, full[4 * r:4 * r + 4], "max")
        same(full[4 * r:4 * r + 4].numpy(), expected(n, 4, "int64", "max"), "torch reduce_scatter in place")
        g = torch.zeros(2 * n, dtype=torch.float16, requires_grad=False)
        g[2 * r:2 * r + 2] = r
        c.all_gather(g[2 * r:2 * r + 2], g)
        same(g.numpy(), np.repeat(np.arange(n), 2).astype(np.float16), "torch all_gather in place")
        one = distributed.SingleComm()  # tested here, where torch is imported anyway
        one.all_gather(torch.arange(3.0, dtype=torch.float16), g[:3])
        assert g[:3].tolist() == [0.0, 1.0, 2.0], g
        try:
            one.all_gather(np.zeros(2, np.float32), torch.zeros(2))
        except TypeError as e:
            assert "same kind" in str(e), e
        else:
            raise AssertionError("SingleComm mixed a NumPy x with a torch out")
        self.count += 5


def main(backend: str) -> None:
    if backend == "torch":
        try:
            distributed.init("torch", group=object())
        except ValueError as e:
            assert "not initialized" in str(e), e
        else:
            raise AssertionError("a group before init_process_group was accepted")
        comm = distributed.init("torch", torch_backend="gloo")
        try:
            distributed.init("torch", torch_backend="gloo")
        except ValueError as e:
            assert "already initialized" in str(e), e
        else:
            raise AssertionError("init arguments after init_process_group were accepted")
    else:
        comm = distributed.init(backend)
    assert comm.backend == backend and 0 <= comm.rank < comm.size, comm
    checks = Checks(comm, backend)
    checks.errors()
    checks.reductions()
    checks.bit_arrays()
    if backend == "mpi" and comm.size >= 2:
        checks.rounding_once()
    checks.movement()
    checks.overlap()
    checks.objects()
    checks.nccl_unique_id()
    if backend == "torch":
        checks.torch_tensors()
    comm.barrier()
    print(f"OK {backend} rank {comm.rank}/{comm.size} {checks.count}", flush=True)
    comm.close()  # torch: destroys the group npadam created (a live gloo group aborted rank 0's exit once)


if __name__ == "__main__":
    try:
        main(sys.argv[1])
    except BaseException:
        print(f"rank failed ({' '.join(sys.argv[1:])}, pid {os.getpid()}):\n{traceback.format_exc()}",
              file=sys.stderr, flush=True)
        if sys.argv[1] == "mpi":
            from mpi4py import MPI

            MPI.COMM_WORLD.Abort(1)
        os._exit(1)
