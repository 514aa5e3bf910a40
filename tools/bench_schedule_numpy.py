#!/usr/bin/env python
"""Benchmark: npadam's vectorized schedules against the cheapest NumPy expression of the same formula.

For each schedule, 1,000,000 steps are evaluated in one call: npadam's ``s(np.arange(n))``
(validation, dtype handling, the general code path) against a hand-written NumPy one-liner
of the same closed form (no checks), in the same run, interleaved call by call. The target (issue 9) is npadam within
2x of the one-liner. The max relative difference of the two results is printed as a check
that they compute the same thing.

Usage: python tools/bench_schedule_numpy.py [--steps 1000000] [--repeats 7]
(a quick check that every row runs: --steps 20000 --repeats 1)
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import statistics
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

    flat = S.from_config("colossalai", {"type": "FlatAnnealingWarmupLR", "lr": peak, "total_steps": n,
                                        "warmup_steps": W, "pct_start": 0.5}).lr
    F = int((n - W) * 0.5)

    def flat_np(k):
        t = k.astype(np.float64)
        tmax = n - W - F
        e = t - W - F
        cos = peak * (1 + np.cos(np.pi * e / tmax)) / 2
        c = 2 / (1 + np.cos(np.pi / tmax))
        return np.where(t < W, (t + 1) / W * peak, np.where(t < W + F, peak, np.where(e <= tmax, c * cos, cos)))

    chain = S.from_config("torch", {"lr": 0.1, "scheduler": "ChainedScheduler", "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.1, "total_iters": W},
        {"scheduler": "ExponentialLR", "gamma": 0.999999}]}).lr

    def chain_np(k):
        t = k.astype(np.float64)
        return 0.1 * (0.1 + 0.9 * (np.minimum(W, t) / W)) * 0.999999 ** t

    seq = S.from_config("torch", {"lr": 0.1, "scheduler": "SequentialLR", "milestones": [W], "schedulers": [
        {"scheduler": "LinearLR", "start_factor": 0.01, "total_iters": W},
        {"scheduler": "CosineAnnealingLR", "T_max": n - W}]}).lr

    def seq_np(k):
        t = k.astype(np.float64)
        return np.where(t < W, 0.1 * (0.01 + 0.99 * (t / W)), 0.1 * (1 + np.cos(np.pi * (t - W) / (n - W))) / 2)

    gbs, ramp = 1024, [32, 32, 10_000_000]
    ramped = S.from_config("megatron", {"lr": peak, "min_lr": final, "lr_decay_style": "cosine",
                                        "lr_warmup_samples": W * gbs, "train_samples": n * gbs,
                                        "global_batch_size": gbs, "rampup_batch_size": ramp}).lr
    table = ramped.table  # the ramp's stages (first iteration, samples before it, batch size)

    def ramped_np(k):
        st = np.searchsorted(table.first_iteration, k, side="right") - 1
        x = (table.consumed[st] + (k - table.first_iteration[st]) * table.batch[st]).astype(np.float64)
        Wd, D = W * gbs, n * gbs
        ratio = np.minimum(x - Wd, D - Wd) / (D - Wd)
        return np.where(x <= Wd, peak * x / Wd, final + 0.5 * (np.cos(np.pi * ratio) + 1.0) * (peak - final))

    plateau = S.Plateau(wc, factor=0.5, patience=0, min_lr=1e-6)
    for m in (1.0, 2.0, 3.0, 4.0):  # three reductions of a warmup-cosine
        plateau.step(m)

    def plateau_np(k):
        x = wc_np(k)
        for _ in range(3):  # torch's reduction, applied where it moves the lr by more than eps
            new = np.maximum(x * 0.5, 1e-6)
            x = np.where(x - new > 1e-8, new, x)
        return x

    # DeepSpeed WarmupDecayLR, log warmup: update 0 runs at the constructor's value, update k >= 1 at f(k - 1)
    dlo, dhi = 1e-5, peak
    dsw = S.from_config("deepspeed", {"lr": dhi, "scheduler": {"type": "WarmupDecayLR", "params": {
        "warmup_min_lr": dlo, "warmup_max_lr": dhi, "warmup_num_steps": W, "total_num_steps": n,
        "warmup_type": "log"}}}).lr

    def dsw_np(k):
        j = np.maximum(k - 1, 0).astype(np.float64)
        g = np.where(j < W, np.log(j + 1) / np.log(W), np.maximum(0.0, (n - j) / (n - W)))
        return dlo + (dhi - dlo) * g

    # DeepSpeed OneCycle (lr): a triangle over the cycle's 2 * half updates, then min_lr / (1 + rate * d / size)
    half, olo, ohi, orate, osize = n // 4, 1e-4, 1e-3, 1e-3, 1000
    dso = S.from_config("deepspeed", {"lr": ohi, "scheduler": {"type": "OneCycle", "params": {
        "cycle_min_lr": olo, "cycle_max_lr": ohi, "cycle_first_step_size": half, "decay_lr_rate": orate,
        "decay_step_size": osize, "cycle_momentum": False}}}).lr

    def dso_np(k):
        t = k.astype(np.float64)
        b = t / (2 * half)
        x = 1.0 + b - np.floor(1.0 + b)
        scale = np.where(x <= 0.5, x / 0.5, (x - 1) / (0.5 - 1))
        return np.where(t <= 2 * half, olo + (ohi - olo) * scale, olo / (1 + orate * (t - 2 * half) / osize))

    # torch OneCycleLR (cos, two phases): its last step is total_steps - 1, so run it over n + 1
    oc = S.from_config("torch", {"lr": 0.1, "scheduler": "OneCycleLR", "max_lr": 0.1, "total_steps": n + 1,
                                 "cycle_momentum": False}).lr

    def oc_np(k):
        t = k.astype(np.float64)
        e1, e2 = float(0.3 * (n + 1)) - 1, float(n)
        ini, mx, mn = 0.1 / 25, 0.1, 0.1 / 25 / 1e4
        p1, p2 = t / e1, (t - e1) / (e2 - e1)
        return np.where(t <= e1, mx + (ini - mx) / 2 * (np.cos(np.pi * p1) + 1),
                        mn + (mx - mn) / 2 * (np.cos(np.pi * p2) + 1))

    # torch CosineAnnealingWarmRestarts, T_mult=2: cycle i starts at T_0 (2**i - 1)
    cawr = S.from_config("torch", {"lr": 0.1, "scheduler": "CosineAnnealingWarmRestarts", "T_0": 1000,
                                   "T_mult": 2, "eta_min": 1e-5}).lr

    def cawr_np(k):
        t = k.astype(np.float64)
        i = np.floor(np.log2(t / 1000 + 1))
        return 1e-5 + (0.1 - 1e-5) * (1 + np.cos(np.pi * (t - 1000 * (2 ** i - 1)) / (1000 * 2 ** i))) / 2

    # torch CyclicLR exp_range: the triangle scaled by gamma**k
    cyx = S.from_config("torch", {"lr": 0.1, "scheduler": "CyclicLR", "base_lr": 1e-3, "max_lr": 1e-2,
                                  "step_size_up": 2000, "mode": "exp_range", "gamma": 0.99999}).lr

    def cyx_np(k):
        t = k.astype(np.float64)
        x = 1.0 + t / 4000.0 - np.floor(1 + t / 4000.0)
        f = np.where(x <= 0.5, x / 0.5, (x - 1) / (0.5 - 1))
        return 1e-3 + (1e-2 - 1e-3) * f * 0.99999 ** t

    # Megatron WSD with a cosine anneal over the last S updates
    S_ = n // 10
    wsd = S.from_config("megatron", {"lr": peak, "min_lr": final, "lr_decay_style": "WSD", "lr_warmup_iters": W,
                                     "train_iters": n, "lr_wsd_decay_style": "cosine", "lr_wsd_decay_iters": S_}).lr

    def wsd_np(k):
        t = k.astype(np.float64)
        r = np.clip((t - (n - S_)) / S_, 0, 1)
        dec = final + (peak - final) * 0.5 * (np.cos(np.pi * r) + 1)
        return np.where(t <= W, peak * t / W, np.where(t < n - S_, peak, dec))

    # ColossalAI PolynomialWarmupLR: (t + 1) / W * lr, then its PolynomialLR over n - W
    pw = S.from_config("colossalai", {"type": "PolynomialWarmupLR", "lr": peak, "total_steps": n, "warmup_steps": W,
                                      "end_lr": 1e-5, "power": 2.0}).lr

    def pw_np(k):
        t = k.astype(np.float64)
        T = n - W
        return np.where(t < W, (t + 1) / W * peak, (peak - 1e-5) * (1 - np.minimum(t - W, T) / T) ** 2.0 + 1e-5)

    return [("warmup_cosine", wc, wc_np), ("HF cosine", hf, hf_np), ("Megatron cosine", meg, meg_np),
            ("torch CyclicLR triangular2", cyc, cyc_np), ("ColossalAI exact", colo, colo_np),
            ("ColossalAI FlatAnnealingWarmupLR", flat, flat_np), ("torch ChainedScheduler", chain, chain_np),
            ("torch SequentialLR", seq, seq_np), ("Megatron batch ramp-up", ramped, ramped_np),
            ("Plateau of warmup_cosine, 3 reductions", plateau, plateau_np),
            ("DeepSpeed WarmupDecayLR (log warmup)", dsw, dsw_np), ("DeepSpeed OneCycle", dso, dso_np),
            ("torch OneCycleLR", oc, oc_np), ("torch CosineAnnealingWarmRestarts T_mult=2", cawr, cawr_np),
            ("torch CyclicLR exp_range", cyx, cyx_np), ("Megatron WSD (cosine anneal)", wsd, wsd_np),
            ("ColossalAI PolynomialWarmupLR", pw, pw_np)]


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
        # interleaved (one call of each per round), so that load on the machine hits both alike
        rounds = [(median_time(lambda: s(k), 1), median_time(lambda: ref(k), 1)) for _ in range(a.repeats)]
        (_, ours), (_, theirs) = rounds[-1]
        t_np = statistics.median(r[0][0] for r in rounds)
        t_ref = statistics.median(r[1][0] for r in rounds)
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
