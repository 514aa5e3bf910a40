"""Where optimizer state lives besides host memory: the checked ``nvme_offload_*`` options.

``DiskPlacement`` says which share of each flat buffer's state is kept in files and builds the
``npadam.tiers.DiskState`` that holds it; the engine (``npadam._engine``) streams that part
through the kernels.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Sequence

from . import _validate as V


@dataclass(frozen=True)
class DiskPlacement:
    """Where state goes besides host memory: ``fraction`` of each buffer's state elements (its tail,
    a multiple of 64 elements; all of it at 1.0) in files under ``directory``, streamed through
    ``staging_bytes`` of host memory (``npadam.tiers.DiskState``)."""

    fraction: float
    directory: str
    staging_bytes: int
    host_bytes: int | None = None  # instead of a fraction: host memory for state, buffers in order

    def split(self, size: int, bytes_per_element: int, host_left: int) -> tuple[int, int]:
        """``(elements on disk, host budget left)`` for a ``size``-element buffer whose state takes
        ``bytes_per_element`` bytes per element (with ``host_bytes``: the buffer keeps in memory
        what the budget left covers, a multiple of 64 elements, and the rest goes to disk)."""
        if self.host_bytes is None:
            if self.fraction >= 1.0:
                return size, host_left
            return int(size * self.fraction) // 64 * 64, host_left
        if size * bytes_per_element <= host_left:
            return 0, host_left - size * bytes_per_element
        host = host_left // max(bytes_per_element, 1) // 64 * 64
        return size - host, host_left - host * bytes_per_element

    def store(self, size: int, names: Sequence[str]) -> Any:
        from .tiers import DiskState

        depth = 2  # chunk i in the kernel, i + 1 being read, i - 1 being written
        per_chunk = (depth + 1) * 4 * 4  # staging copies x at most four float32 arrays
        chunk = max(64, self.staging_bytes // per_chunk // 64 * 64)
        return DiskState(self.directory, size, names, chunk_elems=chunk, depth=depth)


def disk_placement(fraction: Any, directory: Any, staging_bytes: Any,
                   host_state_bytes: Any = None) -> DiskPlacement | None:
    """Check ``nvme_offload_fraction`` / ``host_state_bytes`` / ``nvme_offload_dir`` /
    ``nvme_staging_bytes``; None when nothing goes to disk. ValueError/TypeError naming the bad value."""
    fraction = V.real("nvme_offload_fraction", fraction, lo=0.0, hi=1.0)
    staging_bytes = V.integer("nvme_staging_bytes", staging_bytes, lo=1 << 16)
    if host_state_bytes is not None:
        host_state_bytes = V.integer("host_state_bytes", host_state_bytes, lo=0)
        if fraction:
            raise ValueError(f"give nvme_offload_fraction ({fraction}) or host_state_bytes ({host_state_bytes}), "
                             "not both: the budget chooses the fraction")
    elif fraction == 0:
        return None
    what = f"nvme_offload_fraction={fraction}" if host_state_bytes is None else f"host_state_bytes={host_state_bytes}"
    if directory is None:
        raise ValueError(f"{what} needs nvme_offload_dir (a directory for the state files)")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"nvme_offload_dir must be a path, got {type(directory).__name__} {directory!r}")
    if not os.path.isdir(directory):
        raise ValueError(f"nvme_offload_dir {os.fspath(directory)!r} is not a directory")
    return DiskPlacement(fraction, os.fspath(directory), staging_bytes, host_state_bytes)
