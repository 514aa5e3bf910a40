"""Numba CPU kernels: the fused AdamW and SGD passes and the fixed-blocking gradient norm.

Imported lazily (importing this module imports Numba; compiled functions are
cached on disk with ``cache=True``). No fastmath: every float32 operation is the
IEEE operation the reference performs, in the same order, so results are bit for
bit those of ``reference.adamw`` (and ``reference.sgd``, whose fused
multiply-adds are explicit ``fma`` calls), whatever ``NUMBA_NUM_THREADS`` is.

Storage kinds (compile-time options): 0 = float32, 1 = bfloat16 and 2 = float16,
both read and written as ``uint16`` bits (no AVX-512 needed).

Tensors are passed as a *pointer table* (an int64 array of the addresses of their
first elements, the way multi-tensor kernels on GPUs take them) with their offsets
in the flat state buffers; work items ``(tensor, lo, hi)`` of at most ``CHUNK``
elements are distributed over threads with ``prange``. A table costs one integer
per tensor to build, where a Numba typed list of array views cost ~15 us per
tensor per step (measured on the 150-tensor GPT of tools/bench_torch.py), and it
needs no typed-list compilation on the first step. The caller keeps the arrays
alive and checks shapes, dtypes and contiguity (``npadam._engine``).

The threading layer is chosen before the first parallel launch (``threading``):
TBB when it is installed, else the work queue; never OpenMP, whose first launch
changes the thread count of every other OpenMP user in the process (torch's).
"""

from __future__ import annotations

import numpy as np
from numba import carray, njit, prange, types
from llvmlite import ir as llvm_ir
from numba.core import cgutils
from numba.extending import intrinsic

from . import threads as _threads
from .compile_lock import serialize_compiles, variant_name

_threads.configure()

CHUNK = 1 << 15
LANES = 64  # == reference.adamw.NORM_LANES; divides the layout alignment (64)
PARALLEL_MIN = 1 << 18  # buffers smaller than this run the serial build

F32, BF16, F16, F8E4M3, F8E5M2 = 0, 1, 2, 3, 4  # reference.precision's kinds
FP8_BLOCK = 256  # reference.precision.FP8_BLOCK


