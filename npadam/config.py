"""Megatron-style configs: ``OptimizerConfig`` and ``SchedulerConfig`` → optimizer + schedules.

``OptimizerConfig`` has exactly the fields of ``megatron.core.optimizer.OptimizerConfig``
(names and defaults; dtypes as names such as ``"float32"``); ``SchedulerConfig`` has
Megatron-Bridge's ``SchedulerConfig`` fields plus the training arguments the schedule
needs (``train_iters`` / ``train_samples``, ``global_batch_size``, ``rampup_batch_size``). Both are
validated when built: every invalid value or combination is a ValueError/TypeError
naming the field. Fields that belong to features npadam does not have yet
(``use_distributed_optimizer``, ``fp8_recipe``, ...) are accepted at their defaults and
rejected with a clear message otherwise. The precision-aware optimizer fields
(``use_precision_aware_optimizer``, ``exp_avg_dtype``, ``exp_avg_sq_dtype``,
``main_params_dtype``, ``main_grads_dtype``, ``store_param_remainders``) are validated as
megatron-core validates them and become npadam's state-precision options
(``precision_kwargs``; ``build`` passes them). The CPU-offload fields (``optimizer_cpu_offload``, ``optimizer_offload_fraction``,
``pin_cpu_grads``, ``pin_cpu_params``, ``overlap_cpu_optimizer_d2h_h2d``) become npadam's
memory-tier options (``offload_kwargs``; ``build`` passes them); ``deepspeed_offload_kwargs``
does the same for a DeepSpeed config's ``zero_optimization.offload_optimizer``.

Sources: ``load(path_or_mapping)`` reads YAML, JSON or TOML (a flat mapping, or
sections ``optimizer``, ``scheduler`` and ``train`` as in Megatron-Bridge YAML);
``from_args(["--lr", "3e-4", "--bf16", ...])`` reads Megatron-LM argument lists.
``param_groups(params, opt_cfg)`` makes Megatron's param groups (no weight decay for
biases and 1-D params, ``decoupled_lr`` for the embedding/output params; megatron-core's
``_get_param_groups``), ``schedules_for(opt_cfg, sched_cfg, groups)`` their schedules, and
``build(params, opt_cfg, sched_cfg)`` the optimizer with both.

>>> import numpy as np
>>> from npadam import config
>>> opt_cfg, sched_cfg = config.load({"lr": 1e-3, "min_lr": 1e-5, "clip_grad": 1.0,
...     "lr_decay_style": "cosine", "lr_warmup_iters": 10, "train_iters": 100})
>>> built = config.build({"w": np.zeros((4, 4), np.float32), "b": np.zeros(4, np.float32)},
...                      opt_cfg, sched_cfg)
>>> type(built.optimizer).__name__, [len(g["names"]) for g in built.optimizer.param_groups]
('AdamW', [1, 1])
>>> sched_cfg.steps()["lr_warmup_steps"], float(built.schedules.lr(10))
(10, 0.001)
"""

from __future__ import annotations

import dataclasses
import difflib
import os
from dataclasses import dataclass, fields
from typing import Any, Mapping, Sequence

import numpy as np

from . import _validate as V
from ._offload_config import check_megatron_offload, deepspeed_offload_kwargs, offload_kwargs  # noqa: F401

_DTYPES = ("float32", "float16", "bfloat16", "float8_e4m3fn", "float8_e5m2", "uint8", "int8")
#: Megatron-LM's spellings of the dtype arguments (``dtype_map`` in its ``validate_args``: fp8 is torch.uint8)
_SHORT = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16", "fp8": "uint8", "half": "float16",
          "float": "float32"}


def _dtype_name(name: str, value: Any) -> str:
    """A dtype given as a name, NumPy/ml_dtypes dtype or torch dtype, as its name."""
    if isinstance(value, str):
        s = value
    elif type(value).__module__.startswith("torch"):
        s = str(value).replace("torch.", "")
    else:
        try:
            s = np.dtype(value).name
        except TypeError:
            raise TypeError(f"{name} must be a dtype (name, NumPy or torch dtype), got {value!r}") from None
    s = _SHORT.get(s, s)
    if s not in _DTYPES:
        raise ValueError(f"{name} must be one of {', '.join(_DTYPES)}, got {value!r}")
    return s


def _bool(name: str, value: Any) -> bool:
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be true or false, got {value!r}")
    return bool(value)


def _opt_real(name: str, value: Any, **kw: Any) -> float | None:
    return None if value is None else V.real(name, value, **kw)


# ---------------------------------------------------------------------- precision-aware optimizer
#: the moment dtypes of a Megatron config (Transformer Engine's FusedAdam takes float32, float16, bfloat16 and
#: uint8, its fp8 (E4M3 with a scale)) -> npadam's ``exp_avg_dtype`` / ``exp_avg_sq_dtype``; npadam's own fp8
#: names are taken too
MOMENT_DTYPES = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16", "uint8": "float8_e4m3fn",
                 "float8_e4m3fn": "float8_e4m3fn", "float8_e5m2": "float8_e5m2"}
_PRECISION_FIELDS = ("main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype")


