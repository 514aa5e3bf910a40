"""Param-group hyperparameters: checking them when set, and their values for one update.

Both front-ends keep torch's group keys (``lr``, ``betas``, ``eps``,
``weight_decay``, ``amsgrad``, ``maximize``) plus ``bias_correction``. A value may be
a float or, in ``npadam.AdamW``, a ``Schedule`` of the update index ``k``. Before a
step touches any buffer, every group's values for that ``k`` are evaluated and
checked (``values``): a bad one is a ValueError naming the group, the key, the
step and the value, and nothing changes.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from . import _validate as V
from .schedules import Schedule

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
    for flag in FLAGS:
        if not isinstance(g[flag], (bool, np.bool_)):
            raise TypeError(f"{where}{flag} must be a bool, got {g[flag]!r}")
        g[flag] = bool(g[flag])


def _at(x: Any, k: int) -> float:
    return float(x(k)) if isinstance(x, Schedule) else float(x)


def values(g: dict[str, Any], k: int, where: str) -> dict[str, Any]:
    """The group's checked floats for update ``k`` (0-based): lr, beta1, beta2, weight_decay, eps, flags."""
    out = {"lr": _at(g["lr"], k), "beta1": _at(g["betas"][0], k), "beta2": _at(g["betas"][1], k),
           "weight_decay": _at(g["weight_decay"], k), "eps": float(g["eps"])}
    for name, lo, hi in (("lr", 0.0, None), ("weight_decay", 0.0, None), ("eps", 0.0, None),
                         ("beta1", 0.0, 1.0), ("beta2", 0.0, 1.0)):
        v = out[name]
        if not math.isfinite(v) or v < lo or (hi is not None and v >= hi):
            rng = f"in [{lo}, {hi})" if hi is not None else f">= {lo} and finite"
            raise ValueError(f"{where}{name} at step {k} is {v!r}; it must be {rng}. Nothing was changed")
    for flag in FLAGS:
        if not isinstance(g[flag], (bool, np.bool_)):
            raise TypeError(f"{where}{flag} must be a bool, got {g[flag]!r}")
        out[flag] = bool(g[flag])
    return out


def dump(x: Any) -> Any:
    """A hyperparameter as a plain (JSON/torch weights_only) value; a Schedule as {"schedule": to_dict()}."""
    if isinstance(x, Schedule):
        return {"schedule": x.to_dict()}
    if isinstance(x, tuple):
        return [dump(v) for v in x]
    return x


def load(x: Any) -> Any:
    """Inverse of ``dump``."""
    from .schedules import from_dict

    if isinstance(x, dict) and "schedule" in x:
        return from_dict(x["schedule"])
    if isinstance(x, list):
        return [load(v) for v in x]
    return x
