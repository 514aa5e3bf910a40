"""Parity: ``schedules.from_config("colossalai", cfg)`` (``CosineAnnealingWarmupLR``).

ColossalAI does not install cleanly here (an sdist whose import chain pulls galore_torch and
pins an older transformers). Its scheduler is a thin ``WarmupScheduler`` around torch's own
``CosineAnnealingLR``, so the tests re-state it on the real torch class
(``colossalai_like`` below: warm up ``(t + 1) / W * lr``; at step ``W`` hand the cosine this
scheduler's base lrs and return its ``get_lr()`` at its ``last_epoch = 0``; then step the
cosine) and step it like a training loop, over random configs. Its hand-over goes through
torch's chained formula: ``lr - eta_min`` is scaled by ``c = 2 / (1 + cos(pi / (T - W)))`` on
``W <= t <= T`` (1.33x the peak at T = 5, W = 2). The preset reproduces that; ``exact=False``
is the intended closed form, checked against a scalar copy of the documented formula.

Tolerances as for torch's chained schedulers (tests/test_parity_torch.py): rtol 1e-6 (the
chained recursion drifts from any closed form by rounding), atol 1e-12 of the peak.
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
    got = schedules.from_config("colossalai", {"type": "CosineAnnealingWarmupLR", **cfg, "exact": False})
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
    s = schedules.from_config("colossalai", {"lr": 1.0, "total_steps": 100, "warmup_steps": 10, "exact": False}).lr
    assert s(0) == 0.1 and s(9) == 1.0 and s(10) == 1.0 and s(100) == 0.0


def colossalai_like(total: int, warmup: int, eta: float):
    """ColossalAI's CosineAnnealingWarmupLR re-stated on torch's own CosineAnnealingLR: warm up
    linearly; at step W give the cosine this scheduler's base lrs and return its get_lr() (its
    last_epoch is 0); from then on every step() steps the cosine."""
    from torch.optim.lr_scheduler import CosineAnnealingLR, LRScheduler

    def make(opt):
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

    return make


def _exact(total: int, warmup: int, eta: float, lr: float, steps: int) -> None:
    real = drv.trace_torch_scheduler(colossalai_like(total, warmup, eta), lr, steps)["lr"]
    cfg = {"lr": lr, "total_steps": total, "warmup_steps": warmup, "eta_min": eta}
    ours = schedules.from_config("colossalai", cfg).lr(np.arange(steps))
    drv.assert_matches("lr", ours, real, rtol=1e-6, peak=lr, context=cfg)


@settings(max_examples=drv.examples(60), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reproduces_colossalai_exactly(data):
    pytest.importorskip("torch")
    total = data.draw(st.integers(1, 120))
    warmup = data.draw(st.integers(0, total - 1))
    lr = data.draw(st.sampled_from([1e-3, 1.0, 3e-4]))
    eta = lr * data.draw(st.sampled_from([0.0, 0.01, 0.5]))
    _exact(total, warmup, eta, lr, 3 * total + 2)


@pytest.mark.parametrize("total,warmup,eta", [(5, 2, 0.0), (100, 10, 1e-5), (20, 4, 0.0), (10, 0, 1e-4),
                                              (1010, 10, 0.0), (3, 2, 0.0), (2, 1, 1e-4), (4, 1, 0.0)])
def test_reproduces_colossalai_fixed_cases(total, warmup, eta):
    pytest.importorskip("torch")
    _exact(total, warmup, eta, 1e-3, 3 * total + 2)


def test_the_hand_over_overshoot_and_the_intended_form():
    exact = schedules.from_config("colossalai", {"lr": 1.0, "total_steps": 5, "warmup_steps": 2}).lr
    assert exact(2) == pytest.approx(4 / 3, rel=1e-12)  # 2 / (1 + cos(pi / 3)) = 1.33x the peak
    plain = schedules.from_config("colossalai", {"lr": 1.0, "total_steps": 5, "warmup_steps": 2,
                                                 "exact": False}).lr
    assert plain(2) == 1.0
    for k in (0, 1, 5, 6, 9):
        assert exact(k) == pytest.approx(plain(k), rel=1e-12)
    assert schedules.from_dict(exact.to_dict()) == exact and exact.to_dict()["exact"] is True
    legacy = {k: v for k, v in plain.to_dict().items() if k != "exact"}  # saved before "exact" existed
    assert schedules.from_dict(legacy) == plain


REJECTED = [
    {"lr": 1e-3, "total_steps": 100, "warmup_steps": 100},   # T_max = 0: torch divides by zero
    {"lr": 1e-3, "total_steps": 100, "warmup_steps": 150},
    {"lr": 1e-3, "total_steps": 0},
    {"lr": 1e-3},                                             # total_steps missing
    {"total_steps": 100},                                     # lr missing
    {"type": "OneCycleLR", "lr": 1e-3, "total_steps": 100},   # not supported
    {"lr": 1e-3, "total_steps": 100, "warmup_step": 10},      # misspelled
    {"lr": 1e-3, "total_steps": 100, "last_epoch": 5},        # resume state
    {"lr": 1e-3, "total_steps": 100, "exact": "yes"},         # a flag, not a string
]


@pytest.mark.parametrize("cfg", REJECTED, ids=str)
def test_rejected(cfg):
    with pytest.raises(ValueError):
        schedules.from_config("colossalai", cfg).lr(np.arange(10))
