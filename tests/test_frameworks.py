"""npadam inside real training frameworks: the Hugging Face ``Trainer`` and a JAX loop.

- ``Trainer`` (transformers + accelerate, CPU): a tiny GPT-2 built from its config
  (no downloads) trained for 6 steps with ``npadam.torch.AdamW``; the Trainer wraps
  it in accelerate's ``AcceleratedOptimizer``, clips the gradients, builds its own
  linear schedule (``optimizers=(opt, None)``) or drives an ``npadam.torch.LRScheduler``,
  saves ``optimizer.pt``/``scheduler.pt`` at step 3 and reloads them with
  ``torch.load(weights_only=True)`` on ``resume_from_checkpoint``. A fresh model and
  optimizer resumed from ``checkpoint-3`` must end where the uninterrupted run ends.
- JAX: params as a nested dict pytree of immutable ``jax.Array`` leaves (one
  bfloat16), grads from ``jax.grad``; ``StepInfo.params`` is the updated pytree,
  the caller's arrays are never written, and the result equals npadam on NumPy
  copies of the same params and grads.
"""

from __future__ import annotations

import math
import warnings

import numpy as np
import pytest

# --------------------------------------------------------------------------- HF Trainer

STEPS = 6
SAVE = 3
LR = 1e-3


def _hf():
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    pytest.importorskip("accelerate")
    import npadam.torch

    transformers.logging.set_verbosity_error()
    return torch, transformers, npadam.torch


def _dataset(torch):
    class RandomTokens(torch.utils.data.Dataset):
        """24 sequences of 16 random tokens: 6 batches of 4, one epoch for 6 steps."""

        def __init__(self, n: int = 24, seq: int = 16) -> None:
            g = torch.Generator().manual_seed(1)
            self.x = torch.randint(0, 64, (n, seq), generator=g)

        def __len__(self) -> int:
            return len(self.x)

        def __getitem__(self, i: int) -> dict:
            return {"input_ids": self.x[i], "labels": self.x[i]}

    return RandomTokens()


def _model(torch, transformers):
    torch.manual_seed(0)
    # dropout off: the comparison below is about the optimizer, not the Trainer's RNG replay
    cfg = transformers.GPT2Config(n_layer=2, n_head=2, n_embd=32, vocab_size=64, n_positions=32,
                                  resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0,
                                  bos_token_id=0, eos_token_id=0)
    return transformers.GPT2LMHeadModel(cfg)


def _train(out_dir, *, scheduler=None, flat_storage=False, resume=None):
    """One Trainer run of ``STEPS`` steps (fresh model, fresh optimizer), checkpoints every ``SAVE``."""
    torch, transformers, nt = _hf()
    model = _model(torch, transformers)
    init = {n: p.detach().clone() for n, p in model.named_parameters()}
    opt = nt.AdamW(model.parameters(), lr=LR, weight_decay=0.01, flat_storage=flat_storage)
    sched = scheduler(opt) if scheduler is not None else None
    args = transformers.TrainingArguments(
        output_dir=str(out_dir), max_steps=STEPS, save_steps=SAVE, per_device_train_batch_size=4,
        report_to=[], logging_steps=1, use_cpu=True, seed=0, disable_tqdm=True)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=_dataset(torch),
                                   optimizers=(opt, sched))
    with warnings.catch_warnings(record=True) as caught:
        # flat_storage: the Trainer's model.zero_grad() replaces the flat grads (npadam warns once)
        warnings.simplefilter("always")
        trainer.train(resume_from_checkpoint=None if resume is None else str(resume))
    trainer.caught_warnings = [str(w.message) for w in caught]
    return model, opt, trainer, init


def _losses(trainer) -> dict[int, float]:
    return {h["step"]: h["loss"] for h in trainer.state.log_history if "loss" in h}


def _lrs(trainer) -> dict[int, float]:
    return {h["step"]: h["learning_rate"] for h in trainer.state.log_history if "learning_rate" in h}


