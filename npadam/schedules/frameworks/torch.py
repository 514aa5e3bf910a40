"""``torch.optim.lr_scheduler`` schedulers, in closed form.

torch's constructor performs the initial step, so update ``k`` uses the scheduler
at ``last_epoch = k``. ``step()`` of most torch schedulers uses *chained*
(recursive) formulas that drift from the closed form by rounding (about 1e-12
relative after 1e3 steps, 2e-8 after 1e5); npadam evaluates the closed form, which
is what torch's own ``_get_closed_form_lr`` returns. CosineAnnealingWarmRestarts
uses integer cycle arithmetic (torch's float-log path can misplace a restart).

LambdaLR and MultiplicativeLR take Python callables (``schedules.Lambda``: evaluated
per step, not serialisable). SequentialLR and ChainedScheduler nest; how torch's
constructors and steps interact there is in ``_torch_compose``, the single schedulers
in ``_torch_leaves``. A config with per-param-group lists gives a ``GroupSchedules``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from .._callable import callables_in, not_serialisable
from . import _torch_compose as C
from ._common import GroupSchedules, ScheduleSet, plateau, require
from ._torch_leaves import PER_GROUP, Leaf

SCHEDULERS = C.SCHEDULERS


class _Model:
    """One param group's config, parsed, its constructors replayed, ready to evaluate."""

    def __init__(self, scheduler: str, lr: float, kwargs: dict[str, Any]) -> None:
        self.tree = C.parse({"scheduler": scheduler, **kwargs}, lr, "torch", top=True)
        self.group = C._Group(lr=lr)
        C.construct(self.tree, self.group)
        C.finalize(self.tree, self.group)
        self.resume = self.tree.last_epoch + 1  # > 0: resumed at last_epoch + 1
        self.start = self.tree.reset_lr if isinstance(self.tree, C._Seq) else lr
        self.cycles = C.cycles_momentum(self.tree)
        lim = C.limit(self.tree)
        if lim is not None and lim - self.resume <= 0:
            raise ValueError(f"torch {scheduler} with last_epoch={self.tree.last_epoch} starts at step "
                             f"{self.resume}, past its last one ({lim - 1}): torch raises in the constructor")

    def lr(self, k: np.ndarray) -> np.ndarray:
        if self.resume:
            return self.tree.resumed(k, self.resume)
        return C.lr_values(self.tree, k, self.start, "construct")

    def momentum(self, k: np.ndarray) -> np.ndarray:
        if self.resume:
            return self.tree.momentum(k + self.resume)
        return C.momentum_values(self.tree, k, self.group.beta1)


