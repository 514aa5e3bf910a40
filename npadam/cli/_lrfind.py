"""``npadam demo --lr-find``: the learning-rate range test (``npadam.lr_finder``) on the demo's MLP.

The model, data, batches and optimizer (AdamW with the demo's warmup-cosine schedule)
are those ``npadam demo`` trains. The test sweeps the lr from 1e-7 to 10 exponentially
over ``--steps`` updates (default 100), stops when the smoothed loss diverges, prints
the suggestion and a terminal plot, then checks that the params, the optimizer state,
the step count and the schedule were put back bit for bit (skipped with ``--no-check``).
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any, TextIO

import numpy as np

START_LR, END_LR = 1e-7, 10.0


def _state_bits(model: Any) -> tuple[list[bytes], dict[str, Any], int, list[dict[str, Any]]]:
    """What the test must leave as it was: the flat params' bytes, the state dict's arrays and
    values, the step count, and each group (its floats and its schedule objects)."""
    from .. import _hyper as H

    sd = model.opt.state_dict()
    state = {f"{i}.{k}": (v.tobytes() if isinstance(v, np.ndarray) else v)
             for i, st in sd["state"].items() for k, v in st.items()}
    groups = [{**{k: v for k, v in g.items() if k not in ("params", "schedules")},
               "schedules": {k: (id(s), H.dump(s)) for k, s in g["schedules"].items()}}
              for g in model.opt.param_groups]
    return [f.tobytes() for f in model.flats], state, model.opt.step_count, groups


def run(args: argparse.Namespace, task: Any, classes: int, kernel: str, lr: Any, progress: Any, out: TextIO) -> int:
    """Run the range test for the parsed demo ``args`` on ``task`` (``classes`` classes) with the
    demo's schedule ``lr``; ``progress(k, loss, lr)`` after each update. Returns the exit status."""
    from .. import lr_finder
    from . import _mlp

    model = _mlp.build(task, hidden=args.hidden, classes=classes, lr=lr, weight_decay=args.weight_decay,
                       dtype=args.dtype, kernel=kernel, seed=args.seed)
    before = None if args.no_check else _state_bits(model)
    rng = np.random.default_rng(args.seed + 2)
    n_train = task.x_train.shape[0]

    def step_fn() -> tuple[float, list[np.ndarray]]:
        idx = rng.integers(0, n_train, args.batch)
        loss = model.batch_grads(task.x_train[idx], task.y_train[idx])
        return loss, [model.grads[n] for n in model.order]

    print(f"lr range test: lr {START_LR:g} .. {END_LR:g} (exponential) over {args.steps} updates, "
          f"stopping when the smoothed loss exceeds 4 x its minimum", file=out, flush=True)
    result = lr_finder(step_fn, model.opt, start_lr=START_LR, end_lr=END_LR, num_steps=args.steps, progress=False,
                       callback=lambda k, lr_k, loss, smoothed: progress(k, smoothed, lr_k))
    if out.isatty() and result.lrs.size < args.steps:
        out.write("\n")  # the progress bar's line, ended early
    print(result, file=out, flush=True)
    if not args.no_plot:
        width = min(80, os.get_terminal_size(out.fileno()).columns) if out.isatty() else 72
        result.plot("terminal", width=width, height=16, file=out)
    if before is None:
        return 0
    after = _state_bits(model)
    what = ("parameters", "optimizer state", "step count", "param groups and schedules")
    changed = [w for w, a, b in zip(what, before, after) if a != b]
    if changed:
        print(f"check: MISMATCH: the lr range test did not put back the {', '.join(changed)}", file=sys.stderr)
        return 1
    print(f"check: put back bit for bit: all {model.numel:,} parameters, the optimizer state, the step count "
          f"({after[2]}) and the schedules", file=out)
    return 0
