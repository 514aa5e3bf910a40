"""Framework offload keys → npadam's memory-tier options (re-exported by ``npadam.config``).

``offload_kwargs(optimizer_config)`` maps Megatron's ``OptimizerConfig`` offload fields and
``deepspeed_offload_kwargs(ds_config)`` DeepSpeed's ``zero_optimization.offload_optimizer`` to
the keyword options of ``npadam.AdamW/Adam/SGD`` and ``npadam.torch.AdamW/Adam/SGD``:

- ``offload_fraction`` (0..1): the share of the optimizer state of GPU params kept in host
  memory (and stepped there); no effect for host params.
- ``pin_memory``: host state and the staging of GPU params in pinned memory.
- ``nvme_offload_fraction`` / ``nvme_offload_dir`` / ``nvme_staging_bytes``: the share of the
  host-side state kept in files (for host params: of all state), where, and the host bytes
  that stream it.

Both return ``{}`` when the config offloads nothing (npadam's defaults then apply), and raise
ValueError/TypeError naming the config key and its value for anything the framework rejects
(or fails on when it builds its optimizer). Conventions and what each framework does with
these keys (verified against megatron-core 0.16.1, Megatron-LM ``core_v0.16.1`` and DeepSpeed
0.19.8) are in ``docs/TIERS.md`` ("Framework config keys").

>>> from npadam import config
>>> config.offload_kwargs(config.OptimizerConfig(lr=1e-3, optimizer_cpu_offload=True,
...                                              optimizer_offload_fraction=0.5, pin_cpu_grads=False))
{'offload_fraction': 0.5, 'pin_memory': False}
>>> config.deepspeed_offload_kwargs({"zero_optimization": {"stage": 3,
...     "offload_optimizer": {"device": "cpu", "ratio": 0.3}}})
{'offload_fraction': 0.3, 'pin_memory': True}
"""

from __future__ import annotations

import math
import numbers
import os
import pathlib
import re
from typing import Any, Mapping

import numpy as np

# ---------------------------------------------------------------------- Megatron


def check_megatron_offload(oc: Any) -> None:
    """The offload checks of ``OptimizerConfig.validate`` (its field types are already checked).

    - ``use_torch_optimizer_for_cpu_offload=True``: ValueError (npadam steps offloaded state
      with its own CPU kernel, bit-identical to its GPU one; it never runs ``torch.optim``).
    - ``optimizer_cpu_offload=True`` with ``decoupled_weight_decay=False``: ValueError, as
      megatron-core's ``_get_megatron_optimizer_based_on_param_groups`` asserts.
    """
    if oc.use_torch_optimizer_for_cpu_offload:
        raise ValueError("use_torch_optimizer_for_cpu_offload=True asks for torch.optim to step the offloaded "
                         "state; npadam steps it with its own CPU kernel (bit-identical to the GPU one) and has no "
                         "torch.optim path: leave use_torch_optimizer_for_cpu_offload at False")
    if oc.optimizer_cpu_offload and not oc.decoupled_weight_decay:
        raise ValueError("optimizer_cpu_offload=True with decoupled_weight_decay=False: megatron-core asserts 'CPU "
                         "offloading only supported with decoupled_weight_decay enabled (AdamW mode).'")


def offload_kwargs(optimizer_config: Any) -> dict[str, Any]:
    """npadam's options for a Megatron ``OptimizerConfig`` (validated again first).

    ``optimizer_cpu_offload=False``: ``{}`` (Megatron then ignores the other offload fields).
    ``optimizer_cpu_offload=True``: ``{"offload_fraction": optimizer_offload_fraction,
    "pin_memory": pin_cpu_grads and pin_cpu_params}``. Megatron's fraction is the share of the
    GPU params' elements whose optimizer (state and step) runs on the CPU, taken as whole params
    in group order until the share is reached; npadam takes the same share of each flat buffer's
    elements (exact, not rounded up to whole params). npadam pins host state and staging
    together, so it pins only when both ``pin_cpu_*`` are true. ``overlap_cpu_optimizer_d2h_h2d``
    changes nothing: npadam always overlaps its transfers with the CPU step.
    """
    from .config import OptimizerConfig

    if not isinstance(optimizer_config, OptimizerConfig):
        raise TypeError(f"optimizer_config must be a npadam.config.OptimizerConfig, got "
                        f"{type(optimizer_config).__name__}")
    oc = optimizer_config
    oc.validate()
    if not oc.optimizer_cpu_offload:
        return {}
    return {"offload_fraction": float(oc.optimizer_offload_fraction),
            "pin_memory": bool(oc.pin_cpu_grads and oc.pin_cpu_params)}


