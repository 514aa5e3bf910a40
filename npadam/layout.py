"""Flat buffers: where every parameter lives in the optimizer's flat state.

Parameters are packed per (param group, storage dtype) into *buffers*. Inside a
buffer each tensor starts at a multiple of ``ALIGN`` (64) elements; the gaps are
padding that is never read as data. Offsets are Python ints / int64, so buffers
past 2**31 elements work. Optimizer state (``exp_avg``, ``exp_avg_sq``,
``max_exp_avg_sq`` and the fp32 master copy of low-precision params) is one flat
float32 array per buffer, indexed by these offsets.
"""

from __future__ import annotations

import math

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

ALIGN = 64

#: storage dtype name -> kernel kind (see npadam.kernels.cpu)
KINDS = {"float32": 0, "bfloat16": 1, "float16": 2}


def storage_dtype(name: str) -> np.dtype:
    """The NumPy dtype for ``"float32"``, ``"bfloat16"`` (ml_dtypes) or ``"float16"``."""
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    if name not in KINDS:
        raise ValueError(f"unsupported storage dtype {name!r}; expected one of {', '.join(KINDS)}")
    return np.dtype(name)


def dtype_name(dtype: np.dtype) -> str:
    """The storage name of a NumPy dtype; TypeError for anything npadam cannot update."""
    name = np.dtype(dtype).name
    if name not in KINDS:
        raise TypeError(f"parameters and gradients must be float32, bfloat16 or float16, got {name}")
    return name


