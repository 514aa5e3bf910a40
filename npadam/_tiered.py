"""The tiers of an ``Engine``'s state: which part of each flat buffer lives where, and the step,
reads and writes on the parts that are not with the params.

Each buffer's state elements ``[lo, n0)`` are with the params (host memory for host params, the
GPU for GPU params; ``Engine.bufs``), ``[n0, n1)`` in host memory for GPU params
(``offload_fraction``; ``Engine.host``, stepped through ``npadam.tiers.transfer.Staging``) and
``[n1, hi)`` in files (``nvme_offload_fraction``; ``Engine.disk``, a ``npadam.tiers.DiskState``
streamed chunk by chunk), where ``[lo, hi)`` (``Engine.shards``) is the whole buffer, or this rank's
shard of it when the state is sharded across ranks (``comm=``, ``npadam._sharded``). Indices are
the buffer's flat index throughout; each part's arrays start at its first element (the kernels'
``base``). The same kernels run on every part; the update is elementwise, so any split gives the
same bits.
"""

from __future__ import annotations

import contextlib
from typing import Any

import numpy as np

from . import kernels as K
from .layout import storage_dtype
from .reference import precision as prec

#: the state arrays a tier may hold, in the kernels' order
STATE_NAMES = ("master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq")


class TieredState:
    """``Engine``'s tier methods (a mixin: the attributes are the engine's)."""

    def offloaded(self, bi: int) -> bool:
        """Part of buffer ``bi``'s state is not with the params (in host memory for GPU params, or on disk)."""
        return bi in self.disk or bi in self.host

    @property
    def tiered(self) -> bool:
        """Some state is not with the params."""
        return bool(self.disk or self.host)

    def _first(self, bi: int, key: str = "") -> int:
        """The first element (fp8 block for a scale field ``key``) of buffer ``bi`` whose state this
        engine holds: 0, or the start of this rank's shard (on a block boundary)."""
        lo = self.shards[bi][0]
        return lo // prec.FP8_BLOCK if key.endswith("_scale") else lo

    def _bounds(self, bi: int, key: str = "") -> tuple[int, int]:
        """``(n0, n1)``: buffer ``bi``'s state elements ``[lo, n0)`` are with the params, ``[n0, n1)``
        in host memory (GPU params; empty otherwise), ``[n1, hi)`` on disk; in fp8 blocks for a
        scale field ``key`` (``*_scale``; the tier boundaries are on block boundaries then)."""
        size = self.shards[bi][1]
        n1 = self.disk[bi][0] if bi in self.disk else size
        n0 = self.host[bi][0] if bi in self.host else n1
        if key.endswith("_scale"):
            return -(-n0 // prec.FP8_BLOCK), -(-n1 // prec.FP8_BLOCK)
        return n0, n1

    def copier(self) -> Any:
        """The ``npadam.tiers.transfer.Copier`` of the host part (made on first use)."""
        if self._copier is None:
            self._copier = self.offload.make_copier(self.device_id)
        return self._copier

    def _add_state(self, bi: int, key: str, like: str | None = None) -> None:
        """A state array appears (SGD's momentum, amsgrad's max): zeros, or a copy of ``like``."""
        buf, tier = self.bufs[bi], self.disk.get(bi)
        n0, _ = self._bounds(bi)
        dtype = self._dtypes(self.layout.buffers[bi].dtype)[key]
        if tier is not None:  # the files first: a full disk raises here with nothing else changed
            pairs = [(key, like)]
            if key == "max_exp_avg_sq" and buf.v_scale is not None:  # fp8: its block scales on disk too
                pairs.append(("vmax_scale", "v_scale"))
            for name, _ in pairs:
                if name not in tier[1].names:  # (added by an earlier attempt that failed after it)
                    tier[1].add(name, dtype if name == key else np.float32, 1 if name == key else prec.FP8_BLOCK)
            if like:
                with contextlib.closing(tier[1].stream([src for _, src in pairs], write_back=False)) as chunks:
                    for a, _, arrs in chunks:
                        for dst, src in pairs:
                            tier[1].write(dst, a // tier[1].blocks[dst], arrs[src])
        with self.on_device():
            setattr(buf, key, getattr(buf, like).copy() if like else self.xp.zeros(n0 - self._first(bi), dtype))
        if bi in self.host:
            hp = self.host[bi][1]
            arr = np.zeros(hp.size, dtype)
            if like:
                arr[...] = getattr(hp, like)
            setattr(hp, key, arr)
        if key == "max_exp_avg_sq" and buf.v_scale is not None:  # fp8: its block scales too
            for part in [buf] + ([self.host[bi][1]] if bi in self.host else []):
                q = part.v_scale.copy()
                if not like:
                    q[...] = 0
                part.vmax_scale = q
        self.views_version += 1

    def _primary_batch(self, bi: int, batch: K.Batch) -> K.Batch:
        """The part of ``batch`` whose state is with the params."""
        n0, _ = self._bounds(bi)
        lo = self._first(bi)
        if lo == 0 and n0 == self.layout.buffers[bi].size:
            return batch
        return K.sub_batch(batch, self.layout.buffers[bi].dtype, lo, n0)

    def _run_rest(self, name: str, bi: int, batch: K.Batch, s: Any, flags: Any) -> None:
        """Kernel ``name`` on the parts of buffer ``bi``'s state that are not with the params: host
        memory of GPU params (params and grads staged to the host piece by piece, see
        ``npadam.tiers.transfer``) and files (chunk by chunk, read ahead, written behind).
        Bit-identical to one call on the whole buffer: the update is elementwise."""
        if not self.offloaded(bi) or not len(batch):
            return
        n0, n1 = self._bounds(bi)
        buf = self.bufs[bi]
        pdtype = self.layout.buffers[bi].dtype
        lo_b, hi_b = int(batch.offsets.min()), int((batch.offsets + batch.sizes).max())
        hi_b = min(hi_b, self.shards[bi][1])  # this rank's shard only
        if hi_b <= n0:
            return
        fn = getattr(K.get("cpu" if self.kernel == "gpu" else self.kernel), name)
        names = [k for k in STATE_NAMES if getattr(buf, k) is not None]
        tier = self.disk.get(bi)
        on_disk = names + [q for q in K.SCALE_FIELDS.values() if getattr(buf, q) is not None]  # fp8 block scales
        disk_span = [(max(lo_b, n1) - n1, hi_b - n1)] if tier is not None and hi_b > n1 else []
        disk_ranges = [(n1 + a, n1 + b) for a, b in tier[1].chunks(disk_span)] if disk_span else []

        def state_of(arrs: dict[str, np.ndarray], size: int, base: int) -> K.BufferState:
            return K.BufferState(size=size, master=arrs.get("master"), exp_avg=arrs.get("exp_avg"),
                                 exp_avg_sq=arrs.get("exp_avg_sq"), max_exp_avg_sq=arrs.get("max_exp_avg_sq"),
                                 pdtype=pdtype, m_kind=buf.m_kind, v_kind=buf.v_kind, stochastic=buf.stochastic,
                                 remainders=buf.remainders, base=base, m_scale=arrs.get("m_scale"),
                                 v_scale=arrs.get("v_scale"), vmax_scale=arrs.get("vmax_scale"), w_kind=buf.w_kind)

        if bi not in self.host:  # host params: the disk part reads the params and grads in place
            if not disk_span:
                return
            with contextlib.closing(tier[1].stream(on_disk, disk_span)) as chunks:  # finished chunks written on any exit
                for a, b, arrs in chunks:
                    part = K.sub_batch(batch, pdtype, n1 + a, n1 + b)
                    if len(part):
                        fn(state_of(arrs, b - a, n1 + a), part, s, flags)
            return
        from .tiers.transfer import Piece, Staging

        if self._staging is None:
            self._staging = Staging(self.copier(), self.offload.piece_elems, self.offload.depth)
        hp = self.host[bi][1]
        host_ranges = self._staging.pieces(max(lo_b, n0), min(hi_b, n1), self.precision.align) if lo_b < n1 else []
        pieces = []
        for a, b in host_ranges + disk_ranges:
            part = K.sub_batch(batch, pdtype, a, b)
            pieces.append(Piece(a, b, part.params, part.grads, part.offsets + a, part.sizes))
        pitem, gitem = storage_dtype(pdtype).itemsize, storage_dtype(batch.gdtype).itemsize

        def update(p: Piece, staged: tuple[np.ndarray, np.ndarray], state: K.BufferState) -> None:
            if p.offsets.size:
                fn(state, K.Batch(staged[0], staged[1], p.offsets - p.lo, p.sizes, batch.gdtype, b"staged"), s, flags)

        with contextlib.closing(self._staging.run(pieces, pitem, gitem)) as staged:
            blk = prec.FP8_BLOCK
            scales = [q for q in K.SCALE_FIELDS.values() if getattr(hp, q) is not None]
            for p in pieces[: len(host_ranges)]:
                arrs = {k: getattr(hp, k)[p.lo - n0: p.hi - n0] for k in names}
                arrs.update({q: getattr(hp, q)[(p.lo - n0) // blk: -(-(p.hi - n0) // blk)] for q in scales})
                update(p, next(staged), state_of(arrs, p.hi - p.lo, p.lo))
            if disk_ranges:
                with contextlib.closing(tier[1].stream(on_disk, disk_span)) as chunks:
                    for (a, b, arrs), p in zip(chunks, pieces[len(host_ranges):]):
                        if (n1 + a, n1 + b) != (p.lo, p.hi):
                            raise RuntimeError(f"internal: disk chunk [{a}, {b}) is not piece [{p.lo}, {p.hi})")
                        update(p, next(staged), state_of(arrs, b - a, p.lo))
            next(staged, None)  # the last piece's params go back

    def _read_range(self, bi: int, key: str, lo: int, hi: int) -> np.ndarray:
        """State ``key`` of buffer ``bi``, flat elements (fp8 blocks for ``*_scale``) ``[lo, hi)``, as a
        host copy (any tier)."""
        n0, n1 = self._bounds(bi, key)
        first = self._first(bi, key)
        if lo < first:
            raise RuntimeError(f"internal: state [{lo}, {hi}) of buffer {bi} starts before this rank's shard ({first})")
        if hi <= lo:  # e.g. a slot outside this rank's shard
            return np.zeros(0, getattr(self.bufs[bi], key).dtype)
        parts = []
        if lo < n0:
            parts.append(_host(getattr(self.bufs[bi], key)[lo - first: min(hi, n0) - first]))
        if bi in self.host and lo < n1 and hi > n0:
            parts.append(getattr(self.host[bi][1], key)[max(lo, n0) - n0: min(hi, n1) - n0].copy())
        if bi in self.disk and hi > n1:
            parts.append(self.disk[bi][1].read(key, max(lo, n1) - n1, hi - n1))
        return parts[0] if len(parts) == 1 else np.concatenate(parts) if parts else np.zeros(0, np.float32)

    def _write_range(self, bi: int, key: str, lo: int, values: Any) -> None:
        """Write ``values`` in ``key``'s storage dtype (host, or on the params' GPU) into state ``key``
        of buffer ``bi`` from flat element (fp8 block for ``*_scale``) ``lo``, whichever tiers that
        range spans; the part outside this rank's shard (when sharded) is not this engine's, and is
        dropped."""
        n0, n1 = self._bounds(bi, key)
        first = self._first(bi, key)
        hi = lo + int(values.size)
        last = -(-self.shards[bi][1] // prec.FP8_BLOCK) if key.endswith("_scale") else self.shards[bi][1]
        if lo < first or hi > last:
            a, b = max(lo, first), min(hi, last)
            if a >= b:
                return
            values, lo, hi = values[a - lo: b - lo], a, b
        if lo < n0:
            arr = getattr(self.bufs[bi], key)
            head = values[: min(hi, n0) - lo]
            at = lo - first
            arr[at: at + head.size] = head if isinstance(arr, np.ndarray) or not isinstance(head, np.ndarray) \
                else self.xp.asarray(head)
        if bi in self.host and lo < n1 and hi > n0:
            a, b = max(lo, n0), min(hi, n1)
            getattr(self.host[bi][1], key)[a - n0: b - n0] = _host(values[a - lo: b - lo])
        if bi in self.disk and hi > n1:
            a = max(lo, n1)
            self.disk[bi][1].write(key, a - n1, _host(values[a - lo:]))

    def check_disk(self) -> None:
        """RuntimeError when part of the state is in files that are gone (``close()``) or that a failed
        write left undefined; nothing has been written then."""
        for _, store in self.disk.values():
            if store.closed:
                raise RuntimeError(f"this optimizer was closed: close() deleted its state files ({store.path}); "
                                   "it cannot step or export its state any more")
            if store.failed is not None:
                raise RuntimeError(f"a write to this optimizer's state files failed ({store.failed}); part of its "
                                   "state is undefined: restore the last checkpoint") from store.failed

    def close(self) -> None:
        """Delete the files of disk-resident state (the optimizer cannot step afterwards) and drop the
        host staging of GPU params."""
        for _, store in self.disk.values():
            store.close()
        self._staging = None


def _host(a: Any) -> np.ndarray:
    """A host (NumPy) copy of a NumPy or CuPy array."""
    return a.copy() if isinstance(a, np.ndarray) else a.get()
