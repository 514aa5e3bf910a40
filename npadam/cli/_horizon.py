"""How many steps to dump when ``--steps`` is not given.

Each schedule knows its ``horizon`` (the updates after which it has done what it
was configured to do: ``total_steps``, ``num_training_steps``, the decay length
...; None when it has no end) and its ``limit`` (how many updates it can be
evaluated on at all: torch's ``OneCycleLR`` refuses updates past ``total_steps``).
The default dump is the longest horizon plus 10%, within every limit.
"""

from __future__ import annotations

import math
from typing import Iterable

from ..schedules import Schedule


def _whole(n: int | float) -> int:
    """``n`` rounded up to an integer (a float horizon is rounded up; infinity raises OverflowError)."""
    return n if isinstance(n, int) else math.ceil(n)


def default_steps(schedules: Iterable[Schedule]) -> int | None:
    """Horizon + 10% (at least one more step) of the longest schedule, within every limit.

    Integer arithmetic throughout, so a horizon of 10**30 gives 1.1 * 10**30 (for the caller
    to refuse) rather than an OverflowError."""
    scheds = list(schedules)
    hs = [_whole(s.horizon) for s in scheds if s.horizon is not None]
    if not hs:
        return None
    h = max(hs)
    steps = h + max(1, -(-h // 10))
    return min([steps] + [_whole(s.limit) for s in scheds if s.limit is not None])

