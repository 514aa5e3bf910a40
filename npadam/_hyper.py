"""Param-group hyperparameters: checking them when set, and their values for one update.

Both front-ends keep torch's group keys: for Adam ``lr``, ``betas``, ``eps``,
``weight_decay``, ``amsgrad``, ``maximize`` plus ``bias_correction``; for SGD ``lr``,
``momentum``, ``dampening``, ``weight_decay``, ``nesterov``, ``maximize``. A value may
be a float or, in ``npadam.AdamW``/``npadam.SGD``, a ``Schedule`` of the update index
``k`` (``ADAM.scheduled``, ``SGD.scheduled``). Before a step touches any buffer, every
group's values for that ``k`` are evaluated and checked (``values``,
``sgd_values``): a bad one is a ValueError naming the group, the key, the step and
the value, and nothing changes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

from . import _validate as V
from .schedules import Schedule
from .schedules._base import described

GROUP_KEYS = ("lr", "betas", "eps", "weight_decay", "amsgrad", "maximize", "bias_correction")
FLAGS = ("amsgrad", "maximize", "bias_correction")


def _hyper(name: str, x: Any, lo: float, hi: float | None = None, hi_open: bool = False,
           schedules: bool = True) -> Any:
    if isinstance(x, Schedule):
        if not schedules:
            raise TypeError(f"{name} is a npadam Schedule; npadam.torch optimizers hold plain floats in "
                            "param_groups: drive them with npadam.torch.LRScheduler(opt, schedule)")
        return x
    return V.real(name, x, lo=lo, hi=hi, hi_open=hi_open)


def check_group(g: dict[str, Any], where: str, schedules: bool = True) -> None:
    """Check (and normalise in place) a group's hyperparameters; Schedules allowed if ``schedules``."""
    g["lr"] = _hyper(f"{where}lr", g["lr"], 0.0, schedules=schedules)
    betas = g["betas"]
    if not isinstance(betas, (tuple, list)) or len(betas) != 2:
        raise ValueError(f"{where}betas must be a pair (beta1, beta2), got {betas!r}")
    g["betas"] = tuple(_hyper(f"{where}betas[{i}]", b, 0.0, 1.0, hi_open=True, schedules=schedules)
                       for i, b in enumerate(betas))
    g["eps"] = V.real(f"{where}eps", g["eps"], lo=0.0)
    g["weight_decay"] = _hyper(f"{where}weight_decay", g["weight_decay"], 0.0, schedules=schedules)
    _flags(g, FLAGS, where, g)


def _at(x: Any, k: int) -> float:
    return float(x(k)) if isinstance(x, Schedule) else float(x)


def _in_range(out: dict[str, float], bounds: tuple[tuple[str, float | None, float | None], ...], k: int,
              where: str) -> None:
    """ValueError naming the first value of ``out`` outside its ``(name, lo, hi)`` bounds ([lo, hi), finite)."""
    for name, lo, hi in bounds:
        v = out[name]
        if not math.isfinite(v) or (lo is not None and v < lo) or (hi is not None and v >= hi):
            rng = f"in [{lo}, {hi})" if hi is not None else f">= {lo} and finite" if lo is not None else "finite"
            raise ValueError(f"{where}{name} at step {k} is {v!r}; it must be {rng}. Nothing was changed")


def _flags(g: dict[str, Any], flags: tuple[str, ...], where: str, out: dict[str, Any]) -> dict[str, Any]:
    for flag in flags:
        out[flag] = V.flag(f"{where}{flag}", g[flag])
    return out


def values(g: dict[str, Any], k: int, where: str) -> dict[str, Any]:
    """The group's checked floats for update ``k`` (0-based): lr, beta1, beta2, weight_decay, eps, flags."""
    out = {"lr": _at(g["lr"], k), "beta1": _at(g["betas"][0], k), "beta2": _at(g["betas"][1], k),
           "weight_decay": _at(g["weight_decay"], k), "eps": float(g["eps"])}
    _in_range(out, (("lr", 0.0, None), ("weight_decay", 0.0, None), ("eps", 0.0, None),
                    ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0)), k, where)
    return _flags(g, FLAGS, where, out)


# ---------------------------------------------------------------------- SGD
SGD_KEYS = ("lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize")
SGD_FLAGS = ("nesterov", "maximize")


def _check_nesterov(nesterov: bool, momentum: Any, dampening: float, where: str) -> None:
    """torch's constructor rule: Nesterov momentum needs momentum > 0 and dampening == 0 (a scheduled
    momentum is not checked: at a step, momentum 0 is plain SGD, as in torch)."""
    if nesterov and ((not isinstance(momentum, Schedule) and momentum <= 0) or dampening != 0):
        raise ValueError(f"{where}nesterov=True needs momentum > 0 and dampening == 0; momentum is "
                         f"{momentum!r}, dampening {dampening!r}. Nothing was changed")