def check_megatron_precision(oc: Any) -> None:
    """The precision-aware optimizer checks of ``OptimizerConfig.validate`` (field types and dtype
    names already checked), megatron-core 0.16.1's ``OptimizerConfig.__post_init__`` first:

    - without ``use_precision_aware_optimizer`` each of ``main_grads_dtype``, ``main_params_dtype``,
      ``exp_avg_dtype``, ``exp_avg_sq_dtype`` must be float32 ("... can only be fp32 when not using
      precision-aware optimizer");
    - with it, ``optimizer`` must be ``"adam"`` ("--use-precision-aware-optimizer only supported
      with adam"). megatron-core also asserts ``use_distributed_optimizer``, where its precision-aware
      path lives; npadam's optimizer holds all of the state in one process (the one-rank case of
      the distributed optimizer) and does not require it (``use_distributed_optimizer=True`` itself
      is later work);
    - Transformer Engine's FusedAdam (what megatron-core builds): masters float32 or float16,
      moments float32, float16, bfloat16 or uint8 (fp8).

    Then npadam's own limits: ``main_grads_dtype`` float32 only (npadam reads each gradient in its
    own dtype, there is no main-grad buffer to shrink); ``main_params_dtype="float16"`` needs
    ``bf16`` (npadam's fp16 masters are those of bf16 params; fp16 and fp32 params would not
    change); the options must be ones this npadam has (``npadam._precision.state_precision``)."""
    if oc.use_precision_aware_optimizer:
        if oc.optimizer != "adam":
            raise ValueError(f"use_precision_aware_optimizer=True with optimizer={oc.optimizer!r}: megatron-core "
                             "asserts '--use-precision-aware-optimizer only supported with adam'")
    else:
        for name in _PRECISION_FIELDS:
            if getattr(oc, name) != "float32":
                raise ValueError(f"{name}={getattr(oc, name)!r} without use_precision_aware_optimizer: megatron-core "
                                 f"asserts '{name} can only be fp32 when not using precision-aware optimizer'; set "
                                 "use_precision_aware_optimizer=True")
        return
    if oc.main_params_dtype not in ("float32", "float16"):
        raise ValueError(f"main_params_dtype must be float32 or float16 (Transformer Engine's FusedAdam 'only "
                         f"supports fp32/fp16 master weights'), got {oc.main_params_dtype!r}")
    for name in ("exp_avg_dtype", "exp_avg_sq_dtype"):
        if getattr(oc, name) not in MOMENT_DTYPES:
            raise ValueError(f"{name} must be float32, bfloat16, float16 or fp8 (Megatron's torch.uint8; npadam's "
                             f"float8_e4m3fn / float8_e5m2), got {getattr(oc, name)!r}")
    if oc.main_grads_dtype != "float32":
        raise ValueError(f"main_grads_dtype={oc.main_grads_dtype!r}: npadam reads each gradient in its own dtype "
                         "(float32, bfloat16 or float16) and keeps no main-grad buffer, so there is nothing to store "
                         "in bfloat16: hand it the bf16 grads as they are and leave main_grads_dtype at float32")
    if oc.main_params_dtype == "float16" and not oc.bf16:
        raise ValueError(f"main_params_dtype='float16' gives bf16 params fp16 masters in npadam; with "
                         f"{'fp16' if oc.fp16 else 'fp32'} params (bf16=False) it would change nothing: set bf16=True "
                         "or leave main_params_dtype at float32")
    from ._precision import state_precision

    kw = precision_kwargs(oc, _checked=True)
    state_precision(kw.get("exp_avg_dtype", "float32"), kw.get("exp_avg_sq_dtype", "float32"),
                    kw.get("store_param_remainders", False), "nearest", 0, "adam",
                    kw.get("main_params_dtype", "float32"))


def precision_kwargs(optimizer_config: Any, *, _checked: bool = False) -> dict[str, Any]:
    """npadam's state-precision options for a Megatron ``OptimizerConfig`` (validated again first):
    ``{}`` without ``use_precision_aware_optimizer`` (every dtype is then float32), else those of

    - ``exp_avg_dtype`` / ``exp_avg_sq_dtype``: as given, Megatron's fp8 (``uint8``) as
      ``"float8_e4m3fn"`` (Transformer Engine's format; TE scales per tensor, npadam per block of 256);
    - ``main_params_dtype``: ``"float16"`` when given (the masters of bf16 params);
    - ``store_param_remainders=True`` when ``store_param_remainders`` (Megatron's default) with
      ``bf16`` and float32 masters, where megatron-core keeps int16 remainders (TE: "works only when
      param type is BF16 and master weight type is FP32");

    that differ from npadam's defaults. Rounding is to nearest (TE's); ``rounding="stochastic"``
    and ``seed`` are npadam options a caller may add (``build(..., rounding=...)``).

    >>> from npadam import config
    >>> config.precision_kwargs(config.OptimizerConfig(lr=1e-3, bf16=True, params_dtype="bfloat16",
    ...     use_precision_aware_optimizer=True, exp_avg_dtype="bf16", exp_avg_sq_dtype="bf16"))
    {'exp_avg_dtype': 'bfloat16', 'exp_avg_sq_dtype': 'bfloat16', 'store_param_remainders': True}
    """
    if not isinstance(optimizer_config, OptimizerConfig):
        raise TypeError(f"optimizer_config must be a npadam.config.OptimizerConfig, got "
                        f"{type(optimizer_config).__name__}")
    oc = optimizer_config
    if not _checked:
        oc.validate()
    if not oc.use_precision_aware_optimizer:
        return {}
    out: dict[str, Any] = {}
    for name in ("exp_avg_dtype", "exp_avg_sq_dtype"):
        if MOMENT_DTYPES[getattr(oc, name)] != "float32":
            out[name] = MOMENT_DTYPES[getattr(oc, name)]
    if oc.main_params_dtype != "float32":
        out["main_params_dtype"] = oc.main_params_dtype
    if oc.store_param_remainders and oc.bf16 and oc.main_params_dtype == "float32":
        out["store_param_remainders"] = True
    return out


