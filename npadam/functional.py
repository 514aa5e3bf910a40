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

**Precision-aware state** (``npadam.reference.precision``, docs/PRECISION.md): the state
arrays *are* the storage, so their dtypes say how the state is kept. ``init`` takes the
optimizers' storage options and makes the arrays in those dtypes:

- ``exp_avg_dtype`` / ``exp_avg_sq_dtype``: float32, bfloat16 (``ml_dtypes.bfloat16``
  arrays), float16, or fp8 (``ml_dtypes.float8_e4m3fn`` / ``float8_e5m2`` codes, with a
  float32 scale per block of ``FP8_BLOCK`` elements in ``exp_avg_scale`` /
  ``exp_avg_sq_scale`` / ``max_exp_avg_sq_scale``);
- ``store_param_remainders=True`` (bfloat16 params): ``state.master`` holds int16 remainders,
  so that (param, remainder) is the fp32 master exactly;
- ``main_params_dtype="float16"`` (bfloat16 params): ``state.master`` is float16.

``update`` reads the storage from the arrays and takes what a step needs: ``rounding``
(``"nearest"`` or ``"stochastic"`` for bf16 moments), ``seed``, and the coordinates of the
random words of stochastic rounding, ``buffer`` and ``offset`` (the words are keyed on the
seed, the update ``state.step + 1``, the buffer and ``offset + i`` for element ``i``; an
``npadam.AdamW`` param is reproduced bit for bit with its flat buffer's index and its offset
there, when it has a grad at every update: the optimizer keys on its update count). The
storage options may be given to ``update`` too, as checks: one that differs from the arrays
is a ValueError (no step converts state; ``npadam.AdamW.load_state_dict(sd, convert=True)``
does). Meaningless here, and refused: ``store_param_remainders`` / ``main_params_dtype``
for a param that is not bfloat16 (the optimizers apply them to their bf16 params only; here
the state belongs to one param), ``rounding`` / ``seed`` in ``init`` (nothing is rounded).
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass, replace
from typing import Any

import ml_dtypes
import numpy as np

from .reference import adamw as ref
from .reference import precision as prec

from . import _params as P
from . import _validate as V
from . import kernels as K
from ._engine import ADAM_SCALARS, nonfinite
from ._precision import STATE_DTYPES, StatePrecision, kind_of, state_precision
from .layout import dtype_name

#: the state-dict dtype of each storage kind (``reference.precision``)
_DTYPE = {kind: np.dtype(getattr(ml_dtypes, name, None) or name) for kind, name in STATE_DTYPES.items()}
_KIND = {dt.name: kind for kind, dt in _DTYPE.items()}
_MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")


@dataclass(frozen=True)
class AdamState:
    """Moments, optional amsgrad max, optional master, step count, and the fp8 block scales.

    Dtypes (see the module docstring): ``exp_avg`` float32, bfloat16, float16 or fp8;
    ``exp_avg_sq`` and ``max_exp_avg_sq`` one of those, the same for both; ``master`` None for
    a float32 param, else float32 (float16 with ``main_params_dtype="float16"``, int16
    remainders with ``store_param_remainders``: bfloat16 params only); ``<moment>_scale``
    float32, one per ``FP8_BLOCK`` elements, for fp8 moments only."""

    exp_avg: np.ndarray
    exp_avg_sq: np.ndarray
    max_exp_avg_sq: np.ndarray | None = None
    master: np.ndarray | None = None
    step: int = 0
    exp_avg_scale: np.ndarray | None = None
    exp_avg_sq_scale: np.ndarray | None = None
    max_exp_avg_sq_scale: np.ndarray | None = None


def _flat(a: np.ndarray, what: str, check_dtype: bool = True) -> np.ndarray:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a NumPy array, got {type(a).__name__}")
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{what} is a masked array; pass a plain array (np.ma.getdata)")
    if a.ndim != 1 or not a.flags.c_contiguous:
        raise ValueError(f"{what} must be a 1-D contiguous array, got shape {a.shape} strides {a.strides}")
    if check_dtype:
        dtype_name(a.dtype)
    if not a.dtype.isnative:
        raise TypeError(f"{what} has non-native byte order ({a.dtype.str}); convert it first")
    return a


