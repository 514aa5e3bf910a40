"""``npadam.torch.lr_finder``: the learning-rate range test for a torch model, a loss function and data.

It builds the ``step_fn`` of ``npadam.lr_finder`` (the range test, its formulas and the
restore contract are documented there) from ``model``, ``loss_fn`` and ``data``: each
update takes the next batch ``(inputs, targets, *ignored)`` of ``data``, moves its tensors
to the model's device, computes ``loss_fn(model(inputs), targets)`` in training mode and
runs ``backward()``; the optimizer (``npadam.torch`` or ``torch.optim``) steps.

``data`` is cycled as torch-lr-finder does: an iterable that can be iterated again (a
``DataLoader``, a list) starts over when exhausted; an iterator (a generator) is replayed
from the batches it gave.

Besides what ``npadam.lr_finder`` restores (params, optimizer state and groups, grads),
this puts back the model's buffers (BatchNorm running statistics, counters; the same
tensor objects), each module's ``training`` flag, and the random number generators the
test consumed (Python's, NumPy's global, torch's CPU and initialised CUDA generators, as
Lightning's ``isolate_rng``), so that the training that follows is the one that would have
run without the test.
"""

from __future__ import annotations

import random
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch

from ..lr_finder import LRFinderResult
from ..lr_finder import lr_finder as _lr_finder


class _Cycle:
    """Batches of ``data`` for ever: re-iterate an iterable, replay an iterator's batches."""

    def __init__(self, data: Iterable[Any]) -> None:
        self.data = data
        self.iterator: Iterator[Any] = iter(data)
        self.once = self.iterator is data  # an iterator: it cannot start over
        self.seen: list[Any] = []
        self.replay = -1

    def __next__(self) -> Any:
        if self.replay >= 0:
            batch = self.seen[self.replay % len(self.seen)]
            self.replay += 1
            return batch
        try:
            batch = next(self.iterator)
        except StopIteration:
            if self.once:
                if not self.seen:
                    raise ValueError("data gave no batches") from None
                self.replay = 1
                return self.seen[0]
            self.iterator = iter(self.data)
            try:
                batch = next(self.iterator)
            except StopIteration:
                raise ValueError("data gave no batches") from None
        if self.once:
            self.seen.append(batch)
        return batch


def _to(x: Any, device: torch.device) -> Any:
    """Tensors in ``x`` (nested in tuples, lists, dicts) moved to ``device``; anything else as it is."""
    if isinstance(x, torch.Tensor):
        return x.to(device)
    if isinstance(x, (tuple, list)):
        return type(x)(_to(v, device) for v in x)
    if isinstance(x, dict):
        return {k: _to(v, device) for k, v in x.items()}
    return x


class _ModelState:
    """The model's parameters and buffers (the objects each module holds, and their values), the
    modules' ``training`` flags and the random number generators; ``restore`` puts them back."""

    def __init__(self, model: torch.nn.Module) -> None:
        self.slots = []
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, t in table.items():
                    if t is not None:
                        self.slots.append((table, name, t, t.detach().clone()))
        self.training = [(m, m.training) for m in model.modules()]
        self.python_rng = random.getstate()
        self.numpy_rng = np.random.get_state()
        self.torch_rng = torch.get_rng_state()
        self.cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_initialized() else None

    def restore(self) -> None:
        with torch.no_grad():
            for table, name, t, saved in self.slots:
                if table.get(name) is not t:
                    table[name] = t
                t.copy_(saved)
        for m, flag in self.training:
            m.training = flag
        random.setstate(self.python_rng)
        np.random.set_state(self.numpy_rng)
        torch.set_rng_state(self.torch_rng)
        if self.cuda_rng is not None:
            torch.cuda.set_rng_state_all(self.cuda_rng)


def lr_finder(model: torch.nn.Module, loss_fn: Callable[[Any, Any], torch.Tensor], data: Iterable[Any],
              optimizer: torch.optim.Optimizer, start_lr: float = 1e-7, end_lr: float = 10.0, num_steps: int = 100,
              mode: str = "exp", smooth: float = 0.05, diverge: float | None = 4.0, **kwargs: Any) -> LRFinderResult:
    """The range test of ``npadam.lr_finder`` on ``model`` trained by ``optimizer`` with
    ``loss_fn(model(inputs), targets)`` over the batches of ``data``; everything put back after.

    ``kwargs``: ``npadam.lr_finder``'s keyword options (``skip_start``, ``skip_end``,
    ``progress``, ``callback``).

    >>> import torch, npadam.torch
    >>> torch.manual_seed(0) and None
    >>> model = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    >>> x = torch.randn(64, 4); data = [(x[i:i + 16], x[i:i + 16].sum(1, keepdim=True)) for i in range(0, 64, 16)]
    >>> opt = npadam.torch.AdamW(model.parameters(), lr=1e-3)
    >>> before = [p.detach().clone() for p in model.parameters()]
    >>> res = npadam.torch.lr_finder(model, torch.nn.functional.mse_loss, data, opt, num_steps=40, progress=False)
    >>> res.lrs.size >= 20, all(torch.equal(a, b) for a, b in zip(before, model.parameters())), opt.step_count
    (True, True, 0)
    """
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if not callable(loss_fn):
        raise TypeError(f"loss_fn must be callable (outputs, targets) -> loss, got {type(loss_fn).__name__}")
    if not hasattr(data, "__iter__") or isinstance(data, (str, bytes, torch.Tensor, dict)):
        raise TypeError(f"data must be an iterable or iterator of (inputs, targets) batches, got {type(data).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise TypeError(f"optimizer must be an npadam.torch or torch.optim optimizer, got {type(optimizer).__name__}")
    first = next(iter(model.parameters()), None)
    device = first.device if first is not None else torch.device("cpu")
    batches: _Cycle | None = None
    count = 0

    def step_fn() -> torch.Tensor:
        nonlocal batches, count
        if batches is None:  # the first update: the arguments were checked by npadam.lr_finder
            batches = _Cycle(data)
            model.train()
        batch = next(batches)
        if not isinstance(batch, (tuple, list)) or len(batch) < 2:
            raise TypeError(f"data must give (inputs, targets) batches; batch {count} is a {type(batch).__name__}"
                            f"{f' of length {len(batch)}' if isinstance(batch, (tuple, list)) else ''}: write a "
                            "step_fn for npadam.lr_finder instead")
        count += 1
        inputs, targets = _to(batch[0], device), _to(batch[1], device)
        loss = loss_fn(model(inputs), targets)
        if not isinstance(loss, torch.Tensor) or loss.numel() != 1 or not loss.requires_grad:
            shape = f" of shape {tuple(loss.shape)}" if isinstance(loss, torch.Tensor) else ""
            raise TypeError(f"loss_fn must return a one-element tensor that requires grad, got "
                            f"{type(loss).__name__}{shape}")
        loss.backward()
        return loss.detach()

    saved = _ModelState(model)
    try:
        return _lr_finder(step_fn, optimizer, start_lr, end_lr, num_steps, mode, smooth, diverge, **kwargs)
    finally:
        saved.restore()