def align(n: int, to: int = ALIGN) -> int:
    """``n`` rounded up to a multiple of ``to``."""
    return -(-n // to) * to


@dataclass(frozen=True)
class TensorSlot:
    """One parameter: its name, shape, storage dtype, group, buffer and offset there."""

    name: str
    shape: tuple[int, ...]
    dtype: str
    group: int
    buffer: int
    offset: int

    @property
    def numel(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) if self.shape else 1


@dataclass
class Buffer:
    """A flat buffer: the tensors of one (group, dtype), in order."""

    group: int
    dtype: str
    size: int = 0
    tensors: list[int] = field(default_factory=list)

    @property
    def kind(self) -> int:
        return KINDS[self.dtype]


class FlatLayout:
    """The index of name, shape, dtype, group, buffer and offset of every parameter.

    ``pad_to``: each buffer's size is rounded up to a multiple of it (a sharded optimizer's
    ``world * NORM_BLOCK``, see ``npadam._sharded``); 1 leaves only the tensor alignment.
    ``bucket_bytes``: a group's params of one dtype fill several buffers (buckets) in order, a
    new one started where the next param would take the open one past ``bucket_bytes`` of
    params (a param larger than that gets a buffer of its own); None: one buffer per group and
    dtype. Buckets are what a sharded optimizer reduces and gathers one at a time
    (``grads_ready`` / ``wait_params``), so that communication can overlap computation.

    >>> lay = FlatLayout([("w", (3, 5), "float32", 0), ("b", (5,), "float32", 0), ("e", (7,), "bfloat16", 0)])
    >>> [(s.name, s.buffer, s.offset) for s in lay.slots], [b.size for b in lay.buffers]
    ([('w', 0, 0), ('b', 0, 64), ('e', 1, 0)], [128, 64])
    """

    def __init__(self, specs: Iterable[tuple[str, Sequence[int], str, int]], align_to: int = ALIGN,
                 pad_to: int = 1, bucket_bytes: int | None = None) -> None:
        self.buffers: list[Buffer] = []
        self.slots: list[TensorSlot] = []
        index: dict[tuple[int, str], int] = {}
        seen: set[str] = set()
        for name, shape, dtype, group in specs:
            if name in seen:
                raise ValueError(f"duplicate parameter name {name!r}")
            seen.add(name)
            dtype = dtype_name(storage_dtype(dtype))
            key = (group, dtype)
            shape = tuple(int(s) for s in shape)
            if key in index and bucket_bytes is not None:  # buckets: a full buffer is closed, a new one opened
                open_buf = self.buffers[index[key]]
                numel = math.prod(shape)
                if open_buf.tensors and (open_buf.size + numel) * storage_dtype(dtype).itemsize > bucket_bytes:
                    del index[key]
            if key not in index:
                index[key] = len(self.buffers)
                self.buffers.append(Buffer(group, dtype))
            buf = self.buffers[index[key]]
            slot = TensorSlot(name, shape, dtype, group, index[key], buf.size)
            buf.tensors.append(len(self.slots))
            buf.size = align(buf.size + slot.numel, align_to)
            self.slots.append(slot)
        for buf in self.buffers:  # sharded optimizers: every buffer splits into equal, block-aligned shards
            buf.size = align(buf.size, pad_to)
        self.align = align_to
        self.pad_to = pad_to
        self.bucket_bytes = bucket_bytes

    def bucket(self, bucket: object) -> int:
        """``bucket`` checked as an index into the buffers (the optimizers' ``buckets``)."""
        nb = len(self.buffers)
        if isinstance(bucket, bool) or not isinstance(bucket, (int, np.integer)) or not 0 <= bucket < nb:
            raise ValueError(f"bucket must be an int in [0, {nb}) (an index into optimizer.buckets), got {bucket!r}")
        return int(bucket)

    def changed_grad(self, early: dict, grads: Sequence[object]) -> tuple[int, int] | None:
        """``(bucket, param)`` of the first grad in ``grads`` (one per param) that is not the object
        handed over for its bucket (``early``: bucket -> its params' grads then), or None."""
        for bi, given in early.items():
            for t, g in zip(self.buffers[bi].tensors, given):
                if grads[t] is not g:
                    return bi, t
        return None

    @property
    def names(self) -> list[str]:
        return [s.name for s in self.slots]

    @property
    def numel(self) -> int:
        """Elements of all parameters (padding excluded)."""
        return sum(s.numel for s in self.slots)

    def offsets(self, buffer: int) -> np.ndarray:
        """int64 offsets of the buffer's tensors, in order."""
        return np.asarray([self.slots[t].offset for t in self.buffers[buffer].tensors], dtype=np.int64)

    def sizes(self, buffer: int) -> np.ndarray:
        """int64 element counts of the buffer's tensors, in order."""
        return np.asarray([self.slots[t].numel for t in self.buffers[buffer].tensors], dtype=np.int64)

    def allocate(self, dtype: str | None = "float32") -> list[np.ndarray]:
        """Zeroed flat arrays, one per buffer (in ``dtype``, or each buffer's own dtype if None)."""
        return [np.zeros(b.size, dtype=storage_dtype(dtype or b.dtype)) for b in self.buffers]

    def views(self, flats: Sequence[np.ndarray]) -> list[np.ndarray]:
        """Each parameter as a view (its own shape) into ``flats`` (one array per buffer)."""
        return [flats[s.buffer][s.offset: s.offset + s.numel].reshape(s.shape) for s in self.slots]


def flat_parameters(arrays: Sequence[np.ndarray] | dict[str, np.ndarray],
                    align_to: int = ALIGN) -> tuple[FlatLayout, list[np.ndarray], list[np.ndarray]]:
    """Pack arrays into new flat buffers: ``(layout, flats, views)``.

    The views replace the input arrays (same shapes and values) and live in one
    contiguous buffer per dtype, so the optimizer reads and writes them in long runs.
    """
    items = list(arrays.items()) if isinstance(arrays, dict) else [(str(i), a) for i, a in enumerate(arrays)]
    lay = FlatLayout([(n, np.shape(a), dtype_name(np.asarray(a).dtype), 0) for n, a in items], align_to)
    flats = lay.allocate(None)
    views = lay.views(flats)
    for view, (_, a) in zip(views, items):
        view[...] = a
    return lay, flats, views


@dataclass
class FlatStorage:
    """Params and grads that live in npadam-style flat buffers (see ``flat_storage``)."""

    layout: FlatLayout
    params: list[np.ndarray] | dict[str, np.ndarray]
    grads: list[np.ndarray] | dict[str, np.ndarray]
    param_buffers: list[np.ndarray]
    grad_buffers: list[np.ndarray]

    def zero_grad(self) -> None:
        """Zero every grad (one fill per buffer)."""
        for g in self.grad_buffers:
            g[...] = 0


def flat_storage(arrays: Sequence[np.ndarray] | dict[str, np.ndarray], grad_dtype: str | None = None,
                 align_to: int = ALIGN) -> FlatStorage:
    """Copy ``arrays`` into new flat param buffers and allocate matching flat grad buffers.

    ``params`` and ``grads`` are views (same shapes, same container: list or dict)
    into one contiguous buffer per dtype. Write gradients into ``grads`` in place and
    pass the same ``grads`` object to every ``opt.step(grads)``: the optimizer then
    reuses its checks and pointers and a step does no per-tensor work. Grads are in
    each param's dtype unless ``grad_dtype`` is given.

    >>> import numpy as np, npadam
    >>> fs = npadam.flat_storage({"w": np.ones((2, 3), np.float32), "b": np.zeros(3, np.float32)})
    >>> opt = npadam.AdamW(fs.params, lr=0.1, weight_decay=0.0)
    >>> fs.grads["w"][...] = 1.0; fs.grads["b"][...] = 1.0
    >>> _ = opt.step(fs.grads); fs.param_buffers[0].size, round(float(fs.params["b"][0]), 6)
    (128, -0.1)
    """
    named = isinstance(arrays, dict)
    lay, flats, views = flat_parameters(arrays, align_to)
    gflats = lay.allocate(grad_dtype)
    gviews = lay.views(gflats)
    if named:
        keys = list(arrays)
        return FlatStorage(lay, dict(zip(keys, views)), dict(zip(keys, gviews)), flats, gflats)
    return FlatStorage(lay, views, gviews, flats, gflats)


def work_items(sizes: np.ndarray, chunk: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split tensors of ``sizes`` elements into ``(tensor, lo, hi)`` chunks of at most ``chunk``."""
    sizes = np.asarray(sizes, dtype=np.int64)
    counts = -(-sizes // chunk)
    t = np.repeat(np.arange(sizes.size, dtype=np.int64), counts)
    first = np.repeat(np.cumsum(counts) - counts, counts)
    lo = (np.arange(t.size, dtype=np.int64) - first) * chunk
    hi = np.minimum(lo + chunk, sizes[t])
    return t, lo, hi
