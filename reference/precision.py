"""Precision-aware optimizer state: the numerical contract, in plain NumPy.

The AdamW step itself is ``reference.adamw`` in float32, unchanged. What changes is how the state
is *stored* between steps:

**Moments** (``exp_avg``, ``exp_avg_sq``, ``max_exp_avg_sq``; SGD's momentum buffer) may be stored
as float32 (kind 0), bfloat16 (kind 1) or float16 (kind 2). A step widens them to float32 (exact),
runs the float32 update of ``reference.adamw.apply_step`` (the param update uses the float32
values before rounding), then rounds the new values back to their storage kind:

- ``rounding="nearest"``: round to nearest, ties to even (``ml_dtypes`` / NumPy ``astype``); a NaN
  becomes the canonical NaN of the kind (bf16 ``0x7FC0``, fp16 ``0x7E00``).
- ``rounding="stochastic"`` (bfloat16 only): ``bits16 = (bits32(x) + r) >> 16`` with ``r`` 16
  uniformly random bits, i.e. the magnitude rounds up with probability equal to the discarded
  fraction (unbiased: ``E[widen(sr(x))] = x``); inf stays inf, a value within one bf16 ulp of
  the largest finite bf16 may round to inf, NaN becomes ``0x7FC0``.

**fp8 moments** (kind 3 float8_e4m3fn, kind 4 float8_e5m2, as uint8 codes) carry one float32
scale per block of ``FP8_BLOCK`` (256) elements of the flat buffer; a layout holding fp8 state
starts every tensor on a block boundary, so a block belongs to one tensor (its last block may
be partial). A step dequantizes (``code * scale``), runs the float32 update, and re-quantizes each
block with a fresh scale from its largest magnitude (``quantize``: scale = amax / FP8_MAX, codes
rounded to nearest even, torchao's blockwise scheme). Stochastic rounding is for bf16 only.

**Random bits** come from a counter-based generator, so that they depend only on *what* is
rounded, never on *where* or *by which thread*: Threefry-2x32 with 20 rounds (Salmon et al.,
SC'11; the generator of ``jax.random``, tested against it). For optimizer update ``step`` (the
1-based count of completed updates after this one), flat buffer ``buffer`` of the layout and
element ``i`` of that buffer::

    a0, a1 = threefry2x32(key=(seed & 0xFFFFFFFF, seed >> 32), counter=(step & 0xFFFFFFFF, step >> 32))
    k0, k1 = threefry2x32(key=(a0, a1), counter=(buffer, 0x6E706164))     # once per step and buffer
    r0, r1 = threefry2x32(key=(k0, k1), counter=(i & 0xFFFFFFFF, i >> 32))  # per element

``exp_avg`` uses the low 16 bits of ``r0``, ``exp_avg_sq`` (and ``max_exp_avg_sq``) those of
``r1``. The same bits on the reference, the Numba kernel and the CUDA kernel, for any thread
count, chunking or placement.

**Param remainders** (``store_param_remainders``, bfloat16 params, Transformer Engine's scheme):
no fp32 master; the low 16 bits of the fp32 master are kept as an ``int16`` remainder beside the
bf16 param, which holds the high 16 bits rounded to nearest with ties away from zero
(``hi + 1`` when the remainder, read as int16, is negative). ``join_remainder`` inverts
``split_remainder`` exactly for every fp32 bit pattern, so the master follows the fp32-master
trajectory bit for bit. (Round-to-nearest-even cannot be inverted from 16 bits: an even bf16
value has 65,537 fp32 values that round to it.) 2 bytes per param instead of 4.
"""

from __future__ import annotations

import numpy as np

F32, BF16, F16, F8E4M3, F8E5M2 = 0, 1, 2, 3, 4
KIND_NAMES = {F32: "float32", BF16: "bfloat16", F16: "float16", F8E4M3: "float8_e4m3fn", F8E5M2: "float8_e5m2"}
FP8 = (F8E4M3, F8E5M2)
#: fp8 state is scaled per block of this many elements of the flat buffer (tensors start on block
#: boundaries when a layout holds fp8 state, so a block never spans two tensors)
FP8_BLOCK = 256
#: the largest finite value of each fp8 kind
FP8_MAX = {F8E4M3: np.float32(448.0), F8E5M2: np.float32(57344.0)}
#: the canonical (positive) NaN code of each fp8 kind
FP8_NAN = {F8E4M3: np.uint8(0x7F), F8E5M2: np.uint8(0x7E)}
ROUNDINGS = ("nearest", "stochastic")