def merge_precision_kwargs(optimizer_config: Any, optimizer_kwargs: Mapping[str, Any]) -> dict[str, Any]:
    """``precision_kwargs(optimizer_config)`` merged with the caller's ``optimizer_kwargs`` (what
    ``build`` passes), as ``merge_kwargs`` does for the offload keys: a caller's kwarg that differs
    from a dtype the config sets is a ValueError naming both (dtypes compared as npadam reads them:
    ``torch.bfloat16`` equals ``"bf16"``); a caller's ``store_param_remainders`` wins over the
    config's (Megatron's default is True, so it says no more than a default); keys the config does
    not set (``rounding``, ``seed``, or the dtypes without ``use_precision_aware_optimizer``) pass
    through."""
    from ._precision import kind_of

    ours = precision_kwargs(optimizer_config)
    theirs = dict(optimizer_kwargs)
    for key, value in ours.items():
        if key not in theirs or key == "store_param_remainders":
            continue
        try:
            same = kind_of(key, theirs[key]) == kind_of(key, value)
        except (TypeError, ValueError):
            same = False  # the optimizer names the bad value; here it differs from the config's
        if not same:  # npadam's option names are Megatron's field names
            raise ValueError(f"{key}={theirs[key]!r} (an optimizer kwarg) conflicts with the config's "
                             f"use_precision_aware_optimizer=True, {key}={getattr(optimizer_config, key)!r} "
                             f"(which gives {key}={value!r}); drop one of them")
    return {**ours, **theirs}


# Fields of later work: (default, what it needs).
_LATER = {
    "use_distributed_optimizer": (False, "sharding across ranks (npadam.distributed)"),
    "overlap_param_gather": (False, "sharding across ranks (npadam.distributed)"),
    "overlap_param_gather_with_optimizer_step": (False, "sharding across ranks (npadam.distributed)"),
    "fp8_recipe": (None, "FP8 training"),
    "reuse_grad_buf_for_mxfp8_param_ag": (False, "FP8 training"),
}


