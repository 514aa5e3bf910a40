"""Reference AdamW / Adam step: the numerical contract of npadam, in plain NumPy.

One step on element i with step count t (1-based, after increment)::

    g  = grad * scale                  # scale = inv_loss_scale * clip_coef (one scalar)
    if maximize:      g = -g
    if not decoupled: g = g + wd * p   # Adam with L2 (torch.optim.Adam)
    m  = b1 * m + (1 - b1) * g
    v  = b2 * v + (1 - b2) * (g * g)
    vh = max(vmax, v) if amsgrad else v    (vmax <- vh)
    if decoupled:     p = p * (1 - lr * wd)        # AdamW (torch.optim.AdamW)
    p  = p - (lr / bc1) * m / (sqrt(vh) / sqrt(bc2) + eps)
    bc1 = 1 - b1**t, bc2 = 1 - b2**t   (both 1 without bias correction)

Every binary operation above is one IEEE float32 operation, evaluated left to
right as written (no fused multiply-add). Every value written (m, v, vmax, p) goes
through ``canonical_nan``: a NaN is always the canonical ``0x7FC00000``. The scalars ``1 - b1``, ``1 - lr*wd``,
``lr / bc1``, ``sqrt(bc2)`` ... are computed once on the host in float64 and then
rounded to float32 (``host_scalars``); kernels use exactly these values. With
``dtype=np.float64`` the same formula runs in float64 (for accuracy tests).

The global gradient norm uses a fixed blocking: each buffer is cut into blocks
of ``NORM_BLOCK`` elements from its start; inside a block element ``q`` belongs
to lane ``q % NORM_LANES``, each lane is a sequential float64 sum of squares
(row after row), the lanes are added in order, and the block sums are added
sequentially, buffer after buffer. Squares of float32 values are exact in
float64, so only the order of the additions matters, and it is fixed; the lanes
let CPU SIMD units and GPU threads compute it at memory speed.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

NORM_BLOCK = 1 << 16
NORM_LANES = 64


@dataclass(frozen=True)
class HostScalars:
    """The per-step scalars, already rounded to the compute dtype."""

    scale: np.floating
    beta1: np.floating
    one_minus_beta1: np.floating
    beta2: np.floating
    one_minus_beta2: np.floating
    weight_decay: np.floating
    decay: np.floating          # 1 - lr * wd (decoupled), else 1
    step_size: np.floating      # lr / bc1
    bc2_sqrt: np.floating       # sqrt(bc2)
    eps: np.floating


def host_scalars(*, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float, step: int,
                 decoupled: bool = True, bias_correction: bool = True, grad_scale: float = 1.0,
                 dtype: type = np.float32) -> HostScalars:
    """Compute the step's scalars in float64, round each once to ``dtype``."""
    if bias_correction:
        bc1 = 1.0 - beta1 ** step
        bc2 = 1.0 - beta2 ** step
    else:
        bc1 = bc2 = 1.0
    c = dtype
    return HostScalars(scale=c(grad_scale), beta1=c(beta1), one_minus_beta1=c(1.0 - beta1), beta2=c(beta2),
                       one_minus_beta2=c(1.0 - beta2), weight_decay=c(weight_decay),
                       decay=c(1.0 - lr * weight_decay) if decoupled else c(1.0),
                       step_size=c(lr / bc1), bc2_sqrt=c(math.sqrt(bc2)), eps=c(eps))


def adam_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
              max_exp_avg_sq: np.ndarray | None, *, lr: float, beta1: float, beta2: float, eps: float,
              weight_decay: float, step: int, decoupled: bool = True, amsgrad: bool = False,
              maximize: bool = False, bias_correction: bool = True, grad_scale: float = 1.0) -> None:
    """One step, in place, on flat arrays of one dtype (float32 or float64).

    ``param`` is the (master) parameter; ``grad`` may be any float dtype and is
    converted exactly to ``param.dtype`` first. ``step`` is the 1-based step count.
    """
    dt = param.dtype.type
    s = host_scalars(lr=lr, beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, step=step,
                     decoupled=decoupled, bias_correction=bias_correction, grad_scale=grad_scale, dtype=dt)
    apply_step(param, grad, exp_avg, exp_avg_sq, max_exp_avg_sq, s, decoupled=decoupled, amsgrad=amsgrad,
               maximize=maximize)