_M32 = np.uint64(0xFFFFFFFF)
_ROT = (13, 15, 26, 6, 17, 29, 16, 24)
_PARITY = np.uint32(0x1BD11BDA)
#: the second counter word of the per-buffer key ("npad")
BUFFER_TAG = 0x6E706164


def _rotl(x: np.ndarray, r: int) -> np.ndarray:
    return (x << np.uint32(r)) | (x >> np.uint32(32 - r))


def threefry2x32(k0, k1, c0, c1) -> tuple[np.ndarray, np.ndarray]:
    """Threefry-2x32-20 of counters ``(c0, c1)`` under key ``(k0, k1)`` (uint32, broadcast)."""
    k0, k1 = np.asarray(k0, np.uint32), np.asarray(k1, np.uint32)
    ks = (k0, k1, k0 ^ k1 ^ _PARITY)
    with np.errstate(over="ignore"):
        x0 = np.asarray(c0, np.uint32) + ks[0]
        x1 = np.asarray(c1, np.uint32) + ks[1]
        for block in range(5):
            for r in _ROT[(block % 2) * 4: (block % 2) * 4 + 4]:
                x0 = x0 + x1
                x1 = _rotl(x1, r) ^ x0
            x0 = x0 + ks[(block + 1) % 3]
            x1 = x1 + ks[(block + 2) % 3] + np.uint32(block + 1)
    return x0, x1


def step_key(seed: int, step: int, buffer: int) -> tuple[np.uint32, np.uint32]:
    """The per-step, per-buffer key ``(k0, k1)`` (module docstring); ``seed`` in [0, 2**64)."""
    a0, a1 = threefry2x32(seed & 0xFFFFFFFF, seed >> 32, step & 0xFFFFFFFF, step >> 32)
    k0, k1 = threefry2x32(a0, a1, buffer, BUFFER_TAG)
    return np.uint32(k0), np.uint32(k1)


