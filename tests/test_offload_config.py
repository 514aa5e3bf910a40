"""Framework offload keys → npadam's memory-tier options: Megatron's ``OptimizerConfig`` offload
fields (``config.offload_kwargs``, ``config.build``, ``from_args``) and DeepSpeed's
``zero_optimization.offload_optimizer`` (``config.deepspeed_offload_kwargs``), each against the
framework's own code where it is installed."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import warnings

import numpy as np
import pytest

import npadam
from npadam import _offload_config as OC
from npadam import config as C

_OFFLOAD_FIELDS = ("optimizer_cpu_offload", "optimizer_offload_fraction", "use_torch_optimizer_for_cpu_offload",
                   "overlap_cpu_optimizer_d2h_h2d", "pin_cpu_grads", "pin_cpu_params")


# ====================================================================== Megatron
@pytest.mark.parametrize("fields, want", [
    (dict(), {}),
    (dict(optimizer_offload_fraction=0.7), {}),  # Megatron ignores the fraction without cpu offload
    (dict(optimizer_cpu_offload=True), {"offload_fraction": 0.0, "pin_memory": True}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5), {"offload_fraction": 0.5, "pin_memory": True}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=1), {"offload_fraction": 1.0, "pin_memory": True}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.25, pin_cpu_grads=False),
     {"offload_fraction": 0.25, "pin_memory": False}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.25, pin_cpu_params=False),
     {"offload_fraction": 0.25, "pin_memory": False}),
    (dict(optimizer_cpu_offload=True, pin_cpu_grads=False, pin_cpu_params=False),
     {"offload_fraction": 0.0, "pin_memory": False}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0, overlap_cpu_optimizer_d2h_h2d=True),
     {"offload_fraction": 1.0, "pin_memory": True}),
    (dict(overlap_cpu_optimizer_d2h_h2d=True, pin_cpu_grads=False), {}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5, optimizer="sgd"),
     {"offload_fraction": 0.5, "pin_memory": True}),
])
def test_megatron_offload_kwargs(fields, want):
    oc = C.OptimizerConfig(lr=1e-3, **fields)
    got = C.offload_kwargs(oc)
    assert got == want
    assert all(type(v) is type(want[k]) for k, v in got.items())


def test_offload_fields_are_no_longer_later_work():
    assert not set(_OFFLOAD_FIELDS) & set(C._LATER)
    assert C.offload_kwargs is OC.offload_kwargs and C.deepspeed_offload_kwargs is OC.deepspeed_offload_kwargs
    with pytest.raises(TypeError, match="must be a npadam.config.OptimizerConfig"):
        C.offload_kwargs({"optimizer_cpu_offload": True})


@pytest.mark.parametrize("fields, exc, match", [
    (dict(use_torch_optimizer_for_cpu_offload=True), ValueError,
     "use_torch_optimizer_for_cpu_offload=True .* own CPU kernel"),
    (dict(optimizer_cpu_offload=True, use_torch_optimizer_for_cpu_offload=True), ValueError,
     "use_torch_optimizer_for_cpu_offload=True"),
    (dict(optimizer_cpu_offload=True, decoupled_weight_decay=False), ValueError,
     "optimizer_cpu_offload=True with decoupled_weight_decay=False: megatron-core asserts 'CPU offloading only "
     "supported with decoupled_weight_decay enabled"),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=1.5), ValueError,
     "optimizer_offload_fraction must be <= 1.0, got 1.5"),
    (dict(optimizer_offload_fraction=-0.1), ValueError, "optimizer_offload_fraction must be >= 0.0, got -0.1"),
    (dict(optimizer_offload_fraction=math.nan), ValueError, "optimizer_offload_fraction must be finite"),
    (dict(optimizer_offload_fraction="half"), TypeError, "optimizer_offload_fraction must be a real number"),
    (dict(optimizer_cpu_offload="yes"), TypeError, "optimizer_cpu_offload must be true or false, got 'yes'"),
    (dict(overlap_cpu_optimizer_d2h_h2d=1), TypeError, "overlap_cpu_optimizer_d2h_h2d must be true or false, got 1"),
    (dict(pin_cpu_grads=None), TypeError, "pin_cpu_grads must be true or false, got None"),
])
def test_megatron_offload_rejects(fields, exc, match):
    with pytest.raises(exc, match=match):
        C.OptimizerConfig(lr=1e-3, **fields)


def test_megatron_offload_checked_again_when_mapped():
    oc = C.OptimizerConfig(lr=1e-3, optimizer_cpu_offload=True)
    oc.decoupled_weight_decay = False  # a mutable dataclass: offload_kwargs validates again
    with pytest.raises(ValueError, match="decoupled_weight_decay=False"):
        C.offload_kwargs(oc)


def _megatron_core():
    pytest.importorskip("megatron.core")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import megatron.core.optimizer as mco
    return mco


@pytest.mark.parametrize("fields", [
    dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5),
    dict(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0, pin_cpu_grads=False,
         overlap_cpu_optimizer_d2h_h2d=True),
    dict(optimizer_cpu_offload=True, pin_cpu_params=False, optimizer="sgd"),
    dict(optimizer_offload_fraction=0.3, overlap_cpu_optimizer_d2h_h2d=True),
])
def test_megatron_core_takes_the_same_values(fields):
    """megatron-core's own OptimizerConfig takes the values npadam takes, field for field, and
    they reach its HybridDeviceOptimizer as ``offload_fraction``/``pin_cpu_*`` unchanged."""
    mco = _megatron_core()
    import inspect

    import torch

    ours = C.OptimizerConfig(lr=1e-3, **fields)
    kw = {f.name: getattr(ours, f.name) for f in dataclasses.fields(ours)}
    for name in ("params_dtype", "main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
        kw[name] = getattr(torch, kw[name])
    theirs = mco.OptimizerConfig(**kw)
    for name in _OFFLOAD_FIELDS:
        assert getattr(theirs, name) == getattr(ours, name), name
    src = inspect.getsource(mco._get_megatron_optimizer_based_on_param_groups)
    assert "offload_fraction=config.optimizer_offload_fraction" in src
    assert "pin_cpu_grads=config.pin_cpu_grads" in src and "pin_cpu_params=config.pin_cpu_params" in src


def test_megatron_core_asserts_decoupled_weight_decay_for_cpu_offload():
    """The check npadam makes when the config is made is megatron-core's when it builds the optimizer."""
    mco = _megatron_core()
    import torch

    theirs = mco.OptimizerConfig(lr=1e-3, optimizer_cpu_offload=True, decoupled_weight_decay=False)
    p = torch.nn.Parameter(torch.zeros(4))
    with pytest.raises(AssertionError, match="CPU offloading only supported with decoupled_weight_decay enabled"):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            mco._get_megatron_optimizer_based_on_param_groups(theirs, [], [{"params": [p]}])
    with pytest.raises(ValueError, match="decoupled_weight_decay=False"):
        C.OptimizerConfig(lr=1e-3, optimizer_cpu_offload=True, decoupled_weight_decay=False)


