"""Parity: ``schedules.from_config("colossalai", cfg)`` for every ``colossalai.nn.lr_scheduler`` type.

ColossalAI does not install cleanly here (an sdist whose import chain pulls galore_torch and
pins an older transformers). Its schedulers are thin classes over torch's, so the tests
re-state them (``colossalai_classes`` below, written from ColossalAI's
``colossalai/nn/lr_scheduler/*.py``: the same constructors, defaults, checks, wrappers and
hand-over logic) on torch's own ``LRScheduler``, ``CosineAnnealingLR``, ``MultiStepLR``,
``StepLR``, ``ExponentialLR`` and ``OneCycleLR``, and step them as a ColossalAI training loop
does (``optimizer.step(); lr_scheduler.step()``), over random configs (hypothesis), fixed edge
cases and steps past ``total_steps``. A config npadam rejects must make the re-stated object
raise too (at construction or at a later step), except the few listed in ``STRICTER``.

The wrappers hand over through torch's chained formulas, so the cosine types have
``lr - eta_min`` scaled by ``c = 2 / (1 + cos(pi / T_max))`` from the hand-over to
``T_max`` (1.33x the peak at T = 5, W = 2), and ``MultiStepWarmupLR`` with warmup 0 applies a
milestone 0 twice. The preset reproduces both; ``"exact": False`` is the intended closed form,
checked against scalar copies of the documented formulas.

Tolerances: closed forms (ColossalAI's PolynomialLR, LinearWarmupLR, torch's OneCycleLR) 1e-12
relative; torch's chained ``step()`` formulas 1e-6 relative for the cosine (its recursion
drifts near zero) and 1e-12 for the multiplicative ones (StepLR, MultiStepLR, ExponentialLR);
always plus 1e-12 of the peak as absolute tolerance.
"""

from __future__ import annotations

import functools
import json
import math
import re
from bisect import bisect_right

import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings, strategies as st

from npadam import schedules

try:  # numpy-only helpers; the frameworks are imported lazily inside them
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

RTOL = 1e-12
RTOL_CHAINED_COSINE = 1e-6
COSINE_TYPES = ("CosineAnnealingLR", "CosineAnnealingWarmupLR", "FlatAnnealingLR", "FlatAnnealingWarmupLR")
TYPES = ("CosineAnnealingLR", "CosineAnnealingWarmupLR", "FlatAnnealingLR", "FlatAnnealingWarmupLR",
         "LinearWarmupLR", "MultiStepLR", "MultiStepWarmupLR", "OneCycleLR", "PolynomialLR",
         "PolynomialWarmupLR", "StepLR", "ExponentialLR", "LambdaLR", "MultiplicativeLR")


# ---------------------------------------------------------------- ColossalAI, re-stated on torch


def _stable_id(cfg: dict) -> str:
    """The config as text without function addresses: pytest-xdist workers must collect the same ids."""
    return re.sub(r" at 0x[0-9a-f]+", "", str(cfg))


