"""Arrays from any producer as NumPy views, through DLPack, without copies.

``as_numpy(x)`` accepts a NumPy array, a torch tensor (CPU), or any object with
``__dlpack__`` on the CPU (JAX, CuPy host arrays, ...). bfloat16 travels as an
int16 view (NumPy's DLPack import has no bfloat16) and comes back as an
``ml_dtypes.bfloat16`` view of the same memory. A producer that exports read-only
memory (JAX) gives a read-only view: npadam never writes it.

``import_array(x)`` also takes arrays on a CUDA GPU (CuPy arrays, torch CUDA
tensors, any DLPack producer on a CUDA device) and returns a CuPy view; CuPy has
no bfloat16, so a bfloat16 GPU array comes back as a ``uint16`` view with its
storage dtype named separately.
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


_DL_CUDA = (2, 3)  # kDLCUDA, kDLCUDAHost


class Bfloat16:
    """Marks a 16-bit array (e.g. a CuPy ``uint16`` array, CuPy has no bfloat16) as bfloat16 bits.

    >>> import numpy as np
    >>> a, name = import_array(Bfloat16(np.zeros(4, np.uint16)))
    >>> name, a.dtype.name
    ('bfloat16', 'bfloat16')
    """

    def __init__(self, array: Any) -> None:
        if getattr(array, "dtype", None) is None or array.dtype.itemsize != 2:
            raise TypeError(f"Bfloat16 needs an array of 16-bit elements, got {getattr(array, 'dtype', type(array))}")
        self.array = array


def is_read_only_producer(x: Any) -> bool:
    """JAX arrays are immutable: npadam must never write them, whatever DLPack reports."""
    return type(x).__module__.startswith(("jax", "jaxlib"))


def on_gpu(x: Any) -> bool:
    """Whether ``x`` lives in CUDA device memory (CuPy, torch CUDA, DLPack CUDA producers)."""
    if isinstance(x, np.ndarray):
        return False
    if type(x).__module__.startswith("cupy"):
        return True
    if _is_torch(x):
        return x.device.type == "cuda"
    if hasattr(x, "__dlpack_device__"):
        return int(x.__dlpack_device__()[0]) == _DL_CUDA[0]
    return False


def import_array(x: Any, *, what: str = "array") -> tuple[Any, str]:
    """``(array, storage dtype name)``: a NumPy view for host memory, a CuPy view for a GPU.

    The dtype name is the array's own (``float32``, ``bfloat16``, ``float16``, or
    anything else for the caller to reject), also when a GPU bfloat16 array comes
    back as a ``uint16`` view.
    """
    if isinstance(x, Bfloat16):
        if not on_gpu(x.array):
            import ml_dtypes

            return as_numpy(x.array, what=what).view(ml_dtypes.bfloat16), "bfloat16"
        a, _ = import_array(x.array, what=what)
        return a, "bfloat16"
    if not on_gpu(x):
        a = as_numpy(x, what=what)
        return a, a.dtype.name
    import cupy

    if _is_torch(x):
        t = x.detach()
        if str(t.dtype) == "torch.bfloat16":
            import torch

            return cupy.from_dlpack(t.view(torch.int16)).view(cupy.uint16), "bfloat16"
        a = cupy.from_dlpack(t)
        return a, a.dtype.name
    if "bfloat16" in str(getattr(x, "dtype", "")) and hasattr(x, "view"):
        return cupy.from_dlpack(x.view("int16")).view(cupy.uint16), "bfloat16"
    a = x if isinstance(x, cupy.ndarray) else cupy.from_dlpack(x)
    return a, a.dtype.name


def as_numpy(x: Any, *, what: str = "array") -> np.ndarray:
    """A zero-copy NumPy view of ``x`` (see the module docstring); TypeError if impossible."""
    if isinstance(x, np.ma.MaskedArray):
        raise TypeError(f"{what} is a NumPy masked array: an optimizer would update the masked elements "
                        "too; pass np.ma.getdata(x) (and zero the masked grads) or a plain array")
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

                # The int16 view is a new JAX array, computed asynchronously and owned by nobody
                # once this returns: wait for it and copy (a zero-copy import read garbage; a bf16
                # JAX array is read-only, so npadam copies it anyway).
                bits = x.view("int16")
                if hasattr(bits, "block_until_ready"):
                    bits.block_until_ready()
                out = np.array(np.from_dlpack(bits), copy=True)
                del bits
                return out.view(ml_dtypes.bfloat16)
            raise TypeError(f"cannot import {what} of type {type(x).__name__} through DLPack: {exc}") from None
    if isinstance(x, (list, tuple)) or np.isscalar(x):
        raise TypeError(f"{what} must be an array (NumPy, torch, JAX, ...), got {type(x).__name__}")
    return np.asarray(x)
