"""DeepSpeed's ``"scheduler"`` config, exactly as ``DeepSpeedEngine`` builds and steps it.

The engine (``_scheduler_from_config``) takes the class named by ``"type"`` from
``deepspeed.runtime.lr_schedules`` or, when that module has no such name, from
``torch.optim.lr_scheduler``, and calls ``cls(optimizer, **params)``; after each
successful optimizer step it calls ``lr_scheduler.step()``. Hence:

- DeepSpeed's own types (closed forms in ``_deepspeed_schedules``): update ``k = 0``
  uses the constructor's value, update ``k >= 1`` uses ``f(k - 1)`` (``f(i)`` is
  ``get_lr()`` at ``last_batch_iteration = i``). With ``last_batch_iteration = L >= 0``
  the constructor leaves the optimizer's lr (and betas) alone and update ``k >= 1``
  uses ``f(L + k)`` (``DeepSpeedResumed``).
- torch types: torch's constructor makes the initial step and the engine's ``step()``
  after each update is torch's training-loop step, so update ``k`` uses torch's
  ``last_epoch = k``: exactly ``from_torch({"lr": lr, "scheduler": type, **params})``.
  The engine hands the scheduler its own optimizer, which with ZeRO, fp16 or bf16 is a
  wrapper that torch refuses (TypeError): such a whole config is rejected here.
- Per-param-group values: DeepSpeed takes a list (or tuple) with one value per param
  group for ``warmup_min_lr``, ``warmup_max_lr``, ``cycle_min_lr``, ``cycle_max_lr``,
  ``cycle_min_mom``, ``cycle_max_mom`` and ``lr_range_test_min_lr``, and raises
  when a list's length differs from the optimizer's number of groups. npadam takes
  the number of groups from ``"num_param_groups"`` when given, else from the lists
  (a list ``"lr"`` included: each group's lr), which must then all have one length; the
  result is then a ``GroupSchedules``.
"""

from __future__ import annotations

import numbers
from typing import Any, Mapping, Sequence

from ... import _validate as V
from .._base import Schedule
from .._blocks import Constant, LRRangeTest
from ._common import GroupSchedules, ScheduleSet, check_keys, require
from ._deepspeed_schedules import (MAX_LAST_BATCH_ITERATION, DeepSpeedOneCycle, DeepSpeedResumed,
                                   DeepSpeedWarmupCosineLR, DeepSpeedWarmupLR)
from .torch import from_torch

_TYPES = ("WarmupLR", "WarmupDecayLR", "WarmupCosineLR", "OneCycle", "LRRangeTest")
_PARAMS = {
    "WarmupLR": ("warmup_min_lr", "warmup_max_lr", "warmup_num_steps", "warmup_type", "last_batch_iteration"),
    "WarmupCosineLR": ("total_num_steps", "warmup_min_ratio", "warmup_num_steps", "cos_min_ratio",
                       "warmup_type", "last_batch_iteration"),
    "OneCycle": ("cycle_min_lr", "cycle_max_lr", "decay_lr_rate", "cycle_first_step_size",
                 "cycle_second_step_size", "cycle_first_stair_count", "cycle_second_stair_count",
                 "decay_step_size", "cycle_momentum", "cycle_min_mom", "cycle_max_mom", "decay_mom_rate",
                 "last_batch_iteration"),
    "LRRangeTest": ("lr_range_test_min_lr", "lr_range_test_step_size", "lr_range_test_step_rate",
                    "lr_range_test_staircase", "last_batch_iteration"),
}
_PARAMS["WarmupDecayLR"] = _PARAMS["WarmupLR"] + ("total_num_steps",)

#: params DeepSpeed accepts as one value per param group (``_format_param`` and LRRangeTest's own check)
PER_GROUP = {
    "WarmupLR": ("warmup_min_lr", "warmup_max_lr"),
    "WarmupDecayLR": ("warmup_min_lr", "warmup_max_lr"),
    "WarmupCosineLR": (),
    "OneCycle": ("cycle_min_lr", "cycle_max_lr", "cycle_min_mom", "cycle_max_mom"),
    "LRRangeTest": ("lr_range_test_min_lr",),
}

#: ``torch.optim.lr_scheduler.__all__`` (torch 2.13): the names the engine's fallback finds
TORCH_TYPES = ("LambdaLR", "MultiplicativeLR", "StepLR", "MultiStepLR", "ConstantLR", "LinearLR", "ExponentialLR",
               "SequentialLR", "CosineAnnealingLR", "ChainedScheduler", "ReduceLROnPlateau", "CyclicLR",
               "CosineAnnealingWarmRestarts", "OneCycleLR", "PolynomialLR", "LRScheduler")
