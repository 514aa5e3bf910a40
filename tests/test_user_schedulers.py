"""Regressions found by driving the new scheduler features as users do (torch loops with
decoupled / no-decay param groups, checkpoint resume, the Megatron CLI).

Each test reproduces one bug in a few lines; all together they run in a few seconds.
"""

from __future__ import annotations

import numpy as np
import pytest

import npadam
from npadam import checkpoint, schedules
from npadam.cli import EXIT_USAGE, main


def _cli(capsys, *argv):
    rc = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return rc, out, err


# --------------------------------------------------------------------------- Megatron CLI
_MEGATRON_BASE = ("lr: 3.0e-4\nmin_lr: 3.0e-5\nlr_decay_style: cosine\ntrain_iters: 100\n"
                  "lr_warmup_iters: 10\nparam_groups: [{max_lr: 1.0e-3}, {}]\n")


def test_cli_megatron_param_groups_with_decoupled_lr_names_the_conflict(tmp_path, capsys):
    """``decoupled_lr`` together with ``param_groups`` is documented to raise a ValueError naming the
    conflict (``schedules.from_config("megatron", ...)`` does). Through ``npadam schedule --framework
    megatron`` the file was routed to ``npadam.config`` (decoupled_lr is an OptimizerConfig field),
    which said ``unknown field 'param_groups' (did you mean 'adam_eps'?)``."""
    cfg = tmp_path / "meg.yaml"
    cfg.write_text(_MEGATRON_BASE + "decoupled_lr: 1.0e-3\n")
    rc, out, err = _cli(capsys, "schedule", "--framework", "megatron", "--config", cfg, "--steps", 3)
    assert rc == EXIT_USAGE and out == ""
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert "adam_eps" not in err, err
    assert "decoupled_lr" in err and "param_groups" in err, err


def test_cli_megatron_param_groups_with_an_optimizer_field(tmp_path, capsys):
    """A Megatron config holding ``param_groups`` dumps per-group lrs through the CLI; adding any
    optimizer field (``clip_grad``) made the same file fail with ``unknown field 'param_groups'
    (did you mean 'adam_eps'?)``: the hint points at an unrelated field."""
    plain = tmp_path / "plain.yaml"
    plain.write_text(_MEGATRON_BASE)
    rc, out, err = _cli(capsys, "schedule", "--framework", "megatron", "--config", plain, "--steps", 3)
    assert rc == 0 and out.splitlines()[0].startswith("step,lr[0]"), err
    clip = tmp_path / "clip.yaml"
    clip.write_text(_MEGATRON_BASE + "clip_grad: 1.0\n")
    rc, out2, err = _cli(capsys, "schedule", "--framework", "megatron", "--config", clip, "--steps", 3)
    assert "adam_eps" not in err, err
    if rc != 0:  # refusing is acceptable, but the message must say what is wrong with param_groups
        assert rc == EXIT_USAGE and len(err.strip().splitlines()) == 1
        assert "param_groups" in err and "unknown field" not in err, err
    else:
        assert out2 == out


# --------------------------------------------------------------------------- Python callables in checkpoints
def _lambda_ckpt(tmp_path, lr):
    f = _decay
    w = np.ones(4, np.float32)
    opt = npadam.AdamW([w], lr=schedules.from_config("torch", {"lr": lr, "scheduler": "LambdaLR", "lr_lambda": f}),
                       weight_decay=0.0)
    opt.step([np.full(4, 0.5, np.float32)])
    return checkpoint.save(str(tmp_path / "ckpt"), opt)


def _decay(k):
    return 0.9 ** k