def check_sgd_group(g: dict[str, Any], where: str, schedules: bool = True) -> None:
    """``check_group`` for SGD groups (torch.optim.SGD's rules: lr, momentum, weight_decay >= 0;
    Nesterov needs momentum > 0 and dampening == 0)."""
    g["lr"] = _hyper(f"{where}lr", g["lr"], 0.0, schedules=schedules)
    g["momentum"] = _hyper(f"{where}momentum", g["momentum"], 0.0, schedules=schedules)
    g["dampening"] = V.real(f"{where}dampening", g["dampening"])
    g["weight_decay"] = _hyper(f"{where}weight_decay", g["weight_decay"], 0.0, schedules=schedules)
    _flags(g, SGD_FLAGS, where, g)
    _check_nesterov(g["nesterov"], g["momentum"], g["dampening"], where)


def sgd_values(g: dict[str, Any], k: int, where: str) -> dict[str, Any]:
    """An SGD group's checked values for update ``k``: lr, momentum, dampening, weight_decay, flags."""
    out = {"lr": _at(g["lr"], k), "momentum": _at(g["momentum"], k), "dampening": float(g["dampening"]),
           "weight_decay": _at(g["weight_decay"], k)}
    _in_range(out, (("lr", 0.0, None), ("momentum", 0.0, None), ("dampening", None, None),
                    ("weight_decay", 0.0, None)), k, where)
    _flags(g, SGD_FLAGS, where, out)
    # torch.optim.SGD checks the Nesterov rule in its constructor only; at a step, momentum 0 is plain
    # SGD and a dampening is applied (a scheduler writing momentum 0 mid-run must not fail)
    return out


@dataclass(frozen=True)
class Spec:
    """What an algorithm's param groups hold: ``keys`` (torch's names), ``flags`` (the bool keys),
    ``scheduled`` (schedule name -> (group key, index in a pair or None): the values a Schedule may
    drive), ``check_group(g, where, schedules)`` and ``values(g, k, where)``."""

    algorithm: str
    keys: tuple[str, ...]
    flags: tuple[str, ...]
    scheduled: dict[str, tuple[str, int | None]]
    check_group: Callable[..., None]
    values: Callable[[dict[str, Any], int, str], dict[str, Any]]

    def with_schedules(self, g: dict[str, Any], sch: dict[str, Any]) -> dict[str, Any]:
        """``g`` with each value a schedule in ``sch`` drives replaced by that schedule (a new dict)."""
        h = dict(g)
        for name, (key, idx) in self.scheduled.items():
            if name in sch:
                if idx is None:
                    h[key] = sch[name]
                else:
                    pair = list(h[key])
                    pair[idx] = sch[name]
                    h[key] = tuple(pair)
        return h

    def fill_unsaved(self, current: dict[str, Any], saved: dict[str, Any], where: str,
                     pending: list[tuple[Schedule, dict[str, Any]]]) -> dict[str, Any]:
        """``saved`` (a state dict's group) with each ``{UNSAVED: names}`` replaced by the group's
        ``current`` schedule (name -> Schedule) holding the same Python callables and configuration,
        as torch's ``LambdaLR`` is rebuilt with its lambdas before ``load_state_dict``; ValueError
        otherwise. The saved states of stateful schedules inside (a Plateau around the code) are
        checked on a copy and appended to ``pending`` as (live schedule, state), to load once the
        whole state dict is accepted."""
        import copy

        out = dict(saved)
        for name, (key, idx) in self.scheduled.items():
            if key not in saved:
                continue
            v = saved[key]
            if idx is not None:
                v = v[idx] if isinstance(v, (list, tuple)) and len(v) > idx else None
            if not (isinstance(v, dict) and UNSAVED in v):
                continue
            old = current.get(name)
            if isinstance(old, Schedule) and python_callables(old) == v[UNSAVED].split(", ") \
                    and v.get("config", described(old)) != described(old):
                raise ValueError(f"{where}{key}{'' if idx is None else f'[{idx}]'}: the saved schedule holding "
                                 f"{v[UNSAVED]} differs from the optimizer's: saved {v['config']}, here "
                                 f"{described(old)}")
            if not isinstance(old, Schedule) or python_callables(old) != v[UNSAVED].split(", "):
                have = ("a plain value" if not isinstance(old, Schedule) else
                        f"the schedule holding {', '.join(python_callables(old))}" if python_callables(old)
                        else f"the schedule {old!r}")
                raise ValueError(f"{where}{key}{'' if idx is None else f'[{idx}]'} was a schedule holding the Python "
                                 f"callable {v[UNSAVED]}, which a state dict cannot hold; the optimizer has "
                                 f"{have}: build it with the same callable schedule, then load")
            live = [t for t in old._tree() if t.stateful]
            states = v.get("states", [])
            if not isinstance(states, list) or len(states) != len(live):
                raise ValueError(f"{where}{key}: the saved schedule has {len(states) if isinstance(states, list) else states!r}"
                                 f" controller states, the optimizer's {len(live)}")
            for t, st in zip(live, states):
                try:
                    copy.deepcopy(t).load_state_dict(st)
                except (TypeError, ValueError) as e:
                    raise ValueError(f"{where}{key}: bad saved state of {type(t).__name__}: {e}") from None
                pending.append((t, st))
            if idx is None:
                out[key] = old
            else:
                pair = list(out[key])
                pair[idx] = old
                out[key] = pair
        return out

    def keep_stateful(self, current: dict[str, Any], h: dict[str, Any]) -> dict[str, Any]:
        """``h`` (a loaded group) with each stateful Schedule (``Plateau``) replaced by the group's
        ``current`` one (name -> Schedule) of the same ``config_dict()``, the loaded state copied into
        it: the object the training loop steps stays the one in use."""
        keep = {}
        for name, (key, idx) in self.scheduled.items():
            new, old = h[key] if idx is None else h[key][idx], current.get(name)
            if new is old:  # taken from this group (fill_unsaved): already the one in use, its state too
                continue
            if isinstance(new, Schedule) and isinstance(old, Schedule) and new.has_state \
                    and new.config_dict() == old.config_dict():
                old.load_state_from(new)
                keep[name] = old
        return self.with_schedules(h, keep)