@dataclass
class OptimizerConfig:
    """``megatron.core.optimizer.OptimizerConfig``, field for field (see the module docstring).

    Units and conventions as in Megatron: ``lr``/``min_lr`` are the peak and final
    learning rates of the schedule; ``weight_decay`` is decoupled (AdamW, multiplied by
    lr) when ``decoupled_weight_decay``; ``clip_grad`` is the global-norm clip (0: none);
    ``loss_scale`` a constant scale, else with ``fp16`` a dynamic one starting at
    ``initial_loss_scale`` (``loss_scale_window`` good steps to grow, ``hysteresis``
    overflows to back off, never below ``min_loss_scale``). With ``optimizer_cpu_offload``,
    ``optimizer_offload_fraction`` (0..1) is the share of the GPU params' optimizer state kept and
    stepped in host memory (``offload_kwargs``); without it the offload fields change nothing.
    With ``use_precision_aware_optimizer``, ``exp_avg_dtype`` / ``exp_avg_sq_dtype`` are the moments'
    storage, ``main_params_dtype`` the masters' of bf16 params, ``store_param_remainders`` (with
    ``bf16`` and fp32 masters) keeps int16 remainders instead of fp32 masters
    (``precision_kwargs``); without it every dtype field must stay float32, as megatron-core
    asserts. Dtypes are stored as names (``"bfloat16"``; Megatron's fp8, ``torch.uint8``, is
    ``"uint8"``), given as names, Megatron-LM's ``fp32``/``bf16``/``fp16``/``fp8``, NumPy or torch
    dtypes.
    """

    lr: float | None = None
    min_lr: float | None = None
    decoupled_lr: float | None = None
    decoupled_min_lr: float | None = None
    weight_decay: float = 0.01
    apply_wd_to_qk_layernorm: bool = False
    fp8_recipe: str | None = None
    fp16: bool = False
    bf16: bool = False
    reuse_grad_buf_for_mxfp8_param_ag: bool = False
    params_dtype: Any = "float32"
    use_precision_aware_optimizer: bool = False
    store_param_remainders: bool = True
    main_grads_dtype: Any = "float32"
    main_params_dtype: Any = "float32"
    exp_avg_dtype: Any = "float32"
    exp_avg_sq_dtype: Any = "float32"
    optimizer: str = "adam"
    loss_scale: float | None = None
    initial_loss_scale: float = 2.0**32
    min_loss_scale: float = 1.0
    loss_scale_window: float = 1000
    hysteresis: int = 2
    adam_beta1: float = 0.9
    adam_beta2: float = 0.999
    adam_eps: float = 1e-8
    decoupled_weight_decay: bool = True
    sgd_momentum: float = 0.9
    muon_momentum: float = 0.95
    muon_split_qkv: bool = True
    muon_use_nesterov: bool = False
    muon_scale_mode: str = "spectral"
    muon_fp32_matmul_prec: str = "medium"
    muon_num_ns_steps: int = 5
    muon_tp_mode: str = "blockwise"
    muon_extra_scale_factor: float = 1.0
    use_distributed_optimizer: bool = False
    overlap_param_gather: bool = False
    overlap_param_gather_with_optimizer_step: bool = False
    optimizer_cpu_offload: bool = False
    optimizer_offload_fraction: float = 0.0
    use_torch_optimizer_for_cpu_offload: bool = False
    overlap_cpu_optimizer_d2h_h2d: bool = False
    pin_cpu_grads: bool = True
    pin_cpu_params: bool = True
    clip_grad: float = 1.0
    log_num_zeros_in_grad: bool = False
    barrier_with_L1_time: bool = False
    timers: Any = None
    config_logger_dir: str = ""

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field and combination; ValueError/TypeError naming the field."""
        if self.lr is None:
            raise ValueError("lr must be set (Megatron's OptimizerConfig leaves it None)")
        self.lr = V.real("lr", self.lr, lo=0.0)
        self.min_lr = _opt_real("min_lr", self.min_lr, lo=0.0)
        if self.min_lr is not None and self.min_lr > self.lr:
            raise ValueError(f"min_lr={self.min_lr} is above lr={self.lr}")
        self.decoupled_lr = _opt_real("decoupled_lr", self.decoupled_lr, lo=0.0)
        self.decoupled_min_lr = _opt_real("decoupled_min_lr", self.decoupled_min_lr, lo=0.0)
        if self.decoupled_min_lr is not None and self.decoupled_lr is None:
            raise ValueError("decoupled_min_lr is set without decoupled_lr")
        if self.decoupled_min_lr is not None and self.decoupled_min_lr > self.decoupled_lr:
            raise ValueError(f"decoupled_min_lr={self.decoupled_min_lr} is above decoupled_lr={self.decoupled_lr}")
        self.weight_decay = V.real("weight_decay", self.weight_decay, lo=0.0)
        for name in ("apply_wd_to_qk_layernorm", "fp16", "bf16", "use_precision_aware_optimizer",
                     "store_param_remainders", "decoupled_weight_decay", "muon_split_qkv", "muon_use_nesterov",
                     "optimizer_cpu_offload",
                     "use_torch_optimizer_for_cpu_offload", "overlap_cpu_optimizer_d2h_h2d", "pin_cpu_grads",
                     "pin_cpu_params", "log_num_zeros_in_grad", "barrier_with_L1_time") + tuple(
                         k for k, (d, _) in _LATER.items() if isinstance(d, bool)):
            setattr(self, name, _bool(name, getattr(self, name)))
        if self.fp16 and self.bf16:
            raise ValueError("fp16 and bf16 are both set; choose one")
        for name in ("params_dtype", "main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
            setattr(self, name, _dtype_name(name, getattr(self, name)))
        V.choice("optimizer", self.optimizer, ("adam", "sgd", "muon", "dist_muon"))
        if self.optimizer in ("muon", "dist_muon"):
            raise ValueError(f"optimizer={self.optimizer!r}: npadam runs 'adam' and 'sgd'")
        self.loss_scale = _opt_real("loss_scale", self.loss_scale, lo=0.0, lo_open=True)
        self.initial_loss_scale = V.real("initial_loss_scale", self.initial_loss_scale, lo=0.0, lo_open=True)
        self.min_loss_scale = V.real("min_loss_scale", self.min_loss_scale, lo=0.0, lo_open=True)
        if self.min_loss_scale > self.initial_loss_scale:
            raise ValueError(f"min_loss_scale={self.min_loss_scale} is above initial_loss_scale="
                             f"{self.initial_loss_scale}")
        self.loss_scale_window = V.integer("loss_scale_window", self.loss_scale_window, lo=1)
        self.hysteresis = V.integer("hysteresis", self.hysteresis, lo=1)
        self.adam_beta1 = V.real("adam_beta1", self.adam_beta1, lo=0.0, hi=1.0, hi_open=True)
        self.adam_beta2 = V.real("adam_beta2", self.adam_beta2, lo=0.0, hi=1.0, hi_open=True)
        self.adam_eps = V.real("adam_eps", self.adam_eps, lo=0.0)
        self.sgd_momentum = V.real("sgd_momentum", self.sgd_momentum, lo=0.0, hi=1.0, hi_open=True)
        self.clip_grad = V.real("clip_grad", self.clip_grad, lo=0.0)
        self.optimizer_offload_fraction = V.real("optimizer_offload_fraction", self.optimizer_offload_fraction,
                                                 lo=0.0, hi=1.0)
        check_megatron_offload(self)
        check_megatron_precision(self)
        for name, (default, what) in _LATER.items():
            value = getattr(self, name)
            if value != default:
                raise ValueError(f"{name}={value!r} needs {what}, which this version of npadam does not have yet; "
                                 f"leave it at {default!r}")
        if self.params_dtype != "float32" and not (self.fp16 or self.bf16):
            raise ValueError(f"params_dtype={self.params_dtype!r} without fp16/bf16")


_DECAY_STYLES = ("constant", "linear", "cosine", "inverse-square-root", "WSD")
_WSD_STYLES = ("exponential", "linear", "cosine", "minus_sqrt")


@dataclass
class SchedulerConfig:
    """Megatron-Bridge's ``SchedulerConfig`` (Megatron-LM's argument names) plus ``train_iters``,
    ``train_samples``, ``global_batch_size`` and ``rampup_batch_size`` (Megatron's training
    arguments the schedule needs) and the legacy ``warmup``.

    Steps are optimizer iterations; with ``global_batch_size`` > 1 Megatron counts samples
    (``steps()`` gives its derived counts in samples, as ``OptimizerParamScheduler`` gets them).
    ``rampup_batch_size = [start, increment, ramp_samples]`` grows the global batch size from
    ``start`` to ``global_batch_size`` over ``ramp_samples`` samples (sample-based training
    only, as Megatron-LM asserts). ``warmup`` must stay None: Megatron-LM rejects it.
    """

    lr_decay_style: str = "linear"
    lr_wsd_decay_style: str = "exponential"
    lr_decay_iters: int | None = None
    lr_decay_samples: int | None = None
    lr_wsd_decay_iters: int | None = None
    lr_wsd_decay_samples: int | None = None
    lr_warmup_fraction: float | None = None
    lr_warmup_iters: int = 0
    lr_warmup_samples: int = 0
    lr_warmup_init: float = 0.0
    override_opt_param_scheduler: bool = False
    use_checkpoint_opt_param_scheduler: bool = False
    start_weight_decay: float | None = None
    end_weight_decay: float | None = None
    weight_decay_incr_style: str = "constant"
    train_iters: int | None = None
    train_samples: int | None = None
    global_batch_size: int = 1
    rampup_batch_size: list[int] | None = None
    warmup: int | None = None

    def __post_init__(self) -> None:
        self.validate()

    def validate(self) -> None:
        """Check every field and combination; ValueError/TypeError naming the field."""
        V.choice("lr_decay_style", self.lr_decay_style, _DECAY_STYLES)
        V.choice("lr_wsd_decay_style", self.lr_wsd_decay_style, _WSD_STYLES)
        V.choice("weight_decay_incr_style", self.weight_decay_incr_style, ("constant", "linear", "cosine"))
        for name in ("lr_decay_iters", "lr_decay_samples", "lr_wsd_decay_iters", "lr_wsd_decay_samples",
                     "train_iters", "train_samples"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, V.integer(name, value, lo=0 if "wsd" in name else 1))
        for name in ("lr_warmup_iters", "lr_warmup_samples"):
            setattr(self, name, V.integer(name, getattr(self, name), lo=0))
        self.global_batch_size = V.integer("global_batch_size", self.global_batch_size, lo=1)
        if self.warmup is not None:
            raise ValueError(f"warmup={self.warmup!r}: Megatron-LM rejects the legacy --warmup ('--warmup argument "
                             "is no longer valid, use --lr-warmup-fraction instead'); use lr_warmup_fraction, "
                             "lr_warmup_iters or lr_warmup_samples")
        if self.rampup_batch_size is not None:
            from .schedules.frameworks._megatron_rampup import check_rampup

            self.rampup_batch_size = list(check_rampup(self.rampup_batch_size, self.global_batch_size))
        self.lr_warmup_fraction = _opt_real("lr_warmup_fraction", self.lr_warmup_fraction, lo=0.0, hi=1.0)
        self.lr_warmup_init = V.real("lr_warmup_init", self.lr_warmup_init, lo=0.0)
        self.start_weight_decay = _opt_real("start_weight_decay", self.start_weight_decay, lo=0.0)
        self.end_weight_decay = _opt_real("end_weight_decay", self.end_weight_decay, lo=0.0)
        for name in ("override_opt_param_scheduler", "use_checkpoint_opt_param_scheduler"):
            setattr(self, name, _bool(name, getattr(self, name)))
        if self.override_opt_param_scheduler and self.use_checkpoint_opt_param_scheduler:
            raise ValueError("override_opt_param_scheduler and use_checkpoint_opt_param_scheduler are both set "
                             "(Megatron: 'both override and use-checkpoint are set.')")
        if self.train_iters is None and self.train_samples is None:
            raise ValueError("train_iters (or train_samples) must be set: the schedule's length derives from it")
        if self.train_iters is not None and self.train_samples is not None:
            raise ValueError("train_iters and train_samples are both set; choose one")
        if self.rampup_batch_size is not None and self.train_iters is not None:
            raise ValueError("rampup_batch_size needs sample-based training (train_samples): Megatron-LM asserts "
                             "'expected no batch-size rampup for iteration-based training'")
        iters = self.train_iters is not None
        unit = "iters" if iters else "samples"
        other = "samples" if iters else "iters"
        for name in (f"lr_decay_{other}", f"lr_wsd_decay_{other}"):
            if getattr(self, name) is not None:
                raise ValueError(f"{name} is set but training is counted in {unit} (train_{unit}); use "
                                 f"{name.replace(other, unit)}")
        if getattr(self, f"lr_warmup_{other}"):
            raise ValueError(f"lr_warmup_{other} is set but training is counted in {unit}; use lr_warmup_{unit}")
        if self.lr_warmup_fraction is not None and getattr(self, f"lr_warmup_{unit}"):
            raise ValueError(f"lr_warmup_fraction and lr_warmup_{unit} are both set; choose one")
        if self.lr_decay_style == "WSD" and getattr(self, f"lr_wsd_decay_{unit}") is None:
            raise ValueError(f"lr_decay_style 'WSD' needs lr_wsd_decay_{unit}")
        if self.weight_decay_incr_style == "constant" and (self.start_weight_decay is not None
                                                            or self.end_weight_decay is not None):
            raise ValueError("start_weight_decay / end_weight_decay are set with weight_decay_incr_style 'constant'; "
                             "Megatron requires them unset there (the optimizer's weight_decay applies); use "
                             "'linear' or 'cosine' to ramp")
        if self.weight_decay_incr_style != "constant" and (self.start_weight_decay is None
                                                            or self.end_weight_decay is None):
            raise ValueError(f"weight_decay_incr_style {self.weight_decay_incr_style!r} needs start_weight_decay "
                             "and end_weight_decay")
        s = self.steps()
        if s["lr_warmup_steps"] >= s["lr_decay_steps"] and s["lr_decay_steps"] > 0 and s["lr_warmup_steps"]:
            raise ValueError(f"the warmup ({s['lr_warmup_steps']} steps) must be shorter than the decay "
                             f"({s['lr_decay_steps']} steps): lower lr_warmup_{unit}/lr_warmup_fraction or raise "
                             f"lr_decay_{unit}")
        if s["wsd_decay_steps"] is not None and s["wsd_decay_steps"] > s["lr_decay_steps"]:
            raise ValueError(f"lr_wsd_decay_{unit} ({s['wsd_decay_steps']} steps) is longer than the decay "
                             f"({s['lr_decay_steps']} steps)")

    def steps(self) -> dict[str, Any]:
        """Megatron's derived counts (``get_optimizer_param_scheduler``): ``lr_decay_steps``,
        ``lr_warmup_steps``, ``wd_incr_steps``, ``wsd_decay_steps`` (samples when global_batch_size > 1
        or training is sample-based), and ``train_iters``: the iterations Megatron-LM runs
        (``update_train_iters``: ``train_samples // global_batch_size``, or with a batch-size ramp-up
        the ramp's iterations plus the full batches after it; a partial last batch is dropped)."""
        gbs = self.global_batch_size
        if self.train_iters is not None:
            decay = (self.lr_decay_iters or self.train_iters) * gbs
            wd = self.train_iters * gbs
            wsd = None if self.lr_wsd_decay_iters is None else self.lr_wsd_decay_iters * gbs
            warm = self.lr_warmup_iters * gbs
            iters = self.train_iters
        else:
            decay = self.lr_decay_samples or self.train_samples
            wd = self.train_samples
            wsd = self.lr_wsd_decay_samples
            warm = self.lr_warmup_samples
            if self.rampup_batch_size is None:
                iters = self.train_samples // gbs
            else:
                from .schedules.frameworks._megatron_rampup import RampupTable

                iters = RampupTable(gbs, self.rampup_batch_size).train_iters(self.train_samples)
        if self.lr_warmup_fraction is not None:
            warm = self.lr_warmup_fraction * decay
            warm = int(warm) if float(warm).is_integer() else warm
        return {"lr_decay_steps": decay, "lr_warmup_steps": warm, "wd_incr_steps": wd, "wsd_decay_steps": wsd,
                "train_iters": iters}

    def schedules(self, lr: float, min_lr: float | None, weight_decay: float) -> Any:
        """Megatron's lr and weight-decay schedules (``schedules.from_config("megatron", ...)``, a
        ``ScheduleSet``) for a group with this peak lr, final lr and weight decay."""
        from . import schedules as S

        d = {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name) is not None}
        d.update(lr=lr, min_lr=0.0 if min_lr is None else min_lr, weight_decay=weight_decay)
        return S.from_config("megatron", d)


