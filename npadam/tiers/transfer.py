"""GPU params, host state: the device↔host pipeline of one step (``offload_fraction``).

When the params (and grads) of a flat buffer are in GPU memory but part of its optimizer state is
in host memory, each step moves that part's grads and params to the host, runs the CPU kernel on
them and moves the updated params back. ``Staging.run`` does it in *pieces* of at most
``piece_elems`` elements with ``depth`` pieces in flight:

- device→host copies of the next pieces' params and grads run on their own copy stream while the
  CPU kernel updates the current piece in host staging (pinned, so the copies are truly
  asynchronous);
- when the caller moves on, the updated piece's params go back host→device on a second copy
  stream, overlapping the next piece's kernel;
- a staging slot is refilled only after its last host→device copy finished (a device-side wait:
  the host does not block for it), and the compute stream waits for the last host→device copy at
  the end, so the next forward pass sees the new params.

Only the tensors' own elements are copied (padding between tensors is never written on the
device); adjacent tensors whose device memory is contiguous (flat storage) go in one copy.

The ordering logic is written once against ``Copier``: ``CupyCopier`` (CUDA streams and events,
pinned memory) on a GPU, ``HostCopier`` in CI, where "device memory" is host memory and each
stream is a worker thread that performs its copies later than they were enqueued (with an
optional random delay), so a missing wait shows up as wrong bits. The same ``Staging`` code runs
on both.

Units: elements of the flat buffer (the param dtype's storage size for params, the grad dtype's
for grads); addresses are ints.
"""

from __future__ import annotations

import ctypes
import queue
import threading
import weakref
from abc import ABC, abstractmethod
from typing import Any, Callable, Iterator, NamedTuple, Sequence

import numpy as np

__all__ = ["Copier", "CupyCopier", "HostCopier", "Piece", "Staging"]


class Piece(NamedTuple):
    """One piece ``[lo, hi)`` of a flat buffer (absolute elements) and the tensor segments in it:
    int64 ``params``/``grads`` device addresses of each segment's first element, ``offsets``
    (absolute flat elements, ascending) and ``sizes`` (elements)."""

    lo: int
    hi: int
    params: np.ndarray
    grads: np.ndarray
    offsets: np.ndarray
    sizes: np.ndarray


class Copier(ABC):
    """Asynchronous copies between the params' memory ("device") and host memory, on two copy
    streams (device→host and host→device) beside the compute stream the kernels run on."""

    pinned: bool = False

    @abstractmethod
    def host_array(self, nbytes: int) -> np.ndarray:
        """A 1-D ``uint8`` host array of ``nbytes`` (page-locked when ``pinned``)."""

    @abstractmethod
    def begin(self) -> None:
        """Copies enqueued from now on start after the work queued on the compute stream so far
        (the backward pass that wrote the grads, the forward pass that read the params)."""

    @abstractmethod
    def d2h(self, dst: int, src: int, nbytes: int) -> None:
        """Enqueue a device→host copy on the device→host stream."""

    @abstractmethod
    def h2d(self, dst: int, src: int, nbytes: int) -> None:
        """Enqueue a host→device copy on the host→device stream."""

    @abstractmethod
    def mark(self, stream: str) -> Any:
        """A token for everything enqueued on ``stream`` (``"d2h"`` or ``"h2d"``) so far."""

    @abstractmethod
    def d2h_after(self, token: Any) -> None:
        """Later device→host copies start after ``token``'s copies finished (the host does not wait)."""

    @abstractmethod
    def wait(self, token: Any) -> None:
        """The host waits until ``token``'s copies finished."""

    @abstractmethod
    def end(self) -> None:
        """Later compute-stream work waits for every host→device copy enqueued so far."""

    def drain(self) -> None:
        """The host waits for every copy enqueued so far (both streams)."""
        self.wait(self.mark("d2h"))
        self.wait(self.mark("h2d"))