@register
class TorchLR(Schedule):
    """A torch scheduler by class name, with ``lr`` the optimizer's base lr (one param group).

    Closed forms at ``t = k`` (``b`` = base lr, the group's ``initial_lr``):

    - LinearLR: ``b * (s + (e - s) * min(T, t) / T)``
    - ConstantLR: ``b * factor`` for ``t < T``, then ``b`` (``T = 0``: ``b * factor`` throughout, as
      torch's ``step()`` gives; factor 0 with ``T > 0`` is rejected: torch divides by zero at T)
    - CosineAnnealingLR: ``eta + (b - eta) * (1 + cos(pi * t / T_max)) / 2`` (periodic past T_max, as torch)
    - PolynomialLR: ``b * (1 - min(T, t) / T) ** power`` (``T = 0``: ``b``)
    - ExponentialLR: ``b * gamma ** t``; StepLR: ``b * gamma ** (t // step_size)``;
      MultiStepLR: ``b * gamma ** bisect_right(milestones, t)``
    - LambdaLR: ``b * lr_lambda(t)``; MultiplicativeLR: ``b * lr_lambda(1) * ... * lr_lambda(t)``
      (left to right, as torch multiplies: the same to the last bit); both call the Python
      callable per step (``schedules.Lambda``), and such a schedule cannot be serialised
    - OneCycleLR, CosineAnnealingWarmRestarts: see ``one_cycle`` and ``cosine_restarts``
    - CyclicLR (``base_lr`` replaces the optimizer's lr, as torch's constructor does): with
      ``S = up + down``, ``c = floor(1 + t / S)``, ``x = 1 + t / S - c``, ``f = x / r`` if
      ``x <= r = up / S`` else ``(x - 1) / (r - 1)``: ``base + (max - base) * f * scale``,
      ``scale`` = 1 (triangular), ``1 / 2**(c - 1)`` (triangular2), ``gamma**t``
      (exp_range), ``scale_fn(c)`` / ``scale_fn(t)`` (a callable, scale_mode cycle /
      iterations); its momentum (beta1) ``max_m - (max_m - base_m) * f * scale``
    - SequentialLR: scheduler ``i`` sees ``t - milestones[i-1]``, restarted from torch's closed form at
      its milestone (so there ``total_iters=0`` gives ``b`` for ConstantLR and is rejected for LinearLR
      / PolynomialLR: torch divides by zero); nested SequentialLR / ChainedScheduler as the first
      scheduler, OneCycleLR anywhere (it rewrites ``initial_lr``, the base of those built after it)
    - ChainedScheduler: the schedulers' factors multiplied, or the last absolute one's value with the
      one-step ratios of those after it (see ``_torch_compose``)
    - ``last_epoch = L >= 0`` (a single scheduler, resumed on a group holding ``initial_lr = lr`` and the
      lr of step ``L + 1``): update ``k`` is step ``t = L + 1 + k``. Where torch's initial step does
      not check its initial mode it applies its boundary again (StepLR at a multiple of step_size,
      MultiStepLR at a milestone: ``* gamma``; ConstantLR at ``total_iters``: ``/ factor``), and
      CosineAnnealingWarmRestarts with ``T_mult > 1`` resumes with ``T_cur = (L + 1) % T_0`` in a
      cycle of ``T_0 * T_mult``: npadam reproduces both

    ``quantity="momentum"`` gives beta1 instead, where OneCycleLR / CyclicLR cycle it.
    """

    kind = "torch"

    def __init__(self, scheduler: str, lr: float, quantity: str = "lr", **kwargs: Any) -> None:
        if scheduler not in SCHEDULERS:
            raise ValueError(f"unknown torch scheduler {scheduler!r}; supported: {', '.join(SCHEDULERS)}")
        lr = V.real("lr", lr)
        quantity = V.choice("quantity", quantity, ("lr", "momentum"))
        self._store(scheduler=scheduler, lr=lr, **({"quantity": quantity} if quantity != "lr" else {}), **kwargs)
        self._model = _Model(scheduler, lr, kwargs)
        if quantity == "momentum" and not self._model.cycles:
            raise ValueError(f"torch {scheduler} schedules no momentum: only OneCycleLR and CyclicLR with "
                             "cycle_momentum do")
        self._values(np.zeros(1, np.int64))  # torch's constructor computes update 0 (lr_lambda(0) included)

    @property
    def cycles_momentum(self) -> bool:
        """Whether torch changes beta1 (a OneCycleLR or CyclicLR with ``cycle_momentum`` inside)."""
        return self._model.cycles

    @property
    def horizon(self) -> int | None:
        h = C.horizon(self._model.tree)
        return None if h is None else max(0, h - self._model.resume)

    @property
    def limit(self) -> int | None:
        lim = C.limit(self._model.tree)
        return None if lim is None else lim - self._model.resume

    def _values(self, k: np.ndarray) -> np.ndarray:
        lim = self.limit
        if lim is not None and k.size and k.max() >= lim:
            raise ValueError(f"torch {self._params['scheduler']} is defined for updates 0..{lim - 1} "
                             f"(a OneCycleLR raises past its total_steps); got update {int(k.max())}")
        if self._params.get("quantity") == "momentum":
            return self._model.momentum(k)
        return self._model.lr(k)

    def to_dict(self) -> dict[str, Any]:
        for fn in callables_in(self._params):
            raise not_serialisable(f"torch {self._params['scheduler']} schedule", fn)
        return super().to_dict()

    def config_dict(self) -> dict[str, Any]:
        for fn in callables_in(self._params):
            raise not_serialisable(f"torch {self._params['scheduler']} schedule", fn)
        return super().config_dict()

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other._params == self._params  # type: ignore[attr-defined]

    __hash__ = Schedule.__hash__


