"""Named schedules for ``npadam schedule NAME --flags``, derived from the building blocks.

Every public building block of ``npadam.schedules`` whose constructor takes only
numbers, strings and booleans becomes a named schedule: ``warmup_cosine`` is
``warmup-cosine``, its parameter ``warmup_steps`` is the flag ``--warmup-steps``,
typed from the annotation (``int``, ``float``, ``bool``, ``str``, ``X | None``) and
required when it has no default. Composite blocks (``warmup``, ``join``, ...) take
other schedules and are left out. A parameter named ``steps`` (the length of a
ramp or decay) is spelled ``--total-steps`` because ``--steps`` is the number of
steps to dump.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from .. import schedules
from ..schedules import Schedule

#: Flags of ``npadam schedule`` itself; a parameter with one of these names is renamed.
RESERVED = ("steps", "framework", "config", "schedule-json", "format", "output", "force", "plot", "compare",
            "summary", "width", "height", "log-y", "list", "help")
_RENAME = {"steps": "total-steps"}
_SCALARS = {"int", "float", "bool", "str"}
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class Param:
    """One constructor parameter as a command-line flag."""

    name: str            # the keyword argument
    flag: str            # without the leading "--"
    type: str            # "int" | "float" | "bool" | "str"
    default: Any         # REQUIRED when there is none
    optional: bool       # None is allowed

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class Named:
    """A named schedule: hyphenated name, class and flags."""

    name: str
    cls: type[Schedule]
    params: tuple[Param, ...]

    @property
    def summary(self) -> str:
        doc = inspect.getdoc(self.cls) or ""
        return doc.strip().splitlines()[0] if doc.strip() else self.cls.__name__

    def column(self, values: dict[str, Any]) -> str:
        """The quantity a dump of this schedule is labelled with: ``weight_decay`` for
        ``weight-decay``, ``beta1`` for a ``--quantity momentum`` schedule, else ``lr``."""
        if self.cls is schedules.WeightDecaySchedule:
            return "weight_decay"
        return "beta1" if values.get("quantity") == "momentum" else "lr"

    def build(self, values: dict[str, Any]) -> Schedule:
        return self.cls(**{p.name: values[p.name] for p in self.params if p.name in values})


def _param_type(annotation: Any) -> tuple[str, bool] | None:
    text = annotation if isinstance(annotation, str) else getattr(annotation, "__name__", str(annotation))
    parts = [p.strip() for p in str(text).replace("Optional[", "").rstrip("]").split("|")]
    optional = "None" in parts
    parts = [p for p in parts if p != "None"]
    if len(parts) != 1 or parts[0] not in _SCALARS:
        return None
    return parts[0], optional


def _describe(name: str, cls: type[Schedule]) -> Named | None:
    params = []
    for p in list(inspect.signature(cls.__init__).parameters.values())[1:]:
        if p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            return None
        typed = _param_type(p.annotation)
        if typed is None:
            return None
        flag = p.name.replace("_", "-")
        if flag in RESERVED:
            flag = _RENAME.get(flag, f"{name}-{flag}")
        params.append(Param(p.name, flag, typed[0], p.default, typed[1]))
    flags = [p.flag for p in params]
    if len(set(flags)) != len(flags):
        return None
    return Named(name, cls, tuple(params))


@lru_cache(maxsize=None)
def named_schedules() -> dict[str, Named]:
    """``{"warmup-cosine": Named(...), ...}`` in the order of ``schedules.__all__``."""
    out: dict[str, Named] = {}
    for attr in schedules.__all__:
        obj = getattr(schedules, attr)
        if not attr.islower() or not isinstance(obj, type) or not issubclass(obj, Schedule):
            continue
        name = attr.replace("_", "-")
        named = _describe(name, obj)
        if named is not None:
            out[name] = named
    return out


def usage_line(named: Named) -> str:
    """``--peak FLOAT --warmup-steps INT [--final FLOAT=0.0] ...``"""
    parts = []
    for p in named.params:
        if p.type == "bool":
            parts.append(f"[--{p.flag}]")
        elif p.required:
            parts.append(f"--{p.flag} {p.type.upper()}")
        else:
            parts.append(f"[--{p.flag} {p.default!r}]")
    return " ".join(parts)