@functools.lru_cache(maxsize=None)
def colossalai_classes() -> dict[str, type]:
    """``colossalai.nn.lr_scheduler``'s classes (current ColossalAI main), re-stated on torch's own
    schedulers: same signatures, defaults, checks and stepping logic."""
    from torch.optim import lr_scheduler as tl

    class TwoStage(tl.LRScheduler):
        """ColossalAI's TwoStageScheduler: a first phase of its own, then ``after``."""

        offset_attr = "warmup_epochs"

        def __init__(self, optimizer, after_scheduler, last_epoch=-1):
            self.after_scheduler = after_scheduler
            self.finished = False
            super().__init__(optimizer, last_epoch)

        def hand_over(self):
            """First call in the second phase: give ``after`` our base lrs; then its ``get_lr()``
            at its own ``last_epoch`` (0 here: it has not been stepped since its constructor)."""
            if not self.finished:
                self.after_scheduler.base_lrs = self.base_lrs
                self.finished = True
            return self.after_scheduler.get_lr()

        def step(self, epoch=None):
            if not self.finished:
                return super().step(epoch)
            self.after_scheduler.step(None if epoch is None else epoch - getattr(self, self.offset_attr))
            self._last_lr = self.after_scheduler.get_last_lr()

    class Delayer(TwoStage):
        """DelayerScheduler: the base lr for ``delay_epochs`` steps, then ``after``."""

        offset_attr = "delay_epochs"

        def __init__(self, optimizer, delay_epochs, after_scheduler, last_epoch=-1):
            if delay_epochs < 0:
                raise ValueError(f"delay_epochs must >= 0, got {delay_epochs}")
            self.delay_epochs = delay_epochs
            super().__init__(optimizer, after_scheduler, last_epoch)

        def get_lr(self):
            if self.last_epoch >= self.delay_epochs:
                self.after_scheduler._get_lr_called_within_step = True
                try:
                    return self.hand_over()
                finally:
                    self.after_scheduler._get_lr_called_within_step = False
            return self.base_lrs

    class Warmup(TwoStage):
        """WarmupScheduler: ``(t + 1) / W * base`` for ``W = int(warmup_epochs)`` steps, then ``after``."""

        def __init__(self, optimizer, warmup_epochs, after_scheduler, last_epoch=-1):
            self.warmup_epochs = int(warmup_epochs)
            super().__init__(optimizer, after_scheduler, last_epoch)

        def get_lr(self):
            if self.last_epoch >= self.warmup_epochs:
                return self.hand_over()
            return [(self.last_epoch + 1) / self.warmup_epochs * b for b in self.base_lrs]

    class WarmupDelayer(TwoStage):
        """WarmupDelayerScheduler: warmup, then the base lr, then (lrs reset to base) ``after``."""

        def __init__(self, optimizer, warmup_epochs, delay_epochs, after_scheduler, last_epoch=-1):
            if delay_epochs < 0:
                raise ValueError(f"delay_epochs must >= 0, got {delay_epochs}")
            if warmup_epochs < 0:
                raise ValueError(f"warmup_epochs must >= 0, got {warmup_epochs}")
            self.warmup_epochs, self.delay_epochs = warmup_epochs, delay_epochs
            super().__init__(optimizer, after_scheduler, last_epoch)

        def get_lr(self):
            if self.last_epoch >= self.warmup_epochs + self.delay_epochs:
                if not self.finished:
                    for group, b in zip(self.optimizer.param_groups, self.base_lrs):
                        group["lr"] = b
                self.after_scheduler._get_lr_called_within_step = True
                try:
                    return self.hand_over()
                finally:
                    self.after_scheduler._get_lr_called_within_step = False
            if self.last_epoch >= self.warmup_epochs:
                return self.base_lrs
            return [(self.last_epoch + 1) / self.warmup_epochs * b for b in self.base_lrs]

    class CosineAnnealingLR(tl.CosineAnnealingLR):
        def __init__(self, optimizer, total_steps, eta_min=0, last_epoch=-1, **kwargs):
            super().__init__(optimizer, total_steps, eta_min=eta_min, last_epoch=last_epoch)

    class CosineAnnealingWarmupLR(Warmup):
        def __init__(self, optimizer, total_steps, warmup_steps=0, eta_min=0.0, last_epoch=-1):
            inner = tl.CosineAnnealingLR(optimizer, total_steps - warmup_steps, eta_min=eta_min,
                                         last_epoch=last_epoch)
            super().__init__(optimizer, warmup_steps, inner, last_epoch=last_epoch)

    def check_pct(pct_start):
        if not 0.0 <= pct_start <= 1.0:
            raise ValueError(f"pct_start must >= 0.0 and <= 1.0, got {pct_start}")

    class FlatAnnealingLR(Delayer):
        def __init__(self, optimizer, total_steps, pct_start=0.72, last_epoch=-1, **kwargs):
            check_pct(pct_start)
            flat = int(total_steps * pct_start)
            inner = tl.CosineAnnealingLR(optimizer, total_steps - flat)
            super().__init__(optimizer, flat, inner, last_epoch=last_epoch)

    class FlatAnnealingWarmupLR(WarmupDelayer):
        def __init__(self, optimizer, total_steps, warmup_steps=0, pct_start=0.72, eta_min=0, last_epoch=-1,
                     **kwargs):
            check_pct(pct_start)
            flat = int((total_steps - warmup_steps) * pct_start)
            inner = tl.CosineAnnealingLR(optimizer, total_steps - warmup_steps - flat, eta_min=eta_min)
            super().__init__(optimizer, warmup_steps, flat, inner, last_epoch=last_epoch)

    class LinearWarmupLR(tl.LRScheduler):
        def __init__(self, optimizer, total_steps, warmup_steps=0, last_epoch=-1, **kwargs):
            self.warmup_steps, self.total_steps = warmup_steps, total_steps
            super().__init__(optimizer, last_epoch=last_epoch)

        def get_lr(self):
            t, W, T = self.last_epoch, self.warmup_steps, self.total_steps
            if t < W:
                return [(t + 1) / (W + 1) * b for b in self.base_lrs]
            return [(T - t) / (T - W) * b for b in self.base_lrs]

    class MultiStepLR(tl.MultiStepLR):
        def __init__(self, optimizer, total_steps, milestones=None, gamma=0.1, last_epoch=-1, **kwargs):
            super().__init__(optimizer, milestones, gamma=gamma, last_epoch=last_epoch)

    class MultiStepWarmupLR(Warmup):
        def __init__(self, optimizer, total_steps, warmup_steps=0, milestones=None, gamma=0.1, last_epoch=-1,
                     **kwargs):
            if len(milestones) == 0:
                raise ValueError("milestones cannot be empty")
            shifted = [m - warmup_steps for m in milestones if m >= warmup_steps]
            inner = tl.MultiStepLR(optimizer, milestones=shifted, gamma=gamma)
            super().__init__(optimizer, warmup_steps, inner, last_epoch=last_epoch)

    class OneCycleLR(tl.OneCycleLR):
        def __init__(self, optimizer, total_steps, pct_start=0.3, anneal_strategy="cos", cycle_momentum=True,
                     base_momentum=0.85, max_momentum=0.95, div_factor=25.0, final_div_factor=10000.0,
                     last_epoch=-1, **kwargs):
            max_lrs = [group["lr"] for group in optimizer.param_groups]
            super().__init__(optimizer, max_lrs, total_steps=total_steps, pct_start=pct_start,
                             anneal_strategy=anneal_strategy, cycle_momentum=cycle_momentum,
                             base_momentum=base_momentum, max_momentum=max_momentum, div_factor=div_factor,
                             final_div_factor=final_div_factor, last_epoch=last_epoch)

    class PolynomialLR(tl.LRScheduler):
        def __init__(self, optimizer, total_steps, end_lr=0.0001, power=1.0, last_epoch=-1, **kwargs):
            if end_lr < 0:
                raise ValueError(f"end_lr must >= 0, got {end_lr}")
            self.total_steps, self.end_lr, self.power = total_steps, end_lr, power
            super().__init__(optimizer, last_epoch=last_epoch)

        def get_lr(self):
            frac = min(self.last_epoch, self.total_steps) / self.total_steps
            return [(b - self.end_lr) * ((1 - frac) ** self.power) + self.end_lr for b in self.base_lrs]

    class PolynomialWarmupLR(Warmup):
        def __init__(self, optimizer, total_steps, warmup_steps=0, end_lr=0.0001, power=1.0, last_epoch=-1,
                     **kwargs):
            inner = PolynomialLR(optimizer, total_steps - warmup_steps, end_lr=end_lr, power=power)
            super().__init__(optimizer, warmup_steps, inner, last_epoch=last_epoch)

    class StepLR(tl.StepLR):
        def __init__(self, optimizer, total_steps, step_size=1, gamma=0.1, last_epoch=-1):
            super().__init__(optimizer, step_size, gamma=gamma, last_epoch=last_epoch)

    class ExponentialLR(tl.ExponentialLR):
        def __init__(self, optimizer, total_steps, gamma=1.0, last_epoch=-1):
            super().__init__(optimizer, gamma, last_epoch=last_epoch)

    class LambdaLR(tl.LambdaLR):
        def __init__(self, optimizer, total_steps, lr_lambda=None, last_epoch=-1):
            super().__init__(optimizer, lr_lambda, last_epoch=last_epoch)

    class MultiplicativeLR(tl.MultiplicativeLR):
        def __init__(self, optimizer, total_steps, lr_lambda=None, last_epoch=-1):
            super().__init__(optimizer, lr_lambda, last_epoch=last_epoch)

    classes = {c.__name__: c for c in (
        CosineAnnealingLR, CosineAnnealingWarmupLR, FlatAnnealingLR, FlatAnnealingWarmupLR, LinearWarmupLR,
        MultiStepLR, MultiStepWarmupLR, OneCycleLR, PolynomialLR, PolynomialWarmupLR, StepLR, ExponentialLR,
        LambdaLR, MultiplicativeLR)}
    assert tuple(classes) == TYPES
    return classes


