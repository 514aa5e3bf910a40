"""``npadam demo``: train a small model end to end with npadam, no downloads.

A NumPy MLP (hand-written backward, see ``npadam.cli._mlp``) learns a generated
10-class task with ``npadam.AdamW`` (decoupled weight decay on the weights, none
on the biases, gradient clipping at 1.0) and a warmup-cosine learning rate. It
prints a progress bar with the loss and the lr, the held-out accuracy, the loss
curve, the optimizer's throughput, and finally re-runs the same training with the
NumPy reference kernel to show that both give bit-identical parameters (and losses:
a run that diverged to NaN is still compared bit for bit, and a warning says that it
diverged).

    npadam demo                      # fp32, 500 steps, a few seconds on 2 cores
    npadam demo --dtype bf16         # bfloat16 params and grads, fp32 masters
    npadam demo --steps 1000 --hidden 512 --kernel reference --no-check
    npadam demo --lr-find            # the lr range test on this model: suggested lr and plot

With ``--lr-find`` the demo runs the learning-rate range test (``npadam.lr_finder``,
lr 1e-7 .. 10 over ``--steps`` updates, default 100) instead of training, prints the
suggested lr and a terminal plot of the smoothed loss, and checks that the params,
the optimizer state, the step count and the schedule were put back bit for bit
(``--no-check`` skips the check; see ``npadam.cli._lrfind``).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from typing import TYPE_CHECKING, Sequence, TextIO

import numpy as np

from ._argtypes import integer, number
from ._errors import Parser
from ._limits import MAX_DEMO_BATCH, MAX_DEMO_HIDDEN, MAX_DEMO_STEPS, MAX_SEED

if TYPE_CHECKING:
    from ._mlp import Run

HELP = "train a small NumPy MLP with npadam end to end (progress, loss, lr, check vs the reference)"
N_TRAIN, N_TEST, D_IN, CLASSES = 20_000, 4_000, 64, 10
DEFAULT_LR = 3e-3
DEFAULT_STEPS, LR_FIND_STEPS = 500, 100


def build_parser() -> Parser:
    """The ``npadam demo`` parser; every value is validated by its type (``_argtypes``), so a bad
    one is a one-line error naming the flag."""
    p = Parser(prog="npadam demo", description=__doc__.split("\n\n")[0],
               epilog="\n\n".join(__doc__.split("\n\n")[1:]), formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=integer(1, MAX_DEMO_STEPS), default=None, metavar="N",
                   help=f"optimizer updates, 1 .. {MAX_DEMO_STEPS:,} (default {DEFAULT_STEPS}; with --lr-find: "
                        f"the updates of the range test, at least 2, default {LR_FIND_STEPS})")
    p.add_argument("--hidden", type=integer(1, MAX_DEMO_HIDDEN), default=256, metavar="N",
                   help=f"hidden width of the MLP, 1 .. {MAX_DEMO_HIDDEN:,} (default 256)")
    p.add_argument("--batch", type=integer(1, MAX_DEMO_BATCH), default=256, metavar="N",
                   help=f"batch size, 1 .. {MAX_DEMO_BATCH:,} (the size of the training set) (default 256)")
    p.add_argument("--dtype", choices=("fp32", "bf16"), default="fp32",
                   help="storage of params and grads; bf16 keeps fp32 masters (default fp32)")
    p.add_argument("--kernel", choices=("cpu", "reference"), default=None,
                   help="optimizer kernel (default: the fastest available)")
    p.add_argument("--lr", type=number(above=0.0), default=DEFAULT_LR, metavar="LR",
                   help=f"peak learning rate, finite and > 0 (default {DEFAULT_LR:g})")
    p.add_argument("--weight-decay", type=number(at_least=0.0), default=0.1, metavar="WD",
                   help="AdamW weight decay on weights, finite and >= 0 (default 0.1)")
    p.add_argument("--seed", type=integer(0, MAX_SEED), default=0, metavar="N",
                   help="seed of data, init and batches, a non-negative integer (default 0)")
    p.add_argument("--no-check", action="store_true", help="skip the re-run with the reference kernel "
                   "(with --lr-find: the check that everything was put back)")
    p.add_argument("--no-plot", action="store_true", help="skip the terminal plot of the loss")
    p.add_argument("--lr-find", action="store_true",
                   help="run the learning-rate range test (npadam.lr_finder, lr 1e-7 .. 10) on the demo model "
                        "instead of training: print the suggested lr and plot the loss against the lr")
    return p


def parse(argv: Sequence[str]) -> argparse.Namespace:
    """Parse and validate ``npadam demo`` flags (``--steps`` defaults to 500, or to
    ``LR_FIND_STEPS`` with ``--lr-find``, which needs at least 2)."""
    p = build_parser()
    args = p.parse_args(list(argv))
    if args.steps is None:
        args.steps = LR_FIND_STEPS if args.lr_find else DEFAULT_STEPS
    elif args.lr_find and args.steps < 2:
        p.error(f"argument --steps: the lr range test (--lr-find) needs at least 2 updates, got {args.steps}")
    return args


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


def _as_float64(a: np.ndarray) -> np.ndarray:
    return np.asarray(a).astype(np.float64)     # exact for float32 and bfloat16


def compare_runs(a: Run, b: Run) -> tuple[str, str]:
    """How two runs compare: ``("bits", "")`` bit for bit (a NaN is compared by its bits, so a
    diverged run can match too); ``("values", "")`` equal with NaN in the same places but other
    NaN bit patterns; else ``("differ", description)``."""
    la, lb = np.asarray(a.losses, dtype=np.float64), np.asarray(b.losses, dtype=np.float64)
    pairs = list(zip(a.flat, b.flat)) + [(la, lb)]
    if len(a.flat) == len(b.flat) and all(x.shape == y.shape and x.tobytes() == y.tobytes() for x, y in pairs):
        return "bits", ""
    if len(a.flat) == len(b.flat) and all(
            x.shape == y.shape and np.array_equal(_as_float64(x), _as_float64(y), equal_nan=True) for x, y in pairs):
        return "values", ""
    bad, worst, total = 0, 0.0, sum(x.size for x in a.flat)
    for x, y in zip(a.flat, b.flat):
        x, y = _as_float64(x), _as_float64(y)
        differ = (x != y) & ~(np.isnan(x) & np.isnan(y))
        bad += int(np.count_nonzero(differ))
        both = differ & np.isfinite(x) & np.isfinite(y)
        if both.any():
            worst = max(worst, float(np.max(np.abs(x[both] - y[both]))))
    lbad = int(np.count_nonzero((la != lb) & ~(np.isnan(la) & np.isnan(lb)))) if la.shape == lb.shape else la.size
    return "differ", (f"{bad:,} of {total:,} parameters and {lbad:,} of {la.size:,} losses differ, "
                      f"max |diff| {worst:g} where both are finite")


def _diverged(run: Run, lr: float) -> str | None:
    """A warning when the loss went non-finite, or None."""
    bad = np.flatnonzero(~np.isfinite(np.asarray(run.losses, dtype=np.float64)))
    if bad.size == 0:
        return None
    skipped = f"; the optimizer skipped {run.skipped:,} of {len(run.losses):,} steps (non-finite gradients)" \
        if run.skipped else ""
    return (f"training diverged: the loss is not finite from step {int(bad[0]) + 1} on{skipped}. "
            f"--lr {lr:g} is too large for this model: try a smaller one, "
            f"e.g. --lr {min(lr / 100, DEFAULT_LR):g}")


def main(argv: Sequence[str]) -> int:
    args = parse(argv)

    from .. import kernels, schedules
    from . import _mlp

    out = sys.stdout
    kernel = kernels.check_kernel(args.kernel)
    warmup = max(1, args.steps // 10)
    lr = schedules.warmup_cosine(peak=args.lr, warmup_steps=min(warmup, args.steps - 1) if args.steps > 1 else 0,
                                 total_steps=max(args.steps, 1), final=args.lr / 10)
    d_in, classes = D_IN, CLASSES
    task = _mlp.make_task(d_in, classes, n_train=N_TRAIN, n_test=N_TEST, seed=args.seed)
    numel = sum(int(np.prod(v.shape)) for v in _mlp.init_params(d_in, args.hidden, classes, args.seed).values())
    threads = ""
    if kernel == "cpu":
        import numba

        threads = f", {numba.get_num_threads()} threads"
    print(f"npadam demo: MLP {d_in} -> {args.hidden} -> {args.hidden} -> {classes} ({numel:,} params, {args.dtype}) "
          f"on a generated {classes}-class task (chance {100 / classes:.0f}%)", file=out)
    print(f"optimizer: AdamW(betas=(0.9, 0.95), weight_decay={args.weight_decay} on weights, max_grad_norm=1.0), "
          f"kernel={kernel!r}{threads}", file=out)
    if args.lr_find:
        from . import _lrfind

        return _lrfind.run(args, task, classes, kernel, lr, Progress(args.steps, out), out)
    print(f"schedule:  warmup_cosine(peak={args.lr:g}, warmup_steps={lr.params['warmup_steps']}, "
          f"total_steps={args.steps}, final={args.lr / 10:g})", file=out, flush=True)

    common = dict(hidden=args.hidden, classes=classes, steps=args.steps, batch=args.batch, lr=lr,
                  weight_decay=args.weight_decay, dtype=args.dtype, seed=args.seed)
    run = _mlp.train(task, kernel=kernel, on_step=Progress(args.steps, out), **common)
    acc = _mlp.accuracy(run.params, task.x_test, task.y_test)
    first, last = float(np.mean(run.losses[:10])), float(np.mean(run.losses[-10:]))
    print(f"loss {first:.4f} (first 10 steps) -> {last:.4f} (last 10); held-out accuracy {100 * acc:.1f}%", file=out)
    warning = _diverged(run, args.lr)
    if warning:
        out.flush()
        print(f"npadam demo: warning: {warning}", file=sys.stderr, flush=True)
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
    verdict, detail = compare_runs(run, again)
    nan = " (NaN included, compared by its bits)" if warning else ""
    if verdict == "bits":
        print(f"check: bit-identical: all {run.numel:,} parameters and {args.steps} losses match exactly{nan}",
              file=out)
        return 0
    if verdict == "values":
        print(f"check: identical: all {run.numel:,} parameters and {args.steps} losses match, NaN in the same "
              f"places (with other NaN bit patterns)", file=out)
        return 0
    print(f"check: MISMATCH between kernel={kernel!r} and kernel={other!r} ({detail})", file=sys.stderr)
    return 1
