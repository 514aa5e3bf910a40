"""Hugging Face transformers ``get_scheduler`` schedules, exactly.

Every HF schedule is a ``torch.optim.lr_scheduler.LambdaLR``: update ``k`` uses
``learning_rate * lambda(k)`` (the constructor already evaluated ``lambda(0)``).
The lambdas below copy ``transformers/optimization.py`` operation for operation.
"""

from __future__ import annotations

import json
import math
from typing import Any, Mapping

import numpy as np

from ... import _validate as V
from .._base import Schedule, register
from ._common import ScheduleSet, check_keys, plateau

_KWARGS = {
    "linear": (),
    "cosine": ("num_cycles",),
    "cosine_with_restarts": ("num_cycles",),
    "polynomial": ("lr_end", "power"),
    "constant": (),
    "constant_with_warmup": (),
    "inverse_sqrt": ("timescale",),
    "cosine_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate"),
    "cosine_warmup_with_min_lr": ("num_cycles", "min_lr", "min_lr_rate", "warmup_lr_rate"),
    "warmup_stable_decay": ("num_decay_steps", "num_stable_steps", "warmup_type", "decay_type",
                            "min_lr_ratio", "num_cycles"),
}
_NOT_STEP_FUNCTIONS = ("reduce_lr_on_plateau", "greedy")  # from_hf builds a Plateau for the first


