"""The cost of handing buckets over from the backward hooks (``overlap_grads=True``) with many tensors.

    python3 tools/bench_overlap_hooks.py                 # 400 Linear(64, 64) layers: 800 tensors, 50 buckets
    python3 tools/bench_overlap_hooks.py --layers 100 --repeats 25

One process (``comm=npadam.distributed.init("single")``: the hand-over path without the transport),
one training step = forward, backward (the hooks hand each bucket over), ``step()``, ``zero_grad()``,
on a model of tiny layers so that the per-tensor Python work shows. Timed in turns in the same
process: npadam.torch.AdamW with and without ``overlap_grads`` (flat storage, ``bucket_bytes`` about 8
layers), and the peer ``torch.optim.AdamW(foreach=True)`` on the same loop. Median milliseconds per
step after warm-up steps.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

import npadam.torch as nt
from npadam import distributed


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=400)
    ap.add_argument("--width", type=int, default=64)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    torch.manual_seed(0)
    w = a.width
    runs = {}
    for name in ("npadam overlap_grads=True", "npadam overlap_grads=False", "torch.optim.AdamW(foreach=True)"):
        model = torch.nn.Sequential(*[torch.nn.Linear(w, w) for _ in range(a.layers)])
        if name.startswith("npadam"):
            opt = nt.AdamW(model.parameters(), lr=1e-3, comm=distributed.init("single"), flat_storage=True,
                           overlap_grads=name.endswith("True"), bucket_bytes=w * (w + 1) * 4 * 8)
        else:
            opt = torch.optim.AdamW(model.parameters(), lr=1e-3, foreach=True)
        runs[name] = (model, opt, [])
    x = torch.randn(4, w)

    def step(model, opt) -> None:
        model(x).sum().backward()
        opt.step()
        opt.zero_grad()

    for model, opt, _ in runs.values():
        for _ in range(3):
            step(model, opt)
    for _ in range(a.repeats):  # in turns: the machine's drift hits every contender alike
        for model, opt, times in runs.values():
            t = time.perf_counter()
            step(model, opt)
            times.append(time.perf_counter() - t)
    nb = len(runs["npadam overlap_grads=True"][1].buckets)
    print(f"# {a.layers} x Linear({w}, {w}): {2 * a.layers} tensors, {nb} buckets, median of {a.repeats} steps, "
          f"{torch.get_num_threads()} torch threads")
    print("| optimizer | step ms |\n|---|---|")
    for name, (_, _, times) in runs.items():
        print(f"| {name} | {statistics.median(times) * 1e3:.1f} |")


if __name__ == "__main__":
    main()
