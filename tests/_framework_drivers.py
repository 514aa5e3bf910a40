"""Drive the real framework schedulers the way their training loops do.

Each ``trace_*`` function builds the framework's own scheduler object from a config
in that framework's names, then runs ``steps`` optimizer updates and records what
``optimizer.param_groups[0]`` holds *right before* each update (``lr``, ``beta1``,
``beta2``, ``weight_decay``), calling the scheduler's step afterwards, in the order
the framework's training loop uses:

- torch / HF (``LambdaLR``): ``optimizer.step(); scheduler.step()``;
- DeepSpeed (``engine.step``): ``optimizer.step(); lr_scheduler.step()``;
- Megatron (``train_step``): ``optimizer.step(); opt_param_scheduler.step(increment=global_batch_size)``.

The learning rate does not depend on the optimizer update, so the real
``optimizer.step()`` is run once (on a parameter without a gradient, which makes
it a no-op) to keep torch's call-order bookkeeping honest, and skipped after that
to keep the traces fast. The last scheduler step (after the last recorded update)
is not taken: a training loop of ``steps`` updates never uses its value.

Every function returns ``dict[str, np.ndarray]`` with float64 arrays of length
``steps``: ``lr`` always; ``beta1``/``beta2``/``weight_decay`` where the group has them.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import types
import warnings
from typing import Any, Callable, Iterator, Mapping

import numpy as np

_NOISY_LOGGERS = ("DeepSpeed", "deepspeed", "megatron", "megatron.core", "transformers")


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    """Silence the frameworks' warnings and log output (both are part of their normal run)."""
    saved = {}
    for name in _NOISY_LOGGERS:
        lg = logging.getLogger(name)
        saved[name] = lg.level
        lg.setLevel(logging.CRITICAL)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for name, level in saved.items():
            logging.getLogger(name).setLevel(level)


def importorskip(module: str) -> Any:
    """``pytest.importorskip`` without the framework's import-time warnings and log lines."""
    import pytest

    if module.startswith("deepspeed") and "DS_ACCELERATOR" not in os.environ:
        torch = pytest.importorskip("torch")
        if not torch.cuda.is_available():  # deepspeed picks the CPU then anyway; say so, skip its warning
            os.environ["DS_ACCELERATOR"] = "cpu"
    with quiet():
        return pytest.importorskip(module)


# --------------------------------------------------------------------------- recording loop


def _trace_groups(opt: Any, steps: int, step_scheduler: Callable[[], Any]) -> list[dict[str, np.ndarray]]:
    """Each param group's lr / betas / weight decay for updates 0..steps-1, the scheduler stepped after
    each update (``step_scheduler``), as a training loop does."""
    out: list[dict[str, list[float]]] = [{"lr": [], "beta1": [], "beta2": [], "weight_decay": []}
                                         for _ in opt.param_groups]
    for k in range(steps):
        for g, rec in zip(opt.param_groups, out):
            _record(g, rec)
        if k == 0:
            opt.step()  # the update itself (a no-op here: no gradient)
        if k < steps - 1:
            step_scheduler()
    return [{key: np.asarray(v, dtype=np.float64) for key, v in rec.items() if v} for rec in out]


def _record(group: Mapping[str, Any], out: dict[str, list[float]]) -> None:
    out["lr"].append(float(group["lr"]))
    betas = group.get("betas")
    if betas is not None:
        out["beta1"].append(float(betas[0]))
        out["beta2"].append(float(betas[1]))
    if "weight_decay" in group:
        out["weight_decay"].append(float(group["weight_decay"]))


def _run(optimizer: Any, step_scheduler: Callable[[], None], steps: int,
         optimizer_step: Callable[[], None] | None = None) -> dict[str, np.ndarray]:
    out: dict[str, list[float]] = {"lr": [], "beta1": [], "beta2": [], "weight_decay": []}
    group = optimizer.param_groups[0]
    for k in range(steps):
        _record(group, out)
        if k == 0 and optimizer_step is not None:
            optimizer_step()  # the update itself (a no-op here: no gradient)
        if k < steps - 1:
            step_scheduler()
    return {key: np.asarray(v, dtype=np.float64) for key, v in out.items() if v}


def torch_adam(lr: float, betas: tuple[float, float] = (0.9, 0.999), weight_decay: float = 0.0) -> Any:
    """A torch Adam over one parameter without a gradient (its ``step()`` changes nothing)."""
    import torch

    p = torch.nn.Parameter(torch.zeros(1))
    return torch.optim.Adam([p], lr=lr, betas=betas, weight_decay=weight_decay)


