"""ColossalAI's ``CosineAnnealingWarmupLR`` (``colossalai/nn/lr_scheduler/cosine.py``).

ColossalAI wraps torch's cosine in a ``WarmupScheduler``: for ``t < W`` the lr is
``(t + 1) / W * base`` (non-zero at t = 0, ``base`` at t = W - 1); from ``t = W`` on it
is torch's ``CosineAnnealingLR`` with ``T_max = total_steps - W`` evaluated at
``t - W``. npadam evaluates that cosine in closed form. Deliberate deviation: with
current torch, ColossalAI hands over by calling the cosine's ``get_lr()`` at its
``last_epoch = 0`` without stepping it, which is torch's *chained* formula applied to
the last warmup value. That scales ``lr - eta_min`` by ``c = 2 / (1 + cos(pi / (T - W)))``
(``T = total_steps``) for every step ``W <= t <= T``: ``c - 1`` is 2.5% at ``T - W = 10``,
0.97% at 16, 3.0e-4 at 90, 2.5e-6 at 1000 (``T - W = 1``: ``2 lr - eta_min`` at ``t = W``).
Past ``T`` torch's restart branch puts it back on the closed form. npadam gives the
intended closed form throughout (``tests/test_parity_colossalai.py`` measures the
deviation with the real torch cosine).
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from ._common import ScheduleSet, check_keys, require


@register
class ColossalAICosineWarmup(Schedule):
    """``t < W``: ``(t + 1) / W * lr``; then ``eta_min + (lr - eta_min) * (1 + cos(pi (t - W) / (T - W))) / 2``.

    Like torch's cosine it is periodic past ``T = total_steps``.
    """

    kind = "colossalai_cosine_warmup"

    def __init__(self, lr: float, total_steps: int, warmup_steps: int = 0, eta_min: float = 0.0) -> None:
        d = dict(lr=V.real("lr", lr), total_steps=V.integer("total_steps", total_steps, lo=1),
                 warmup_steps=V.integer("warmup_steps", warmup_steps, lo=0), eta_min=V.real("eta_min", eta_min))
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
        c = t[~w] - W
        out[~w] = eta + (base - eta) * (1 + np.cos(np.pi * c / (p["total_steps"] - W))) / 2
        return out


_TYPES = ("CosineAnnealingWarmupLR",)


def from_colossalai(config: Mapping[str, Any]) -> ScheduleSet:
    """``{"type": "CosineAnnealingWarmupLR", "lr", "total_steps", "warmup_steps", "eta_min"}``."""
    cfg = dict(config)
    stype = cfg.pop("type", "CosineAnnealingWarmupLR")
    if stype not in _TYPES:
        raise ValueError(f"unknown ColossalAI scheduler type {stype!r}; supported: {', '.join(_TYPES)}")
    check_keys(f"ColossalAI {stype}", cfg, ("lr", "total_steps", "warmup_steps", "eta_min", "last_epoch"))
    if cfg.pop("last_epoch", -1) != -1:
        raise ValueError("last_epoch must be -1 (resume by evaluating later steps instead)")
    require(f"ColossalAI {stype}", cfg, "lr", "total_steps")
    return ScheduleSet(lr=ColossalAICosineWarmup(**cfg))
