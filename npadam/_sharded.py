"""Sharding the optimizer state across ranks (ZeRO-1/2, ``comm=``): the padding rule, each rank's
shard, the agreement checks and the collectives of a step.

Every rank builds the same layout, padded so that each flat buffer's index space splits into
``world`` equal shards whose boundaries are multiples of the gradient-norm block
(``NORM_BLOCK`` = 65,536 elements): a buffer of ``n`` elements takes
``align(n, world * NORM_BLOCK)`` elements (none added on one rank). Rank r owns the elements
``[r * s, (r + 1) * s)``, ``s = size / world``, of every buffer and keeps the optimizer state of
those elements only (``Engine.shards``; the tiers and kernels run on that range with ``base``
offsets, as they run on the pieces of an offloaded buffer).

A step (``Engine.step`` with a ``Sharding``), after ``agree_step`` (one all-reduce: any rank's bad
argument, or ranks that disagree on which params have grads or on grad dtypes, raise on every rank
before anything is written):

1. ``reduce_grads``: each buffer's grads are packed in flat order into a send buffer (zeros in the
   gaps, for params without grads and in the padding) and reduce-scattered in place with op
   ``"avg"`` (the sum, divided by ``world`` once in the grad dtype): the shard then holds what one
   process would be given as the averaged grads;
2. ``combine_sums``: each rank's float64 sums of its norm blocks are all-gathered and put in the
   single-process order (buffer by buffer, block by block; padding blocks are +0.0, which leaves a
   running float64 sum unchanged): the norm and the non-finite flag are the same bits on every rank
   and for every world size;
3. the kernels (CPU, reference or GPU) update the rank's shard of the params (in the caller's
   arrays) and of the state;
4. ``gather_params``: each buffer's updated shard is packed into a param buffer, all-gathered in
   place, and every stepped tensor is copied back whole: every rank holds the full new params.

Buffers whose params and grads live in flat arrays of the layout (``flat``: npadam.torch's
``flat_storage``) skip the copies: the reduce-scatter reads the flat grads into a shard-size
buffer, the all-gather runs in place in the flat params. Buckets (``bucket_bytes``: each flat
buffer is one) may be sent ahead of the step (``grads_ready``: ``early``), and the param
all-gathers may be left in flight after it (``defer_gather``, completed by ``wait_params``).

Params on a GPU: the state, the kernels and the step's buffers are on that GPU (``_Memory``); a
communicator of GPU memory (NCCL) takes the buffers as they are, one of host memory (MPI, gloo)
through host copies (``staged``).
"""

from __future__ import annotations

import contextlib
import zlib
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from . import kernels as K
from .distributed import Handle
from .layout import KINDS, FlatLayout, storage_dtype
from .reference import adamw as ref
from .reference import precision as prec

NORM_BLOCK = ref.NORM_BLOCK


def _fingerprint(value: Any) -> int:
    """A 32-bit fingerprint (as int32) of plain values, equal on every rank for equal values: CRC-32
    of their ``repr`` (floats print exactly: the shortest text that reads back as the same float)."""
    return int(np.uint32(zlib.crc32(repr(value).encode())).view(np.int32))


def _shown(h: Mapping[str, Any]) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in h.items() if k != "params")


def pad_multiple(world: int) -> int:
    """What each flat buffer's size is rounded up to on ``world`` ranks: ``world * NORM_BLOCK``, so
    that shards are equal and start on norm blocks (1 on one rank: no padding)."""
    return 1 if world == 1 else world * NORM_BLOCK


def shard_range(size: int, rank: int, world: int) -> tuple[int, int]:
    """Rank ``rank``'s elements ``[lo, hi)`` of a buffer of ``size`` (a multiple of ``world``) elements."""
    n = size // world
    return rank * n, (rank + 1) * n


def layout_digest(layout: FlatLayout, algorithm: str) -> tuple:
    """What every rank must agree on: the algorithm and each param's shape, dtype and group, in order."""
    return algorithm, tuple((tuple(s.shape), s.dtype, s.group) for s in layout.slots)


def check_comm(comm: Any) -> Any:
    """``comm`` if it is a ``npadam.distributed`` communicator; ValueError naming it otherwise."""
    from .distributed import Communicator

    if not isinstance(comm, Communicator):
        raise ValueError(f"comm must be a npadam.distributed communicator (npadam.distributed.init(...)), got "
                         f"{type(comm).__name__}")
    return comm


def _describe_digest(d: tuple) -> list[str]:
    algorithm, slots = d
    return [algorithm] + [f"{shape} {dtype} group {group}" for shape, dtype, group in slots]