def _zeros(n: int, kind: int) -> tuple[np.ndarray, np.ndarray | None]:
    """Zero moments of a storage kind, and their zero block scales when fp8."""
    scales = np.zeros(-(-n // prec.FP8_BLOCK), np.float32) if kind in prec.FP8 else None
    return np.zeros(n, _DTYPE[kind]), scales


def init(param: np.ndarray, amsgrad: bool = False, *, exp_avg_dtype: Any = "float32",
         exp_avg_sq_dtype: Any = "float32", store_param_remainders: bool = False,
         main_params_dtype: Any = "float32") -> AdamState:
    """Zero moments for a flat ``param``, in the storage the options ask for (checked as the
    optimizers check them); the master of a low-precision param: its value widened (float32, or
    float16 with ``main_params_dtype="float16"``), or zero remainders (``store_param_remainders``:
    the master is then the param). ``store_param_remainders`` and ``main_params_dtype`` apply to
    a bfloat16 param only: for another one they are a ValueError."""
    _flat(param, "param")
    pr = state_precision(exp_avg_dtype, exp_avg_sq_dtype, store_param_remainders, "nearest", 0, "adam",
                         main_params_dtype)
    pdt = dtype_name(param.dtype)
    if pdt != "bfloat16" and (pr.remainders or pr.w_kind != prec.F32):
        what = "store_param_remainders=True" if pr.remainders else f"main_params_dtype={main_params_dtype!r}"
        raise ValueError(f"{what} is about the master of a bfloat16 param; this param is {pdt} (its master "
                         f"{'does not exist' if pdt == 'float32' else 'is float32'}): leave it at its default")
    n = param.size
    m, m_scale = _zeros(n, pr.m_kind)
    v, v_scale = _zeros(n, pr.v_kind)
    vmax, vmax_scale = _zeros(n, pr.v_kind) if amsgrad else (None, None)
    if pdt == "float32":
        master = None
    elif pr.remainders:
        master = np.zeros(n, np.int16)
    elif pr.w_kind != prec.F32:
        master = prec.narrow(param.astype(np.float32), pr.w_kind).view(_DTYPE[pr.w_kind])
    else:
        master = param.astype(np.float32)
    return AdamState(m, v, vmax, master, 0, m_scale, v_scale, vmax_scale)


def _bits(a: np.ndarray | None) -> np.ndarray | None:
    """A state array as the kernels take it: float32 and int16 as they are, 16-bit floats as uint16
    bits, fp8 as uint8 codes."""
    if a is None or a.dtype in (np.float32, np.int16):
        return a
    return a.view(np.uint8 if a.dtype.itemsize == 1 else np.uint16)


def _view(param: np.ndarray, grad: np.ndarray, state: AdamState,
          pr: StatePrecision = StatePrecision(), offset: int = 0) -> tuple[K.BufferState, K.Batch]:
    w_kind = pr.w_kind if dtype_name(param.dtype) == "bfloat16" else prec.F32
    buf = K.BufferState(size=param.size, master=_bits(state.master), exp_avg=_bits(state.exp_avg),
                        exp_avg_sq=_bits(state.exp_avg_sq), max_exp_avg_sq=_bits(state.max_exp_avg_sq),
                        pdtype=dtype_name(param.dtype), m_kind=pr.m_kind, v_kind=pr.v_kind, stochastic=pr.stochastic,
                        remainders=pr.remainders, base=offset, m_scale=state.exp_avg_scale,
                        v_scale=state.exp_avg_sq_scale, vmax_scale=state.max_exp_avg_sq_scale, w_kind=w_kind)
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


def _kind(a: np.ndarray, name: str) -> int:
    """The storage kind of a moment array (its dtype)."""
    if a.dtype.name not in _KIND:
        raise TypeError(f"{name} must be float32, bfloat16, float16, float8_e4m3fn or float8_e5m2 (its dtype is "
                        f"its storage), got {a.dtype}")
    return _KIND[a.dtype.name]


def _storage(param: np.ndarray, state: AdamState, amsgrad: bool, rounding: Any, seed: Any,
             given: dict[str, Any]) -> StatePrecision:
    """The state precision the arrays hold, checked as the optimizers check their options (plus the
    storage options given to ``update``, which must agree with the arrays)."""
    m_kind = _kind(state.exp_avg, "state.exp_avg")
    v_kind = _kind(state.exp_avg_sq, "state.exp_avg_sq")
    if amsgrad and isinstance(state.max_exp_avg_sq, np.ndarray) and state.max_exp_avg_sq.dtype != state.exp_avg_sq.dtype:
        raise TypeError(f"state.max_exp_avg_sq must have exp_avg_sq's dtype ({state.exp_avg_sq.dtype}), got "
                        f"{state.max_exp_avg_sq.dtype}")
    pdt = dtype_name(param.dtype)
    master = state.master
    if pdt == "float32":
        if master is not None:
            raise ValueError("a float32 param has no master: state.master must be None (init(param))")
        allowed = ()
    else:
        if master is None:
            raise ValueError(f"a {pdt} param needs state.master (init(param))")
        allowed = ("float32", "float16", "int16") if pdt == "bfloat16" else ("float32",)
        if not isinstance(master, np.ndarray) or master.dtype.name not in allowed:
            raise TypeError(f"state.master of a {pdt} param must be {' or '.join(allowed)} (float16: "
                            "main_params_dtype='float16', int16: store_param_remainders), got "
                            f"{getattr(master, 'dtype', type(master).__name__)}")
    remainders = master is not None and master.dtype == np.int16
    w = "float16" if master is not None and master.dtype == np.float16 and pdt == "bfloat16" else "float32"
    pr = state_precision(STATE_DTYPES[m_kind], STATE_DTYPES[v_kind], remainders, rounding, seed, "adam", w)
    held = {"exp_avg_dtype": m_kind, "exp_avg_sq_dtype": v_kind, "main_params_dtype": pr.w_kind}
    for key, value in given.items():
        if value is None:
            continue
        if key == "store_param_remainders":
            if V.flag(key, value) != remainders:
                raise ValueError(f"store_param_remainders={value!r} but state.master "
                                 f"{'holds int16 remainders' if remainders else 'is not int16 remainders'}: the "
                                 "state arrays are the storage (init(param, store_param_remainders=...) makes them)")
        elif kind_of(key, value) != held[key]:
            have = {"exp_avg_dtype": "state.exp_avg", "exp_avg_sq_dtype": "state.exp_avg_sq",
                    "main_params_dtype": "state.master"}[key]
            raise ValueError(f"{key}={value!r} but {have} is {STATE_DTYPES[held[key]]}: the state arrays are the "
                             f"storage (init(param, {key}=...) makes them; a step never converts them)")
    return pr


def _check_state(param: np.ndarray, grad: np.ndarray, state: AdamState, amsgrad: bool) -> None:
    """Everything ``update`` writes or reads, checked before anything is written (dtypes by ``_storage``)."""
    if not isinstance(state, AdamState):
        raise TypeError(f"state must be a npadam.functional.AdamState (from init), got {type(state).__name__}")
    arrays = {"param": param, "grad": grad, "state.exp_avg": state.exp_avg, "state.exp_avg_sq": state.exp_avg_sq}
    if amsgrad:
        if state.max_exp_avg_sq is None:
            raise ValueError("amsgrad needs state.max_exp_avg_sq (init(param, amsgrad=True))")
        arrays["state.max_exp_avg_sq"] = state.max_exp_avg_sq
    if state.master is not None:
        arrays["state.master"] = state.master
    blocks = -(-param.size // prec.FP8_BLOCK) if isinstance(param, np.ndarray) else 0
    for key in _MOMENTS:
        a, scale = getattr(state, key), getattr(state, key + "_scale")
        if f"state.{key}" not in arrays:
            continue
        fp8 = isinstance(a, np.ndarray) and a.dtype.name.startswith("float8")
        if fp8 and scale is None:
            raise ValueError(f"state.{key} holds fp8 codes and needs state.{key}_scale (init(param, ...))")
        if scale is not None:
            if not fp8:
                raise ValueError(f"state.{key}_scale is for fp8 moments; state.{key} is {getattr(a, 'dtype', a)}")
            arrays[f"state.{key}_scale"] = scale
    for name, a in arrays.items():
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
        if isinstance(a, np.ma.MaskedArray):
            raise TypeError(f"{name} is a masked array; pass a plain array (np.ma.getdata)")
        _flat(a, name, check_dtype=name in ("param", "grad"))
        want = blocks if name.endswith("_scale") else param.size
        if name.endswith("_scale") and a.dtype != np.float32:
            raise TypeError(f"{name} must be float32, got {a.dtype}")
        if a.size != want:
            raise ValueError(f"{name} has {a.size} elements, expected {want}"
                             + (f" (one per {prec.FP8_BLOCK} elements of the param)" if name.endswith("_scale")
                                else " (param has that many)"))
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


def _index(name: str, value: Any, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 0 <= int(value) < hi:
        raise ValueError(f"{name} must be an integer in [0, {hi}), got {value!r}")
    return int(value)


def update(param: np.ndarray, grad: np.ndarray, state: AdamState, *, lr: float, betas: tuple[float, float] = (0.9, 0.999),
           eps: float = 1e-8, weight_decay: float = 0.0, decoupled: bool = True, amsgrad: bool = False,
           maximize: bool = False, bias_correction: bool = True, grad_scale: float = 1.0,
           kernel: str | None = None, rounding: str = "nearest", seed: int = 0, buffer: int = 0, offset: int = 0,
           exp_avg_dtype: Any = None, exp_avg_sq_dtype: Any = None, store_param_remainders: bool | None = None,
           main_params_dtype: Any = None) -> AdamState:
    """One AdamW (``decoupled=True``) or Adam-L2 step in place; returns the state with ``step + 1``.

    Every argument is checked before anything is written (ValueError/TypeError naming
    the value): hyperparameters in range (lr, weight_decay, eps >= 0, betas in [0, 1),
    grad_scale finite > 0), flags bools, arrays 1-D contiguous native with matching
    sizes, the written ones writable and not sharing memory with each other or the grad.

    State precision (module docstring): the storage is the state arrays' dtypes; ``rounding``
    (``"stochastic"`` needs a bfloat16 moment) and ``seed`` in [0, 2**64) as the optimizers take
    them; ``buffer`` in [0, 2**32) and ``offset`` >= 0 place the elements in the random words'
    counter. ``exp_avg_dtype``, ``exp_avg_sq_dtype``, ``store_param_remainders``,
    ``main_params_dtype``: None (as the arrays hold), or checked against the arrays.
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
    buffer = _index("buffer", buffer, 2**32)
    offset = _index("offset", offset, 2**63)
    for name, a in (("param", param), ("grad", grad)):
        if not isinstance(a, np.ndarray):
            raise TypeError(f"{name} must be a NumPy array, got {type(a).__name__}")
    _check_state(param, grad, state, amsgrad)
    pr = _storage(param, state, amsgrad, rounding, seed, {
        "exp_avg_dtype": exp_avg_dtype, "exp_avg_sq_dtype": exp_avg_sq_dtype,
        "store_param_remainders": store_param_remainders, "main_params_dtype": main_params_dtype})
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
    key = prec.step_key(pr.seed, int(state.step) + 1, buffer) if pr.stochastic else (0, 0)
    K.get(kernel).adam_step(*_view(param, grad, state, pr, offset), s,
                            K.Flags(decoupled=decoupled, amsgrad=amsgrad, maximize=maximize,
                                    key=(int(key[0]), int(key[1]))))
    return replace(state, step=int(state.step) + 1)
