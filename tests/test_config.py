"""npadam.config: Megatron's field names, validation, sources, and the optimizer it builds."""

from __future__ import annotations

import dataclasses
import json
import warnings

import numpy as np
import pytest

import npadam
from npadam import config as C


def _megatron_optimizer_config():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.optimizer import OptimizerConfig
    return OptimizerConfig


def _norm(v):
    return str(v).replace("torch.", "") if type(v).__module__.startswith("torch") else v


def test_optimizer_config_has_megatron_core_fields_and_defaults():
    pytest.importorskip("megatron.core")
    mc = _megatron_optimizer_config()
    theirs = {f.name: f.default for f in dataclasses.fields(mc)}
    ours = {f.name: f.default for f in dataclasses.fields(C.OptimizerConfig)}
    assert list(ours) == list(theirs)
    for name, default in theirs.items():
        if default is dataclasses.MISSING:
            continue
        assert _norm(default) == ours[name], name
    # values Megatron accepts round-trip: its dataclass built from ours, field by field
    ours_cfg = C.OptimizerConfig(lr=3e-4, min_lr=3e-5, bf16=True, params_dtype="bfloat16", clip_grad=0.5)
    import torch

    kw = {f.name: getattr(ours_cfg, f.name) for f in dataclasses.fields(ours_cfg)}
    for name in ("params_dtype", "main_grads_dtype", "main_params_dtype", "exp_avg_dtype", "exp_avg_sq_dtype"):
        kw[name] = getattr(torch, kw[name])
    theirs_cfg = mc(**kw)
    for f in dataclasses.fields(mc):
        assert _norm(getattr(theirs_cfg, f.name)) == getattr(ours_cfg, f.name), f.name


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(), ValueError, "lr must be set"),
    (dict(lr=-1.0), ValueError, "lr must be >= 0"),
    (dict(lr=1e-3, min_lr=1e-2), ValueError, "min_lr=0.01 is above lr=0.001"),
    (dict(lr=1e-3, decoupled_min_lr=1e-4), ValueError, "decoupled_min_lr is set without decoupled_lr"),
    (dict(lr=1e-3, fp16=True, bf16=True), ValueError, "fp16 and bf16 are both set"),
    (dict(lr=1e-3, fp16="yes"), TypeError, "fp16 must be true or false"),
    (dict(lr=1e-3, optimizer="lamb"), ValueError, "optimizer must be one of"),
    (dict(lr=1e-3, optimizer="muon"), ValueError, "runs 'adam' and 'sgd'"),
    (dict(lr=1e-3, adam_beta1=1.0), ValueError, "adam_beta1 must be < 1"),
    (dict(lr=1e-3, adam_eps=-1.0), ValueError, "adam_eps must be >= 0"),
    (dict(lr=1e-3, hysteresis=0), ValueError, "hysteresis must be >= 1"),
    (dict(lr=1e-3, loss_scale_window=0.5), ValueError, "loss_scale_window must be an integer"),
    (dict(lr=1e-3, min_loss_scale=2.0**40), ValueError, "min_loss_scale=.* is above initial_loss_scale"),
    (dict(lr=1e-3, loss_scale=0.0), ValueError, "loss_scale must be > 0"),
    (dict(lr=1e-3, clip_grad=-1.0), ValueError, "clip_grad must be >= 0"),
    (dict(lr=1e-3, exp_avg_dtype="int4"), ValueError, "exp_avg_dtype must be one of"),
    (dict(lr=1e-3, params_dtype="bfloat16"), ValueError, "params_dtype='bfloat16' without fp16/bf16"),
    (dict(lr=1e-3, use_distributed_optimizer=True), ValueError, "use_distributed_optimizer=True needs sharding"),
    (dict(lr=1e-3, optimizer_cpu_offload=True, use_torch_optimizer_for_cpu_offload=True), ValueError,
     "use_torch_optimizer_for_cpu_offload"),
    (dict(lr=1e-3, optimizer_offload_fraction=float("nan")), ValueError, "optimizer_offload_fraction"),
    (dict(lr=1e-3, use_precision_aware_optimizer=True, optimizer="sgd"), ValueError,
     "use-precision-aware-optimizer only supported with adam"),
    (dict(lr=1e-3, exp_avg_dtype="bfloat16"), ValueError,
     "exp_avg_dtype='bfloat16' without use_precision_aware_optimizer: megatron-core asserts"),
    (dict(lr=1e-3, fp8_recipe="delayed"), ValueError, "fp8_recipe='delayed' needs FP8"),
])
def test_optimizer_config_rejects(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        C.OptimizerConfig(**kwargs)


@pytest.mark.parametrize("kwargs, match", [
    (dict(), "train_iters \\(or train_samples\\) must be set"),
    (dict(train_iters=10, train_samples=100), "both set"),
    (dict(train_iters=100, lr_warmup_fraction=0.1, lr_warmup_iters=5), "lr_warmup_fraction and lr_warmup_iters"),
    (dict(train_iters=100, lr_decay_style="WSD"), "needs lr_wsd_decay_iters"),
    (dict(train_iters=100, lr_decay_style="step"), "lr_decay_style must be one of"),
    (dict(train_iters=100, lr_wsd_decay_style="square"), "lr_wsd_decay_style must be one of"),
    (dict(train_iters=100, weight_decay_incr_style="linear"), "needs start_weight_decay and end_weight_decay"),
    (dict(train_iters=100, lr_warmup_iters=100), "warmup \\(100 steps\\) must be shorter"),
    (dict(train_iters=100, lr_decay_samples=50), "lr_decay_samples is set but training is counted in iters"),
    (dict(train_samples=100, lr_warmup_iters=5), "lr_warmup_iters is set but training is counted in samples"),
    (dict(train_iters=100, override_opt_param_scheduler=True, use_checkpoint_opt_param_scheduler=True),
     "both set"),
    (dict(train_iters=100, global_batch_size=0), "global_batch_size must be >= 1"),
    (dict(train_iters=100, lr_warmup_fraction=1.5), "lr_warmup_fraction must be <= 1"),
    (dict(train_iters=100, lr_decay_style="WSD", lr_wsd_decay_iters=200), "longer than the decay"),
])
def test_scheduler_config_rejects(kwargs, match):
    with pytest.raises(ValueError, match=match):
        C.SchedulerConfig(**kwargs)


def test_derived_steps_follow_megatron():
    s = C.SchedulerConfig(train_iters=1000, lr_warmup_fraction=0.01, lr_decay_iters=800, global_batch_size=4,
                          lr_decay_style="WSD", lr_wsd_decay_iters=100)
    assert s.steps() == {"lr_decay_steps": 3200, "lr_warmup_steps": 32, "wd_incr_steps": 4000,
                         "wsd_decay_steps": 400, "train_iters": 1000}
    s = C.SchedulerConfig(train_samples=5000, lr_warmup_samples=100, global_batch_size=3)
    assert s.steps() == {"lr_decay_steps": 5000, "lr_warmup_steps": 100, "wd_incr_steps": 5000,
                         "wsd_decay_steps": None, "train_iters": 1666}


# ------------------------------------------------------------------ sources
_CFG = {"optimizer": {"lr": 3e-4, "min_lr": 3e-5, "weight_decay": 0.1, "adam_beta2": 0.95, "clip_grad": 1.0},
        "scheduler": {"lr_decay_style": "cosine", "lr_warmup_iters": 10, "start_weight_decay": 0.05,
                      "end_weight_decay": 0.1, "weight_decay_incr_style": "linear"},
        "train": {"train_iters": 200, "micro_batch_size": 4}}


def _same(a, b):
    return dataclasses.asdict(a[0]) == dataclasses.asdict(b[0]) and dataclasses.asdict(a[1]) == dataclasses.asdict(b[1])


def test_yaml_json_toml_mapping_and_args_agree(tmp_path):
    import yaml

    (tmp_path / "c.yaml").write_text(yaml.safe_dump(_CFG))
    (tmp_path / "c.json").write_text(json.dumps(_CFG))
    toml = ["[optimizer]", "lr = 3e-4", "min_lr = 3e-5", "weight_decay = 0.1", "adam_beta2 = 0.95",
            "clip_grad = 1.0", "[scheduler]", 'lr_decay_style = "cosine"', "lr_warmup_iters = 10",
            "start_weight_decay = 0.05", "end_weight_decay = 0.1", 'weight_decay_incr_style = "linear"',
            "[train]", "train_iters = 200", "micro_batch_size = 4"]
    (tmp_path / "c.toml").write_text("\n".join(toml) + "\n")
    args = ["--lr", "3e-4", "--min-lr=3e-5", "--weight-decay", "0.1", "--adam-beta2", "0.95", "--clip-grad", "1.0",
            "--lr-decay-style", "cosine", "--lr-warmup-iters", "10", "--start-weight-decay", "0.05",
            "--end-weight-decay", "0.1", "--weight-decay-incr-style", "linear", "--train-iters", "200",
            "--micro-batch-size", "4"]
    ref = C.load(_CFG)
    for src in (tmp_path / "c.yaml", tmp_path / "c.json", str(tmp_path / "c.toml"), args):
        assert _same(C.load(src), ref), src
    assert ref[0].lr == 3e-4 and ref[1].train_iters == 200


def test_megatron_flags_in_argument_lists():
    oc, sc = C.from_args(["--lr", "1e-3", "--fp16", "--initial-loss-scale", "65536", "--hysteresis", "3",
                          "--no-decoupled-weight-decay", "--train-iters", "50", "--override-opt_param-scheduler"])
    assert oc.fp16 and oc.initial_loss_scale == 65536 and oc.hysteresis == 3 and not oc.decoupled_weight_decay
    assert sc.override_opt_param_scheduler


@pytest.mark.parametrize("args, match", [
    (["--lr", "1e-3", "--adam-beta"], "--adam-beta: unknown argument \\(did you mean 'adam_beta[12]'\\?\\)"),
    (["--lr"], "--lr needs a value"),
    (["--lr", "1e-3", "--lr", "2e-3"], "--lr is given twice"),
    (["--lr", "fast"], "lr must be a real number"),
    (["--lr", "1e-3", "--bf16=yes"], "--bf16 is a flag"),
    (["lr", "1e-3"], "expected --name"),
])
def test_bad_argument_lists(args, match):
    with pytest.raises((ValueError, TypeError), match=match):
        C.from_args(args)


def test_bad_files(tmp_path):
    (tmp_path / "typo.yaml").write_text("lr: 1e-3\nadam_beta_1: 0.9\n")
    with pytest.raises(ValueError, match="unknown field 'adam_beta_1' \\(did you mean 'adam_beta1'\\?\\)"):
        C.load(tmp_path / "typo.yaml")
    names = "abcdefghi"
    bomb = "a: &a [lol,lol,lol,lol,lol,lol,lol,lol,lol]\n" + "".join(
        f"{n}: &{n} [{','.join('*' + p for _ in range(9))}]\n" for p, n in zip(names, names[1:]))
    (tmp_path / "bomb.yaml").write_text(bomb)  # a billion laughs: 9**9 strings from 1 KB
    with pytest.raises(ValueError, match="aliases"):
        C.load(tmp_path / "bomb.yaml")
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json: expected a mapping"):
        C.load(tmp_path / "list.json")
    (tmp_path / "bin.yaml").write_bytes(b"\xff\xfe\x00lr")
    with pytest.raises(ValueError, match="not a UTF-8 text file"):
        C.load(tmp_path / "bin.yaml")
    (tmp_path / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    with pytest.raises(ValueError, match="nested more than 100 levels"):
        C.load(tmp_path / "deep.json")
    (tmp_path / "c.ini").write_text("lr=1")  # sniffed: YAML, a plain string
    with pytest.raises(ValueError, match="c.ini: expected a mapping"):
        C.load(tmp_path / "c.ini")
    with pytest.raises(ValueError, match="missing.yaml: cannot read"):
        C.load(tmp_path / "missing.yaml")
    (tmp_path / "twice.yaml").write_text("lr: 1e-3\noptimizer:\n  lr: 2e-3\n")
    with pytest.raises(ValueError, match="'lr' is given twice"):
        C.load(tmp_path / "twice.yaml")
    (tmp_path / "big.json").write_text('{"lr": 1' + "0" * 40 + "}")
    with pytest.raises(ValueError, match="out of range"):
        C.load(tmp_path / "big.json")
    (tmp_path / "run.args").write_text("torchrun pretrain_gpt.py --lr 3e-4 --no-decoupled-weight-decay --bf16\n")
    oc, sc = C.load(tmp_path / "run.args")
    assert oc.lr == 3e-4 and oc.bf16 and not oc.decoupled_weight_decay and sc is None


# ------------------------------------------------------------------ build
def _arrays():
    rng = np.random.default_rng(0)
    return {"embedding.word_embeddings.weight": rng.standard_normal((10, 4)).astype(np.float32),
            "decoder.layer.linear.weight": rng.standard_normal((4, 4)).astype(np.float32),
            "decoder.layer.linear.bias": np.zeros(4, np.float32),
            "decoder.layer.norm.weight": np.ones(4, np.float32),
            "output_layer.weight": rng.standard_normal((10, 4)).astype(np.float32)}


@pytest.fixture(scope="module")
def megatron_groups(tmp_path_factory):
    """megatron-core's ``_get_param_groups(model_chunks, config, None)`` (it all-gathers the group
    keys, so a one-rank gloo process group is set up for it)."""
    pytest.importorskip("megatron.core")
    import torch.distributed as dist

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.optimizer import _get_param_groups
    mine = not dist.is_initialized()
    if mine:
        dist.init_process_group("gloo", init_method=f"file://{tmp_path_factory.mktemp('dist') / 'init'}",
                                rank=0, world_size=1)
    yield lambda model, cfg: _get_param_groups([model], cfg, None)
    if mine:
        dist.destroy_process_group()


def _megatron_model(torch):
    """A module whose param names are those of ``_arrays()``, embedding and output marked as
    Megatron marks them."""
    m = torch.nn.Module()
    m.embedding = torch.nn.Module()
    m.embedding.word_embeddings = torch.nn.Embedding(10, 4)
    m.decoder = torch.nn.Module()
    m.decoder.layer = torch.nn.Module()
    m.decoder.layer.linear = torch.nn.Linear(4, 4)
    m.decoder.layer.norm = torch.nn.LayerNorm(4, bias=False)
    m.output_layer = torch.nn.Linear(4, 10, bias=False)
    m.embedding.word_embeddings.weight.is_embedding_or_output_parameter = True
    m.output_layer.weight.is_embedding_or_output_parameter = True
    return m


def _mc_config(oc):
    mc = _megatron_optimizer_config()
    return mc(**{f.name: getattr(oc, f.name) for f in dataclasses.fields(mc)
                 if f.name in ("lr", "min_lr", "decoupled_lr", "decoupled_min_lr", "weight_decay",
                               "apply_wd_to_qk_layernorm")})


def test_build_matches_megatron_param_groups_and_scheduler(megatron_groups):
    """Group by group and step by step: the groups ``build`` makes are megatron-core's
    ``_get_param_groups`` groups (same params, same order), and the lr and weight decay npadam
    applies equal those Megatron's OptimizerParamScheduler writes into them."""
    torch = pytest.importorskip("torch")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

    oc = C.OptimizerConfig(lr=1e-3, min_lr=1e-5, decoupled_lr=5e-3, decoupled_min_lr=5e-5, weight_decay=0.1)
    sc = C.SchedulerConfig(train_iters=60, lr_warmup_iters=6, lr_decay_style="cosine", start_weight_decay=0.02,
                           end_weight_decay=0.1, weight_decay_incr_style="cosine")
    model = _megatron_model(torch)
    names = {id(p): n for n, p in model.named_parameters()}
    theirs = megatron_groups(model, _mc_config(oc))
    p = _arrays()
    built = C.build(p, oc, sc, decoupled=["embedding.word_embeddings.weight", "output_layer.weight"],
                    kernel="reference")
    opt = built.optimizer
    assert [g["names"] for g in opt.param_groups] == [[names[id(t)] for t in g["params"]] for g in theirs]
    assert [g["names"] for g in opt.param_groups] == [
        ["decoder.layer.linear.weight"], ["embedding.word_embeddings.weight", "output_layer.weight"],
        ["decoder.layer.linear.bias", "decoder.layer.norm.weight"]]            # Megatron's order
    topt = torch.optim.AdamW(theirs, lr=oc.lr)
    s = sc.steps()
    meg = OptimizerParamScheduler(topt, init_lr=sc.lr_warmup_init, max_lr=oc.lr, min_lr=oc.min_lr,
                                  lr_warmup_steps=s["lr_warmup_steps"], lr_decay_steps=s["lr_decay_steps"],
                                  lr_decay_style=sc.lr_decay_style, start_wd=sc.start_weight_decay,
                                  end_wd=sc.end_weight_decay, wd_incr_steps=s["wd_incr_steps"],
                                  wd_incr_style=sc.weight_decay_incr_style)
    grads = {n: np.ones_like(a) for n, a in p.items()}
    seen = set()
    for k in range(60):  # the groups show the values of the next update, as Megatron's after k steps
        for gi, (g, tg) in enumerate(zip(opt.param_groups, topt.param_groups)):
            assert g["lr"] == tg["lr"], (k, gi)
            assert g["weight_decay"] == tg["weight_decay"], (k, gi)
            seen.add((gi, g["lr"]))
        opt.step(grads)
        meg.step(1)
    assert len(seen) > 100


@pytest.mark.parametrize("kw", [
    dict(),
    dict(decoupled_lr=2e-3),
    dict(decoupled_lr=2e-3, decoupled_min_lr=1e-6, min_lr=None),
    dict(apply_wd_to_qk_layernorm=True, decoupled_lr=0.0),
])
def test_param_groups_are_megatron_cores(megatron_groups, kw):
    """``config.param_groups`` against megatron-core's ``_get_param_groups`` with its standard
    overrides: the same dicts (keys, values, order), the same params in each."""
    torch = pytest.importorskip("torch")
    model = _megatron_model(torch)
    model.decoder.layer.q_layernorm = torch.nn.LayerNorm(4)
    model.decoder.layer.k_layernorm = torch.nn.LayerNorm(4, bias=False)
    model.output_layer.bias = torch.nn.Parameter(torch.zeros(10))      # a decoupled 1-D param
    model.output_layer.bias.is_embedding_or_output_parameter = True
    model.decoder.layer.frozen = torch.nn.Parameter(torch.zeros(3), requires_grad=False)
    oc = C.OptimizerConfig(**{"lr": 1e-3, "min_lr": 1e-5, **kw})
    theirs = megatron_groups(model, _mc_config(oc))
    ours = C.param_groups(model, oc)
    assert len(ours) == len(theirs)
    for o, t in zip(ours, theirs):
        assert [id(x) for x in o["params"]] == [id(x) for x in t["params"]]
        assert {k: v for k, v in o.items() if k not in ("params", "param_names")} == \
            {k: v for k, v in t.items() if k != "params"}
        assert list(o)[:len(t)] == list(t)       # Megatron's keys in Megatron's order, then param_names
    named = dict(model.named_parameters())
    assert all(named[n] is x for g in ours for n, x in zip(g["param_names"], g["params"]))


def test_build_torch_model_marks_megatron_groups():
    torch = pytest.importorskip("torch")
    import npadam.torch  # noqa: F401

    model = torch.nn.Sequential(torch.nn.Embedding(10, 8), torch.nn.LayerNorm(8), torch.nn.Linear(8, 10))
    model[0].weight.is_embedding_or_output_parameter = True
    model[2].weight.is_embedding_or_output_parameter = True
    oc = C.OptimizerConfig(lr=1e-3, min_lr=0.0, decoupled_lr=2e-3, clip_grad=0.0)
    sc = C.SchedulerConfig(train_iters=20, lr_warmup_iters=2)
    built = C.build(model, oc, sc)
    assert isinstance(built.optimizer, npadam.torch.AdamW) and built.optimizer.max_grad_norm is None
    names = [g["param_names"] for g in built.optimizer.param_groups]
    assert names == [["0.weight", "2.weight"], ["1.weight", "1.bias", "2.bias"]]   # Megatron's order
    assert [g["weight_decay"] for g in built.optimizer.param_groups] == [0.01, 0.0]
    x = torch.randint(0, 10, (4, 3))
    for _ in range(3):
        model(x).sum().backward()
        built.optimizer.step()
        built.scheduler.step()
        built.optimizer.zero_grad()
    assert built.optimizer.param_groups[0]["lr"] == pytest.approx(2e-3 * (1 - 0.0) * 1.0, rel=0.2)


def test_build_rejects_inconsistent_models():
    p = _arrays()
    with pytest.raises(ValueError, match="bf16=True but param 'embedding.word_embeddings.weight' is float32"):
        C.build(p, C.OptimizerConfig(lr=1e-3, bf16=True))
    with pytest.raises(ValueError, match="no param is decoupled"):
        C.build(p, C.OptimizerConfig(lr=1e-3, decoupled_lr=1e-2))
    with pytest.raises(TypeError, match="need the names"):
        C.build(list(p.values()), C.OptimizerConfig(lr=1e-3))
    with pytest.raises(ValueError, match="not params"):
        C.build(p, C.OptimizerConfig(lr=1e-3, decoupled_lr=1e-2), decoupled=["nope"])


def test_build_without_scheduler_is_constant_and_adam_l2_when_not_decoupled():
    p = _arrays()
    built = C.build(p, C.OptimizerConfig(lr=1e-3, decoupled_weight_decay=False, clip_grad=2.0), kernel="reference")
    assert isinstance(built.optimizer, npadam.Adam) and built.optimizer.max_grad_norm == 2.0
    assert float(built.schedules.lr(1000)) == 1e-3
    assert "Adam: lr 0.001" in C.describe(C.OptimizerConfig(lr=1e-3, decoupled_weight_decay=False))


def test_build_loss_scaling_follows_megatron():
    p = {"w": np.ones((4, 4), np.float16), "b": np.zeros(4, np.float16)}
    built = C.build(p, C.OptimizerConfig(lr=1e-3, fp16=True, hysteresis=3, loss_scale_window=7,
                                          min_loss_scale=4.0), kernel="reference")
    s = built.optimizer.loss_scaler
    assert (s.scale, s.hysteresis, s.growth_interval, s.min_scale, s.dynamic) == (2.0**32, 3, 7, 4.0, True)
    built = C.build(p, C.OptimizerConfig(lr=1e-3, fp16=True, loss_scale=128.0), kernel="reference")
    assert built.optimizer.loss_scaler.scale == 128.0 and not built.optimizer.loss_scaler.dynamic
    bf = {"w": np.ones((4, 4), np.float32).astype(__import__("ml_dtypes").bfloat16)}
    assert C.build(bf, C.OptimizerConfig(lr=1e-3, bf16=True)).optimizer.loss_scaler is None
    assert C.build({"w": np.ones(3, np.float32)}, C.OptimizerConfig(lr=1e-3)).optimizer.loss_scaler is None


def test_build_sgd_follows_megatron():
    """optimizer="sgd": torch.optim.SGD(lr, weight_decay, momentum=sgd_momentum) in Megatron; here on
    the same runtime, for arrays and for torch modules."""
    p = _arrays()
    built = C.build(p, C.OptimizerConfig(lr=0.1, optimizer="sgd", sgd_momentum=0.8, weight_decay=0.01),
                    C.SchedulerConfig(train_iters=10, lr_warmup_iters=2), kernel="reference")
    opt = built.optimizer
    assert isinstance(opt, npadam.SGD) and [g["momentum"] for g in opt.param_groups] == [0.8, 0.8]
    assert [g["weight_decay"] for g in opt.param_groups] == [0.01, 0.0]
    torch = pytest.importorskip("torch")
    import npadam.torch as NT

    bt = C.build(torch.nn.Linear(4, 2), C.OptimizerConfig(lr=0.1, optimizer="sgd"), C.SchedulerConfig(train_iters=10))
    assert isinstance(bt.optimizer, NT.SGD) and bt.optimizer.param_groups[0]["momentum"] == 0.9


# ------------------------------------------------------------------ review findings (each failed before its fix)
def test_duplicate_keys_and_yaml_exponents(tmp_path):
    (tmp_path / "d.json").write_text('{"lr": 3e-4, "lr": 1e-3}')
    with pytest.raises(ValueError, match="duplicate key 'lr'"):
        C.load(tmp_path / "d.json")
    (tmp_path / "d.yaml").write_text("optimizer:\n  lr: 1.0\noptimizer:\n  lr: 2.0\n")
    with pytest.raises(ValueError, match="duplicate key 'optimizer' at line 3"):
        C.load(tmp_path / "d.yaml")
    (tmp_path / "e.yaml").write_text("lr: 3e-4\nmin_lr: 1E-5\nadam_eps: -1.5e+0\n")
    with pytest.raises(ValueError, match="adam_eps must be >= 0.0, got -1.5"):
        C.load(tmp_path / "e.yaml")  # parsed as numbers (PyYAML alone reads 3e-4 as a string)
    (tmp_path / "e.yaml").write_text("lr: 3e-4\nmin_lr: 1E-5\n")
    oc, _ = C.load(tmp_path / "e.yaml")
    assert (oc.lr, oc.min_lr) == (3e-4, 1e-5)


def test_constant_weight_decay_style_follows_megatron():
    """Megatron-LM asserts start/end_weight_decay are unset with 'constant' and uses weight_decay."""
    with pytest.raises(ValueError, match="Megatron requires them unset"):
        C.SchedulerConfig(train_iters=10, start_weight_decay=0.05, end_weight_decay=0.05)


def test_huge_numbers_and_single_decoupled_name():
    with pytest.raises(ValueError, match="too large for a float"):
        C.OptimizerConfig(lr=10**400)
    with pytest.raises(ValueError, match="too large for a float"):
        C.from_args(["--lr", "1" + "0" * 400])
    p = _arrays()
    built = C.build(p, C.OptimizerConfig(lr=1e-3, decoupled_lr=1e-2), decoupled="output_layer.weight",
                    kernel="reference")
    assert ["output_layer.weight"] in [g["names"] for g in built.optimizer.param_groups]


# ------------------------------------------------------------------ decoupled lr, ramp-up, legacy --warmup
_RAMP = {"lr": 3e-4, "min_lr": 3e-5, "decoupled_lr": 1e-3, "lr_decay_style": "cosine", "lr_warmup_samples": 2000,
         "train_samples": 100_000, "global_batch_size": 64, "rampup_batch_size": [16, 16, 20_000]}


def test_rampup_and_decoupled_from_every_source(tmp_path):
    """YAML list, JSON, a Megatron argument list (``--rampup-batch-size 16 16 20000``, nargs=3, also
    ``=16 16 20000``) and an argument file agree; the schedules are ``from_config``'s."""
    import yaml

    (tmp_path / "r.yaml").write_text(yaml.safe_dump(_RAMP))
    (tmp_path / "r.json").write_text(json.dumps(_RAMP))
    args = ["--lr", "3e-4", "--min-lr", "3e-5", "--decoupled-lr", "1e-3", "--lr-decay-style", "cosine",
            "--lr-warmup-samples", "2000", "--train-samples", "100000", "--global-batch-size", "64",
            "--rampup-batch-size", "16", "16", "20000"]
    (tmp_path / "r.args").write_text("torchrun pretrain_gpt.py " + " ".join(args) + " --bf16\n")
    ref = C.load(_RAMP)
    assert ref[1].rampup_batch_size == [16, 16, 20_000]
    eq = args[:-4] + ["--rampup-batch-size=16", "16", "20000"]
    for src in (tmp_path / "r.yaml", tmp_path / "r.json", args, eq):
        assert _same(C.load(src), ref), src
    oc, sc = C.load(tmp_path / "r.args")
    assert oc.bf16 and sc.rampup_batch_size == [16, 16, 20_000]
    gs = C.schedules_for(*ref)
    want = npadam.schedules.from_config("megatron", _RAMP)
    assert isinstance(gs, npadam.schedules.GroupSchedules) and gs == want and len(gs) == 2
    assert gs[1].lr.params["schedule"].params["max_lr"] == 1e-3
    assert ref[1].steps()["train_iters"] == gs[0].lr.table.train_iters(100_000) == 2014
    text = C.describe(*ref)
    assert "embedding/output params (decoupled): lr 0.001 -> 3e-05" in text
    assert "batch size ramp-up: 16 -> 64 by 16 every 6666.67 samples (over 20000 samples)" in text
    assert "train_iters: 2014" in text


@pytest.mark.parametrize("args, match", [
    (["--lr", "1e-3", "--train-samples", "100", "--rampup-batch-size", "16", "8"], "needs 3 values"),
    (["--lr", "1e-3", "--train-samples", "100", "--rampup-batch-size", "16", "8", "--bf16"], "needs 3 values"),
    (["--lr", "1e-3", "--train-samples", "100", "--global-batch-size", "32", "--rampup-batch-size", "16", "5",
      "100"], "divisible by the rampup increment"),
    (["--lr", "1e-3", "--train-iters", "100", "--global-batch-size", "32", "--rampup-batch-size", "16", "8", "100"],
     "expected no batch-size rampup for iteration-based training"),
    (["--lr", "1e-3", "--train-iters", "100", "--warmup", "10"], "use --lr-warmup-fraction instead"),
])
def test_rampup_and_warmup_rejected(args, match):
    with pytest.raises(ValueError, match=match):
        C.from_args(args)


@pytest.mark.parametrize("kwargs, exc, match", [
    (dict(train_samples=100, global_batch_size=8, rampup_batch_size=[16, 8, 100]), ValueError, "must be >= the"),
    (dict(train_samples=100, global_batch_size=16, rampup_batch_size=[16, 8, 100]), ValueError, "no increments"),
    (dict(train_samples=100, global_batch_size=32, rampup_batch_size=[16, 8, 0]), ValueError, "must be > 0"),
    (dict(train_samples=100, global_batch_size=32, rampup_batch_size=[16, 8]), ValueError, "3 values"),
    (dict(train_samples=100, global_batch_size=32, rampup_batch_size="16 8 100"), TypeError, "must be a list"),
    (dict(train_samples=100, global_batch_size=32, rampup_batch_size=[16, 8.5, 100]), ValueError, "increment"),
    (dict(train_samples=100, global_batch_size=32, rampup_batch_size=[16, 8, 2**62]), ValueError, "< 2\\*\\*62"),
    (dict(train_iters=100, warmup=0), ValueError, "legacy --warmup"),
])
def test_scheduler_config_rejects_rampup_and_warmup(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        C.SchedulerConfig(**kwargs)
    assert C.SchedulerConfig(train_iters=100, warmup=None).warmup is None


def test_param_groups_feed_from_config_and_reject_ambiguity():
    oc = C.OptimizerConfig(lr=1e-3, min_lr=1e-5, decoupled_lr=4e-3)
    sc = C.SchedulerConfig(train_iters=50, lr_warmup_iters=5, lr_decay_style="linear")
    groups = C.param_groups(_arrays(), oc, decoupled=["output_layer.weight", "embedding.word_embeddings.weight"])
    gs = C.schedules_for(oc, sc, groups)
    assert [g["max_lr"] for g in groups] == [1e-3, 4e-3, 1e-3] and [g["wd_mult"] for g in groups] == [1.0, 1.0, 0.0]
    assert [float(s.lr(5)) for s in gs] == [1e-3, 4e-3, 1e-3] and float(gs[2].weight_decay(5)) == 0.0
    assert [s.lr for s in gs[:2]] == [s.lr for s in C.schedules_for(oc, sc)]     # decoupled without groups
    flat = {"lr": 1e-3, "train_iters": 50, "decoupled_lr": 4e-3, "param_groups": groups}
    with pytest.raises(ValueError, match="decoupled_lr / decoupled_min_lr and param_groups are both given"):
        npadam.schedules.from_config("megatron", flat)
    with pytest.raises(TypeError, match="optimizer_config must be"):
        C.param_groups(_arrays(), {"lr": 1e-3})


def test_cli_shows_groups_and_rampup(tmp_path, capsys):
    """``npadam config`` prints lr[0] / lr[1] and the ramp-up; ``npadam schedule --framework megatron``
    dumps per-group columns from a run config and from a flat config with ``param_groups``."""
    import yaml
    from npadam.cli import main

    opt_keys = ("lr", "min_lr", "decoupled_lr")
    (tmp_path / "r.yaml").write_text(yaml.safe_dump({"optimizer": {k: _RAMP[k] for k in opt_keys},
                                                     "scheduler": {k: v for k, v in _RAMP.items() if k not in opt_keys}}))
    assert main(["config", str(tmp_path / "r.yaml")]) == 0
    out = capsys.readouterr().out
    assert "lr[0] at update k: 0: 0, 1: 2.4e-06" in out and "lr[1] at update k: 0: 0, 1: 8e-06" in out
    assert "train_iters: 2014" in out and "full batches from iteration 765" in out
    assert main(["config", str(tmp_path / "r.yaml"), "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["derived"]["train_iters"] == 2014
    assert main(["schedule", "--framework", "megatron", "--config", str(tmp_path / "r.yaml"), "--format", "json",
                 "--steps", "300"]) == 0
    doc = json.loads(capsys.readouterr().out)
    want = npadam.schedules.from_config("megatron", _RAMP)
    cols = doc.get("columns", doc)
    for i in range(2):
        assert np.array_equal(np.asarray(cols[f"lr[{i}]"], np.float64), want[i].lr(np.arange(300)))
    flat = {**{k: v for k, v in _RAMP.items() if k != "decoupled_lr"}, "weight_decay": 0.1,
            "param_groups": [{}, {"max_lr": 1e-3, "min_lr": 1e-6}, {"wd_mult": 0.0}]}
    (tmp_path / "flat.json").write_text(json.dumps(flat))
    assert main(["schedule", "--framework", "megatron", "--config", str(tmp_path / "flat.json"), "--format", "json",
                 "--steps", "50"]) == 0
    doc = json.loads(capsys.readouterr().out)
    cols = doc.get("columns", doc)
    want = npadam.schedules.from_config("megatron", flat)
    assert [c for c in cols if c.startswith(("lr", "weight"))] == [n for n, _ in want.items()]
    assert np.array_equal(np.asarray(cols["weight_decay[2]"], np.float64), np.zeros(50))
    assert np.array_equal(np.asarray(cols["lr[1]"], np.float64), want[1].lr(np.arange(50)))
