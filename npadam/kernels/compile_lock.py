"""Kernel cache loads and compilations that are safe with many processes at once.

Numba's on-disk cache is not safe for processes that compile overloads of one function at the
same time, which is what ranks started together do (``mpiexec -n 8``, ``torchrun``,
pytest-xdist workers). ``IndexDataCacheFile.save`` reads the function's index file, picks the
first free data-file number and writes the index back, so two processes can give two overloads
the same number; and a process that loads while another is between writing the index and
writing the data reads a stale data file under the new key. Either way a later process can run
the *wrong kernel* without an error (seen here once as ``NRT_adapt_ndarray_to_python: descr is
NULL``). Two measures:

- every variant of a closure-built kernel gets its own qualified name (``variant_name``), hence
  its own index file: variants no longer share an index, so processes compile different
  variants in parallel without touching each other's files;
- ``serialize_compiles(dispatcher)`` makes every cache load and compilation of a dispatcher hold
  an exclusive ``fcntl.flock`` on a lock file next to its index (same variant, or another
  overload of one function, from several processes: one compiles and saves, the others then
  load). It replaces the instance's ``_compile_for_args``, the method Numba's C dispatcher calls
  only when no compiled overload matches the arguments: calls that run compiled code never touch
  the lock.

``fcntl`` is the standard library's own lock (no dependency for these few lines); where it is
missing (Windows) loads and compilations are not serialized, as before.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
import threading
from typing import Any, Iterator

try:
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms npadam's kernels run on
    fcntl = None  # type: ignore[assignment]

LOCK_SUFFIX = ".npadam-lock"
_local = threading.RLock()  # one compilation per process as well; re-entry holds the file lock already
_depth = threading.local()


def variant_name(base: str, key: tuple) -> str:
    """A qualified name for the variant ``key`` of the closure-built function ``base``: letters,
    digits and underscores, the same in every process (Numba names cache files after it)."""
    return base + "__" + "_".join(str(int(k)) for k in key)


def lock_path(dispatcher: Any) -> str:
    """The lock file next to ``dispatcher``'s cache index (in the temporary directory, named after
    that path, when the cache directory is not writable)."""
    cache = getattr(dispatcher, "_cache", None)
    cache_dir = getattr(cache, "_cache_path", None) or tempfile.gettempdir()
    index = getattr(getattr(cache, "_cache_file", None), "_index_name", None) or dispatcher.py_func.__qualname__
    path = os.path.join(cache_dir, index + LOCK_SUFFIX)
    if os.access(cache_dir, os.W_OK):
        return path
    digest = hashlib.sha256(os.path.abspath(path).encode()).hexdigest()[:16]
    return os.path.join(tempfile.gettempdir(), f"npadam-{digest}{LOCK_SUFFIX}")


@contextlib.contextmanager
def held(path: str) -> Iterator[None]:
    """Hold the exclusive lock on ``path`` (created if missing) and this process's compile lock."""
    with _local:
        depth = getattr(_depth, "n", 0)
        if fcntl is None or depth:  # a second flock of the file from this process would wait for itself
            yield
            return
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            _depth.n = 1
            try:
                yield
            finally:
                _depth.n = 0
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


def serialize_compiles(dispatcher: Any) -> Any:
    """``dispatcher`` with every cache load and compilation under ``held(lock_path(dispatcher))``."""
    compile_for_args = dispatcher._compile_for_args
    path = lock_path(dispatcher)

    def locked(*args: Any, **kws: Any) -> Any:
        with held(path):
            return compile_for_args(*args, **kws)

    dispatcher._compile_for_args = locked
    return dispatcher