def _sources(oc: Any) -> dict[str, tuple[str, bool]]:
    """For each key ``offload_kwargs`` gives: the config fields it comes from (as text) and whether
    they say more than Megatron's defaults (a caller's kwarg may differ only from defaults)."""
    pins = f"pin_cpu_grads={oc.pin_cpu_grads}, pin_cpu_params={oc.pin_cpu_params}"
    return {"offload_fraction": (f"optimizer_cpu_offload=True, optimizer_offload_fraction="
                                 f"{oc.optimizer_offload_fraction}", True),
            "pin_memory": (pins, not (oc.pin_cpu_grads and oc.pin_cpu_params))}


def merge_kwargs(optimizer_config: Any, optimizer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``offload_kwargs(optimizer_config)`` merged with the caller's ``optimizer_kwargs`` (what
    ``config.build`` passes to the optimizer).

    A caller's kwarg wins over a value the config only has by default (``pin_memory`` with both
    ``pin_cpu_*`` true) and over keys the config does not set; a caller's kwarg that differs from
    a value the config sets (``offload_fraction`` with ``optimizer_cpu_offload``, ``pin_memory``
    with a ``pin_cpu_*`` false), or ``gpu_state_bytes`` beside the config's
    ``optimizer_offload_fraction`` > 0 (npadam takes one or the other), is a ValueError naming both.
    """
    ours = offload_kwargs(optimizer_config)
    theirs = dict(optimizer_kwargs)
    sources = _sources(optimizer_config)
    for key, value in ours.items():
        if key not in theirs or theirs[key] == value:
            continue
        where, explicit = sources[key]
        if explicit:
            raise ValueError(f"{key}={theirs[key]!r} (an optimizer kwarg) conflicts with the config's {where} "
                             f"(which gives {key}={value!r}); drop one of them")
    if ours.get("offload_fraction", 0.0) > 0 and theirs.get("gpu_state_bytes") is not None:
        raise ValueError(f"gpu_state_bytes={theirs['gpu_state_bytes']!r} (an optimizer kwarg) conflicts with the "
                         f"config's optimizer_offload_fraction={ours['offload_fraction']}: give a GPU budget or a "
                         "fraction, not both")
    return {**ours, **theirs}


# ---------------------------------------------------------------------- DeepSpeed

#: DeepSpeed 0.19.8's ``DeepSpeedZeroOffloadOptimizerConfig`` fields and defaults (its model forbids others)
DS_OFFLOAD_OPTIMIZER_DEFAULTS: dict[str, Any] = {
    "device": "none", "nvme_path": None, "buffer_count": 4, "pin_memory": True, "pipeline_read": False,
    "pipeline_write": False, "fast_init": False, "ratio": 1.0, "super_offload": False, "cpuadam_cores_perc": 0.8}
#: ``DeepSpeedZeroConfig.sub_group_size``'s default (``pp_int(1e9)``)
DS_SUB_GROUP_SIZE = 10**9
_DEVICES = ("none", "cpu", "nvme")
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})  # pydantic's lax bool strings (case-insensitive)
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})
_INT_FLOAT_TEXT = re.compile(r"[+-]?\d[\d_]*\.0*")  # "4.0": an int to pydantic; "1e3" is not
#: npadam's least ``nvme_staging_bytes``
MIN_STAGING_BYTES = 1 << 16
_HERE = "zero_optimization.offload_optimizer"


def _drop_auto(d: Mapping[str, Any]) -> dict[str, Any]:
    """DeepSpeed's config models (``strict=False``) drop every value ``"auto"``: the default applies."""
    return {str(k): v for k, v in d.items() if not (isinstance(v, str) and v == "auto")}


def _ds_bool(name: str, value: Any) -> bool:
    """A bool as DeepSpeed's pydantic model reads it: bools, 0/1 (int or float), and the strings
    ``true/false, yes/no, on/off, t/f, y/n, 1/0`` in any case."""
    if isinstance(value, (bool, np.bool_)):
        return bool(value)
    if isinstance(value, numbers.Real) and value in (0, 1):
        return bool(value)
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise (ValueError if isinstance(value, (numbers.Real, str)) else TypeError)(
        f"{name} must be true or false, got {value!r}")


