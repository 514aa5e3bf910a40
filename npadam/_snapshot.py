"""An optimizer's snapshot, put back exactly: what ``npadam.lr_finder`` changes while it trains.

``Snapshot(optimizer, kind)`` takes, for npadam optimizers (``kind`` ``"npadam"`` or
``"npadam.torch"``), the ``state_dict()`` (moments, fp32 masters, step counts, loss scaler)
and a float32 host copy of the params; for ``torch.optim`` optimizers (``"torch"``) a clone
of each state tensor and param. For all: each param group's values (the group dicts
themselves, and the containers in them: npadam's ``schedules``), npadam's record of the
scheduled values it wrote, npadam.torch's ``last_step``, a torch scheduler's ``_opt_called``
mark, and (torch front-ends) each param's ``.grad``. ``restore()`` puts all of it back: the
state through ``load_state_dict``, the params through ``_checkpoint_write_params`` (the
path ``npadam.checkpoint.load`` takes; exact for float32, bfloat16 and float16), the groups
into the same dict objects.
"""

from __future__ import annotations

import copy
from typing import Any

import numpy as np

_MISSING = object()


def _copy_group(g: dict[str, Any]) -> dict[str, tuple[Any, Any]]:
    """A group's contents: each value, with a shallow copy of the containers in it (npadam's
    ``schedules``, ``names``), whose objects ``_restore_group`` refills and puts back."""
    return {k: (v, copy.copy(v) if isinstance(v, (dict, list)) and k != "params" else None) for k, v in g.items()}


def _restore_group(g: dict[str, Any], saved: dict[str, tuple[Any, Any]]) -> None:
    """Put the saved values back into ``g``: the same objects, containers refilled with what they held."""
    g.clear()
    for k, (v, contents) in saved.items():
        if isinstance(v, dict) and contents is not None:
            v.clear()
            v.update(contents)
        elif isinstance(v, list) and contents is not None:
            v[:] = contents
        g[k] = v


class Snapshot:
    """Everything the range test changes in an optimizer, taken before it and put back by ``restore``."""

    def __init__(self, optimizer: Any, kind: str) -> None:
        self.opt, self.kind = optimizer, kind
        self.group_list = optimizer.param_groups
        self.groups = [(g, _copy_group(g)) for g in optimizer.param_groups]
        # npadam.AdamW's record of the scheduled values it wrote (which tells a float the caller
        # assigned from its own), npadam.torch's last StepInfo, torch schedulers' "step was called"
        self.attrs = {a: optimizer.__dict__.get(a, _MISSING) for a in ("_opt_called", "last_step", "_written")}
        if self.attrs["_written"] is not _MISSING:
            self.attrs["_written"] = copy.deepcopy(self.attrs["_written"])
        if kind == "torch":
            import torch

            self.state_obj = optimizer.state
            self.state = {p: (d, dict(d), {k: v.detach().clone() for k, v in d.items() if isinstance(v, torch.Tensor)},
                              {k: copy.deepcopy(v) for k, v in d.items() if not isinstance(v, torch.Tensor)})
                          for p, d in optimizer.state.items()}
            self.params = [(p, p.detach().clone()) for g in optimizer.param_groups for p in g["params"]]
        else:
            from .checkpoint import _frontend, _host

            self.sd = optimizer.state_dict()
            if hasattr(optimizer, "_fill_unsaved"):  # callable schedules: the live ones, the groups may drop them
                self.sd = optimizer._fill_unsaved(self.sd)
            sharding = getattr(optimizer, "_sharding", None)
            if sharding is None:
                check_restorable(self.sd)
            else:  # each rank checks its shard; a failure on one rank raises on every rank
                try:
                    check_restorable(self.sd)
                    error = None
                except ValueError as e:
                    error = e
                sharding.agree("lr_finder", error)
            self.values = [np.array(_host(x), dtype=np.float32).reshape(-1) for x in _frontend(optimizer)[1]]
        if kind != "npadam":
            params = [p for g in optimizer.param_groups for p in g["params"]]
            self.grads = [(p, p.grad, None if p.grad is None else p.grad.detach().clone()) for p in params]

    def restore(self) -> None:
        opt = self.opt
        if self.kind == "torch":
            self._restore_torch()
        else:
            opt.load_state_dict(self.sd)
            opt._checkpoint_write_params(self.values)
        if opt.param_groups is not self.group_list:
            opt.param_groups = self.group_list
        self.group_list[:] = [g for g, _ in self.groups]
        for g, saved in self.groups:
            _restore_group(g, saved)
        for name, value in self.attrs.items():
            if value is _MISSING:
                opt.__dict__.pop(name, None)
            else:
                setattr(opt, name, value)
        if self.kind != "npadam":
            self._restore_grads()

    def _restore_torch(self) -> None:
        import torch

        opt = self.opt
        with torch.no_grad():
            for p, saved in self.params:
                p.copy_(saved)
            if opt.state is not self.state_obj:
                opt.state = self.state_obj
            state = self.state_obj
            for p in [p for p in state if p not in self.state]:
                del state[p]
            for p, (d, items, tensors, others) in self.state.items():
                d.clear()
                d.update(items)
                for k, saved in tensors.items():
                    d[k].copy_(saved)
                d.update(others)
                state[p] = d

    def _restore_grads(self) -> None:
        import torch

        with torch.no_grad():
            for p, g, saved in self.grads:
                if g is None:
                    p.grad = None
                    continue
                if p.grad is not g:
                    p.grad = g
                g.copy_(saved)


def check_restorable(sd: dict[str, Any]) -> None:
    """The state ``load_state_dict`` will take back: its moments must be finite (it refuses
    others). Raised before the test changes anything."""
    from ._state import _float32

    names = sd["npadam"]["names"]
    for i, st in sd["state"].items():
        for key in ("exp_avg", "exp_avg_sq", "max_exp_avg_sq", "momentum_buffer"):
            if key in st and st[key] is not None:
                what = f"optimizer state of param {names[i]!r}: {key}"
                if not np.isfinite(_float32(st[key], what)).all():
                    raise ValueError(f"{what} has non-finite values (stepped with skip_nonfinite=False?); "
                                     "lr_finder could not put it back after the test, so it does not start")