def test_megatron_fields_exist_in_megatron_core():
    mco = _megatron_core()
    theirs = {f.name: f.default for f in dataclasses.fields(mco.OptimizerConfig)}
    ours = {f.name: f.default for f in dataclasses.fields(C.OptimizerConfig)}
    for name in _OFFLOAD_FIELDS:
        assert name in theirs and theirs[name] == ours[name], name


# ---------------------------------------------------------------------- Megatron-LM arguments
@pytest.mark.parametrize("argv, fields", [
    # Megatron-LM's parser: --optimizer-offload-fraction defaults to 1.0 (OptimizerConfig: 0.0)
    (["--optimizer-cpu-offload"], dict(optimizer_cpu_offload=True, optimizer_offload_fraction=1.0)),
    (["--optimizer-cpu-offload", "--optimizer-offload-fraction", "0.25"],
     dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.25)),
    (["--optimizer-offload-fraction=0.5", "--optimizer-cpu-offload"],
     dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5)),
    (["--optimizer-offload-fraction", "0.5"], dict(optimizer_cpu_offload=False, optimizer_offload_fraction=0.5)),
    (["--optimizer-cpu-offload", "--no-pin-cpu-grads"], dict(pin_cpu_grads=False, pin_cpu_params=True)),
    (["--optimizer-cpu-offload", "--no-pin-cpu-params"], dict(pin_cpu_grads=True, pin_cpu_params=False)),
    (["--optimizer-cpu-offload", "--pin-cpu-grads", "--pin-cpu-params"], dict(pin_cpu_grads=True,
                                                                            pin_cpu_params=True)),
    (["--optimizer-cpu-offload", "--overlap-cpu-optimizer-d2h-h2d"], dict(overlap_cpu_optimizer_d2h_h2d=True)),
    (["--optimizer_cpu_offload", "--optimizer_offload_fraction", "1"], dict(optimizer_offload_fraction=1.0)),
])
def test_megatron_lm_offload_flags(argv, fields):
    oc, sc = C.from_args(["--lr", "1e-3"] + argv)
    assert sc is None
    for name, value in fields.items():
        assert getattr(oc, name) == value, name