def trace_colossalai(cfg: dict, steps: int) -> dict[str, np.ndarray]:
    """The re-stated ColossalAI scheduler for ``cfg`` over a torch Adam with ``cfg["lr"]``, stepped
    after each update as ColossalAI's training loops do."""
    kwargs = {k: v for k, v in cfg.items() if k not in ("type", "lr", "exact")}
    cls = colossalai_classes()[cfg.get("type", "CosineAnnealingWarmupLR")]
    return drv.trace_torch_scheduler(lambda opt: cls(opt, **kwargs), cfg["lr"], steps)


def _rtol(name: str) -> float:
    return RTOL_CHAINED_COSINE if name in COSINE_TYPES else RTOL


def compare(cfg: dict, steps: int) -> bool:
    """npadam vs the re-stated object on updates 0..steps-1. A config npadam rejects must make the
    object raise too (within those steps). Returns whether npadam accepted the config."""
    name = cfg.get("type", "CosineAnnealingWarmupLR")
    ours = drv.raises(lambda: schedules.from_config("colossalai", cfg).lr(np.arange(steps)))
    real_error = drv.raises(lambda: trace_colossalai(cfg, steps))
    if ours is not None:
        assert isinstance(ours, ValueError), f"{type(ours).__name__}: {ours} for {cfg}"
        assert real_error is not None, f"npadam rejects a config ColossalAI runs: {cfg}: {ours}"
        return False
    assert real_error is None, f"ColossalAI raises {real_error!r} but npadam accepts {cfg}"
    got = schedules.from_config("colossalai", cfg)
    real = trace_colossalai(cfg, steps)
    k = np.arange(steps)
    drv.assert_matches("lr", got.lr(k), real["lr"], rtol=_rtol(name), peak=cfg["lr"], context=cfg)
    if got.beta1 is not None:
        drv.assert_matches("beta1", got.beta1(k), real["beta1"], rtol=RTOL, peak=1.0, context=cfg)
    else:  # the optimizer's own beta1 stays
        assert np.all(real["beta1"] == real["beta1"][0]), cfg
    assert got.weight_decay is None and got.beta2 is None
    return True


# ---------------------------------------------------------------- random configs


LRS = st.one_of(st.sampled_from([1e-3, 1.0, 3e-4]), st.floats(1e-6, 1.0))
PCTS = st.one_of(st.sampled_from([0.0, 0.3, 0.5, 0.72, 0.99, 1.0]), st.floats(0.0, 1.0))
GAMMAS = st.one_of(st.sampled_from([0.1, 0.5, 0.9]), st.floats(0.05, 1.05))


