"""Exact reproductions of the schedules of other frameworks: ``from_config``."""

from __future__ import annotations

from typing import Any, Callable, Mapping

from ._common import GroupSchedules, ScheduleSet
from .colossalai import ColossalAICosineWarmup, ColossalAILinearWarmup, ColossalAIWarmup, from_colossalai
from .deepspeed import DeepSpeedOneCycle, DeepSpeedWarmupCosineLR, DeepSpeedWarmupLR, from_deepspeed
from .hf import HFSchedule, from_hf
from .megatron import MegatronLR, from_megatron
from .torch import TorchLR, from_torch

FRAMEWORKS: dict[str, Callable[[Mapping[str, Any]], ScheduleSet | GroupSchedules]] = {
    "megatron": from_megatron,
    "deepspeed": from_deepspeed,
    "torch": from_torch,
    "colossalai": from_colossalai,
    "hf": from_hf,
}


def from_config(framework: str, config: Mapping[str, Any]) -> ScheduleSet | GroupSchedules:
    """The schedules a framework runs for ``config``, in that framework's own names.

    ``framework`` is one of ``"megatron"``, ``"deepspeed"``, ``"torch"``,
    ``"colossalai"``, ``"hf"``. ``result.lr(k)`` is the learning rate of the
    framework's k-th optimizer update (k = 0 first), off-by-one conventions and
    behaviour past the horizon included. A config with per-param-group values (lists)
    gives a ``GroupSchedules``: one ScheduleSet per group, in group order. A config the framework rejects raises
    ``ValueError`` naming the problem.
    """
    if framework not in FRAMEWORKS:
        raise ValueError(f"unknown framework {framework!r}; expected one of {', '.join(FRAMEWORKS)}")
    if not isinstance(config, Mapping):
        raise ValueError(f"a {framework} config must be a mapping, got {type(config).__name__}")
    try:
        return FRAMEWORKS[framework](config)
    except TypeError as exc:  # a bad value type inside the config
        raise ValueError(f"bad {framework} config: {exc}") from None
    except OverflowError as exc:  # an integer too large for int64 / float64 (step_size=10**30, ...)
        raise ValueError(f"bad {framework} config: a number is out of range ({exc})") from None


__all__ = ["ScheduleSet", "GroupSchedules", "from_config", "FRAMEWORKS", "MegatronLR", "DeepSpeedWarmupLR",
           "DeepSpeedWarmupCosineLR", "DeepSpeedOneCycle", "TorchLR", "ColossalAICosineWarmup", "HFSchedule",
           "ColossalAIWarmup", "ColossalAILinearWarmup"]