# --------------------------------------------------------------------------- per-group values


def _lists(cfg: Mapping[str, Any], path: str) -> list[tuple[str, int]]:
    """``(where, length)`` of every per-param-group list in a config tree."""
    out = []
    name = cfg.get("scheduler")
    for key in ("lr",) + PER_GROUP.get(name, ()):
        if isinstance(cfg.get(key), (list, tuple)):
            out.append((f"{path}{key}", len(cfg[key])))
    if name in C.COMPOSITES and isinstance(cfg.get("schedulers"), (list, tuple)):
        for i, sub in enumerate(cfg["schedulers"]):
            if isinstance(sub, Mapping):
                out += _lists(sub, f"{path}schedulers[{i}].")
    return out


def _pick(cfg: Mapping[str, Any], i: int) -> dict[str, Any]:
    """Param group ``i``'s config: element ``i`` of every per-group list."""
    out = dict(cfg)
    name = cfg.get("scheduler")
    for key in ("lr",) + PER_GROUP.get(name, ()):
        if isinstance(out.get(key), (list, tuple)):
            out[key] = out[key][i]
    if name in C.COMPOSITES and isinstance(out.get("schedulers"), (list, tuple)):
        out["schedulers"] = [_pick(s, i) if isinstance(s, Mapping) else s for s in out["schedulers"]]
    return out


def group_count(config: Mapping[str, Any]) -> int | None:
    """How many param groups a config's per-group lists describe (None: no lists, one group).
    ``"lr": [...]`` is the optimizer's lr per group; torch takes lists for ``max_lr``, ``base_lr``,
    ``base_momentum``, ``max_momentum`` (CyclicLR, OneCycleLR) and ``lr_lambda``, one per group."""
    found = _lists(config, "")
    if not found:
        return None
    where, n = found[0]
    for w, m in found[1:]:
        if m != n:
            raise ValueError(f"{w} has {m} values but {where} has {n}: per-param-group lists must all have one "
                             "value per param group (torch: 'must have the same length as "
                             "optimizer.param_groups')")
    if n == 0:
        raise ValueError(f"{where} is an empty list: an optimizer has at least one param group")
    return n


def _schedule_set(cfg: dict[str, Any]) -> ScheduleSet:
    name, lr = cfg.pop("scheduler"), cfg.pop("lr")
    sched = TorchLR(name, lr, **cfg)
    if sched.cycles_momentum:
        return ScheduleSet(lr=sched, beta1=TorchLR(name, lr, quantity="momentum", **cfg))
    return ScheduleSet(lr=sched)


def from_torch(config: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """``{"lr": base_lr, "scheduler": "<class name>", **kwargs}`` (SequentialLR and
    ChainedScheduler nest configs under ``"schedulers"``).

    OneCycleLR and CyclicLR with ``cycle_momentum`` (the default) also schedule beta1
    (Adam's momentum). ReduceLROnPlateau gives a ``schedules.Plateau`` as ``lr``: the
    training loop calls ``result.lr.step(metric)`` where it would call torch's. Per-param-group lists (``"lr": [...]``, ``max_lr=[...]``, ...; see
    ``group_count``) give a ``GroupSchedules``, one ScheduleSet per group.
    """
    cfg = dict(config)
    require("torch", cfg, "lr", "scheduler")
    if cfg["scheduler"] == "ReduceLROnPlateau":  # steps on a metric: a Plateau the loop steps
        lr = cfg.pop("lr")
        del cfg["scheduler"]
        return plateau("torch ReduceLROnPlateau", lr, cfg)
    n = group_count(cfg)
    if n is None:
        return _schedule_set(cfg)
    return GroupSchedules(_schedule_set(_pick(cfg, i)) for i in range(n))


__all__ = ["TorchLR", "from_torch", "group_count", "SCHEDULERS", "Leaf"]
