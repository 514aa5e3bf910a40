"""The precision-aware state options, checked: ``exp_avg_dtype``, ``exp_avg_sq_dtype``,
``store_param_remainders``, ``rounding``, ``seed`` (``npadam.reference.precision`` is the contract).

Dtypes may be given as names (``"float32"``/``"fp32"``, ``"bfloat16"``/``"bf16"``,
``"float16"``/``"fp16"``/``"half"``), NumPy / ml_dtypes dtypes or torch dtypes (recognised by
name: torch is never imported here).
"""

from __future__ import annotations

import numbers
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _validate as V
from .reference import precision as prec

_NAMES = {"float32": prec.F32, "fp32": prec.F32, "float": prec.F32, "bfloat16": prec.BF16, "bf16": prec.BF16,
          "float16": prec.F16, "fp16": prec.F16, "half": prec.F16, "float8_e4m3fn": prec.F8E4M3,
          "fp8_e4m3": prec.F8E4M3, "e4m3": prec.F8E4M3, "float8_e5m2": prec.F8E5M2, "fp8_e5m2": prec.F8E5M2,
          "e5m2": prec.F8E5M2}
#: the storage dtype of a state entry of each kind, as state dicts hold it
STATE_DTYPES = dict(prec.KIND_NAMES)


def kind_of(name: str, value: Any) -> int:
    """The storage kind (``reference.precision.F32/BF16/F16``) of a dtype option; ValueError/TypeError
    naming the option and the value."""
    if isinstance(value, str):
        key = value.lower()
    elif type(value).__module__.startswith("torch") or isinstance(value, (np.dtype, type)):
        try:
            key = str(value).replace("torch.", "") if type(value).__module__.startswith("torch") \
                else np.dtype(value).name
        except TypeError:
            raise TypeError(f"{name} must be a dtype or its name, got {value!r}") from None
    else:
        raise TypeError(f"{name} must be a dtype or its name ('float32', 'bfloat16', 'float16'), got {value!r}")
    if key in _NAMES:
        return _NAMES[key]
    raise ValueError(f"{name} must be float32, bfloat16, float16, float8_e4m3fn or float8_e5m2, got {value!r}"
                     + (" (fp8 needs its format: float8_e4m3fn or float8_e5m2)" if "8" in key else ""))


@dataclass(frozen=True)
class StatePrecision:
    """How Adam's state is stored: the kinds of ``exp_avg`` and of ``exp_avg_sq``/``max_exp_avg_sq``,
    the rounding of bf16 moments, ``remainders`` (bf16 params keep an int16 remainder instead of an
    fp32 master) and the ``seed`` of stochastic rounding."""

    m_kind: int = prec.F32
    v_kind: int = prec.F32
    rounding: str = "nearest"
    remainders: bool = False
    seed: int = 0
    w_kind: int = prec.F32  # the masters of bf16 params (main_params_dtype)

    @property
    def stochastic(self) -> bool:
        return self.rounding == "stochastic" and prec.BF16 in (self.m_kind, self.v_kind)

    @property
    def fp8(self) -> bool:
        return self.m_kind in prec.FP8 or self.v_kind in prec.FP8

    @property
    def align(self) -> int:
        """The layout alignment (elements): fp8 state is scaled per block, which must not span tensors."""
        return prec.FP8_BLOCK if self.fp8 else 64

    @property
    def default(self) -> bool:
        return self.m_kind == self.v_kind == self.w_kind == prec.F32 and not self.remainders

    def describe(self) -> dict[str, Any]:
        """The JSON-able summary state dicts carry (``npadam.state_precision``)."""
        return {"exp_avg_dtype": STATE_DTYPES[self.m_kind], "exp_avg_sq_dtype": STATE_DTYPES[self.v_kind],
                "rounding": self.rounding, "store_param_remainders": self.remainders, "seed": self.seed,
                "main_params_dtype": STATE_DTYPES[self.w_kind]}


def state_precision(exp_avg_dtype: Any, exp_avg_sq_dtype: Any, store_param_remainders: Any, rounding: Any,
                    seed: Any, algorithm: str, main_params_dtype: Any = "float32") -> StatePrecision:
    """Check the options (see the module docstring); ValueError/TypeError naming the bad value.
    ``main_params_dtype``: float32, or float16 masters for bf16 params (Megatron's name)."""
    m = kind_of("exp_avg_dtype", exp_avg_dtype)
    v = kind_of("exp_avg_sq_dtype", exp_avg_sq_dtype)
    w = kind_of("main_params_dtype", main_params_dtype)
    if w not in (prec.F32, prec.F16):
        raise ValueError(f"main_params_dtype must be float32 or float16, got {main_params_dtype!r}")
    if w == prec.F16 and store_param_remainders is True:
        raise ValueError("main_params_dtype=float16 and store_param_remainders=True exclude each other: remainders "
                         "replace the master of bf16 params")
    V.flag("store_param_remainders", store_param_remainders)
    if rounding not in prec.ROUNDINGS:
        raise ValueError(f"rounding must be one of {', '.join(map(repr, prec.ROUNDINGS))}, got {rounding!r}")
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= int(seed) < 2**64:
        raise ValueError(f"seed must be an integer in [0, 2**64), got {seed!r}")
    if rounding == "stochastic" and prec.BF16 not in (m, v):
        raise ValueError(f"rounding='stochastic' rounds bfloat16 moments; exp_avg_dtype is {STATE_DTYPES[m]} and "
                         f"exp_avg_sq_dtype {STATE_DTYPES[v]} (float16 and float32 state round to nearest)")
    out = StatePrecision(m, v, rounding, bool(store_param_remainders), int(seed), w)
    if algorithm != "adam" and not out.default:
        raise ValueError("exp_avg_dtype / exp_avg_sq_dtype / store_param_remainders are options of Adam and AdamW "
                         "in this version of npadam (SGD keeps float32 state)")
    return out