@pytest.mark.parametrize("argv, exc, match", [
    (["--use-torch-optimizer-for-cpu-offload"], ValueError, "use_torch_optimizer_for_cpu_offload=True"),
    (["--optimizer-cpu-offload", "--optimizer-offload-fraction", "2"], ValueError,
     "optimizer_offload_fraction must be <= 1.0, got 2"),
    (["--optimizer-cpu-offload", "--no-decoupled-weight-decay"], ValueError, "decoupled_weight_decay=False"),
    (["--optimizer-cpu-offload=true"], ValueError, "--optimizer-cpu-offload is a flag"),
    (["--no-pin-cpu-grads", "--pin-cpu-grads"], ValueError, "--pin-cpu-grads is given twice"),
    (["--optimizer-offload-fraction"], ValueError, "--optimizer-offload-fraction needs a value"),
    (["--cpu-offload"], ValueError, "--cpu-offload: unknown argument"),
])
def test_megatron_lm_offload_flags_rejected(argv, exc, match):
    with pytest.raises(exc, match=match):
        C.from_args(["--lr", "1e-3"] + argv)


def test_offload_round_trips_through_files(tmp_path):
    # a Megatron-LM launch line: its parser's default fraction 1.0
    (tmp_path / "run.args").write_text("torchrun pretrain_gpt.py --lr 3e-4 --optimizer-cpu-offload "
                                       "--no-pin-cpu-params --overlap-cpu-optimizer-d2h-h2d\n")
    oc, _ = C.load(tmp_path / "run.args")
    assert C.offload_kwargs(oc) == {"offload_fraction": 1.0, "pin_memory": False}
    assert oc.overlap_cpu_optimizer_d2h_h2d
    # YAML / JSON are megatron-core's dataclass fields: its default fraction 0.0
    (tmp_path / "c.yaml").write_text("optimizer:\n  lr: 3.0e-4\n  optimizer_cpu_offload: true\n")
    oc, _ = C.load(tmp_path / "c.yaml")
    assert C.offload_kwargs(oc) == {"offload_fraction": 0.0, "pin_memory": True}
    want = C.OptimizerConfig(lr=3e-4, optimizer_cpu_offload=True, optimizer_offload_fraction=0.75,
                             pin_cpu_grads=False)
    (tmp_path / "c.json").write_text(json.dumps(C.to_dict(want)))
    got, _ = C.load(tmp_path / "c.json")
    assert got == want and C.offload_kwargs(got) == {"offload_fraction": 0.75, "pin_memory": False}
    assert C.to_dict(want)["optimizer"] == {"lr": 3e-4, "optimizer_cpu_offload": True,
                                            "optimizer_offload_fraction": 0.75, "pin_cpu_grads": False}
    (tmp_path / "bad.yaml").write_text("lr: 1.0e-3\nuse_torch_optimizer_for_cpu_offload: true\n")
    with pytest.raises(ValueError, match="use_torch_optimizer_for_cpu_offload=True"):
        C.load(tmp_path / "bad.yaml")
    assert "CPU offload: 75% of the optimizer state of GPU params in pageable host memory" in C.describe(want)
    assert "CPU offload" not in C.describe(C.OptimizerConfig(lr=1e-3, optimizer_offload_fraction=0.5))


# ---------------------------------------------------------------------- build
class _Built(Exception):
    """Raised by the recording optimizer class: the kwargs ``build`` passed."""


def _recorder(name):
    class Recorder:
        def __init__(self, params, **kwargs):
            raise _Built(name, kwargs)
    return Recorder


@pytest.fixture
def recorded(monkeypatch):
    """``build`` with its optimizer classes replaced: returns what it passed them."""
    import npadam.optimizer as O

    for name in ("AdamW", "Adam", "SGD"):
        monkeypatch.setattr(O, name, _recorder(name))
    try:
        import npadam.torch as NT
    except ImportError:
        NT = None
    if NT is not None:
        for name in ("AdamW", "Adam", "SGD"):
            monkeypatch.setattr(NT, name, _recorder("torch." + name))

    def run(params, oc, **kwargs):
        with pytest.raises(_Built) as e:
            C.build(params, oc, **kwargs)
        return e.value.args
    return run