_OBJECTS = ("its 'schedulers' must be scheduler objects already built on the engine's optimizer, which a "
            "DeepSpeed config cannot give (the engine passes 'params' as keyword arguments; torch raises "
            "TypeError on anything else)")
_TORCH_UNUSABLE = {
    "SequentialLR": _OBJECTS,
    "ChainedScheduler": _OBJECTS,
    "ReduceLROnPlateau": ("it steps on a metric: the engine calls step(), which raises TypeError without "
                          "one, and then step(train_batch_size), so the 'metric' would be the batch size; "
                          "use schedules.Plateau and step it with your validation loss"),
    "LRScheduler": "it is torch's abstract base class (its get_lr raises NotImplementedError)",
}


def _optimizer_value(config: Mapping[str, Any], key: str) -> Any:
    """``config[key]``, else the whole DeepSpeed config's ``optimizer.params[key]``, else None."""
    if config.get(key) is not None:
        return config[key]
    opt = config.get("optimizer")
    if isinstance(opt, Mapping) and isinstance(opt.get("params"), Mapping):
        return opt["params"].get(key)
    return None


def _is_list(value: Any) -> bool:
    return isinstance(value, (list, tuple))


def _betas(value: Any) -> list[tuple[float, float]] | tuple[float, float] | None:
    """``(b1, b2)``, or one pair per group (``[[b1, b2], ...]``), validated."""
    if value is None:
        return None

    def pair(v: Any, name: str) -> tuple[float, float]:
        if not _is_list(v) or len(v) != 2:
            raise ValueError(f"{name} must be a pair (beta1, beta2), got {v!r}")
        return (V.real(f"{name}[0]", v[0]), V.real(f"{name}[1]", v[1]))

    if _is_list(value) and value and all(_is_list(v) for v in value):
        return [pair(v, f"betas[{i}]") for i, v in enumerate(value)]
    return pair(value, "betas")


def _group_count(config: Mapping[str, Any], sources: Sequence[tuple[str, Any]]) -> int | None:
    """The number of param groups: ``num_param_groups``, else the length of the per-group lists
    in ``sources`` (``(name, value)``), which must agree; None when neither gives one."""
    n, origin = None, None
    if config.get("num_param_groups") is not None:
        n, origin = V.integer("num_param_groups", config["num_param_groups"], lo=1), "num_param_groups"
    for name, value in sources:
        if not _is_list(value):
            continue
        if len(value) == 0:
            raise ValueError(f"{name} is an empty list: a per-group list needs one value per param group")
        if n is None:
            n, origin = len(value), name
        elif len(value) != n:
            if origin == "num_param_groups":
                why = ("one per param group" if name in ("lr", "betas") else
                       f"DeepSpeed raises the same for an optimizer with {n} param groups")
                raise ValueError(f"expected {n} values for {name} (num_param_groups={n}), got {len(value)}: "
                                 f"{value!r} ({why})")
            raise ValueError(f"{name} has {len(value)} values but {origin} has {n}: DeepSpeed checks every "
                             "per-group list against the optimizer's number of param groups, so lists of "
                             "different lengths fail for any optimizer")
    return n


def _pick(value: Any, i: int) -> Any:
    return value[i] if _is_list(value) else value


def _fit(result: ScheduleSet | GroupSchedules, n: int | None, what: str) -> ScheduleSet | GroupSchedules:
    """``result`` for ``n`` param groups (None: as it is)."""
    if n is None:
        return result
    if isinstance(result, GroupSchedules):
        if len(result) != n:
            raise ValueError(f"num_param_groups is {n} but {what} gives {len(result)} per-group schedules")
        return result
    return GroupSchedules([result] * n)


def _wrapped_optimizer(config: Mapping[str, Any]) -> str | None:
    """The optimizer wrapper a whole DeepSpeed config puts between the engine and the torch
    optimizer (ZeRO, fp16, bf16), or None when the engine's optimizer is the torch one."""
    zero = config.get("zero_optimization")
    if isinstance(zero, bool):  # DeepSpeed's deprecated form: true means stage 1
        stage: Any = int(zero)
    else:
        stage = zero.get("stage", 0) if isinstance(zero, Mapping) else 0
    if isinstance(stage, numbers.Integral) and stage > 0:
        return f"ZeRO stage {stage} (DeepSpeedZeroOptimizer)"
    fp16 = config.get("fp16")
    if isinstance(fp16, Mapping) and fp16.get("enabled") is True:
        return "fp16 (FP16_Optimizer)"
    bf16 = config.get("bf16") if config.get("bf16") is not None else config.get("bfloat16")
    if isinstance(bf16, Mapping) and bf16.get("enabled") is True:
        return "bf16 (BF16_Optimizer)"
    return None


