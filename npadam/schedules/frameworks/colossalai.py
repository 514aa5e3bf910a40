"""ColossalAI's ``CosineAnnealingWarmupLR`` (``colossalai/nn/lr_scheduler/cosine.py``), exactly.

ColossalAI wraps torch's cosine in a ``WarmupScheduler``: for ``t < W`` the lr is
``(t + 1) / W * base`` (non-zero at t = 0, ``base`` at t = W - 1). At ``t = W`` it
hands over to torch's ``CosineAnnealingLR(T_max = T - W)`` (``T = total_steps``) by
calling its ``get_lr()`` at ``last_epoch = 0`` without stepping it, and current torch
evaluates that with its *chained* formula applied to the last warmup value. So every
step ``W <= t <= T`` has ``lr - eta_min`` scaled by ``c = 2 / (1 + cos(pi / (T - W)))``
(+33% at ``T - W = 3``, +2.5% at 10, +0.97% at 16, +2.5e-6 at 1000; at ``T - W = 1``
torch's restart branch gives ``2 lr - eta_min`` at ``t = W`` and the closed form
after); past ``T`` the restart branch puts it back on the closed form. That is what
runs migrating from ColossalAI did, so the ``"colossalai"`` preset reproduces it
(``exact=True``); ``exact=False`` (or the plain ``warmup_cosine`` block) is the
intended closed form. Tests: ``tests/test_parity_colossalai.py`` against a
re-statement of ColossalAI built on torch's own ``CosineAnnealingLR``.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from ._common import ScheduleSet, check_keys, require


@register
class ColossalAICosineWarmup(Schedule):
    """``t < W``: ``(t + 1) / W * lr``; then ``eta_min + (lr - eta_min) * (1 + cos(pi (t - W) / (T - W))) / 2``,
    with ColossalAI's hand-over scaling on ``W <= t <= T`` when ``exact`` (see the module docstring).

    Like torch's cosine it is periodic past ``T = total_steps``. ``exact`` defaults to False
    here so that schedules saved before it existed keep their meaning; the ``"colossalai"``
    preset of ``from_config`` sets it.
    """

    kind = "colossalai_cosine_warmup"

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0,
                 exact: bool = False) -> None:
        if not isinstance(exact, (bool, np.bool_)):
            raise TypeError(f"exact must be a bool, got {exact!r}")
        d = dict(lr=V.real("lr", lr), total_steps=V.integer("total_steps", total_steps, lo=1),
                 warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0), eta_min=V.real("eta_min", eta_min),
                 exact=bool(exact))
        if d["warmup_steps"] >= d["total_steps"]:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be < total_steps ({total_steps}): "
                             "the cosine's T_max = total_steps - warmup_steps must be positive")
        self._store(**d)

    @property
    def horizon(self) -> int | None:
        return self._params["total_steps"]

    def _values(self, k: np.ndarray) -> np.ndarray:
        p = self._params
        W, base, eta = p["warmup_steps"], p["lr"], p["eta_min"]
        t = k.astype(np.float64)
        out = np.empty(t.shape)
        w = t < W
        out[w] = (t[w] + 1) / W * base
        e = t[~w] - W
        tmax = p["total_steps"] - W
        cosine = eta + (base - eta) * (1 + np.cos(np.pi * e / tmax)) / 2
        if p["exact"]:  # ColossalAI's hand-over through torch's chained formula (module docstring)
            if tmax == 1:
                cosine[e == 0] = 2 * base - eta
            else:
                first = e <= tmax
                cosine[first] = eta + 2 / (1 + np.cos(np.pi / tmax)) * (cosine[first] - eta)
        out[~w] = cosine
        return out


_TYPES = ("CosineAnnealingWarmupLR",)


def from_colossalai(config: Mapping[str, Any]) -> ScheduleSet:
    """``{"type": "CosineAnnealingWarmupLR", "lr", "total_steps", "warmup_steps", "eta_min"}``, as the real
    object runs (``"exact": False``, an npadam key, gives the intended closed form instead)."""
    cfg = dict(config)
    cfg.setdefault("exact", True)
    stype = cfg.pop("type", "CosineAnnealingWarmupLR")
    if stype not in _TYPES:
        raise ValueError(f"unknown ColossalAI scheduler type {stype!r}; supported: {', '.join(_TYPES)}")
    check_keys(f"ColossalAI {stype}", cfg, ("lr", "total_steps", "warmup_steps", "eta_min", "last_epoch", "exact"))
    if cfg.pop("last_epoch", -1) != -1:
        raise ValueError("last_epoch must be -1 (resume by evaluating later steps instead)")
    require(f"ColossalAI {stype}", cfg, "lr", "total_steps")
    return ScheduleSet(lr=ColossalAICosineWarmup(**cfg))
