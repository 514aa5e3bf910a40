"""The NVMe/disk tier: state arrays kept in files, streamed through bounded staging buffers.

``DiskState(directory, size, names)`` keeps one file of ``size`` float32 elements per state name
(``"master"``, ``"exp_avg"``, ``"exp_avg_sq"``, ``"max_exp_avg_sq"``, ...) in a fresh private
subdirectory ``directory/npadam-state-XXXXXXXX`` (mode 0o700, files 0o600). ``stream(names)``
walks the arrays chunk by chunk: while the caller updates chunk i in the staging arrays it was
given, chunk i+1.. is read ahead and chunk i-1.. written behind by a small thread pool
(``os.preadv``/``os.pwritev`` straight into NumPy buffers, which release the GIL). The host
memory this costs is the staging, ``(depth + 1) * chunk_elems * 4`` bytes per name, whatever
``size`` is; the file pages live in the kernel's page cache, never in the process's RSS (no
``np.memmap``).

Units and conventions: offsets, ``start``/``stop`` and ``chunk_elems`` count elements; ranges are
half-open ``[start, stop)``; byte counts are named ``nbytes_*``. Precision-aware state
(``npadam.reference.precision``) keeps other types: ``add(name, dtype, block)`` (or the ``dtypes`` /
``blocks`` of the constructor) gives a name its own storage dtype (uint16 bits of bfloat16 or
float16 moments, uint8 fp8 codes, int16 param remainders) and a ``block``: a name of block ``B``
holds one item per ``B`` elements (fp8 block scales: one float32 per 256 elements), so its file has
``ceil(size / B)`` items, ``read``/``write`` of it count items, and a streamed chunk ``[start,
stop)`` gives it items ``[start // B, ceil(stop / B))`` (chunks and ranges then start on multiples
of ``B``).

**Working memory, never a checkpoint.** Nothing is fsynced; the subdirectory holds a
``README.txt`` saying so, and no ``index.json``, so ``npadam.checkpoint.load`` refuses it. A
killed process leaves the subdirectory behind (``DiskState.remove_stale(directory)`` removes the
ones whose process is gone); ``close()`` (or the ``weakref.finalize`` at exit) deletes it.

**Full disks.** The files are preallocated (``posix_fallocate``) when created, so on ordinary
filesystems (ext4, xfs, tmpfs) a directory without room fails in the constructor or in
``add()``, before any state is written, with a ``DiskStateError`` (an ``OSError``: its ``errno``
is the cause, ``filename`` the file, the message the operation). An IO error later is raised in
the caller's thread, never lost in the pool; see ``stream`` for exactly what holds then.

One caller thread per ``DiskState``: it is not thread-safe (its pool threads are internal).

>>> import tempfile, numpy as np
>>> ds = DiskState(tempfile.mkdtemp(), 1000, ["exp_avg"], chunk_elems=256)
>>> for start, stop, a in ds.stream(["exp_avg"]):
...     a["exp_avg"][:] = np.arange(start, stop)
>>> ds.read("exp_avg", 998, 1000).tolist()
[998.0, 999.0]
>>> ds.close()
"""

from __future__ import annotations

import collections
import concurrent.futures as cf
import datetime
import errno
import operator
import os
import pathlib
import re
import shutil
import socket
import tempfile
import weakref
from typing import Iterator, Mapping, Sequence

import numpy as np

__all__ = ["DiskState", "DiskStateError", "MARKER", "PREFIX"]

#: the prefix of every DiskState subdirectory (``tempfile.mkdtemp(prefix=PREFIX, dir=directory)``)
PREFIX = "npadam-state-"
#: the marker file in every DiskState subdirectory
MARKER = "README.txt"
_MARKER_HEAD = "npadam disk-tier working memory -- NOT a checkpoint."
_ALIGN = 4096  # staging buffers start on a page boundary (ready for O_DIRECT-sized IO)


class DiskStateError(OSError):
    """A disk-tier operation failed: ``errno`` is the cause (ENOSPC, EACCES, EIO, ...), ``filename``
    the file or directory, the message says which operation on which elements."""