# ---------------------------------------------------------------------- sources
_OPT_FIELDS = {f.name for f in fields(OptimizerConfig)}
_SCHED_FIELDS = {f.name for f in fields(SchedulerConfig)}
_IGNORED_TRAIN = {"micro_batch_size"}  # Megatron training arguments that do not change the optimizer
_NARGS = {"rampup_batch_size": 3}  # Megatron-LM arguments with nargs
_BOOL_FIELDS = {f.name for f in fields(OptimizerConfig) + fields(SchedulerConfig) if "bool" in str(f.type)}


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, sorted(_OPT_FIELDS | _SCHED_FIELDS), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def from_mapping(cfg: Mapping[str, Any], where: str = "config") -> tuple[OptimizerConfig, SchedulerConfig | None]:
    """Split a flat mapping (or one with ``optimizer`` / ``scheduler`` / ``train`` sections) into the
    two configs; unknown keys are errors naming them. No scheduler field and no train_iters /
    train_samples: the schedule is constant (``None``)."""
    if not isinstance(cfg, Mapping):
        raise TypeError(f"{where} must be a mapping of field names to values, got {type(cfg).__name__}")
    flat: dict[str, Any] = {}
    for key, value in cfg.items():
        k = str(key).replace("-", "_")
        if k in ("optimizer", "scheduler", "train") and isinstance(value, Mapping):
            for kk, vv in value.items():
                kk = str(kk).replace("-", "_")
                if kk in flat:
                    raise ValueError(f"{where}: {kk!r} is given twice")
                flat[kk] = vv
        else:
            if k in flat:
                raise ValueError(f"{where}: {k!r} is given twice")
            flat[k] = value
    for k in [k for k in flat if k.startswith("no_") and k[3:] in _BOOL_FIELDS and flat[k] is True]:
        if k[3:] in flat:  # an argument file's --no-flag: false
            raise ValueError(f"{where}: {k[3:]!r} is given twice (as --{k[3:]} and --{k})")
        flat[k[3:]] = False
        del flat[k]
    unknown = sorted(set(flat) - _OPT_FIELDS - _SCHED_FIELDS - _IGNORED_TRAIN)
    if unknown:
        raise ValueError(f"{where}: unknown field {unknown[0]!r}{_suggest(unknown[0])}"
                         + (f" (and {unknown[1:]})" if len(unknown) > 1 else ""))
    opt = OptimizerConfig(**{k: v for k, v in flat.items() if k in _OPT_FIELDS})
    sched_keys = {k: v for k, v in flat.items() if k in _SCHED_FIELDS}
    sched = SchedulerConfig(**sched_keys) if sched_keys else None
    return opt, sched