ADAM = Spec("adam", GROUP_KEYS, FLAGS, {"lr": ("lr", None), "beta1": ("betas", 0), "beta2": ("betas", 1),
                                        "weight_decay": ("weight_decay", None)}, check_group, values)
SGD = Spec("sgd", SGD_KEYS, SGD_FLAGS, {"lr": ("lr", None), "momentum": ("momentum", None),
                                        "weight_decay": ("weight_decay", None)}, check_sgd_group, sgd_values)


#: The key that stands for a schedule holding Python code (``schedules.from_callable``, torch's
#: ``LambdaLR``), which no state dict or checkpoint can hold: ``{UNSAVED: "<the callables' names>"}``.
UNSAVED = "unsaved_schedule"  # {UNSAVED: names, "config": described(s)}


def python_callables(s: Schedule) -> list[str]:
    """The names of the Python callables inside ``s`` (none: ``s.to_dict()`` works)."""
    from .schedules._callable import callables_in, describe

    return [describe(f) for t in s._tree() for f in callables_in(list(t.params.values()))]


def has_unsaved(x: Any) -> bool:
    """Whether a ``dump`` output is (or holds, for betas) an ``{UNSAVED: ...}`` marker."""
    if isinstance(x, (list, tuple)):
        return any(has_unsaved(v) for v in x)
    return isinstance(x, dict) and UNSAVED in x


def dump(x: Any) -> Any:
    """A hyperparameter as a plain (JSON/torch weights_only) value; a Schedule as {"schedule": to_dict()},
    one holding Python callables as ``{UNSAVED: names}`` (``fill_unsaved`` puts the live one back)."""
    if isinstance(x, Schedule):
        names = python_callables(x)
        if not names:
            return {"schedule": x.to_dict()}
        states = [t.state_dict() for t in x._tree() if t.stateful]  # a Plateau around the code: its state
        return {UNSAVED: ", ".join(names), "config": described(x), **({"states": states} if states else {})}
    if isinstance(x, tuple):
        return [dump(v) for v in x]
    return x


def dump_config(x: Any) -> Any:
    """A ``dump`` output (or hyperparameter) with each schedule reduced to its ``config_dict()``: what
    "the same schedule" means when a checkpoint is compared (a Plateau's state may differ)."""
    x = load(x)
    if isinstance(x, Schedule):
        x = dump(x) if python_callables(x) else {"schedule": x.config_dict()}
    if has_unsaved(x) and isinstance(x, dict):  # the marker's configuration, not its controller states
        return {k: v for k, v in x.items() if k != "states"}
    return [dump_config(v) for v in x] if isinstance(x, (list, tuple)) else x


def load(x: Any) -> Any:
    """Inverse of ``dump``."""
    from .schedules import from_dict

    if isinstance(x, dict) and "schedule" in x:
        return from_dict(x["schedule"])
    if isinstance(x, (list, tuple)):
        return type(x)(load(v) for v in x)
    return x