class _Memory:
    """Where a sharded step's buffers live and how the communicator reaches them.

    Host params: NumPy buffers. GPU params (``gpu``): CuPy buffers on the params' GPU, filled and
    emptied on CuPy's current stream (the front-end's: torch's current stream in npadam.torch), so
    they are ordered with the kernels without a host synchronization. The communicator takes the
    buffers as they are when it moves that memory (``Communicator.memories``: NCCL, torch with
    nccl); otherwise (``staged``: MPI, gloo with GPU params) each collective goes through host
    copies: device -> host (which waits for the device work before it), the collective on host
    buffers, host -> device when it completes. A host engine can be staged too (host -> host
    copies: ``Sharding.bind(engine, stage=True)``, how the tests run this path without a GPU).

    Buffers hold storage bits: bfloat16 is ml_dtypes' type on the host and ``uint16`` on a GPU
    (CuPy has no bfloat16); the collectives are told the float type with ``dtype=``."""

    def __init__(self, gpu: bool, device_id: int | None, memories: frozenset[str], stage: bool) -> None:
        self.gpu, self.device_id = gpu, device_id
        self.staged = stage or ("device" if gpu else "host") not in memories
        #: the communicator takes NumPy arrays (the small host-side collectives run on them)
        self.host_ok = "host" in memories
        if gpu:
            import cupy

            self.xp = cupy
        else:
            self.xp = np

    def dtype(self, name: str) -> np.dtype:
        """The storage dtype of a buffer of ``name`` ("float32", "bfloat16", "float16") here."""
        if self.gpu and name == "bfloat16":
            return np.dtype(np.uint16)
        return storage_dtype(name)

    def zeros(self, n: int, dtype: np.dtype) -> Any:
        with self.device():
            return self.xp.zeros(n, dtype)

    def device(self) -> Any:
        return self.xp.cuda.Device(self.device_id) if self.gpu else _NULL

    def view(self, address: int, n: int, name: str) -> Any:
        """``n`` elements of storage ``name`` at ``address`` (host, or on this GPU), as an array."""
        if not self.gpu:
            return K.host_view(address, n, name)
        cp, dt = self.xp, self.dtype(name)
        if n == 0:
            return cp.zeros(0, dt)
        mem = cp.cuda.UnownedMemory(int(address), n * dt.itemsize, None, self.device_id)
        return cp.ndarray((n,), dt, cp.cuda.MemoryPointer(mem, 0))

    def addr(self, a: Any) -> int:
        return int(a.data.ptr) if self.gpu else int(a.ctypes.data)

    def to_host(self, src: Any, dst: np.ndarray) -> None:
        """Copy ``src`` (here) into the host array ``dst``; returns when ``dst`` holds it."""
        if self.gpu:
            with self.device():
                src.get(out=dst)
        else:
            dst[...] = src

    def from_host(self, src: np.ndarray, dst: Any) -> None:
        """Copy the host array ``src`` into ``dst`` (here; on the current stream)."""
        if self.gpu:
            with self.device():
                dst.set(src)
        else:
            dst[...] = src


_NULL = contextlib.nullcontext()


