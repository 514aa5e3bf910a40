"""Arrays from any producer as NumPy views, through DLPack, without copies.

``as_numpy(x)`` accepts a NumPy array, a torch tensor (CPU), or any object with
``__dlpack__`` on the CPU (JAX, CuPy host arrays, ...). bfloat16 travels as an
int16 view (NumPy's DLPack import has no bfloat16) and comes back as an
``ml_dtypes.bfloat16`` view of the same memory. A producer that exports read-only
memory (JAX) gives a read-only view: npadam never writes it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_DL_CPU = 1


def _is_torch(x: Any) -> bool:
    return type(x).__module__.startswith("torch") and hasattr(x, "detach")


def device_of(x: Any) -> str:
    """``"cpu"`` or a description such as ``"cuda:0"`` for an array-like."""
    if isinstance(x, np.ndarray):
        return "cpu"
    if _is_torch(x):
        return str(x.device)
    if hasattr(x, "__dlpack_device__"):
        kind, idx = x.__dlpack_device__()
        return "cpu" if int(kind) == _DL_CPU else f"dlpack-device-{int(kind)}:{idx}"
    return "cpu"


def as_numpy(x: Any, *, what: str = "array") -> np.ndarray:
    """A zero-copy NumPy view of ``x`` (see the module docstring); TypeError if impossible."""
    if isinstance(x, np.ndarray):
        return x
    dev = device_of(x)
    if dev != "cpu":
        raise ValueError(f"{what} lives on {dev}; this build updates host (CPU) memory only")
    if _is_torch(x):
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            import ml_dtypes
            import torch

            return np.from_dlpack(t.view(torch.int16)).view(ml_dtypes.bfloat16)
        return np.from_dlpack(t)
    if hasattr(x, "__dlpack__"):
        try:
            return np.from_dlpack(x)
        except (BufferError, TypeError, RuntimeError) as exc:
            if "bfloat16" in str(getattr(x, "dtype", "")) and hasattr(x, "view"):
                import ml_dtypes

                return np.from_dlpack(x.view("int16")).view(ml_dtypes.bfloat16)
            raise TypeError(f"cannot import {what} of type {type(x).__name__} through DLPack: {exc}") from None
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        raise TypeError(f"{what} must be an array (NumPy, torch, JAX, ...), got {type(x).__name__}")
    return np.asarray(x)
