"""The frameworks' own scheduler test suites, adapted to ``schedules.from_config`` (issue 9).

Each test here is named after the upstream test it adapts and runs the same configuration
through npadam's entry point for that framework, checked against the upstream test's *own*
expected numbers (its hard-coded targets, or its assertion re-stated) at its tolerance or
tighter; where the upstream test compares with the framework's object (or where its own
targets turn out to be vacuous), the real installed object is stepped too
(``tests/_framework_drivers.py``). Cases npadam cannot express are ``xfail(strict=True)``
with the reason: the file shows what is missing.

Upstream files (read from the mirrors; versions as close to the installed ones as available):

- torch: pytorch/pytorch ``test/optim/test_lrscheduler.py`` (class ``TestLRScheduler``; main of
  2026, the torch 2.13 line). Its ``self.opt`` is an SGD with two groups, lr 0.05 and 0.5;
  targets for the second group are ten times the first's. Here ``"lr": [0.05, 0.5]``.
- transformers: huggingface/transformers ``tests/optimization/test_optimization.py``
  (``ScheduleInitTest.test_schedulers``, the table with ``get_inverse_sqrt_schedule``).
- DeepSpeed: deepspeedai/DeepSpeed ``tests/unit/runtime/test_lr_schedulers.py`` (master after
  v0.19.5, which has the stair-count, per-group OneCycle and tensor-lr tests; 0.19.8 installed).
  The engine tests record ``lr_scheduler.get_lr()``: *after* ``model.step()`` (TestLrSchedule,
  TestWarmupCosineLR: the lr of update ``n + 1``) or *before* it (TestLrRange, TestOneCycle: the
  lr of update ``n``); a direct ``scheduler.step(s)`` gives the lr of update ``s + 1``.
- Megatron: NVIDIA/Megatron-LM ``tests/unit_tests/test_optimizer_param_scheduler.py``;
  ``scheduler.step(n)`` adds ``n`` samples, so with ``global_batch_size = 1`` the lr after steps
  totalling ``s`` is update ``s``'s.

Not ported, as they test the framework object's machinery and not a schedule's values: torch's
warning / epoch-deprecation / reference-cycle / tensor-lr-aliasing tests
(``test_old_pattern_*``, ``test_new_pattern_*``, ``*_is_constant_for_constant_epoch``,
``test_no_cyclic_references*``, ``test_error_when_getlr_has_epoch``, ``test_constant_initial_*``,
``test_*_state_dict`` of the object's ``__dict__``, ``test_cycle_lr_*_state_dict*``,
``test_cycle_lr_removed_after_out_of_scope``, ``test_reduce_lr_on_plateau_preserves_lr_type``,
``test_CosineAnnealingWarmRestarts_T_cur_reset``, ``test_onecycle_lr_legacy_state_dict``);
DeepSpeed's ``test_lr_scheduler_preserves_tensor_lr`` identity checks (its lr values are ported)
and ``test_all_schedulers_covered_by_tensor_lr_contract``; Megatron's ``test_initialization``,
``test_state_dict``, ``test_load_state_dict`` and ``TestGetCanonicalLrForLogging`` (attributes and
a logging helper).
"""

from __future__ import annotations

import math

import numpy as np
import pytest

try:  # tests/ as a package or as a rootdir-relative directory
    from . import _framework_drivers as drv
except ImportError:
    import _framework_drivers as drv

from npadam import schedules

TORCH_FILE = "pytorch/pytorch test/optim/test_lrscheduler.py::TestLRScheduler"
HF_FILE = "huggingface/transformers tests/optimization/test_optimization.py"
DS_FILE = "deepspeedai/DeepSpeed tests/unit/runtime/test_lr_schedulers.py"
MEGATRON_FILE = "NVIDIA/Megatron-LM tests/unit_tests/test_optimizer_param_scheduler.py"

UPSTREAM_ATOL = 1e-5  # torch's TestLRScheduler: assertEqual(..., atol=1e-5, rtol=0)
TORCH_RTOL = 1e-6  # npadam vs the real torch object (chained step() formulas; docs/SCHEDULES.md)
TWO = [0.05, 0.5]  # TestLRScheduler.setUp: two param groups


def groups_of(s):
    """A from_config result as a list of ScheduleSets (one per param group)."""
    return list(s) if isinstance(s, schedules.GroupSchedules) else [s]


def strictly_increasing(v) -> bool:
    return bool(np.all(np.diff(np.asarray(v, dtype=np.float64)) > 0))


def strictly_decreasing(v) -> bool:
    return bool(np.all(np.diff(np.asarray(v, dtype=np.float64)) < 0))


def missing(reason: str, raises=ValueError):
    """An upstream case npadam cannot express: it must keep failing with ``raises`` until it can."""
    return pytest.mark.xfail(strict=True, raises=raises, reason=reason)


# =========================================================================== torch

def _x10(single):
    return [single, [x * 10 for x in single]]


def _interp(start, end, iters):
    return [start + i * (end - start) / iters for i in range(iters)]


def _cos(eta_min, base, t, T):
    return eta_min + (base - eta_min) * (1 + math.cos(math.pi * t / T)) / 2


_LIN_Q = [x * 0.05 for x in _interp(1 / 4, 3 / 5, 4)] + [0.05 * 3 / 5] * 6
_LIN_H = [x * 0.05 for x in _interp(1 / 2, 1.0, 4)] + [0.05] * 6
_MULTI = [0.05] * 2 + [0.005] * 3 + [0.0005] * 4 + [0.00005] * 3
_COS10 = [_cos(1e-10, 0.05, x, 10) for x in range(10)]
_SEQ3 = [0.005] * 3 + [0.05, 0.04, 0.032] + [0.05, 0.05, 0.005, 0.005, 0.0005, 0.0005]

