"""What a collective may be given: array descriptions and the argument checks shared by every backend.

A communicator works on NumPy, CuPy or torch arrays without importing CuPy or
torch: the kind of an array is read from its type's module. Every check here runs
before any communication, so a bad argument raises on the rank that passed it and
nothing is sent.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from .. import _validate as V

#: Element types every backend reduces (sum, max, min; avg for the floating ones).
REDUCE_DTYPES = ("float32", "float64", "int32", "int64", "uint8", "float16", "bfloat16")
FLOAT_DTYPES = ("float32", "float64", "float16", "bfloat16")
#: 16-bit floats: MPI has no such type and reduces them widened to float32.
HALF_DTYPES = ("float16", "bfloat16")
#: ``op=`` names. ``avg`` is the sum divided by ``size`` in the element type (see DISTRIBUTED.md).
OPS = ("sum", "avg", "max", "min")
_BIT_VIEWS = ("int16", "uint16")  # arrays that may carry 16-bit float bits with an explicit dtype=
_NUMERIC_KINDS = "biufc"


@dataclass(frozen=True)
class ArrayInfo:
    """The facts about one array argument that the checks and the backends need."""

    kind: str        # "numpy" | "cupy" | "torch"
    dtype: str       # the element type's name ("bfloat16" for ml_dtypes and torch; ">f4" if not native order)
    size: int        # elements
    itemsize: int    # bytes per element
    ptr: int         # address of the first element
    contiguous: bool
    writeable: bool
    movable: bool    # a fixed-size numeric type whose bytes can be moved as they are

    @property
    def nbytes(self) -> int:
        return self.size * self.itemsize


def describe(x: Any, what: str) -> ArrayInfo:
    """An :class:`ArrayInfo` for a NumPy, CuPy or torch array; TypeError for anything else."""
    if isinstance(x, np.ndarray):
        d = x.dtype
        ml = d.names is None and d.type.__module__ == "ml_dtypes"  # bfloat16, float8_*, ...
        movable = not d.hasobject and (d.kind in _NUMERIC_KINDS or ml)
        return ArrayInfo("numpy", str(d), int(x.size), d.itemsize, int(x.__array_interface__["data"][0]),
                         bool(x.flags.c_contiguous), bool(x.flags.writeable), movable)
    module = type(x).__module__
    if module.startswith("cupy") and hasattr(x, "data") and hasattr(x, "flags"):
        return ArrayInfo("cupy", x.dtype.name, int(x.size), x.dtype.itemsize, int(x.data.ptr),
                         bool(x.flags.c_contiguous), True, x.dtype.kind in _NUMERIC_KINDS)
    if module.startswith("torch") and hasattr(x, "data_ptr") and hasattr(x, "is_contiguous"):
        name = str(x.dtype).removeprefix("torch.")
        return ArrayInfo("torch", name, int(x.numel()), int(x.element_size()), int(x.data_ptr()),
                         bool(x.is_contiguous()), True, True)
    raise TypeError(f"{what} must be a NumPy, CuPy or torch array, got {type(x).__name__}")


def check_array(x: Any, what: str, kinds: tuple[str, ...], *, writeable: bool) -> ArrayInfo:
    """Describe ``x`` and check the kind, contiguity and (for outputs) writability."""
    info = describe(x, what)
    if info.kind not in kinds:
        raise TypeError(f"{what} is a {info.kind} array; this communicator takes {' or '.join(kinds)} arrays")
    if not info.contiguous:
        raise ValueError(f"{what} must be C-contiguous (collectives work in place on flat memory); "
                         f"pass a contiguous array (e.g. a copy) instead")
    if writeable and not info.writeable:
        raise ValueError(f"{what} is read-only; the collective writes its result into it")
    if not info.movable:
        raise TypeError(f"{what} has dtype {info.dtype}; collectives move numeric arrays only")
    return info


def reduce_dtype(info: ArrayInfo, dtype: str | None, what: str) -> str:
    """The element type a reduction uses: the array's own, or ``dtype`` for a 16-bit bit array."""
    if dtype is None:
        name = info.dtype
    elif not isinstance(dtype, str):
        raise TypeError(f"dtype must be a dtype name such as 'bfloat16', got {dtype!r}")
    elif dtype == info.dtype:
        name = dtype
    elif dtype in HALF_DTYPES and info.dtype in _BIT_VIEWS:
        name = dtype
    else:
        raise TypeError(f"dtype={dtype!r} does not fit {what} of dtype {info.dtype}: an explicit dtype names "
                        f"the 16-bit float ('bfloat16' or 'float16') held in an int16/uint16 bit array")
    if name not in REDUCE_DTYPES:
        hint = " (16-bit float bits? pass dtype='bfloat16' or 'float16')" if name in _BIT_VIEWS else ""
        raise TypeError(f"{what} has dtype {name}; reductions take {', '.join(REDUCE_DTYPES)}{hint}")
    return name


def check_op(op: Any, dtype: str) -> str:
    V.choice("op", op, OPS)
    if op == "avg" and dtype not in FLOAT_DTYPES:
        raise TypeError(f"op='avg' needs a floating dtype ({', '.join(FLOAT_DTYPES)}), got {dtype}")
    return op


def check_rank(name: str, value: Any, size: int) -> int:
    """``value`` as a rank in [0, size)."""
    v = V.integer(name, value)
    if not 0 <= v < size:
        raise ValueError(f"{name} must be a rank in [0, {size}), got {v}")
    return v


def same_dtype(a: ArrayInfo, b: ArrayInfo, what_a: str, what_b: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(f"{what_a} and {what_b} must have the same dtype, got {a.dtype} and {b.dtype}")


def aliased(part: ArrayInfo, whole: ArrayInfo, rank: int, what_part: str, what_whole: str) -> bool:
    """True when ``part`` is exactly ``whole``'s rank-th slice (the in-place layout); False when they
    do not overlap; ValueError for any other overlap."""
    if part.nbytes == 0 or whole.nbytes == 0:
        return False
    if part.ptr >= whole.ptr + whole.nbytes or whole.ptr >= part.ptr + part.nbytes:
        return False
    if part.ptr == whole.ptr + rank * part.nbytes:
        return True
    raise ValueError(f"{what_part} overlaps {what_whole} but is not its slice [rank*n:(rank+1)*n] "
                     f"(rank {rank}, n={part.size}): the only aliasing allowed is the in-place layout")
