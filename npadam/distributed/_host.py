"""NumPy helpers for the host backends (single process, MPI): typed flat views and the 16-bit rounding."""

from __future__ import annotations

import numpy as np

from ._arrays import HALF_DTYPES


def typed(x: np.ndarray, dtype: str) -> np.ndarray:
    """A flat view of ``x`` with the reduction dtype (an int16/uint16 bit array as bfloat16/float16)."""
    flat = x.reshape(-1)
    if flat.dtype.name == dtype:
        return flat
    if dtype == "bfloat16":
        import ml_dtypes

        return flat.view(ml_dtypes.bfloat16)
    return flat.view(np.dtype(dtype))


def as_bytes(x: np.ndarray) -> np.ndarray:
    """The array's memory as a flat uint8 view (data movement does not care about the dtype)."""
    return x.reshape(-1).view(np.uint8)


def widen(x: np.ndarray) -> np.ndarray:
    """A float32 copy of a 16-bit float array (exact)."""
    return x.astype(np.float32)


def narrow_into(dst: np.ndarray, wide: np.ndarray, divisor: int = 1) -> None:
    """``dst = round(wide / divisor)`` to dst's 16-bit dtype, round-to-nearest-even, one rounding
    after the float32 division (float32 has enough bits that this equals the correctly rounded
    16-bit quotient of ``wide``)."""
    if divisor != 1:
        wide /= np.float32(divisor)
    dst[...] = wide.astype(dst.dtype)


def divide(x: np.ndarray, divisor: int) -> None:
    """``x /= divisor`` in place, in x's dtype (16-bit floats through float32, rounded once)."""
    if divisor == 1:
        return
    if x.dtype.name in HALF_DTYPES:
        narrow_into(x, widen(x), divisor)
    else:
        np.divide(x, x.dtype.type(divisor), out=x)