@register
class HFSchedule(Schedule):
    """``learning_rate * lambda(k)`` for a transformers ``SchedulerType`` name.

    With ``W = num_warmup_steps``, ``T = num_training_steps`` and the warmup
    ``k / max(1, W)`` for ``k < W`` (all but ``constant`` and the variants noted):

    - ``linear``: ``max(0, (T - k) / max(1, T - W))``
    - ``cosine``: ``max(0, 0.5 (1 + cos(pi * num_cycles * 2 * p)))``, ``p = (k - W) / max(1, T - W)``
      (unclamped: rises again after T, as in HF)
    - ``cosine_with_restarts``: ``0`` for ``p >= 1``, else ``max(0, 0.5 (1 + cos(pi ((num_cycles p) % 1))))``
    - ``polynomial``: ``((lr - lr_end) (1 - (k - W) / (T - W))**power + lr_end) / lr``; ``lr_end / lr`` after T
    - ``constant``: 1; ``constant_with_warmup``: warmup then 1
    - ``inverse_sqrt``: ``1 / sqrt((k + timescale - W) / timescale)``, ``timescale`` defaults to ``W or 10000``
    - ``cosine_with_min_lr``: the cosine factor ``f`` mapped to ``max(0, f (1 - m) + m)``, ``m = min_lr / lr``
    - ``cosine_warmup_with_min_lr``: warmup ``(k + 1) / max(1, W)`` (or from ``warmup_lr_rate``),
      then the min-lr cosine with ``p = (k - W + 1) / max(1, T - W)``
    - ``warmup_stable_decay``: warmup (linear | cosine | 1-sqrt) from ``min_lr_ratio``, stable,
      decay (linear | cosine | 1-sqrt) to ``min_lr_ratio`` over ``num_decay_steps``, then ``min_lr_ratio``
    """

    kind = "hf"

    def __init__(self, lr_scheduler_type: str, learning_rate: float, num_warmup_steps: int = 0,
                 num_training_steps: int | None = None, lr_scheduler_kwargs: Mapping[str, Any] | None = None) -> None:
        name = lr_scheduler_type
        if name in _NOT_STEP_FUNCTIONS:
            raise ValueError(f"HF scheduler {name!r} depends on the training loss, not on the step; "
                             + ("from_config('hf', ...) gives it as a schedules.Plateau" if name == _NOT_STEP_FUNCTIONS[0]
                                else "it cannot be evaluated as a schedule"))
        V.choice("lr_scheduler_type", name, tuple(_KWARGS))
        kw = dict(lr_scheduler_kwargs or {})
        check_keys(f"HF {name} lr_scheduler_kwargs", kw, _KWARGS[name])
        lr = V.real("learning_rate", learning_rate)
        W = V.integer("num_warmup_steps", num_warmup_steps, lo=0)
        T = num_training_steps
        if T is not None:
            T = V.integer("num_training_steps", T, lo=0)
        elif name not in ("constant", "constant_with_warmup", "inverse_sqrt", "warmup_stable_decay"):
            raise ValueError(f"{name} requires `num_training_steps`, please provide that argument.")
        self._store(lr_scheduler_type=name, learning_rate=lr, num_warmup_steps=W, num_training_steps=T,
                    lr_scheduler_kwargs=kw)
        self._resolved = self._resolve(name, lr, W, T, kw)

    @staticmethod
    def _resolve(name: str, lr: float, W: int, T: int | None, kw: dict[str, Any]) -> dict[str, Any]:
        """Apply HF's defaults and checks; return the lambda's parameters."""
        r: dict[str, Any] = {}
        if name in ("cosine", "cosine_with_min_lr", "cosine_warmup_with_min_lr"):
            r["num_cycles"] = V.real("num_cycles", kw.get("num_cycles", 0.5))
        if name == "cosine_with_restarts":
            r["num_cycles"] = V.real("num_cycles", kw.get("num_cycles", 1))
        if name == "polynomial":
            r["lr_end"] = V.real("lr_end", kw.get("lr_end", 1e-7))
            r["power"] = V.real("power", kw.get("power", 1.0))
            if not lr > r["lr_end"]:
                raise ValueError(f"lr_end ({r['lr_end']}) must be smaller than initial lr ({lr})")
            if T == W:
                raise ValueError(f"polynomial needs num_training_steps != num_warmup_steps (both {W}): "
                                 "HF divides by their difference")
        if name == "inverse_sqrt":
            ts = kw.get("timescale")
            r["timescale"] = V.integer("timescale", (W or 10_000) if ts is None else ts, lo=1)
        if name in ("cosine_with_min_lr", "cosine_warmup_with_min_lr"):
            min_lr, rate = kw.get("min_lr"), kw.get("min_lr_rate")
            if min_lr is not None and rate is not None:
                raise ValueError("Only one of min_lr or min_lr_rate should be set")
            if min_lr is None and rate is None:
                raise ValueError("One of min_lr or min_lr_rate should be set through the `lr_scheduler_kwargs`")
            r["min_lr_rate"] = V.real("min_lr_rate", min_lr / lr if min_lr is not None else rate)
            if name == "cosine_warmup_with_min_lr" and kw.get("warmup_lr_rate") is not None:
                r["warmup_lr_rate"] = V.real("warmup_lr_rate", kw["warmup_lr_rate"])
        if name == "warmup_stable_decay":
            if kw.get("num_decay_steps") is None:
                raise ValueError("warmup_stable_decay needs lr_scheduler_kwargs['num_decay_steps']")
            r["num_decay_steps"] = V.integer("num_decay_steps", kw["num_decay_steps"], lo=0)
            stable = kw.get("num_stable_steps")
            if stable is None and T is None:
                raise ValueError("Either num_training_steps or num_stable_steps must be specified.")
            r["num_stable_steps"] = V.integer(
                "num_stable_steps", T - W - r["num_decay_steps"] if stable is None else stable)
            for key in ("warmup_type", "decay_type"):
                r[key] = kw.get(key, "linear" if key == "warmup_type" else "cosine")
                V.choice(key, r[key], ("linear", "cosine", "1-sqrt"))
            r["min_lr_ratio"] = V.real("min_lr_ratio", kw.get("min_lr_ratio", 0))
            r["num_cycles"] = V.real("num_cycles", kw.get("num_cycles", 0.5))
        return r

    @property
    def horizon(self) -> int | None:
        p, r = self._params, self._resolved
        if p["num_training_steps"] is not None:
            return p["num_training_steps"]
        if p["lr_scheduler_type"] == "warmup_stable_decay":
            return p["num_warmup_steps"] + r["num_stable_steps"] + r["num_decay_steps"]
        return None

    def _values(self, k: np.ndarray) -> np.ndarray:
        p, r = self._params, self._resolved
        name, lr, W, T = p["lr_scheduler_type"], p["learning_rate"], p["num_warmup_steps"], p["num_training_steps"]
        x = k.astype(np.float64)
        lam = np.empty(x.shape)
        if name == "constant":
            return np.full(x.shape, lr * 1.0)
        if name == "warmup_stable_decay":
            return lr * _wsd(x, W, **r)
        if name == "cosine_warmup_with_min_lr":
            w = x < W
            wr = r.get("warmup_lr_rate")
            lam[w] = (x[w] + 1.0) / max(1.0, W) if wr is None else wr + (1.0 - wr) * x[w] / max(1, W - 1)
            prog = (x[~w] - W + 1.0) / max(1.0, float(T - W))
            f = 0.5 * (1.0 + np.cos(math.pi * r["num_cycles"] * 2.0 * prog))
            lam[~w] = np.maximum(0, f * (1 - r["min_lr_rate"]) + r["min_lr_rate"])
            return lr * lam
        w = x < W
        lam[w] = x[w] / float(max(1.0 if name == "constant_with_warmup" else 1, W))
        y = x[~w]
        if name == "constant_with_warmup":
            lam[~w] = 1.0
        elif name == "linear":
            lam[~w] = np.maximum(0.0, (T - y) / float(max(1, T - W)))
        elif name in ("cosine", "cosine_with_min_lr"):
            prog = (y - W) / float(max(1, T - W))
            f = 0.5 * (1.0 + np.cos(math.pi * float(r["num_cycles"]) * 2.0 * prog))
            if name == "cosine":
                lam[~w] = np.maximum(0.0, f)
            else:
                lam[~w] = np.maximum(0, f * (1 - r["min_lr_rate"]) + r["min_lr_rate"])
        elif name == "cosine_with_restarts":
            prog = (y - W) / float(max(1, T - W))
            f = np.maximum(0.0, 0.5 * (1.0 + np.cos(math.pi * np.mod(float(r["num_cycles"]) * prog, 1.0))))
            lam[~w] = np.where(prog >= 1.0, 0.0, f)
        elif name == "polynomial":
            lr_end, power = r["lr_end"], r["power"]
            pct = 1 - (y - W) / (T - W)
            decay = (lr - lr_end) * np.power(np.maximum(pct, 0.0), power) + lr_end
            lam[~w] = np.where(y > T, lr_end / lr, decay / lr)
        elif name == "inverse_sqrt":
            ts = r["timescale"]
            lam[~w] = 1.0 / np.sqrt((y + (ts - W)) / ts)
        return lr * lam