class Sharding:
    """One rank's side of a sharded optimizer: the communicator and the step's reusable buffers."""

    def __init__(self, comm: Any) -> None:
        self.comm = check_comm(comm)
        self.rank, self.world = comm.rank, comm.size
        #: where the step's buffers live (``bind``: host until an engine is bound)
        self.mem = _Memory(False, None, comm.memories, False)
        self._send: dict[int, Any] = {}    # buffer -> grad send buffer (full size, the grad dtype)
        self._recv: dict[int, Any] = {}    # buffer -> averaged grads of the shard (flat grads only)
        #: staged collectives (``_Memory.staged``): buffer -> host copies of the grads and of the params
        self._host_grads: dict[int, np.ndarray] = {}
        self._host_params: dict[int, np.ndarray] = {}
        #: buffers whose params and grads live in flat arrays of the layout (npadam.torch's
        #: ``flat_storage``): buffer -> (params, grads or None) as arrays of the buffer's padded size
        #: in the engine's memory (NumPy, or CuPy views of CUDA tensors); the collectives then run on
        #: them directly (no packing, no gather buffer)
        self.flat: dict[int, tuple[Any, Any]] = {}
        self._gather: dict[int, Any] = {}  # buffer -> param gather buffer (full size, the param dtype)
        #: buffers whose grads ``start_reduce`` (``grads_ready``) sent ahead of the step:
        #: buffer -> (handle, the grad dtype, the mask of its slots that had grads, the shard's base)
        self.early: dict[int, tuple[Any, str, np.ndarray, int]] = {}
        #: buffer -> the dtype of the grads last sent for it (what a failed ``grads_ready`` sends zeros in)
        self.last_gdtype: dict[int, str] = {}
        #: buckets whose ``grads_ready`` failed this rank's checks (sent as zeros): bucket -> the error
        self.failed: dict[int, BaseException] = {}
        #: param all-gathers left in flight by a step with ``defer_gather``: buffer -> (handle, batch, buffer)
        self.pending: dict[int, tuple[Any, K.Batch, Any]] = {}
        #: the next step leaves its param all-gathers in flight (``step(..., wait_params=False)``)
        self.defer_gather = False

    @staticmethod
    def check_memory(comm: Any, gpu: bool, device_id: int | None = None) -> None:
        """ValueError unless ``comm`` can serve params on GPU ``device_id`` (``gpu``; communicators
        of host memory only are staged through it, NCCL must run on that GPU) or on the host (a
        communicator of host memory: not NCCL)."""
        if not gpu and "host" not in comm.memories:
            raise ValueError(f"comm={comm!r} moves GPU memory only; params in host memory need a communicator "
                             "of host memory: npadam.distributed.init('mpi'), or init('torch') with gloo")
        on = getattr(comm, "device", None)
        if gpu and comm.memories == {"device"} and device_id is not None and on is not None and on != device_id:
            raise ValueError(f"the params are on GPU {device_id}, comm={comm!r} runs on GPU {on}; build the "
                             f"communicator on the params' GPU (npadam.distributed.init('nccl', device={device_id}))")

    def bind(self, engine: Any, stage: bool = False) -> None:
        """Put the step's buffers where ``engine``'s state is (host, or its GPU); ``stage``: run the
        collectives through host copies even where the communicator could take the buffers
        (``_Memory``). Before the first step (the buffers are made then)."""
        self.check_memory(self.comm, engine.device == "gpu", engine.device_id)
        self.mem = _Memory(engine.device == "gpu", engine.device_id, self.comm.memories, stage)
        self._send, self._recv, self._gather, self._host_grads, self._host_params = {}, {}, {}, {}, {}

    @property
    def pad_to(self) -> int:
        return pad_multiple(self.world)

    def shard(self, size: int) -> tuple[int, int]:
        return shard_range(size, self.rank, self.world)

    # ------------------------------------------------------------------ host-side collectives
    def host_all_reduce(self, x: np.ndarray, op: str) -> None:
        """All-reduce the host array ``x`` in place: directly, or through this GPU for a
        communicator of device memory only (NCCL)."""
        if self.mem.host_ok:
            self.comm.all_reduce(x, op=op)
            return
        with self.mem.device():
            dev = self.mem.xp.asarray(x)
            self.comm.all_reduce(dev, op=op)
            self._settle()
            self.mem.to_host(dev, x)

    def host_all_gather(self, local: np.ndarray, out: np.ndarray) -> None:
        """All-gather the host array ``local`` into the host array ``out`` (as ``host_all_reduce``)."""
        if self.mem.host_ok:
            self.comm.all_gather(local, out)
            return
        raw = np.dtype(f"u{local.dtype.itemsize}") if local.dtype.kind not in "biuf" else local.dtype  # ml_dtypes
        with self.mem.device():
            dev_out = self.mem.xp.empty(out.size, raw)
            self.comm.all_gather(self.mem.xp.asarray(local.view(raw)), dev_out)
            self._settle()
            self.mem.to_host(dev_out, out.view(raw))

    def _settle(self) -> None:
        """After a sync collective on device temporaries: wait for the whole device. torch's nccl
        orders its result on torch's current stream, which need not be CuPy's (``torch.cuda.stream``,
        per-thread default streams); the copies that follow run on CuPy's. Small and rare (the
        agreement, the norm's block sums, state gathers), so a device-wide wait is cheap enough."""
        self.mem.device().synchronize()

    # ------------------------------------------------------------------ agreement (collectives)
    def agree(self, what: str, error: BaseException | None, payload: Any = None) -> list[Any]:
        """Every rank's ``payload`` (one ``allgather_object``), after checking that no rank failed: a
        rank's own ``error`` is raised there, the other ranks raise a ValueError naming that rank.
        Every rank calls it, so a failure on one rank never leaves the others waiting."""
        got = self.comm.allgather_object((None if error is None else f"{type(error).__name__}: {error}", payload))
        if error is not None:
            raise error
        bad = [(r, e) for r, (e, _) in enumerate(got) if e is not None]
        if bad:
            r, e = bad[0]
            raise ValueError(f"{what}: rank {r} of {self.world} failed ({e}); nothing was changed on any rank")
        return [p for _, p in got]

    def agree_layout(self, digest: tuple | None, error: BaseException | None) -> None:
        """The same params on every rank (shapes, dtypes, order, groups): the same ValueError on every
        rank otherwise."""
        got = self.agree("comm: building the sharded optimizer", error, digest)
        for r, d in enumerate(got):
            if d != got[0]:
                a, b = _describe_digest(got[0]), _describe_digest(d)
                diff = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
                where = "algorithm" if diff == 0 else f"param {diff - 1}"
                raise ValueError(f"comm: ranks 0 and {r} were given different params ({len(a) - 1} and {len(b) - 1} "
                                 f"params; first difference at {where}: {a[diff] if diff < len(a) else 'none'!r} "
                                 f"vs {b[diff] if diff < len(b) else 'none'!r}); every rank must build the "
                                 "optimizer with the same shapes, dtypes, order and groups")

    def agree_step(self, layout: FlatLayout, active: np.ndarray | None, gdtypes: Sequence[str] | None,
                   error: BaseException | None, ngroups: int, hyper: Sequence[Mapping[str, Any]] = (),
                   options: Any = None, steps: np.ndarray | None = None) -> None:
        """One all-reduce (max of the values and of their negatives) of [this rank failed, has-grad mask,
        grad kind per buffer, a fingerprint of each group's hyperparameters for this step and of the
        step ``options``]: raises the same error on every rank when a rank failed its checks, when a
        param has a grad on some ranks and None on others, when grad dtypes differ, or when a group's
        hyperparameters (lr, betas, weight decay, ... as its schedules give them at this step) or the
        clipping differ (each rank would update its shard with its own values), or when the params'
        update counts ``steps`` differ (a state reset or loaded on some ranks only: each rank's shard
        would get another bias correction). ``ngroups``: the number of param groups (the same on every
        rank, also when this rank failed before computing ``hyper``)."""
        n, nb, ng = len(layout.slots), len(layout.buffers), int(ngroups)
        v = np.zeros(1 + n + nb + ng + 2, np.int32)
        v[0] = error is not None
        if error is None:
            v[1:1 + n] = active
            for bi, b in enumerate(layout.buffers):
                v[1 + n + bi] = KINDS[gdtypes[bi]] if active[b.tensors].any() else -1
            for gi, h in enumerate(hyper):
                v[1 + n + nb + gi] = _fingerprint(sorted((k, x) for k, x in h.items() if k != "params"))
            v[-2] = _fingerprint(options)
            v[-1] = np.uint32(zlib.crc32(np.ascontiguousarray(steps, np.int64).tobytes())).view(np.int32) \
                if steps is not None else 0
        both = np.concatenate([v, -v])
        self.host_all_reduce(both, "max")
        hi, lo = both[: v.size], -both[v.size:]
        if error is not None:
            raise error
        if hi[0]:
            raise ValueError("step: another rank's grads or hyperparameters failed the checks (see its error); "
                             "nothing was changed on any rank")
        bad = np.flatnonzero(hi[1:1 + n] != lo[1:1 + n])
        if bad.size:
            raise ValueError(f"step: param {layout.slots[bad[0]].name!r} has a grad on some ranks and None on others; "
                             "every rank must pass grads for the same params (nothing was changed on any rank)")
        bad = np.flatnonzero(hi[1 + n:1 + n + nb] != lo[1 + n:1 + n + nb])
        if bad.size:
            b = layout.buffers[bad[0]]
            raise ValueError(f"step: the grads of param group {b.group} ({b.dtype} params) have different dtypes on "
                             "different ranks; use the same grad dtype everywhere (nothing was changed on any rank)")
        bad = np.flatnonzero(hi[1 + n + nb:-2] != lo[1 + n + nb:-2])
        if bad.size:
            raise ValueError(f"step: the hyperparameters of param group {bad[0]} differ across ranks at this step "
                             f"(this rank: {_shown(hyper[bad[0]])}); every rank must use the same lr, betas, eps, "
                             "weight decay and flags, and the same schedules (nothing was changed on any rank)")
        if hi[-2] != lo[-2]:
            raise ValueError(f"step: max_grad_norm / skip_nonfinite differ across ranks, or the buckets handed over "
                             f"by grads_ready (this rank: {options!r}); every rank must use the same (nothing was "
                             "changed on any rank)")
        if hi[-1] != lo[-1]:
            raise ValueError("step: the params' update counts differ across ranks (optimizer state reset, or a state "
                             "dict loaded, on some ranks only?); every rank must hold the same steps (nothing was "
                             "changed on any rank)")

    # ------------------------------------------------------------------ the step's collectives
    def _flat_grads(self, engine: Any, bi: int, active: np.ndarray, gptrs: np.ndarray, dt: np.dtype) -> Any:
        """Buffer ``bi``'s grads as the flat array that holds them in the layout (``flat``), when every
        slot has its grad there, in the buffer's dtype; else None."""
        flat = self.flat.get(bi)
        if flat is None or flat[1] is None or flat[1].dtype != dt:
            return None
        slots = engine.buffer_slots[bi]
        if not active[slots].all() or not np.array_equal(gptrs[slots], self.mem.addr(flat[1]) +
                                                         engine.offsets[bi] * dt.itemsize):
            return None
        return flat[1]

    def _buffer(self, store: dict[int, Any], bi: int, n: int, dt: np.dtype, host: bool = False) -> Any:
        """The reusable buffer ``store[bi]`` of ``n`` elements of ``dt`` (made, or made again when the
        dtype changed), in the engine's memory or on the host (``host``)."""
        a = store.get(bi)
        if a is None or a.dtype != dt or a.size != n:
            a = store[bi] = np.zeros(n, dt) if host else self.mem.zeros(n, dt)
        return a

    def start_reduce(self, engine: Any, bi: int, active: np.ndarray, gptrs: np.ndarray, gdtype: str) -> tuple[Any, int]:
        """Start buffer ``bi``'s reduce-scatter (avg) of its grads (slots marked ``active``, at
        ``gptrs``): ``(handle, base)``, the averaged grad of buffer element j (in this rank's shard)
        then at address ``base + j * itemsize``. Grads in a flat array of the layout (``flat``) are
        reduced from it into a shard-size buffer; others are packed into the send buffer first, in
        flat order with zeros elsewhere, and reduced in place. Staged (``_Memory``): the grads are
        copied to a host buffer, reduced there, and the shard copied back when the handle completes."""
        mem = self.mem
        b = engine.layout.buffers[bi]
        slots = engine.buffer_slots[bi]
        dt = mem.dtype(gdtype)
        lo, hi = engine.shards[bi]
        src = self._flat_grads(engine, bi, active, gptrs, dt)
        if src is not None:
            out = self._buffer(self._recv, bi, hi - lo, dt)
        else:
            src = self._buffer(self._send, bi, b.size, dt)
            with mem.device():
                src[...] = 0
                for t in slots[active[slots]]:
                    s = engine.layout.slots[t]
                    src[s.offset: s.offset + s.numel] = mem.view(gptrs[t], s.numel, gdtype)
            out = src[lo:hi]
        base = mem.addr(out) - lo * dt.itemsize
        if not mem.staged:
            return self.comm.reduce_scatter(src, out, op="avg", async_op=True, dtype=gdtype), base
        host = self._buffer(self._host_grads, bi, b.size, dt, host=True)
        mem.to_host(src, host)
        h = self.comm.reduce_scatter(host, host[lo:hi], op="avg", async_op=True, dtype=gdtype)
        return Handle(h.wait, h.done, lambda: mem.from_host(host[lo:hi], out), (h,)), base

    def grads_ready(self, engine: Any, bi: int, active: np.ndarray, gptrs: np.ndarray, gdtype: str) -> None:
        """Send buffer ``bi``'s grads ahead of the step (the front-ends' ``grads_ready``); the step
        waits for it instead of sending them again. One rank: nothing to send."""
        h, base = self.start_reduce(engine, bi, active, gptrs, gdtype) if self.world > 1 else (None, 0)
        slots = active[engine.buffer_slots[bi]]
        self.early[bi] = (h, gdtype, slots.copy(), base)
        if slots.any():
            self.last_gdtype[bi] = gdtype

    def grads_failed(self, engine: Any, bi: int, error: BaseException) -> None:
        """``grads_ready(bi)`` failed its checks on this rank: the other ranks start that bucket's
        reduce-scatter, so this rank starts it too (zeros), keeping the ranks' collectives in step;
        the next step then raises on every rank (``failed``)."""
        self.failed.setdefault(bi, error)
        if bi in self.early:
            return
        # the other ranks send their grads' dtype, which this rank cannot see: the dtype this buffer's
        # grads had before (as they almost always have again), else the params' (torch's grads always
        # have it); NCCL and gloo need the same byte count on every rank, MPI widens 16-bit floats anyway
        none = np.zeros(len(engine.layout.slots), bool)
        self.grads_ready(engine, bi, none, np.zeros(none.size, np.int64),
                         self.last_gdtype.get(bi, engine.layout.buffers[bi].dtype))

    def check_step(self, layout: FlatLayout, ngroups: int, error: BaseException | None,
                   active: np.ndarray | None = None, gdtypes: Sequence[str] | None = None,
                   hyper: Sequence[Mapping[str, Any]] = (), options: tuple = (), steps: np.ndarray | None = None,
                   wait_params: bool = True) -> None:
        """A front-end's step, before the engine's: ``agree_step`` with a ``grads_ready`` failure of
        this rank as its error and the buckets sent ahead among the ``options`` compared. On any
        failure those buckets are completed and forgotten (every rank started them) and the error is
        raised on every rank; else the step's param gathers are left in flight unless ``wait_params``."""
        if error is None and self.failed:
            bi, e = next(iter(self.failed.items()))
            error = ValueError(f"grads_ready({bi}) failed on this rank before this step ({type(e).__name__}: {e}); "
                               "the step is refused on every rank")
        try:
            self.agree_step(layout, active, gdtypes, error, ngroups, hyper,
                            (*options, sorted(self.early), wait_params), steps)
        except BaseException:
            self.drop_early()
            raise
        self.defer_gather = not wait_params

    def drop_early(self) -> None:
        """Complete and forget the reduce-scatters ``grads_ready`` started (a step that failed its
        checks on some rank: every rank started them, every rank waits for them)."""
        early, self.early, self.failed = self.early, {}, {}
        for h, *_ in early.values():
            if h is not None:
                h.wait()

    def reduce_grads(self, engine: Any, active: np.ndarray, gptrs: np.ndarray, gdtypes: Sequence[str]) -> np.ndarray:
        """Pack, reduce-scatter (avg) and return grad pointers into the send buffers: slot t's grad at
        its flat offset, so that the engine's batches restricted to this rank's shard read the
        averaged grads. Buffers sent ahead by ``grads_ready`` are waited for, not sent again.
        Inactive slots keep their (unused) pointers. One rank: the grads as they are (their average
        over one rank; packing and the pass over them cost 2.7x a plain step)."""
        early, self.early = self.early, {}
        self._note_gdtypes(engine, active, gdtypes)
        if self.world == 1:
            return gptrs
        out = gptrs.copy()
        handles = []
        for bi in range(len(engine.layout.buffers)):
            slots = engine.buffer_slots[bi]
            mask = active[slots]
            if bi in early:
                h, gdtype, sent, base = early[bi]
                if gdtype != gdtypes[bi] or not np.array_equal(sent, mask):  # the front-ends check this first
                    raise RuntimeError(f"internal: buffer {bi} was sent by grads_ready with other grads than the step's")
            elif mask.any():
                h, base = self.start_reduce(engine, bi, active, gptrs, gdtypes[bi])
            else:
                continue
            handles.append(h)
            out[slots[mask]] = base + engine.offsets[bi][mask] * storage_dtype(gdtypes[bi]).itemsize
        for h in handles:
            h.wait()
        return out

    def _note_gdtypes(self, engine: Any, active: np.ndarray, gdtypes: Sequence[str]) -> None:
        """Remember the grad dtype of each buffer with grads, for ``grads_failed``."""
        for bi, slots in enumerate(engine.buffer_slots):
            if active[slots].any():
                self.last_gdtype[bi] = gdtypes[bi]

    def combine_sums(self, sums: np.ndarray, lens: Sequence[int]) -> np.ndarray:
        """All ranks' block sums (``sums``: this rank's on the host, the stepped buffers' one after the
        other, ``lens`` blocks each: the same on every rank) in the single-process order: buffer by
        buffer, rank by rank within a buffer."""
        local = np.ascontiguousarray(sums, np.float64)
        full = np.empty(local.size * self.world, np.float64)
        self.host_all_gather(local, full)
        full = full.reshape(self.world, local.size)
        parts, at = [], 0
        for n in lens:
            parts.append(full[:, at: at + n].reshape(-1))
            at += n
        return np.concatenate(parts) if parts else np.zeros(0)

    def _all_gather(self, bi: int, full: Any, lo: int, hi: int) -> Any:
        """Start the in-place all-gather of ``full[lo:hi]`` (this rank's shard) into ``full``, a
        buffer of the engine's memory: directly, or staged through a host copy (``_Memory``)."""
        mem = self.mem
        if not mem.staged:
            return self.comm.all_gather(full[lo:hi], full, async_op=True)
        host = self._buffer(self._host_params, bi, full.size, full.dtype, host=True)
        mem.to_host(full[lo:hi], host[lo:hi])
        h = self.comm.all_gather(host[lo:hi], host, async_op=True)
        return Handle(h.wait, h.done, lambda: mem.from_host(host, full), (h,))

    def gather_params(self, engine: Any, wholes: Sequence[tuple[int, K.Batch]]) -> None:
        """All-gather the updated shards: every stepped tensor of ``wholes`` (``(buffer, batch)``, the
        batch's param pointers in the caller's arrays) ends with the full new values on every rank.
        One rank: nothing to do (the kernel updated the caller's arrays in place)."""
        if self.world == 1:
            return
        lay, mem = engine.layout, self.mem
        pending = []
        defer, self.defer_gather = self.defer_gather, False
        for bi, whole in wholes:
            b = lay.buffers[bi]
            dt = mem.dtype(b.dtype)
            lo, hi = engine.shards[bi]
            pflat = self.flat.get(bi, (None,))[0]
            if pflat is not None and np.array_equal(whole.params, mem.addr(pflat) + whole.offsets * dt.itemsize):
                # the params are the flat array: the kernel updated its shard there; gather in place
                pending.append((bi, whole, None, self._all_gather(bi, pflat, lo, hi)))
                continue
            buf = self._buffer(self._gather, bi, b.size, dt)
            part = K.sub_batch(whole, b.dtype, lo, hi)
            with mem.device():
                for p, off, n in zip(part.params, part.offsets, part.sizes):
                    buf[lo + off: lo + off + n] = mem.view(p, n, b.dtype)
            pending.append((bi, whole, buf, self._all_gather(bi, buf, lo, hi)))
        if defer:
            self.pending = {bi: (h, whole, buf) for bi, whole, buf, h in pending}
            return
        for bi, whole, buf, h in pending:
            self._unpack(lay, bi, h, whole, buf)

    def _unpack(self, lay: FlatLayout, bi: int, h: Any, whole: K.Batch, buf: Any) -> None:
        h.wait()
        if buf is None:  # gathered in place into the flat params
            return
        dtype = lay.buffers[bi].dtype
        with self.mem.device():
            for p, off, n in zip(whole.params, whole.offsets, whole.sizes):
                self.mem.view(p, n, dtype)[...] = buf[off: off + n]

    def wait_params(self, engine: Any, bi: int | None = None) -> bool:
        """Complete the param all-gather of buffer ``bi`` left in flight by the last step (all of them
        when None): its params then hold the new values. True if anything was waited for."""
        if not self.pending:
            return False
        todo = list(self.pending) if bi is None else [bi] if bi in self.pending else []
        for b in todo:
            h, whole, buf = self.pending.pop(b)
            self._unpack(engine.layout, b, h, whole, buf)
        return bool(todo)

    def gather_values(self, engine: Any, pieces: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Every param's whole flat float32 values on every rank, from ``pieces[i]``: the elements of
        param i this rank owns (``describe``'s ranges), as ``npadam.checkpoint.load`` reads them. A
        collective: one in-place all-gather per flat buffer (float32, the buffer's padded size)."""
        lay = engine.layout
        fulls = []
        for bi, buf in enumerate(lay.buffers):
            full = np.zeros(buf.size, np.float32)
            for i in engine.buffer_slots[bi]:
                a, b = engine.owned_range(int(i), "master")  # in the buffer's index
                full[a:b] = np.asarray(pieces[i], np.float32).reshape(-1)
            lo, hi = engine.shards[bi]
            self.host_all_gather(full[lo:hi].copy(), full)
            fulls.append(full)
        return [fulls[s.buffer][s.offset: s.offset + s.numel].copy() for s in lay.slots]

    # ------------------------------------------------------------------ state dicts
    def describe(self, engine: Any) -> dict[str, Any]:
        """The ``"shard"`` entry of a rank's state dict: rank, world, the padded buffer sizes and each
        param's owned elements ``[a, b)`` in its own flat index (``a == b``: none)."""
        ranges = []
        for i, s in enumerate(engine.layout.slots):
            a, b = engine.owned_range(i, "master")
            ranges.append([a - s.offset, b - s.offset] if b > a else [0, 0])
        return {"rank": self.rank, "world": self.world, "sizes": [b.size for b in engine.layout.buffers],
                "ranges": ranges}

    def full_state(self, engine: Any) -> Any:
        """An unsharded engine (same layout, host memory) holding every rank's state, gathered: what a
        single process would hold. A collective (every rank calls it in the same order)."""
        from ._engine import Engine
        from ._tiered import STATE_NAMES

        engine.sync()  # the last step's kernels may still run on another stream (torch's)
        full = Engine(engine.layout, device="cpu", kernel=engine.kernel, decoupled=engine.decoupled,
                      algorithm=engine.algorithm, precision=engine.precision)
        for bi, buf in enumerate(engine.bufs):
            lo, hi = engine.shards[bi]
            dst = full.bufs[bi]
            for key in STATE_NAMES + tuple(K.SCALE_FIELDS.values()):
                if getattr(buf, key) is None:
                    setattr(dst, key, None)
                    continue
                a, b = (lo // prec.FP8_BLOCK, hi // prec.FP8_BLOCK) if key.endswith("_scale") else (lo, hi)
                local = np.ascontiguousarray(engine._read_range(bi, key, a, b))
                out = np.empty(local.size * self.world, local.dtype)
                self.host_all_gather(local, out)
                setattr(dst, key, out)
        full.steps[...] = engine.steps
        full.started[...] = engine.started
        full.count = engine.count
        return full


def expand_shard_dict(sd: Mapping[str, Any], engine: Any, mine: Mapping[str, Any],
                      convert: bool = False) -> dict[str, Any]:
    """A rank's shard state dict (``state_dict()`` of a sharded optimizer) as a full-shaped one
    (zeros outside the shard, which the engine never reads), for ``npadam._state.parse``. ValueError
    unless it is this rank's shard of this world size and layout. ``convert``: moments may be in
    another dtype (converted element by element, fp8 per block: shards hold whole blocks); a master
    where the optimizer keeps param remainders, or the other way round, is refused (converting
    them writes whole params, which a shard does not hold)."""
    meta = sd["npadam"]
    sh = meta["shard"]
    if not isinstance(sh, Mapping) or any(k not in sh for k in ("rank", "world", "sizes", "ranges")):
        raise ValueError("state dict 'npadam.shard' must hold rank, world, sizes and ranges")
    for key in ("world", "rank", "sizes"):
        if sh[key] != mine[key]:
            raise ValueError(f"state dict is the shard of rank {sh['rank']} of {sh['world']} (buffer sizes "
                             f"{list(sh['sizes'])}), this is rank {mine['rank']} of {mine['world']} (sizes "
                             f"{mine['sizes']}): a shard state dict loads only into the same rank of the same "
                             "world size; use full_state_dict() to move state between world sizes")
    ranges = [list(r) for r in sh["ranges"]]
    if ranges != mine["ranges"]:
        raise ValueError("state dict 'npadam.shard.ranges' do not match this rank's shard")
    state_in = sd["state"]
    state: dict[Any, Any] = {}
    for i, slot in enumerate(engine.layout.slots):
        st = state_in.get(i, state_in.get(str(i)))
        if not isinstance(st, Mapping):
            state[i] = st
            continue
        keeps = engine.precision.remainders and slot.dtype == "bfloat16"
        if convert and ("param_remainder" in st) != keeps and ("master" in st or "param_remainder" in st):
            raise ValueError(f"state of param {slot.name!r}: a shard state dict with "
                             f"{'a param_remainder' if not keeps else 'a master'} cannot be converted to "
                             f"{'an fp32 master' if not keeps else 'param remainders'} (that rewrites the whole "
                             "param); convert a full_state_dict() instead")
        a, b = ranges[i]
        new: dict[str, Any] = {}
        for k, v in st.items():
            if k == "step":
                new[k] = v
                continue
            arr = np.asarray(v)
            if k.endswith("_scale"):
                full = np.zeros(-(-slot.numel // prec.FP8_BLOCK), arr.dtype)
                first = a // prec.FP8_BLOCK
                if first + arr.size > full.size:
                    raise ValueError(f"state of param {slot.name!r}: {k} has {arr.size} block scales, more than its "
                                     f"shard [{a}, {b}) has blocks")
                full[first: first + arr.size] = arr.reshape(-1)
                new[k] = full
                continue
            if arr.size != b - a:
                raise ValueError(f"state of param {slot.name!r}: {k} has {arr.size} elements, its shard on this rank "
                                 f"[{a}, {b}) has {b - a}")
            full = np.zeros(slot.numel, arr.dtype)
            full[a:b] = arr.reshape(-1)
            new[k] = full.reshape(slot.shape)
        state[i] = new
    return {**sd, "state": state, "npadam": {k: v for k, v in meta.items() if k != "shard"}}


def hand_over(sharding: Sharding | None, engine: Any, bi: int,
              collect: Callable[[], tuple[np.ndarray, np.ndarray, Sequence[str], Any]]) -> Any:
    """The front-ends' ``grads_ready(bi)``: ``collect()`` checks the bucket's grads and returns
    ``(active, grad pointers, grad dtype per buffer, what the front-end keeps)``; with ``sharding``
    the bucket's reduce-scatter then starts. If ``collect`` fails on this rank, the bucket is still
    sent (zeros: the other ranks send theirs) and the next step raises on every rank."""
    try:
        active, gptrs, gdtypes, kept = collect()
    except Exception as e:
        if sharding is not None:
            sharding.grads_failed(engine, bi, e)
        raise
    if sharding is not None:
        sharding.grads_ready(engine, bi, active, gptrs, gdtypes[bi])
    return kept


def unshard_state_dict(sd: Any, engine: Any, sharding: Sharding | None, convert: bool,
                       array: Any = np.asarray) -> Any:
    """What ``load_state_dict`` parses, in both front-ends: a shard state dict (``npadam.shard``) as a
    full-shaped one for this rank (``expand_shard_dict``: zeros outside its shard, which the engine
    never reads); any other dict as it is (a whole dict loads into a sharded optimizer too: each rank
    keeps its shard). ``array`` turns a state entry into a NumPy array first (``np.asarray`` cannot
    read a torch bfloat16 or fp8 tensor). ValueError for a shard given to an unsharded optimizer;
    ``convert``: as ``expand_shard_dict`` (moments of another dtype convert, masters and param
    remainders do not)."""
    meta = sd.get("npadam") if isinstance(sd, Mapping) else None
    if not isinstance(meta, Mapping) or meta.get("shard") is None:
        return sd
    if sharding is None:
        raise ValueError("the state dict is one rank's shard of a sharded optimizer (comm=); load it into the "
                         "same rank of a sharded optimizer, or save full_state_dict() instead")
    state = sd.get("state")
    if isinstance(state, Mapping) and array is not np.asarray:
        state = {i: ({k: (v if k == "step" else array(v)) for k, v in st.items()} if isinstance(st, Mapping) else st)
                 for i, st in state.items()}
        sd = {**sd, "state": state}
    return expand_shard_dict(sd, engine, sharding.describe(engine), convert)
