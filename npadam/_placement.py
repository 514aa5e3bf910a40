"""Where optimizer state lives besides the params' memory: the checked tier options.

``OffloadPlacement`` (``offload_fraction`` / ``gpu_state_bytes`` / ``pin_memory``) says which share
of each flat buffer's state of GPU params is kept in host memory; ``DiskPlacement``
(``nvme_offload_*`` / ``host_state_bytes``) which share of the host-side state is kept in files,
and builds the ``npadam.tiers.DiskState`` that holds it. The engine (``npadam._engine``) runs the
kernels on each part: the GPU part in place, the host part through
``npadam.tiers.transfer.Staging``, the disk part streamed chunk by chunk.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from dataclasses import dataclass
from typing import Any, Callable, Iterator, Mapping, Sequence

from . import _validate as V


def tail_split(size: int, bytes_per_element: Any, fraction: float, budget: int | None,
               left: Any, align: int = 64) -> tuple[int, Any]:
    """``(elements moved out, budget left)``: the tail of a ``size``-element buffer that goes to the
    next tier, ``fraction`` of it (a multiple of ``align`` elements; all of it at 1.0), or with a
    byte ``budget`` what the ``left`` part of it does not cover (buffers in order keep what is
    left, a multiple of ``align`` elements). ``size`` is a multiple of ``align`` (the layout's).
    ``bytes_per_element`` may be a ``fractions.Fraction`` (fp8 state: its block scales), and the
    budget left is then one too: exact, no rounding drift over many buffers."""
    if budget is None:
        if fraction >= 1.0:
            return size, left
        return int(size * fraction) // align * align, left
    if size * bytes_per_element <= left:
        return 0, left - size * bytes_per_element
    keep = int(left // max(bytes_per_element, 1)) // align * align
    return size - keep, left - keep * bytes_per_element


@dataclass(frozen=True)
class OffloadPlacement:
    """State of GPU params in host memory: ``fraction`` of each buffer's state (its tail), or with
    ``device_bytes`` what that GPU budget does not cover; ``pinned`` host memory; streamed through
    ``npadam.tiers.transfer.Staging`` in pieces of ``piece_elems`` with ``depth`` in flight.
    ``copier``: makes the ``Copier`` (None: CUDA streams on the params' GPU; tests pass
    ``HostCopier``)."""

    fraction: float
    pinned: bool = True
    device_bytes: int | None = None
    piece_elems: int = 1 << 21
    depth: int = 2
    copier: Callable[[], Any] | None = None

    def split(self, size: int, bytes_per_element: int, device_left: int, align: int = 64) -> tuple[int, int]:
        """``(elements in host memory, GPU budget left)`` for one buffer (see ``tail_split``)."""
        return tail_split(size, bytes_per_element, self.fraction, self.device_bytes, device_left, align)

    def make_copier(self, device_id: int | None) -> Any:
        if self.copier is not None:
            return self.copier()
        from .tiers.transfer import CupyCopier

        return CupyCopier(device_id or 0, self.pinned)


def offload_placement(fraction: Any, pin_memory: Any, gpu_state_bytes: Any) -> OffloadPlacement | None:
    """Check ``offload_fraction`` / ``pin_memory`` / ``gpu_state_bytes``; None when all state stays
    with the params. ValueError/TypeError naming the bad value."""
    V.flag("pin_memory", pin_memory)
    fraction, gpu_state_bytes = _share_or_budget("offload_fraction", fraction, "gpu_state_bytes", gpu_state_bytes)
    if fraction == 0 and gpu_state_bytes is None:
        return None
    return OffloadPlacement(fraction, bool(pin_memory), gpu_state_bytes)


def _share_or_budget(fname: str, fraction: Any, bname: str, budget: Any) -> tuple[float, int | None]:
    """A tier's share in [0, 1] or a byte budget (not both), checked."""
    fraction = V.real(fname, fraction, lo=0.0, hi=1.0)
    if budget is not None:
        budget = V.integer(bname, budget, lo=0)
        if fraction:
            raise ValueError(f"give {fname} ({fraction}) or {bname} ({budget}), not both: the budget chooses "
                             "the fraction")
    return fraction, budget


@dataclass(frozen=True)
class DiskPlacement:
    """Where state goes besides host memory: ``fraction`` of each buffer's state elements (its tail,
    a multiple of 64 elements; all of it at 1.0) in files under ``directory``, streamed through
    ``staging_bytes`` of host memory (``npadam.tiers.DiskState``)."""

    fraction: float
    directory: str
    staging_bytes: int
    host_bytes: int | None = None  # instead of a fraction: host memory for state, buffers in order

    def split(self, size: int, bytes_per_element: int, host_left: int, align: int = 64) -> tuple[int, int]:
        """``(elements on disk, host budget left)`` for a ``size``-element buffer whose state takes
        ``bytes_per_element`` bytes per element (with ``host_bytes``: the buffer keeps in memory
        what the budget left covers, a multiple of ``align`` elements, and the rest goes to disk;
        the disk part is a multiple of ``align`` too: fp8 state's blocks stay whole)."""
        return tail_split(size, bytes_per_element, self.fraction, self.host_bytes, host_left, align)

    def store(self, size: int, names: Sequence[str], dtypes: Mapping[str, Any] | None = None,
              blocks: Mapping[str, int] | None = None) -> Any:
        """The ``DiskState`` of ``size`` elements of state ``names`` (storage ``dtypes``, float32 by
        default; ``blocks``: fp8 block scales, one item per block), chunks a multiple of every block."""
        from .tiers import DiskState

        depth = 2  # chunk i in the kernel, i + 1 being read, i - 1 being written
        per_chunk = (depth + 1) * 4 * 4  # staging copies x at most four float32 arrays (narrower state: less)
        unit = max([64, *(blocks or {}).values()])
        chunk = max(unit, self.staging_bytes // per_chunk // unit * unit)
        return DiskState(self.directory, size, names, chunk_elems=chunk, depth=depth, dtypes=dtypes, blocks=blocks)


def disk_placement(fraction: Any, directory: Any, staging_bytes: Any,
                   host_state_bytes: Any = None) -> DiskPlacement | None:
    """Check ``nvme_offload_fraction`` / ``host_state_bytes`` / ``nvme_offload_dir`` /
    ``nvme_staging_bytes``; None when nothing goes to disk. ValueError/TypeError naming the bad value."""
    fraction, host_state_bytes = _share_or_budget("nvme_offload_fraction", fraction, "host_state_bytes",
                                                  host_state_bytes)
    staging_bytes = V.integer("nvme_staging_bytes", staging_bytes, lo=1 << 16)
    if fraction == 0 and host_state_bytes is None:
        return None
    what = f"nvme_offload_fraction={fraction}" if host_state_bytes is None else f"host_state_bytes={host_state_bytes}"
    if directory is None:
        raise ValueError(f"{what} needs nvme_offload_dir (a directory for the state files)")
    if not isinstance(directory, (str, os.PathLike)):
        raise TypeError(f"nvme_offload_dir must be a path, got {type(directory).__name__} {directory!r}")
    if not os.path.isdir(directory):
        raise ValueError(f"nvme_offload_dir {os.fspath(directory)!r} is not a directory")
    return DiskPlacement(fraction, os.fspath(directory), staging_bytes, host_state_bytes)


#: CI stand-in (``standin``): when set, host params take the GPU-params path with this placement
_STANDIN: list[OffloadPlacement] = []


@contextlib.contextmanager
def standin(copier: Callable[[], Any], piece_elems: int = 1 << 21, depth: int = 2) -> Iterator[None]:
    """Tests only: optimizers built inside treat host params as GPU params whose "device" is host
    memory, so ``offload_fraction`` / ``gpu_state_bytes`` put their state behind ``copier`` (a
    ``npadam.tiers.transfer.HostCopier``) and the whole GPU↔host orchestration runs without a GPU."""
    _STANDIN.append(OffloadPlacement(0.0, False, None, piece_elems, depth, copier))
    try:
        yield
    finally:
        _STANDIN.pop()


def engine_offload(offload: OffloadPlacement | None, disk: DiskPlacement | None,
                   device: str) -> OffloadPlacement | None:
    """The offload placement an engine on ``device`` gets: None for host params (their state is in
    host memory already), except under ``standin``. ValueError for a disk tier on GPU params without
    a host part (the disk holds a share of the host-side state)."""
    if offload is not None and device == "cpu":
        if not _STANDIN:
            return None
        s = _STANDIN[-1]
        offload = dataclasses.replace(offload, piece_elems=s.piece_elems, depth=s.depth, copier=s.copier)
    if disk is not None and device != "cpu" and offload is None:
        what = ("nvme_offload_fraction" if disk.host_bytes is None else "host_state_bytes")
        raise ValueError(f"{what} with params on a GPU needs offload_fraction > 0 (or gpu_state_bytes): the disk "
                         "holds part of the state kept off the GPU")
    return offload
