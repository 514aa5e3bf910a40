"""npadam: a framework-agnostic AdamW (and SGD) runtime on flat buffers.

The public namespace only re-exports. Importing npadam is cheap: it loads NumPy
and the schedules, never Numba kernels, CuPy, torch or matplotlib (kernels
compile lazily on first use).

>>> import numpy as np, npadam
>>> w = np.zeros(3, np.float32)
>>> opt = npadam.AdamW([w], lr=npadam.schedules.constant(1e-2))
>>> opt.step([np.ones(3, np.float32)]).skipped
False
"""

from . import checkpoint, functional, interop, schedules
from .layout import FlatLayout, FlatStorage, flat_parameters, flat_storage
from .lr_finder import LRFinderResult, lr_finder
from .optimizer import SGD, Adam, AdamW, StepInfo
from .scaler import LossScaler

__version__ = "0.1.0"
__all__ = ["Adam", "AdamW", "FlatLayout", "FlatStorage", "LRFinderResult", "LossScaler", "SGD", "StepInfo",
           "flat_parameters", "flat_storage", "lr_finder", "checkpoint", "functional", "interop", "schedules",
           "__version__"]
