"""Pieces shared by the framework translators."""

from __future__ import annotations

import difflib
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

from .._base import Schedule, from_dict


@dataclass(frozen=True)
class ScheduleSet:
    """What a framework schedules, each as a function of the update index ``k``.

    ``lr`` is always set. ``weight_decay``, ``beta1`` and ``beta2`` are a Schedule
    where the framework changes that hyperparameter over training, else ``None``
    (the optimizer's own value then applies).
    """

    lr: Schedule
    weight_decay: Schedule | None = None
    beta1: Schedule | None = None
    beta2: Schedule | None = None

    def items(self) -> list[tuple[str, Schedule]]:
        """The scheduled quantities in a fixed order: lr, weight_decay, beta1, beta2."""
        return [(n, s) for n in ("lr", "weight_decay", "beta1", "beta2")
                if (s := getattr(self, n)) is not None]

    def to_dict(self) -> dict[str, Any]:
        """JSON-able form: ``{"lr": {...}, "weight_decay": {...} | None, ...}``."""
        return {n: (None if (s := getattr(self, n)) is None else s.to_dict())
                for n in ("lr", "weight_decay", "beta1", "beta2")}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "ScheduleSet":
        """Inverse of ``to_dict``."""
        return cls(**{n: (None if d.get(n) is None else from_dict(d[n]))
                      for n in ("lr", "weight_decay", "beta1", "beta2")})


def check_keys(framework: str, cfg: Mapping[str, Any], known: Iterable[str]) -> None:
    """Raise ValueError naming any key the framework does not take (with a suggestion)."""
    known = tuple(known)
    for key in cfg:
        if key not in known:
            close = difflib.get_close_matches(str(key), known, n=1)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            raise ValueError(f"unknown {framework} parameter {key!r}{hint}")


def require(framework: str, cfg: Mapping[str, Any], *keys: str) -> None:
    """Raise ValueError naming the first missing required key."""
    for key in keys:
        if cfg.get(key) is None:
            raise ValueError(f"{framework} config is missing required parameter {key!r}")
