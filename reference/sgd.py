"""Reference SGD with momentum (``torch.optim.SGD``): npadam's numerical contract, in plain NumPy.

One step on element i::

    g   = grad * scale                       # scale = inv_loss_scale * clip_coef (one scalar)
    if maximize:      g = -g
    if wd != 0:       g = fma(wd, p, g)                      # torch: grad.add(p, alpha=wd)
    if momentum != 0:
        if first:     buf = g                                # torch: buf = grad.clone()
        else:         buf = fma(1 - dampening, g, momentum * buf)
                                            # torch: buf.mul_(momentum).add_(g, alpha=1 - dampening)
        if nesterov:  g = fma(momentum, buf, g)              # torch: grad.add(buf, alpha=momentum)
        else:         g = buf
    p   = fma(-lr, g, p)                                     # torch: p.add_(g, alpha=-lr)

``fma(a, b, c)`` is the IEEE fused multiply-add ``a * b + c`` with one rounding. This
is deliberate, unlike the Adam contract (``reference.adamw``: no fused operations):
torch's CPU kernel for ``add(x, y, alpha=a)`` is ``vec::fmadd(y, a, x)``, a hardware
FMA on every AVX2 / AVX-512 / NEON build, tail elements included, so with ``fma`` the
float32 path is bit for bit ``torch.optim.SGD`` (tested). A torch running at the
DEFAULT CPU capability (``ATEN_CPU_CAPABILITY=default``, or a CPU without FMA)
rounds ``x + a * y`` twice instead and differs by an ulp here and there.

``first`` is per tensor: true until the tensor's first update with ``momentum != 0``
(torch creates the buffer then; a tensor without a gradient, or a step with
momentum 0, leaves it as it is). The scalars are rounded to float32 once per step
on the host (``host_scalars``): ``wd``, ``momentum``, ``1 - dampening`` (computed in
float64, as torch computes ``alpha=1 - dampening`` in Python) and ``-lr``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .adamw import canonical_nan

# momentum modes: no buffer, heavy ball, Nesterov
PLAIN, MOMENTUM, NESTEROV = 0, 1, 2


@dataclass(frozen=True)
class HostScalars:
    """The per-step scalars, rounded to float32."""

    scale: np.float32
    weight_decay: np.float32
    momentum: np.float32
    one_minus_dampening: np.float32
    neg_lr: np.float32


def host_scalars(*, lr: float, momentum: float, dampening: float, weight_decay: float,
                 grad_scale: float = 1.0) -> HostScalars:
    """The step's scalars: each computed in float64 and rounded once to float32."""
    c = np.float32
    return HostScalars(scale=c(grad_scale), weight_decay=c(weight_decay), momentum=c(momentum),
                       one_minus_dampening=c(1.0 - dampening), neg_lr=c(-lr))


def mode(momentum: float, nesterov: bool) -> int:
    """The momentum mode of a step: ``PLAIN`` (momentum == 0), ``MOMENTUM`` or ``NESTEROV``."""
    if momentum == 0:
        return PLAIN
    return NESTEROV if nesterov else MOMENTUM


def fma(a: np.ndarray, b: np.ndarray, c: np.ndarray) -> np.ndarray:
    """float32 ``a * b + c`` rounded once (IEEE fusedMultiplyAdd), exactly, in NumPy.

    The product of two float32 values is exact in float64. The float64 sum is made
    round-to-odd (TwoSum gives its exact error; an inexact even result moves one ulp
    towards the exact value), and a round-to-odd result with more than 24 + 2 bits
    rounds to float32 exactly as the exact value would (no double-rounding error)."""
    a, b, c = (np.asarray(x, np.float32) for x in (a, b, c))
    with np.errstate(invalid="ignore", over="ignore"):  # inf and NaN inputs, float32 overflow: as IEEE says
        x = a.astype(np.float64) * b.astype(np.float64)
        y = c.astype(np.float64)
        s = np.asarray(x + y)
        bb = s - x
        err = (x - (s - bb)) + (y - bb)
        bits = s.view(np.uint64)
        inexact_even = np.isfinite(s) & (err != 0) & ((bits & np.uint64(1)) == 0)
        away_from_zero = (err > 0) == (s > 0)
        bits = np.where(inexact_even, np.where(away_from_zero, bits + np.uint64(1), bits - np.uint64(1)), bits)
        return np.asarray(bits).view(np.float64).astype(np.float32)


def apply_step(param: np.ndarray, grad: np.ndarray, buf: np.ndarray | None, s: HostScalars, *,
               maximize: bool = False, weight_decay: bool = False, momentum: int = PLAIN,
               first: bool = False) -> None:
    """One step in place on flat float32 arrays, the scalars already computed.

    ``weight_decay``: whether the group's weight decay is nonzero (as a Python float);
    ``momentum``: the mode (``mode``); ``buf``: the momentum buffer (unused for ``PLAIN``);
    ``grad`` may be any float dtype and is widened exactly first."""
    g = grad.astype(np.float32) * s.scale
    if maximize:
        g = -g
    if weight_decay:
        g = fma(s.weight_decay, param, g)
    if momentum != PLAIN:
        if first:
            buf[...] = canonical_nan(g)
        else:
            buf[...] = canonical_nan(fma(s.one_minus_dampening, g, s.momentum * buf))
        g = fma(s.momentum, buf, g) if momentum == NESTEROV else buf
    param[...] = canonical_nan(fma(s.neg_lr, g, param))


def sgd_step(param: np.ndarray, grad: np.ndarray, buf: np.ndarray | None, *, lr: float, momentum: float = 0.0,
             dampening: float = 0.0, weight_decay: float = 0.0, nesterov: bool = False, maximize: bool = False,
             first: bool = False, grad_scale: float = 1.0) -> None:
    """One ``torch.optim.SGD`` step in place (float32 ``param`` and ``buf``); ``first``: the
    tensor's first update with momentum (its buffer starts as the gradient)."""
    s = host_scalars(lr=lr, momentum=momentum, dampening=dampening, weight_decay=weight_decay,
                     grad_scale=grad_scale)
    apply_step(param, grad, buf, s, maximize=maximize, weight_decay=weight_decay != 0,
               momentum=mode(momentum, nesterov), first=first)
