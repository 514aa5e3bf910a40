"""How params are given and checked: containers, names, pytrees, memory ranges, torch versions."""

from __future__ import annotations

import sys
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from .layout import KINDS


def check_dtype(dtype: str, what: str, array: Any = None) -> None:
    """TypeError unless ``dtype`` is one npadam updates and ``array`` (if given) is in native byte
    order (the kernels read raw memory: a big-endian ``>f4`` array would be read as garbage)."""
    if dtype not in KINDS:
        raise TypeError(f"{what} has dtype {dtype}; npadam updates float32, bfloat16 or float16 "
                        "parameters with float32, bfloat16 or float16 gradients")
    order = getattr(getattr(array, "dtype", None), "isnative", True)
    if not order:
        raise TypeError(f"{what} has non-native byte order ({array.dtype.str}); convert it first, e.g. "
                        "a.astype(a.dtype.newbyteorder('='))")


def address(a: Any) -> int:
    return a.__array_interface__["data"][0] if isinstance(a, np.ndarray) else a.data.ptr


def check_no_overlap(starts: np.ndarray, ends: np.ndarray, names: Sequence[str] | Callable[[int], str],
                     what: str) -> None:
    """ValueError if two byte ranges ``[start, end)`` (non-empty ones) overlap. ``names``: a list,
    or a function of the index (called only to word the error)."""
    keep = ends > starts
    idx = np.flatnonzero(keep)
    order = idx[np.argsort(starts[idx], kind="stable")]
    s, e = starts[order], ends[order]
    bad = np.flatnonzero(s[1:] < e[:-1])
    if bad.size:
        a, b = order[bad[0]], order[bad[0] + 1]
        name = names if callable(names) else names.__getitem__
        raise ValueError(f"{what} {name(a)!r} and {name(b)!r} share memory (aliased buffers)".lstrip())


def check_apart(pstarts: np.ndarray, pends: np.ndarray, gstarts: np.ndarray, gends: np.ndarray,
                what: Callable[[int, int], str]) -> None:
    """ValueError if a range ``[gstart, gend)`` overlaps one of the (mutually disjoint) ranges
    ``[pstart, pend)``; ``what(g, p)`` words the error. Grads may alias each other (they are
    only read); a grad aliasing a param would be read while the param is written."""
    keep = pends > pstarts
    pi = np.flatnonzero(keep)
    order = pi[np.argsort(pstarts[pi], kind="stable")]
    ps, pe = pstarts[order], pends[order]
    gk = np.flatnonzero(gends > gstarts)
    if not gk.size or not ps.size:
        return
    j = np.searchsorted(ps, gends[gk], side="left") - 1
    hit = (j >= 0) & (pe[np.maximum(j, 0)] > gstarts[gk])
    if hit.any():
        first = int(np.flatnonzero(hit)[0])
        raise ValueError(f"{what(int(gk[first]), int(order[j[first]]))} share memory (aliased buffers)")


def is_group_list(raw: list[Any]) -> bool:
    return bool(raw) and all(isinstance(g, Mapping) and "params" in g for g in raw)


class Tree:
    """Nested params (dicts, lists, tuples of arrays, or any JAX pytree): flattened with names."""

    def __init__(self, tree: Any) -> None:
        jax = sys.modules.get("jax")
        self.treedef = None
        if jax is not None:
            leaves, self.treedef = jax.tree_util.tree_flatten_with_path(tree)
            self.names = [jax.tree_util.keystr(path).lstrip(".") or str(i) for i, (path, _) in enumerate(leaves)]
            self.leaves = [leaf for _, leaf in leaves]
        else:
            self.names, self.leaves = [], []
            self._walk(tree, "")

    def _walk(self, x: Any, prefix: str) -> None:
        if isinstance(x, Mapping):
            for k, v in x.items():
                self._walk(v, f"{prefix}{k}.")
        elif isinstance(x, (list, tuple)):
            for i, v in enumerate(x):
                self._walk(v, f"{prefix}{i}.")
        else:
            self.names.append(prefix[:-1])
            self.leaves.append(x)

    def flatten(self, tree: Any) -> list[Any]:
        if self.treedef is not None:
            return self.treedef.flatten_up_to(tree)
        return Tree(tree).leaves

    def unflatten(self, leaves: list[Any]) -> Any:
        if self.treedef is None:
            return leaves
        import jax.numpy as jnp

        return self.treedef.unflatten([jnp.asarray(a) for a in leaves])


def is_nested(x: Any) -> bool:
    return isinstance(x, Mapping) and any(isinstance(v, (Mapping, list, tuple)) for v in x.values())


def split_named(items: Any) -> tuple[list[Any], list[str] | None]:
    if isinstance(items, Mapping):
        return list(items.values()), [str(n) for n in items]
    if isinstance(items, np.ndarray) or hasattr(items, "__dlpack__"):
        raise TypeError("params must be a list of arrays (or of param-group dicts), not a single array")
    items = list(items)
    if items and all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
        return [i[1] for i in items], [i[0] for i in items]
    return items, None


def version(o: Any, bump: bool = False) -> int:
    """A torch tensor's in-place version counter (-1 for other arrays); ``bump`` first records an
    in-place change, as torch's own optimizers do with their in-place update."""
    v = getattr(o, "_version", None)
    if v is None:
        return -1
    if bump:
        import torch

        torch.autograd.graph.increment_version(o)
        return o._version
    return v
