"""``npadam demo``: train a small model end to end with npadam, no downloads.

A NumPy MLP (hand-written backward, see ``npadam.cli._mlp``) learns a generated
10-class task with ``npadam.AdamW`` (decoupled weight decay on the weights, none
on the biases, gradient clipping at 1.0) and a warmup-cosine learning rate. It
prints a progress bar with the loss and the lr, the held-out accuracy, the loss
curve, the optimizer's throughput, and finally re-runs the same training with the
NumPy reference kernel to show that both give bit-identical parameters.

    npadam demo                      # fp32, 500 steps, a few seconds on 2 cores
    npadam demo --dtype bf16         # bfloat16 params and grads, fp32 masters
    npadam demo --steps 1000 --hidden 512 --kernel reference --no-check
"""

from __future__ import annotations

import os
import sys
import time
from typing import Sequence, TextIO

import numpy as np

from ._errors import CLIError, Parser

HELP = "train a small NumPy MLP with npadam end to end (progress, loss, lr, check vs the reference)"


def parse(argv: Sequence[str]):
    p = Parser(prog="npadam demo", description=__doc__.split("\n\n")[0],
               epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=500, help="optimizer updates (default 500)")
    p.add_argument("--hidden", type=int, default=256, help="hidden width of the MLP (default 256)")
    p.add_argument("--batch", type=int, default=256, help="batch size (default 256)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="storage of params and grads; bf16 keeps fp32 masters (default fp32)")
    p.add_argument("--kernel", choices=("cpu", "reference"), default=None,
                   help="optimizer kernel (default: the fastest available)")
    p.add_argument("--lr", type=float, default=3e-3, help="peak learning rate (default 3e-3)")
    p.add_argument("--weight-decay", type=float, default=0.1, help="AdamW weight decay on weights (default 0.1)")
    p.add_argument("--seed", type=int, default=0, help="seed of data, init and batches (default 0)")
    p.add_argument("--no-check", action="store_true", help="skip the re-run with the reference kernel")
    p.add_argument("--no-plot", action="store_true", help="skip the terminal plot of the loss")
    return p.parse_args(list(argv))


class Progress:
    """A one-line progress bar on a terminal, a line every 10% otherwise."""

    def __init__(self, total: int, out: TextIO) -> None:
        self.total, self.out = total, out
        self.tty = out.isatty()
        self.t0 = time.perf_counter()
        self.next_report = 0

    def __call__(self, k: int, loss: float, lr: float) -> None:
        done = k + 1
        elapsed = time.perf_counter() - self.t0
        eta = f"{elapsed / done * (self.total - done):4.1f}s" if done >= 3 else "  ..."
        line = f"step {done:>{len(str(self.total))}}/{self.total}  loss {loss:.4f}  lr {lr:.3e}  eta {eta}"
        if self.tty:
            width = 24
            fill = int(width * done / self.total)
            self.out.write(f"\r[{'#' * fill}{'.' * (width - fill)}] {line}")
            if done == self.total:
                self.out.write("\n")
            self.out.flush()
        elif done >= self.next_report or done == self.total:
            self.out.write(line + "\n")
            self.out.flush()
            self.next_report = done + max(1, self.total // 10)


def main(argv: Sequence[str]) -> int:
    args = parse(argv)
    for name in ("steps", "hidden", "batch"):
        if getattr(args, name) < 1:
            raise CLIError(f"--{name} must be >= 1, got {getattr(args, name)}")
    if not args.lr > 0:
        raise CLIError(f"--lr must be > 0, got {args.lr}")
    if args.weight_decay < 0:
        raise CLIError(f"--weight-decay must be >= 0, got {args.weight_decay}")

    from .. import kernels, schedules
    from . import _mlp

    out = sys.stdout
    kernel = kernels.check_kernel(args.kernel)
    warmup = max(1, args.steps // 10)
    lr = schedules.warmup_cosine(peak=args.lr, warmup_steps=min(warmup, args.steps - 1) if args.steps > 1 else 0,
                                 total_steps=max(args.steps, 1), final=args.lr / 10)
    d_in, classes = 64, 10
    task = _mlp.make_task(d_in, classes, n_train=20_000, n_test=4_000, seed=args.seed)
    numel = sum(int(np.prod(v.shape)) for v in _mlp.init_params(d_in, args.hidden, classes, args.seed).values())
    threads = ""
    if kernel == "cpu":
        import numba

        threads = f", {numba.get_num_threads()} threads"
    print(f"npadam demo: MLP {d_in} -> {args.hidden} -> {args.hidden} -> {classes} ({numel:,} params, {args.dtype}) "
          f"on a generated {classes}-class task (chance {100 / classes:.0f}%)", file=out)
    print(f"optimizer: AdamW(betas=(0.9, 0.95), weight_decay={args.weight_decay} on weights, max_grad_norm=1.0), "
          f"kernel={kernel!r}{threads}", file=out)
    print(f"schedule:  warmup_cosine(peak={args.lr:g}, warmup_steps={lr.params['warmup_steps']}, "
          f"total_steps={args.steps}, final={args.lr / 10:g})", file=out, flush=True)

    common = dict(hidden=args.hidden, classes=classes, steps=args.steps, batch=args.batch, lr=lr,
                  weight_decay=args.weight_decay, dtype=args.dtype, seed=args.seed)
    run = _mlp.train(task, kernel=kernel, on_step=Progress(args.steps, out), **common)
    acc = _mlp.accuracy(run.params, task.x_test, task.y_test)
    first, last = float(np.mean(run.losses[:10])), float(np.mean(run.losses[-10:]))
    print(f"loss {first:.4f} (first 10 steps) -> {last:.4f} (last 10); held-out accuracy {100 * acc:.1f}%", file=out)
    if not args.no_plot and args.steps >= 2:
        from ._textplot import render

        width = min(80, os.get_terminal_size(out.fileno()).columns) if out.isatty() else 72
        print(render([("training loss", np.asarray(run.losses))], width=width, height=12, title="loss"), file=out)
    per_step = run.optimizer_seconds / args.steps
    print(f"throughput: optimizer step {per_step * 1e3:.3f} ms for {run.numel:,} params "
          f"({run.numel / per_step / 1e6:.1f} M params/s incl. the grad-norm pass); "
          f"training {args.steps / run.total_seconds:.0f} steps/s", file=out, flush=True)
    if args.no_check:
        return 0
    other = "reference" if kernel != "reference" else "cpu"
    print(f"check: re-running the same {args.steps} steps with kernel={other!r} ...", file=out, flush=True)
    again = _mlp.train(task, kernel=other, **common)
    same = all(a.tobytes() == b.tobytes() for a, b in zip(run.flat, again.flat)) and run.losses == again.losses
    if same:
        print(f"check: bit-identical: all {run.numel:,} parameters and {args.steps} losses match exactly", file=out)
        return 0
    worst = max(float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))
                for a, b in zip(run.flat, again.flat))
    print(f"check: MISMATCH between kernel={kernel!r} and kernel={other!r} (max |diff| {worst:g})", file=sys.stderr)
    return 1