# (upstream test, config without "lr" (or with its own), targets per group, epochs). Each row's lr
# for update k (k = epoch) must equal target[k] (upstream: ``_test`` / ``_test_get_last_lr`` /
# ``_test_with_epoch``, all atol=1e-5).
TORCH_VALUE_CASES = [
    ("test_step_lr", {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3},
     _x10([0.05] * 3 + [0.005] * 3 + [0.0005] * 3 + [0.00005] * 3), 10),
    ("test_get_last_lr_step_lr", {"lr": 0.1, "scheduler": "StepLR", "step_size": 3, "gamma": 0.1},
     [[0.1] * 3 + [0.01] * 3 + [0.001] * 3 + [0.0001]], 10),
    ("test_get_last_lr_multi_step_lr", {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]},
     _x10(_MULTI[:10]), 10),
    ("test_multi_step_lr", {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]}, _x10(_MULTI), 10),
    ("test_multi_step_lr_with_epoch", {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]},
     _x10(_MULTI), 10),
    ("test_get_last_lr_constantlr", {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 5},
     _x10([0.025] * 5 + [0.05] * 5), 10),
    ("test_constantlr", {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 5},
     _x10([0.025] * 5 + [0.05] * 5), 10),
    ("test_constantlr_with_epoch", {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 5},
     _x10([0.025] * 5 + [0.05] * 5), 10),
    ("test_get_last_lr_linearlr", {"scheduler": "LinearLR", "start_factor": 1 / 4, "end_factor": 3 / 5,
                                   "total_iters": 4}, _x10(_LIN_Q), 10),
    ("test_linearlr", {"scheduler": "LinearLR", "start_factor": 1 / 2, "total_iters": 4}, _x10(_LIN_H), 10),
    ("test_linearlr_with_epoch", {"scheduler": "LinearLR", "start_factor": 1 / 2, "end_factor": 1.0,
                                  "total_iters": 4}, _x10(_LIN_H), 10),
    ("test_exp_lr", {"scheduler": "ExponentialLR", "gamma": 0.9}, _x10([0.05 * 0.9 ** x for x in range(10)]), 10),
    ("test_poly_lr", {"scheduler": "PolynomialLR", "power": 0.9, "total_iters": 5},
     _x10([(1 - x / 5) ** 0.9 * 0.05 for x in range(5)] + [0.0] * 5), 10),
    ("test_cos_anneal_lr", {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10}, _x10(_COS10), 10),
    # SequentialLR
    ("test_sequentiallr1", {"scheduler": "SequentialLR", "milestones": [3], "schedulers": [
        {"scheduler": "ExponentialLR", "gamma": 0.8}, {"scheduler": "StepLR", "gamma": 0.1, "step_size": 4}]},
     [[0.05, 0.04, 0.032] + [0.05] * 4 + [0.005] * 4 + [0.0005] * 4 + [0.00005] * 4], 19),
    ("test_sequentiallr2", {"scheduler": "SequentialLR", "milestones": [3], "schedulers": [
        {"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 3}, {"scheduler": "ExponentialLR", "gamma": 0.9}]},
     [[0.005] * 3 + [0.05 * 0.9 ** x for x in range(10)]], 13),
    ("test_sequentiallr3", {"scheduler": "SequentialLR", "milestones": [3, 6], "schedulers": [
        {"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 3}, {"scheduler": "ExponentialLR", "gamma": 0.8},
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 2}]}, [_SEQ3], 12),
    ("test_get_last_lr_sequentiallr", {"scheduler": "SequentialLR", "milestones": [3, 6], "schedulers": [
        {"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 3}, {"scheduler": "ExponentialLR", "gamma": 0.8},
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 2}]}, _x10(_SEQ3), 12),
    ("test_sequentiallr4", {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [10], "schedulers": [
        {"scheduler": "ConstantLR", "factor": 1}, {"scheduler": "ConstantLR", "factor": 0.1}]}, [[0.1]], 1),
    # upstream builds the ConstantLR before the LinearLR and chains [lin, const]: both only multiply
    ("test_sequentiallr5", {"scheduler": "SequentialLR", "milestones": [5], "schedulers": [
        {"scheduler": "ChainedScheduler", "schedulers": [
            {"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": 5},
            {"scheduler": "ConstantLR", "factor": 0.1, "total_iters": 5}]},
        {"scheduler": "ConstantLR", "factor": 0.5, "total_iters": 5}]},
     [[0.0005, 0.0014, 0.0023, 0.0032, 0.0041] + [0.025] * 5], 10),
    ("test_sequentiallr_does_not_alias_lr_and_initial_lr", {"lr": 2.0, "scheduler": "SequentialLR", "milestones": [4],
                                                             "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.1, "end_factor": 0.8, "total_iters": 4},
        {"scheduler": "LinearLR", "start_factor": 0.8, "end_factor": 0.1, "total_iters": 4}]},
     [[0.2, 0.55, 0.9, 1.25, 1.6, 1.25, 0.9, 0.55]], 8),
    # ChainedScheduler (and the "compound" tests: several schedulers stepped on one optimizer)
    ("test_chained_lr1", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}]},
     [[0.05] * 3 + [0.005] * 3 + [0.0005] * 3 + [0.00005] * 3], 10),
    ("test_chained_lr2", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.4, "total_iters": 3}]}, [[0.02, 0.03, 0.04] + [0.05] * 9], 10),
    ("test_chained_lr3", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.4, "total_iters": 3},
        {"scheduler": "MultiStepLR", "milestones": [4, 8, 10], "gamma": 0.1}]},
     [[0.02, 0.03, 0.04, 0.05] + [0.005] * 4 + [0.0005] * 3 + [0.00005] * 3], 10),
    ("test_chained_lr4", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "ExponentialLR", "gamma": 0.9}, {"scheduler": "ConstantLR", "factor": 0.2, "total_iters": 4},
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}]},
     [[0.05 * 0.2 * 0.9 ** x for x in range(3)] + [0.05 * 0.2 * 0.9 ** 3 * 0.1]
      + [0.05 * 0.9 ** x * 0.1 for x in range(4, 6)] + [0.05 * 0.9 ** x * 0.01 for x in range(6, 9)]], 9),
    ("test_chained_lr5", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "PolynomialLR", "power": 0.9, "total_iters": 5}, {"scheduler": "ConstantLR", "factor": 0.1}]},
     [[lr * 0.1 * (1 - x / 5) ** 0.9 for x in range(5)] + [0.0] * 5 for lr in TWO], 10),
    ("test_compound_step_and_multistep_lr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3},
        {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]}]},
     [[0.05] * 2 + [0.005] + [5e-4] * 2 + [5e-5] + [5e-6] * 3 + [5e-8]], 10),
    ("test_compound_step_and_exp_lr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}, {"scheduler": "ExponentialLR", "gamma": 0.9}]},
     _x10([0.05 * 0.1 ** (x // 3) * 0.9 ** x for x in range(12)]), 10),
    ("test_compound_exp_and_multistep_lr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]},
        {"scheduler": "ExponentialLR", "gamma": 0.9}]},
     _x10([m * 0.9 ** x for x, m in enumerate(_MULTI[:11])]), 10),
    ("test_compound_exp_and_linearlr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.4, "end_factor": 0.9, "total_iters": 4},
        {"scheduler": "ExponentialLR", "gamma": 0.9}]},
     _x10([0.05 * 0.9 ** x * (0.4 + x / 4 * 0.5 if x < 4 else 0.9) for x in range(11)]), 10),
    ("test_compound_step_and_constantlr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3},
        {"scheduler": "ConstantLR", "factor": 0.4, "total_iters": 4}]},
     _x10([0.05 * 0.4] * 3 + [0.005 * 0.4] + [0.005] * 2 + [0.0005] * 3 + [0.00005] * 3), 10),
    ("test_compound_linearlr_and_multistep_lr", {"scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]},
        {"scheduler": "LinearLR", "start_factor": 0.4, "total_iters": 4}]},
     _x10([m * (0.4 + x / 4 * 0.6 if x < 4 else 1.0) for x, m in enumerate(_MULTI[:11])]), 10),
    # CyclicLR's lr (the momentum halves are TORCH_MOMENTUM_CASES)
    ("test_cycle_lr_triangular_mode_one_lr_no_momentum",
     {"scheduler": "CyclicLR", "base_lr": 1, "max_lr": 5, "step_size_up": 4, "cycle_momentum": False,
      "mode": "triangular"}, [[1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3]] * 2, 11),
    ("test_cycle_lr_with_momentumless_optimizer",
     {"scheduler": "CyclicLR", "base_lr": 1, "max_lr": 5, "step_size_up": 4, "cycle_momentum": False,
      "mode": "triangular"}, [[1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3]] * 2, 11),
    # LambdaLR / MultiplicativeLR: one callable per group (upstream sets the groups' lr to 0.05 and 0.4)
    ("test_lambda_lr", {"lr": [0.05, 0.4], "scheduler": "LambdaLR",
                        "lr_lambda": [lambda x1: 0.9 ** x1, lambda x2: 0.8 ** x2]},
     [[0.05 * 0.9 ** x for x in range(10)], [0.4 * 0.8 ** x for x in range(10)]], 10),
    ("test_multiplicative_lr", {"lr": [0.05, 0.4], "scheduler": "MultiplicativeLR",
                                "lr_lambda": [lambda x1: 0.9, lambda x2: 0.8]},
     [[0.05 * 0.9 ** x for x in range(10)], [0.4 * 0.8 ** x for x in range(10)]], 10),
]


def _warm_restart_targets(T_mult, iters, base, eta_min=1e-10, T_0=10):
    """test_CosineAnnealingWarmRestarts_lr1's expected lrs: its integer T_cur / T_i recurrence."""
    out, T_i, T_cur = [base], T_0, 0
    for _ in range(1, iters):
        T_cur += 1
        if T_cur >= T_i:
            T_cur, T_i = T_cur - T_i, T_i * T_mult
        out.append(_cos(eta_min, base, T_cur, T_i))
    return out


for _m in (1, 2, 4):
    TORCH_VALUE_CASES.append((f"test_CosineAnnealingWarmRestarts_lr1[T_mult={_m}]",
                              {"scheduler": "CosineAnnealingWarmRestarts", "T_0": 10, "T_mult": _m,
                               "eta_min": 1e-10},
                              [_warm_restart_targets(_m, 100, lr) for lr in TWO], 100))


def _torch_config(cfg):
    return {"lr": TWO, **cfg}


@pytest.mark.parametrize("name,cfg,targets,epochs", TORCH_VALUE_CASES, ids=[c[0] for c in TORCH_VALUE_CASES])
def test_torch_lrscheduler_values(name, cfg, targets, epochs):
    """TestLRScheduler.<name>: the upstream targets at atol=1e-5, and the real torch object
    (same config, same param groups, stepped as ``_test`` steps it) at rtol=1e-6."""
    cfg = _torch_config(cfg)
    sets = groups_of(schedules.from_config("torch", cfg))
    k = np.arange(epochs)
    for s, target in zip(sets, targets):  # zip: as upstream, a single target list checks group 0 only
        np.testing.assert_allclose(s.lr(k), target[:epochs], rtol=0, atol=UPSTREAM_ATOL, err_msg=name)
    lrs = cfg["lr"] if isinstance(cfg["lr"], list) else [cfg["lr"]]
    real = drv.trace_torch_groups(cfg, epochs, groups=len(lrs))
    for i, (s, r) in enumerate(zip(sets, real)):
        drv.assert_matches(f"{name} group {i}", s.lr(k), r["lr"], rtol=TORCH_RTOL, peak=max(lrs), context=cfg)