def _halve_every_10(e: int) -> float:
    return 0.5 ** (e // 10)


def _decay(e: int) -> float:
    return 0.97


LAMBDAS = (_halve_every_10, _decay, lambda e: 1.0 / (1 + e), lambda e: 1.001)


@st.composite
def configs(draw, name: str):
    """A random config of ColossalAI type ``name``; defaults left out half of the time."""
    lr = draw(LRS)
    total = draw(st.integers(1, 120))
    cfg = {"type": name, "lr": lr, "total_steps": total}

    def maybe(key, strategy):
        if draw(st.booleans()):
            cfg[key] = draw(strategy)

    eta = st.sampled_from([0.0, 0.01, 0.5]).map(lambda f: f * lr) | st.floats(0.0, lr)
    if name in ("CosineAnnealingWarmupLR", "FlatAnnealingWarmupLR", "LinearWarmupLR", "PolynomialWarmupLR"):
        maybe("warmup_steps", st.integers(0, total - 1))
    if name in ("CosineAnnealingLR", "CosineAnnealingWarmupLR", "FlatAnnealingWarmupLR"):
        maybe("eta_min", eta)
    if name in ("FlatAnnealingLR", "FlatAnnealingWarmupLR"):
        maybe("pct_start", PCTS)
    if name in ("MultiStepLR", "MultiStepWarmupLR"):
        ms = st.lists(st.integers(0, 150), min_size=1, max_size=5)
        if name == "MultiStepLR":
            maybe("milestones", ms)
        else:
            cfg["milestones"] = draw(ms)
            maybe("warmup_steps", st.integers(0, 40))  # MultiStepWarmupLR does not read total_steps
            if draw(st.booleans()):  # a milestone at the hand-over, repeated sometimes
                cfg["milestones"] += [cfg.get("warmup_steps", 0)] * draw(st.integers(1, 2))
        maybe("gamma", GAMMAS)
    if name in ("PolynomialLR", "PolynomialWarmupLR"):
        maybe("end_lr", st.sampled_from([0.0, 1e-4, 0.1, 2.0]).map(lambda f: f * lr))
        maybe("power", st.sampled_from([0.0, 0.5, 1.0, 2.0, 3.7]) | st.floats(0.0, 4.0))
    if name == "StepLR":
        maybe("step_size", st.integers(1, 30))
        maybe("gamma", GAMMAS)
    if name == "ExponentialLR":
        maybe("gamma", st.sampled_from([1.0, 0.9, 0.99]) | st.floats(0.9, 1.02))
    if name in ("LambdaLR", "MultiplicativeLR"):
        cfg["lr_lambda"] = draw(st.sampled_from(LAMBDAS))
    if name == "OneCycleLR":
        maybe("pct_start", PCTS)
        maybe("anneal_strategy", st.sampled_from(["cos", "linear"]))
        maybe("cycle_momentum", st.booleans())
        maybe("base_momentum", st.floats(0.5, 0.9))
        maybe("max_momentum", st.floats(0.9, 0.99))
        maybe("div_factor", st.sampled_from([25.0, 10.0, 1.0]))
        maybe("final_div_factor", st.sampled_from([1e4, 100.0]))
    return cfg


def steps_for(cfg: dict, extra: int) -> int:
    """Updates to compare: past everything the schedule does (OneCycleLR: up to its last defined one)."""
    if cfg["type"] == "OneCycleLR":
        return cfg["total_steps"] + 1
    end = cfg["total_steps"]
    if cfg["type"] in ("MultiStepLR", "MultiStepWarmupLR"):
        end = max(cfg.get("milestones") or [0]) + cfg.get("warmup_steps", 0)
    return end + extra


@pytest.mark.parametrize("name", TYPES)
@settings(max_examples=drv.examples(30), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_reproduces_colossalai(name, data):
    pytest.importorskip("torch")
    cfg = data.draw(configs(name))
    compare(cfg, steps_for(cfg, data.draw(st.integers(1, 2 * cfg["total_steps"] + 2))))


# ---------------------------------------------------------------- fixed cases

FIXED = [
    # as ColossalAI's own examples build them: ColossalChat's train_sft.py (3 epochs of 400 updates,
    # warmup int(3 * 0.025 * 400), eta_min = 0.1 lr; eta_min is scaled with lr in test_fixed_cases) and
    # examples/language/gpt/titans/train_gpt.py (LinearWarmupLR over NUM_EPOCHS = 10 or 60, warmup 5)
    {"type": "CosineAnnealingWarmupLR", "total_steps": 1200, "warmup_steps": 30, "eta_min": 0.1},
    {"type": "LinearWarmupLR", "total_steps": 10, "warmup_steps": 5},
    {"type": "LinearWarmupLR", "total_steps": 60, "warmup_steps": 5},
    # torch's documented StepLR / MultiStepLR examples, under ColossalAI's signatures
    {"type": "StepLR", "total_steps": 100, "step_size": 30, "gamma": 0.1},
    {"type": "MultiStepLR", "total_steps": 100, "milestones": [30, 80], "gamma": 0.1},
    # CosineAnnealingWarmupLR: T_max = 1, 2, 3, no warmup, a long run (the hand-over overshoot fades)
    {"type": "CosineAnnealingWarmupLR", "total_steps": 5, "warmup_steps": 2},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 3, "warmup_steps": 2},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 2, "warmup_steps": 1, "eta_min": 1e-4},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 4, "warmup_steps": 1},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 10, "eta_min": 1e-4},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 100, "warmup_steps": 10, "eta_min": 1e-5},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 1010, "warmup_steps": 10},
    {"type": "CosineAnnealingLR", "total_steps": 1},
    {"type": "CosineAnnealingLR", "total_steps": 50, "eta_min": 1e-5},
    # FlatAnnealing*: no flat phase, the default 0.72, one annealing step, eta_min
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": 0.0},
    {"type": "FlatAnnealingLR", "total_steps": 100},
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": 0.9},
    {"type": "FlatAnnealingLR", "total_steps": 100, "pct_start": 0.29},    # int(100 * 0.29) = 28, not 29
    {"type": "FlatAnnealingWarmupLR", "total_steps": 10, "warmup_steps": 2, "pct_start": 0.5, "eta_min": 1e-4},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 10, "pct_start": 0.0, "eta_min": 1e-4},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 100, "warmup_steps": 5},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 12, "warmup_steps": 1, "pct_start": 0.95},
    # LinearWarmupLR: past total_steps the lr is negative
    {"type": "LinearWarmupLR", "total_steps": 10, "warmup_steps": 2},
    {"type": "LinearWarmupLR", "total_steps": 1},
    {"type": "LinearWarmupLR", "total_steps": 7, "warmup_steps": 6},
    # MultiStep*: no milestones, repeated ones, milestones inside the warmup, at the hand-over, at 0
    {"type": "MultiStepLR", "total_steps": 10},
    {"type": "MultiStepLR", "total_steps": 10, "milestones": [0, 3, 3, 7], "gamma": 0.5},
    {"type": "MultiStepWarmupLR", "total_steps": 10, "warmup_steps": 3, "milestones": [1, 3, 5, 5]},
    {"type": "MultiStepWarmupLR", "total_steps": 10, "milestones": [0, 4], "gamma": 0.5},
    {"type": "MultiStepWarmupLR", "total_steps": 10, "milestones": [0, 0, 4], "gamma": 0.5},
    {"type": "MultiStepWarmupLR", "total_steps": 10, "warmup_steps": 30, "milestones": [2, 40]},
    # OneCycleLR: defaults, linear, no momentum cycling, pct_start at the edges
    {"type": "OneCycleLR", "total_steps": 100},
    {"type": "OneCycleLR", "total_steps": 30, "anneal_strategy": "linear", "pct_start": 0.5,
     "base_momentum": 0.8, "max_momentum": 0.9, "div_factor": 10.0, "final_div_factor": 100.0},
    {"type": "OneCycleLR", "total_steps": 10, "cycle_momentum": False},
    {"type": "OneCycleLR", "total_steps": 10, "pct_start": 0.0},
    {"type": "OneCycleLR", "total_steps": 10, "pct_start": 0.95},
    # Polynomial*: defaults, power 0 (the lr never moves), end_lr above lr, no warmup
    {"type": "PolynomialLR", "total_steps": 20},
    {"type": "PolynomialLR", "total_steps": 20, "power": 0.0, "end_lr": 0.5},
    {"type": "PolynomialLR", "total_steps": 20, "power": 2.0, "end_lr": 2.0},
    {"type": "PolynomialWarmupLR", "total_steps": 20, "warmup_steps": 5, "power": 0.5, "end_lr": 0.0},
    {"type": "PolynomialWarmupLR", "total_steps": 20, "power": 2.0},
    # StepLR, ExponentialLR: ColossalAI's defaults (step_size 1, gamma 0.1; gamma 1.0)
    {"type": "StepLR", "total_steps": 20},
    {"type": "StepLR", "total_steps": 20, "step_size": 7, "gamma": 0.5},
    {"type": "ExponentialLR", "total_steps": 20},
    {"type": "ExponentialLR", "total_steps": 20, "gamma": 0.95},
    # torch's documented LambdaLR / MultiplicativeLR examples (lambda epoch: 0.95 ** epoch, 0.95)
    {"type": "LambdaLR", "total_steps": 30, "lr_lambda": lambda e: 0.95 ** e},
    {"type": "MultiplicativeLR", "total_steps": 30, "lr_lambda": lambda e: 0.95},
]


