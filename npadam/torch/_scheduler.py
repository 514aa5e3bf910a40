"""``npadam.torch.LRScheduler``: npadam Schedules drive any torch optimizer.

A torch ``LRScheduler`` whose k-th value (``last_epoch == k``, 0 right after
construction) is ``schedule(k)``: the lr of the optimizer's k-th update, the same
convention as every npadam Schedule. With a ``ScheduleSet`` it also writes the set's
weight decay and beta1 (``betas[0]``, or ``momentum`` for optimizers without betas)
and beta2. Works on ``npadam.torch`` optimizers and on ``torch.optim`` ones alike.
"""

from __future__ import annotations

import weakref
from typing import Any, Mapping, Sequence

import torch

from ..schedules import Schedule, ScheduleSet, from_dict


def _as_set(s: Any, where: str) -> ScheduleSet:
    if isinstance(s, ScheduleSet):
        return s
    if isinstance(s, Schedule):
        return ScheduleSet(lr=s)
    raise TypeError(f"{where} must be a npadam Schedule or ScheduleSet, got {type(s).__name__}")


def _write_stateful_hook(ref: "weakref.ref[LRScheduler]") -> Any:
    """An optimizer step pre-hook calling ``_write_stateful`` while the scheduler lives (a weak
    reference: the optimizer does not keep its scheduler alive)."""
    def hook(optimizer: Any, args: Any, kwargs: Any) -> None:
        scheduler = ref()
        if scheduler is not None:
            scheduler._write_stateful()
    return hook


class LRScheduler(torch.optim.lr_scheduler.LRScheduler):
    """Drive ``optimizer``'s param groups with npadam schedules.

    ``schedule``: a ``Schedule`` (lr), a ``ScheduleSet`` (lr and, where set, weight
    decay, beta1, beta2) or a list of either, one per param group. Call ``step()``
    after each ``optimizer.step()`` as with any torch scheduler. The schedules are not
    part of ``state_dict()`` (like torch's ``LambdaLR`` lambdas): rebuild the scheduler
    with the same schedules, then load the state dict.

    Stateful schedules (``schedules.Plateau``, stepped by the training loop with
    ``p.step(val_loss)``): ``state_dict()`` carries their state under ``"schedule_states"``
    and ``load_state_dict`` loads it into this scheduler's objects (same configuration
    required); their values are written into the groups again right before each
    ``optimizer.step()``, so a reduction applies from the next update, as with torch's
    ``ReduceLROnPlateau``.

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
        self._stateful_hook = optimizer.register_step_pre_hook(_write_stateful_hook(weakref.ref(self)))

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

    def _write_stateful(self) -> None:
        """Before an optimizer step: the values of stateful schedules (a Plateau reduced since the
        last ``step()``) for the current step, written into the groups."""
        k = max(self.last_epoch, 0)
        for g, s in zip(self.optimizer.param_groups, self.schedules):
            for name, sch in s.items():
                if not sch.has_state:
                    continue
                v = float(sch(k))
                if name in ("lr", "weight_decay"):
                    g[name] = v
                    if name == "lr":
                        self._last_lr = [float(h["lr"]) for h in self.optimizer.param_groups]
                elif "betas" in g:
                    i = 0 if name == "beta1" else 1
                    g["betas"] = tuple(v if j == i else b for j, b in enumerate(g["betas"]))
                elif name == "beta1":
                    g["momentum"] = v

    _NOT_STATE = ("optimizer", "schedules", "_single", "_stateful_hook")
    STATES = "schedule_states"

    def state_dict(self) -> dict[str, Any]:
        """Plain values only (``torch.load(weights_only=True)`` reads it); the schedules are not in it,
        except the ``to_dict()`` (config and state) of stateful ones, per schedule set, under
        ``"schedule_states"`` (present only when there are any)."""
        sd = {k: v for k, v in self.__dict__.items() if k not in self._NOT_STATE}
        states = [{n: s.to_dict() for n, s in sset.items() if s.has_state} for sset in self.schedules]
        if any(states):
            sd[self.STATES] = states
        return sd

    def _saved_states(self, saved: Any) -> list[tuple[Schedule, Schedule]]:
        """``(this scheduler's stateful schedule, the saved one)`` pairs, checked: one entry per
        schedule set, the same stateful quantities, equal configurations."""
        if saved is None:
            return []
        if not isinstance(saved, (list, tuple)) or len(saved) != len(self.schedules):
            raise ValueError(f"{self.STATES} must list {len(self.schedules)} schedule sets, got {saved!r:.200}")
        pairs = []
        for i, (entry, sset) in enumerate(zip(saved, self.schedules)):
            mine = {n: s for n, s in sset.items() if s.has_state}
            if not isinstance(entry, Mapping) or set(entry) != set(mine):
                raise ValueError(f"{self.STATES}[{i}] holds {sorted(entry) if isinstance(entry, Mapping) else entry!r}"
                                 f"; this scheduler's stateful schedules there are {sorted(mine)}")
            for n, d in entry.items():
                loaded = from_dict(d)
                if loaded.config_dict() != mine[n].config_dict():
                    raise ValueError(f"{self.STATES}[{i}][{n!r}] is configured as {loaded.config_dict()}, this "
                                     f"scheduler's as {mine[n].config_dict()}")
                pairs.append((mine[n], loaded))
        return pairs

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        pairs = self._saved_states(state_dict.get(self.STATES))  # checked before anything changes
        self.__dict__.update({k: v for k, v in state_dict.items() if k not in self._NOT_STATE + (self.STATES,)})
        for mine, saved in pairs:
            mine.load_state_from(saved)
