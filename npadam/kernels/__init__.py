"""Kernel dispatch: the same operations on one flat buffer, by the reference, Numba or CuPy.

``block_sumsq(buf, batch, block)`` returns the float64 sums of squares of the
buffer's gradient blocks (``npadam.reference.adamw.NORM_BLOCK`` elements from the
buffer start; tensors outside the batch count as zeros);
``adam_step(buf, batch, scalars, flags)`` runs one fused AdamW/Adam pass over the
batch's tensors, ``sgd_step(buf, batch, scalars, flags)`` one fused SGD pass (the
momentum buffer in ``buf.exp_avg``). ``BufferState`` holds a buffer's state arrays, ``Batch`` the
pointer tables of the tensors one call touches (params in their storage dtype,
grads in theirs) and their offsets in the flat state.
"""

from __future__ import annotations

import ctypes
from dataclasses import dataclass, field
from typing import Iterator, Sequence

import numpy as np

from ..reference import adamw as ref
from ..reference import precision as prec
from ..reference import sgd as sgd_ref

from ..layout import KINDS, storage_dtype, work_items

KERNELS = ("reference", "cpu", "gpu")


@dataclass
class BufferState:
    """One flat buffer's optimizer state (arrays of ``size`` elements, NumPy or CuPy).

    Adam: ``exp_avg``, ``exp_avg_sq`` (and ``max_exp_avg_sq`` with amsgrad). SGD: the momentum
    buffer in ``exp_avg`` (None until a step with momentum), no ``exp_avg_sq``. Storage
    (``npadam.reference.precision``): ``m_kind`` / ``v_kind`` the kinds of ``exp_avg`` and of
    ``exp_avg_sq``/``max_exp_avg_sq`` (0 float32 arrays, 1 bfloat16 / 2 float16 as uint16 bits,
    3 float8_e4m3fn / 4 float8_e5m2 as uint8 codes with a float32 scale per block in ``*_scale``;
    the arrays then start on a block boundary),
    ``stochastic`` their bf16 rounding, ``remainders``: ``master`` holds int16 remainders of bf16
    params instead of float32 masters. ``base``: the flat buffer index of element 0 of these
    arrays (a streamed piece of a buffer starts further in; the random words of stochastic
    rounding are keyed on the buffer index)."""

    size: int
    master: np.ndarray | None
    exp_avg: np.ndarray | None
    exp_avg_sq: np.ndarray | None
    max_exp_avg_sq: np.ndarray | None
    pdtype: str = "float32"
    cache: dict = field(default_factory=dict)
    m_kind: int = 0
    v_kind: int = 0
    stochastic: bool = False
    remainders: bool = False
    base: int = 0
    m_scale: np.ndarray | None = None     # fp8 moments: float32 scale per block of FP8_BLOCK elements
    v_scale: np.ndarray | None = None
    vmax_scale: np.ndarray | None = None
    w_kind: int = 0  # the master's kind: 0 float32, 2 float16 (uint16 bits; main_params_dtype)

    @property
    def pkind(self) -> int:
        return KINDS[self.pdtype]


@dataclass
class Batch:
    """The tensors of one buffer that one kernel call touches.

    ``params``/``grads``: int64 pointer tables (addresses of each tensor's first
    element, in host or device memory like the state); ``offsets``/``sizes``: int64,
    each tensor's place in the buffer (ascending). ``key`` identifies the tensor set
    (cached work tables are keyed on it). The caller keeps the memory alive and has
    checked shapes, dtypes and contiguity.
    """

    params: np.ndarray
    grads: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray
    gdtype: str = "float32"
    key: bytes = b""

    @property
    def gkind(self) -> int:
        return KINDS[self.gdtype]

    def __len__(self) -> int:
        return int(self.offsets.size)

    @classmethod
    def of_arrays(cls, params: Sequence[np.ndarray], grads: Sequence[np.ndarray], offsets: np.ndarray,
                  gdtype: str = "float32") -> "Batch":
        """A batch of 1-D contiguous NumPy arrays (tests, ``npadam.functional``)."""
        sizes = np.asarray([a.size for a in params], dtype=np.int64)
        return cls(pointers(params), pointers(grads), np.asarray(offsets, np.int64), sizes, gdtype,
                   np.asarray(offsets, np.int64).tobytes())


