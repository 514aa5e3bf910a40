"""Where optimizer state lives besides the params' memory: the host and disk tiers.

- ``npadam.tiers.disk``: ``DiskState``, float32 state arrays in files streamed through bounded
  host staging (the NVMe tier; plain NumPy and the standard library).
- ``npadam.tiers.transfer``: the GPU↔host pipeline for GPU params whose state lives in host
  memory (``offload_fraction``): grads and params stream device→host in fixed-size pieces on
  their own copy streams through pinned staging, the CPU kernel updates each piece, and the
  updated params stream back, all overlapping. Its ordering logic runs against any ``Copier``:
  CuPy streams on a GPU, or ``HostCopier`` (host memory with threaded, delayed copies) in CI.

The engine (``npadam._engine``) splits each flat buffer's state into contiguous parts, one per
tier, and runs the same kernels on each; results are bit-identical for any split.
"""

from .disk import MARKER, PREFIX, DiskState, DiskStateError

__all__ = ["DiskState", "DiskStateError", "MARKER", "PREFIX"]