@intrinsic
def address(typingctx, addr):
    """An int64 address as a ``void*`` (for ``numba.carray(address(a), n, dtype)``).

    A module global, not a closure variable: Numba keys its disk cache on the pickled
    closure values, and an intrinsic pickles differently in every process."""
    if not isinstance(addr, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        return builder.inttoptr(args[0], cgutils.voidptr_t)

    return types.voidptr(addr), codegen


@njit(inline="always", cache=True)
def bf16_to_f32(u):
    return np.uint32(np.uint32(u) << 16).view(np.float32)


@njit(inline="always", cache=True)
def f32_to_bf16(x):
    """Round to nearest even; NaN becomes the quiet NaN 0x7fc0 with its sign (as ml_dtypes)."""
    b = np.float32(x).view(np.uint32)
    if (b & np.uint32(0x7FFFFFFF)) > np.uint32(0x7F800000):
        return np.uint16(np.uint32(0xFFC0) if b >> 31 else np.uint32(0x7FC0))
    lsb = (b >> 16) & np.uint32(1)
    return np.uint16(np.uint32(b + np.uint32(0x7FFF) + lsb) >> 16)


@njit(inline="always", cache=True)
def f16_to_f32(u):
    h = np.uint32(u)
    sign = np.uint32((h & np.uint32(0x8000)) << 16)
    exp = (h >> 10) & np.uint32(0x1F)
    mant = h & np.uint32(0x3FF)
    if exp == 0:
        mag = np.float32(mant) * np.float32(5.9604644775390625e-08)  # mant * 2**-24, exact
        return np.float32(-mag) if sign else mag
    if exp == 31:
        return np.uint32(sign | np.uint32(0x7F800000) | (mant << 13)).view(np.float32)
    return np.uint32(sign | ((exp + np.uint32(112)) << 23) | (mant << 13)).view(np.float32)


@njit(inline="always", cache=True)
def f32_to_f16(x):
    """Round to nearest even, NumPy's ``astype(float16)`` bit for bit (NaN payloads included)."""
    f = np.float32(x).view(np.uint32)
    h_sgn = np.uint32((f & np.uint32(0x80000000)) >> 16)
    f_exp = f & np.uint32(0x7F800000)
    if f_exp >= np.uint32(0x47800000):
        f_sig = f & np.uint32(0x007FFFFF)
        if f_exp == np.uint32(0x7F800000) and f_sig != 0:
            ret = np.uint32(0x7C00) + (f_sig >> 13)
            if ret == np.uint32(0x7C00):
                ret += np.uint32(1)
            return np.uint16(h_sgn + ret)
        return np.uint16(h_sgn + np.uint32(0x7C00))
    if f_exp <= np.uint32(0x38000000):
        if f_exp < np.uint32(0x33000000):
            return np.uint16(h_sgn)
        e = f_exp >> 23
        f_sig = np.uint32(0x00800000) + (f & np.uint32(0x007FFFFF))
        f_sig = np.uint32(f_sig >> (np.uint32(113) - e))
        if ((f_sig & np.uint32(0x3FFF)) != np.uint32(0x1000)) or (f & np.uint32(0x7FF)) != 0:
            f_sig = np.uint32(f_sig + np.uint32(0x1000))
        return np.uint16(h_sgn + (f_sig >> 13))
    h_exp = np.uint32((f_exp - np.uint32(0x38000000)) >> 13)
    f_sig = f & np.uint32(0x007FFFFF)
    if (f_sig & np.uint32(0x3FFF)) != np.uint32(0x1000):
        f_sig = np.uint32(f_sig + np.uint32(0x1000))
    return np.uint16(h_sgn + h_exp + (f_sig >> 13))


@njit(inline="always", cache=True)
def load(a, j, kind):
    """Element ``j`` of a storage array as float32."""
    if kind == BF16:
        return bf16_to_f32(a[j])
    if kind == F16:
        return f16_to_f32(a[j])
    return np.float32(a[j])


@njit(inline="always", cache=True)
def decode(u, kind):
    """uint16 storage bits of ``kind`` (BF16 or F16) as float32 (exact)."""
    if kind == BF16:
        return bf16_to_f32(u)
    return f16_to_f32(u)


@njit(inline="always", cache=True)
def encode(x, kind):
    """float32 to the uint16 storage of ``kind`` (BF16 or F16)."""
    if kind == BF16:
        return f32_to_bf16(x)
    return f32_to_f16(x)


@njit(inline="always", cache=True)
def narrow(x, kind, stochastic, r):
    """``reference.precision.narrow`` for one float32: float32 (returned as is), or the uint16
    bits of bfloat16 (nearest even, or stochastic with the low 16 bits of ``r``) or float16
    (nearest even); a NaN becomes the kind's canonical NaN."""
    if kind == BF16:
        if x != x:
            return np.uint16(0x7FC0)
        b = np.float32(x).view(np.uint32)
        if stochastic:
            return np.uint16(np.uint32(b + (np.uint32(r) & np.uint32(0xFFFF))) >> np.uint32(16))
        lsb = (b >> np.uint32(16)) & np.uint32(1)
        return np.uint16(np.uint32(b + np.uint32(0x7FFF) + lsb) >> np.uint32(16))
    if x != x:
        return np.uint16(0x7E00)
    return f32_to_f16(x)


@njit(inline="always", cache=True)
def _rotl(x, r):
    return np.uint32(np.uint32(x << np.uint32(r)) | np.uint32(x >> np.uint32(32 - r)))


@njit(inline="always", cache=True)
def _mix(x0, x1, r):
    """One Threefry round: ``x0 += x1; x1 = rotl(x1, r) ^ x0`` in uint32 (Numba widens uint32 sums:
    every result is truncated back)."""
    x0 = np.uint32(x0 + x1)
    return x0, np.uint32(_rotl(x1, r) ^ x0)


_ROTATIONS = (13, 15, 26, 6, 17, 29, 16, 24)  # reference.precision._ROT


@njit(inline="always", cache=True)
def threefry2x32(k0, k1, c0, c1):
    """``reference.precision.threefry2x32`` (Threefry-2x32-20) of one counter pair: five blocks of
    four rounds, each followed by a key injection (LLVM unrolls the constant loops)."""
    ks = (np.uint32(k0), np.uint32(k1), np.uint32(k0 ^ k1 ^ np.uint32(0x1BD11BDA)))
    x0 = np.uint32(c0 + ks[0])
    x1 = np.uint32(c1 + ks[1])
    for block in range(5):
        for r in range(4):
            x0, x1 = _mix(x0, x1, _ROTATIONS[(block % 2) * 4 + r])
        x0 = np.uint32(x0 + ks[(block + 1) % 3])
        x1 = np.uint32(x1 + ks[(block + 2) % 3] + np.uint32(block + 1))
    return x0, x1


@njit(inline="always", cache=True)
def join_remainder(bits, rem):
    """``reference.precision.join_remainder`` for one bf16 param (uint16 bits) and int16 remainder."""
    r = np.uint16(rem)
    hi = np.uint32(bits) - np.uint32(1) if rem < 0 else np.uint32(bits)
    return np.uint32(np.uint32(hi << np.uint32(16)) | np.uint32(r)).view(np.float32)


@njit(inline="always", cache=True)
def split_high(x):
    """The bf16 param bits of ``reference.precision.split_remainder`` (ties away from zero)."""
    b = np.float32(x).view(np.uint32)
    return np.uint16(np.uint32(b >> np.uint32(16)) + np.uint32((b >> np.uint32(15)) & np.uint32(1)))


@njit(inline="always", cache=True)
def split_low(x):
    """The int16 remainder of ``reference.precision.split_remainder``."""
    return np.int16(np.uint16(np.float32(x).view(np.uint32) & np.uint32(0xFFFF)))


def _fp8_values(kind: int) -> np.ndarray:
    """The float32 value of each of the 256 codes of an fp8 kind: ``reference.precision.dequantize``'s
    own conversion (ml_dtypes), NaN bits included. A module global, so Numba compiles it in as a
    constant table: a table load per element where decoding the bit fields took ~6 ns (branches)."""
    from ..reference import precision as prec

    return np.arange(256, dtype=np.uint8).view(prec.fp8_dtype(kind)).astype(np.float32)


_E4M3_VALUES = _fp8_values(F8E4M3)
_E5M2_VALUES = _fp8_values(F8E5M2)


@njit(inline="always", cache=True)
def fp8_decode(code, kind):
    """An fp8 code (uint8) as float32, exactly (``ml_dtypes`` float8_e4m3fn / float8_e5m2)."""
    if kind == F8E4M3:
        return _E4M3_VALUES[code]
    return _E5M2_VALUES[code]


@njit(inline="always", cache=True)
def fp8_encode(q, kind):
    """float32 ``q`` (finite with ``|q| <= FP8_MAX``, or NaN) to an fp8 code, round to nearest even
    (``ml_dtypes``); NaN becomes ``reference.precision.FP8_NAN``.

    Both encodings (normal and subnormal) are computed and one is selected, NaN last: no branches, so
    that the quantizing loop vectorizes (the branching form cost ~4 ns per element)."""
    if kind == F8E4M3:
        mant, bias, nan_code = 3, 7, np.uint32(0x7F)
    else:
        mant, bias, nan_code = 2, 15, np.uint32(0x7E)
    b = np.float32(q).view(np.uint32)
    sign = np.uint32((b >> np.uint32(31)) << np.uint32(7))
    a = b & np.uint32(0x7FFFFFFF)
    shift = np.uint32(23 - mant)
    r = np.uint32(a + (np.uint32(1) << (shift - np.uint32(1))) - np.uint32(1) + ((a >> shift) & np.uint32(1)))
    normal = np.uint32((r >> shift) - np.uint32((127 - bias) << mant))  # a normal fp8 value (or its rounding)
    # subnormal: |q| in units of the smallest subnormal, rounded half to even (|q| capped at 1 so that the
    # unselected conversion stays in range; selects, not np.minimum/np.abs, which kept the loop scalar)
    aq = np.uint32(a).view(np.float32)
    aq = aq if aq < np.float32(1.0) else np.float32(1.0)
    sub = np.uint32(np.int32(np.rint(aq * np.float32(2.0 ** (mant - 1 + bias)))))
    code = normal if (a >> np.uint32(23)) >= np.uint32(128 - bias) else sub
    return np.uint8(nan_code if q != q else sign | code)


@njit(inline="always", cache=True)
def quantize_block(T, n, S, off, Q, qi, kind):
    """``reference.precision.quantize`` of the ``n`` float32 values ``T[:n]`` (one block) into codes
    ``S[off:off + n]`` and scale ``Q[qi]``."""
    fmax = np.float32(448.0) if kind == F8E4M3 else np.float32(57344.0)
    # max |T| as the unsigned max of the magnitude bits: the same order for numbers, and the canonical
    # NaN (0x7FC00000; the pass writes NaNs canonical into T) above inf: a NaN makes amax NaN, as the
    # reference's max does; an integer max reduction vectorizes where the float compare-and-branch did not
    abits = np.uint32(0)
    for j in range(n):
        abits = max(abits, np.float32(T[j]).view(np.uint32) & np.uint32(0x7FFFFFFF))
    amax = np.uint32(abits).view(np.float32)
    sc = np.float32(amax / fmax)
    Q[qi] = sc
    for j in range(n):
        q = T[j] if sc == 0 else np.float32(T[j] / sc)
        q = fmax if q > fmax else q  # selects; NaN passes both
        q = -fmax if q < -fmax else q
        S[off + j] = fp8_encode(q, kind)


@njit(inline="always", cache=True)
def fp8_decode_block(S, lo, hi, scale, T, kind):
    """``T[:hi - lo]`` = the codes ``S[lo:hi]`` (one block) as float32 times the block's ``scale``
    (``reference.precision.dequantize``)."""
    for j in range(lo, hi):
        T[j - lo] = fp8_decode(S[j], kind) * scale


ADAM, SGD = 0, 1  # the algorithm of a fused pass
_CANONICAL_NAN = np.float32(np.nan)  # 0x7FC00000


@njit(inline="always")
def canonical_nan(x):
    """``reference.adamw.canonical_nan`` for one float32.

    The pass does not apply it to every value it writes (three selects per element cost 7%
    of the fp32 update here): it notes whether a written param is NaN (every NaN the update
    makes reaches the param: m, v, vmax and SGD's buffer all feed it) and, only then,
    canonicalizes the work item's outputs in a second loop."""
    return x if x == x else _CANONICAL_NAN


@intrinsic
def fma(typingctx, a, b, c):
    """float32 ``a * b + c`` with one rounding (``llvm.fma.f32``: the FMA instruction where the CPU
    has one, an exact library call elsewhere); ``reference.sgd.fma``. A module global, like ``address``."""
    if not all(x == types.float32 for x in (a, b, c)):
        return None

    def codegen(context, builder, signature, args):
        f = llvm_ir.FloatType()
        fn = cgutils.get_or_insert_function(builder.module, llvm_ir.FunctionType(f, [f, f, f]), "llvm.fma.f32")
        return builder.call(fn, args)

    return types.float32(types.float32, types.float32, types.float32), codegen


def _make_pass(ALGO: int, PK: int, GK: int, OPT1, OPT2, PARALLEL: bool, MK: int = F32, VK: int = F32,
               SR: bool = False, REM: bool = False, WK: int = F32):
    """Build the fused pass of one algorithm for one combination of compile-time options.

    ``ALGO == ADAM``: ``OPT1`` = amsgrad, ``OPT2`` = decoupled (``reference.adamw``);
    ``ALGO == SGD``: ``OPT1`` = the momentum mode (``reference.sgd``), ``OPT2`` unused.
    Adam's state storage (``reference.precision``): ``MK``/``VK`` the kinds of ``m`` and of ``v``
    and ``vmax`` (uint16 arrays for bf16/fp16), ``SR`` stochastic rounding of bf16 moments with
    random words of element ``base + flat index`` under the key ``(k0, k1)``, ``REM`` param
    remainders (bf16 params; ``master`` is then the int16 remainder array), ``WK`` the master's kind
    (float32, or float16 bits: ``main_params_dtype``; the param is then the rounding of the fp16
    master, so that the master check below holds).

    One source for both: the work items, pointer tables, the fp32 master select and
    the write-back are shared; only the element update differs. The closure constants
    fold the branches away (Numba prunes them before typing), so the inner loop is
    straight-line code that LLVM vectorizes. Numba keys its disk cache on the closure
    values too, so each variant caches apart. ``PARALLEL=False`` compiles the same body
    serially (``prange`` is ``range``).

    Arguments: ``(params, grads, offsets, work_t, work_lo, work_hi, master, s1, s2, s3,
    q1, q2, q3, maximize, scale, k0, k1, base, *c)`` with ``q1, q2, q3`` the fp8 block scales of
    ``s1, s2, s3`` (unused for other kinds), and the state arrays ``s1, s2, s3`` = ``m, v, vmax`` (Adam) or
    ``momentum_buffer`` and two unused arrays (SGD), and the scalars ``c`` of
    ``adam_pass`` / ``sgd_pass``.
    """

    PDT = np.float32 if PK == F32 else np.uint16
    GDT = np.float32 if GK == F32 else np.uint16
    PSIZE = 4 if PK == F32 else 2
    GSIZE = 4 if GK == F32 else 2
    IS_ADAM = ALGO == ADAM
    AMSGRAD = IS_ADAM and bool(OPT1)
    DECOUPLED = IS_ADAM and bool(OPT2)
    MODE = 0 if IS_ADAM else int(OPT1)  # SGD: 0 plain, 1 momentum, 2 Nesterov (reference.sgd)
    USE_S1 = IS_ADAM or MODE != 0
    USE_S2 = IS_ADAM
    # float32 state the NaN loop canonicalizes (16-bit kinds are written canonical); plain constants,
    # since Numba prunes ``if CONST:`` but not ``if A and B:``
    CANON1 = USE_S1 and MK == F32
    CANON2 = USE_S2 and VK == F32
    CANON3 = AMSGRAD and VK == F32
    M8 = IS_ADAM and MK in (F8E4M3, F8E5M2)  # fp8 moments: computed into a block, then quantized
    V8 = IS_ADAM and VK in (F8E4M3, F8E5M2)
    X8 = V8 and AMSGRAD
    FP8_STATE = M8 or V8
    BLK = FP8_BLOCK if FP8_STATE else CHUNK  # one block per work item without fp8 state

    def fused_pass(params, grads, offsets, work_t, work_lo, work_hi, master, s1, s2, s3, q1, q2, q3, maximize, scale,
                   k0, k1, base, *c):
        _cache_key = PARALLEL  # noqa: F841 - PARALLEL must be a closure variable: Numba keys its disk cache on those
        for w in prange(work_t.shape[0]):
            t = work_t[w]
            lo = work_lo[w]
            hi = work_hi[w]
            a = offsets[t] + lo
            b = offsets[t] + hi
            P = carray(address(params[t] + lo * PSIZE), hi - lo, PDT)
            G = carray(address(grads[t] + lo * GSIZE), hi - lo, GDT)
            S1 = s1[a:b] if USE_S1 else s1
            S2 = s2[a:b] if USE_S2 else s2
            S3 = s3[a:b] if AMSGRAD else s3
            W = master[a:b] if PK != F32 else master
            if M8:  # a block of new fp8 moments (allocated only by the fp8 builds: a hot loop never sees it)
                TM = np.empty(FP8_BLOCK, np.float32)
            if V8:
                TV = np.empty(FP8_BLOCK, np.float32)
            if X8:
                TX = np.empty(FP8_BLOCK, np.float32)
            nan = False
            n = P.shape[0]
            for b0 in range(0, n, BLK):
                b1 = min(b0 + BLK, n) if FP8_STATE else n  # without fp8 state: one pass over the work item
                # fp8 moments: the block's old values decoded into the scratch first (a table lookup per
                # element does not vectorize; the element loop below then reads and writes the scratch)
                if M8:
                    fp8_decode_block(S1, b0, b1, q1[(a + b0) >> 8], TM, MK)
                if V8:
                    fp8_decode_block(S2, b0, b1, q2[(a + b0) >> 8], TV, VK)
                if X8:
                    fp8_decode_block(S3, b0, b1, q3[(a + b0) >> 8], TX, VK)
                # the block's pieces, indexed from 0 (a loop over range(b0, b1) indexing the whole arrays
                # did not vectorize: Numba cannot tell that the index is not negative)
                Pb = P[b0:b1]
                Gb = G[b0:b1]
                Wb = W[b0:b1] if PK != F32 else W
                S1b = S1[b0:b1] if USE_S1 else S1
                S2b = S2[b0:b1] if USE_S2 else S2
                S3b = S3[b0:b1] if AMSGRAD else S3
                for j in range(b1 - b0):
                    g = load(Gb, j, GK) * scale
                    if maximize:
                        g = -g
                    if PK == F32:
                        p = load(Pb, j, F32)
                    elif REM:
                        p = join_remainder(Pb[j], Wb[j])
                    else:
                        if WK == F32:
                            wv = Wb[j]
                        else:
                            wv = decode(Wb[j], F16)
                        stored = Pb[j]
                        # the param was written since npadam's last update: it wins (current_master);
                        # a select, not a branch, so that the loop still vectorizes
                        p = wv if encode(wv, PK) == stored else decode(stored, PK)
                    if IS_ADAM:  # c = (b1, 1 - b1, b2, 1 - b2, wd, 1 - lr*wd, lr/bc1, sqrt(bc2), eps)
                        if not DECOUPLED:
                            g = g + c[4] * p
                        if M8:
                            mo = TM[j]
                        else:
                            mo = load(S1b, j, MK)
                        if V8:
                            vo2 = TV[j]
                        else:
                            vo2 = load(S2b, j, VK)
                        mi = c[0] * mo + c[1] * g
                        vi = c[2] * vo2 + c[3] * (g * g)
                        r0 = np.uint32(0)
                        r1 = np.uint32(0)
                        if SR:
                            idx = np.uint64(base + a + b0 + j)
                            r0, r1 = threefry2x32(k0, k1, np.uint32(idx & np.uint64(0xFFFFFFFF)),
                                                  np.uint32(idx >> np.uint64(32)))
                        if MK == F32:  # statements, not conditional expressions: Numba prunes these
                            S1b[j] = mi
                        elif M8:
                            TM[j] = canonical_nan(mi)  # as the reference's moments: one NaN in amax
                        else:
                            S1b[j] = narrow(mi, MK, SR, r0)
                        if VK == F32:
                            S2b[j] = vi
                        elif V8:
                            TV[j] = canonical_nan(vi)
                        else:
                            S2b[j] = narrow(vi, VK, SR, r1)
                        vh = vi
                        if AMSGRAD:
                            if X8:
                                vo = TX[j]
                            else:
                                vo = load(S3b, j, VK)
                            if not (vi > vo or vi != vi):
                                vh = vo
                            if VK == F32:
                                S3b[j] = vh
                            elif X8:
                                TX[j] = canonical_nan(vh)
                            else:
                                S3b[j] = narrow(vh, VK, SR, r1)
                        if DECOUPLED:
                            p = p * c[5]
                        p = p - c[6] * mi / (np.sqrt(vh) / c[7] + c[8])
                    else:  # c = (wd, momentum, 1 - dampening, -lr, wd != 0, first)
                        if c[4]:
                            g = fma(c[0], p, g)
                        if MODE != 0:
                            if c[5]:
                                buf = g
                            else:
                                buf = fma(c[2], g, c[1] * S1b[j])
                            S1b[j] = buf
                            g = fma(c[1], buf, g) if MODE == 2 else buf
                        p = fma(c[3], g, p)
                    nan |= p != p
                    if PK == F32:
                        Pb[j] = p
                    elif REM:
                        Pb[j] = split_high(p)
                        Wb[j] = split_low(p)
                    elif WK == F32:
                        Wb[j] = p
                        Pb[j] = encode(p, PK)
                    else:
                        h = narrow(p, F16, False, np.uint32(0))
                        Wb[j] = h
                        Pb[j] = encode(decode(h, F16), PK)
                if M8:  # the block's fp8 moments: one scale each (reference.precision.quantize)
                    quantize_block(TM, b1 - b0, S1, b0, q1, (a + b0) >> 8, MK)
                if V8:
                    quantize_block(TV, b1 - b0, S2, b0, q2, (a + b0) >> 8, VK)
                if X8:
                    quantize_block(TX, b1 - b0, S3, b0, q3, (a + b0) >> 8, VK)
            if nan:  # rare: make every NaN written the canonical one (reference.adamw.canonical_nan)
                for j in range(P.shape[0]):  # (16-bit moments were written canonical by narrow)
                    if CANON1:
                        S1[j] = canonical_nan(S1[j])
                    if CANON2:
                        S2[j] = canonical_nan(S2[j])
                    if CANON3:
                        S3[j] = canonical_nan(S3[j])
                    if PK == F32:
                        P[j] = canonical_nan(P[j])
                    elif REM:
                        q = canonical_nan(join_remainder(P[j], W[j]))
                        P[j] = split_high(q)
                        W[j] = split_low(q)
                    elif WK == F32:  # (an fp16 master was written canonical by narrow)
                        W[j] = canonical_nan(W[j])
                        P[j] = encode(W[j], PK)

    # its own cache files (compile_lock), and error_model="numpy": a division by zero gives inf/NaN
    # like the reference, torch and the parallel build (Python's model raises ZeroDivisionError
    # mid-pass, with the pass half written), and the division vectorizes (serial pass 4.5 -> 0.6 ns
    # per cached element)
    fused_pass.__qualname__ = variant_name("fused_pass", (ALGO, PK, GK, OPT1, OPT2, PARALLEL, MK, VK, SR, REM, WK))
    return serialize_compiles(njit(parallel=PARALLEL, cache=True, error_model="numpy")(fused_pass))


_PASSES: dict[tuple, object] = {}


def _fused_pass(*key):
    if key not in _PASSES:
        _PASSES[key] = _make_pass(*key)
    return _PASSES[key]


def adam_pass(pkind: int, gkind: int, amsgrad: bool, decoupled: bool, parallel: bool = True, mkind: int = F32,
              vkind: int = F32, stochastic: bool = False, remainders: bool = False, wkind: int = F32):
    """The compiled fused AdamW/Adam pass for these options (built on first use).

    ``parallel=False`` gives the serial build of the same source, for small buffers
    where starting threads costs more than the work (results are identical).

    Call it as ``kernel(params, grads, offsets, work_t, work_lo, work_hi, master, m, v,
    vmax, m_scale, v_scale, vmax_scale, maximize, scale, k0, k1, base, b1, 1 - b1, b2, 1 - b2, wd,
    1 - lr*wd, lr/bc1, sqrt(bc2), eps)`` (the scales: fp8 block scales, else empty) with ``params``/``grads`` int64 pointer tables (``pointers``), float32 scalars
    from ``npadam.reference.adamw.host_scalars``, the uint32 step key ``k0, k1``
    (``reference.precision.step_key``; used with ``stochastic``) and ``base``, the flat
    index of element 0 of the state arrays. ``mkind``/``vkind``/``stochastic``/``remainders``:
    the state storage (``_make_pass``).
    """
    stochastic = bool(stochastic) and BF16 in (int(mkind), int(vkind))
    return _fused_pass(ADAM, int(pkind), int(gkind), bool(amsgrad), bool(decoupled), bool(parallel), int(mkind),
                       int(vkind), stochastic, bool(remainders), int(wkind))


def sgd_pass(pkind: int, gkind: int, momentum: int, parallel: bool = True):
    """The compiled fused SGD pass for a momentum mode (``reference.sgd``: 0 plain, 1 momentum,
    2 Nesterov), built on first use; ``parallel`` as in ``adam_pass``.

    Call it as ``kernel(params, grads, offsets, work_t, work_lo, work_hi, master, buf, empty,
    empty, empty, empty, empty, maximize, scale, 0, 0, 0, wd, momentum, 1 - dampening, -lr, wd != 0,
    first)`` with float32
    scalars from ``npadam.reference.sgd.host_scalars`` and ``first`` the tensors' first step
    with momentum (the buffer starts as the gradient).
    """
    return _fused_pass(SGD, int(pkind), int(gkind), int(momentum), False, bool(parallel))


@njit(inline="always", cache=True)
def _lanes_add(acc, G, gkind):
    """acc[l] += G[r*LANES + l]**2 for every row r, in row order (G starts at lane 0)."""
    L = np.uint64(LANES)
    nfull = np.uint64(G.shape[0] // LANES)
    for r in range(nfull):
        base = np.uint64(r) * L
        for l in range(L):
            x = np.float64(load(G, base + np.uint64(l), gkind))
            acc[l] += x * x
    rest = np.uint64(G.shape[0]) - nfull * L
    for l in range(rest):
        x = np.float64(load(G, nfull * L + np.uint64(l), gkind))
        acc[l] += x * x


def _make_block_sumsq(GK: int, PARALLEL: bool):
    GDT = np.float32 if GK == F32 else np.uint16
    GSIZE = 4 if GK == F32 else 2

    def block_sumsq(grads, offsets, sizes, nblocks, block):
        """float64 sum of squares of each ``block`` of the buffer's index space.

        Inside a block, element ``q`` goes to lane ``q % LANES``; each lane is a
        sequential float64 sum over its rows, and the lanes are then added in order
        (see ``reference.adamw.block_sumsq``). Tensors start at multiples of 64 >= LANES
        apart, so every tensor piece starts at lane 0.
        """
        _cache_key = (GK, PARALLEL)  # noqa: F841 - see adam_pass: every build must cache apart
        out = np.zeros(nblocks, dtype=np.float64)
        ntensors = offsets.shape[0]
        for b in prange(nblocks):
            lo = b * block
            hi = lo + block
            acc = np.zeros(LANES, dtype=np.float64)
            t = np.searchsorted(offsets, lo, side="right") - 1
            if t < 0:
                t = 0
            while t < ntensors and offsets[t] < hi:
                n = sizes[t]
                s = lo - offsets[t]
                if s < 0:
                    s = 0
                e = hi - offsets[t]
                if e > n:
                    e = n
                if e > s:
                    _lanes_add(acc, carray(address(grads[t] + s * GSIZE), e - s, GDT), GK)
                t += 1
            total = 0.0
            for l in range(LANES):
                total += acc[l]
            out[b] = total
        return out

    block_sumsq.__qualname__ = variant_name("block_sumsq", (GK, PARALLEL))  # its own cache files (compile_lock)
    return serialize_compiles(njit(parallel=PARALLEL, cache=True)(block_sumsq))


_BLOCK_SUMSQ: dict[tuple[int, bool], object] = {}


def block_sumsq(grads, offsets, sizes, nblocks, block, gkind, parallel: bool = True):
    """float64 sum of squares of each ``block`` of the buffer's index space (see ``_make_block_sumsq``).

    ``grads``: int64 pointer table; ``offsets``/``sizes``: int64, the tensors' places in the buffer."""
    key = (int(gkind), bool(parallel))
    if key not in _BLOCK_SUMSQ:
        _BLOCK_SUMSQ[key] = _make_block_sumsq(*key)
    return _BLOCK_SUMSQ[key](grads, offsets, sizes, nblocks, block)


@njit(parallel=True, cache=True)
def cast_copy(src, dst, kind):
    """``dst[:] = src`` rounded to storage ``kind`` (initialises low-precision copies)."""
    for i in prange(src.shape[0]):
        dst[i] = encode(src[i], kind)


serialize_compiles(cast_copy)


@njit(parallel=True, cache=True)
def decode_copy(src, dst, kind):
    """``dst[:] = src`` widened from storage ``kind`` to float32 (exact)."""
    for i in prange(src.shape[0]):
        dst[i] = load(src, i, kind)


serialize_compiles(decode_copy)