def _from_torch_type(config: Mapping[str, Any], stype: str, params: dict[str, Any],
                     lr: Any) -> ScheduleSet | GroupSchedules:
    """The engine's fallback: ``torch.optim.lr_scheduler.<stype>(optimizer, **params)``."""
    where = f"DeepSpeed scheduler type {stype!r} (torch.optim.lr_scheduler.{stype}, DeepSpeed's fallback)"
    if stype in _TORCH_UNUSABLE:
        raise ValueError(f"{where} cannot run from a DeepSpeed config: {_TORCH_UNUSABLE[stype]}")
    if "last_batch_iteration" in params:
        raise ValueError(f"{where}: torch schedulers take last_epoch, not last_batch_iteration "
                         "(torch raises TypeError on the unknown keyword)")
    if "scheduler" in config:
        wrapper = _wrapped_optimizer(config)
        if wrapper is not None:
            raise ValueError(f"{where}: with {wrapper} the engine hands the scheduler its wrapper, which is not a "
                             "torch.optim.Optimizer, and torch raises TypeError; DeepSpeed's own types unwrap it")
    if lr is None:
        raise ValueError(f"{where} schedules the optimizer's 'lr', which the config does not give")
    try:
        result = from_torch({"lr": lr, "scheduler": stype, **params})
    except (ValueError, TypeError) as exc:
        raise type(exc)(f"{where}: {exc}") from None
    return _fit(result, _group_count(config, [("lr", lr)]), where)


_LR_FROM = "(top-level 'lr', or optimizer.params.lr)"
_BETAS_FROM = "(top-level 'betas', or optimizer.params.betas)"


def _resumed(schedule: Schedule, last: int, start: Any, what: str, stype: str, where: str) -> Schedule:
    """``schedule`` as DeepSpeed runs it from ``last_batch_iteration = last`` (``start``: the optimizer's
    value, which the first update keeps when ``last >= 0``)."""
    if last == -1:
        return schedule
    if start is None:
        raise ValueError(f"DeepSpeed {stype} with last_batch_iteration={last} leaves the optimizer's {what} in "
                         f"place for the first update (its constructor sets it only when last_batch_iteration "
                         f"is -1): give the optimizer's {what!r} {where}")
    return DeepSpeedResumed(schedule, last, start)


def _deepspeed_group(stype: str, p: dict[str, Any], lr: Any, betas: tuple[float, float] | None,
                     last: int) -> ScheduleSet:
    """One param group's schedules for DeepSpeed's own ``stype``: ``p`` holds that group's
    params (no lists), ``lr``/``betas`` the group's optimizer values (None: not given)."""
    name = f"DeepSpeed {stype}"
    if stype in ("WarmupLR", "WarmupDecayLR"):
        if stype == "WarmupDecayLR":
            require(name, p, "total_num_steps")
        if p.get("warmup_max_lr", 0.001 if stype == "WarmupDecayLR" else None) is None:
            # WarmupLR's default, or an explicit null in either class: each group's own lr
            if lr is None:
                raise ValueError(f"{name} without warmup_max_lr takes the optimizer 'lr', which the config "
                                 "does not give")
            p["warmup_max_lr"] = lr
        sched: Schedule = DeepSpeedWarmupLR(**p)
    elif stype == "WarmupCosineLR":
        require(name, p, "total_num_steps")
        if lr is None:
            raise ValueError(f"{name} scales the optimizer 'lr', which the config does not give")
        sched = DeepSpeedWarmupCosineLR(base_lr=lr, **p)
    elif stype == "OneCycle":
        require(name, p, "cycle_min_lr", "cycle_max_lr")
        momentum = bool(p.pop("cycle_momentum", True))  # DeepSpeed tests its truth value
        sched = DeepSpeedOneCycle(**p)
        if momentum:
            b1, b2 = (None, None) if betas is None else betas
            return ScheduleSet(
                lr=_resumed(sched, last, lr, "lr", stype, _LR_FROM),
                beta1=_resumed(DeepSpeedOneCycle(**p, quantity="momentum"), last, b1, "betas", stype, _BETAS_FROM),
                beta2=_resumed(Constant(0.99), last, b2, "betas", stype, _BETAS_FROM))
    else:
        size = p.get("lr_range_test_step_size", 2000)
        if isinstance(size, bool) or not isinstance(size, int) or size <= 0:
            raise ValueError(f"lr_range_test_step_size must be a positive integer, got {size!r}")
        sched = LRRangeTest(init=p.get("lr_range_test_min_lr", 1e-3), step_size=size,
                            rate=p.get("lr_range_test_step_rate", 1.0),
                            staircase=p.get("lr_range_test_staircase", False))
    return ScheduleSet(lr=_resumed(sched, last, lr, "lr", stype, _LR_FROM))