@pytest.mark.parametrize("cfg", FIXED, ids=lambda c: f"{c['type']}-{c['total_steps']}")
@pytest.mark.parametrize("lr", [1e-3, 1.0])
def test_fixed_cases(cfg, lr):
    pytest.importorskip("torch")
    cfg = {**cfg, "lr": lr}
    if cfg.get("eta_min"):
        cfg["eta_min"] *= lr  # the fixed cases give eta_min as a fraction of lr
    assert compare(cfg, steps_for(cfg, 2 * cfg["total_steps"] + 3))


def test_every_type_is_covered():
    from npadam.schedules.frameworks import colossalai

    assert set(colossalai._TYPES) == set(TYPES) == {c["type"] for c in FIXED}


# ---------------------------------------------------------------- the quirks, by value


def test_cosine_hand_over_overshoot_and_the_intended_form():
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
    assert "flat_steps" not in exact.to_dict()  # CosineAnnealingWarmupLR dicts look as they always did



@pytest.mark.parametrize("cfg", [
    {"lr": 1.0, "total_steps": 5, "warmup_steps": 2},
    {"lr": 3e-4, "total_steps": 40, "warmup_steps": 7, "eta_min": 1e-5},
    {"type": "FlatAnnealingLR", "lr": 1.0, "total_steps": 10, "pct_start": 0.5},
    {"type": "FlatAnnealingWarmupLR", "lr": 1.0, "total_steps": 10, "warmup_steps": 2, "pct_start": 0.5,
     "eta_min": 0.1},
])
def test_torch_before_is_initial_gives_the_intended_form(cfg, monkeypatch):
    """The hand-over overshoot comes from torch's CosineAnnealingLR.get_lr testing ``_is_initial``
    (pytorch PR #149312, 2025). Before it, get_lr returned the optimizer's lr at ``last_epoch == 0``,
    and ColossalAI's wrappers then give the intended form: ``exact=False``. ColossalAI 0.5.0 pins
    torch <= 2.5.1, which has the older rule (docs/SCHEDULES.md)."""
    from torch.optim import lr_scheduler as tl

    new = tl.CosineAnnealingLR.get_lr

    def before_is_initial(self):
        if self.last_epoch == 0:
            return [group["lr"] for group in self.optimizer.param_groups]
        return new(self)

    steps = cfg["total_steps"] + 3
    k = np.arange(steps)
    exact = schedules.from_config("colossalai", cfg).lr(k)
    plain = schedules.from_config("colossalai", {**cfg, "exact": False}).lr(k)
    np.testing.assert_allclose(trace_colossalai(cfg, steps)["lr"], exact, rtol=RTOL_CHAINED_COSINE, atol=1e-15)
    monkeypatch.setattr(tl.CosineAnnealingLR, "get_lr", before_is_initial)
    np.testing.assert_allclose(trace_colossalai(cfg, steps)["lr"], plain, rtol=RTOL_CHAINED_COSINE, atol=1e-15)
    assert not np.allclose(exact, plain)