def _arrays():
    return {"w": np.ones((4, 4), np.float32), "b": np.zeros(4, np.float32)}


@pytest.mark.parametrize("fields, kwargs, want", [
    (dict(), {}, {}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5), {},
     {"offload_fraction": 0.5, "pin_memory": True}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5, pin_cpu_grads=False), {"num_threads": 2},
     {"offload_fraction": 0.5, "pin_memory": False, "num_threads": 2}),
    # the caller's kwarg wins over a value the config only has by default
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5), {"pin_memory": False},
     {"offload_fraction": 0.5, "pin_memory": False}),
    # ... and over keys the config does not set
    (dict(), {"offload_fraction": 0.3, "pin_memory": False}, {"offload_fraction": 0.3, "pin_memory": False}),
    (dict(optimizer_offload_fraction=0.9), {"gpu_state_bytes": 1 << 20}, {"gpu_state_bytes": 1 << 20}),
    # the same value twice is no conflict
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5, pin_cpu_params=False),
     {"offload_fraction": 0.5, "pin_memory": False}, {"offload_fraction": 0.5, "pin_memory": False}),
    (dict(optimizer_cpu_offload=True), {"gpu_state_bytes": 1 << 20},
     {"offload_fraction": 0.0, "pin_memory": True, "gpu_state_bytes": 1 << 20}),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5, optimizer="sgd"), {},
     {"offload_fraction": 0.5, "pin_memory": True}),
])
def test_build_passes_offload_kwargs(recorded, fields, kwargs, want):
    oc = C.OptimizerConfig(lr=1e-3, **fields)
    name, got = recorded(_arrays(), oc, **kwargs)
    assert name == ("SGD" if oc.optimizer == "sgd" else "AdamW")
    assert {k: got[k] for k in got if k not in ("lr", "betas", "eps", "momentum", "max_grad_norm",
                                                 "loss_scaler")} == want
    assert got["max_grad_norm"] == 1.0


@pytest.mark.parametrize("fields, kwargs, match", [
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5), {"offload_fraction": 0.2},
     "offload_fraction=0.2 \\(an optimizer kwarg\\) conflicts with the config's optimizer_cpu_offload=True, "
     "optimizer_offload_fraction=0.5"),
    (dict(optimizer_cpu_offload=True, pin_cpu_grads=False), {"pin_memory": True},
     "pin_memory=True \\(an optimizer kwarg\\) conflicts with the config's pin_cpu_grads=False, "
     "pin_cpu_params=True"),
    (dict(optimizer_cpu_offload=True, optimizer_offload_fraction=0.5), {"gpu_state_bytes": 1 << 20},
     "gpu_state_bytes=1048576 \\(an optimizer kwarg\\) conflicts with the config's optimizer_offload_fraction=0.5"),
])
def test_build_refuses_kwargs_that_contradict_the_config(recorded, fields, kwargs, match):
    oc = C.OptimizerConfig(lr=1e-3, **fields)
    with pytest.raises(ValueError, match=match):
        C.build(_arrays(), oc, **kwargs)


def test_build_torch_passes_offload_kwargs(recorded):
    torch = pytest.importorskip("torch")
    oc = C.OptimizerConfig(lr=1e-3, optimizer_cpu_offload=True, optimizer_offload_fraction=0.25,
                           pin_cpu_params=False)
    model = torch.nn.Linear(4, 4)
    name, got = recorded(model, oc, nvme_offload_fraction=0.5, nvme_offload_dir="/nowhere")
    assert name == "torch.AdamW"
    assert {k: got[k] for k in ("offload_fraction", "pin_memory", "nvme_offload_fraction", "nvme_offload_dir")} == {
        "offload_fraction": 0.25, "pin_memory": False, "nvme_offload_fraction": 0.5, "nvme_offload_dir": "/nowhere"}


def _torch_build(torch, oc, params, **kwargs):
    """A real ``config.build``; skipped while the optimizer does not take a tier option yet."""
    try:
        return C.build(params, oc, **kwargs)
    except TypeError as e:
        if "unexpected keyword argument" in str(e):
            pytest.skip(f"npadam.torch's optimizer does not take this option yet: {e}")
        raise