def trace_torch_scheduler(make: Callable[[Any], Any], lr: float, steps: int) -> dict[str, np.ndarray]:
    """``make(optimizer)`` returns a torch LRScheduler; step it like a torch training loop."""
    with quiet():
        opt = torch_adam(lr)
        sched = make(opt)
        return _run(opt, sched.step, steps, opt.step)


# --------------------------------------------------------------------------- torch


def build_torch_scheduler(optimizer: Any, config: Mapping[str, Any]) -> Any:
    """A real ``torch.optim.lr_scheduler`` object from npadam's ``"torch"`` config shape."""
    from torch.optim import lr_scheduler

    cfg = dict(config)
    cfg.pop("lr", None)
    name = cfg.pop("scheduler")
    if name == "SequentialLR":
        subs = [build_torch_scheduler(optimizer, sub) for sub in cfg.pop("schedulers")]
        return lr_scheduler.SequentialLR(optimizer, subs, **cfg)
    if name == "ChainedScheduler":  # built in list order on the same optimizer, as a user writes it
        subs = [build_torch_scheduler(optimizer, sub) for sub in cfg.pop("schedulers")]
        return lr_scheduler.ChainedScheduler(subs, **cfg)
    return getattr(lr_scheduler, name)(optimizer, **cfg)


def trace_torch(config: Mapping[str, Any], steps: int) -> dict[str, np.ndarray]:
    """Run ``config`` (``{"lr", "scheduler", ...kwargs}``) through the real torch scheduler."""
    return trace_torch_scheduler(lambda opt: build_torch_scheduler(opt, config), config["lr"], steps)


def torch_adam_groups(lrs: list[float], betas: tuple[float, float] = (0.9, 0.999)) -> Any:
    """A torch Adam with one param group per entry of ``lrs`` (one parameter without a gradient each)."""
    import torch

    return torch.optim.Adam([{"params": [torch.nn.Parameter(torch.zeros(1))], "lr": lr} for lr in lrs],
                            betas=betas)


def trace_torch_groups(config: Mapping[str, Any], steps: int, groups: int = 1) -> list[dict[str, np.ndarray]]:
    """``config`` through the real torch scheduler on an Adam with ``groups`` param groups (``"lr"``
    a list: one per group); what each group holds before each update (``_run``'s format).

    With ``last_epoch = L >= 0`` this is a resume: a fresh run of the same config (without
    ``last_epoch``) is stepped ``L + 1`` times, its optimizer state (every group's ``lr``,
    ``initial_lr``, OneCycleLR's ``max_lr``/``min_lr``, the momenta) is loaded into a new optimizer
    with ``load_state_dict``, and the scheduler is built there with ``last_epoch=L``."""
    lr = config["lr"]
    lrs = list(lr) if isinstance(lr, (list, tuple)) else [lr] * groups
    last = config.get("last_epoch", -1)
    with quiet():
        opt = torch_adam_groups(lrs)
        if last != -1:
            fresh = build_torch_scheduler(opt, {k: v for k, v in config.items() if k != "last_epoch"})
            opt.step()
            for _ in range(last + 1):
                fresh.step()
            resumed = torch_adam_groups(lrs)
            resumed.load_state_dict(opt.state_dict())
            opt = resumed
        sched = build_torch_scheduler(opt, config)
        return _trace_groups(opt, steps, sched.step)


# --------------------------------------------------------------------------- HF transformers


def trace_hf(config: Mapping[str, Any], steps: int) -> dict[str, np.ndarray]:
    """``transformers.get_scheduler`` as the Trainer calls it (``create_scheduler``)."""
    with quiet():
        from transformers import get_scheduler

        opt = torch_adam(config.get("learning_rate", 5e-5))
        sched = get_scheduler(config.get("lr_scheduler_type", "linear"), opt,
                              num_warmup_steps=config.get("num_warmup_steps", 0),
                              num_training_steps=config.get("num_training_steps"),
                              scheduler_specific_kwargs=dict(config.get("lr_scheduler_kwargs") or {}))
        return _run(opt, sched.step, steps, opt.step)


# --------------------------------------------------------------------------- DeepSpeed


