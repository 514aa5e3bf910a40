"""Pieces shared by the framework translators."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .._base import Schedule, from_dict


@dataclass(frozen=True)
class ScheduleSet:
    """What a framework schedules, each as a function of the update index ``k``.

    ``lr`` is always set. ``weight_decay``, ``beta1`` and ``beta2`` are a Schedule
    where the framework changes that hyperparameter over training, else ``None``
    (the optimizer's own value then applies).
    """

    lr: Schedule
    weight_decay: Schedule | None = None
    beta1: Schedule | None = None
    beta2: Schedule | None = None

    def items(self) -> list[tuple[str, Schedule]]:
        """The scheduled quantities in a fixed order: lr, weight_decay, beta1, beta2."""
        return [(n, s) for n in ("lr", "weight_decay", "beta1", "beta2")
                if (s := getattr(self, n)) is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"lr": {...}, "weight_decay": {...} | None, ...}``."""
        return {n: (None if (s := getattr(self, n)) is None else s.to_dict())
                for n in ("lr", "weight_decay", "beta1", "beta2")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScheduleSet":
        """Inverse of ``to_dict``."""
        return cls(**{n: (None if d.get(n) is None else from_dict(d[n]))
                      for n in ("lr", "weight_decay", "beta1", "beta2")})


class GroupSchedules(tuple):
    """One ``ScheduleSet`` per param group, in group order: what a framework config with
    per-group values gives (torch's ``max_lr=[...]``, DeepSpeed's ``cycle_min_lr=[...]``,
    Megatron's per-group overrides).

    A tuple of ScheduleSets. ``npadam.AdamW(groups, lr=gs)`` puts ``gs[i]`` on group ``i``
    (``gs.param_groups(groups)`` does the same for any list of group dicts), and
    ``npadam.torch.LRScheduler(opt, gs)`` drives a torch optimizer's groups with them.

    >>> from npadam import schedules
    >>> gs = schedules.GroupSchedules([schedules.ScheduleSet(lr=schedules.constant(1.0)),
    ...                                schedules.ScheduleSet(lr=schedules.linear(2.0, 0.0, 4))])
    >>> [name for name, _ in gs.items()], gs[1].lr(2)
    (['lr[0]', 'lr[1]'], 1.0)
    """

    def __new__(cls, sets: Iterable[ScheduleSet]) -> "GroupSchedules":
        sets = tuple(sets)
        if not sets:
            raise ValueError("GroupSchedules needs at least one ScheduleSet (one per param group)")
        for i, s in enumerate(sets):
            if not isinstance(s, ScheduleSet):
                raise TypeError(f"GroupSchedules[{i}] must be a ScheduleSet, got {type(s).__name__}")
        return super().__new__(cls, sets)

    def __getattr__(self, name: str) -> Any:
        if name in ("lr", "weight_decay", "beta1", "beta2"):
            raise AttributeError(f"these are per-group schedules ({len(self)} groups): take group i's "
                                 f"with schedules[i].{name}")
        raise AttributeError(name)

    def step(self, metric: Any) -> bool:
        """Step every distinct stateful schedule in the groups (each group's ``Plateau``) once with
        ``metric``, as torch's one ``ReduceLROnPlateau`` steps all its groups; True when any reduced.
        With the same configuration and metrics the groups' controllers stay in step, so each
        group's lr is torch's."""
        live = {id(t): t for sset in self for _, s in sset.items() for t in s._tree() if t.stateful}
        if not live:
            raise TypeError("these schedules hold no Plateau: nothing in them steps on a metric")
        return any([t.step(metric) for t in live.values()])  # a list: every controller steps

    def items(self) -> list[tuple[str, Schedule]]:
        """Every group's scheduled quantities, named ``lr[0]``, ``weight_decay[0]``, ``lr[1]``, ..."""
        return [(f"{n}[{i}]", s) for i, sset in enumerate(self) for n, s in sset.items()]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"groups": [ScheduleSet.to_dict(), ...]}``."""
        return {"groups": [s.to_dict() for s in self]}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "GroupSchedules":
        """Inverse of ``to_dict``."""
        if not isinstance(d, Mapping) or not isinstance(d.get("groups"), list):
            raise ValueError(f"a GroupSchedules dict needs a 'groups' list, got {d!r}")
        return cls(ScheduleSet.from_dict(g) for g in d["groups"])

    def param_groups(self, groups: Iterable[Any], *, betas: tuple[Any, Any] | None = None) -> list[dict[str, Any]]:
        """``groups`` (group dicts, or lists of params) with group ``i``'s schedules set: ``lr``,
        ``weight_decay`` where scheduled, and ``betas`` where beta1/beta2 are (the other beta from the
        group, else from ``betas``, the optimizer's default). New dicts; the inputs are not changed."""
        out = [dict(g) if isinstance(g, Mapping) else {"params": g} for g in groups]
        if len(out) != len(self):
            raise ValueError(f"got {len(self)} per-group schedules for {len(out)} param groups")
        for i, (g, s) in enumerate(zip(out, self)):
            g["lr"] = s.lr
            if s.weight_decay is not None:
                g["weight_decay"] = s.weight_decay
            if s.beta1 is not None or s.beta2 is not None:
                old = g.get("betas", betas)
                if old is None:
                    raise ValueError(f"param group {i}: the schedules set beta1/beta2 but the group has no betas")
                g["betas"] = (s.beta1 if s.beta1 is not None else old[0], s.beta2 if s.beta2 is not None else old[1])
        return out


#: torch.optim.lr_scheduler.ReduceLROnPlateau's arguments (torch 2.13), besides the optimizer.
PLATEAU_KEYS = ("mode", "factor", "patience", "threshold", "threshold_mode", "cooldown", "min_lr", "eps")


def plateau(where: str, lr: Any, kwargs: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """torch's ``ReduceLROnPlateau(optimizer, **kwargs)`` on an optimizer with lr ``lr``, as a
    ``schedules.Plateau`` (the training loop calls ``s.lr.step(metric)``). A list ``lr`` (each
    group's) or ``min_lr`` gives one Plateau per group (``GroupSchedules.step(metric)`` steps them)."""
    from ..plateau import Plateau

    check_keys(where, kwargs, PLATEAU_KEYS)
    lists = {k: v for k, v in (("lr", lr), ("min_lr", kwargs.get("min_lr"))) if isinstance(v, (list, tuple))}
    if not lists:
        return ScheduleSet(lr=Plateau(lr, **kwargs))
    sizes = {k: len(v) for k, v in lists.items()}
    n = next(iter(sizes.values()))
    if n == 0 or any(m != n for m in sizes.values()):
        raise ValueError(f"{where}: per-param-group lists must have one value per group, got lengths {sizes}")
    return GroupSchedules(ScheduleSet(lr=Plateau(lists["lr"][i] if "lr" in lists else lr,
                                                 **{**kwargs, **({"min_lr": lists["min_lr"][i]}
                                                                 if "min_lr" in lists else {})}))
                          for i in range(n))


def check_keys(framework: str, cfg: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ValueError naming any key the framework does not take (with a suggestion)."""
    known = tuple(known)
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {framework} parameter {key!r}{hint}")


def require(framework: str, cfg: Mapping[str, Any], *keys: str) -> None:
    """Raise ValueError naming the first missing required key."""
    for key in keys:
        if cfg.get(key) is None:
            raise ValueError(f"{framework} config is missing required parameter {key!r}")
