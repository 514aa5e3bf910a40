"""``npadam.config``'s builders: Megatron's param groups, their schedules, and the optimizer.

``param_groups`` is megatron-core's ``_get_param_groups`` with its standard overrides,
``schedules_for`` what ``OptimizerParamScheduler`` writes into those groups, ``build`` the
optimizer over them. Imported (and re-exported) by ``npadam.config``, whose dataclasses
these take; import them from there.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import TYPE_CHECKING, Any, Callable, Iterable, Mapping, Sequence

if TYPE_CHECKING:  # npadam.config imports this module at its end: take its classes at call time
    from .config import OptimizerConfig, SchedulerConfig


def _check(oc: Any, sc: Any, *, sched_required: bool) -> None:
    """TypeError unless ``oc`` is an OptimizerConfig and ``sc`` a SchedulerConfig (or None, when not
    required); then both are validated again (they are mutable dataclasses)."""
    from .config import OptimizerConfig, SchedulerConfig

    if not isinstance(oc, OptimizerConfig):
        raise TypeError(f"optimizer_config must be a npadam.config.OptimizerConfig, got {type(oc).__name__}")
    if (sc is not None or sched_required) and not isinstance(sc, SchedulerConfig):
        raise TypeError(f"scheduler_config must be a npadam.config.SchedulerConfig, got {type(sc).__name__}")
    oc.validate()
    if sc is not None:
        sc.validate()


@dataclass
class Built:
    """What ``build`` made: the optimizer, the lr/wd schedules of its first group, and (for
    torch) an ``npadam.torch.LRScheduler`` to step after each optimizer step."""

    optimizer: Any
    schedules: Any
    scheduler: Any = None
    groups: list[dict[str, Any]] = field(default_factory=list)


def _no_wd(name: str, shape: tuple[int, ...], qk_layernorm: bool) -> bool:
    """Megatron's default: no weight decay for biases and 1-D params (with
    ``apply_wd_to_qk_layernorm``, q/k layernorm params do get it)."""
    hit = len(shape) == 1 or name.endswith(".bias")
    if qk_layernorm:
        hit = hit and not ("q_layernorm." in name or "k_layernorm." in name)
    return hit


def _decoupled_pick(named: list[tuple[str, Any]],
                    decoupled: Iterable[str] | Callable[[str, Any], bool] | None) -> Callable[[str, Any], bool]:
    if callable(decoupled):
        return decoupled
    if decoupled is None:
        return lambda n, p: bool(getattr(p, "is_embedding_or_output_parameter", False))
    chosen = {decoupled} if isinstance(decoupled, str) else set(decoupled)
    missing = chosen - {n for n, _ in named}
    if missing:
        raise ValueError(f"decoupled names {sorted(missing)[:3]} are not params")
    return lambda n, p: n in chosen


def param_groups(params: Any, optimizer_config: OptimizerConfig, *,
                 decoupled: Iterable[str] | Callable[[str, Any], bool] | None = None,
                 no_weight_decay: Callable[[str, Any], bool] | None = None) -> list[dict[str, Any]]:
    """megatron-core's ``_get_param_groups(model_chunks, config, config_overrides=None)``: the
    param groups Megatron makes with its standard overrides, in its order, with its keys.

    Overrides per param: ``{"wd_mult": 0.0}`` for ``no_weight_decay(name, param)`` (default:
    biases and 1-D params; with ``apply_wd_to_qk_layernorm`` not the ``q_layernorm.`` /
    ``k_layernorm.`` ones), ``{"max_lr": decoupled_lr}`` (and ``"min_lr": decoupled_min_lr``
    when set) for the decoupled params when ``decoupled_lr`` is set (``decoupled``: names or a
    predicate; default: torch params with ``is_embedding_or_output_parameter``). Params with
    the same merged overrides and ``is_expert_parallel`` (``allreduce=False``) share a group;
    groups sort with no override first, then by their sorted ``(key, value)`` tuples. Each
    group is ``{"params", "is_expert_parallel", "default_config", "wd_mult": 1.0, "lr_mult": 1.0,
    "is_decoupled_lr": False, "max_lr": lr, "min_lr": min_lr, **overrides, "param_names"}``: Megatron's
    dict key for key, then ``param_names`` (npadam's addition).

    ``schedules_for(optimizer_config, scheduler_config, groups)`` gives their schedules.
    """
    oc = optimizer_config
    _check(oc, None, sched_required=False)
    named = _named(params)
    pick = _decoupled_pick(named, decoupled)
    nowd = no_weight_decay or (lambda n, p: _no_wd(n, tuple(p.shape), oc.apply_wd_to_qk_layernorm))
    buckets: dict[tuple[Any, bool], list[tuple[str, Any]]] = {}
    for n, p in named:
        override: dict[str, float] = {}
        if nowd(n, p):
            override["wd_mult"] = 0.0
        if oc.decoupled_lr is not None and pick(n, p):
            override["max_lr"] = oc.decoupled_lr
            if oc.decoupled_min_lr is not None:
                override["min_lr"] = oc.decoupled_min_lr
        key = (tuple(sorted(override.items())) or None, not getattr(p, "allreduce", True))
        buckets.setdefault(key, []).append((n, p))
    groups = []
    for key in sorted(buckets, key=lambda x: (x[0] is not None, x[0])):
        override = dict(key[0] or ())
        members = buckets[key]
        groups.append({"params": [p for _, p in members], "is_expert_parallel": key[1],
                       "default_config": not any("lr" in k for k in override), "wd_mult": 1.0, "lr_mult": 1.0,
                       "is_decoupled_lr": False, "max_lr": oc.lr, "min_lr": oc.min_lr, **override,
                       "param_names": [n for n, _ in members]})
    return groups


def schedules_for(optimizer_config: OptimizerConfig, scheduler_config: SchedulerConfig,
                  groups: Sequence[Mapping[str, Any]] | None = None) -> Any:
    """The schedules Megatron's ``OptimizerParamScheduler`` applies with these configs:
    ``schedules.from_config("megatron", ...)`` of their fields (``min_lr`` None: 0.0, as Megatron-LM's
    default). A ``ScheduleSet`` for one group; a ``GroupSchedules`` with ``groups`` (e.g.
    ``param_groups(...)``, one ScheduleSet per group) or, without them, with ``decoupled_lr``:
    ``[default, decoupled]``."""
    from . import schedules as S

    oc, sc = optimizer_config, scheduler_config
    _check(oc, sc, sched_required=True)
    d = {f.name: getattr(sc, f.name) for f in fields(sc) if getattr(sc, f.name) is not None}
    d.update(lr=oc.lr, min_lr=0.0 if oc.min_lr is None else oc.min_lr, weight_decay=oc.weight_decay)
    if groups is not None:
        d["param_groups"] = list(groups)
    elif oc.decoupled_lr is not None:
        d.update(decoupled_lr=oc.decoupled_lr, decoupled_min_lr=oc.decoupled_min_lr)
    return S.from_config("megatron", d)


def build(params: Any, optimizer_config: OptimizerConfig, scheduler_config: SchedulerConfig | None = None, *,
          decoupled: Iterable[str] | Callable[[str, Any], bool] | None = None,
          no_weight_decay: Callable[[str, Any], bool] | None = None, **optimizer_kwargs: Any) -> Built:
    """The optimizer and schedules a Megatron run with these configs uses.

    ``params``: a torch module, ``named_parameters()``, or a dict / list of ``(name, array)``
    pairs. Torch tensors give an ``npadam.torch`` optimizer and an ``LRScheduler``;
    arrays give an ``npadam`` optimizer with the Schedules in its groups. Groups are
    ``param_groups(params, optimizer_config, decoupled=..., no_weight_decay=...)``, in
    Megatron's order (``built.groups``): weight decay 0 where ``wd_mult`` is 0, ``decoupled_lr``
    / ``decoupled_min_lr`` for the decoupled params. ``optimizer_kwargs`` (``kernel``,
    ``num_threads``, ...) pass through, with the memory-tier options of the config's offload
    fields (``offload_kwargs``: ``offload_fraction``, ``pin_memory``) and the state-precision
    options of its precision-aware optimizer fields (``precision_kwargs``: ``exp_avg_dtype``,
    ``exp_avg_sq_dtype``, ``main_params_dtype``, ``store_param_remainders``) added: a kwarg that
    contradicts a value the config sets is a ValueError naming both (``merge_kwargs``,
    ``merge_precision_kwargs``).
    """
    from . import schedules as S
    from ._offload_config import merge_kwargs
    from .config import merge_precision_kwargs

    oc, sc = optimizer_config, scheduler_config
    _check(oc, sc, sched_required=False)
    named = _named(params)
    is_torch = type(named[0][1]).__module__.startswith("torch")
    for n, p in named:
        dt = str(getattr(p, "dtype", "")).replace("torch.", "")
        want = "float16" if oc.fp16 else "bfloat16" if oc.bf16 else None
        if want and dt == "float32":
            raise ValueError(f"{'fp16' if oc.fp16 else 'bf16'}=True but param {n!r} is float32: cast the model "
                             f"first (Megatron trains {want} params with fp32 masters)")
    pick = _decoupled_pick(named, decoupled)
    if oc.decoupled_lr is not None and not any(pick(n, p) for n, p in named):
        raise ValueError("decoupled_lr is set but no param is decoupled: pass decoupled=[names] (Megatron marks "
                         "embedding/output params with is_embedding_or_output_parameter)")
    groups = param_groups(named, oc, decoupled=pick, no_weight_decay=no_weight_decay)
    if sc is None:
        sets = [S.ScheduleSet(lr=S.constant(g["max_lr"]), weight_decay=None) for g in groups]
    else:
        sets = list(schedules_for(oc, sc, groups))
    # a no-weight-decay group keeps weight_decay 0 in the group instead of a schedule of zeros
    sets = [S.ScheduleSet(lr=s.lr) if g["wd_mult"] == 0 else s for g, s in zip(groups, sets)]
    scaler = None
    if oc.fp16 or oc.bf16:
        from .scaler import LossScaler

        if oc.loss_scale:
            scaler = LossScaler(init_scale=oc.loss_scale, dynamic=False)
        elif oc.fp16:
            scaler = LossScaler(init_scale=oc.initial_loss_scale, growth_factor=2.0, backoff_factor=0.5,
                                growth_interval=oc.loss_scale_window, hysteresis=oc.hysteresis,
                                min_scale=oc.min_loss_scale)
    common = dict(max_grad_norm=oc.clip_grad if oc.clip_grad > 0 else None, loss_scaler=scaler,
                  **merge_precision_kwargs(oc, merge_kwargs(oc, optimizer_kwargs)))
    if is_torch:
        return _build_torch(oc, groups, sets, common)
    from . import optimizer as O

    specs = []
    for g, s in zip(groups, sets):
        wd = s.weight_decay if s.weight_decay is not None else (0.0 if g["wd_mult"] == 0 else oc.weight_decay)
        specs.append({"params": dict(zip(g["param_names"], g["params"])), "lr": s.lr, "weight_decay": wd})
    if oc.optimizer == "sgd":
        opt = O.SGD(specs, lr=oc.lr, momentum=oc.sgd_momentum, **common)
    else:
        cls = O.AdamW if oc.decoupled_weight_decay else O.Adam
        opt = cls(specs, lr=oc.lr, betas=(oc.adam_beta1, oc.adam_beta2), eps=oc.adam_eps, **common)
    return Built(opt, sets[0], None, groups)


def _build_torch(oc: OptimizerConfig, groups: list[dict[str, Any]], sets: list[Any], common: dict[str, Any]) -> Built:
    import npadam.torch as NT

    specs = []
    for g, s in zip(groups, sets):
        wd = 0.0 if g["wd_mult"] == 0 else float(s.weight_decay(0)) if s.weight_decay is not None else oc.weight_decay
        specs.append({"params": g["params"], "lr": float(s.lr(0)), "weight_decay": wd,
                      "param_names": g["param_names"]})
    if oc.optimizer == "sgd":
        opt = NT.SGD(specs, lr=oc.lr, momentum=oc.sgd_momentum, **common)
    else:
        cls = NT.AdamW if oc.decoupled_weight_decay else NT.Adam
        opt = cls(specs, lr=oc.lr, betas=(oc.adam_beta1, oc.adam_beta2), eps=oc.adam_eps, **common)
    sched = NT.LRScheduler(opt, sets)
    return Built(opt, sets[0], sched, groups)


def _named(params: Any) -> list[tuple[str, Any]]:
    if hasattr(params, "named_parameters"):
        params = params.named_parameters()
    if isinstance(params, Mapping):
        items = [(str(k), v) for k, v in params.items()]
    else:
        items = list(params)
        if not all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[0], str) for i in items):
            raise TypeError("params must be a torch module, named_parameters(), a dict or (name, array) pairs: "
                            "Megatron's param groups need the names")
    items = [(n, p) for n, p in items if getattr(p, "requires_grad", True)]
    if not items:
        raise ValueError("params: no trainable parameters")
    return items