def test_build_with_deepspeed_nvme_keys_puts_state_on_disk(tmp_path):
    """Host params: ``offload_fraction`` changes nothing, the nvme keys put all the state in files
    under ``nvme_path``; the steps equal an all-memory optimizer's bit for bit."""
    torch = pytest.importorskip("torch")
    ds = {"zero_optimization": {"stage": 3, "sub_group_size": 100_000,
                                "offload_optimizer": {"device": "nvme", "nvme_path": str(tmp_path),
                                                      "pin_memory": False, "ratio": 0.5}}}
    kw = C.deepspeed_offload_kwargs(ds)
    assert kw == {"offload_fraction": 0.5, "pin_memory": False, "nvme_offload_fraction": 1.0,
                  "nvme_offload_dir": str(tmp_path), "nvme_staging_bytes": 4 * 100_000 * 4}
    oc = C.OptimizerConfig(lr=1e-2, weight_decay=0.1)
    torch.manual_seed(0)
    a, b = torch.nn.Linear(64, 32), torch.nn.Linear(64, 32)
    b.load_state_dict(a.state_dict())
    on_disk = _torch_build(torch, oc, a, **kw).optimizer
    in_memory = C.build(b, oc).optimizer
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith("npadam-state-")]
    x = torch.randn(8, 64)
    for _ in range(3):
        for m, opt in ((a, on_disk), (b, in_memory)):
            opt.zero_grad()
            m(x).square().mean().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)
    on_disk.close()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("npadam-state-")]


def test_build_with_megatron_offload_on_host_params_changes_nothing():
    """``optimizer_cpu_offload`` on host params: the optimizer is built with the options and
    steps exactly as without them (the state is already in host memory)."""
    torch = pytest.importorskip("torch")
    torch.manual_seed(1)
    a, b = torch.nn.Linear(16, 8), torch.nn.Linear(16, 8)
    b.load_state_dict(a.state_dict())
    offloaded = C.OptimizerConfig(lr=1e-2, optimizer_cpu_offload=True, optimizer_offload_fraction=0.5,
                                  pin_cpu_grads=False)
    try:
        opt_a = _torch_build(torch, offloaded, a).optimizer
    except ValueError as e:
        if "not available in this version" in str(e):
            pytest.skip(f"npadam.torch refuses offload_fraction on host params for now: {e}")
        raise
    opt_b = C.build(b, C.OptimizerConfig(lr=1e-2)).optimizer
    x = torch.randn(4, 16)
    for _ in range(3):
        for m, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            m(x).sum().backward()
            opt.step()
    for pa, pb in zip(a.parameters(), b.parameters()):
        assert torch.equal(pa, pb)


# ====================================================================== DeepSpeed
def _zero(stage=2, **offload):
    return {"zero_optimization": {"stage": stage, "offload_optimizer": offload}}


#: configs DeepSpeed 0.19.8's config models accept
ACCEPTED = [
    {},
    {"train_batch_size": 8},
    {"zero_optimization": True},
    {"zero_optimization": False},
    {"zero_optimization": {"stage": 2}},
    {"zero_optimization": {"stage": 2, "offload_optimizer": None}},
    {"zero_optimization": {"stage": 2, "offload_optimizer": {}}},
    {"zero_optimization": {"stage": 2, "offload_optimizer": "auto"}},
    {"zero_optimization": {"stage": 2, "reduce_bucket_size": 5e8, "offload_optimizer": {"device": "cpu"}}},
    _zero(0, device="none"),
    _zero(2, device="cpu"),
    _zero(1, device="cpu", pin_memory=False),
    _zero(2, device="cpu", pin_memory="false"),
    _zero(2, device="cpu", pin_memory="Off"),
    _zero(2, device="cpu", pin_memory=0),
    _zero(2, device="cpu", pin_memory=1.0),
    _zero(2, device="cpu", ratio=1),
    _zero(2, device="cpu", ratio=True),
    _zero(3, device="cpu", ratio=0.3),
    _zero(3, device="cpu", ratio="0.25"),
    _zero(3, device="cpu", ratio=" 0.5 "),
    _zero(3, device="cpu", ratio=0),
    _zero(3, device="cpu", ratio=-0.0),
    _zero(3, device="cpu", ratio=np.float32(0.5)),
    _zero(3, device="none", ratio=0.5),
    _zero(2, device="auto"),
    _zero(3, device="cpu", ratio="auto", pin_memory="auto"),
    _zero(3, device="cpu", pipeline_read=True, pipeline_write="yes", fast_init=True, super_offload=True,
          cpuadam_cores_perc=0.5),
    _zero(3, device="nvme", nvme_path="/local_nvme"),
    _zero(3, device="nvme", nvme_path="/local_nvme", buffer_count=5, pin_memory=False),
    _zero(3, device="nvme", nvme_path="/local_nvme/", buffer_count="6", ratio=0.5),
    _zero(3, device="nvme", nvme_path="/local_nvme", buffer_count=4.0),
    _zero(3, device="nvme", nvme_path="/local_nvme", buffer_count=" 2"),
    _zero(3, device="nvme", nvme_path="/local_nvme", buffer_count=True),
    _zero(3, device="nvme", nvme_path="", buffer_count="1_000"),
    _zero(2, device="nvme", nvme_path="/local_nvme", buffer_count=0),  # below stage 3 DeepSpeed swaps nothing
    {"zero_optimization": {"stage": 3, "sub_group_size": 1e6,
                           "offload_optimizer": {"device": "nvme", "nvme_path": "/x", "buffer_count": 8}}},
    {"zero_optimization": {"stage": 3, "sub_group_size": "auto",
                           "offload_optimizer": {"device": "nvme", "nvme_path": "/x"}}},
    {"zero_optimization": {"stage": "2", "offload_optimizer": {"device": "cpu"}}},
    {"zero_optimization": {"stage": 2.0, "offload_optimizer": {"device": "cpu"}}},
    {"zero_optimization": {"stage": True, "offload_optimizer": {"device": "cpu"}}},
    {"zero_optimization": {"stage": "auto"}},
    {"zero_optimization": {"stage": 2, "cpu_offload": True}},
    {"zero_optimization": {"stage": 2, "cpu_offload": "yes"}},
    {"zero_optimization": {"stage": 2, "cpu_offload": False}},
    {"zero_optimization": {"stage": 2, "cpu_offload": None}},
    {"zero_optimization": {"stage": 2, "cpu_offload": "auto", "offload_optimizer": {"device": "cpu"}}},
]