#: Megatron-LM's ``choices`` for the precision-aware optimizer's dtype arguments (``_add_mixed_precision_args``
#: ... ``--exp-avg-sq-dtype``, core_v0.16.1)
_LM_CHOICES = {"main_grads_dtype": ("fp32", "bf16"), "main_params_dtype": ("fp32", "fp16"),
               "exp_avg_dtype": ("fp32", "fp16", "bf16", "fp8"), "exp_avg_sq_dtype": ("fp32", "fp16", "bf16", "fp8")}


def _megatron_lm_defaults(flat: dict[str, Any]) -> dict[str, Any]:
    """Megatron-LM's argument parser where it differs from megatron-core's dataclass: its ``choices``
    for the dtype arguments (``--exp-avg-dtype bf16``, not ``bfloat16``; ``fp8`` is torch.uint8),
    and its defaults: ``--optimizer-offload-fraction`` defaults to 1.0 there (0.0 in
    ``OptimizerConfig``), so ``--optimizer-cpu-offload`` alone offloads all the state."""
    for key, choices in _LM_CHOICES.items():
        if key in flat and flat[key] not in choices:
            raise ValueError(f"--{key.replace('_', '-')}: invalid choice {flat[key]!r} (Megatron-LM takes "
                             f"{', '.join(choices)})")
    if flat.get("optimizer_cpu_offload") is True and "optimizer_offload_fraction" not in flat:
        flat = {**flat, "optimizer_offload_fraction": 1.0}
    return flat