def _fail(err: int | None, message: str, filename: os.PathLike | str) -> DiskStateError:
    return DiskStateError(err if err is not None else errno.EIO, message, os.fspath(filename))


def _index(value: object, what: str) -> int:
    """``value`` as a Python int (NumPy integers accepted, bools refused): TypeError naming ``what``."""
    if isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{what} must be an int, got {value!r}")
    try:
        return operator.index(value)  # type: ignore[arg-type]
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__} {value!r}") from None


def _pid_namespace() -> str:
    try:
        return os.readlink("/proc/self/ns/pid")
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# IO primitives: whole-buffer positional reads/writes with short-read/short-write loops.


def _pread_full(fd: int, buf: memoryview, offset: int) -> None:
    """Fill the byte view ``buf`` from ``fd`` at byte ``offset``; OSError(EIO) at end of file."""
    while buf.nbytes:
        if hasattr(os, "preadv"):
            n = os.preadv(fd, [buf], offset)
        else:  # pragma: no cover - platforms without preadv: one extra copy
            data = os.pread(fd, buf.nbytes, offset)
            n = len(data)
            buf[:n] = data
        if n <= 0:
            raise OSError(errno.EIO, f"unexpected end of file at byte {offset} (file truncated?)")
        buf = buf[n:]
        offset += n


def _pwrite_full(fd: int, buf: memoryview, offset: int) -> None:
    """Write the whole byte view ``buf`` to ``fd`` at byte ``offset`` (loops on short writes)."""
    while buf.nbytes:
        if hasattr(os, "pwritev"):
            n = os.pwritev(fd, [buf], offset)
        else:  # pragma: no cover
            n = os.pwrite(fd, buf, offset)
        if n <= 0:
            raise OSError(errno.EIO, f"write of {buf.nbytes} bytes at byte {offset} wrote nothing")
        buf = buf[n:]
        offset += n


def _bytes(a: np.ndarray) -> memoryview:
    return memoryview(a).cast("B")


def _cleanup(pool_box: list, fds: dict, path: pathlib.Path) -> None:
    """The finalizer: stop the pool (waiting for running IO), close the files, delete the directory.
    Holds no reference to the DiskState (``weakref.finalize``)."""
    pool = pool_box[0]
    pool_box[0] = None
    if pool is not None:
        pool.shutdown(wait=True, cancel_futures=True)
    for fd in list(fds.values()):
        try:
            os.close(fd)
        except OSError:
            pass
    fds.clear()
    shutil.rmtree(path, ignore_errors=True)


class _Chunk:
    """One chunk in flight: its element range, staging slot and IO futures."""

    __slots__ = ("start", "stop", "slot", "futures")

    def __init__(self, start: int, stop: int, slot: int, futures: list[cf.Future]) -> None:
        self.start, self.stop, self.slot, self.futures = start, stop, slot, futures