def random_words(key: tuple[np.uint32, np.uint32], index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(r0, r1)`` for flat element indices ``index`` (uint64) under a ``step_key``."""
    i = np.asarray(index, np.uint64)
    return threefry2x32(key[0], key[1], (i & _M32).astype(np.uint32), (i >> np.uint64(32)).astype(np.uint32))


def storage(kind: int) -> np.dtype:
    """The NumPy dtype a kind is stored as: float32, uint16 bits (bf16, fp16) or uint8 codes (fp8)."""
    if kind in FP8:
        return np.dtype(np.uint8)
    return np.dtype(np.float32) if kind == F32 else np.dtype(np.uint16)


def fp8_dtype(kind: int) -> np.dtype:
    """The ml_dtypes dtype of an fp8 kind (imported here only: the rest of the reference is NumPy)."""
    import ml_dtypes

    return np.dtype(ml_dtypes.float8_e4m3fn if kind == F8E4M3 else ml_dtypes.float8_e5m2)


def quantize(x: np.ndarray, kind: int) -> tuple[np.ndarray, np.ndarray]:
    """float32 ``x`` (one tensor's elements from a block boundary) to ``(uint8 codes, float32 scales)``,
    one scale per ``FP8_BLOCK`` elements (the last block may be partial)::

        amax  = max |x| over the block              (a NaN makes it NaN)
        scale = amax / FP8_MAX                      (one float32 division)
        q     = x / scale  (x itself when scale == 0: the block is all zeros)
        code  = fp8(clamp(q, -FP8_MAX, FP8_MAX))    (round to nearest even; NaN -> FP8_NAN)
    """
    x = np.asarray(x, np.float32).reshape(-1)
    nb = -(-x.size // FP8_BLOCK)
    padded = np.zeros(nb * FP8_BLOCK, np.float32)
    padded[: x.size] = x
    blocks = padded.reshape(nb, FP8_BLOCK)
    last = x.size - (nb - 1) * FP8_BLOCK
    amax = np.abs(blocks).max(axis=1) if nb else np.zeros(0, np.float32)
    if nb and last < FP8_BLOCK:  # the partial block's max over its own elements (padding is zero: no change)
        amax[-1] = np.abs(blocks[-1, :last]).max()
    scale = (amax / FP8_MAX[kind]).astype(np.float32)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        q = np.where(scale[:, None] == 0, blocks, blocks / scale[:, None])
    q = np.clip(q, -FP8_MAX[kind], FP8_MAX[kind]).reshape(-1)[: x.size]
    codes = q.astype(fp8_dtype(kind)).view(np.uint8)
    return np.where(np.isnan(q), FP8_NAN[kind], codes), scale


def dequantize(codes: np.ndarray, scales: np.ndarray, kind: int) -> np.ndarray:
    """``quantize``'s inverse up to rounding: ``float32(fp8(code)) * scale`` of its block."""
    codes = np.asarray(codes).view(np.uint8).reshape(-1)
    per = np.repeat(np.asarray(scales, np.float32), FP8_BLOCK)[: codes.size]
    return codes.view(fp8_dtype(kind)).astype(np.float32) * per


def widen(stored: np.ndarray, kind: int) -> np.ndarray:
    """Stored values (float32, or uint16 bits of bf16/fp16) as float32 (exact)."""
    if kind == F32:
        return np.asarray(stored, np.float32)
    bits = np.asarray(stored).view(np.uint16)
    if kind == BF16:
        return (bits.astype(np.uint32) << np.uint32(16)).view(np.float32)
    return bits.view(np.float16).astype(np.float32)


def narrow(x: np.ndarray, kind: int, rounding: str = "nearest", r: np.ndarray | None = None) -> np.ndarray:
    """float32 ``x`` rounded to ``kind`` (float32, or uint16 bits): nearest-even, or stochastic with
    random words ``r`` (bfloat16 only; their low 16 bits are used). NaN becomes the kind's
    canonical NaN."""
    x = np.asarray(x, np.float32)
    if kind == F32:
        return x.copy()
    nan = np.isnan(x)
    if kind == F16:
        if rounding != "nearest":
            raise ValueError("stochastic rounding is defined for bfloat16 state only")
        out = x.astype(np.float16).view(np.uint16)
        return np.where(nan, np.uint16(0x7E00), out)
    bits = x.view(np.uint32)
    if rounding == "stochastic":
        low = np.asarray(r, np.uint32) & np.uint32(0xFFFF)
        with np.errstate(over="ignore"):
            out = ((bits + low) >> np.uint32(16)).astype(np.uint16)
    else:
        lsb = (bits >> np.uint32(16)) & np.uint32(1)
        with np.errstate(over="ignore"):
            out = ((bits + np.uint32(0x7FFF) + lsb) >> np.uint32(16)).astype(np.uint16)
    return np.where(nan, np.uint16(0x7FC0), out)


def split_remainder(master: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """float32 masters -> ``(bf16 param bits uint16, int16 remainder)`` (module docstring)."""
    bits = np.asarray(master, np.float32).view(np.uint32)
    rem = (bits & np.uint32(0xFFFF)).astype(np.uint16).view(np.int16)
    hi = (bits >> np.uint32(16)).astype(np.uint16)
    with np.errstate(over="ignore"):
        hi = hi + (rem < 0).astype(np.uint16)
    return hi, rem


def join_remainder(param_bits: np.ndarray, rem: np.ndarray) -> np.ndarray:
    """``(bf16 param bits, int16 remainder)`` -> the float32 master, exactly."""
    p = np.asarray(param_bits).view(np.uint16)
    r = np.asarray(rem).view(np.int16)
    with np.errstate(over="ignore"):
        hi = (p - (r < 0).astype(np.uint16)).astype(np.uint32)
    return ((hi << np.uint32(16)) | r.view(np.uint16).astype(np.uint32)).view(np.float32)