class CupyCopier(Copier):
    """``Copier`` on a CUDA device through CuPy: two non-blocking streams, events, pinned memory
    from CuPy's pinned pool (``pinned=False``: pageable NumPy memory, the copies then block)."""

    def __init__(self, device_id: int, pinned: bool = True) -> None:
        import cupy

        self.cp = cupy
        self.pinned = bool(pinned)
        self.device_id = device_id
        with cupy.cuda.Device(device_id):
            self.streams = {"d2h": cupy.cuda.Stream(non_blocking=True), "h2d": cupy.cuda.Stream(non_blocking=True)}
        rt = cupy.cuda.runtime
        self._kinds = {"d2h": rt.memcpyDeviceToHost, "h2d": rt.memcpyHostToDevice}

    def host_array(self, nbytes: int) -> np.ndarray:
        if not self.pinned or nbytes == 0:
            return np.empty(nbytes, np.uint8)
        mem = self.cp.cuda.alloc_pinned_memory(nbytes)
        return np.frombuffer(mem, np.uint8, nbytes)  # the array keeps the pinned block alive

    def _event(self, stream: Any) -> Any:
        ev = self.cp.cuda.Event(block=False, disable_timing=True)
        ev.record(stream)
        return ev

    def begin(self) -> None:
        ev = self._event(self.cp.cuda.get_current_stream())
        for s in self.streams.values():
            s.wait_event(ev)

    def _copy(self, stream: str, dst: int, src: int, nbytes: int) -> None:
        self.cp.cuda.runtime.memcpyAsync(dst, src, nbytes, self._kinds[stream], self.streams[stream].ptr)

    def d2h(self, dst: int, src: int, nbytes: int) -> None:
        self._copy("d2h", dst, src, nbytes)

    def h2d(self, dst: int, src: int, nbytes: int) -> None:
        self._copy("h2d", dst, src, nbytes)

    def mark(self, stream: str) -> Any:
        return self._event(self.streams[stream])

    def d2h_after(self, token: Any) -> None:
        self.streams["d2h"].wait_event(token)

    def wait(self, token: Any) -> None:
        token.synchronize()

    def end(self) -> None:
        self.cp.cuda.get_current_stream().wait_event(self.mark("h2d"))


def _worker(q: "queue.SimpleQueue[Any]", errors: list[BaseException]) -> None:
    while True:
        job = q.get()
        if job is None:
            return
        try:
            job()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller's thread by wait()
            errors.append(exc)


class HostCopier(Copier):
    """``Copier`` whose "device" is host memory (for CI and for testing the ordering logic).

    Each stream is a worker thread running its queue in order; a copy is a ``ctypes.memmove``
    done when the worker reaches it, after ``delay(stream)`` seconds when ``delay`` is given (e.g.
    a random few milliseconds, or a slow host→device stream), so copies land later than they were
    enqueued, as on a GPU. The
    compute "stream" is the caller's thread: ``begin`` has nothing to wait for and ``end`` waits
    for the host→device copies. ``copies`` counts the copies done per stream."""

    def __init__(self, delay: Callable[[str], float] | None = None, pinned: bool = False) -> None:
        self.pinned = bool(pinned)
        self.delay = delay
        self.errors: list[BaseException] = []
        self.copies = {"d2h": 0, "h2d": 0}
        self._queues: dict[str, queue.SimpleQueue[Any]] = {}
        for name in ("d2h", "h2d"):
            q: queue.SimpleQueue[Any] = queue.SimpleQueue()
            threading.Thread(target=_worker, args=(q, self.errors), name=f"npadam-{name}", daemon=True).start()
            self._queues[name] = q
        weakref.finalize(self, lambda qs: [q.put(None) for q in qs], list(self._queues.values()))

    def host_array(self, nbytes: int) -> np.ndarray:
        return np.empty(nbytes, np.uint8)

    def begin(self) -> None:
        pass

    def _copy(self, stream: str, dst: int, src: int, nbytes: int) -> None:
        def job() -> None:
            if self.delay is not None:
                threading.Event().wait(self.delay(stream))
            ctypes.memmove(dst, src, nbytes)
            self.copies[stream] += 1

        self._queues[stream].put(job)

    def d2h(self, dst: int, src: int, nbytes: int) -> None:
        self._copy("d2h", dst, src, nbytes)

    def h2d(self, dst: int, src: int, nbytes: int) -> None:
        self._copy("h2d", dst, src, nbytes)

    def mark(self, stream: str) -> Any:
        token = threading.Event()
        self._queues[stream].put(token.set)
        return token

    def d2h_after(self, token: Any) -> None:
        self._queues["d2h"].put(token.wait)

    def wait(self, token: Any) -> None:
        token.wait()
        if self.errors:
            raise RuntimeError(f"a host copy failed: {self.errors[0]!r}") from self.errors[0]

    def end(self) -> None:
        self.wait(self.mark("h2d"))


