"""Functional AdamW/Adam on flat buffers, for callers who own their state.

>>> import numpy as np
>>> from npadam import functional as F
>>> p = np.zeros(10, np.float32); g = np.ones(10, np.float32)
>>> st = F.init(p)
>>> st = F.update(p, g, st, lr=1e-2, weight_decay=0.0)
>>> st.step, float(p[0])
(1, -0.009999999776482582)

``update`` runs the same kernels and the same arithmetic as ``npadam.AdamW`` on a
single 1-D contiguous buffer (float32, or bfloat16/float16 with the fp32 master
kept in the state). It writes ``param`` and the state arrays in place and returns
the state with the step count advanced; it never skips: check finiteness with
``grad_norm`` first when you need to.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from .reference import adamw as ref

from . import kernels as K
from .layout import dtype_name


@dataclass(frozen=True)
class AdamState:
    """Moments (float32, like ``param``), optional amsgrad max, optional fp32 master, step count."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None = None
    master: np.ndarray | None = None
    step: int = 0


def _flat(a: np.ndarray, what: str) -> np.ndarray:
    if a.ndim != 1 or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a 1-D contiguous array, got shape {a.shape} strides {a.strides}")
    dtype_name(a.dtype)
    if not a.dtype.isnative:
        raise TypeError(f"{what} has non-native byte order ({a.dtype.str}); convert it first")
    return a


def init(param: np.ndarray, amsgrad: bool = False) -> AdamState:
    """Zero moments for a flat ``param``; an fp32 master copy when ``param`` is low precision."""
    _flat(param, "param")
    z = np.zeros(param.size, np.float32)
    master = param.astype(np.float32) if param.dtype != np.float32 else None
    return AdamState(z, z.copy(), z.copy() if amsgrad else None, master, 0)


def _view(param: np.ndarray, grad: np.ndarray, state: AdamState) -> tuple[K.BufferState, K.Batch]:
    buf = K.BufferState(size=param.size, master=state.master, exp_avg=state.exp_avg, exp_avg_sq=state.exp_avg_sq,
                        max_exp_avg_sq=state.max_exp_avg_sq, pdtype=dtype_name(param.dtype))
    return buf, K.Batch.of_arrays([_u16(param)], [_u16(grad)], np.zeros(1, np.int64), dtype_name(grad.dtype))


def _u16(a: np.ndarray) -> np.ndarray:
    return a if a.dtype == np.float32 else a.view(np.uint16)


def grad_norm(grad: np.ndarray, kernel: str | None = None) -> float:
    """The float64 L2 norm of a flat gradient with npadam's fixed blocking (inf/nan if non-finite)."""
    _flat(grad, "grad")
    buf, batch = _view(grad, grad, AdamState(np.zeros(0, np.float32), np.zeros(0, np.float32)))
    kernel = K.check_kernel(kernel)
    if kernel == "gpu":
        raise ValueError("npadam.functional works on host (NumPy) buffers; use npadam.AdamW for GPU arrays")
    sums = K.get(kernel).block_sumsq(buf, batch, ref.NORM_BLOCK)
    return math.sqrt(float(np.cumsum(sums)[-1])) if sums.size else 0.0


def update(param: np.ndarray, grad: np.ndarray, state: AdamState, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True, amsgrad: bool = False,
           maximize: bool = False, bias_correction: bool = True, grad_scale: float = 1.0,
           kernel: str | None = None) -> AdamState:
    """One AdamW (``decoupled=True``) or Adam-L2 step in place; returns the state with ``step + 1``."""
    _flat(param, "param")
    _flat(grad, "grad")
    if grad.size != param.size:
        raise ValueError(f"grad has {grad.size} elements, param has {param.size}")
    for name in ("exp_avg", "exp_avg_sq"):
        if getattr(state, name).shape != (param.size,):
            raise ValueError(f"state.{name} has shape {getattr(state, name).shape}, expected {(param.size,)}")
    if amsgrad and state.max_exp_avg_sq is None:
        raise ValueError("amsgrad needs state.max_exp_avg_sq (init(param, amsgrad=True))")
    if param.dtype != np.float32 and state.master is None:
        raise ValueError(f"a {param.dtype} param needs state.master (init(param))")
    s = ref.host_scalars(lr=lr, beta1=betas[0], beta2=betas[1], eps=eps, weight_decay=weight_decay,
                         step=state.step + 1, decoupled=decoupled, bias_correction=bias_correction,
                         grad_scale=grad_scale)
    kernel = K.check_kernel(kernel)
    if kernel == "gpu":
        raise ValueError("npadam.functional works on host (NumPy) buffers; use npadam.AdamW for GPU arrays")
    K.get(kernel).adam_step(*_view(param, grad, state), s,
                            K.Flags(decoupled=decoupled, amsgrad=amsgrad, maximize=maximize))
    return replace(state, step=state.step + 1)