# Upstream targets built on CosineAnnealingLR(eta_min=1e-10) composed with other schedulers: torch steps
# it as an affine map (eta_min + r(t) (lr - eta_min)) and npadam rejects that composition on purpose.
_COS_COMPOUND = "npadam rejects a chained CosineAnnealingLR with eta_min != 0 (an affine step with no closed form); "
TORCH_REJECTED_COMPOUNDS = [
    ("test_compound_cosanneal_and_step_lr", [{"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10},
                                             {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}],
     _x10([x * 0.1 ** (i // 3) for i, x in enumerate(_COS10)])),
    ("test_compound_cosanneal_and_multistep_lr", [{"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10},
                                                  {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]}],
     _x10([x * m for x, m in zip(_COS10, [1] * 2 + [0.1] * 3 + [0.01] * 4 + [0.001])])),
    ("test_compound_cosanneal_and_linearlr", [{"scheduler": "LinearLR", "start_factor": 0.4, "total_iters": 4},
                                              {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10}],
     _x10([x * (0.4 + i / 4 * 0.6 if i < 4 else 1.0) for i, x in enumerate(_COS10)])),
    ("test_compound_cosanneal_and_exp_lr", [{"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10},
                                            {"scheduler": "ExponentialLR", "gamma": 0.1}],
     _x10([x * 0.1 ** i for i, x in enumerate(_COS10)])),
]


@pytest.mark.parametrize("name,subs,targets", [pytest.param(*c, marks=missing(_COS_COMPOUND + "use eta_min=0"))
                                               for c in TORCH_REJECTED_COMPOUNDS],
                         ids=[c[0] for c in TORCH_REJECTED_COMPOUNDS])
def test_torch_compound_cosanneal(name, subs, targets):
    """TestLRScheduler.test_compound_cosanneal_*: the schedulers on one optimizer (npadam's
    ChainedScheduler), upstream targets at atol=1e-5."""
    sets = groups_of(schedules.from_config("torch", {"lr": TWO, "scheduler": "ChainedScheduler", "schedulers": subs}))
    for s, target in zip(sets, targets):
        np.testing.assert_allclose(s.lr(np.arange(10)), target, rtol=0, atol=UPSTREAM_ATOL, err_msg=name)


def _xs_targets(xs, base, mx, gamma=None):
    """CyclicLR targets as upstream writes them: lr base + x * diff (* gamma**i), momentum max - ..."""
    g = [1.0 if gamma is None else gamma ** i for i in range(len(xs))]
    return ([base + x * (mx - base) * gi for x, gi in zip(xs, g)], [mx - x * (mx - base) * gi for x, gi in zip(xs, g)])


_TRI = [1, 2, 3, 4, 5, 4, 3, 2, 1, 2, 3]
_TRI_MOM = [5, 4, 3, 2, 1, 2, 3, 4, 5, 4, 3]
_TRI2 = [1, 2, 3, 4, 5, 4, 3, 2, 1, 1.5, 2.0, 2.5, 3.0, 2.5, 2.0, 1.5, 1, 1.25, 1.50, 1.75, 2.00, 1.75]
_TRI2_MOM = [5.0, 4.0, 3.0, 2.0, 1.0, 2.0, 3.0, 4.0, 5.0, 4.5, 4.0, 3.5, 3.0, 3.5, 4.0, 4.5, 5.0, 4.75, 4.5,
             4.25, 4.0, 4.25]
_XS = [0, 0.25, 0.5, 0.75, 1, 0.75, 0.50, 0.25, 0, 0.25, 0.5, 0.75, 1]
_XS_UD = [0.0, 0.5, 1.0, 5 / 6, 4 / 6, 3 / 6, 2 / 6, 1 / 6, 0.0, 0.5, 1.0, 5 / 6, 4 / 6]
_UD_LR = [1.0, 2.0, 3.0, 4.0, 5.0, 13 / 3, 11 / 3, 9 / 3, 7 / 3, 5 / 3, 1.0]
_UD_MOM = [5.0, 4.0, 3.0, 2.0, 1.0, 5 / 3, 7 / 3, 3.0, 11 / 3, 13 / 3, 5.0]
_UD2_LR = [1.0, 3.0, 5.0, 13 / 3, 11 / 3, 9 / 3, 7 / 3, 5 / 3, 1.0, 2.0, 3.0, 8 / 3, 7 / 3, 6 / 3, 5 / 3, 4 / 3,
           1.0, 3 / 2, 2.0, 11 / 6, 10 / 6, 9 / 6, 8 / 6, 7 / 6]
_UD2_MOM = [5.0, 3.0, 1.0, 5 / 3, 7 / 3, 3.0, 11 / 3, 13 / 3, 5.0, 4.0, 3.0, 10 / 3, 11 / 3, 4.0, 13 / 3, 14 / 3,
            5.0, 4.5, 4.0, 25 / 6, 13 / 3, 4.5, 14 / 3, 29 / 6]
_ONE_CYCLE_COS_LR = [1, 13, 25] + [0.5 + (25 - 0.5) / 2 * (math.cos(math.pi * i / 7) + 1) for i in range(1, 7)] + [0.5]
_ONE_CYCLE_COS_MOM = [22, 11.5, 1] + [22 + (1 - 22) / 2 * (math.cos(math.pi * i / 7) + 1) for i in range(1, 7)] + [22]


def _cyc(mode, base, mx, up=4, down=None, **kw):
    cfg = {"scheduler": "CyclicLR", "base_lr": base, "max_lr": mx, "step_size_up": up, "cycle_momentum": True,
           "base_momentum": base, "max_momentum": mx, "mode": mode, **kw}
    if down is not None:
        cfg["step_size_down"] = down
    return cfg


_OC_LIN = {"scheduler": "OneCycleLR", "max_lr": 25, "final_div_factor": 2, "base_momentum": 1, "max_momentum": 22,
           "total_steps": 10, "anneal_strategy": "linear"}

# (upstream test, config, lr targets per group, momentum targets per group, steps): ``_test_cycle_lr``
# checks the lr and the momentum (SGD's ``momentum``, or Adam's beta1) before every update, atol=1e-5.
# npadam's momentum schedule is ``ScheduleSet.beta1``.
TORCH_MOMENTUM_CASES = [
    ("test_cycle_lr_triangular_mode_one_lr", _cyc("triangular", 1, 5), [_TRI] * 2, [_TRI_MOM] * 2, 11),
    ("test_cycle_lr_triangular2_mode_one_lr", _cyc("triangular2", 1, 5), [_TRI2] * 2, [_TRI2_MOM] * 2, 22),
    ("test_cycle_lr_exp_range_mode_one_lr", _cyc("exp_range", 1, 5, gamma=0.9),
     [_xs_targets(_XS, 1, 5, 0.9)[0]] * 2, [_xs_targets(_XS, 1, 5, 0.9)[1]] * 2, 13),
    ("test_cycle_lr_triangular_mode", _cyc("triangular", [1, 2], [5, 6]), [_TRI, [x + 1 for x in _TRI]],
     [_TRI_MOM, [x + 1 for x in _TRI_MOM]], 11),
    ("test_cycle_lr_triangular2_mode", _cyc("triangular2", [1, 3], [5, 7]), [_TRI2, [x + 2 for x in _TRI2]],
     [_TRI2_MOM, [x + 2 for x in _TRI2_MOM]], 22),
    ("test_cycle_lr_exp_range_mode", _cyc("exp_range", [1, 5], [5, 12], gamma=0.9),
     [_xs_targets(_XS, 1, 5, 0.9)[0], _xs_targets(_XS, 5, 12, 0.9)[0]],
     [_xs_targets(_XS, 1, 5, 0.9)[1], _xs_targets(_XS, 5, 12, 0.9)[1]], 13),
    ("test_cycle_lr_triangular_mode_step_size_up_down", _cyc("triangular", 1, 5, 4, 6), [_UD_LR] * 2,
     [_UD_MOM] * 2, 11),
    ("test_cycle_lr_triangular2_mode_step_size_up_down", _cyc("triangular2", [1, 3], [5, 7], 2, 6),
     [_UD2_LR, [x + 2 for x in _UD2_LR]], [_UD2_MOM, [x + 2 for x in _UD2_MOM]], 24),
    ("test_cycle_lr_exp_range_mode_step_size_up_down", _cyc("exp_range", 1, 5, 2, 6, gamma=0.9),
     [_xs_targets(_XS_UD, 1, 5, 0.9)[0]] * 2, [_xs_targets(_XS_UD, 1, 5, 0.9)[1]] * 2, 13),
    ("test_onecycle_lr_linear_annealing", _OC_LIN, [[1, 13, 25, 21.5, 18, 14.5, 11, 7.5, 4, 0.5]] * 2,
     [[22, 11.5, 1, 4, 7, 10, 13, 16, 19, 22]] * 2, 10),
    ("test_cycle_lr_with_adam", _OC_LIN, [[1, 13, 25, 21.5, 18, 14.5, 11, 7.5, 4, 0.5]] * 2,
     [[22, 11.5, 1, 4, 7, 10, 13, 16, 19, 22]] * 2, 10),
    ("test_onecycle_lr_linear_annealing_three_phases",
     {"scheduler": "OneCycleLR", "max_lr": 25, "div_factor": 25, "base_momentum": 1, "max_momentum": 22,
      "total_steps": 10, "anneal_strategy": "linear", "pct_start": 0.4, "final_div_factor": 4, "three_phase": True},
     [[1, 9, 17, 25, 17, 9, 1, 0.75, 0.5, 0.25]] * 2, [[22, 15, 8, 1, 8, 15, 22, 22, 22, 22]] * 2, 10),
    ("test_onecycle_lr_cosine_annealing",
     {"scheduler": "OneCycleLR", "max_lr": 25, "final_div_factor": 2, "base_momentum": 1, "max_momentum": 22,
      "total_steps": 10}, [_ONE_CYCLE_COS_LR] * 2, [_ONE_CYCLE_COS_MOM] * 2, 10),
]


@pytest.mark.parametrize("name,cfg,lr_targets,mom_targets,steps", TORCH_MOMENTUM_CASES,
                         ids=[c[0] for c in TORCH_MOMENTUM_CASES])
def test_torch_cycle_lr_and_momentum(name, cfg, lr_targets, mom_targets, steps):
    """TestLRScheduler.<name> (``_test_cycle_lr``): lr and momentum (beta1) targets at atol=1e-5, and
    the real torch object on an Adam with the same groups (its beta1 cycled) at rtol=1e-6."""
    cfg = _torch_config(cfg)
    sets = groups_of(schedules.from_config("torch", cfg))
    assert len(sets) == 2 or not any(isinstance(v, list) for k, v in cfg.items() if k != "lr")
    k = np.arange(steps)
    real = drv.trace_torch_groups(cfg, steps, groups=2)
    for i, s in enumerate(sets):
        np.testing.assert_allclose(s.lr(k), lr_targets[i], rtol=0, atol=UPSTREAM_ATOL, err_msg=f"{name} lr")
        np.testing.assert_allclose(s.beta1(k), mom_targets[i], rtol=0, atol=UPSTREAM_ATOL, err_msg=f"{name} beta1")
        drv.assert_matches(f"{name} lr[{i}]", s.lr(k), real[i]["lr"], rtol=TORCH_RTOL, peak=25, context=cfg)
        drv.assert_matches(f"{name} beta1[{i}]", s.beta1(k), real[i]["beta1"], rtol=TORCH_RTOL, peak=22, context=cfg)


TORCH_REJECTS = [
    ("test_linearlr_start_factor_limits1", {"scheduler": "LinearLR", "start_factor": 0.0, "total_iters": 4}),
    ("test_linearlr_start_factor_limits2", {"scheduler": "LinearLR", "start_factor": 1.1, "total_iters": 4}),
    ("test_cycle_lr_invalid_mode", {"scheduler": "CyclicLR", "base_lr": 0, "max_lr": 0, "mode": "CATS"}),
    ("test_onecycle_lr_invalid_anneal_strategy", {"scheduler": "OneCycleLR", "max_lr": 1e-3, "total_steps": 10,
                                                  "anneal_strategy": "CATS"}),
    ("test_onecycle_lr_invalid_pct_start", {"scheduler": "OneCycleLR", "max_lr": 1e-3, "total_steps": 10,
                                            "pct_start": 1.1}),
    ("test_onecycle_lr_cannot_calculate_total_steps", {"scheduler": "OneCycleLR", "max_lr": 1e-3}),
]


@pytest.mark.parametrize("name,cfg", TORCH_REJECTS, ids=[c[0] for c in TORCH_REJECTS])
def test_torch_rejects(name, cfg):
    """TestLRScheduler.<name>: ``assertRaises(ValueError)``."""
    with pytest.raises(ValueError):
        schedules.from_config("torch", _torch_config(cfg))


@pytest.mark.xfail(strict=True, raises=ValueError,
                   reason="npadam raises ValueError for every config the framework rejects (its rule for bad "
                          "configs); torch raises TypeError here. The message matches.")
def test_multiplicative_lr_with_lr_lambda():
    """TestLRScheduler.test_multiplicative_lr_with_lr_lambda: a non-callable lr_lambda (or a list of
    them) raises TypeError "lr_lambda should be a function"."""
    for lam in (0.95, [0.95, 0.95]):
        with pytest.raises(TypeError, match="lr_lambda should be a function"):
            schedules.from_config("torch", {"lr": TWO, "scheduler": "MultiplicativeLR", "lr_lambda": lam})


@pytest.mark.xfail(strict=True, reason="on purpose: npadam reads last_epoch >= 0 as a resume from a torch-scheduled "
                                       "optimizer state (which holds initial_lr); there is no optimizer whose groups "
                                       "could lack it, so nothing raises KeyError")
def test_raise_error_when_last_epoch_is_greater_than_0_and_initial_lr_is_not_specified():
    """TestLRScheduler.test_raise_error_when_last_epoch_is_greater_than_0_and_initial_lr_is_not_specified."""
    with pytest.raises((KeyError, ValueError), match="initial_lr"):
        schedules.from_config("torch", {"lr": 0.1, "scheduler": "StepLR", "step_size": 3, "gamma": 0.1,
                                        "last_epoch": 1})


CLOSED_FORM_CASES = [
    ("test_closed_form_step_lr", {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}, 20),
    ("test_closed_form_linearlr", {"scheduler": "LinearLR", "start_factor": 1 / 3, "end_factor": 0.7,
                                   "total_iters": 4}, 20),
    ("test_closed_form_constantlr", {"scheduler": "ConstantLR", "factor": 1 / 3, "total_iters": 4}, 20),
    ("test_closed_form_multi_step_lr", {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [2, 5, 9]}, 20),
    ("test_closed_form_exp_lr", {"scheduler": "ExponentialLR", "gamma": 0.9}, 20),
    ("test_closed_form_poly_lr", {"scheduler": "PolynomialLR", "power": 0.9}, 20),
    ("test_closed_form_cos_anneal_lr", {"scheduler": "CosineAnnealingLR", "T_max": 5, "eta_min": 1e-10}, 20),
]


@pytest.mark.parametrize("name,cfg,epochs", CLOSED_FORM_CASES, ids=[c[0] for c in CLOSED_FORM_CASES])
def test_torch_closed_form(name, cfg, epochs):
    """TestLRScheduler.test_closed_form_*: the chained ``step()`` lrs against torch's closed form
    ``_get_closed_form_lr()`` (upstream's ``_test_against_closed_form`` reads both from a fresh
    optimizer after ``setUp()``, so it compares 0.05 with 0.05; this port does what it means:
    npadam against the real object's chained steps and its closed form, rtol=1e-6)."""
    import torch

    cfg = _torch_config(cfg)
    sets = groups_of(schedules.from_config("torch", cfg))
    k = np.arange(epochs)
    chained = drv.trace_torch_groups(cfg, epochs, groups=2)
    with drv.quiet():
        opt = drv.torch_adam_groups(TWO)
        sched = drv.build_torch_scheduler(opt, cfg)
        closed = []
        for _ in range(epochs):
            closed.append(sched._get_closed_form_lr())
            opt.step()
            sched.step()
    closed = np.array([[float(torch.as_tensor(x)) for x in row] for row in closed])
    for i, s in enumerate(sets):
        drv.assert_matches(f"{name}[{i}] vs chained", s.lr(k), chained[i]["lr"], rtol=TORCH_RTOL, peak=0.5, context=cfg)
        drv.assert_matches(f"{name}[{i}] vs closed form", s.lr(k), closed[:, i], rtol=TORCH_RTOL, peak=0.5, context=cfg)


def test_cos_anneal_lr_continue():
    """TestLRScheduler.test_cos_anneal_lr_continue: a CosineAnnealingLR(T_max=5, eta_min=0.1) resumed with
    last_epoch=0 after one step has the lrs of the stepped one (rtol=1e-4, atol=1e-5)."""
    cfg = _torch_config({"scheduler": "CosineAnnealingLR", "T_max": 5, "eta_min": 0.1})
    fresh = groups_of(schedules.from_config("torch", cfg))
    resumed = groups_of(schedules.from_config("torch", {**cfg, "last_epoch": 0}))
    original = [s.lr(1) for s in fresh]
    np.testing.assert_allclose([s.lr(0) for s in resumed], original, rtol=1e-4, atol=1e-5)
    real = drv.trace_torch_groups({**cfg, "last_epoch": 0}, 1, groups=2)
    np.testing.assert_allclose([s.lr(0) for s in resumed], [r["lr"][0] for r in real], rtol=TORCH_RTOL)


def _plateau_metrics(kind):
    return {"minus167": [10 - i * 0.0167 for i in range(20)], "minus165": [10 - i * 0.0165 for i in range(22)],
            "flat": [-0.8] * 2 + [-0.234] * 20, "up1025": [1.5 * 1.025 ** i for i in range(20)],
            "up1005": [1.5 * 1.005 ** i for i in range(20)], "down085": [1.5 * 0.85 ** i for i in range(20)],
            "step": [1] * 7 + [0.6] + [0.5] * 12}[kind]


PLATEAU_CASES = [
    ("test_reduce_lr_on_plateau1", {"threshold_mode": "abs", "mode": "min", "threshold": 0.01, "patience": 5,
                                    "cooldown": 5}, "minus167", [[0.5] * 20], 10),
    ("test_reduce_lr_on_plateau2", {"patience": 5, "cooldown": 0, "threshold_mode": "abs", "mode": "min",
                                    "threshold": 0.1}, "minus165",
     [[0.5] * 6 + [0.05] * 7 + [0.005] * 7 + [0.0005] * 2], 22),
    ("test_reduce_lr_on_plateau3", {"mode": "max", "patience": 5, "cooldown": 5, "threshold_mode": "abs"}, "flat",
     [[0.5] * 8 + [0.05] * 11 + [0.005] * 4], 22),
    ("test_reduce_lr_on_plateau4", {"mode": "max", "patience": 3, "threshold_mode": "rel", "threshold": 0.1},
     "up1025", [[0.5] * 20], 20),
    ("test_reduce_lr_on_plateau5", {"mode": "max", "threshold_mode": "rel", "threshold": 0.1, "patience": 5,
                                    "cooldown": 5}, "up1005", [[0.5] * 6 + [0.05] * 11 + [0.005] * 4], 20),
    ("test_reduce_lr_on_plateau6", {"mode": "min", "threshold_mode": "rel", "threshold": 0.1}, "down085",
     [[0.5] * 20], 20),
    ("test_reduce_lr_on_plateau7", {"mode": "min", "threshold_mode": "rel", "threshold": 0.1, "patience": 5,
                                    "cooldown": 5}, "step", [[0.5] * 6 + [0.05] * 11 + [0.005] * 4], 20),
    ("test_reduce_lr_on_plateau8", {"mode": "max", "threshold_mode": "rel", "min_lr": [0.4, 0.3], "threshold": 0.1,
                                    "patience": 5, "cooldown": 5}, "up1005",
     [[0.5] * 6 + [0.4] * 14, [0.5] * 6 + [0.3] * 14], 20),
]


@pytest.mark.parametrize("name,kwargs,metrics,targets,epochs", PLATEAU_CASES, ids=[c[0] for c in PLATEAU_CASES])
def test_torch_reduce_lr_on_plateau(name, kwargs, metrics, targets, epochs):
    """TestLRScheduler.<name> (``_test_reduce_lr_on_plateau``): both groups at lr 0.5; after the
    plateau's step with ``metrics[epoch]`` the lr is ``target[epoch]`` (atol=1e-5); npadam's
    ``from_config("torch", ReduceLROnPlateau)`` gives a ``Plateau`` (per group with a ``min_lr`` list),
    stepped with the same metrics."""
    cfg = {"lr": [0.5, 0.5], "scheduler": "ReduceLROnPlateau", **kwargs}
    gs = schedules.from_config("torch", cfg)
    assert isinstance(gs, schedules.GroupSchedules)
    for epoch, metric in enumerate(_plateau_metrics(metrics)[:epochs]):
        gs.step(metric)
        for s, target in zip(gs, targets):
            assert abs(s.lr(epoch + 1) - target[epoch]) <= UPSTREAM_ATOL, (name, epoch, s.lr(epoch + 1))


def test_reduce_lr_on_plateau_get_last_lr_before_step():
    """TestLRScheduler.test_reduce_lr_on_plateau_get_last_lr_before_step: the groups' lr before any step."""
    gs = schedules.from_config("torch", {"lr": [0.5, 0.5], "scheduler": "ReduceLROnPlateau"})
    assert [s.lr(0) for s in gs] == [0.5, 0.5]


def test_reduce_lr_on_plateau_state_dict():
    """TestLRScheduler.test_reduce_lr_on_plateau_state_dict: the state after ten scores loads into another
    scheduler (npadam's Plateau state is separate from its configuration, which is not overwritten)."""
    p = schedules.from_config("torch", {"lr": 0.05, "scheduler": "ReduceLROnPlateau", "mode": "min",
                                        "factor": 0.1, "patience": 2}).lr
    for score in [1.0, 2.0, 3.0, 4.0, 3.0, 4.0, 5.0, 3.0, 2.0, 1.0]:
        p.step(score)
    copy = schedules.Plateau(0.05, mode="min", factor=0.1, patience=10)
    copy.load_state_dict(p.state_dict())
    assert copy.state_dict() == p.state_dict()
    assert copy(0) == p(0)


@pytest.mark.skip(reason="not expressible: adds a param group to the optimizer mid-run (torch #104361); "
                         "npadam's per-group schedules are a fixed tuple, one per group, built from the config")
@pytest.mark.parametrize("min_lr", ["scalar", "list"])
def test_add_param_group_does_not_break_reduce_lr_on_plateau(min_lr):
    """TestLRScheduler.test_add_param_group_does_not_break_reduce_lr_on_plateau."""


@pytest.mark.skip(reason="not expressible: torch raises RuntimeError when a group is added after a per-group "
                         "min_lr list was given; npadam has no add_param_group on a schedule")
def test_add_param_group_errors_reduce_lr_on_plateau():
    """TestLRScheduler.test_add_param_group_errors_reduce_lr_on_plateau."""


_COMPOUND_PLATEAU = [
    ("test_compound_reduce_lr_on_plateau1", 0.5, {"threshold_mode": "abs", "mode": "min", "threshold": 0.01,
                                                  "patience": 5, "cooldown": 5},
     {"scheduler": "StepLR", "gamma": 0.1, "step_size": 3}, "minus167", 10),
    ("test_compound_reduce_lr_on_plateau2", 0.5, {"patience": 5, "cooldown": 0, "threshold_mode": "abs",
                                                  "mode": "min", "threshold": 0.1},
     {"scheduler": "MultiStepLR", "gamma": 0.1, "milestones": [3, 8, 12]}, "minus165", 22),
    ("test_compound_reduce_lr_on_plateau3", 0.5, {"mode": "max", "patience": 5, "cooldown": 5,
                                                  "threshold_mode": "abs"},
     {"scheduler": "ExponentialLR", "gamma": 0.1}, "flat", 22),
    ("test_compound_reduce_lr_on_plateau4", 0.05, {"mode": "max", "patience": 3, "threshold_mode": "rel",
                                                   "threshold": 0.1},
     {"scheduler": "CosineAnnealingLR", "T_max": 10, "eta_min": 1e-10}, "up1025", 10),
    ("test_compound_reduce_lr_on_plateau5", 0.5, {"patience": 5, "cooldown": 0, "threshold_mode": "abs",
                                                  "mode": "min", "threshold": 0.1},
     {"scheduler": "LinearLR", "start_factor": 0.4, "total_iters": 4}, "minus165", 22),
]


@pytest.mark.parametrize("name,lr,plateau,other,metrics,epochs", _COMPOUND_PLATEAU,
                         ids=[c[0] for c in _COMPOUND_PLATEAU])
def test_torch_compound_reduce_lr_on_plateau(name, lr, plateau, other, metrics, epochs):
    """TestLRScheduler.test_compound_reduce_lr_on_plateau*: a ReduceLROnPlateau and another scheduler on one
    optimizer, stepped in that order each epoch. Upstream's ``targets = targets[1:]`` leaves no target, so
    the upstream test asserts nothing; this port compares npadam's ``Plateau`` wrapping the other schedule
    (its documented composition) with the real torch pair, rtol=1e-6."""
    import torch

    metrics = _plateau_metrics(metrics)[:epochs]
    s = schedules.from_config("torch", {"lr": lr, "scheduler": other["scheduler"],
                                        **{k: v for k, v in other.items() if k != "scheduler"}})
    p = schedules.Plateau(s.lr, **plateau)
    with drv.quiet():
        opt = drv.torch_adam_groups([lr])
        red = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **plateau)
        sched = drv.build_torch_scheduler(opt, {"lr": lr, **other})
        want, got = [], []
        for epoch in range(epochs):
            opt.step()
            red.step(metrics[epoch])
            sched.step()
            p.step(metrics[epoch])
            want.append(opt.param_groups[0]["lr"])
            got.append(p(epoch + 1))
    drv.assert_matches(name, np.array(got), np.array(want), rtol=TORCH_RTOL, peak=lr, context=(plateau, other))


def _restart_epoch_cases():
    # test_CosineAnnealingWarmRestarts_lr3: step(epoch) at these epochs gives T_cur / T_i (the first value:
    # the initial lr, T_cur = 0 at epoch 0)
    rows = [(1, [0, 1, 2, 3, 4, 5, 12, 27, 3, 4, 5, 6, 13], [0, 1, 2, 3, 4, 5, 2, 7, 3, 4, 5, 6, 3], [10] * 13),
            (2, [0, 1, 2, 3, 4, 5, 25, 32, 33, 34, 80, 81, 3], [0, 1, 2, 3, 4, 5, 15, 2, 3, 4, 10, 11, 3],
             [10] * 6 + [20, 40, 40, 40, 80, 80, 10])]
    out = [pytest.param(*r, id=f"T_mult={r[0]}") for r in rows]
    out.append(pytest.param(3, [0, 0.1, 0.2, 0.3, 1.3, 2.3, 17.5, 18.5, 19.5, 29.5, 30.5, 31.5, 50],
                            [0, 0.1, 0.2, 0.3, 1.3, 2.3, 7.5, 8.5, 9.5, 19.5, 20.5, 21.5, 10], [10] * 6 + [30] * 6 + [90],
                            id="T_mult=3", marks=missing("fractional epochs (step(17.5)): npadam's schedules are "
                                                         "functions of the integer update index")))
    return out


@pytest.mark.parametrize("T_mult,epochs,T_curs,T_is", _restart_epoch_cases())
def test_CosineAnnealingWarmRestarts_lr3(T_mult, epochs, T_curs, T_is):
    """TestLRScheduler.test_CosineAnnealingWarmRestarts_lr3: ``step(epoch)`` at out-of-order epochs gives the
    closed form at that epoch (atol=1e-5); npadam evaluates the schedule there."""
    sets = groups_of(schedules.from_config("torch", {"lr": TWO, "scheduler": "CosineAnnealingWarmRestarts",
                                                     "T_0": 10, "T_mult": T_mult, "eta_min": 1e-10}))
    for s, base in zip(sets, TWO):
        want = [_cos(1e-10, base, c, t) for c, t in zip(T_curs, T_is)]
        np.testing.assert_allclose(s.lr(np.asarray(epochs)), want, rtol=0, atol=UPSTREAM_ATOL)


@pytest.mark.xfail(strict=True, raises=ValueError,
                   reason="fractional epochs (step(0.1), step(0.2), ...): npadam's schedules are functions of the "
                          "integer update index, and a fractional step raises ValueError")
def test_CosineAnnealingWarmRestarts_lr2():
    """TestLRScheduler.test_CosineAnnealingWarmRestarts_lr2: ``step(epoch)`` at epochs 0, 0.1, ..., 29.9."""
    s = schedules.from_config("torch", {"lr": 0.05, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 10,
                                        "T_mult": 1, "eta_min": 1e-10})
    epochs = np.round(np.arange(0, 30, 0.1), 1)
    np.testing.assert_allclose(s.lr(epochs), [_cos(1e-10, 0.05, e % 10, 10) for e in epochs], atol=UPSTREAM_ATOL)


_SWALR = "npadam has no SWALR (torch.optim.swa_utils): from_config raises ValueError 'unknown torch scheduler'"


@pytest.mark.xfail(strict=True, raises=ValueError, reason=_SWALR)
@pytest.mark.parametrize("case", ["test_swalr_no_anneal", "test_swalr_cosine_anneal_after_multiplicative",
                                  "test_swalr_linear_anneal_after_multiplicative", "test_swalr_hypers",
                                  "test_swa_lr_state_dict"])
def test_swalr(case):
    """TestLRScheduler.test_swalr_*: SWALR(anneal_epochs=1, swa_lr=0.01) after swa_start=5 (the first case's
    targets: each group's lr for 6 epochs, then 0.01)."""
    s = groups_of(schedules.from_config("torch", {"lr": TWO, "scheduler": "SWALR", "anneal_epochs": 1,
                                                  "swa_lr": 0.01}))
    for g, lr in zip(s, TWO):
        np.testing.assert_allclose(g.lr(np.arange(10)), [lr] * 6 + [0.01] * 4, atol=UPSTREAM_ATOL)


def test_cosine_then_cyclic():
    """TestLRScheduler.test_cosine_then_cyclic (torch #21965): CosineAnnealingLR(T_max=20, eta_min=0.1) for
    21 steps, then a CyclicLR(base_lr=0.1, max_lr=0.3, step_size_up=1, step_size_down=3) built after it on
    the same optimizer (lr 0.5): the lr never exceeds max_lr. npadam expresses the hand-over as a
    SequentialLR (milestone 21); checked over 40 updates, and against the real SequentialLR."""
    cfg = {"lr": 0.5, "scheduler": "SequentialLR", "milestones": [21], "schedulers": [
        {"scheduler": "CosineAnnealingLR", "T_max": 20, "eta_min": 0.1},
        {"scheduler": "CyclicLR", "base_lr": 0.1, "max_lr": 0.3, "step_size_up": 1, "step_size_down": 3}]}
    s = schedules.from_config("torch", cfg)
    lrs = s.lr(np.arange(21, 41))
    assert np.all(lrs <= 0.3)
    real = drv.trace_torch(cfg, 41)
    drv.assert_matches("cosine then cyclic", s.lr(np.arange(41)), real["lr"], rtol=TORCH_RTOL, peak=0.5, context=cfg)


# test_lr_scheduler_state_dict_load / test_lr_scheduler_checkpoint: the classes they parametrize over
_STATE_CLASSES = [
    ("LambdaLR", {"scheduler": "LambdaLR", "lr_lambda": lambda e: e // 10}),
    ("MultiplicativeLR", {"scheduler": "MultiplicativeLR", "lr_lambda": lambda e: 0.95}),
    ("StepLR", {"scheduler": "StepLR", "step_size": 30}),
    ("MultiStepLR", {"scheduler": "MultiStepLR", "milestones": [30, 80]}),
    ("ConstantLR", {"scheduler": "ConstantLR"}),
    ("LinearLR", {"scheduler": "LinearLR"}),
    ("ExponentialLR", {"scheduler": "ExponentialLR", "gamma": 0.9}),
    ("PolynomialLR", {"scheduler": "PolynomialLR"}),
    ("CosineAnnealingLR", {"scheduler": "CosineAnnealingLR", "T_max": 10}),
    ("ChainedScheduler", {"scheduler": "ChainedScheduler", "schedulers": [{"scheduler": "ConstantLR"},
                                                                          {"scheduler": "ConstantLR"}]}),
    ("SequentialLR", {"scheduler": "SequentialLR", "milestones": [2], "schedulers": [{"scheduler": "ConstantLR"},
                                                                                     {"scheduler": "ConstantLR"}]}),
    ("ReduceLROnPlateau", {"scheduler": "ReduceLROnPlateau"}),
    ("CyclicLR", {"scheduler": "CyclicLR", "base_lr": 0.01, "max_lr": 0.1}),
    ("OneCycleLR", {"scheduler": "OneCycleLR", "max_lr": 0.01, "total_steps": 10, "anneal_strategy": "linear"}),
    ("CosineAnnealingWarmRestarts", {"scheduler": "CosineAnnealingWarmRestarts", "T_0": 20}),
    ("SWALR", {"scheduler": "SWALR", "swa_lr": 0.01}),
]
_NOT_SERIALISABLE = missing("on purpose: a Python callable (lr_lambda) is not serialisable; to_dict() raises "
                            "TypeError naming it (torch's state_dict stores None for a function)", TypeError)


def _state_params():
    out = []
    for name, cfg in _STATE_CLASSES:
        marks = (_NOT_SERIALISABLE,) if name in ("LambdaLR", "MultiplicativeLR") else \
            (missing(_SWALR),) if name == "SWALR" else ()
        out.append(pytest.param(cfg, id=name, marks=marks))
    return out


@pytest.mark.parametrize("cfg", _state_params())
def test_lr_scheduler_state_dict_load(cfg):
    """TestLRScheduler.test_lr_scheduler_state_dict_load: a scheduler's saved state loads back to the same
    state. npadam's schedules are their configuration: ``to_dict()`` / ``from_dict()`` round-trip to an
    equal ScheduleSet with the same values."""
    s = schedules.from_config("torch", {"lr": 0.05, **cfg})
    d = s.to_dict()
    back = schedules.ScheduleSet.from_dict(d)
    assert back.to_dict() == d
    n = 10 if cfg["scheduler"] == "OneCycleLR" else 200
    for (name, a), (_, b) in zip(s.items(), back.items()):
        np.testing.assert_array_equal(a(np.arange(n)), b(np.arange(n)), err_msg=name)


def _checkpoint_params():
    skip = ("ChainedScheduler", "SequentialLR", "ReduceLROnPlateau")  # not in that test's list
    return [pytest.param(cfg, id=name, marks=(missing(_SWALR),) if name == "SWALR" else ())
            for name, cfg in _STATE_CLASSES if name not in skip]


@pytest.mark.parametrize("cfg", _checkpoint_params())
def test_lr_scheduler_checkpoint(cfg):
    """TestLRScheduler.test_lr_scheduler_checkpoint: on an AdamW (lr 1e-3) stepped once, a scheduler built
    with ``last_epoch=0`` on a copy of the optimizer state has the optimizer's lr (upstream: assertEqual,
    default float tolerances rtol=1.3e-6, atol=1e-5). npadam: ``last_epoch=0`` is that resume, compared
    with the fresh run's lr after one step and with the real resumed torch object (rtol=1e-6)."""
    if cfg["scheduler"] == "OneCycleLR":  # upstream's ExponentialLR is gamma=0.999 here, OneCycleLR cos
        cfg = {k: v for k, v in cfg.items() if k != "anneal_strategy"}
    if cfg["scheduler"] == "ExponentialLR":
        cfg = {**cfg, "gamma": 0.999}
    if cfg["scheduler"] == "LambdaLR":
        cfg = {**cfg, "lr_lambda": lambda e: e // 30}
    full = {"lr": 1e-3, **cfg}
    fresh = schedules.from_config("torch", full).lr
    resumed = schedules.from_config("torch", {**full, "last_epoch": 0}).lr
    assert abs(resumed(0) - fresh(1)) <= 1e-5 + 1.3e-6 * abs(fresh(1))
    real = drv.trace_torch_groups({**full, "last_epoch": 0}, 1)[0]["lr"][0]
    drv.assert_matches("resumed", np.array([resumed(0)]), np.array([real]), rtol=TORCH_RTOL, peak=1e-3, context=full)


# =========================================================================== transformers

HF_TABLE = [  # ScheduleInitTest.test_schedulers: lr 10, num_steps 10, common warmup 2 / training 10
    ("get_constant_schedule", {"lr_scheduler_type": "constant"}, [10.0] * 10),
    ("get_constant_schedule_with_warmup", {"lr_scheduler_type": "constant_with_warmup", "num_warmup_steps": 4},
     [0.0, 2.5, 5.0, 7.5, 10.0, 10.0, 10.0, 10.0, 10.0, 10.0]),
    ("get_linear_schedule_with_warmup", {"lr_scheduler_type": "linear"},
     [0.0, 5.0, 10.0, 8.75, 7.5, 6.25, 5.0, 3.75, 2.5, 1.25]),
    ("get_cosine_schedule_with_warmup", {"lr_scheduler_type": "cosine"},
     [0.0, 5.0, 10.0, 9.61, 8.53, 6.91, 5.0, 3.08, 1.46, 0.38]),
    ("get_cosine_with_hard_restarts_schedule_with_warmup",
     {"lr_scheduler_type": "cosine_with_restarts", "lr_scheduler_kwargs": {"num_cycles": 2}},
     [0.0, 5.0, 10.0, 8.53, 5.0, 1.46, 10.0, 8.53, 5.0, 1.46]),
    ("get_polynomial_decay_schedule_with_warmup",
     {"lr_scheduler_type": "polynomial", "lr_scheduler_kwargs": {"power": 2.0, "lr_end": 1e-7}},
     [0.0, 5.0, 10.0, 7.656, 5.625, 3.906, 2.5, 1.406, 0.625, 0.156]),
    ("get_inverse_sqrt_schedule", {"lr_scheduler_type": "inverse_sqrt", "num_warmup_steps": 2},
     [0.0, 5.0, 10.0, 8.165, 7.071, 6.325, 5.774, 5.345, 5.0, 4.714]),
]


@pytest.mark.parametrize("name,cfg,expected", HF_TABLE, ids=[c[0] for c in HF_TABLE])
def test_schedulers(name, cfg, expected):
    """transformers ScheduleInitTest.test_schedulers, one row of its table: the lrs of 10 steps at
    delta=1e-2 ("normal scheduler"), equal after a save and reload (here: to_dict / from_dict), and the
    real ``transformers.get_scheduler`` object (1e-12 relative)."""
    drv.importorskip("transformers")
    full = {"learning_rate": 10.0, "num_warmup_steps": 2, "num_training_steps": 10, **cfg}
    s = schedules.from_config("hf", full)
    k = np.arange(10)
    lrs_1 = s.lr(k)
    np.testing.assert_allclose(lrs_1, expected, rtol=0, atol=1e-2, err_msg=name)
    lrs_2 = schedules.ScheduleSet.from_dict(s.to_dict()).lr(k)
    np.testing.assert_array_equal(lrs_1, lrs_2)
    drv.assert_matches(name, lrs_1, drv.trace_hf(full, 10)["lr"], rtol=1e-12, peak=10.0, context=full)


# =========================================================================== DeepSpeed

def ds(stype, params, lr=0.00015, **top):
    """npadam's schedules for the engine config ``{"optimizer": Adam(lr), "scheduler": {type, params}}``."""
    return schedules.from_config("deepspeed", {"lr": lr, "scheduler": {"type": stype, "params": params}, **top})


def _ds_real(stype, params, steps, lr=0.00015):
    return drv.trace_deepspeed({"lr": lr, "scheduler": {"type": stype, "params": params}}, steps)


_DS_BEFORE_TRAIN = [("WarmupLR", {}), ("WarmupDecayLR", {"warmup_num_steps": 10, "total_num_steps": 20}),
                    ("WarmupCosineLR", {"warmup_num_steps": 10, "total_num_steps": 20}),
                    ("OneCycle", {"cycle_min_lr": 0, "cycle_max_lr": 0.1}), ("LRRangeTest", {})]
_DS_PARITY = [("WarmupLR", {}), ("WarmupDecayLR", {"warmup_num_steps": 5, "total_num_steps": 10}),
              ("OneCycle", {"cycle_min_lr": 0, "cycle_max_lr": 0.1, "cycle_first_step_size": 5,
                            "decay_step_size": 5}),
              ("LRRangeTest", {"lr_range_test_min_lr": 1e-4, "lr_range_test_step_size": 1})]


@pytest.mark.parametrize("suite,stype,params", [("TestGetLrBeforeTrain", *c) for c in _DS_BEFORE_TRAIN]
                         + [("TestSchedulerOptimizerParity", *c) for c in _DS_PARITY],
                         ids=[f"TestGetLrBeforeTrain-{c[0]}" for c in _DS_BEFORE_TRAIN]
                         + [f"TestSchedulerOptimizerParity-{c[0]}" for c in _DS_PARITY])
def test_ds_scheduler_optimizer_parity(suite, stype, params):
    """DeepSpeed TestGetLrBeforeTrain / TestSchedulerOptimizerParity: the scheduler's ``get_lr()`` is the
    optimizer's lr before training and after every one of 25 steps (50 samples, batch 2). npadam's lr per
    update against the real scheduler stepped as the engine steps it (1e-12 relative, exact at 0)."""
    drv.importorskip("deepspeed")
    s = ds(stype, params)
    real = _ds_real(stype, params, 26)
    drv.assert_matches(f"{suite} {stype}", s.lr(np.arange(26)), real["lr"], rtol=1e-12, peak=0.1, context=params)


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
@pytest.mark.parametrize("warmup_num_steps", [10, 15, 19, 33])
def test_lr_warmup_schedule(warmup_num_steps, warmup_type):
    """DeepSpeed TestLrSchedule.test_lr_warmup_schedule: WarmupLR(0.1 -> 0.2); the lr recorded after step n
    is update n + 1's: the first is warmup_min_lr, the one at index W is warmup_max_lr, and all after it
    too (exact ==)."""
    W = warmup_num_steps
    s = ds("WarmupLR", {"warmup_min_lr": 0.1, "warmup_max_lr": 0.2, "warmup_num_steps": W, "warmup_type": warmup_type})
    step_lrs = s.lr(np.arange(1, 2 * W + 1))
    assert step_lrs[0] == 0.1
    assert step_lrs[W] == 0.2
    assert all(lr == 0.2 for lr in step_lrs[W:])


@pytest.mark.parametrize("warmup_type", ["log", "linear"])
@pytest.mark.parametrize("warmup_num_steps", [10, 15, 19, 33])
def test_lr_warmup_decay_schedule(warmup_num_steps, warmup_type):
    """DeepSpeed TestLrSchedule.test_lr_warmup_decay_schedule: WarmupDecayLR(0.1 -> 0.2, total 2W): first
    recorded lr warmup_min_lr, index W warmup_max_lr (exact), strictly decreasing after it."""
    W = warmup_num_steps
    s = ds("WarmupDecayLR", {"warmup_min_lr": 0.1, "warmup_max_lr": 0.2, "warmup_num_steps": W,
                             "total_num_steps": 2 * W, "warmup_type": warmup_type})
    step_lrs = s.lr(np.arange(1, 2 * W + 1))
    assert step_lrs[0] == 0.1
    assert step_lrs[W] == 0.2
    assert strictly_decreasing(step_lrs[W:])


@pytest.mark.parametrize("min_lr,step_rate,step_size,staircase", [
    (1e-4, 1e-5, 1, True), (1e-5, 1e-5, 1, False), (1e-4, 1e-3, 10, True), (1e-3, 1e-3, 10, False),
    (1e-2, 1e-2, 19, True), (1e-2, 1e-2, 19, False)])
def test_lr_range(min_lr, step_rate, step_size, staircase):
    """DeepSpeed TestLrRange: LRRangeTest, ``get_lr()`` before each of max(50, 2 step_size) / 2 steps: starts
    at min_lr (exact), then constant within each stair of step_size updates, or strictly increasing."""
    s = ds("LRRangeTest", {"lr_range_test_min_lr": min_lr, "lr_range_test_step_rate": step_rate,
                           "lr_range_test_step_size": step_size, "lr_range_test_staircase": staircase})
    step_lrs = s.lr(np.arange(max(50, step_size * 2) // 2))
    assert step_lrs[0] == min_lr
    if staircase:
        for i in range(0, len(step_lrs), step_size):
            assert np.all(step_lrs[i:i + step_size] == step_lrs[i])
    else:
        assert strictly_increasing(step_lrs)


@pytest.mark.parametrize("min_lr,max_lr,decay_rate,cycle_step_size,decay_step_size", [
    (1e-5, 1e-2, 1e-3, 10, 10), (1e-3, 1e-1, 0, 21, 21), (1e-5, 1e-2, 1e-3, 10, 10), (1e-3, 1e-1, 1e-1, 21, 21),
    (1e-5, 1e-1, 0, 10, 0)])
def test_one_cycle_lr(min_lr, max_lr, decay_rate, cycle_step_size, decay_step_size):
    """DeepSpeed TestOneCycle.test_lr: ``get_lr()`` before each step: min_lr first and max_lr at
    cycle_step_size (exact), increasing before, decreasing to 2 cycle_step_size, decreasing after with a
    decay rate."""
    c = cycle_step_size
    s = ds("OneCycle", {"cycle_min_lr": min_lr, "cycle_max_lr": max_lr, "decay_lr_rate": decay_rate,
                        "cycle_first_step_size": c, "decay_step_size": decay_step_size})
    step_lrs = s.lr(np.arange(max(50, c * 3) // 2))
    assert step_lrs[0] == min_lr
    assert step_lrs[c] == max_lr
    assert strictly_increasing(step_lrs[:c])
    assert strictly_decreasing(step_lrs[c:2 * c])
    if decay_rate > 0:
        assert strictly_decreasing(step_lrs[2 * c:])


@pytest.mark.parametrize("min_mom,max_mom,decay_rate,step_size", [
    (0.08, 0.09, 1e-3, 10), (0.08, 0.09, 0, 21), (0.08, 0.09, 1e-3, 10), (0.08, 0.09, 0, 21)])
def test_one_cycle_mom(min_mom, max_mom, decay_rate, step_size):
    """DeepSpeed TestOneCycle.test_mom: ``get_mom()`` before each step: max_mom first, min_mom at step_size,
    decreasing before, increasing to 2 step_size, increasing after with a decay rate.

    ``get_mom()`` before the first step is the formula's value, max_mom; the optimizer's beta1 for that
    first update is cycle_min_mom (the constructor writes it; npadam's beta1(0), checked against the real
    object). Upstream's other assertions hold for the optimizer's beta1 from update 1 on; update 0's is
    checked as the group holds it."""
    drv.importorskip("deepspeed")
    params = {"cycle_min_lr": 1e-3, "cycle_max_lr": 1e-2, "cycle_min_mom": min_mom, "cycle_max_mom": max_mom,
              "decay_mom_rate": decay_rate, "cycle_first_step_size": step_size, "decay_step_size": step_size}
    s = ds("OneCycle", params)
    n = max(50, step_size * 3) // 2
    moms = s.beta1(np.arange(n))
    real = _ds_real("OneCycle", params, n)
    drv.assert_matches("OneCycle beta1", moms, real["beta1"], rtol=1e-12, peak=1.0, context=params)
    assert moms[0] == min_mom  # the group's value at update 0 (get_mom() says max_mom there)
    assert moms[step_size] == min_mom
    assert strictly_decreasing(moms[1:step_size])
    assert abs(moms[1] - (max_mom - (max_mom - min_mom) / step_size)) < 1e-12  # get_mom() after step 0
    assert strictly_increasing(moms[step_size:2 * step_size])
    if decay_rate > 0:
        assert strictly_increasing(moms[2 * step_size:])


@pytest.mark.parametrize("total_num_steps,warmup_num_steps,cos_min_ratio,warmup_min_ratio", [
    (100, 10, 0.1, 0.2), (200, 20, 0.1, 0.2), (500, 30, 0.0, 0.2), (600, 300, 0.1, 0.0), (600, 550, 0.0, 0.0)])
def test_warmup_cosine_lr(total_num_steps, warmup_num_steps, cos_min_ratio, warmup_min_ratio):
    """DeepSpeed TestWarmupCosineLR.test_lr: ``get_lr()`` after each step (update n + 1's lr): starts at
    lr * warmup_min_ratio, lr at index W - 1, lr * cos_min_ratio at index T - 1 (all within 1e-7),
    increasing over the warmup, decreasing to T."""
    opt_lr, T, W = 0.0015, total_num_steps, warmup_num_steps
    s = ds("WarmupCosineLR", {"total_num_steps": T, "warmup_min_ratio": warmup_min_ratio, "warmup_num_steps": W,
                              "cos_min_ratio": cos_min_ratio}, lr=opt_lr)
    step_lrs = s.lr(np.arange(1, max(50, T * 3) // 2 + 1))
    assert abs(step_lrs[0] - opt_lr * warmup_min_ratio) < 1e-7
    assert abs(step_lrs[W - 1] - opt_lr) < 1e-7
    assert abs(step_lrs[T - 1] - opt_lr * cos_min_ratio) < 1e-7
    assert strictly_increasing(step_lrs[:W])
    assert strictly_decreasing(step_lrs[W:T])


def test_warmup_cosine_lr_initializes_all_param_groups():
    """DeepSpeed test_warmup_cosine_lr_initializes_all_param_groups: groups at 0.0015 and 0.003 start at 0;
    after ``step(1)`` (update 2's lr) each is its lr * log(2) / log(10)."""
    gs = schedules.from_config("deepspeed", {"lr": [0.0015, 0.003], "scheduler": {"type": "WarmupCosineLR", "params": {
        "total_num_steps": 100, "warmup_num_steps": 10, "warmup_min_ratio": 0.0}}})
    assert [g.lr(0) for g in gs] == [0.0, 0.0]
    ratio = math.log(2) / math.log(10)
    assert [g.lr(2) for g in gs] == pytest.approx([0.0015 * ratio, 0.003 * ratio])


def test_warmup_lr_inherits_per_group_lr_when_max_unspecified():
    """DeepSpeed test_warmup_lr_inherits_per_group_lr_when_max_unspecified: WarmupLR(warmup 10) on groups at
    0.1 and 0.2 without warmup_max_lr: after ``step(10)`` each group is at its own lr."""
    gs = schedules.from_config("deepspeed", {"lr": [0.1, 0.2], "scheduler": {"type": "WarmupLR", "params": {
        "warmup_num_steps": 10}}})
    assert [g.lr(11) for g in gs] == pytest.approx([0.1, 0.2])


TENSOR_LR_CONTRACTS = [  # (class, kwargs, lr at construction, lr after step(1)) on an SGD at lr 0.1
    ("LRRangeTest", {}, 1e-3, 1e-3 * (1 + 2 / 2000)),
    ("OneCycle", {"cycle_min_lr": 0.01, "cycle_max_lr": 0.1, "cycle_first_step_size": 10,
                  "cycle_second_step_size": 10, "cycle_momentum": False}, 0.01, 0.01 + (0.1 - 0.01) * 2 / 10),
    ("WarmupLR", {"warmup_num_steps": 10}, 0.0, 0.1 * math.log(2) / math.log(10)),
    ("WarmupDecayLR", {"total_num_steps": 100, "warmup_num_steps": 10, "warmup_max_lr": 0.1}, 0.0,
     0.1 * math.log(2) / math.log(10)),
    ("WarmupCosineLR", {"total_num_steps": 100, "warmup_num_steps": 10}, 0.0, 0.1 * math.log(2) / math.log(10)),
]


@pytest.mark.parametrize("stype,params,init_lr,step_lr", TENSOR_LR_CONTRACTS, ids=[c[0] for c in TENSOR_LR_CONTRACTS])
def test_lr_scheduler_preserves_tensor_lr(stype, params, init_lr, step_lr):
    """DeepSpeed test_lr_scheduler_preserves_tensor_lr, its lr values (pytest.approx): the lr at
    construction (update 0) and after ``step(1)`` (update 2). The tensor identity it also checks is a torch
    matter."""
    s = ds(stype, params, lr=0.1)
    assert s.lr(0) == pytest.approx(init_lr)
    assert s.lr(2) == pytest.approx(step_lr)


def test_warmup_cosine_lr_total_num_steps_equals_warmup_num_steps():
    """DeepSpeed test_warmup_cosine_lr_total_num_steps_equals_warmup_num_steps: total == warmup == 10 does not
    divide by zero, and every step from 10 to 14 stays at cos_min_ratio."""
    s = ds("WarmupCosineLR", {"total_num_steps": 10, "warmup_num_steps": 10, "cos_min_ratio": 0.1}, lr=0.01)
    assert list(s.lr(np.arange(11, 16)) / 0.01) == pytest.approx([0.1] * 5)


@pytest.mark.parametrize("stype", ["WarmupLR", "WarmupDecayLR", "WarmupCosineLR"])
@pytest.mark.parametrize("bad", [None, -5])
def test_warmup_schedulers_reject_invalid_warmup_num_steps(stype, bad):
    """DeepSpeed test_warmup_schedulers_reject_invalid_warmup_num_steps: ValueError."""
    params = {"warmup_num_steps": bad, **({} if stype == "WarmupLR" else {"total_num_steps": 100})}
    with pytest.raises(ValueError):
        ds(stype, params, lr=0.001)


def test_warmup_cosine_lr_unknown_warmup_type_falls_back_to_log():
    """DeepSpeed test_warmup_cosine_lr_unknown_warmup_type_falls_back_to_log: an unknown warmup_type gives the
    log warmup's ratios for steps 0..14 (with DeepSpeed's warning)."""
    base = {"total_num_steps": 100, "warmup_num_steps": 10}
    with pytest.warns(UserWarning):
        odd = ds("WarmupCosineLR", {**base, "warmup_type": "not_a_warmup_type"}, lr=0.001)
    ref = ds("WarmupCosineLR", {**base, "warmup_type": "log"}, lr=0.001)
    k = np.arange(1, 16)
    assert list(odd.lr(k)) == pytest.approx(list(ref.lr(k)))


def test_warmup_cosine_lr_linear_warmup_type_produces_linear_ratios():
    """DeepSpeed test_warmup_cosine_lr_linear_warmup_type_produces_linear_ratios: ratio step / 10 at
    ``step(step)`` (update step + 1) for steps 0..9."""
    s = ds("WarmupCosineLR", {"total_num_steps": 100, "warmup_num_steps": 10, "warmup_min_ratio": 0.0,
                              "warmup_type": "linear"}, lr=0.001)
    assert list(s.lr(np.arange(1, 11)) / 0.001) == pytest.approx([step / 10 for step in range(10)])


def _one_cycle_lrs(first_stair_count, steps=16, first_step_size=8, second_step_size=8, second_stair_count=None):
    """Upstream's helper: OneCycle(0.001 -> 0.01) on an Adam at 0.001, ``step()`` then ``get_lr()``: the lrs of
    updates 1..steps."""
    params = {"cycle_min_lr": 0.001, "cycle_max_lr": 0.01, "cycle_first_step_size": first_step_size,
              "cycle_second_step_size": second_step_size, "cycle_first_stair_count": first_stair_count,
              "cycle_second_stair_count": second_stair_count}
    return list(ds("OneCycle", params, lr=0.001, betas=[0.9, 0.99]).lr(np.arange(1, steps + 1)))


def test_one_cycle_stair_count_holds_lr_flat():
    """DeepSpeed test_one_cycle_stair_count_holds_lr_flat."""
    continuous = _one_cycle_lrs(0)
    assert len(set(continuous[:8])) == 8
    stairs = _one_cycle_lrs(2)
    assert stairs != continuous
    assert len(set(stairs[:8])) < len(set(continuous[:8]))
    assert stairs[0] == stairs[1]
    assert _one_cycle_lrs(8) == continuous


def test_one_cycle_stair_count_handles_asymmetric_cycle():
    """DeepSpeed test_one_cycle_stair_count_handles_asymmetric_cycle."""
    kw = dict(steps=31, first_step_size=10, second_step_size=21)
    continuous = _one_cycle_lrs(0, second_stair_count=0, **kw)
    batch_aligned = _one_cycle_lrs(10, second_stair_count=21, **kw)
    assert batch_aligned == pytest.approx(continuous)
    assert batch_aligned[9] == pytest.approx(0.01)
    first_only = _one_cycle_lrs(2, second_stair_count=0, **kw)
    second_only = _one_cycle_lrs(0, second_stair_count=3, **kw)
    assert first_only[:10] != continuous[:10]
    assert first_only[10:] == continuous[10:]
    assert second_only[:10] == continuous[:10]
    assert second_only[10:30] != continuous[10:30]


@pytest.mark.parametrize("bad_step_size", [0, -5])
def test_lr_range_test_rejects_nonpositive_step_size(bad_step_size):
    """DeepSpeed test_lr_range_test_rejects_nonpositive_step_size: ValueError."""
    with pytest.raises(ValueError):
        ds("LRRangeTest", {"lr_range_test_step_size": bad_step_size}, lr=0.1)


@pytest.mark.parametrize("first,second", [(0, 0), (0, None), (-1, None), (0, 100), (100, -1)])
def test_one_cycle_rejects_nonpositive_step_sizes(first, second):
    """DeepSpeed test_one_cycle_rejects_nonpositive_step_sizes: ValueError."""
    with pytest.raises(ValueError):
        ds("OneCycle", {"cycle_min_lr": 0.001, "cycle_max_lr": 0.1, "cycle_first_step_size": first,
                        "cycle_second_step_size": second}, lr=0.1)


def test_one_cycle_allows_zero_second_step_size():
    """DeepSpeed test_one_cycle_allows_zero_second_step_size: lr 0.001 at the start, above it after 3 steps."""
    s = ds("OneCycle", {"cycle_min_lr": 0.001, "cycle_max_lr": 0.1, "cycle_first_step_size": 100,
                        "cycle_second_step_size": 0}, lr=0.1)
    assert s.lr(0) == pytest.approx(0.001)
    assert s.lr(3) > 0.001


def test_one_cycle_accepts_per_group_lr_and_momentum_lists():
    """DeepSpeed test_one_cycle_accepts_per_group_lr_and_momentum_lists: groups at 0.1 / 0.2, betas (0.9, 0.99):
    start at each group's cycle_min_lr / cycle_min_mom, ``step(4)`` (update 5) at cycle_max_lr with
    cycle_min_mom, ``step(9)`` (update 10) back at cycle_min_lr with cycle_max_mom."""
    gs = schedules.from_config("deepspeed", {"lr": [0.1, 0.2], "betas": [0.9, 0.99], "scheduler": {
        "type": "OneCycle", "params": {"cycle_min_lr": [0.001, 0.002], "cycle_max_lr": [0.01, 0.02],
                                       "cycle_min_mom": [0.8, 0.85], "cycle_max_mom": [0.9, 0.95],
                                       "cycle_first_step_size": 5, "cycle_second_step_size": 5}}})
    assert [g.lr(0) for g in gs] == pytest.approx([0.001, 0.002])
    assert [g.beta1(0) for g in gs] == pytest.approx([0.8, 0.85])
    assert [g.lr(5) for g in gs] == pytest.approx([0.01, 0.02])
    assert [g.beta1(5) for g in gs] == pytest.approx([0.8, 0.85])
    assert [g.lr(10) for g in gs] == pytest.approx([0.001, 0.002])
    assert [g.beta1(10) for g in gs] == pytest.approx([0.9, 0.95])


@pytest.mark.parametrize("kwargs", [{"cycle_min_lr": [0.001, 0.002, 0.003]}, {"cycle_max_lr": [0.01, 0.02, 0.03]},
                                    {"cycle_min_mom": [0.8, 0.85, 0.9]}, {"cycle_max_mom": [0.9, 0.95, 0.99]}])
def test_one_cycle_rejects_wrong_length_per_group_lists(kwargs):
    """DeepSpeed test_one_cycle_rejects_wrong_length_per_group_lists: a list that is not one per group (of 2)."""
    with pytest.raises(ValueError):
        schedules.from_config("deepspeed", {"lr": [0.1, 0.2], "num_param_groups": 2, "betas": [0.9, 0.99],
                                            "scheduler": {"type": "OneCycle", "params": {
                                                "cycle_min_lr": 0.001, "cycle_max_lr": 0.01,
                                                "cycle_first_step_size": 5, **kwargs}}})


# =========================================================================== Megatron

MEGATRON_BASE = {"lr": 0.1, "min_lr": 0.001, "lr_warmup_init": 0.01, "lr_warmup_iters": 100, "lr_decay_iters": 1000,
                 "train_iters": 1000, "global_batch_size": 1, "lr_decay_style": "linear", "start_weight_decay": 0.0,
                 "end_weight_decay": 0.1, "weight_decay_incr_style": "linear"}


def megatron(**over):
    """npadam's schedules for OptimizerParamScheduler(init_lr=0.01, max_lr=0.1, min_lr=0.001, warmup 100,
    decay 1000, wd 0 -> 0.1 over 1000): Megatron-LM arguments with one sample per iteration."""
    return schedules.from_config("megatron", {**MEGATRON_BASE, **over})


@pytest.mark.parametrize("style,start,want,rel", [("constant", 0.1, 0.1, 0.0), ("linear", 0.0, 0.05, 0.0),
                                                  ("cosine", 0.0, 0.05 * (math.cos(math.pi * (1 - 0.5)) + 1.0), 1e-5)],
                         ids=["test_get_wd_constant", "test_get_wd_linear", "test_get_wd_cosine"])
def test_get_wd(style, start, want, rel):
    """Megatron test_get_wd_{constant,linear,cosine}: after ``step(500)`` the weight decay is 0.1 / 0.05 (==)
    or the cosine increment's value (rel_tol 1e-5)."""
    s = megatron(start_weight_decay=start, weight_decay_incr_style=style,
                 lr_decay_style="cosine" if style == "cosine" else "linear")
    wd = s.weight_decay(500)
    assert (wd == want) if rel == 0 else math.isclose(wd, want, rel_tol=rel)


def test_get_lr_linear():
    """Megatron test_get_lr_linear: steps of 50, 450 and 501 samples: warmup, linear decay, min_lr (rel 1e-5)."""
    s = megatron()
    assert math.isclose(s.lr(50), 0.01 + (0.1 - 0.01) * (50 / 100), rel_tol=1e-5)
    assert math.isclose(s.lr(500), 0.1 - ((0.1 - 0.001) * ((500 - 100) / (1000 - 100))), rel_tol=1e-5)
    assert math.isclose(s.lr(1001), 0.001, rel_tol=1e-5)


def test_get_lr_cosine():
    """Megatron test_get_lr_cosine: after ``step(500)`` the cosine decay's value (rel 1e-5)."""
    s = megatron(lr_decay_style="cosine")
    want = 0.001 + (0.1 - 0.001) * 0.5 * (math.cos(math.pi * ((500 - 100) / (1000 - 100))) + 1.0)
    assert math.isclose(s.lr(500), want, rel_tol=1e-5)


def test_step_function():
    """Megatron test_step_function: after ``step(100)`` the group holds lr 0.1 and weight decay 0.01 (rel 1e-5)."""
    s = megatron()
    assert math.isclose(s.lr(100), 0.01 + (0.1 - 0.01) * (100 / 100), rel_tol=1e-5)
    assert math.isclose(s.weight_decay(100), 0.01, rel_tol=1e-5)


def test_step_updates_empty_param_groups():
    """Megatron test_step_updates_empty_param_groups: a group with max_lr 0.2 (min_lr 0.001) and a group with
    wd_mult 0 (empty on this rank): at step 100 their lrs are 0.2 and 0.1, their weight decays 0.01 and 0.0
    (pytest.approx). The canonical-lr logging helper it also checks is not a schedule."""
    gs = megatron(param_groups=[{"max_lr": 0.2, "min_lr": 0.001}, {"wd_mult": 0.0}])
    assert [g.lr(100) for g in gs] == pytest.approx([0.2, 0.1])
    assert [g.weight_decay(100) for g in gs] == pytest.approx([0.01, 0.0])
