"""Parity: ``schedules.from_config("colossalai", cfg)`` (``CosineAnnealingWarmupLR``).

ColossalAI cannot be installed next to the other frameworks here, so npadam is checked
against an independent scalar implementation of ColossalAI's documented closed form
(``colossalai/nn/lr_scheduler/cosine.py``: a ``WarmupScheduler`` around torch's
``CosineAnnealingLR`` with ``T_max = total_steps - warmup_steps``):

- ``t < W``: ``(t + 1) / W * lr`` (non-zero at t = 0, ``lr`` at t = W - 1);
- ``t >= W``: ``eta_min + (lr - eta_min) * (1 + cos(pi * (t - W) / (T - W))) / 2``
  (periodic past ``T = total_steps``, like torch's cosine).

Documented deviation (measured below with the real torch ``CosineAnnealingLR``, driven
the way ColossalAI's ``WarmupScheduler`` drives it): ColossalAI hands over to the cosine
by calling its ``get_lr()`` at the cosine's ``last_epoch = 0`` without stepping it, and
current torch's ``get_lr()`` there is the *chained* formula applied to the last warmup
value. That scales ``lr - eta_min`` by ``c = 2 / (1 + cos(pi / (T - W)))`` for every
step ``W <= t <= T`` (c - 1 = 2.5% at T - W = 10, 0.97% at 16, 3.0e-4 at 90, 2.5e-6 at
1000; at T - W = 1 the value at t = W is ``2 lr - eta_min``); past T torch's special
restart branch puts it back on the closed form. npadam gives the closed form (the
intended schedule).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings, strategies as st

from npadam import schedules

try:  # numpy-only helpers; the frameworks are imported lazily inside them
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

RTOL = 1e-12


def colossalai_closed_form(t: int, lr: float, total_steps: int, warmup_steps: int = 0,
                           eta_min: float = 0.0) -> float:
    """ColossalAI CosineAnnealingWarmupLR's lr for update t (scalar, written from the docs)."""
    if t < warmup_steps:
        return (t + 1) / warmup_steps * lr
    t_max = total_steps - warmup_steps
    return eta_min + (lr - eta_min) * (1 + math.cos(math.pi * (t - warmup_steps) / t_max)) / 2


def _check(cfg: dict, steps: int) -> None:
    got = schedules.from_config("colossalai", {"type": "CosineAnnealingWarmupLR", **cfg})
    k = np.arange(steps)
    ours = got.lr(k)
    want = np.array([colossalai_closed_form(int(t), **cfg) for t in k])
    np.testing.assert_allclose(ours, want, rtol=RTOL, atol=1e-12 * cfg["lr"], err_msg=str(cfg))
    assert got.weight_decay is None and got.beta1 is None and got.beta2 is None


@st.composite
def configs(draw):
    lr = draw(st.one_of(st.sampled_from([1e-3, 1.0]), st.floats(1e-7, 1.0)))
    total = draw(st.integers(1, 300))
    cfg = {"lr": lr, "total_steps": total}
    if draw(st.booleans()):
        cfg["warmup_steps"] = draw(st.integers(0, total - 1))
    if draw(st.booleans()):
        cfg["eta_min"] = lr * draw(st.floats(0.0, 1.0))
    return cfg


@settings(max_examples=drv.examples(200), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(cfg=configs(), extra=st.integers(1, 300))
def test_closed_form(cfg, extra):
    _check(cfg, cfg["total_steps"] + extra)


@pytest.mark.parametrize("total,warmup", [(100, 0), (100, 1), (100, 99), (1, 0), (10_000, 500)])
def test_cases(total, warmup):
    _check({"lr": 3e-4, "total_steps": total, "warmup_steps": warmup, "eta_min": 1e-6}, 3 * total)


def test_warmup_ends_at_lr_and_starts_above_zero():
    s = schedules.from_config("colossalai", {"lr": 1.0, "total_steps": 100, "warmup_steps": 10}).lr
    assert s(0) == 0.1 and s(9) == 1.0 and s(10) == 1.0 and s(100) == 0.0


@pytest.mark.parametrize("total,warmup,eta", [(100, 10, 1e-5), (20, 4, 0.0), (10, 0, 1e-4), (1010, 10, 0.0)])
def test_documented_deviation_of_colossalai_on_current_torch(total, warmup, eta):
    """Quantify the hand-over deviation with the real torch CosineAnnealingLR (see module doc)."""
    pytest.importorskip("torch")
    from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

    def colossalai_like(opt):
        """ColossalAI's hand-over, re-expressed: warm up linearly; at step W give the
        cosine this scheduler's base lrs and return its get_lr() (its last_epoch is 0);
        from then on every step() steps the cosine."""
        cosine = CosineAnnealingLR(opt, total - warmup, eta_min=eta)

        class HandOver(LRScheduler):
            def __init__(self):
                self.cosine_started = False
                super().__init__(opt)

            def get_lr(self):
                if self.last_epoch < warmup:
                    return [(self.last_epoch + 1) / warmup * b for b in self.base_lrs]
                if not self.cosine_started:
                    cosine.base_lrs = self.base_lrs
                    self.cosine_started = True
                return cosine.get_lr()

            def step(self, epoch=None):
                if self.cosine_started:
                    cosine.step()
                else:
                    super().step()

        return HandOver()

    lr, steps = 1e-3, 3 * total
    real = drv.trace_torch_scheduler(colossalai_like, lr, steps)["lr"]
    ours = schedules.from_config("colossalai", {"lr": lr, "total_steps": total, "warmup_steps": warmup,
                                                "eta_min": eta}).lr(np.arange(steps))
    t = np.arange(steps)
    c = 2 / (1 + math.cos(math.pi / (total - warmup)))
    first_period = (t >= warmup) & (t <= total)
    np.testing.assert_allclose(real[t < warmup], ours[t < warmup], rtol=RTOL)
    np.testing.assert_allclose(real[first_period], eta + c * (ours[first_period] - eta), rtol=1e-9)
    np.testing.assert_allclose(real[t > total], ours[t > total], rtol=1e-6, atol=1e-12 * lr)
    assert real[warmup] == pytest.approx(eta + c * (lr - eta), rel=1e-12)


REJECTED = [
    {"lr": 1e-3, "total_steps": 100, "warmup_steps": 100},   # T_max = 0: torch divides by zero
    {"lr": 1e-3, "total_steps": 100, "warmup_steps": 150},
    {"lr": 1e-3, "total_steps": 0},
    {"lr": 1e-3},                                             # total_steps missing
    {"total_steps": 100},                                     # lr missing
    {"type": "OneCycleLR", "lr": 1e-3, "total_steps": 100},   # not supported
    {"lr": 1e-3, "total_steps": 100, "warmup_step": 10},      # misspelled
    {"lr": 1e-3, "total_steps": 100, "last_epoch": 5},        # resume state
]


@pytest.mark.parametrize("cfg", REJECTED, ids=str)
def test_rejected(cfg):
    with pytest.raises(ValueError):
        schedules.from_config("colossalai", cfg).lr(np.arange(10))