def build_deepspeed_scheduler(optimizer: Any, config: Mapping[str, Any]) -> Any:
    """What ``DeepSpeedEngine._scheduler_from_config`` builds, by running that engine method itself
    (unbound, on a stand-in whose ``scheduler_name()`` / ``scheduler_params()`` are DeepSpeed's own
    config readers): the class named by ``"type"`` from ``deepspeed.runtime.lr_schedules``, else from
    ``torch.optim.lr_scheduler``, called as ``cls(optimizer, **params)``. ``config`` is a whole
    DeepSpeed config or the scheduler block."""
    with quiet():
        from deepspeed.runtime.config import get_scheduler_name, get_scheduler_params
        from deepspeed.runtime.engine import DeepSpeedEngine

        param_dict = config if "scheduler" in config else {"scheduler": config}
        engine = types.SimpleNamespace(scheduler_name=lambda: get_scheduler_name(param_dict),
                                       scheduler_params=lambda: get_scheduler_params(param_dict))
        return DeepSpeedEngine._scheduler_from_config(engine, optimizer)


def deepspeed_engine_step(scheduler: Any, train_batch_size: int = 1) -> None:
    """The scheduler part of ``DeepSpeedEngine._take_model_step`` after a successful update:
    ``step()``, retried as ``step(train_batch_size)`` when that raises TypeError."""
    try:
        scheduler.step()
    except TypeError:
        scheduler.step(train_batch_size)


def deepspeed_optimizer(config: Mapping[str, Any], groups: int = 1) -> Any:
    """A torch Adam with ``groups`` param groups (one parameter without a gradient each) holding the
    optimizer values a config gives: ``"lr"`` / ``"betas"`` (top level, else ``optimizer.params``;
    a list gives one per group; defaults 1e-3 and torch's (0.9, 0.999))."""
    import torch

    def value(key: str, default: Any) -> Any:
        opt = config.get("optimizer") if isinstance(config.get("optimizer"), Mapping) else {}
        v = config.get(key, (opt.get("params") or {}).get(key))
        return default if v is None else v

    lr, betas = value("lr", 1e-3), value("betas", (0.9, 0.999))
    per_group_betas = isinstance(betas[0], (list, tuple))
    param_groups = [{"params": [torch.nn.Parameter(torch.zeros(1))],
                     "lr": lr[i] if isinstance(lr, (list, tuple)) else lr,
                     "betas": tuple(betas[i] if per_group_betas else betas)} for i in range(groups)]
    return torch.optim.Adam(param_groups)


def trace_deepspeed_groups(config: Mapping[str, Any], steps: int, groups: int = 1) -> list[dict[str, np.ndarray]]:
    """The engine's scheduler (``build_deepspeed_scheduler``) over ``deepspeed_optimizer(config,
    groups)``, stepped after every update as ``DeepSpeedEngine._take_model_step`` does; what each
    param group holds before each update (``_run``'s format, one dict per group)."""
    with quiet():
        opt = deepspeed_optimizer(config, groups)
        sched = build_deepspeed_scheduler(opt, config)
        return _trace_groups(opt, steps, lambda: deepspeed_engine_step(sched))


def trace_deepspeed(config: Mapping[str, Any], steps: int) -> dict[str, np.ndarray]:
    """``trace_deepspeed_groups`` for a one-group optimizer: param group 0's values."""
    return trace_deepspeed_groups(config, steps, 1)[0]


# --------------------------------------------------------------------------- Megatron

# Megatron-LM's argument defaults (megatron/training/arguments.py) for what the scheduler reads.
MEGATRON_DEFAULTS: dict[str, Any] = dict(
    lr=None, min_lr=0.0, lr_decay_style="linear", lr_decay_iters=None, lr_decay_samples=None,
    lr_warmup_iters=0, lr_warmup_samples=0, lr_warmup_fraction=None, lr_warmup_init=0.0,
    lr_wsd_decay_style="exponential", lr_wsd_decay_iters=None, lr_wsd_decay_samples=None,
    train_iters=None, train_samples=None, global_batch_size=1, weight_decay=0.01,
    start_weight_decay=None, end_weight_decay=None, weight_decay_incr_style="constant",
    use_checkpoint_opt_param_scheduler=False, override_opt_param_scheduler=False,
)


def megatron_args(config: Mapping[str, Any]) -> types.SimpleNamespace:
    """Megatron-LM's ``args`` for ``config``, with ``validate_args``' weight-decay defaults."""
    args = types.SimpleNamespace(**{**MEGATRON_DEFAULTS, **dict(config)})
    if args.weight_decay_incr_style == "constant":
        if args.start_weight_decay is None:
            args.start_weight_decay = args.weight_decay
        if args.end_weight_decay is None:
            args.end_weight_decay = args.weight_decay
    return args


class FakeMegatronOptimizer:
    """All ``OptimizerParamScheduler`` touches: ``param_groups`` (one default group)."""

    def __init__(self) -> None:
        self.param_groups: list[dict[str, Any]] = [{}]

    def step(self) -> None:
        pass