def _wsd(x: np.ndarray, W: int, *, num_stable_steps: int, num_decay_steps: int, warmup_type: str,
         decay_type: str, min_lr_ratio: float, num_cycles: float) -> np.ndarray:
    """``transformers.optimization._get_wsd_scheduler_lambda``, vectorized."""
    S, D, m = num_stable_steps, num_decay_steps, min_lr_ratio
    lam = np.full(x.shape, float(m))
    w = x < W
    prog = x[w] / float(max(1, W))
    f = prog if warmup_type == "linear" else (
        0.5 * (1.0 - np.cos(math.pi * prog)) if warmup_type == "cosine" else 1.0 - np.sqrt(1.0 - prog))
    lam[w] = np.maximum(0.0, f * (1.0 - m) + m)
    stable = ~w & (x < W + S)
    lam[stable] = 1.0
    dec = ~w & ~stable & (x < W + S + D)
    prog = (x[dec] - W - S) / float(max(1, D))
    f = 1.0 - prog if decay_type == "linear" else (
        0.5 * (1.0 + np.cos(math.pi * float(num_cycles) * 2.0 * prog)) if decay_type == "cosine"
        else 1.0 - np.sqrt(prog))
    lam[dec] = np.maximum(0.0, f * (1.0 - m) + m)
    return lam


_CONFIG_KEYS = ("lr_scheduler_type", "learning_rate", "num_warmup_steps", "num_training_steps",
                "lr_scheduler_kwargs", "warmup_steps", "warmup_ratio", "max_steps")


