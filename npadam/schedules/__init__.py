"""Learning-rate, weight-decay and momentum schedules as vectorized functions of the step.

``k`` is the 0-based index of the optimizer update. ``s(k)`` returns a float for
an integer and a float64 ndarray of the same shape for an array; schedules are
picklable and round-trip through ``to_dict()`` / ``from_dict()``.

>>> from npadam import schedules
>>> lr = schedules.warmup_cosine(peak=3e-4, warmup_steps=2_000, total_steps=100_000, final=3e-5)
>>> lr(0), lr(2_000), lr(100_000)
(0.0, 0.0003, 3e-05)

Building blocks (each class documents its formula): ``constant``, ``linear``,
``cosine``, ``polynomial``, ``exponential``, ``inverse_sqrt``, ``one_minus_sqrt``,
``warmup``, ``join``, ``scale_steps``, ``multiply``, ``wsd``, ``warmup_cosine``,
``cosine_restarts``, ``one_cycle``, ``lr_range_test``, ``weight_decay``,
``from_callable`` (a Python callable of the step, evaluated per step); μP in
``schedules.mup``; framework parity in ``from_config``.
"""

from ._base import Schedule, as_steps, from_dict
from ._blocks import (WSD, Constant, Cosine, CosineRestarts, Exponential, InverseSqrt, Join, Linear,
                      LRRangeTest, Multiply, OneCycle, OneMinusSqrt, Polynomial, ScaleSteps, Warmup,
                      WarmupCosine, WeightDecaySchedule)
from ._callable import Lambda, from_callable
from .frameworks import FRAMEWORKS, GroupSchedules, ScheduleSet, from_config
from .plateau import Plateau  # a metric controller (torch's ReduceLROnPlateau): p.step(val_loss)
from . import mup

constant = Constant
linear = Linear
cosine = Cosine
polynomial = Polynomial
exponential = Exponential
inverse_sqrt = InverseSqrt
one_minus_sqrt = OneMinusSqrt
warmup = Warmup
join = Join
scale_steps = ScaleSteps
multiply = Multiply
wsd = WSD
warmup_cosine = WarmupCosine
cosine_restarts = CosineRestarts
one_cycle = OneCycle
lr_range_test = LRRangeTest
weight_decay = WeightDecaySchedule


def one_cycle_momentum(total_steps: int, base_momentum: float = 0.85, max_momentum: float = 0.95,
                       pct_start: float = 0.3, anneal: str = "cos", three_phase: bool = False) -> OneCycle:
    """The beta1 (momentum) schedule that goes with ``one_cycle``: max -> base -> max."""
    return OneCycle(peak=1.0, total_steps=total_steps, pct_start=pct_start, anneal=anneal,
                    three_phase=three_phase, quantity="momentum", base_momentum=base_momentum,
                    max_momentum=max_momentum)


__all__ = [
    "Schedule", "ScheduleSet", "GroupSchedules", "from_dict", "from_config", "as_steps", "FRAMEWORKS", "mup",
    "constant", "linear", "cosine", "polynomial", "exponential", "inverse_sqrt", "one_minus_sqrt",
    "warmup", "join", "scale_steps", "multiply", "wsd", "warmup_cosine", "cosine_restarts", "one_cycle",
    "one_cycle_momentum", "lr_range_test", "weight_decay", "from_callable",
    "Constant", "Linear", "Cosine", "Polynomial", "Exponential", "InverseSqrt", "OneMinusSqrt", "Warmup",
    "Join", "ScaleSteps", "Multiply", "WSD", "WarmupCosine", "CosineRestarts", "OneCycle", "LRRangeTest",
    "WeightDecaySchedule", "Lambda",
    "Plateau",
]