def _ds_int(name: str, value: Any, *, lo: int) -> int:
    """An int as DeepSpeed's pydantic model reads it: ints, bools, integral finite floats, and
    integer text (``" 4"``, ``"1_000"``, ``"4.0"``; not ``"1e3"``); then ``>= lo``."""
    v: int | None = None
    if isinstance(value, (bool, np.bool_, numbers.Integral)):
        v = int(value)
    elif isinstance(value, numbers.Real):
        if not math.isfinite(value):
            raise ValueError(f"{name} must be a finite number, got {value!r}")
        if float(value).is_integer():
            v = int(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            v = int(text)
        except ValueError:
            if _INT_FLOAT_TEXT.fullmatch(text):
                v = int(float(text.replace("_", "")))
    else:
        raise TypeError(f"{name} must be an integer, got {value!r}")
    if v is None:
        raise ValueError(f"{name} must be an integer, got {value!r}")
    if v < lo:
        raise ValueError(f"{name} must be >= {lo}, got {value!r}")
    return v


def _ds_real(name: str, value: Any, *, lo: float, hi: float) -> float:
    """A float as DeepSpeed's pydantic model reads it (numbers, bools, number text), in
    ``[lo, hi]`` (NaN is outside)."""
    if isinstance(value, (bool, np.bool_, numbers.Real)):
        v = float(value)
    elif isinstance(value, str):
        try:
            v = float(value.strip())
        except ValueError:
            raise ValueError(f"{name} must be a number, got {value!r}") from None
    else:
        raise TypeError(f"{name} must be a number, got {value!r}")
    if not lo <= v <= hi:
        raise ValueError(f"{name} must be in [{lo:g}, {hi:g}], got {value!r}")
    return v + 0.0  # -0.0 -> 0.0


def _ds_path(name: str, value: Any) -> str | None:
    if value is None:
        return None
    if not isinstance(value, (str, os.PathLike)) or isinstance(os.fspath(value), bytes):
        raise TypeError(f"{name} must be a path, got {value!r}")
    return str(pathlib.Path(value))


def _offload_optimizer(section: Any) -> dict[str, Any]:
    """``offload_optimizer`` checked and parsed as ``DeepSpeedZeroOffloadOptimizerConfig`` parses
    it: every field with its default filled in."""
    if not isinstance(section, Mapping):
        raise TypeError(f"{_HERE} must be a mapping (DeepSpeedZeroOffloadOptimizerConfig), got {section!r}")
    given = _drop_auto(section)
    unknown = sorted(set(given) - set(DS_OFFLOAD_OPTIMIZER_DEFAULTS))
    if unknown:
        hint = (" (buffer_size belongs to offload_param: DeepSpeed sizes the optimizer's NVMe swap buffers by "
                "its largest sub-group)" if unknown[0] == "buffer_size" else "")
        raise ValueError(f"{_HERE}.{unknown[0]}={given[unknown[0]]!r}: unknown key (DeepSpeed's "
                         f"DeepSpeedZeroOffloadOptimizerConfig forbids extra fields; its keys are "
                         f"{', '.join(DS_OFFLOAD_OPTIMIZER_DEFAULTS)}){hint}")
    d = {**DS_OFFLOAD_OPTIMIZER_DEFAULTS, **given}
    if not (isinstance(d["device"], str) and d["device"] in _DEVICES):
        raise ValueError(f"{_HERE}.device must be 'none', 'cpu' or 'nvme', got {d['device']!r}")
    d["nvme_path"] = _ds_path(f"{_HERE}.nvme_path", d["nvme_path"])
    d["buffer_count"] = _ds_int(f"{_HERE}.buffer_count", d["buffer_count"], lo=0)
    for key in ("pin_memory", "pipeline_read", "pipeline_write", "fast_init", "super_offload"):
        d[key] = _ds_bool(f"{_HERE}.{key}", d[key])
    for key in ("ratio", "cpuadam_cores_perc"):
        d[key] = _ds_real(f"{_HERE}.{key}", d[key], lo=0.0, hi=1.0)
    return d


def deepspeed_offload_kwargs(ds_config: Mapping[str, Any]) -> dict[str, Any]:
    """npadam's options for a whole DeepSpeed config's ``zero_optimization.offload_optimizer``.

    Checked as DeepSpeed 0.19.8 checks it (``DeepSpeedZeroConfig`` and
    ``DeepSpeedZeroOffloadOptimizerConfig``): unknown keys of ``offload_optimizer``, ``device``
    other than ``"none"``/``"cpu"``/``"nvme"``, ``ratio`` or ``cpuadam_cores_perc`` outside [0, 1],
    ``buffer_count`` < 0, ``ratio`` < 1 below stage 3 ("Partial offloading only supported for ZeRO
    Stage 3."), ``stage`` outside 0..3, the deprecated ``cpu_offload`` beside ``offload_optimizer``;
    values read leniently as pydantic reads them (``"true"``, ``"4"``), ``"auto"`` meaning the
    default. Also refused, where DeepSpeed fails later: offload at stage 0 (no ZeRO optimizer, so
    nothing is offloaded and its CPU Adam refuses GPU params), ``"nvme"`` without ``nvme_path``
    (npadam needs the directory at any stage) or at stage 3 with ``buffer_count`` 0. The rest of
    ``zero_optimization`` is not checked here.

    Mapping (``{}`` for device ``"none"``, no ``offload_optimizer``, ``cpu_offload`` false):

    - ``"cpu"``: ``offload_fraction = ratio`` (DeepSpeed: the share of the sub-groups whose fp32
      state and step are on the CPU), ``pin_memory = pin_memory``.
    - ``"nvme"``: the same plus ``nvme_offload_fraction = 1.0`` (all offloaded state in files),
      ``nvme_offload_dir = nvme_path`` and ``nvme_staging_bytes = max(64 KiB, buffer_count *
      sub_group_size * 4)``: DeepSpeed's pinned swap buffers, ``buffer_count`` of them, each the
      largest sub-group of fp32 elements (``sub_group_size``, default 1e9, unless one param's
      partition is larger).
    - ``cpu_offload: true`` (deprecated, still read by 0.19.8): ``"cpu"`` with the defaults.

    ``pipeline_read``/``pipeline_write`` (npadam always reads ahead and writes behind),
    ``fast_init``, ``super_offload`` and ``cpuadam_cores_perc`` are checked and change nothing.
    """
    if not isinstance(ds_config, Mapping):
        raise TypeError(f"ds_config must be a DeepSpeed config mapping, got {type(ds_config).__name__}")
    zero = ds_config.get("zero_optimization")
    if zero is None or isinstance(zero, (bool, np.bool_)):  # absent, or the legacy true/false: no offload
        return {}
    if not isinstance(zero, Mapping):
        raise TypeError(f"zero_optimization must be a mapping (or the legacy true/false), got {zero!r}")
    zero = _drop_auto(zero)
    stage = _ds_int("zero_optimization.stage", zero.get("stage", 0), lo=0)
    if stage > 3:
        raise ValueError(f"zero_optimization.stage must be 0, 1, 2 or 3, got {zero['stage']!r}")
    sub_group = _ds_int("zero_optimization.sub_group_size", zero.get("sub_group_size", DS_SUB_GROUP_SIZE), lo=0)
    section = zero.get("offload_optimizer")
    opt = None if section is None else _offload_optimizer(section)
    if opt is not None and opt["ratio"] < 1.0 and stage != 3:
        raise ValueError(f"{_HERE}.ratio={opt['ratio']} needs zero_optimization.stage 3, got stage {stage} "
                         "(DeepSpeed: 'Partial offloading only supported for ZeRO Stage 3.')")
    if "cpu_offload" in zero:
        if "offload_optimizer" in zero:
            raise ValueError("zero_optimization.cpu_offload and zero_optimization.offload_optimizer are both given "
                             "(DeepSpeed: \"Cannot provide deprecated parameter 'cpu_offload' and replacing "
                             "parameter 'offload_optimizer' together\"); keep offload_optimizer")
        cpu = zero["cpu_offload"]
        if cpu is not None and _ds_bool("zero_optimization.cpu_offload", cpu):
            opt = {**DS_OFFLOAD_OPTIMIZER_DEFAULTS, "device": "cpu"}
    if opt is None or opt["device"] == "none":
        return {}
    where = "zero_optimization.cpu_offload" if "cpu_offload" in zero else f"{_HERE}.device"
    if stage == 0:
        raise ValueError(f"{where}={'true' if where.endswith('cpu_offload') else repr(opt['device'])} needs "
                         "zero_optimization.stage 1, 2 or 3, got stage 0: DeepSpeed offloads optimizer state only "
                         "through its ZeRO optimizer, which stage 0 does not build (its CPU Adam then refuses GPU "
                         "params)")
    out: dict[str, Any] = {"offload_fraction": opt["ratio"], "pin_memory": opt["pin_memory"]}
    if opt["device"] == "nvme":
        if opt["nvme_path"] is None:
            raise ValueError(f"{_HERE}.device='nvme' needs {_HERE}.nvme_path (the directory for the state files; "
                             "DeepSpeed fails building its swapper without it)")
        if opt["buffer_count"] < 1 and stage == 3:
            raise ValueError(f"{_HERE}.buffer_count=0 with device 'nvme' at stage 3: DeepSpeed's swap buffer "
                             "manager needs at least one buffer (it fails building the swapper)")
        out.update(nvme_offload_fraction=1.0, nvme_offload_dir=opt["nvme_path"],
                   nvme_staging_bytes=max(MIN_STAGING_BYTES, opt["buffer_count"] * sub_group * 4))
    return out