def test_flat_annealing_hand_over():
    cfg = {"type": "FlatAnnealingLR", "lr": 1.0, "total_steps": 10, "pct_start": 0.5}
    exact = schedules.from_config("colossalai", cfg).lr
    plain = schedules.from_config("colossalai", {**cfg, "exact": False}).lr
    assert [exact(k) for k in range(5)] == [1.0] * 5 == [plain(k) for k in range(5)]
    assert exact(5) == pytest.approx(2 / (1 + math.cos(math.pi / 5)), rel=1e-12) and plain(5) == 1.0
    assert exact(10) == plain(10) == 0.0 and exact(11) == pytest.approx(plain(11), rel=1e-12)
    warm = schedules.from_config("colossalai", {"type": "FlatAnnealingWarmupLR", "lr": 1.0, "total_steps": 10,
                                                "warmup_steps": 2, "pct_start": 0.5, "eta_min": 0.1}).lr
    assert warm(0) == 0.5 and warm(1) == 1.0 and warm(5) == 1.0  # warmup, flat (int(8 * 0.5) = 4 steps)
    assert warm(6) == pytest.approx(0.1 + 0.9 * 2 / (1 + math.cos(math.pi / 4)), rel=1e-12)


def test_multistep_warmup_zero_applies_milestone_zero_twice():
    cfg = {"type": "MultiStepWarmupLR", "lr": 1.0, "total_steps": 10, "milestones": [0, 3], "gamma": 0.5}
    exact = schedules.from_config("colossalai", cfg).lr
    plain = schedules.from_config("colossalai", {**cfg, "exact": False}).lr
    assert [exact(k) for k in range(5)] == [0.25, 0.25, 0.25, 0.125, 0.125]
    assert [plain(k) for k in range(5)] == [0.5, 0.5, 0.5, 0.25, 0.25]
    warm = {**cfg, "warmup_steps": 2, "milestones": [1, 2, 5]}  # 1 is dropped, 2 applies once at the hand-over
    assert schedules.from_config("colossalai", warm).lr(np.arange(8)).tolist() == \
        schedules.from_config("colossalai", {**warm, "exact": False}).lr(np.arange(8)).tolist() == \
        [0.5, 1.0, 0.5, 0.5, 0.5, 0.25, 0.25, 0.25]


def test_linear_warmup_goes_negative_past_total_steps():
    s = schedules.from_config("colossalai", {"type": "LinearWarmupLR", "lr": 1.0, "total_steps": 10,
                                             "warmup_steps": 3}).lr
    assert [s(k) for k in (0, 2, 3, 10, 17)] == [0.25, 0.75, 1.0, 0.0, -1.0]
    assert s.horizon == 10


def test_one_cycle_schedules_beta1_and_stops_at_total_steps():
    s = schedules.from_config("colossalai", {"type": "OneCycleLR", "lr": 1e-2, "total_steps": 50})
    assert s.lr(0) == pytest.approx(1e-2 / 25, rel=1e-12) and s.lr(14) == pytest.approx(1e-2, rel=1e-12)
    assert s.beta1(0) == 0.95 and s.beta1(14) == pytest.approx(0.85, rel=1e-12)
    assert s.lr.limit == 51
    with pytest.raises(ValueError, match="51"):  # as torch's OneCycleLR raises past total_steps
        s.lr(51)
    assert schedules.from_config("colossalai", {"type": "OneCycleLR", "lr": 1e-2, "total_steps": 50,
                                                "cycle_momentum": False}).beta1 is None


# ---------------------------------------------------------------- exact=False: the documented formulas


def intended(t: int, cfg: dict) -> float:
    """The hand-over types' intended lr for update t (scalar, written from their docstrings)."""
    name, lr, total = cfg["type"], cfg["lr"], cfg["total_steps"]
    W = cfg.get("warmup_steps", 0)
    if name == "MultiStepWarmupLR":
        if t < W:
            return (t + 1) / W * lr
        ms = sorted(m - W for m in cfg["milestones"] if m >= W)
        return lr * cfg.get("gamma", 0.1) ** bisect_right(ms, t - W)
    flat = {"CosineAnnealingWarmupLR": 0, "FlatAnnealingLR": int(total * cfg.get("pct_start", 0.72)),
            "FlatAnnealingWarmupLR": int((total - W) * cfg.get("pct_start", 0.72))}[name]
    eta = cfg.get("eta_min", 0.0)
    if t < W:
        return (t + 1) / W * lr
    if t < W + flat:
        return lr
    return eta + (lr - eta) * (1 + math.cos(math.pi * (t - W - flat) / (total - W - flat))) / 2


@pytest.mark.parametrize("name", ["CosineAnnealingWarmupLR", "FlatAnnealingLR", "FlatAnnealingWarmupLR",
                                  "MultiStepWarmupLR"])
