#!/usr/bin/env python
"""Benchmark: the cost of the GPU↔host offload pipeline's orchestration, measured without a GPU.

Under ``npadam._placement.standin`` host params take the GPU-params path of ``offload_fraction``:
the "device" is host memory and each copy stream is a worker thread doing ``memmove`` (the GIL is
released). So a step at ``offload_fraction`` f runs the same pieces, staging, waits and copy-backs
as on a GPU, with host memcpy in place of PCIe. This prints, interleaved round by round, the step
time of ``npadam.AdamW`` on fp32 params at f = 0, 0.5, 1 (bf16 too with ``--bf16``), the time of
the copies alone (memmove of the bytes a step moves: params and grads down, params up), and
the ratio step(f) / (step(0) + copies(f)): about 1 means the pipeline costs nothing beyond the
work it does, below 1 means the copies overlap the kernel. It does not measure PCIe: that is
``tools/bench_gpu.py``'s job on a GPU machine.

Usage: python tools/bench_offload_standin.py [--n 32000000] [--rounds 5] [--bf16]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools._machine import cpu_model  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=32_000_000, help="params (elements), in 8 tensors")
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--bf16", action="store_true", help="bf16 params and grads (fp32 masters)")
    args = ap.parse_args()

    import ml_dtypes

    import npadam
    from npadam import _placement
    from npadam.tiers.transfer import HostCopier

    dtype = np.dtype(ml_dtypes.bfloat16) if args.bf16 else np.dtype(np.float32)
    sizes = [args.n // 8] * 8
    fractions = (0.0, 0.5, 1.0)
    opts, grads = {}, {}
    rng = np.random.default_rng(0)
    for f in fractions:
        params = [rng.standard_normal(n).astype(np.float32).astype(dtype) for n in sizes]
        with _placement.standin(HostCopier):
            opts[f] = npadam.AdamW(params, lr=1e-4, offload_fraction=f)
        grads[f] = [(rng.standard_normal(n) * 1e-2).astype(np.float32).astype(dtype) for n in sizes]
        opts[f].step(grads[f])  # compile and allocate
    src, dst = np.ones(args.n * dtype.itemsize, np.uint8), np.empty(args.n * dtype.itemsize, np.uint8)
    times: dict[str, list[float]] = {str(f): [] for f in fractions}
    times["copy"] = []
    for _ in range(args.rounds):
        for f in fractions:
            t0 = time.perf_counter()
            opts[f].step(grads[f])
            times[str(f)].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for _ in range(3):  # params and grads down, params up
            dst[...] = src
        times["copy"].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"# offload pipeline on the host stand-in, {datetime.date.today()}, {cpu_model()}, "
          f"{os.cpu_count()} cores, {platform.python_version()}")
    print(f"# {args.n:,} {dtype.name} params, median of {args.rounds} interleaved rounds")
    print("| offload_fraction | step ms | copies alone ms | step / (step at 0 + copies) |")
    print("|---|---|---|---|")
    for f in fractions:
        copies = med["copy"] * f
        print(f"| {f} | {med[str(f)] * 1e3:.1f} | {copies * 1e3:.1f} | {med[str(f)] / (med['0.0'] + copies):.2f} |")


if __name__ == "__main__":
    main()
