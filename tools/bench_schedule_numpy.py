#!/usr/bin/env python
"""Benchmark: npadam's vectorized schedules against the cheapest NumPy expression of the same formula.

For each schedule, 1,000,000 steps are evaluated in one call: npadam's ``s(np.arange(n))``
(validation, dtype handling, the general code path) against a hand-written NumPy one-liner
of the same closed form (no checks), in the same run. The target (issue 9) is npadam within
2x of the one-liner. The max relative difference of the two results is printed as a check
that they compute the same thing.

Usage: python tools/bench_schedule_numpy.py [--steps 1000000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import sys
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools._machine import cpu_model  # noqa: E402
from tools.bench_schedules import median_time  # noqa: E402


def cases(n: int) -> list[tuple[str, Callable[[np.ndarray], np.ndarray], Callable[[np.ndarray], np.ndarray]]]:
    from npadam import schedules as S

    W, peak, final = 2_000, 3e-4, 3e-5
    wc = S.warmup_cosine(peak=peak, warmup_steps=W, total_steps=n, final=final)

    def wc_np(k):
        t = k.astype(np.float64)
        cos = final + (peak - final) * 0.5 * (1 + np.cos(np.pi * np.minimum(t - W, n - W) / (n - W)))
        return np.where(t < W, peak * t / W, cos)

    hf = S.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": peak, "num_warmup_steps": W,
                              "num_training_steps": n}).lr

    def hf_np(k):
        t = k.astype(np.float64)
        p = (t - W) / max(1, n - W)
        return peak * np.where(t < W, t / max(1, W), np.maximum(0.0, 0.5 * (1.0 + np.cos(np.pi * 0.5 * 2.0 * p))))

    meg = S.from_config("megatron", {"lr": peak, "min_lr": final, "lr_decay_style": "cosine", "lr_warmup_iters": W,
                                     "train_iters": n}).lr

    def meg_np(k):
        t = k.astype(np.float64)
        ratio = np.minimum(t - W, n - W) / (n - W)
        return np.where(t <= W, peak * t / W, final + 0.5 * (np.cos(np.pi * ratio) + 1.0) * (peak - final))

    cyc = S.from_config("torch", {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 1e-3, "max_lr": 1e-2,
                                  "step_size_up": 2000, "mode": "triangular2"}).lr

    def cyc_np(k):
        t = k.astype(np.float64)
        cycle = np.floor(1 + t / 4000.0)
        x = 1.0 + t / 4000.0 - cycle
        f = np.where(x <= 0.5, x / 0.5, (x - 1) / (0.5 - 1))
        return 1e-3 + (1e-2 - 1e-3) * f * (1 / (2.0 ** (cycle - 1)))

    colo = S.from_config("colossalai", {"lr": peak, "total_steps": n, "warmup_steps": W}).lr

    def colo_np(k):
        t = k.astype(np.float64)
        e = t - W
        cos = peak * (1 + np.cos(np.pi * e / (n - W))) / 2
        c = 2 / (1 + np.cos(np.pi / (n - W)))
        return np.where(t < W, (t + 1) / W * peak, np.where(e <= n - W, c * cos, cos))

    return [("warmup_cosine", wc, wc_np), ("HF cosine", hf, hf_np), ("Megatron cosine", meg, meg_np),
            ("torch CyclicLR triangular2", cyc, cyc_np), ("ColossalAI exact", colo, colo_np)]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--repeats", type=int, default=7)
    a = ap.parse_args()
    n = a.steps
    import npadam

    print(f"# npadam schedules vs NumPy one-liners, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical cores; python {platform.python_version()}, "
          f"numpy {np.__version__}, npadam {npadam.__version__}; {n:,} steps, median of {a.repeats}")
    print()
    print("| schedule | npadam | NumPy one-liner | ratio | max rel. diff |")
    print("|---|---|---|---|---|")
    k = np.arange(n, dtype=np.int64)
    worst = 0.0
    for name, s, ref in cases(n):
        t_np, ours = median_time(lambda: s(k), a.repeats)
        t_ref, theirs = median_time(lambda: ref(k), a.repeats)
        scale = np.maximum(np.abs(theirs), np.max(np.abs(theirs)) * 1e-12)
        diff = float(np.max(np.abs(ours - theirs) / scale))
        worst = max(worst, t_np / t_ref)
        print(f"| {name} | {t_np * 1e3:.1f} ms | {t_ref * 1e3:.1f} ms | {t_np / t_ref:.2f}x | {diff:.1e} |",
              flush=True)
    print()
    print(f"worst ratio {worst:.2f}x (target: within 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