def sub_batch(batch: Batch, pdtype: str, start: int, stop: int) -> Batch:
    """The part of ``batch`` inside the buffer's flat elements ``[start, stop)``, for state arrays
    that begin at ``start`` (a chunk of the buffer's state streamed from another tier).

    Each tensor overlapping the range keeps the elements inside it: its param and grad pointers
    advance by the skipped elements (``pdtype``'s storage size, the grad dtype's size) and its
    offset becomes relative to ``start``. Every element sees the same arithmetic as in the whole
    batch (the update is elementwise), so a buffer stepped chunk by chunk is bit-identical.
    """
    ends = batch.offsets + batch.sizes
    m = (ends > start) & (batch.offsets < stop) & (batch.sizes > 0)
    off = batch.offsets[m]
    lo, hi = np.maximum(off, start), np.minimum(ends[m], stop)
    skip = lo - off
    pitem, gitem = storage_dtype(pdtype).itemsize, storage_dtype(batch.gdtype).itemsize
    return Batch(batch.params[m] + skip * pitem, batch.grads[m] + skip * gitem, lo - start, hi - lo,
                 batch.gdtype, batch.key + b"|%d:%d" % (start, stop))


def pointers(arrays: Sequence[np.ndarray]) -> np.ndarray:
    """The int64 pointer table of NumPy arrays; the caller keeps them alive while a kernel uses it."""
    return np.asarray([a.__array_interface__["data"][0] for a in arrays], dtype=np.int64)


@dataclass(frozen=True)
class Flags:
    """An Adam pass's options; ``key``: the step's uint32 key pair for stochastic rounding
    (``npadam.reference.precision.step_key`` of the update, the buffer and the seed)."""

    decoupled: bool = True
    amsgrad: bool = False
    maximize: bool = False
    key: tuple[int, int] = (0, 0)


@dataclass(frozen=True)
class SgdFlags:
    """An SGD pass's options: ``weight_decay`` (the group's decay is nonzero), ``momentum`` (the mode,
    ``reference.sgd.PLAIN``/``MOMENTUM``/``NESTEROV``), ``first`` (the tensors' first step with momentum)."""

    maximize: bool = False
    weight_decay: bool = False
    momentum: int = sgd_ref.PLAIN
    first: bool = False


def available() -> str:
    """The fastest kernel that can run here: ``"cpu"`` when Numba imports, else ``"reference"``."""
    try:
        import numba  # noqa: F401
    except ImportError:  # pragma: no cover - numba is a base dependency
        return "reference"
    return "cpu"


def check_kernel(kernel: str | None) -> str:
    """Validate a ``kernel=`` argument (None picks the fastest available)."""
    if kernel is None:
        return available()
    if kernel not in KERNELS:
        raise ValueError(f"kernel must be one of {', '.join(KERNELS)} or None, got {kernel!r}")
    return kernel