@settings(max_examples=drv.examples(40), deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_intended_closed_forms(name, data):
    cfg = data.draw(configs(name))
    flat = int((cfg["total_steps"] - cfg.get("warmup_steps", 0)) * cfg.get("pct_start", 0.72))
    assume(name in ("CosineAnnealingWarmupLR", "MultiStepWarmupLR")
           or flat < cfg["total_steps"] - cfg.get("warmup_steps", 0))
    steps = steps_for(cfg, data.draw(st.integers(1, 300)))
    exact = schedules.from_config("colossalai", cfg).lr(np.arange(steps))
    plain = schedules.from_config("colossalai", {**cfg, "exact": False}).lr(np.arange(steps))
    want = np.array([intended(t, cfg) for t in range(steps)])
    np.testing.assert_allclose(plain, want, rtol=RTOL, atol=1e-12 * cfg["lr"], err_msg=str(cfg))
    # the real run differs only where the hand-over reaches
    if name == "MultiStepWarmupLR":
        W = cfg.get("warmup_steps", 0)
        same = W > 0 or 0 not in cfg["milestones"]
        assert np.array_equal(exact, plain) == same or cfg.get("gamma", 0.1) == 1.0
    else:
        start = cfg.get("warmup_steps", 0) + (0 if name == "CosineAnnealingWarmupLR" else flat)
        outside = (np.arange(steps) < start) | (np.arange(steps) > cfg["total_steps"])
        np.testing.assert_allclose(exact[outside], plain[outside], rtol=RTOL, atol=1e-12 * cfg["lr"])


# ---------------------------------------------------------------- rejections

# Configs the (re-stated) ColossalAI object rejects too, at construction or at a later step.
REJECTED = [
    {"type": "CosineAnnealingWarmupLR", "total_steps": 100, "warmup_steps": 100},  # T_max = 0
    {"type": "CosineAnnealingLR", "total_steps": 0},                               # divides by zero at step 1
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": 1.0},              # nothing left to anneal
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": 1.5},
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": -0.1},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 10, "warmup_steps": 10},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 10, "warmup_steps": 20, "pct_start": 0.5},
    {"type": "FlatAnnealingWarmupLR", "total_steps": 10, "warmup_steps": -1},
    {"type": "LinearWarmupLR", "total_steps": 10, "warmup_steps": 10},             # 0 / 0 at step 10
    {"type": "LinearWarmupLR", "total_steps": 0},
    {"type": "MultiStepWarmupLR", "total_steps": 10, "milestones": []},            # "milestones cannot be empty"
    {"type": "MultiStepWarmupLR", "total_steps": 10},                              # len(None)
    {"type": "OneCycleLR", "total_steps": 0},
    {"type": "OneCycleLR", "total_steps": 10, "anneal_strategy": "cosine"},
    {"type": "OneCycleLR", "total_steps": 10, "pct_start": 1.5},
    {"type": "OneCycleLR", "total_steps": 10, "pct_start": 0.1},                   # an empty phase: 0 / 0
    {"type": "OneCycleLR", "total_steps": 10, "pct_start": 1.0},
    {"type": "PolynomialLR", "total_steps": 0},
    {"type": "PolynomialLR", "total_steps": 10, "end_lr": -1e-4},
    {"type": "PolynomialLR", "total_steps": 10, "power": -1.0},                     # 0.0 ** -1 at step 10
    {"type": "PolynomialWarmupLR", "total_steps": 10, "warmup_steps": 10},
    {"type": "StepLR", "total_steps": 10, "step_size": 0},                          # t % 0 at step 1
    {"type": "StepLR", "total_steps": 10, "warmup_steps": 2},                       # no **kwargs: TypeError
    {"type": "ExponentialLR", "total_steps": 10, "gama": 0.9},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 10, "warmup_step": 2},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 10, "last_epoch": 5},        # resume: no initial_lr
    {"type": "OneCycleLR", "total_steps": 10, "last_epoch": 3},
    {"type": "StepLR"},                                                             # total_steps is required
    {"type": "ExponentialLR", "gamma": 0.9},
]


@pytest.mark.parametrize("cfg", REJECTED, ids=lambda c: _stable_id(c))
def test_rejected_like_colossalai(cfg):
    pytest.importorskip("torch")
    cfg = {"lr": 1e-3, **cfg}
    with pytest.raises(ValueError):
        schedules.from_config("colossalai", cfg).lr(np.arange(3 * cfg.get("total_steps", 10) + 3))
    assert drv.raises(lambda: trace_colossalai(cfg, 3 * cfg.get("total_steps", 10) + 3)) is not None


# Configs ColossalAI runs that npadam refuses, each with the reason.
STRICTER = [
    # ColossalAI's **kwargs drop these without a word: the real run did not use them
    ({"type": "FlatAnnealingLR", "total_steps": 10, "eta_min": 1e-5}, "would ignore it"),
    ({"type": "PolynomialLR", "total_steps": 10, "warmup_steps": 3}, "would ignore it"),
    ({"type": "OneCycleLR", "total_steps": 10, "three_phase": True}, "would ignore it"),
    ({"type": "MultiStepWarmupLR", "total_steps": 10, "milestones": [3], "num_steps_per_epoch": 5},
     "would ignore it"),
    # npadam's own key only where a hand-over differs
    ({"type": "StepLR", "total_steps": 10, "exact": False}, "no hand-over effect"),
    # nonsense the real objects run anyway: negative milestones / lengths, warmup past the end
    ({"type": "MultiStepLR", "total_steps": 10, "milestones": [-1, 3]}, "milestones\\[0\\] must be >= 0"),
    ({"type": "LinearWarmupLR", "total_steps": 5, "warmup_steps": 10}, "must be < total_steps"),
    ({"type": "PolynomialWarmupLR", "total_steps": 5, "warmup_steps": 10}, "must be < total_steps"),
    ({"type": "CosineAnnealingWarmupLR", "total_steps": 100, "warmup_steps": 150}, "must be < total_steps"),
    ({"type": "FlatAnnealingWarmupLR", "total_steps": 10, "warmup_steps": 12, "pct_start": 0.0},
     "must be < total_steps"),
    ({"type": "CosineAnnealingLR", "total_steps": -4}, "total_steps must be >= 1"),
    ({"type": "MultiStepWarmupLR", "total_steps": 10, "warmup_steps": -2, "milestones": [3]},
     "warmup_steps must be >= 0"),
]


