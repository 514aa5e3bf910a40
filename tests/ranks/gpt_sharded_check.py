"""A user's data-parallel GPT training loop with ``npadam.torch.AdamW(comm=)`` under torchrun (gloo).

``python3 gpt_sharded_check.py <dir> <phase> [tiers]`` with torchrun's environment (tests/test_torch_sharded.py;
``tiers``: the optimizer keeps bf16 first moments with stochastic rounding, fp8 second moments and
half of each rank's shard of the state in files under ``<dir>``):

- ``full``: train 6 steps and print the eval loss after each (the uninterrupted run), saving
  ``npadam.checkpoint.save(<dir>/ckpt, opt, scheduler=sched)`` after the first 3;
- ``resume``: in new processes, a fresh model and optimizer load the checkpoint and train steps 3-5.

The loop is what a user writes: a GPT with decay / no-decay groups, flat storage with buckets whose
reduce-scatter the post-accumulate-grad hooks start during the backward pass, two micro-batches per
step (the first inside ``no_sync``), clipping, ``npadam.torch.LRScheduler`` with a warmup-cosine
schedule, the param all-gathers waited for in a forward pre-hook, each rank its own batches. The
eval loss (a fixed batch, the same params on every rank) is printed as its float's hex, so the test
compares the resumed run with the uninterrupted one bit for bit. Prints ``OK gpt rank r/n <phase>``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch

import npadam.torch as nt
from npadam import checkpoint, distributed
from npadam import schedules as S

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
import _gpt  # noqa: E402
import launch  # noqa: E402

STEPS, SAVE_AT = 6, 3


def build(comm, where: Path, tiers: bool = False):
    model = _gpt.make(0, layers=4)
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    other = [p for n, p in model.named_parameters() if p.ndim < 2]
    extra = dict(exp_avg_dtype="bfloat16", rounding="stochastic", exp_avg_sq_dtype="float8_e4m3fn",
                 nvme_offload_fraction=0.5, nvme_offload_dir=where, nvme_staging_bytes=1 << 16) if tiers else {}
    opt = nt.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                   lr=3e-3, betas=(0.9, 0.95), max_grad_norm=1.0, comm=comm, flat_storage=True,
                   bucket_bytes=16 << 10, overlap_grads=True, **extra)
    sched = nt.LRScheduler(opt, S.warmup_cosine(peak=3e-3, warmup_steps=2, total_steps=STEPS, final=3e-4))
    model.register_forward_pre_hook(lambda module, args: opt.wait_params())
    return model, opt, sched


def train(model, opt, sched, comm, steps: range) -> None:
    for k in steps:
        opt.zero_grad()
        with opt.no_sync():
            _gpt.loss_of(model, 2 * (k * comm.size + comm.rank)).backward()
        _gpt.loss_of(model, 2 * (k * comm.size + comm.rank) + 1).backward()
        opt.step(wait_params=False)
        sched.step()
        with torch.no_grad():
            print(f"EVAL {k} {_gpt.loss_of(model, 10_000).item().hex()} lr {opt.param_groups[0]['lr']!r}", flush=True)


def run(where: Path, phase: str, comm, tiers: bool = False) -> str:
    model, opt, sched = build(comm, where, tiers)
    assert bool(opt._engine.disk) == tiers
    assert len(opt.buckets) > 4, [len(b) for b in opt.buckets]
    if phase == "full":
        train(model, opt, sched, comm, range(SAVE_AT))
        checkpoint.save(where / "ckpt", opt, scheduler=sched)  # with param gathers in flight: completed first
        train(model, opt, sched, comm, range(SAVE_AT, STEPS))
    else:
        checkpoint.load(where / "ckpt", opt, scheduler=sched)
        assert opt.step_count == SAVE_AT and sched.last_epoch == SAVE_AT, (opt.step_count, sched.last_epoch)
        train(model, opt, sched, comm, range(SAVE_AT, STEPS))
    return phase


def main() -> None:
    comm = distributed.init("torch", torch_backend="gloo")
    launch.rank_main(comm, "gpt", lambda: run(Path(sys.argv[1]), sys.argv[2], comm, sys.argv[3:] == ["tiers"]))


if __name__ == "__main__":
    main()
