"""How many steps to dump when ``--steps`` is not given.

``horizon(s)`` is the number of updates after which a schedule has done what it
was configured to do (its ``total_steps``, ``num_training_steps``, decay length,
...), or None when it has no such length (constant, exponential, range tests,
restarts). ``limit(s)`` is the number of steps it can be evaluated on at all
(torch's ``OneCycleLR`` refuses updates past ``total_steps``), or None.
The default dump is the horizon plus 10%, within the limit.
"""

from __future__ import annotations

import math
from typing import Any, Iterable

from ..schedules import Schedule


def _torch(name: str, kw: dict[str, Any]) -> int | None:
    if name in ("LinearLR", "ConstantLR", "PolynomialLR"):
        return int(kw.get("total_iters", 5))
    if name == "CosineAnnealingLR":
        return int(kw["T_max"])
    if name == "MultiStepLR":
        return max(int(m) for m in kw["milestones"]) if kw["milestones"] else None
    if name == "OneCycleLR":
        total = kw.get("total_steps")
        return int(total if total is not None else kw["epochs"] * kw["steps_per_epoch"])
    if name == "SequentialLR":
        subs, ms = kw["schedulers"], kw["milestones"]
        last = dict(subs[-1])
        h = _torch(last.pop("scheduler"), last)
        start = int(ms[-1]) if ms else 0
        return start + h if h is not None else (start or None)
    return None


def horizon(s: Schedule) -> int | None:
    """The schedule's natural length in updates, or None."""
    p, kind = s.params, s.kind
    if kind in ("warmup_cosine", "wsd", "one_cycle", "colossalai_cosine_warmup"):
        return int(p["total_steps"])
    if kind in ("linear", "cosine", "polynomial", "one_minus_sqrt", "weight_decay"):
        return int(p["steps"]) or None
    if kind == "hf":
        if p["num_training_steps"] is not None:
            return int(p["num_training_steps"])
        kw = p["lr_scheduler_kwargs"]
        if p["lr_scheduler_type"] == "warmup_stable_decay" and kw.get("num_stable_steps") is not None:
            return int(p["num_warmup_steps"] + kw["num_stable_steps"] + kw.get("num_decay_steps", 0))
        return None
    if kind == "megatron_lr":
        return math.ceil(p["lr_decay_steps"] / p["global_batch_size"])
    if kind in ("deepspeed_warmup_lr", "deepspeed_warmup_cosine_lr"):
        return None if p["total_num_steps"] is None else int(p["total_num_steps"]) + 1
    if kind == "deepspeed_one_cycle":
        first = p["cycle_first_step_size"]
        second = first if p["cycle_second_step_size"] is None else p["cycle_second_step_size"]
        return math.ceil(first + second) + 1
    if kind == "torch":
        kw = {k: v for k, v in p.items() if k not in ("scheduler", "lr", "quantity")}
        try:
            return _torch(p["scheduler"], kw)
        except (KeyError, TypeError, ValueError):
            return None
    if kind in ("scale_steps",):
        h = horizon(p["schedule"])
        return None if h is None else math.ceil(h / p["factor"])
    if kind == "multiply":
        return horizon(p["schedule"])
    if kind == "warmup":
        h = horizon(p["after"])
        return None if h is None else p["steps"] + h
    if kind == "join":
        h = horizon(p["schedules"][-1])
        return None if h is None else p["boundaries"][-1] + h
    return None


def limit(s: Schedule) -> int | None:
    """How many steps (0 .. limit - 1) the schedule can be evaluated on, or None (all)."""
    p, kind = s.params, s.kind
    if kind == "one_cycle" and p["horizon"] == "torch":
        return int(p["total_steps"]) + 1
    if kind == "torch" and p["scheduler"] == "OneCycleLR":
        h = horizon(s)
        return None if h is None else h + 1
    if kind == "torch" and p["scheduler"] == "SequentialLR":
        subs, ms = p["schedulers"], p["milestones"]
        last = dict(subs[-1])
        if last.get("scheduler") == "OneCycleLR" and ms:
            h = _torch("OneCycleLR", {k: v for k, v in last.items() if k not in ("scheduler", "lr")})
            return int(ms[-1]) + h + 1
    if kind in ("scale_steps",):
        lim = limit(p["schedule"])
        return None if lim is None else math.ceil(lim / p["factor"])
    if kind == "multiply":
        return limit(p["schedule"])
    return None


def default_steps(schedules: Iterable[Schedule]) -> int | None:
    """Horizon + 10% (at least one more step) of the longest schedule, within every limit."""
    scheds = list(schedules)
    hs = [h for h in map(horizon, scheds) if h is not None]
    if not hs:
        return None
    h = max(hs)
    steps = h + max(1, math.ceil(h / 10))
    lims = [lim for lim in map(limit, scheds) if lim is not None]
    return min([steps] + lims)
