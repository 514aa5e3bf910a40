"""Numba's threading layer and thread count, chosen so that npadam never changes the caller's threading.

Numba's OpenMP layer shares libgomp with torch (and any other OpenMP user in the
process): its first parallel launch resets the OpenMP thread count, so after
``torch.set_num_threads(1)`` torch silently runs on every core again (measured
with torch 2.13 and Numba 0.68: 1 becomes 2 on a 2-core machine). npadam
therefore picks the layer itself before Numba launches its first parallel region:

- ``tbb`` when Intel TBB is installed (it is a dependency on x86-64): its own
  pool, safe to call from several Python threads;
- else ``workqueue``: Numba's own pool, no OpenMP (one launching thread at a time).

A layer the caller chose (``NUMBA_THREADING_LAYER`` in the environment, or
``numba.config.THREADING_LAYER`` set before npadam's first step) is kept, and so
is one Numba has already started. Results do not depend on the layer (the
kernels' arithmetic and the norm's blocking do not depend on threads; tested
across all three layers).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator

_CHOICE: str | None = None


def _tbb_available() -> bool:
    """Whether Numba's TBB layer can start: load ``libtbb.so.12`` by name and check its version the
    way Numba's own launch does (the pip ``tbb`` package puts it in ``sys.prefix/lib``, where the
    extension's own loader does not look until the library is loaded), then import the pool."""
    try:
        from numba.np.ufunc import parallel

        check = getattr(parallel, "_check_tbb_version_compatible", None)
        if check is not None:
            check()
        from numba.np.ufunc import tbbpool  # noqa: F401 - fails without a usable TBB
    except Exception:  # noqa: BLE001 - ImportError or an OSError from a broken TBB install
        return False
    return True


def configure() -> str:
    """Pick the threading layer (see the module docstring); returns what Numba will use or uses."""
    global _CHOICE
    import numba
    from numba.np.ufunc import parallel

    if parallel._is_initialized:  # Numba has launched already: nothing can change now
        return numba.threading_layer()
    if _CHOICE is None:
        requested = os.environ.get("NUMBA_THREADING_LAYER", "").strip()
        if requested or numba.config.THREADING_LAYER != "default":
            _CHOICE = numba.config.THREADING_LAYER  # the caller's choice
        else:
            _CHOICE = "tbb" if _tbb_available() else "workqueue"
            numba.config.THREADING_LAYER = _CHOICE
    return _CHOICE


def max_threads() -> int:
    """The most threads a kernel can use (``NUMBA_NUM_THREADS``, by default the core count)."""
    import numba

    return int(numba.config.NUMBA_NUM_THREADS)


@contextlib.contextmanager
def limited(num_threads: int | None) -> Iterator[None]:
    """Run Numba's parallel kernels on ``num_threads`` threads inside the block (this thread only).

    Numba's thread count is per launching thread and restored afterwards; no other
    library's setting is touched."""
    if num_threads is None:
        yield
        return
    import numba

    before = numba.get_num_threads()
    numba.set_num_threads(num_threads)
    try:
        yield
    finally:
        numba.set_num_threads(before)
