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

from . import _params as P
from . import _validate as V
from . import kernels as K
from ._engine import ADAM_SCALARS, nonfinite
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
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a NumPy array, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{what} is a masked array; pass a plain array (np.ma.getdata)")
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


def _check_state(param: np.ndarray, grad: np.ndarray, state: AdamState, amsgrad: bool) -> None:
    """Everything ``update`` writes or reads, checked before anything is written."""
    if not isinstance(state, AdamState):
        raise TypeError(f"state must be a npadam.functional.AdamState (from init), got {type(state).__name__}")
    arrays = {"param": param, "grad": grad, "state.exp_avg": state.exp_avg, "state.exp_avg_sq": state.exp_avg_sq}
    if amsgrad:
        if state.max_exp_avg_sq is None:
            raise ValueError("amsgrad needs state.max_exp_avg_sq (init(param, amsgrad=True))")
        arrays["state.max_exp_avg_sq"] = state.max_exp_avg_sq
    if param.dtype != np.float32:
        if state.master is None:
            raise ValueError(f"a {param.dtype} param needs state.master (init(param))")
        arrays["state.master"] = state.master
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{name} is a masked array; pass a plain array (np.ma.getdata)")
        _flat(a, name)
        if name.startswith("state.") and a.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}")
        if a.size != param.size:
            raise ValueError(f"{name} has {a.size} elements, param has {param.size}")
        if name != "grad" and not a.flags.writeable:
            raise ValueError(f"{name} is read-only; update writes it in place")
    names = list(arrays)
    starts = np.array([P.address(a) for a in arrays.values()], np.int64)
    ends = starts + np.array([a.nbytes for a in arrays.values()], np.int64)
    written = [i for i, n in enumerate(names) if n != "grad"]
    P.check_no_overlap(starts[written], ends[written], [names[i] for i in written], "")
    gi = names.index("grad")
    P.check_apart(starts[written], ends[written], starts[gi:gi + 1], ends[gi:gi + 1],
                  lambda g, q: f"grad and {names[written[q]]}")
    if isinstance(state.step, bool) or not isinstance(state.step, (int, np.integer)) \
            or not 0 <= state.step < 2**63 - 1:
        raise ValueError(f"state.step must be a non-negative integer below 2**63 - 1, got {state.step!r}")


def update(param: np.ndarray, grad: np.ndarray, state: AdamState, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True, amsgrad: bool = False,
           maximize: bool = False, bias_correction: bool = True, grad_scale: float = 1.0,
           kernel: str | None = None) -> AdamState:
    """One AdamW (``decoupled=True``) or Adam-L2 step in place; returns the state with ``step + 1``.

    Every argument is checked before anything is written (ValueError/TypeError naming
    the value): hyperparameters in range (lr, weight_decay, eps >= 0, betas in [0, 1),
    grad_scale finite > 0), flags bools, arrays 1-D contiguous native with matching
    sizes, the written ones writable and not sharing memory with each other or the grad.
    """
    decoupled, amsgrad, maximize, bias_correction = (
        V.flag(n, v) for n, v in (("decoupled", decoupled), ("amsgrad", amsgrad), ("maximize", maximize),
                                 ("bias_correction", bias_correction)))
    lr = V.real("lr", lr, lo=0.0)
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    b1, b2 = (V.real(f"betas[{i}]", b, lo=0.0, hi=1.0, hi_open=True) for i, b in enumerate(betas))
    eps = V.real("eps", eps, lo=0.0)
    weight_decay = V.real("weight_decay", weight_decay, lo=0.0)
    grad_scale = V.real("grad_scale", grad_scale, lo=0.0, lo_open=True)
    for name, a in (("param", param), ("grad", grad)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    _check_state(param, grad, state, amsgrad)
    kernel = K.check_kernel(kernel)
    if kernel == "gpu":
        raise ValueError("npadam.functional works on host (NumPy) buffers; use npadam.AdamW for GPU arrays")
    with np.errstate(over="ignore"):  # reported below
        s = ref.host_scalars(lr=lr, beta1=b1, beta2=b2, eps=eps, weight_decay=weight_decay,
                             step=int(state.step) + 1, decoupled=decoupled, bias_correction=bias_correction,
                             grad_scale=grad_scale)
    name = nonfinite(s, ADAM_SCALARS)
    if name is not None:
        raise ValueError(f"lr={lr!r}, weight_decay={weight_decay!r}, grad_scale={grad_scale!r} give a "
                         f"non-finite {name} in float32; nothing was changed")
    if s.scale == 0:
        raise ValueError(f"grad_scale={grad_scale!r} is 0 in float32 (it would zero the gradients); nothing "
                         "was changed")
    K.get(kernel).adam_step(*_view(param, grad, state), s,
                            K.Flags(decoupled=decoupled, amsgrad=amsgrad, maximize=maximize))
    return replace(state, step=int(state.step) + 1)