def load(source: str | os.PathLike[str] | Mapping[str, Any] | Sequence[str]
         ) -> tuple[OptimizerConfig, SchedulerConfig | None]:
    """``(OptimizerConfig, SchedulerConfig | None)`` from a file, a mapping or a Megatron argument
    list (see ``from_args``).

    Files are read as the CLI reads them (``npadam._configfile``): ``.json``, ``.yaml``/``.yml``
    (safe; ``3e-4`` is a number; aliases that expand to more than 100,000 nodes refused),
    ``.toml``, ``.args``/``.txt`` (a launcher's ``--name value`` arguments, read as ``from_args``
    reads them, Megatron-LM's parser defaults included), others sniffed; ``-`` is stdin. A key
    given twice, nesting deeper than 100 levels, integers beyond 64 bits, files over 256 MiB or
    not UTF-8: ValueError naming the file."""
    if isinstance(source, Mapping):
        return from_mapping(source)
    if isinstance(source, (list, tuple)):
        return from_args(source)
    from ._configfile import label_for, load_mapping

    path = os.fspath(source)
    label = f"config file {label_for(None, path)}"
    mapping = load_mapping(path, label)
    if os.path.splitext(path)[1].lower() in (".args", ".txt"):  # a Megatron-LM launch line: its parser's defaults
        mapping = _megatron_lm_defaults(mapping)
    return from_mapping(mapping, where=label)


def from_args(argv: Sequence[str]) -> tuple[OptimizerConfig, SchedulerConfig | None]:
    """Megatron-LM argument lists: ``--lr 3e-4 --min-lr 3e-5 --bf16 --lr-decay-style cosine ...``.

    ``--name value`` or ``--name=value`` (dashes or underscores, Megatron's
    ``--override-opt_param-scheduler`` spelling too); a boolean field as ``--name``
    (true) or ``--no-name`` (false); numbers, ``true``/``false`` and ``None``/``null`` parsed,
    anything else kept as text; ``--rampup-batch-size START INCREMENT RAMP_SAMPLES`` takes three.
    Where Megatron-LM's parser defaults differ from ``OptimizerConfig``'s, its defaults apply:
    ``--optimizer-cpu-offload`` without ``--optimizer-offload-fraction`` offloads all the state
    (fraction 1.0). Megatron-LM spells the pinning flags ``--no-pin-cpu-grads`` /
    ``--no-pin-cpu-params`` only; ``--pin-cpu-grads`` (the default) is accepted too."""
    from ._configfile import _scalar

    types = {f.name: f.type for f in fields(OptimizerConfig)}
    types.update({f.name: f.type for f in fields(SchedulerConfig)})
    out: dict[str, Any] = {}
    args = list(argv)
    i = 0
    while i < len(args):
        tok = args[i]
        if not isinstance(tok, str) or not tok.startswith("--"):
            raise ValueError(f"argument {i}: expected --name, got {tok!r}")
        name, eq, value = tok[2:].partition("=")
        key = name.replace("-", "_")
        neg = key.startswith("no_") and key[3:] in types and "bool" in str(types[key[3:]])
        if neg:
            key = key[3:]
        if key not in types and key not in _IGNORED_TRAIN:
            raise ValueError(f"--{name}: unknown argument{_suggest(key)}")
        if key in out:
            raise ValueError(f"--{name} is given twice")
        if "bool" in str(types.get(key, "")):
            if eq:
                raise ValueError(f"--{name} is a flag: write --{name} or --no-{name}")
            out[key] = not neg
            i += 1
            continue
        if key in _NARGS:  # Megatron's nargs=N options: --rampup-batch-size 16 8 300000
            n = _NARGS[key]
            values = ([value] if eq else []) + list(args[i + 1:i + 1 + n - bool(eq)])
            if len(values) < n or any(not isinstance(v, str) or v.startswith("--") for v in values):
                raise ValueError(f"--{name} needs {n} values, got {values[:n]!r}")
            out[key] = [_scalar(v) for v in values]
            i += 1 + n - bool(eq)
            continue
        if not eq:
            if i + 1 >= len(args):
                raise ValueError(f"--{name} needs a value")
            value = args[i + 1]
            i += 1
        i += 1
        out[key] = _scalar(value)  # as argument files are read
    try:
        return from_mapping(_megatron_lm_defaults(out), where="arguments")
    except (ValueError, TypeError) as e:
        raise type(e)(str(e).replace("arguments: ", "")) from None