#: (config, the key the error must name, its value as the message shows it): DeepSpeed rejects them too
REJECTED = [
    (_zero(2, device="CPU"), "device", "'CPU'"),
    (_zero(2, device=None), "device", "None"),
    (_zero(2, device=1), "device", "1"),
    (_zero(2, device="disk"), "device", "'disk'"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_size=10**8), "buffer_size", "100000000"),
    (_zero(2, device="cpu", foo=1), "foo", "1"),
    (_zero(2, device="cpu", pipeline=True), "pipeline", "True"),
    (_zero(3, device="cpu", ratio=1.5), "ratio", "1.5"),
    (_zero(3, device="cpu", ratio=-0.1), "ratio", "-0.1"),
    (_zero(3, device="cpu", ratio="abc"), "ratio", "'abc'"),
    (_zero(3, device="cpu", ratio=math.nan), "ratio", "nan"),
    (_zero(3, device="cpu", ratio="inf"), "ratio", "'inf'"),
    (_zero(3, device="cpu", ratio=None), "ratio", "None"),
    (_zero(3, device="cpu", ratio=0.5 + 0j), "ratio", "(0.5+0j)"),
    (_zero(2, device="cpu", ratio=0.5), "ratio", "0.5"),  # partial offloading: stage 3 only
    (_zero(1, device="none", ratio=0.99), "ratio", "0.99"),
    (_zero(0, device="cpu", ratio=0.5), "ratio", "0.5"),
    (_zero(2, device="cpu", pin_memory=2), "pin_memory", "2"),
    (_zero(2, device="cpu", pin_memory=None), "pin_memory", "None"),
    (_zero(2, device="cpu", pin_memory="maybe"), "pin_memory", "'maybe'"),
    (_zero(2, device="cpu", pin_memory=" true"), "pin_memory", "' true'"),
    (_zero(2, device="cpu", pin_memory=0.5), "pin_memory", "0.5"),
    (_zero(2, device="cpu", fast_init=[]), "fast_init", "[]"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count=-1), "buffer_count", "-1"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count=4.5), "buffer_count", "4.5"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count="1e3"), "buffer_count", "'1e3'"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count="0x10"), "buffer_count", "'0x10'"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count=None), "buffer_count", "None"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count=math.inf), "buffer_count", "inf"),
    (_zero(3, device="nvme", nvme_path=5), "nvme_path", "5"),
    (_zero(3, device="nvme", nvme_path=b"/x"), "nvme_path", "b'/x'"),
    (_zero(3, device="cpu", cpuadam_cores_perc=1.5), "cpuadam_cores_perc", "1.5"),
    ({"zero_optimization": {"stage": 4}}, "stage", "4"),
    ({"zero_optimization": {"stage": -1}}, "stage", "-1"),
    ({"zero_optimization": {"stage": 1.5}}, "stage", "1.5"),
    ({"zero_optimization": {"stage": "two"}}, "stage", "'two'"),
    ({"zero_optimization": {"stage": 3, "sub_group_size": -1}}, "sub_group_size", "-1"),
    ({"zero_optimization": {"stage": 3, "sub_group_size": 1.5}}, "sub_group_size", "1.5"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": []}}, "offload_optimizer", "[]"),
    ({"zero_optimization": {"stage": 2, "offload_optimizer": 5}}, "offload_optimizer", "5"),
    ({"zero_optimization": "yes"}, "zero_optimization", "'yes'"),
    ({"zero_optimization": {"stage": 2, "cpu_offload": True, "offload_optimizer": {"device": "cpu"}}},
     "cpu_offload", "offload_optimizer"),
    ({"zero_optimization": {"stage": 2, "cpu_offload": None, "offload_optimizer": {"device": "cpu"}}},
     "cpu_offload", "offload_optimizer"),
    ({"zero_optimization": {"stage": 2, "cpu_offload": False, "offload_optimizer": None}},
     "cpu_offload", "offload_optimizer"),
    ({"zero_optimization": {"stage": 2, "cpu_offload": "maybe"}}, "cpu_offload", "'maybe'"),
]