def _convert_str_dict(value: Any) -> Any:
    """What ``TrainingArguments`` does to a JSON-parsed dict argument (transformers 5,
    ``_convert_str_dict``): string values "true"/"false" (any case) become bools, digit strings
    ints, digit strings with one "." floats; nested dicts likewise. Only on the parsed string form
    (a mapping given directly is used as it is, as there)."""
    if not isinstance(value, dict):
        return value
    out = {}
    for key, v in value.items():
        if isinstance(v, dict):
            v = _convert_str_dict(v)
        elif isinstance(v, str):
            if v.lower() in ("true", "false"):
                v = v.lower() == "true"
            elif v.replace(".", "", 1).isdigit():
                try:
                    v = int(v) if v.isdigit() else float(v)
                except ValueError:  # digits int() does not read ("²"): transformers fails there too
                    raise ValueError(f"lr_scheduler_kwargs[{key!r}] = {v!r}: transformers reads it as a number, "
                                     "and it is not one") from None
        out[key] = v
    return out


def from_hf(config: Mapping[str, Any]) -> ScheduleSet:
    """From transformers names: ``lr_scheduler_type`` (default ``"linear"``), ``learning_rate``
    (default 5e-5), ``num_warmup_steps`` (or TrainingArguments' ``warmup_steps``: an int, or a
    float < 1 meaning a fraction of training, rounded up), ``num_training_steps`` (or ``max_steps``)
    and ``lr_scheduler_kwargs`` (a mapping, or a JSON object string: TrainingArguments' command-line
    form). ``warmup_ratio`` was removed in transformers 5 (TrainingArguments rejects it): a
    ValueError naming the replacement. ``reduce_lr_on_plateau`` is torch's ReduceLROnPlateau
    with ``lr_scheduler_kwargs`` (no warmup, as in transformers): a ``schedules.Plateau`` as
    ``lr``, stepped with the eval metric where the Trainer steps it."""
    check_keys("hf", config, _CONFIG_KEYS)
    total = config.get("num_training_steps", config.get("max_steps"))
    warm = config.get("num_warmup_steps")
    if warm is None and config.get("warmup_steps") is not None:
        ws = V.real("warmup_steps", config["warmup_steps"], lo=0.0)
        warm = int(ws) if ws >= 1 else (None if total is None else math.ceil(total * ws))
        if warm is None:
            raise ValueError("a fractional warmup_steps needs num_training_steps (or max_steps)")
    if "warmup_ratio" in config:
        r = config["warmup_ratio"]
        raise ValueError(f"warmup_ratio was removed in transformers 5 (TrainingArguments rejects it); give "
                         f"warmup_steps={r!r} instead: a float below 1 is that fraction of num_training_steps")
    kwargs = config.get("lr_scheduler_kwargs")
    if kwargs is None:
        kwargs = {}
    if isinstance(kwargs, str):  # TrainingArguments parses a JSON object string (its command-line form)
        text = kwargs
        if not text.startswith("{"):  # TrainingArguments keeps such a string, and the Trainer fails on it
            raise ValueError(f"lr_scheduler_kwargs must be a mapping or a JSON object string (starting with "
                             f"'{{'), got {text!r}")
        try:
            kwargs = _convert_str_dict(json.loads(text))
        except json.JSONDecodeError as e:
            raise ValueError(f"lr_scheduler_kwargs is not valid JSON ({e}): {text!r}") from None
    if not isinstance(kwargs, Mapping):
        raise ValueError(f"lr_scheduler_kwargs must be a mapping, got {kwargs!r}")
    if config.get("lr_scheduler_type") == "reduce_lr_on_plateau":  # transformers: ReduceLROnPlateau(**kwargs)
        return plateau("HF reduce_lr_on_plateau lr_scheduler_kwargs", config.get("learning_rate", 5e-5), kwargs)
    return ScheduleSet(lr=HFSchedule(config.get("lr_scheduler_type", "linear"),
                                     config.get("learning_rate", 5e-5), 0 if warm is None else warm,
                                     total, kwargs))