def _work(buf: BufferState, batch: Batch, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The batch's ``(tensor, lo, hi)`` work items, cached per buffer and tensor set."""
    key = ("work", chunk, batch.key)
    if key not in buf.cache:
        if len(buf.cache) > 64:  # tensor sets come and go (grads of unused params): keep the cache small
            buf.cache.clear()
        buf.cache[key] = work_items(batch.sizes, chunk)
    return buf.cache[key]


class _Cpu:
    """Numba kernels over pointer tables (see ``npadam.kernels.cpu``)."""

    def __init__(self) -> None:
        from . import cpu

        self.cpu = cpu
        self._empty = np.zeros(0, dtype=np.float32)

    def block_sumsq(self, buf: BufferState, batch: Batch, block: int) -> np.ndarray:
        nblocks = -(-buf.size // block)
        if not len(batch) or not nblocks:
            return np.zeros(0)
        return self.cpu.block_sumsq(batch.grads, batch.offsets, batch.sizes, nblocks, block, batch.gkind,
                                    buf.size >= self.cpu.PARALLEL_MIN)

    def adam_step(self, buf: BufferState, batch: Batch, s: ref.HostScalars, flags: Flags) -> None:
        if not len(batch):
            return
        e = self._empty
        kernel = self.cpu.adam_pass(buf.pkind, batch.gkind, flags.amsgrad, flags.decoupled,
                                    buf.size >= self.cpu.PARALLEL_MIN, buf.m_kind, buf.v_kind, buf.stochastic,
                                    buf.remainders, buf.w_kind)
        vmax = buf.max_exp_avg_sq
        scales = tuple(e if q is None else q for q in (buf.m_scale, buf.v_scale, buf.vmax_scale))
        kernel(batch.params, batch.grads, batch.offsets, *_work(buf, batch, self.cpu.CHUNK),
               e if buf.master is None else buf.master, buf.exp_avg, buf.exp_avg_sq,
               np.zeros(0, prec.storage(buf.v_kind)) if vmax is None else vmax, *scales, flags.maximize,
               s.scale, np.uint32(flags.key[0]), np.uint32(flags.key[1]), np.int64(buf.base), s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.weight_decay,
               s.decay, s.step_size, s.bc2_sqrt, s.eps)

    def sgd_step(self, buf: BufferState, batch: Batch, s: sgd_ref.HostScalars, flags: SgdFlags) -> None:
        if not len(batch):
            return
        e = self._empty
        kernel = self.cpu.sgd_pass(buf.pkind, batch.gkind, flags.momentum, buf.size >= self.cpu.PARALLEL_MIN)
        kernel(batch.params, batch.grads, batch.offsets, *_work(buf, batch, self.cpu.CHUNK),
               e if buf.master is None else buf.master, e if flags.momentum == sgd_ref.PLAIN else buf.exp_avg,
               e, e, e, e, e, flags.maximize, s.scale, np.uint32(0), np.uint32(0), np.int64(0), s.weight_decay, s.momentum, s.one_minus_dampening, s.neg_lr,
               flags.weight_decay, flags.first)


_CTYPES = {"float32": ctypes.c_float, "bfloat16": ctypes.c_uint16, "float16": ctypes.c_uint16}


def host_view(address: int, n: int, dtype: str) -> np.ndarray:
    """A NumPy view of ``n`` elements of storage ``dtype`` at a host ``address``."""
    if n == 0:
        return np.zeros(0, dtype=storage_dtype(dtype))
    raw = np.ctypeslib.as_array((_CTYPES[dtype] * n).from_address(int(address)))
    return raw.view(storage_dtype(dtype))


class _Reference:
    """The NumPy oracle, tensor by tensor (slow, for checking)."""

    @staticmethod
    def _views(batch: Batch, ptrs: np.ndarray, dtype: str) -> list[np.ndarray]:
        return [host_view(a, n, dtype) for a, n in zip(ptrs, batch.sizes)]

    def block_sumsq(self, buf: BufferState, batch: Batch, block: int) -> np.ndarray:
        if not len(batch):
            return np.zeros(0)
        flat = np.zeros(buf.size, dtype=storage_dtype(batch.gdtype))
        for g, off in zip(self._views(batch, batch.grads, batch.gdtype), batch.offsets):
            flat[off: off + g.size] = g
        return ref.block_sumsq(flat, block)

    def _updates(self, buf: BufferState, batch: Batch) -> Iterator[tuple[np.ndarray, np.ndarray, slice]]:
        """Each tensor of the batch as ``(value to update, grad, slice of the flat state)``: the value
        is the param, or the fp32 master (``current_master``, or joined from the param and its
        remainder) of a low-precision param, which is written back rounded (or split) after the
        caller's update."""
        low = buf.master is not None
        grads = self._views(batch, batch.grads, batch.gdtype)
        for p, g, off in zip(self._views(batch, batch.params, buf.pdtype), grads, batch.offsets):
            sl = slice(off, off + p.size)
            if buf.remainders:
                param = prec.join_remainder(p.view(np.uint16), buf.master[sl])
            elif low and buf.w_kind != prec.F32:  # an fp16 master, widened (and checked) in a copy
                param = ref.current_master(prec.widen(buf.master[sl], buf.w_kind), p)
            else:
                param = ref.current_master(buf.master[sl], p) if low else p
            yield param, g, sl
            if buf.remainders:
                param = ref.canonical_nan(param)
                p.view(np.uint16)[...], buf.master[sl] = prec.split_remainder(param)
            elif low and buf.w_kind != prec.F32:  # the param is the rounding of the fp16 master
                buf.master[sl] = prec.narrow(param, buf.w_kind)
                p[...] = ref.to_storage(prec.widen(buf.master[sl], buf.w_kind), p.dtype)
            elif low:
                p[...] = ref.to_storage(param, p.dtype)

    def adam_step(self, buf: BufferState, batch: Batch, s: ref.HostScalars, flags: Flags) -> None:
        rounding = "stochastic" if buf.stochastic else "nearest"

        def read(key: str, kind: int, sl: slice) -> np.ndarray:
            if kind in prec.FP8:
                return prec.dequantize(getattr(buf, key)[sl], getattr(buf, _SCALE[key])[_blocks(sl)], kind)
            return prec.widen(getattr(buf, key)[sl], kind)

        def write(key: str, kind: int, sl: slice, x: np.ndarray, r: np.ndarray | None, how: str) -> None:
            if kind in prec.FP8:
                getattr(buf, key)[sl], getattr(buf, _SCALE[key])[_blocks(sl)] = prec.quantize(x, kind)
            else:
                getattr(buf, key)[sl] = prec.narrow(x, kind, how if kind == prec.BF16 else "nearest", r)

        for param, g, sl in self._updates(buf, batch):
            m = read("exp_avg", buf.m_kind, sl)
            v = read("exp_avg_sq", buf.v_kind, sl)
            vmax = read("max_exp_avg_sq", buf.v_kind, sl) if flags.amsgrad else None
            with np.errstate(invalid="ignore", divide="ignore"):  # eps = 0 with a zero grad: 0/0 like the kernels
                ref.apply_step(param, g, m, v, vmax, s,
                               decoupled=flags.decoupled, amsgrad=flags.amsgrad, maximize=flags.maximize)
            r0 = r1 = None
            if buf.stochastic:
                r0, r1 = prec.random_words(flags.key, np.arange(sl.start, sl.stop, dtype=np.uint64) + buf.base)
            write("exp_avg", buf.m_kind, sl, m, r0, rounding)
            write("exp_avg_sq", buf.v_kind, sl, v, r1, rounding)
            if vmax is not None:
                write("max_exp_avg_sq", buf.v_kind, sl, vmax, r1, rounding)

    def sgd_step(self, buf: BufferState, batch: Batch, s: sgd_ref.HostScalars, flags: SgdFlags) -> None:
        for param, g, sl in self._updates(buf, batch):
            mbuf = None if flags.momentum == sgd_ref.PLAIN else buf.exp_avg[sl]
            sgd_ref.apply_step(param, g, mbuf, s, maximize=flags.maximize, weight_decay=flags.weight_decay,
                               momentum=flags.momentum, first=flags.first)


#: the block-scale field of each fp8-capable state field
SCALE_FIELDS = _SCALE = {"exp_avg": "m_scale", "exp_avg_sq": "v_scale", "max_exp_avg_sq": "vmax_scale"}


def _blocks(sl: slice) -> slice:
    """The fp8 blocks of a tensor's state slice (it starts on a block boundary)."""
    return slice(sl.start // prec.FP8_BLOCK, -(-sl.stop // prec.FP8_BLOCK))


_instances: dict[str, object] = {}


def get(kernel: str):
    """The kernel object for ``"cpu"``, ``"reference"`` or ``"gpu"`` (built once, lazily)."""
    if kernel not in _instances:
        if kernel == "gpu":
            from .gpu import GpuKernels

            _instances[kernel] = GpuKernels()
        else:
            _instances[kernel] = _Cpu() if kernel == "cpu" else _Reference()
    return _instances[kernel]