def build_megatron_scheduler(optimizer: Any, config: Mapping[str, Any]) -> Any:
    """``megatron.training.training.get_optimizer_param_scheduler``, step for step."""
    with quiet():
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        args = megatron_args(config)
        if args.train_iters:
            if args.lr_decay_iters is None:
                args.lr_decay_iters = args.train_iters
            lr_decay_steps = args.lr_decay_iters * args.global_batch_size
            wd_incr_steps = args.train_iters * args.global_batch_size
            wsd_decay_steps = None
            if args.lr_wsd_decay_iters is not None:
                wsd_decay_steps = args.lr_wsd_decay_iters * args.global_batch_size
            if args.lr_warmup_fraction is not None:
                lr_warmup_steps = args.lr_warmup_fraction * lr_decay_steps
            else:
                lr_warmup_steps = args.lr_warmup_iters * args.global_batch_size
        elif args.train_samples:
            args.train_iters = args.train_samples // args.global_batch_size
            if args.lr_decay_samples is None:
                args.lr_decay_samples = args.train_samples
            lr_decay_steps = args.lr_decay_samples
            wd_incr_steps = args.train_samples
            wsd_decay_steps = args.lr_wsd_decay_samples
            if args.lr_warmup_fraction is not None:
                lr_warmup_steps = args.lr_warmup_fraction * lr_decay_steps
            else:
                lr_warmup_steps = args.lr_warmup_samples
        else:
            raise Exception("either train-iters or train-samples should be provided.")
        return OptimizerParamScheduler(
            optimizer, init_lr=args.lr_warmup_init, max_lr=args.lr, min_lr=args.min_lr,
            lr_warmup_steps=lr_warmup_steps, lr_decay_steps=lr_decay_steps,
            lr_decay_style=args.lr_decay_style, start_wd=args.start_weight_decay,
            end_wd=args.end_weight_decay, wd_incr_steps=wd_incr_steps,
            wd_incr_style=args.weight_decay_incr_style,
            use_checkpoint_opt_param_scheduler=args.use_checkpoint_opt_param_scheduler,
            override_opt_param_scheduler=args.override_opt_param_scheduler,
            wsd_decay_steps=wsd_decay_steps, lr_wsd_decay_style=args.lr_wsd_decay_style)


def trace_megatron(config: Mapping[str, Any], steps: int) -> dict[str, np.ndarray]:
    """Megatron's train loop: after each successful update,
    ``opt_param_scheduler.step(increment=global_batch_size)``."""
    with quiet():
        opt = FakeMegatronOptimizer()
        sched = build_megatron_scheduler(opt, config)
        gbs = megatron_args(config).global_batch_size
        return _run(opt, lambda: sched.step(increment=gbs), steps, opt.step)


# --------------------------------------------------------------------------- helpers for tests


def examples(n: int) -> int:
    """Hypothesis ``max_examples``: ``n`` times ``$NPADAM_PARITY_SCALE`` (default 1; raise it for a
    longer random search, e.g. ``NPADAM_PARITY_SCALE=20``)."""
    return max(1, int(n * float(os.environ.get("NPADAM_PARITY_SCALE", "1"))))


def raises(fn: Callable[[], Any]) -> BaseException | None:
    """The exception ``fn()`` raises (any kind), or None."""
    try:
        with quiet():
            fn()
    except Exception as exc:  # noqa: BLE001 - we want to know about any failure
        return exc
    return None


def assert_matches(name: str, got: np.ndarray, want: np.ndarray, *, rtol: float, peak: float,
                   context: Any) -> None:
    """``|got - want| <= 1e-12 * |peak| + rtol * |want|`` elementwise, with a useful message."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    assert got.shape == want.shape, f"{name}: shape {got.shape} != {want.shape} for {context!r}"
    atol = 1e-12 * abs(peak) if peak else 1e-300
    err = np.abs(got - want)
    bad = ~(err <= atol + rtol * np.abs(want))
    if bad.any():
        k = int(np.flatnonzero(bad)[0])
        rel = err[k] / abs(want[k]) if want[k] else math.inf
        raise AssertionError(
            f"{name} differs from the framework at update k={k} ({int(bad.sum())} of {bad.size} steps): "
            f"npadam {got[k]!r}, framework {want[k]!r} (abs err {err[k]:.3e}, rel {rel:.3e}; "
            f"rtol {rtol}, atol {atol:.3e})\nconfig: {context!r}")
