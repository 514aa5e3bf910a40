"""Kernel dispatch: the same two operations on one flat buffer, by the reference or by Numba.

``block_sumsq(buf)`` returns the float64 sums of squares of the buffer's gradient
blocks (``reference.adamw.NORM_BLOCK`` elements from the buffer start);
``adam_step(buf, scalars, flags)`` runs one fused AdamW/Adam pass. ``BufferView``
bundles what both need: the tensors' 1-D views (params in their storage dtype,
grads in theirs), their offsets in the flat state, and the state arrays.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from reference import adamw as ref

from ..layout import KINDS, work_items

KERNELS = ("reference", "cpu", "gpu")


@dataclass
class BufferView:
    """One flat buffer's tensors and state. Param/grad views are 1-D and contiguous."""

    params: Sequence[np.ndarray]
    grads: Sequence[np.ndarray]
    offsets: np.ndarray
    sizes: np.ndarray
    size: int
    master: np.ndarray | None
    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None
    pdtype: str = "float32"
    gdtype: str = "float32"
    cache: dict = field(default_factory=dict)

    @property
    def pkind(self) -> int:
        return KINDS[self.pdtype]

    @property
    def gkind(self) -> int:
        return KINDS[self.gdtype]


@dataclass(frozen=True)
class Flags:
    decoupled: bool = True
    amsgrad: bool = False
    maximize: bool = False


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


def _u16(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.view(np.uint16)


class _Cpu:
    """Numba kernels; typed lists of the parameter views are cached per buffer."""

    def __init__(self) -> None:
        from . import cpu

        self.cpu = cpu
        self._empty = np.zeros(0, dtype=np.float32)

    def _params(self, buf: BufferView) -> object:
        """The typed list of param views, built once per buffer (params never move)."""
        if "params" not in buf.cache:
            buf.cache["params"] = self.cpu.typed_list([_u16(a) for a in buf.params])
            buf.cache["work"] = work_items(buf.sizes, self.cpu.CHUNK)
        return buf.cache["params"]

    def _grads(self, buf: BufferView) -> object:
        """The typed list of this step's grad views, built once for both passes."""
        cached = buf.cache.get("grads")
        if cached is None or cached[0] is not buf.grads:
            cached = (buf.grads, self.cpu.typed_list([_u16(g) for g in buf.grads]))
            buf.cache["grads"] = cached
        return cached[1]

    def block_sumsq(self, buf: BufferView, block: int) -> np.ndarray:
        nblocks = -(-buf.size // block)
        if not len(buf.grads) or not nblocks:
            return np.zeros(0)
        return self.cpu.block_sumsq(self._grads(buf), buf.offsets,
                                    nblocks, block, buf.gkind, buf.size >= self.cpu.PARALLEL_MIN)

    def adam_step(self, buf: BufferView, s: ref.HostScalars, flags: Flags) -> None:
        if not len(buf.params):
            return
        e = self._empty
        params = self._params(buf)
        kernel = self.cpu.adam_pass(buf.pkind, buf.gkind, flags.amsgrad, flags.decoupled,
                                    buf.size >= self.cpu.PARALLEL_MIN)
        kernel(params, self._grads(buf), buf.offsets, *buf.cache["work"],
               e if buf.master is None else buf.master, buf.exp_avg, buf.exp_avg_sq,
               e if buf.max_exp_avg_sq is None else buf.max_exp_avg_sq, flags.maximize,
               s.scale, s.beta1, s.one_minus_beta1, s.beta2, s.one_minus_beta2, s.weight_decay,
               s.decay, s.step_size, s.bc2_sqrt, s.eps)


class _Reference:
    """The NumPy oracle on gathered flat copies (slow, for checking)."""

    @staticmethod
    def _gather(views: Sequence[np.ndarray], buf: BufferView, dtype: np.dtype) -> np.ndarray:
        flat = np.zeros(buf.size, dtype=dtype)
        for a, off in zip(views, buf.offsets):
            flat[off: off + a.size] = a
        return flat

    def block_sumsq(self, buf: BufferView, block: int) -> np.ndarray:
        if not len(buf.grads):
            return np.zeros(0)
        return ref.block_sumsq(self._gather(buf.grads, buf, buf.grads[0].dtype), block)


    def adam_step(self, buf: BufferView, s: ref.HostScalars, flags: Flags) -> None:
        if not len(buf.params):
            return
        grad = self._gather(buf.grads, buf, buf.grads[0].dtype)
        low = buf.master is not None
        param = buf.master if low else self._gather(buf.params, buf, np.dtype(np.float32))
        with np.errstate(invalid="ignore", divide="ignore"):  # eps = 0 makes 0/0 in the padding
            ref.apply_step(param, grad, buf.exp_avg, buf.exp_avg_sq, buf.max_exp_avg_sq, s,
                           decoupled=flags.decoupled, amsgrad=flags.amsgrad, maximize=flags.maximize)
        for a, off in zip(buf.params, buf.offsets):
            src = param[off: off + a.size]
            a[...] = ref.to_storage(src, a.dtype) if low else src


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