class DiskState:
    """State arrays (e.g. "master", "exp_avg", "exp_avg_sq", "max_exp_avg_sq") of ``size``
    elements each (float32 unless ``dtypes`` says otherwise; ``ceil(size / block)`` items for a
    name with a ``blocks`` entry), kept in files under a fresh private subdirectory of
    ``directory``, streamed through bounded staging buffers.

    ``chunk_elems``: elements per streamed chunk (>= 64, a multiple of 64); ``depth``: chunks in
    flight besides the caller's (read-ahead + write-behind; ``depth + 1`` staging chunks per name);
    ``io_threads``: pool threads doing the IO; ``preallocate``: reserve the files' blocks up front
    (``posix_fallocate``) so that a full disk fails here, not in the middle of a step.

    Attributes: ``size`` (elements per array), ``names`` (tuple, creation order), ``chunk_elems``,
    ``depth``, ``io_threads``, ``path`` (the private subdirectory), ``nbytes_staging`` (the bound
    on staging bytes), ``nbytes_on_disk`` (logical bytes of all state files), ``failed`` (the
    error that made the on-disk state undefined, or None), ``closed``.
    """

    def __init__(self, directory: str | os.PathLike, size: int, names: Sequence[str], *,
                 chunk_elems: int = 1 << 20, depth: int = 2, io_threads: int = 2,
                 preallocate: bool = True, dtypes: Mapping[str, object] | None = None,
                 blocks: Mapping[str, int] | None = None) -> None:
        if not isinstance(directory, (str, os.PathLike)):
            raise TypeError(f"directory must be a str or os.PathLike, got {type(directory).__name__}")
        self.size: int = _index(size, "size")
        if self.size < 0:
            raise ValueError(f"size must be >= 0, got {self.size}")
        self.chunk_elems: int = _index(chunk_elems, "chunk_elems")
        if self.chunk_elems < 64 or self.chunk_elems % 64:
            raise ValueError(f"chunk_elems must be >= 64 and a multiple of 64, got {self.chunk_elems}")
        self.depth: int = _index(depth, "depth")
        if self.depth < 1:
            raise ValueError(f"depth must be >= 1, got {self.depth}")
        self.io_threads: int = _index(io_threads, "io_threads")
        if self.io_threads < 1:
            raise ValueError(f"io_threads must be >= 1, got {self.io_threads}")
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
            raise TypeError(f"names must be a sequence of str, got {names!r}")
        names = tuple(names)
        for n in names:
            self._check_new_name(n, names)
        self._preallocate = bool(preallocate)
        # the staging length per chunk: chunk_elems, or the whole array when it is smaller
        self._cap = min(self.chunk_elems, max(self.size, 1))
        self.names: tuple[str, ...] = ()
        #: each name's storage dtype and block (elements per stored item)
        self.dtypes: dict[str, np.dtype] = {}
        self.blocks: dict[str, int] = {}
        self._files: dict[str, pathlib.Path] = {}
        self._fds: dict[str, int] = {}
        self._staging: dict[str, list[np.ndarray]] = {}
        self._busy: set[str] = set()
        self._pool_box: list[cf.ThreadPoolExecutor | None] = [None]
        self._failed: DiskStateError | None = None
        self.closed = False

        directory = os.fspath(directory)
        try:
            self.path = pathlib.Path(tempfile.mkdtemp(prefix=PREFIX, dir=directory))
        except OSError as e:
            raise _fail(e.errno, f"cannot create the disk-tier directory under {directory!r}: "
                        f"{e.strerror or e}", directory) from e
        self._finalizer = weakref.finalize(self, _cleanup, self._pool_box, self._fds, self.path)
        try:
            self._write_marker()
            for n in names:
                self.add(n, (dtypes or {}).get(n, np.float32), (blocks or {}).get(n, 1))
        except BaseException:
            self.close()
            raise

    # -- properties ------------------------------------------------------------------------

    @property
    def nbytes_staging(self) -> int:
        """The most host bytes the staging buffers ever hold: ``(depth + 1) * min(chunk_elems, size)
        * 4`` per float32 name (each name: its items per chunk times its itemsize), plus at most
        one page of alignment per buffer."""
        return sum((self.depth + 1) * self._cap_items(n) * self.dtypes[n].itemsize for n in self.names)

    @property
    def nbytes_on_disk(self) -> int:
        """Logical bytes of the state files: ``size * 4`` per float32 name (each name: its items
        times its itemsize)."""
        return sum(self.items(n) * self.dtypes[n].itemsize for n in self.names)

    def items(self, name: str) -> int:
        """How many items the file of ``name`` holds: ``ceil(size / block)``."""
        return -(-self.size // self.blocks[name])

    def _cap_items(self, name: str) -> int:
        return -(-self._cap // self.blocks[name])

    def _span(self, name: str, start: int, stop: int) -> tuple[int, int]:
        """The items of ``name`` that hold elements ``[start, stop)``."""
        b = self.blocks[name]
        return start // b, -(-stop // b)

    @property
    def failed(self) -> DiskStateError | None:
        """The write error that left part of the on-disk state undefined (then every operation but
        ``close`` raises), or None."""
        return self._failed

    def __repr__(self) -> str:
        state = "closed" if self.closed else ("FAILED" if self._failed else "open")
        return (f"DiskState({str(self.path)!r}, size={self.size}, names={self.names}, "
                f"chunk_elems={self.chunk_elems}, depth={self.depth}, {state})")

    def __enter__(self) -> "DiskState":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- files -----------------------------------------------------------------------------

    def _check_new_name(self, name: object, names: Sequence[str]) -> None:
        if not isinstance(name, str):
            raise TypeError(f"state names must be str, got {type(name).__name__} {name!r}")
        if not name:
            raise ValueError("state names must be non-empty strings, got ''")
        if list(names).count(name) > 1:
            raise ValueError(f"state names must be unique, {name!r} appears {list(names).count(name)} times")

    def _write_marker(self) -> None:
        text = (f"{_MARKER_HEAD}\n"
                "These files are the optimizer state that npadam streams from disk while it trains:\n"
                "raw float32, not fsynced, updated in place chunk by chunk. After a crash they hold\n"
                "a mix of old and new values; npadam.checkpoint.load refuses this directory.\n"
                "Save checkpoints with npadam.checkpoint.save. Safe to delete when the process\n"
                "below is gone (npadam.tiers.DiskState.remove_stale does that).\n"
                f"pid: {os.getpid()}\n"
                f"host: {socket.gethostname()}\n"
                f"pidns: {_pid_namespace()}\n"
                f"created: {datetime.datetime.now(datetime.timezone.utc).isoformat()}\n")
        f = self.path / MARKER
        try:
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                _pwrite_full(fd, memoryview(text.encode()), 0)
            finally:
                os.close(fd)
        except OSError as e:
            raise _fail(e.errno, f"cannot write the marker file: {e.strerror or e}", f) from e

    def add(self, name: str, dtype: object = np.float32, block: int = 1) -> None:
        """Create a new zero-filled state array ``name`` (e.g. amsgrad's ``max_exp_avg_sq``) of storage
        ``dtype`` (a NumPy numeric dtype: float32, or the bits of a narrower type), one item per
        ``block`` elements (``chunk_elems`` must be a multiple of it)."""
        self._check_usable()
        if isinstance(name, str) and name in self._fds:
            raise ValueError(f"state {name!r} already exists in {self.path}")
        self._check_new_name(name, self.names + (name,))
        try:
            dt = np.dtype(dtype)
        except TypeError:
            raise TypeError(f"dtype of state {name!r} must be a NumPy dtype, got {dtype!r}") from None
        if dt.kind not in "iuf" or not dt.isnative:
            raise TypeError(f"dtype of state {name!r} must be a native integer or float dtype, got {dt}")
        block = _index(block, f"block of state {name!r}")
        if block < 1 or self.chunk_elems % block:
            raise ValueError(f"block of state {name!r} must be >= 1 and divide chunk_elems={self.chunk_elems}, "
                             f"got {block}")
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", name)[:48]
        ext = "f32" if dt == np.float32 else dt.name
        f = self.path / f"{len(self.names):02d}-{safe}.{ext}"
        nbytes = -(-self.size // block) * dt.itemsize
        try:
            fd = os.open(f, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        except OSError as e:
            raise _fail(e.errno, f"cannot create the state file of {name!r}: {e.strerror or e}", f) from e
        try:
            os.ftruncate(fd, nbytes)  # reads as zeros
            if self._preallocate and nbytes and hasattr(os, "posix_fallocate"):
                try:
                    os.posix_fallocate(fd, 0, nbytes)
                except OSError as e:
                    if e.errno not in (errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL):
                        raise
        except OSError as e:
            os.close(fd)
            try:
                os.unlink(f)
            except OSError:
                pass
            raise _fail(e.errno, f"cannot reserve {nbytes} bytes for the state file of {name!r} "
                        f"({-(-self.size // block)} {dt} items): {e.strerror or e}", f) from e
        self._fds[name] = fd
        self._files[name] = f
        self.dtypes[name], self.blocks[name] = dt, block
        self.names = self.names + (name,)

    # -- checks ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        if self.closed:
            raise RuntimeError(f"DiskState {self.path} is closed")
        if self._failed is not None:
            raise _fail(self._failed.errno, f"an earlier write-back failed, the on-disk state is undefined "
                        f"({self._failed.strerror}); close() this DiskState and restore from a checkpoint",
                        self._failed.filename or self.path)

    def _check_name(self, name: object) -> str:
        if not isinstance(name, str):
            raise TypeError(f"state name must be a str, got {type(name).__name__} {name!r}")
        if name not in self._fds:
            raise ValueError(f"no state array {name!r} (this DiskState has {list(self.names)})")
        if name in self._busy:
            raise RuntimeError(f"state {name!r} is being streamed by an unfinished stream(); exhaust or close() "
                               "that iterator first")
        return name

    def _check_range(self, start: object, stop: object, what: str = "range", limit: int | None = None) -> tuple[int, int]:
        a, b = _index(start, f"{what} start"), _index(stop, f"{what} stop")
        limit = self.size if limit is None else limit
        if not 0 <= a <= b <= limit:
            raise ValueError(f"{what} [{a}, {b}) is not inside [0, {limit})")
        return a, b

    # -- synchronous IO in the caller's thread ---------------------------------------------

    def read(self, name: str, start: int, stop: int, out: np.ndarray | None = None) -> np.ndarray:
        """Copy items (elements; for a name with a block, its items) ``[start, stop)`` of ``name`` into
        ``out`` (a writable C-contiguous array of the name's dtype and ``stop - start`` items, any
        shape) or a new 1-D array; returns it."""
        self._check_usable()
        name = self._check_name(name)
        a, b = self._check_range(start, stop, limit=self.items(name))
        dt = self.dtypes[name]
        if out is None:
            out = np.empty(b - a, dt)
        elif not isinstance(out, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(out).__name__}")
        elif out.dtype != dt or out.size != b - a or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous {dt} array of {b - a} elements, got "
                             f"{out.dtype} shape {out.shape}{'' if out.flags.writeable else ' read-only'}"
                             f"{'' if out.flags.c_contiguous else ' non-contiguous'}")
        self._io("read", name, a, b, out)
        return out

    def write(self, name: str, start: int, values: np.ndarray) -> None:
        """Copy ``values`` (the name's dtype, any shape, flattened in C order) into ``name`` at item
        ``start``."""
        self._check_usable()
        name = self._check_name(name)
        if not isinstance(values, np.ndarray):
            raise TypeError(f"values must be a numpy.ndarray, got {type(values).__name__}")
        if values.dtype != self.dtypes[name]:
            raise TypeError(f"values must be {self.dtypes[name]} (the state's dtype), got {values.dtype}")
        a = _index(start, "start")
        a, b = self._check_range(a, a + values.size, "write", self.items(name))
        self._io("write", name, a, b, np.ascontiguousarray(values))

    def _io(self, op: str, name: str, a: int, b: int, buf: np.ndarray) -> None:
        """One whole read/write of items [a, b) of ``name`` through ``buf``; DiskStateError on failure.
        Runs in the caller's thread (read/write) or a pool thread (stream)."""
        if b == a:
            return
        at = a * self.dtypes[name].itemsize
        try:
            if op == "read":
                _pread_full(self._fds[name], _bytes(buf), at)
            else:
                _pwrite_full(self._fds[name], _bytes(buf), at)
        except OSError as e:
            raise _fail(e.errno, f"{op} of {name!r} elements [{a}, {b}) failed: {e.strerror or e}",
                        self._files[name]) from e

    # -- streaming -------------------------------------------------------------------------

    def _pieces(self, ranges: Sequence[tuple[int, int]] | None) -> list[tuple[int, int]]:
        if ranges is None:
            ranges = [(0, self.size)]
        if isinstance(ranges, (str, bytes)) or not isinstance(ranges, Sequence):
            raise TypeError(f"ranges must be a sequence of (start, stop) pairs, got {ranges!r}")
        out: list[tuple[int, int]] = []
        prev = 0
        for i, r in enumerate(ranges):
            try:
                start, stop = r
            except (TypeError, ValueError):
                raise TypeError(f"ranges[{i}] must be a (start, stop) pair, got {r!r}") from None
            a, b = self._check_range(start, stop, f"ranges[{i}]")
            if a < prev:
                raise ValueError(f"ranges must be sorted and non-overlapping: ranges[{i}] = [{a}, {b}) starts "
                                 f"before the previous range's stop {prev}")
            prev = b
            out.append((a, b))
        return out

    def chunks(self, ranges: Sequence[tuple[int, int]] | None = None) -> list[tuple[int, int]]:
        """The ``(start, stop)`` chunks ``stream(names, ranges)`` yields, in order (checked like it)."""
        return list(self._chunks(self._pieces(ranges)))

    def _chunks(self, ranges: list[tuple[int, int]]) -> Iterator[tuple[int, int]]:
        for a, b in ranges:
            for s in range(a, b, self.chunk_elems):
                yield s, min(s + self.chunk_elems, b)

    def _slots(self, names: Sequence[str]) -> list[dict[str, np.ndarray]]:
        """The ``depth + 1`` staging buffers of each name (allocated once, page-aligned, reused)."""
        for n in names:
            if n not in self._staging:
                bufs = []
                nbytes = self._cap_items(n) * self.dtypes[n].itemsize
                for _ in range(self.depth + 1):
                    raw = np.empty(nbytes + _ALIGN, np.uint8)
                    skip = (-raw.ctypes.data) % _ALIGN
                    bufs.append(raw[skip:skip + nbytes].view(self.dtypes[n]))
                self._staging[n] = bufs
        return [{n: self._staging[n][i] for n in names} for i in range(self.depth + 1)]

    def release_staging(self) -> None:
        """Free the cached staging buffers (the next ``stream`` allocates them again)."""
        for n in list(self._staging):
            if n not in self._busy:
                del self._staging[n]

    def _pool(self) -> cf.ThreadPoolExecutor:
        pool = self._pool_box[0]
        if pool is None:
            pool = cf.ThreadPoolExecutor(self.io_threads, thread_name_prefix="npadam-disk")
            self._pool_box[0] = pool
        return pool

    def stream(self, names: Sequence[str], ranges: Sequence[tuple[int, int]] | None = None, *,
               write_back: bool = True) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        """Walk ``names`` chunk by chunk: yields ``(start, stop, {name: staging array})``.

        The chunks are consecutive pieces of at most ``chunk_elems`` elements of each range in
        ``ranges`` (sorted, non-overlapping ``(start, stop)`` pairs inside ``[0, size)``; default
        the whole array), cut from each range's start. The arrays are 1-D in each name's dtype,
        ``stop - start`` elements (a name with a block: the items ``[start // block, ceil(stop /
        block))``; each range then starts on a multiple of the block), holding the chunk's current
        values; modify them in place. They are staging buffers reused for later chunks: do not
        keep them past the iteration.

        While the caller works on chunk i, up to ``depth`` chunks are in flight in the pool: the
        next ones being read (read-ahead) and the finished ones being written (write-behind,
        skipped when ``write_back=False``). Staging is ``depth + 1`` chunks per name, ever.

        A chunk counts as *finished* when the caller asks for the next one (or the loop ends).
        What holds when the iteration stops early:

        - The caller's loop raises, breaks, or the iterator is closed (``close()``/``throw()``, or
          garbage-collected) while it holds chunk i: every finished chunk (before i) is written
          back before the iterator finishes closing; chunk i and all later chunks are NOT
          written: on disk they keep the values they had before the stream (in-place changes to
          chunk i are discarded). So the disk holds a prefix of updated chunks. (For a
          deterministic close, use ``contextlib.closing(ds.stream(...))`` or exhaust the loop;
          CPython closes a ``for`` loop's iterator when the loop's frame drops it.)
        - A read fails (chunk j, any name): ``DiskStateError`` is raised from the loop's
          ``next()`` when chunk j is due, after every finished chunk has been written back;
          chunk j and later are not written (unchanged on disk). The DiskState stays usable.
        - A write-back fails (chunk j, any name; ENOSPC, EIO, ...): ``DiskStateError`` (its
          ``errno`` the cause, its message the file, the name and the element range) is raised
          from the loop's ``next()`` at the first chunk boundary after the failure is seen (at
          the latest when the loop ends or closes), after waiting for every other write in
          flight. The elements of the failed write are undefined on disk; the other finished
          chunks are written; unfinished chunks are not written. The DiskState is then
          ``failed``: every later call except ``close()`` raises, since its state is no longer
          a consistent value. (Preallocation makes ENOSPC here rare: the space is reserved in
          the constructor.)

        While a stream over a name is unfinished, ``read``/``write``/``stream`` of that name raise
        RuntimeError (other names are free).
        """
        self._check_usable()
        if isinstance(names, (str, bytes)) or not isinstance(names, Sequence):
            raise TypeError(f"names must be a sequence of state names, got {names!r}")
        names = tuple(names)
        for n in names:
            self._check_name(n)
        if len(set(names)) != len(names):
            raise ValueError(f"names must be unique, got {list(names)}")
        if not isinstance(write_back, (bool, np.bool_)):
            raise TypeError(f"write_back must be a bool, got {write_back!r}")
        pieces = self._pieces(ranges)
        for n in names:
            bad = next((a for a, _ in pieces if a % self.blocks[n]), None)
            if bad is not None:
                raise ValueError(f"state {n!r} holds one item per {self.blocks[n]} elements: a streamed range must "
                                 f"start on a multiple of {self.blocks[n]}, got {bad}")
        return self._run(names, pieces, bool(write_back))

    def _run(self, names: tuple[str, ...], ranges: list[tuple[int, int]],
             write_back: bool) -> Iterator[tuple[int, int, dict[str, np.ndarray]]]:
        self._check_usable()
        for n in names:
            self._check_name(n)  # again: another stream may have started since stream() was called
        self._busy.update(names)
        slots = self._slots(names)
        pool = self._pool()
        free = collections.deque(range(self.depth + 1))
        reads: collections.deque[_Chunk] = collections.deque()
        writes: collections.deque[_Chunk] = collections.deque()
        chunks = self._chunks(ranges)
        nxt = next(chunks, None)
        normal_exit = False
        try:
            while True:
                if self.closed:
                    raise RuntimeError(f"DiskState {self.path} was closed during a stream")
                self._reap(writes, free, block=False)
                while free and nxt is not None:  # read-ahead into every free slot
                    slot = free.popleft()
                    a, b = nxt
                    futs = [pool.submit(self._io, "read", n, *self._span(n, a, b), self._part(slots[slot], n, a, b))
                            for n in names]
                    reads.append(_Chunk(a, b, slot, futs))
                    nxt = next(chunks, None)
                if not reads:
                    if nxt is None:
                        break
                    self._reap(writes, free, block=True)  # all slots writing: wait for the oldest
                    continue
                c = reads.popleft()
                errors = [e for e in [f.exception() for f in c.futures] if e is not None]  # waits for all
                if errors:
                    raise errors[0]  # the read's DiskStateError, raised here in the caller's thread
                yield c.start, c.stop, {n: self._part(slots[c.slot], n, c.start, c.stop) for n in names}
                # the caller asked for the next chunk: chunk c is finished
                if self.closed:
                    raise RuntimeError(f"DiskState {self.path} was closed during a stream")
                if write_back:
                    futs = [pool.submit(self._io, "write", n, *self._span(n, c.start, c.stop),
                                        self._part(slots[c.slot], n, c.start, c.stop)) for n in names]
                    writes.append(_Chunk(c.start, c.stop, c.slot, futs))
                else:
                    free.append(c.slot)
            while writes:
                self._reap(writes, free, block=True)
            normal_exit = True
        finally:
            try:
                if not normal_exit:
                    self._drain(reads, writes)
            finally:
                self._busy.difference_update(names)

    def _part(self, slot: dict[str, np.ndarray], name: str, start: int, stop: int) -> np.ndarray:
        """The staging array of ``name`` in ``slot`` for the chunk ``[start, stop)``: its items."""
        a, b = self._span(name, start, stop)
        return slot[name][:b - a]

    def _reap(self, writes: collections.deque, free: collections.deque, *, block: bool) -> None:
        """Return the slots of completed writes (in order) to ``free``; with ``block`` wait for the
        oldest. A failed write: wait for all others, mark the DiskState failed, raise."""
        while writes and (block or all(f.done() for f in writes[0].futures)):
            c = writes.popleft()
            block = False
            errors = []
            for f in c.futures:
                exc = f.exception()
                if exc is not None:
                    errors.append(exc)
            if errors:
                writes.appendleft(c)
                self._drain(collections.deque(), writes)  # waits for every write, sets self._failed
                raise self._failed  # type: ignore[misc]
            free.append(c.slot)

    def _drain(self, reads: collections.deque, writes: collections.deque) -> None:
        """Cancel the read-ahead and wait for every write in flight. Failed writes set
        ``self._failed`` (one error naming every failed file and range) and are raised, unless
        this DiskState had already failed (the first error is then being raised)."""
        for c in reads:
            for f in c.futures:
                f.cancel()
        for c in reads:
            for f in c.futures:
                try:
                    f.exception()
                except cf.CancelledError:
                    pass
        reads.clear()
        errors: list[BaseException] = []
        for c in writes:
            for f in c.futures:
                try:
                    exc = f.exception()
                except cf.CancelledError:  # the pool was shut down by close(): the files are gone anyway
                    continue
                if exc is not None:
                    errors.append(exc)
        writes.clear()
        if not errors:
            return
        first = errors[0]
        what = "; ".join(str(e) for e in errors[:4]) + (f"; and {len(errors) - 4} more" if len(errors) > 4 else "")
        already = self._failed is not None
        err = _fail(getattr(first, "errno", None), f"write-back failed, those elements are undefined on disk "
                    f"(the chunks finished before were written, the unfinished ones were not): {what}",
                    getattr(first, "filename", None) or self.path)
        err.__cause__ = first
        if not already:
            self._failed = err
            raise err

    # -- lifetime --------------------------------------------------------------------------

    def close(self) -> None:
        """Wait for the IO in flight, close and delete the files and the subdirectory.
        Idempotent; an unfinished stream raises RuntimeError when resumed."""
        self.closed = True
        self._staging.clear()
        self._finalizer()

    @staticmethod
    def remove_stale(directory: str | os.PathLike) -> list[pathlib.Path]:
        """Delete the DiskState subdirectories in ``directory`` left by killed processes: those whose
        marker names this host and PID namespace and a process id that no longer exists. Returns
        the deleted paths. Directories of live (or unknown) processes are left alone."""
        removed: list[pathlib.Path] = []
        host, ns = socket.gethostname(), _pid_namespace()
        for d in sorted(pathlib.Path(directory).glob(PREFIX + "*")):
            try:
                text = (d / MARKER).read_text()
            except OSError:
                continue
            if not text.startswith(_MARKER_HEAD):
                continue
            fields = dict(line.split(": ", 1) for line in text.splitlines() if ": " in line)
            if fields.get("host") != host or fields.get("pidns", "") != ns:
                continue
            try:
                pid = int(fields["pid"])
            except (KeyError, ValueError):
                continue
            if pid == os.getpid():
                continue
            try:
                os.kill(pid, 0)
                continue  # alive
            except ProcessLookupError:
                pass
            except OSError:  # e.g. EPERM: alive, someone else's
                continue
            shutil.rmtree(d, ignore_errors=True)
            removed.append(d)
        return removed