def from_deepspeed(config: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """Build a DeepSpeed scheduler from ``{"type", "params"}`` plus the optimizer's ``"lr"``.

    ``config`` is the scheduler block itself (``{"type":…, "params":…, "lr":…}``) or a whole
    DeepSpeed config with ``"scheduler"`` and ``"optimizer"`` blocks. Beside DeepSpeed's own
    keys npadam reads, at the top level:

    - ``"lr"``: the optimizer's lr (default: ``optimizer.params.lr``); a list gives one per
      param group (what DeepSpeed reads from ``param_groups[i]["lr"]``);
    - ``"betas"``: the optimizer's ``(beta1, beta2)`` (default ``optimizer.params.betas``), or
      one pair per group; read only for OneCycle with ``last_batch_iteration >= 0`` (its
      first update keeps the optimizer's betas);
    - ``"num_param_groups"``: the optimizer's number of param groups. Per-group lists must
      have this length (DeepSpeed's check); without it they must all have one length, which
      is then the number of groups. With either, the result is a ``GroupSchedules``.

    ``"type"`` is one of DeepSpeed's ``WarmupLR``, ``WarmupDecayLR``, ``WarmupCosineLR``,
    ``OneCycle``, ``LRRangeTest`` or, as the engine falls back to it, a
    ``torch.optim.lr_scheduler`` class name with ``"params"`` its keyword arguments.
    """
    block = config["scheduler"] if "scheduler" in config else config
    if not isinstance(block, Mapping) or "type" not in block:
        raise ValueError("deepspeed config needs a scheduler block with a 'type'")
    stype = block["type"]
    if stype not in _TYPES and stype not in TORCH_TYPES:
        raise ValueError(f"unknown DeepSpeed scheduler type {stype!r}: neither deepspeed.runtime.lr_schedules "
                         f"({', '.join(_TYPES)}) nor torch.optim.lr_scheduler has it")
    if not isinstance(block.get("params"), Mapping):
        raise ValueError(f"DeepSpeed scheduler {stype!r} needs a 'params' mapping ({{}} for the defaults): the "
                         f"engine calls {stype}(optimizer, **params), got params={block.get('params')!r}")
    params = dict(block["params"])
    lr = _optimizer_value(config, "lr")
    if stype not in _TYPES:
        return _from_torch_type(config, stype, params, lr)
    check_keys(f"DeepSpeed {stype}", params, _PARAMS[stype])
    if stype == "WarmupCosineLR":
        for key, used in (("warmup_min_ratio", "during warmup"), ("cos_min_ratio", "after warmup")):
            if _is_list(params.get(key)):
                raise ValueError(f"DeepSpeed WarmupCosineLR takes one {key} for all param groups, got "
                                 f"{params[key]!r}: its docstring says 'float or list', but get_lr_ratio() does "
                                 f"scalar arithmetic with it and raises TypeError {used} (which the engine catches "
                                 "and retries as step(train_batch_size), jumping the schedule back to that index)")
    last = V.integer("last_batch_iteration", params.pop("last_batch_iteration", -1))
    if last < -1 or last > MAX_LAST_BATCH_ITERATION:
        raise ValueError(f"last_batch_iteration must be -1 (a fresh start) or the index of the last batch done "
                         f"(0 .. 2**61), got {last}")
    # only a resumed OneCycle reads the optimizer's betas (its first update keeps them)
    betas = _betas(_optimizer_value(config, "betas")) if last != -1 and stype == "OneCycle" else None
    sources = [("lr", lr)] + [(key, params.get(key)) for key in PER_GROUP[stype]]
    n = _group_count(config, sources + ([("betas", betas)] if isinstance(betas, list) else []))
    if n is None:
        return _deepspeed_group(stype, params, lr, betas, last)  # type: ignore[arg-type]  # betas: a pair
    return GroupSchedules(
        _deepspeed_group(stype, {key: _pick(v, i) if key in PER_GROUP[stype] else v for key, v in params.items()},
                         _pick(lr, i), _pick(betas, i) if isinstance(betas, list) else betas, last)
        for i in range(n))