#: DeepSpeed's config models take these, but its engine offloads nothing (stage 0) or fails
#: building the NVMe swapper; npadam refuses them when mapping
REFUSED_LATER = [
    (_zero(0, device="cpu"), "stage 1, 2 or 3, got stage 0"),
    (_zero(0, device="nvme", nvme_path="/x"), "stage 1, 2 or 3, got stage 0"),
    ({"zero_optimization": {"cpu_offload": True}}, "zero_optimization.cpu_offload=true needs zero_optimization"
                                                   ".stage 1, 2 or 3, got stage 0"),
    ({"zero_optimization": {"stage": "auto", "offload_optimizer": {"device": "cpu"}}}, "got stage 0"),
    (_zero(3, device="nvme"), "device='nvme' needs zero_optimization.offload_optimizer.nvme_path"),
    # below stage 3 DeepSpeed keeps "nvme" state in host memory; npadam needs the directory at any stage
    (_zero(2, device="nvme"), "device='nvme' needs zero_optimization.offload_optimizer.nvme_path"),
    (_zero(3, device="nvme", nvme_path="/x", buffer_count=0), "buffer_count=0 with device 'nvme' at stage 3"),
]


def _deepspeed():
    pytest.importorskip("deepspeed")
    logging.getLogger("DeepSpeed").setLevel(logging.ERROR)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from deepspeed.runtime.zero.config import get_zero_config
        from deepspeed.runtime.zero.offload_config import DeepSpeedZeroOffloadOptimizerConfig
    return get_zero_config, DeepSpeedZeroOffloadOptimizerConfig


def _expected_from_deepspeed(zc):
    """npadam's kwargs from DeepSpeed's parsed ``DeepSpeedZeroConfig``."""
    off = zc.offload_optimizer
    if off is None or off.device == "none":
        return {}
    want = {"offload_fraction": off.ratio + 0.0, "pin_memory": off.pin_memory}
    if off.device == "nvme":
        want.update(nvme_offload_fraction=1.0, nvme_offload_dir=str(off.nvme_path),
                    nvme_staging_bytes=max(1 << 16, off.buffer_count * zc.sub_group_size * 4))
    return want


@pytest.mark.parametrize("ds", ACCEPTED, ids=range(len(ACCEPTED)))
def test_deepspeed_accepts_and_npadam_follows_its_parsed_values(ds):
    get_zero_config, _ = _deepspeed()
    zc = get_zero_config(ds)
    got = C.deepspeed_offload_kwargs(ds)
    assert got == _expected_from_deepspeed(zc)
    assert all(type(v) in (float, bool, str, int) for v in got.values())


@pytest.mark.parametrize("ds, key, shown", REJECTED, ids=range(len(REJECTED)))
def test_deepspeed_rejects_and_so_does_npadam(ds, key, shown):
    get_zero_config, _ = _deepspeed()
    with pytest.raises((ValueError, TypeError, AssertionError)):
        get_zero_config(ds)
    with pytest.raises((ValueError, TypeError)) as e:
        C.deepspeed_offload_kwargs(ds)
    assert key in str(e.value) and shown in str(e.value), str(e.value)