@pytest.mark.parametrize("cfg, match", STRICTER, ids=lambda x: str(x) if isinstance(x, dict) else "")
def test_stricter_than_colossalai(cfg, match):
    pytest.importorskip("torch")
    cfg = {"lr": 1e-3, **cfg}
    with pytest.raises(ValueError, match=match):
        schedules.from_config("colossalai", cfg)
    assert drv.raises(lambda: trace_colossalai(cfg, steps_for(cfg, 2 * abs(cfg["total_steps"]) + 3))) is None


@pytest.mark.parametrize("cfg", [
    {"type": "OneCycle", "total_steps": 10},                          # DeepSpeed's name, not ColossalAI's
    {"type": "LambdaLR", "total_steps": 10},                          # no lr_lambda (torch: not callable)
    {"type": "MultiplicativeLR", "lr_lambda": _decay},                # total_steps is required
    {"type": "LambdaLR", "total_steps": 10, "lr_lambda": lambda e: "1"},
    {"type": "CosineAnnealingWarmupLR", "total_steps": 10, "exact": "yes"},
    {"type": "OneCycleLR", "total_steps": 10, "cycle_momentum": 1},
    {"type": "MultiStepLR", "total_steps": 10, "milestones": 5},
    {"type": "MultiStepLR", "total_steps": 10, "milestones": [2.5]},
    {"type": "FlatAnnealingLR", "total_steps": 10, "pct_start": "0.5"},
    {"lr": "1e-3", "total_steps": 10},                                 # a string, as some YAML loaders read it
    {"lr": None, "total_steps": 10},                                   # the optimizer's lr is required
], ids=lambda c: _stable_id(c))
def test_bad_values(cfg):
    with pytest.raises(ValueError):
        schedules.from_config("colossalai", {"lr": 1e-3, **cfg})


def test_error_messages_name_the_problem():
    def msg(cfg):
        with pytest.raises(ValueError) as info:
            schedules.from_config("colossalai", {"lr": 1e-3, **cfg})
        return str(info.value)

    assert "pct_start=1.0 leaves no annealing steps" in msg({"type": "FlatAnnealingLR", "total_steps": 10,
                                                             "pct_start": 1.0})
    assert "did you mean 'warmup_steps'" in msg({"total_steps": 10, "warmup_step": 2})
    assert "last_epoch must be -1, got 5" in msg({"total_steps": 10, "last_epoch": 5})
    assert "'exact' applies to CosineAnnealingWarmupLR" in msg({"type": "PolynomialLR", "total_steps": 10,
                                                                "exact": True})
    assert "milestones cannot be empty" in msg({"type": "MultiStepWarmupLR", "total_steps": 10, "milestones": []})
    assert "end_lr must >= 0, got -1" in msg({"type": "PolynomialLR", "total_steps": 10, "end_lr": -1})


# ---------------------------------------------------------------- objects, CLI, speed


@pytest.mark.parametrize("cfg", FIXED, ids=lambda c: f"{c['type']}-{c['total_steps']}")
def test_round_trip_and_horizon(cfg):
    s = schedules.from_config("colossalai", {**cfg, "lr": 1e-3})
    for _, sched in s.items():
        if "lr_lambda" in cfg:  # Python code: no dict can hold it
            with pytest.raises(TypeError, match="cannot be serialised"):
                sched.to_dict()
        else:
            assert schedules.from_dict(sched.to_dict()) == sched
    k = np.arange(steps_for({**cfg, "lr": 1e-3}, 5))
    assert np.array_equal(s.lr(k), [s.lr(int(i)) for i in k])  # scalar and array: the same bits
    if cfg["type"] not in ("MultiStepLR", "MultiStepWarmupLR", "StepLR", "ExponentialLR", "LambdaLR",
                           "MultiplicativeLR") and \
            not (cfg["type"] == "PolynomialLR" and cfg.get("power") == 0.0):
        assert s.lr.horizon == cfg["total_steps"]


def test_cli_dumps_a_colossalai_config(tmp_path, capsys):
    from npadam.cli import main

    cfg = {"type": "FlatAnnealingWarmupLR", "lr": 1e-3, "total_steps": 50, "warmup_steps": 5, "eta_min": 1e-5}
    (tmp_path / "flat.json").write_text(json.dumps(cfg))
    assert main(["schedule", "--framework", "colossalai", "--config", str(tmp_path / "flat.json")]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    assert lines[0] == "step,lr" and len(lines) == 1 + 55
    got = np.array([float(line.split(",")[1]) for line in lines[1:]])
    assert np.array_equal(got, schedules.from_config("colossalai", cfg).lr(np.arange(55)))

    (tmp_path / "one.yaml").write_text("type: OneCycleLR\nlr: 1.0e-2\ntotal_steps: 20\n")
    assert main(["schedule", "--framework", "colossalai", "--config", str(tmp_path / "one.yaml")]) == 0
    out = capsys.readouterr().out.strip().split("\n")
    assert out[0] == "step,lr,beta1" and len(out) == 1 + 21  # up to total_steps, OneCycleLR's last step


def test_long_runs_in_one_call():
    n = 200_000
    for cfg in FIXED:
        s = schedules.from_config("colossalai", {**cfg, "lr": 1e-3, "total_steps": n})
        v = s.lr(np.arange(n))
        assert v.shape == (n,) and np.isfinite(v).all(), cfg
