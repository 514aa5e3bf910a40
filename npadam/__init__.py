"""npadam: a framework-agnostic AdamW runtime on flat buffers.

The public namespace only re-exports. Importing npadam is cheap: it loads NumPy
and the schedules, never Numba kernels, CuPy, torch or matplotlib.
"""

from . import schedules

__version__ = "0.1.0"
__all__ = ["schedules", "__version__"]