def _runs(dev: np.ndarray, host: np.ndarray, n: np.ndarray, item: int) -> list[tuple[int, int, int]]:
    """``(device address, host address, bytes)`` copies of segments, adjacent ones merged when both
    sides are contiguous (flat storage); never across a gap (the gap may be another tensor's)."""
    out: list[list[int]] = []
    for d, h, k in zip(dev.tolist(), host.tolist(), (n * item).tolist()):
        if out and out[-1][0] + out[-1][2] == d and out[-1][1] + out[-1][2] == h:
            out[-1][2] += k
        else:
            out.append([d, h, k])
    return [(d, h, k) for d, h, k in out]


class Staging:
    """Host staging slots and the piece pipeline of ``run`` (see the module docstring).

    ``depth`` pieces are copied ahead of the one being updated; ``depth + 1`` slots of
    ``piece_elems`` elements, each holding the params and grads of one piece (at most 4 bytes
    per element each), are allocated on first use and kept: ``nbytes`` of host memory."""

    def __init__(self, copier: Copier, piece_elems: int, depth: int = 2) -> None:
        if piece_elems < 64 or piece_elems % 64 or depth < 1:
            raise ValueError(f"internal: piece_elems={piece_elems} (a multiple of 64), depth={depth} (>= 1)")
        self.copier = copier
        self.piece_elems = piece_elems
        self.depth = depth
        self._slots: list[np.ndarray] = []
        self._capacity = 0

    @property
    def nbytes(self) -> int:
        return sum(s.nbytes for s in self._slots)

    def pieces(self, lo: int, hi: int, align: int = 64) -> list[tuple[int, int]]:
        """``[lo, hi)`` cut into consecutive pieces of ``piece_elems`` elements rounded up to a
        multiple of ``align`` (the last may be shorter; ``lo`` is on an ``align`` boundary)."""
        step = -(-self.piece_elems // align) * align
        return [(a, min(a + step, hi)) for a in range(lo, hi, step)]

    def _ensure(self, elems: int) -> None:
        if elems > self._capacity or not self._slots:
            self._capacity = max(elems, self.piece_elems)
            self._slots = [self.copier.host_array(8 * self._capacity) for _ in range(self.depth + 1)]

    def run(self, pieces: Sequence[Piece], pitem: int, gitem: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """For each piece (ascending, not overlapping, at most ``piece_elems`` elements or the
        largest piece) yield ``(params, grads)``: int64 host addresses of its segments' params and
        grads in staging, holding their current values (``pitem`` / ``gitem`` bytes per element).
        Update the staged params in place; they go back to the device when the next piece is asked
        for (or the loop ends). A piece without segments yields empty tables and copies nothing.

        On an early exit (an exception in the caller's loop, ``close()``), the pieces finished
        before are on the device; the current and later pieces are not copied back, and the host
        waits for every copy in flight before the staging can be reused."""
        self._ensure(max((p.hi - p.lo for p in pieces), default=0))
        cap = self._capacity
        cp = self.copier
        nslots = len(self._slots)
        bases = [int(s.__array_interface__["data"][0]) for s in self._slots]
        d2h_done: list[Any] = [None] * len(pieces)
        h2d_done: list[Any] = [None] * nslots
        hosts: list[tuple[np.ndarray, np.ndarray]] = []

        def issue(i: int) -> None:
            p, slot = pieces[i], i % nslots
            rel = p.offsets - p.lo
            p_host, g_host = bases[slot] + rel * pitem, bases[slot] + 4 * cap + rel * gitem
            if p.offsets.size:
                if h2d_done[slot] is not None:
                    cp.d2h_after(h2d_done[slot])  # the slot's last params are back on the device
                for d, h, k in _runs(p.params, p_host, p.sizes, pitem) + _runs(p.grads, g_host, p.sizes, gitem):
                    cp.d2h(h, d, k)
                d2h_done[i] = cp.mark("d2h")
            hosts.append((p_host, g_host))

        cp.begin()
        for i in range(min(self.depth, len(pieces))):
            issue(i)
        finished = False
        try:
            for i, p in enumerate(pieces):
                if d2h_done[i] is not None:
                    cp.wait(d2h_done[i])
                yield hosts[i]
                if p.offsets.size:
                    for d, h, k in _runs(p.params, hosts[i][0], p.sizes, pitem):
                        cp.h2d(d, h, k)
                    h2d_done[i % nslots] = cp.mark("h2d")
                if i + self.depth < len(pieces):
                    issue(i + self.depth)
            finished = True
        finally:
            if not finished:
                cp.drain()
            cp.end()
