"""Megatron's batch-size ramp-up (``--rampup-batch-size start increment ramp_samples``).

Megatron-Core's ``RampupBatchsizeNumMicroBatchesCalculator`` sets the global batch size of
an iteration from the samples consumed before it, ``c``:

- ``c > ramp_samples``: ``global_batch_size``;
- else ``start + int(c / r) * increment`` with ``r = ramp_samples / n`` (a float) and
  ``n = (global_batch_size - start) / increment`` increments.

Megatron-LM's training loop calls ``update_num_microbatches(consumed_train_samples)`` at the
start of each iteration, and after a successful update
``opt_param_scheduler.step(increment=get_num_microbatches() * micro_batch_size *
data_parallel_size)``, which is that batch size; then ``consumed_train_samples += batch size``.
So the scheduler's ``num_steps`` after ``k`` updates is ``C(k)``, the samples consumed before
iteration ``k``, with ``C(0) = 0`` and ``C(k + 1) = C(k) + B(C(k))``.

``C`` is piecewise linear in ``k``: the batch size is constant over a run of iterations (a
*stage*), so ``RampupTable`` finds the stages once, exactly as the recurrence visits them
(one stage per increment at most; a stage whose batch jumps past several increments is
skipped, as in Megatron), and ``C(k) = E_s + (k - K_s) * B_s`` for the stage ``s`` holding
``k`` is evaluated for whole arrays of ``k`` with ``searchsorted``.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import numpy as np

from ... import _validate as V
from .._base import Schedule, as_steps, register

#: Sample counts saturate here (2**62): every Megatron schedule is constant long before.
SAMPLE_CAP = 2**62


def check_rampup(rampup_batch_size: Any, global_batch_size: int) -> tuple[int, int, int]:
    """``(start, increment, ramp_samples)`` from ``[start, increment, ramp_samples]``, checked as
    Megatron-Core checks it (its asserts, and the divisions by zero it would hit) against
    ``global_batch_size``; ValueError/TypeError naming the bad value."""
    if isinstance(rampup_batch_size, (str, bytes)) or not isinstance(rampup_batch_size, Sequence):
        raise TypeError(f"rampup_batch_size must be a list [start, increment, ramp_samples], "
                        f"got {rampup_batch_size!r}")
    if len(rampup_batch_size) != 3:
        raise ValueError(f"rampup_batch_size must have 3 values [start, increment, ramp_samples], "
                         f"got {list(rampup_batch_size)!r}")
    start = V.integer("rampup_batch_size start", rampup_batch_size[0], lo=1)
    inc = V.integer("rampup_batch_size increment", rampup_batch_size[1], lo=1)
    ramp = V.integer("rampup_batch_size ramp_samples", rampup_batch_size[2], lo=0)
    gbs = V.integer("global_batch_size", global_batch_size, lo=1)
    if ramp >= SAMPLE_CAP:
        raise ValueError(f"rampup_batch_size ramp_samples must be < 2**62, got {ramp}")
    if gbs < start:
        raise ValueError(f"global_batch_size ({gbs}) must be >= the rampup start batch size ({start})")
    if (gbs - start) % inc:
        raise ValueError(f"global_batch_size - rampup start ({gbs} - {start} = {gbs - start}) must be "
                         f"divisible by the rampup increment ({inc})")
    if gbs == start:
        raise ValueError(f"rampup_batch_size start ({start}) equals global_batch_size: no increments to ramp "
                         "(Megatron divides ramp_samples by the number of increments: ZeroDivisionError)")
    if ramp == 0:
        raise ValueError("rampup_batch_size ramp_samples must be > 0 (Megatron divides the consumed samples "
                         "by ramp_samples / increments: ZeroDivisionError)")
    return start, inc, ramp


class RampupTable:
    """The stages of Megatron's batch-size ramp-up (see the module docstring).

    ``first_iteration[s]``, ``consumed[s]`` and ``batch[s]``: the first iteration of stage
    ``s``, the samples consumed before it, and the global batch size of its iterations; the
    last stage runs at ``global_batch_size`` forever.
    """

    def __init__(self, global_batch_size: int, rampup_batch_size: Sequence[int]) -> None:
        self.start, self.increment, self.ramp_samples = check_rampup(rampup_batch_size, global_batch_size)
        self.global_batch_size = int(global_batch_size)
        # Megatron: rampup_samples_per_increment = ramp_samples / num_increments (a float)
        self.samples_per_increment = self.ramp_samples / ((self.global_batch_size - self.start) // self.increment)
        ks, es, bs = [], [], []
        k = e = 0
        while True:
            b = self.batch_at(e)
            ks.append(k), es.append(e), bs.append(b)
            if b == self.global_batch_size:
                break
            n = self._stage_length(e, b)
            k, e = k + n, e + n * b
        self.first_iteration = np.asarray(ks, dtype=np.int64)
        self.consumed = np.asarray(es, dtype=np.int64)
        self.batch = np.asarray(bs, dtype=np.int64)

    def batch_at(self, consumed: int) -> int:
        """The global batch size Megatron uses after ``consumed`` samples (one Python int, exactly
        ``RampupBatchsizeNumMicroBatchesCalculator.update``)."""
        if consumed > self.ramp_samples:
            return self.global_batch_size
        return self.start + int(consumed / self.samples_per_increment) * self.increment

    def _stage_length(self, e: int, b: int) -> int:
        """Iterations at batch ``b`` from ``e`` consumed samples: the smallest ``n >= 1`` with
        ``batch_at(e + n * b) != b`` (the batch size never decreases)."""
        j = (b - self.start) // self.increment
        leave = min(self.ramp_samples + 1, math.ceil((j + 1) * self.samples_per_increment))
        n = max(1, -(-(leave - e) // b))
        while n > 1 and self.batch_at(e + (n - 1) * b) != b:  # the estimate is within an ulp of r: fix it
            n -= 1
        while self.batch_at(e + n * b) == b:
            n += 1
        return n

    def _stage(self, k: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.first_iteration, k, side="right") - 1

    def consumed_samples(self, k: np.ndarray) -> np.ndarray:
        """``C(k)``: samples consumed before iteration ``k`` (int64; saturates at 2**62)."""
        s = self._stage(k)
        e, b = self.consumed[s], self.batch[s]
        return e + np.minimum(k - self.first_iteration[s], (SAMPLE_CAP - e) // b) * b

    def batch_size(self, k: np.ndarray) -> np.ndarray:
        """The global batch size of iteration ``k`` (int64)."""
        return self.batch[self._stage(k)]

    def iterations_to_reach(self, samples: int) -> int:
        """The smallest ``k`` with ``C(k) >= samples``."""
        if samples <= 0:
            return 0
        s = int(np.searchsorted(self.consumed, samples, side="left")) - 1
        return int(self.first_iteration[s]) + -(-(samples - int(self.consumed[s])) // int(self.batch[s]))

    def train_iters(self, train_samples: int) -> int:
        """Megatron-LM's ``update_train_iters`` for sample-based training with a ramp-up: the
        iterations whose consumed samples are ``<= min(ramp_samples, train_samples)``, then
        ``(train_samples - C) // global_batch_size`` more (a partial last batch is dropped)."""
        iters = self.iterations_to_reach(min(self.ramp_samples, train_samples) + 1)
        done = int(self.consumed_samples(np.asarray([iters], dtype=np.int64))[0])
        if train_samples > done:
            iters += (train_samples - done) // self.global_batch_size
        return iters


