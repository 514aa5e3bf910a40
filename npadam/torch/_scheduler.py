"""``npadam.torch.LRScheduler``: npadam Schedules drive any torch optimizer.

A torch ``LRScheduler`` whose k-th value (``last_epoch == k``, 0 right after
construction) is ``schedule(k)``: the lr of the optimizer's k-th update, the same
convention as every npadam Schedule. With a ``ScheduleSet`` it also writes the set's
weight decay and beta1 (``betas[0]``, or ``momentum`` for optimizers without betas)
and beta2. Works on ``npadam.torch`` optimizers and on ``torch.optim`` ones alike.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from ..schedules import Schedule, ScheduleSet


def _as_set(s: Any, where: str) -> ScheduleSet:
    if isinstance(s, ScheduleSet):
        return s
    if isinstance(s, Schedule):
        return ScheduleSet(lr=s)
    raise TypeError(f"{where} must be a npadam Schedule or ScheduleSet, got {type(s).__name__}")


class LRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Drive ``optimizer``'s param groups with npadam schedules.

    ``schedule``: a ``Schedule`` (lr), a ``ScheduleSet`` (lr and, where set, weight
    decay, beta1, beta2) or a list of either, one per param group. Call ``step()``
    after each ``optimizer.step()`` as with any torch scheduler. The schedules are not
    part of ``state_dict()`` (like torch's ``LambdaLR`` lambdas): rebuild the scheduler
    with the same schedules, then load the state dict.

    >>> import torch, npadam.torch
    >>> from npadam import schedules
    >>> w = torch.nn.Parameter(torch.zeros(3))
    >>> opt = torch.optim.SGD([w], lr=1.0)
    >>> sched = npadam.torch.LRScheduler(opt, schedules.linear(1.0, 0.0, 4))
    >>> [opt.param_groups[0]["lr"]] + [(opt.step(), sched.step(), opt.param_groups[0]["lr"])[2] for _ in range(3)]
    [1.0, 0.75, 0.5, 0.25]
    """

    def __init__(self, optimizer: torch.optim.Optimizer, schedule: Schedule | ScheduleSet | Sequence[Any],
                 last_epoch: int = -1) -> None:
        groups = optimizer.param_groups
        self._single: ScheduleSet | None = None
        if isinstance(schedule, (list, tuple)):
            if len(schedule) != len(groups):
                raise ValueError(f"got {len(schedule)} schedules for {len(groups)} param groups")
            self.schedules = [_as_set(s, f"schedule[{i}]") for i, s in enumerate(schedule)]
        else:
            self._single = _as_set(schedule, "schedule")
            self.schedules = [self._single] * len(groups)
        self._check_groups(groups)
        super().__init__(optimizer, last_epoch)

    def _check_groups(self, groups: Sequence[dict[str, Any]]) -> None:
        for i, (g, s) in enumerate(zip(groups, self.schedules)):
            if (s.beta1 is not None or s.beta2 is not None) and "betas" not in g and "momentum" not in g:
                raise ValueError(f"param_groups[{i}] has neither betas nor momentum for the schedule's beta1/beta2")
            if s.weight_decay is not None and "weight_decay" not in g:
                raise ValueError(f"param_groups[{i}] has no weight_decay for the schedule's weight decay")

    def _follow_groups(self) -> None:
        """Groups added to the optimizer later get the single schedule too (with a list of
        per-group schedules, a new group is an error naming the mismatch)."""
        groups = self.optimizer.param_groups
        if len(groups) == len(self.schedules):
            return
        if self._single is None:
            raise ValueError(f"the optimizer has {len(groups)} param groups now, this scheduler {len(self.schedules)} "
                             "schedules; build the scheduler again with one schedule per group")
        self.schedules = [self._single] * len(groups)
        self._check_groups(groups)
        for g in groups:
            g.setdefault("initial_lr", g["lr"])
        self.base_lrs = [g["initial_lr"] for g in groups]

    def get_lr(self) -> list[float]:
        self._follow_groups()
        k = max(self.last_epoch, 0)
        return [float(s.lr(k)) for s in self.schedules]

    def step(self, epoch: int | None = None) -> None:
        super().step(epoch)
        k = max(self.last_epoch, 0)
        for g, s in zip(self.optimizer.param_groups, self.schedules):
            if s.weight_decay is not None:
                g["weight_decay"] = float(s.weight_decay(k))
            if s.beta1 is not None or s.beta2 is not None:
                if "betas" in g:
                    b1, b2 = g["betas"]
                    g["betas"] = (float(s.beta1(k)) if s.beta1 is not None else b1,
                                  float(s.beta2(k)) if s.beta2 is not None else b2)
                elif s.beta1 is not None:
                    g["momentum"] = float(s.beta1(k))

    _NOT_STATE = ("optimizer", "schedules", "_single")

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (``torch.load(weights_only=True)`` reads it); the schedules are not in it."""
        return {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self._NOT_STATE})