def _check_run(torch, model, opt, trainer, init) -> None:
    """Six real updates, finite losses, every param (tied lm_head/wte included) moved."""
    assert opt.step_count == STEPS
    assert opt.last_step is not None and opt.last_step.step == STEPS and not opt.last_step.skipped
    assert opt.last_step.grad_norm is not None and math.isfinite(opt.last_step.grad_norm)
    # the Trainer clips to max_grad_norm=1.0 before step(): npadam sees the clipped norm
    assert opt.last_step.grad_norm <= 1.0 + 1e-5
    losses = _losses(trainer)
    assert sorted(losses) == list(range(1, STEPS + 1))
    assert all(math.isfinite(v) for v in losses.values())
    assert math.isfinite(trainer.state.log_history[-1]["train_loss"])
    for n, p in model.named_parameters():
        assert torch.isfinite(p).all(), n
        assert not torch.equal(p.detach(), init[n]), f"{n} did not change"
    for p in model.parameters():
        assert int(opt.state[p]["step"]) == STEPS


def _check_resume(torch, full, resumed) -> None:
    """The run resumed from checkpoint-3 ends where the uninterrupted run ends."""
    (m1, o1, t1, _), (m2, o2, t2, _) = full, resumed
    assert o2.step_count == STEPS and o2.last_step.step == STEPS
    # the loaded state holds SAVE updates: a step count of STEPS means only steps 4..6 ran
    assert t2.state.global_step == STEPS
    for (n, a), (n2, b) in zip(m1.named_parameters(), m2.named_parameters()):
        assert n == n2
        torch.testing.assert_close(b, a, rtol=0, atol=1e-6, msg=lambda m, n=n: f"{n}: {m}")
    s1, s2 = o1.state_dict()["state"], o2.state_dict()["state"]
    assert s1.keys() == s2.keys()
    for i in s1:
        for key in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(s2[i][key], s1[i][key], rtol=0, atol=1e-6)
    l1, l2 = _losses(t1), _losses(t2)
    for k in range(SAVE + 1, STEPS + 1):
        assert l2[k] == pytest.approx(l1[k], rel=1e-6, abs=1e-6), k
    assert o2.last_step.lr == pytest.approx(o1.last_step.lr, rel=1e-12)


def test_trainer_own_linear_scheduler_trains_and_resumes(tmp_path):
    """``optimizers=(npadam.torch.AdamW, None)``: the Trainer builds its linear schedule with
    ``get_scheduler`` over our optimizer, and resuming from checkpoint-3 is exact."""
    torch, _, _ = _hf()
    full = _train(tmp_path / "full")
    model, opt, trainer, init = full
    _check_run(torch, model, opt, trainer, init)
    assert isinstance(trainer.lr_scheduler, torch.optim.lr_scheduler.LambdaLR)
    assert trainer.lr_scheduler.optimizer.optimizer is opt  # through accelerate's AcceleratedOptimizer
    # linear decay without warmup: update k (0-based) uses LR * (1 - k / STEPS)
    want = {k + 1: LR * (1 - k / STEPS) for k in range(STEPS)}
    got = _lrs(trainer)
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=1e-12), k
    assert opt.last_step.lr == pytest.approx(want[STEPS], rel=1e-12)
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-15)  # after the last scheduler.step()

    ckpt = tmp_path / "full" / f"checkpoint-{SAVE}"
    assert (ckpt / "optimizer.pt").is_file() and (ckpt / "scheduler.pt").is_file()
    # what the Trainer saved loads with weights_only=True, and holds step SAVE
    sd = torch.load(ckpt / "optimizer.pt", weights_only=True)
    assert {int(st["step"]) for st in sd["state"].values()} == {SAVE}

    resumed = _train(tmp_path / "resumed", resume=ckpt)
    _check_resume(torch, full, resumed)
    assert isinstance(resumed[2].lr_scheduler, torch.optim.lr_scheduler.LambdaLR)