def to_dict(opt_cfg: OptimizerConfig, sched_cfg: SchedulerConfig | None = None) -> dict[str, Any]:
    """The configs as one JSON-able mapping with ``optimizer`` and ``scheduler`` sections (only the
    fields that differ from the defaults)."""
    def diff(obj: Any) -> dict[str, Any]:
        return {f.name: getattr(obj, f.name) for f in fields(obj)
                if getattr(obj, f.name) != (f.default if f.default is not dataclasses.MISSING else None)}
    out = {"optimizer": diff(opt_cfg)}
    if sched_cfg is not None:
        out["scheduler"] = diff(sched_cfg)
    return out


def describe(opt_cfg: OptimizerConfig, sched_cfg: SchedulerConfig | None = None) -> str:
    """A few lines for humans: the optimizer, the loss scaling and the derived step counts."""
    oc = opt_cfg
    kind = "SGD" if oc.optimizer == "sgd" else ("AdamW" if oc.decoupled_weight_decay else "Adam")
    prec = "fp16" if oc.fp16 else "bf16" if oc.bf16 else "fp32"
    if oc.loss_scale and (oc.fp16 or oc.bf16):
        scale = f"constant loss scale {oc.loss_scale:g}"
    elif oc.fp16:
        scale = (f"dynamic loss scale from {oc.initial_loss_scale:g} (window {oc.loss_scale_window}, "
                 f"hysteresis {oc.hysteresis}, min {oc.min_loss_scale:g})")
    else:
        scale = "no loss scaling"
    lines = [f"{kind}: lr {oc.lr:g}" + (f" -> {oc.min_lr:g}" if oc.min_lr is not None else "")
             + f", weight decay {oc.weight_decay:g}, clip_grad {oc.clip_grad:g}, {prec}, {scale}"]
    if oc.use_precision_aware_optimizer:
        kw = precision_kwargs(oc)
        short = {"float32": "fp32", "bfloat16": "bf16", "float16": "fp16"}
        lines.append("precision-aware state: exp_avg " + short.get(kw.get("exp_avg_dtype", "float32"),
                                                                    kw.get("exp_avg_dtype", ""))
                     + ", exp_avg_sq " + short.get(kw.get("exp_avg_sq_dtype", "float32"), kw.get("exp_avg_sq_dtype", ""))
                     + (", fp16 masters of bf16 params" if kw.get("main_params_dtype") == "float16" else "")
                     + (", int16 remainders instead of fp32 masters of bf16 params"
                        if kw.get("store_param_remainders") else ""))
    if oc.optimizer_cpu_offload:
        kw = offload_kwargs(oc)
        lines.append(f"CPU offload: {100 * kw['offload_fraction']:g}% of the optimizer state of GPU params in "
                     f"{'pinned' if kw['pin_memory'] else 'pageable'} host memory")
    if oc.decoupled_lr is not None:
        low = oc.decoupled_min_lr if oc.decoupled_min_lr is not None else oc.min_lr
        lines.append(f"embedding/output params (decoupled): lr {oc.decoupled_lr:g}"
                     + (f" -> {low:g}" if low is not None else ""))
    if sched_cfg is not None:
        s = sched_cfg.steps()
        lines.append(f"schedule: {sched_cfg.lr_decay_style}, warmup {s['lr_warmup_steps']} / decay "
                     f"{s['lr_decay_steps']} / wd increment {s['wd_incr_steps']}"
                     + (f" / WSD decay {s['wsd_decay_steps']}" if s["wsd_decay_steps"] is not None else "")
                     + (" samples" if sched_cfg.global_batch_size > 1 or sched_cfg.train_iters is None else " steps"))
        if sched_cfg.rampup_batch_size is not None:
            from .schedules.frameworks._megatron_rampup import RampupTable

            start, inc, ramp = sched_cfg.rampup_batch_size
            table = RampupTable(sched_cfg.global_batch_size, sched_cfg.rampup_batch_size)
            lines.append(f"batch size ramp-up: {start} -> {sched_cfg.global_batch_size} by {inc} every "
                         f"{table.samples_per_increment:g} samples (over {ramp} samples); full batches from "
                         f"iteration {int(table.first_iteration[-1])}")
        lines.append(f"train_iters: {s['train_iters']}")
    return "\n".join(lines)


# ---------------------------------------------------------------------- build (npadam/_config_build.py)
from ._config_build import Built, build, param_groups, schedules_for  # noqa: E402,F401  (needs the classes above)
