"""μP (maximal update parametrization) learning-rate and weight-decay scaling for Adam/AdamW.

A dimension is *infinite* when it grows with the width (it differs between the base
model and the target model). ``m`` is the fan-in width multiplier
(``fan_in / base_fan_in``). Two conventions:

- ``convention="mup"`` (the default): what the ``mup`` package's ``MuAdam``/``MuAdamW``
  do. Matrix-like parameters (fan-in and fan-out both infinite: **hidden**) get lr ×
  ``1/m`` **and weight decay × m** (so the decoupled decay ``lr · wd`` does not shrink
  with width; ``decoupled_wd=True`` leaves the weight decay alone, for a decay that is
  not multiplied by the lr).
  Everything else (vector-like: at most one infinite dimension: biases, norms, input
  embeddings of any orientation, and the readout, whose logits ``MuReadout``
  multiplies by ``1/m``) keeps lr × 1. Tested group by group against ``mup.MuAdamW``.
- ``convention="tp5"``: Tensor Programs V, table 3, Adam column, scaling the lr only:
  **hidden** × ``1/m``, **vector** × 1, **output** (only the fan-in infinite) × ``1/m``
  with ``readout="lr"`` or × 1 with ``readout="multiplier"``. By shape a torch
  ``Embedding`` weight ``(vocab, d)`` looks like a readout here: name it in
  ``overrides={"embed.weight": "vector"}``. Weight decay is not rescaled.

Weight shapes follow torch's Linear/Conv: ``(fan_out, fan_in, *kernel)``; a 1-D
tensor is vector-like. A float lr is divided by ``m`` (as mup does, bit for bit); a
Schedule is multiplied by ``1/m``.
"""

from __future__ import annotations

from typing import Any, Mapping, Sequence

from .. import _validate as V
from ._base import Schedule
from ._blocks import Multiply

KINDS = ("hidden", "vector", "output")


def width_multiplier(base_width: int, width: int) -> float:
    """``width / base_width`` (both positive integers)."""
    return V.integer("width", width, lo=1) / V.integer("base_width", base_width, lo=1)


def lr_multiplier(kind: str, width_mult: float, readout: str = "lr") -> float:
    """The Adam lr multiplier for a parameter of ``kind`` at width multiplier ``width_mult``."""
    V.choice("kind", kind, KINDS)
    V.choice("readout", readout, ("lr", "multiplier"))
    m = V.real("width_mult", width_mult, lo=0.0, lo_open=True)
    if kind == "hidden" or (kind == "output" and readout == "lr"):
        return 1.0 / m
    return 1.0


def classify(shape: Sequence[int], base_shape: Sequence[int]) -> tuple[str, float]:
    """Return ``(kind, fan_in multiplier)`` for a parameter from its shape and base shape."""
    shape, base_shape = tuple(int(s) for s in shape), tuple(int(s) for s in base_shape)
    if len(shape) != len(base_shape):
        raise ValueError(f"shape {shape} and base shape {base_shape} have different ranks")
    if len(shape) < 2:
        return "vector", 1.0
    fan_out_inf, fan_in_inf = shape[0] != base_shape[0], shape[1] != base_shape[1]
    if any(a != b for a, b in zip(shape[2:], base_shape[2:])):
        raise ValueError(f"kernel dims must not scale with width: shape {shape}, base shape {base_shape}")
    fan_in_mult = shape[1] / base_shape[1]
    if fan_in_inf and fan_out_inf:
        return "hidden", fan_in_mult
    if fan_in_inf:
        return "output", fan_in_mult
    return "vector", 1.0


def mup_param_groups(shapes: Mapping[str, Sequence[int]], base_shapes: Mapping[str, Sequence[int]],
                     lr: float | Schedule, readout: str | None = None, overrides: Mapping[str, str] | None = None,
                     convention: str = "mup", decoupled_wd: bool = False, **group_options: Any) -> list[dict[str, Any]]:
    """Torch-style parameter groups with μP multipliers, one group per distinct multiplier.

    ``shapes`` maps parameter names to their shapes in the target model and
    ``base_shapes`` to those in the base (proxy) model; ``overrides`` maps names to a
    kind (``hidden``, ``vector``, ``output``) where the shape alone is ambiguous. Each
    group is ``{"params": [names], "lr": ..., "mup": kind, **group_options}``; under
    ``convention="mup"`` a ``weight_decay`` in ``group_options`` is multiplied by ``m`` for
    hidden groups (unless ``decoupled_wd``). See the module docstring for the conventions.

    >>> g = mup_param_groups({"w": (1024, 1024), "b": (1024,)}, {"w": (256, 256), "b": (256,)},
    ...                      lr=1e-2, weight_decay=0.1)
    >>> [(x["mup"], x["params"], x["lr"], x["weight_decay"]) for x in g]
    [('hidden', ['w'], 0.0025, 0.4), ('vector', ['b'], 0.01, 0.1)]
    """
    V.choice("convention", convention, ("mup", "tp5"))
    if convention == "mup":
        if readout not in (None, "multiplier"):
            raise ValueError(f"readout={readout!r} belongs to convention='tp5'; the mup package's readout "
                             "(MuReadout) multiplies the logits instead: readout='multiplier'")
        readout = "multiplier"
    else:
        readout = "lr" if readout is None else readout
    if not isinstance(decoupled_wd, bool):
        raise TypeError(f"decoupled_wd must be a bool, got {decoupled_wd!r}")
    missing = sorted(set(shapes) ^ set(base_shapes))
    if missing:
        raise ValueError(f"parameters present in only one of shapes / base_shapes: {missing}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(shapes))
    if unknown:
        raise ValueError(f"overrides name parameters that are not in shapes: {unknown}")
    if not isinstance(lr, Schedule):
        lr = V.real("lr", lr)
    wd = group_options.get("weight_decay")
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for name, shape in shapes.items():
        kind, m = classify(shape, base_shapes[name])
        if name in overrides:
            kind = V.choice(f"overrides[{name!r}]", overrides[name], KINDS)
        mult = lr_multiplier(kind, m, readout) if kind != "vector" else 1.0
        key = (kind, mult)
        if key not in groups:
            div = m if mult != 1.0 else 1.0  # the width multiplier the lr is divided by (1: not scaled)
            group_lr = Multiply(lr, mult) if isinstance(lr, Schedule) else (lr / div if div != 1.0 else lr)
            g = {"params": [], "lr": group_lr, "mup": kind, **group_options}
            if convention == "mup" and kind == "hidden" and wd is not None and not decoupled_wd:
                g["weight_decay"] = Multiply(wd, div) if isinstance(wd, Schedule) else V.real("weight_decay", wd) * div
            groups[key] = g
        groups[key]["params"].append(name)
    return list(groups.values())