@register
class MegatronBatchRampup(Schedule):
    """``schedule(C(k))``: a schedule in Megatron's samples, run under a batch-size ramp-up.

    ``C(k)`` is the samples consumed before iteration ``k`` (``OptimizerParamScheduler``'s
    ``num_steps`` after ``k`` successful updates; module docstring): ``start`` per iteration at
    first, ``increment`` more every ``ramp_samples / increments`` samples, ``global_batch_size``
    from ``ramp_samples`` on. ``consumed_samples(k)`` and ``batch_size(k)`` give ``C`` and the
    batch of iteration ``k``; ``horizon`` is the first iteration whose ``C`` reaches the inner
    schedule's horizon (in samples).
    """

    kind = "megatron_batch_rampup"

    def __init__(self, schedule: Schedule, global_batch_size: int, rampup_batch_size: Sequence[int]) -> None:
        if not isinstance(schedule, Schedule):
            raise TypeError(f"schedule must be a Schedule, got {schedule!r}")
        table = RampupTable(global_batch_size, rampup_batch_size)
        self._store(schedule=schedule, global_batch_size=table.global_batch_size,
                    rampup_batch_size=[table.start, table.increment, table.ramp_samples])
        self._table = table

    @property
    def table(self) -> RampupTable:
        """The ramp-up's stages."""
        return self._table

    def consumed_samples(self, step: Any) -> Any:
        """Samples consumed before iteration ``step`` (an int, or an int64 array like ``step``)."""
        k, scalar = as_steps(step)
        out = self._table.consumed_samples(k.reshape(-1)).reshape(k.shape)
        return int(out) if scalar else out

    def batch_size(self, step: Any) -> Any:
        """The global batch size of iteration ``step`` (an int, or an int64 array like ``step``)."""
        k, scalar = as_steps(step)
        out = self._table.batch_size(k.reshape(-1)).reshape(k.shape)
        return int(out) if scalar else out

    @property
    def horizon(self) -> int | None:
        h = self._params["schedule"].horizon
        return None if h is None else self._table.iterations_to_reach(h)

    def _values(self, k: np.ndarray) -> np.ndarray:
        return self._params["schedule"]._values(self._table.consumed_samples(k))