def test_checkpoint_lambda_schedule_with_a_different_base_lr_is_refused(tmp_path):
    """A LambdaLR schedule's callable cannot be saved, but its base lr (and ``from_callable``'s
    ``scale`` / ``shift`` / ``product``) can. The checkpoint kept only the callable's name, so a run
    resumed with the base lr changed 10x loaded silently and trained at the new lr, where any other
    changed schedule (``constant(0.05)`` vs ``constant(0.5)``) is "the schedules differ" (Megatron's
    rule) and torch's own ``LambdaLR.load_state_dict`` restores the saved ``base_lrs``."""
    path = _lambda_ckpt(tmp_path, 0.05)
    w2 = np.ones(4, np.float32)
    opt2 = npadam.AdamW([w2], lr=schedules.from_config("torch", {"lr": 0.5, "scheduler": "LambdaLR",
                                                                 "lr_lambda": _decay}), weight_decay=0.0)
    with pytest.raises(ValueError, match="differ"):
        checkpoint.load(path, opt2)
    # the same callable and base lr resumes (the documented path)
    opt3 = npadam.AdamW([np.ones(4, np.float32)], lr=schedules.from_config(
        "torch", {"lr": 0.05, "scheduler": "LambdaLR", "lr_lambda": _decay}), weight_decay=0.0)
    checkpoint.load(path, opt3)
    assert opt3.step_count == 1


def test_checkpoint_from_callable_with_a_different_scale_is_refused(tmp_path):
    w = np.ones(4, np.float32)
    opt = npadam.AdamW([w], lr=schedules.from_callable(_decay, scale=1e-3), weight_decay=0.0)
    opt.step([np.full(4, 0.5, np.float32)])
    path = checkpoint.save(str(tmp_path / "ckpt"), opt)
    opt2 = npadam.AdamW([np.ones(4, np.float32)], lr=schedules.from_callable(_decay, scale=1e-2), weight_decay=0.0)
    with pytest.raises(ValueError, match="differ"):
        checkpoint.load(path, opt2)


# --------------------------------------------------------------------------- ReduceLROnPlateau per group
def test_torch_reduce_lr_on_plateau_with_per_group_lrs_matches_torch():
    """docs/SCHEDULES.md: in the ``"torch"`` shape ``"lr"`` may be a list (each group's lr) "in any
    scheduler of the tree", and ``ReduceLROnPlateau`` is listed; torch runs it on groups with different
    lrs (decay / no-decay groups at different lrs are common). npadam raised
    ``ReduceLROnPlateau with per-group lists: build one schedules.Plateau per param group``."""
    torch = pytest.importorskip("torch")
    kw = {"factor": 0.5, "patience": 0, "min_lr": 0.0}
    gs = schedules.from_config("torch", {"lr": [0.1, 0.02], "scheduler": "ReduceLROnPlateau", **kw})
    assert len(gs) == 2 and gs[0].lr(0) == 0.1 and gs[1].lr(0) == 0.02
    plateaus = list({id(s.lr): s.lr for s in gs}.values())  # one shared Plateau, or one per group
    ps = [torch.nn.Parameter(torch.zeros(1)) for _ in range(2)]
    opt = torch.optim.SGD([{"params": [ps[0]], "lr": 0.1}, {"params": [ps[1]], "lr": 0.02}])
    ref = torch.optim.lr_scheduler.ReduceLROnPlateau(opt, **kw)
    for metric in [1.0, 1.0, 0.5, 0.7, 0.7, 0.1]:
        ref.step(metric)
        for p in plateaus:
            p.step(metric)
        assert [gs[i].lr(0) for i in range(2)] == [g["lr"] for g in opt.param_groups]


def test_reduce_lr_on_plateau_nested_says_why():
    """Inside a composite it is refused with torch's reason (it steps on a metric), not as unknown."""
    with pytest.raises(ValueError, match="cannot be inside ChainedScheduler / SequentialLR: it steps on a metric"):
        schedules.from_config("torch", {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [3], "schedulers": [
            {"scheduler": "LinearLR"}, {"scheduler": "ReduceLROnPlateau"}]})


def test_an_error_inside_the_users_callable_names_the_step():
    s = schedules.from_callable(lambda e: 1 / (e - 3), name="lr_lambda")
    with pytest.raises(ZeroDivisionError) as info:
        s(np.arange(5))
    if hasattr(info.value, "__notes__"):  # Python >= 3.11
        assert any("called for step 3" in n for n in info.value.__notes__)