def test_trainer_npadam_scheduler_flat_storage_resumes(tmp_path):
    """``optimizers=(npadam.torch.AdamW(flat_storage=True), npadam.torch.LRScheduler)``: the
    Trainer steps our scheduler, saves and reloads its state dict, and resuming is exact;
    the Trainer's ``model.zero_grad()`` replaces the flat grads every step (npadam copies
    them back). One run covers both to keep the file fast."""
    flat_storage = True
    torch, _, nt = _hf()
    from npadam import schedules

    schedule = schedules.warmup_cosine(LR, 2, STEPS, init=1e-4)

    def make(opt):
        return nt.LRScheduler(opt, schedule)

    full = _train(tmp_path / "full", scheduler=make, flat_storage=flat_storage)
    model, opt, trainer, init = full
    _check_run(torch, model, opt, trainer, init)
    assert isinstance(trainer.lr_scheduler, nt.LRScheduler)
    got = _lrs(trainer)
    for k in range(STEPS):
        assert got[k + 1] == pytest.approx(float(schedule(k)), rel=1e-12), k
    assert opt.last_step.lr == pytest.approx(float(schedule(STEPS - 1)), rel=1e-12)
    assert any("flat_storage=True: a param's .grad was replaced" in w for w in trainer.caught_warnings)
    # params are still views into npadam's flat buffer after 6 Trainer steps
    assert len({p.untyped_storage().data_ptr() for p in model.parameters()}) == 1

    resumed = _train(tmp_path / "resumed", scheduler=make, flat_storage=flat_storage,
                     resume=tmp_path / "full" / f"checkpoint-{SAVE}")
    _check_resume(torch, full, resumed)
    assert resumed[2].lr_scheduler.last_epoch == trainer.lr_scheduler.last_epoch == STEPS


# --------------------------------------------------------------------------- JAX

JAX_STEPS = 25


def _jax_problem(jax, jnp):
    # data drawn with NumPy (eager jax.random ops each compile: seconds for nothing)
    rng = np.random.default_rng(0)
    params = {
        "hidden": {"w": jnp.asarray(rng.normal(0, 0.3, (8, 16)), jnp.float32), "b": jnp.zeros(16, jnp.float32)},
        "out": {"w": jnp.asarray(rng.normal(0, 0.3, (16, 1)), jnp.bfloat16), "b": jnp.full((1,), 0.1, jnp.float32)},
    }
    xs = rng.normal(size=(64, 8)).astype(np.float32)
    x = jnp.asarray(xs)
    y = jnp.asarray(np.sin(xs @ rng.normal(size=(8, 1)).astype(np.float32)))

    def loss(p):
        h = jnp.tanh(x @ p["hidden"]["w"] + p["hidden"]["b"])
        pred = h @ p["out"]["w"].astype(jnp.float32) + p["out"]["b"]
        return jnp.mean((pred - y) ** 2)

    return params, jax.jit(jax.value_and_grad(loss))


def test_jax_pytree_training_loop():
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import npadam

    params, value_and_grad = _jax_problem(jax, jnp)
    tree = jax.tree_util.tree_structure(params)
    before = jax.tree_util.tree_map(lambda a: np.array(a, copy=True), params)
    dtypes = jax.tree_util.tree_map(lambda a: a.dtype, params)

    opt = npadam.AdamW(params, lr=1e-2, weight_decay=0.01)
    p = params
    losses, grads_seen, outputs = [], [], []
    for _ in range(JAX_STEPS):
        loss, grads = value_and_grad(p)
        assert jax.tree_util.tree_structure(grads) == tree
        losses.append(float(loss))
        grads_seen.append(jax.tree_util.tree_map(lambda a: np.array(a, copy=True), grads))
        info = opt.step(grads)
        assert not info.skipped and info.grad_norm is not None
        assert jax.tree_util.tree_structure(info.params) == tree
        for leaf, dt in zip(jax.tree_util.tree_leaves(info.params), jax.tree_util.tree_leaves(dtypes)):
            assert isinstance(leaf, jax.Array)
            assert leaf.dtype == dt
        outputs.append((info.params, jax.tree_util.tree_map(lambda a: np.array(a, copy=True), info.params)))
        p = info.params  # fed back into the jitted loss next step
    assert info.step == opt.step_count == JAX_STEPS

    # the caller's (immutable) arrays were never written
    for a, b in zip(jax.tree_util.tree_leaves(params), jax.tree_util.tree_leaves(before)):
        np.testing.assert_array_equal(np.asarray(a), b)
    # nor were the arrays an earlier step returned: every step hands out fresh jax arrays
    for returned, snapshot in outputs:
        for a, b in zip(jax.tree_util.tree_leaves(returned), jax.tree_util.tree_leaves(snapshot)):
            np.testing.assert_array_equal(np.asarray(a), b)
    # opt.params is the same pytree as the last StepInfo.params
    assert jax.tree_util.tree_structure(opt.params) == tree
    for a, b in zip(jax.tree_util.tree_leaves(opt.params), jax.tree_util.tree_leaves(p)):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    # the bfloat16 leaf moved (its fp32 master accumulates the small updates)
    assert not np.array_equal(np.asarray(p["out"]["w"]), before["out"]["w"])

    # training works
    assert all(math.isfinite(v) for v in losses)
    assert losses[-1] < 0.5 * losses[0], losses
    assert np.mean(losses[-5:]) < np.mean(losses[:5])

    # the same updates on NumPy copies (a flat dict by name, no pytree machinery)
    paths = [jax.tree_util.keystr(k) for k, _ in jax.tree_util.tree_flatten_with_path(params)[0]]
    np_params = dict(zip(paths, (np.array(a, copy=True) for a in jax.tree_util.tree_leaves(params))))
    ref = npadam.AdamW(np_params, lr=1e-2, weight_decay=0.01)
    for g in grads_seen:
        ref_info = ref.step(dict(zip(paths, jax.tree_util.tree_leaves(g))))
        assert ref_info.params is None  # NumPy params are updated in place
    assert ref.step_count == JAX_STEPS
    for name, leaf in zip(paths, jax.tree_util.tree_leaves(p)):
        got = np.asarray(leaf).astype(np.float32)
        want = np_params[name].astype(np.float32)
        assert np_params[name].dtype == np.asarray(leaf).dtype, name
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-12, err_msg=name)
    # the optimizer state agrees too
    s1, s2 = opt.state_dict()["state"], ref.state_dict()["state"]
    for i in s1:
        for key in ("exp_avg", "exp_avg_sq"):
            np.testing.assert_allclose(np.asarray(s1[i][key]), np.asarray(s2[i][key]), rtol=1e-6, atol=1e-12)


