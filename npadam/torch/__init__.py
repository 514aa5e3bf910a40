"""npadam for PyTorch: ``torch.optim.Optimizer`` subclasses over npadam's kernels, and a scheduler.

Importing this module imports torch (``import npadam`` alone does not).

>>> import torch, npadam.torch
>>> model = torch.nn.Linear(4, 2)
>>> opt = npadam.torch.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1, max_grad_norm=1.0)
>>> model(torch.ones(3, 4)).sum().backward()
>>> opt.step(); opt.zero_grad()
>>> int(opt.state[model.weight]["step"])
1
"""

from ._lr_finder import lr_finder
from ._optimizer import SGD, Adam, AdamW
from ._scheduler import LRScheduler

__all__ = ["Adam", "AdamW", "LRScheduler", "SGD", "lr_finder"]