@pytest.mark.parametrize("ds, match", REFUSED_LATER, ids=range(len(REFUSED_LATER)))
def test_npadam_refuses_what_deepspeed_fails_on_later(ds, match):
    get_zero_config, _ = _deepspeed()
    get_zero_config(ds)  # DeepSpeed's config model takes it
    with pytest.raises(ValueError, match=match):
        C.deepspeed_offload_kwargs(ds)


def test_deepspeed_offload_optimizer_fields_and_defaults():
    """npadam knows exactly the fields of DeepSpeed's model, with its defaults, and the
    ``sub_group_size`` default."""
    _, model = _deepspeed()
    from deepspeed.runtime.zero.config import DeepSpeedZeroConfig

    theirs = {name: f.default for name, f in model.model_fields.items()}
    assert set(theirs) == set(OC.DS_OFFLOAD_OPTIMIZER_DEFAULTS)
    for name, default in theirs.items():
        default = getattr(default, "value", default)  # the device enum
        assert default == OC.DS_OFFLOAD_OPTIMIZER_DEFAULTS[name], name
    assert DeepSpeedZeroConfig.model_fields["sub_group_size"].default == OC.DS_SUB_GROUP_SIZE
    assert model.model_config["extra"] == "forbid"


def test_deepspeed_swap_buffers_need_one():
    """DeepSpeed's swap buffer manager (NVMe optimizer state) fails with ``buffer_count`` 0."""
    _deepspeed()
    torch = pytest.importorskip("torch")
    from deepspeed.runtime.swap_tensor.utils import SwapBufferManager

    with pytest.raises(IndexError):
        SwapBufferManager(num_elems=64, count=0, dtype=torch.float32, aio_handle=None)


@pytest.mark.parametrize("ds, want", [
    ({}, {}),
    (_zero(2, device="cpu"), {"offload_fraction": 1.0, "pin_memory": True}),
    (_zero(3, device="cpu", ratio=0.3, pin_memory=False), {"offload_fraction": 0.3, "pin_memory": False}),
    ({"zero_optimization": {"stage": 1, "cpu_offload": True}}, {"offload_fraction": 1.0, "pin_memory": True}),
    (_zero(3, device="nvme", nvme_path="/mnt/nvme", buffer_count=5),
     {"offload_fraction": 1.0, "pin_memory": True, "nvme_offload_fraction": 1.0, "nvme_offload_dir": "/mnt/nvme",
      "nvme_staging_bytes": 5 * 10**9 * 4}),
    ({"zero_optimization": {"stage": 3, "sub_group_size": 1000, "offload_optimizer": {
        "device": "nvme", "nvme_path": "/mnt/nvme", "ratio": 0.25}}},
     {"offload_fraction": 0.25, "pin_memory": True, "nvme_offload_fraction": 1.0, "nvme_offload_dir": "/mnt/nvme",
      "nvme_staging_bytes": 1 << 16}),  # 4 x 1000 x 4 bytes is below npadam's least staging
])
def test_deepspeed_mapping(ds, want):
    """Without DeepSpeed installed too: the mapping itself."""
    assert C.deepspeed_offload_kwargs(ds) == want


def test_deepspeed_bad_argument():
    with pytest.raises(TypeError, match="ds_config must be a DeepSpeed config mapping, got str"):
        C.deepspeed_offload_kwargs("ds_config.json")


def test_deepspeed_nvme_path_may_be_a_pathlike(tmp_path):
    got = C.deepspeed_offload_kwargs(_zero(3, device="nvme", nvme_path=tmp_path))
    assert got["nvme_offload_dir"] == str(tmp_path) and os.path.isdir(got["nvme_offload_dir"])


def test_deepspeed_kwargs_build_a_numpy_optimizer(tmp_path):
    """``deepspeed_offload_kwargs`` output goes straight into an npadam optimizer."""
    kw = C.deepspeed_offload_kwargs(_zero(3, device="nvme", nvme_path=str(tmp_path), pin_memory=False))
    w = np.zeros(1000, np.float32)
    opt = npadam.AdamW([w], lr=1e-3, **kw)
    ref = np.zeros(1000, np.float32)
    mem = npadam.AdamW([ref], lr=1e-3)
    for _ in range(2):
        opt.step([np.full(1000, 0.5, np.float32)])
        mem.step([np.full(1000, 0.5, np.float32)])
    assert w.tobytes() == ref.tobytes()
    assert [p for p in tmp_path.iterdir() if p.name.startswith("npadam-state-")]
    opt.close()