def test_jax_bfloat16_grads_are_read_correctly():
    """Review finding: a bfloat16 JAX grad went through a temporary int16 view whose buffer was gone
    (or not yet computed) when the kernel read it: garbage grads, a wrong norm. Sizes below and
    above JAX's small-array threshold; the same grads again (reused by identity)."""
    jnp = pytest.importorskip("jax.numpy")
    import npadam

    for n in (3, 1000, 100_003):
        w = jnp.ones((n,), jnp.bfloat16)
        opt = npadam.AdamW([w], lr=0.1)
        g = jnp.full((n,), 2.0, jnp.bfloat16)
        for _ in range(2):
            info = opt.step([g])
            assert info.grad_norm == pytest.approx(2.0 * np.sqrt(n), rel=1e-12)
        assert opt.state_dict()["state"][0]["exp_avg"][:3] == pytest.approx([0.38] * 3, rel=1e-6)


def test_jax_flat_dict_params_come_back_as_the_dict():
    """Found driving a JAX loop on two MPI ranks: params given as a flat dict ({"w": ..., "b": ...},
    a pytree to a JAX user) came back from ``info.params`` as a list, so ``loss(info.params, x)``
    broke; a nested dict came back as the dict. Now the same dict (insertion order, JAX arrays),
    on one process and with ``comm``; state dict names stay the dict's keys."""
    jax = pytest.importorskip("jax")
    jnp = pytest.importorskip("jax.numpy")
    import npadam
    from npadam import distributed

    def loss(p, x):
        return jnp.mean((x @ p["w"] + p["b"]) ** 2)

    for comm in (None, distributed.init("single")):
        p = {"w": jnp.ones((4, 3)), "b": jnp.zeros((3,))}
        opt = npadam.AdamW(p, lr=0.1, comm=comm)
        for _ in range(2):
            info = opt.step(jax.grad(loss)(p, jnp.ones((2, 4))))
            p = info.params
            assert isinstance(p, dict) and list(p) == ["w", "b"]
            assert all(isinstance(v, jax.Array) for v in p.values())
            loss(p, jnp.ones((2, 4)))  # usable as the loss's params
        assert list(opt.params) == ["w", "b"] and opt.state_dict()["npadam"]["names"] == ["w", "b"]
    np_params = {"w": np.ones(3, np.float32)}  # writable arrays: updated in place, no new params
    assert npadam.AdamW(np_params, lr=0.1).step({"w": np.ones(3, np.float32)}).params is None
    ro = np.ones(3, np.float32)
    ro.flags.writeable = False  # read-only NumPy (no JAX in the dict): the list of NumPy copies, as before
    got = npadam.AdamW({"w": ro, "b": np.ones(2, np.float32)}, lr=0.1).step([np.ones(3, np.float32),
                                                                            np.ones(2, np.float32)]).params
    assert isinstance(got, list) and all(isinstance(a, np.ndarray) for a in got)
