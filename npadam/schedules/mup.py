"""μP (maximal update parametrization) learning-rate scaling for Adam/AdamW.

Conventions (Tensor Programs V, table 3, Adam column; what Megatron and the
``mup`` package implement): a dimension is *infinite* when it grows with the width
(it differs between the base model and the target model). With ``m`` the
fan-in width multiplier (``fan_in / base_fan_in``):

- **hidden** (matrix-like: fan-in and fan-out both infinite): lr × ``1/m``
- **vector** (vector-like: biases, norms, input embeddings; at most the fan-out
  is infinite): lr × 1
- **output** (only the fan-in is infinite, the readout): lr × ``1/m`` with
  ``readout="lr"`` (TP5's table), or lr × 1 with ``readout="multiplier"`` (the
  ``mup`` package's MuReadout, which instead multiplies the logits by ``1/m``).

Weight shapes follow torch's Linear/Conv: ``(fan_out, fan_in, *kernel)``; a 1-D
tensor is vector-like. A torch ``Embedding`` weight is stored ``(vocab, d)``, which
by shape looks like a readout: name it in ``overrides={"embed.weight": "vector"}``. Weight decay is not rescaled (decoupled AdamW decay is already
multiplied by the per-group lr, so it follows the lr scaling).
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
                     lr: float | Schedule, readout: str = "lr", overrides: Mapping[str, str] | None = None,
                     **group_options: Any) -> list[dict[str, Any]]:
    """Torch-style parameter groups with μP lr multipliers, one group per distinct multiplier.

    ``shapes`` maps parameter names to their shapes in the target model and
    ``base_shapes`` to those in the base (proxy) model; ``overrides`` maps names to a
    kind where the shape alone is ambiguous (embeddings). Each group is
    ``{"params": [names], "lr": lr × multiplier, "mup": kind, **group_options}``;
    a Schedule ``lr`` becomes ``Multiply(lr, multiplier)``.

    >>> g = mup_param_groups({"w": (1024, 1024), "b": (1024,)}, {"w": (256, 256), "b": (256,)}, lr=1e-2)
    >>> [(x["mup"], x["params"], x["lr"]) for x in g]
    [('hidden', ['w'], 0.0025), ('vector', ['b'], 0.01)]
    """
    missing = sorted(set(shapes) ^ set(base_shapes))
    if missing:
        raise ValueError(f"parameters present in only one of shapes / base_shapes: {missing}")
    overrides = dict(overrides or {})
    unknown = sorted(set(overrides) - set(shapes))
    if unknown:
        raise ValueError(f"overrides name parameters that are not in shapes: {unknown}")
    groups: dict[tuple[str, float], dict[str, Any]] = {}
    for name, shape in shapes.items():
        kind, m = classify(shape, base_shapes[name])
        if name in overrides:
            kind = V.choice(f"overrides[{name!r}]", overrides[name], KINDS)
        mult = lr_multiplier(kind, m, readout) if kind != "vector" else 1.0
        key = (kind, mult)
        if key not in groups:
            group_lr = Multiply(lr, mult) if isinstance(lr, Schedule) else V.real("lr", lr) * mult
            groups[key] = {"params": [], "lr": group_lr, "mup": kind, **group_options}
        groups[key]["params"].append(name)
    return list(groups.values())