def apply_step(param: np.ndarray, grad: np.ndarray, exp_avg: np.ndarray, exp_avg_sq: np.ndarray,
               max_exp_avg_sq: np.ndarray | None, s: HostScalars, *, decoupled: bool = True,
               amsgrad: bool = False, maximize: bool = False) -> None:
    """The element-wise part of ``adam_step``, with the scalars already computed."""
    g = grad.astype(param.dtype) * s.scale
    if maximize:
        g = -g
    if not decoupled:
        g = g + s.weight_decay * param
    exp_avg[...] = canonical_nan(s.beta1 * exp_avg + s.one_minus_beta1 * g)
    exp_avg_sq[...] = canonical_nan(s.beta2 * exp_avg_sq + s.one_minus_beta2 * (g * g))
    if amsgrad:
        # the new exp_avg_sq where it is larger or NaN, else the stored max: a tie (+0 against a stored
        # -0) keeps the stored value (np.maximum's choice between equal zeros is not specified)
        max_exp_avg_sq[...] = np.where((exp_avg_sq > max_exp_avg_sq) | np.isnan(exp_avg_sq), exp_avg_sq,
                                       max_exp_avg_sq)
        vh = max_exp_avg_sq
    else:
        vh = exp_avg_sq
    if decoupled:
        param[...] = param * s.decay
    param[...] = canonical_nan(param - s.step_size * exp_avg / (np.sqrt(vh) / s.bc2_sqrt + s.eps))


def canonical_nan(x: np.ndarray) -> np.ndarray:
    """``x`` with every NaN replaced by the canonical quiet NaN (float32 ``0x7FC00000``, positive).

    Every value the update writes (moments, vmax, params, SGD's buffer) goes through this,
    so a NaN the update produces (``skip_nonfinite=False`` with non-finite grads, ``eps=0``
    with a zero grad) has the same bits on every kernel: IEEE 754 leaves the sign and
    payload of an operation's NaN open (x86 propagates an operand's, in whatever operand
    order the compiler chose; GPUs write their own canonical NaN)."""
    x = np.asarray(x)
    nan = np.isnan(x)
    if nan.any():
        x = np.where(nan, x.dtype.type(np.nan), x)
    return x


def block_sumsq(grad: np.ndarray, block: int = NORM_BLOCK, lanes: int = NORM_LANES) -> np.ndarray:
    """float64 sums of squares of consecutive ``block``-element blocks (``block % lanes == 0``).

    Per block: lane sums ``sum over rows r of x[r * lanes + l]**2`` (sequential in r),
    then the sequential sum of the lanes. Zero padding changes no sum.
    """
    x = grad.astype(np.float64).ravel()
    nblocks = -(-x.size // block)
    if not nblocks:
        return np.zeros(0)
    padded = np.zeros(nblocks * block)
    padded[: x.size] = x
    sq = padded.reshape(nblocks, block // lanes, lanes) ** 2
    lane_sums = np.cumsum(sq, axis=1)[:, -1, :]
    return np.cumsum(lane_sums, axis=1)[:, -1]


def global_sumsq(buffers: list[np.ndarray], block: int = NORM_BLOCK) -> float:
    """Sequential float64 sum of every buffer's block sums, buffer after buffer."""
    sums = [block_sumsq(b, block) for b in buffers]
    flat = np.concatenate(sums) if sums else np.zeros(0)
    return float(np.cumsum(flat)[-1]) if flat.size else 0.0


def grad_norm_and_finite(buffers: list[np.ndarray], block: int = NORM_BLOCK) -> tuple[float, bool]:
    """The global L2 norm of the (raw) gradients and whether every element is finite."""
    total = global_sumsq(buffers, block)
    return math.sqrt(total), math.isfinite(total)


def clip_coefficient(grad_norm: float, max_norm: float | None) -> float:
    """torch's ``clip_grad_norm_`` factor: ``min(1, max_norm / (norm + 1e-6))``."""
    if max_norm is None:
        return 1.0
    return min(1.0, max_norm / (grad_norm + 1e-6))


def current_master(master: np.ndarray, param: np.ndarray) -> np.ndarray:
    """The fp32 value a low-precision param's update starts from, in place in ``master``.

    The param is the source of truth: where its stored bits are not the rounding of the
    master (someone wrote the param since npadam's last update: a re-init, ``load_state_dict``,
    an EMA swap, ``p.data.clamp_()``), the master is replaced by the param widened exactly.
    Elsewhere the master keeps the precision the param cannot hold."""
    bits = param.view(np.uint16)
    stale = to_storage(master, param.dtype).view(np.uint16) != bits
    if stale.any():
        master[stale] = param[stale].astype(np.float32)
    return master


def to_storage(master: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """Round float32 masters to a storage dtype (round to nearest even, via ml_dtypes)."""
    return master.astype(dtype)
