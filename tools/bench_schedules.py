#!/usr/bin/env python
"""Benchmark: vectorized npadam schedules against stepping the real schedulers, same run.

For each schedule, npadam evaluates every scheduled quantity over 1,000,000 steps
in one call (``s(np.arange(n))``) and the peer steps the equivalent real scheduler
on a dummy one-parameter optimizer, reading the lr after every step (what a dump
of the schedule needs):

- warmup-cosine: ``npadam.schedules.warmup_cosine`` vs torch ``SequentialLR(LinearLR,
  CosineAnnealingLR)``
- torch OneCycleLR (lr and beta1): ``from_config("torch", ...)`` vs ``OneCycleLR``
- Megatron cosine with global_batch_size 256 (lr and weight decay):
  ``from_config("megatron", ...)`` vs megatron-core ``OptimizerParamScheduler``
  (if importable, else skipped)
- HF cosine: ``from_config("hf", ...)`` vs transformers
  ``get_cosine_schedule_with_warmup`` (if importable, else skipped)

Times are medians of repeats. With ``--peer-steps`` below ``--steps`` the peer is
stepped fewer times and its time scaled up linearly (printed as such). The max
relative difference between the two over the stepped range is printed as a sanity
check (torch's chained formulas drift from the closed form by ~1e-8 over 1e5+ steps).
Then the CLI: ``npadam schedule ... --steps 1000000 -o FILE`` for csv, json, npy
(in-process) and the console script end to end (interpreter start included).

Usage: python tools/bench_schedules.py [--steps 1000000] [--peer-steps 1000000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import datetime
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from typing import Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
from tools._machine import cpu_model  # noqa: E402

warnings.filterwarnings("ignore")
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")


def median_time(fn: Callable[[], object], repeats: int) -> tuple[float, object]:
    times, out = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times), out


def max_rel(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.maximum(np.abs(b), np.max(np.abs(b)) * 1e-12)
    return float(np.max(np.abs(a - b) / scale))


def torch_stepper(make: Callable[[object], object], extra: str | None = None):
    """Return fn(n) stepping a fresh scheduler n times, collecting lr (and ``extra``)."""
    import torch

    def run(n: int):
        p = torch.nn.Parameter(torch.zeros(1))
        opt = torch.optim.AdamW([p], lr=3e-4, betas=(0.9, 0.95), weight_decay=0.1)
        sched = make(opt)
        g = opt.param_groups[0]
        lr = np.empty(n)
        other = np.empty(n) if extra else None
        for k in range(n):
            lr[k] = g["lr"]
            if extra:
                other[k] = g["betas"][0] if extra == "beta1" else g[extra]
            sched.step()
        return lr, other
    return run


def bench_cases(n: int):
    """(name, npadam schedules, peer description, peer fn(n) -> (lr, other), other quantity)."""
    from npadam import schedules
    cases = []
    import torch.optim.lr_scheduler as L

    W, T, peak, final = 2_000, n, 3e-4, 3e-5
    init = peak * 1e-3
    wc = schedules.warmup_cosine(peak=peak, warmup_steps=W, total_steps=T, final=final, init=init)
    cases.append(("warmup-cosine", [wc], "torch SequentialLR(LinearLR, CosineAnnealingLR)",
                  torch_stepper(lambda o: L.SequentialLR(o, [L.LinearLR(o, init / peak, 1.0, W),
                                                            L.CosineAnnealingLR(o, T - W, final)], [W])), None))

    oc = schedules.from_config("torch", {"lr": 3e-4, "scheduler": "OneCycleLR", "max_lr": 1e-3, "total_steps": n})
    cases.append(("torch OneCycleLR (lr, beta1)", [oc.lr, oc.beta1], "torch OneCycleLR",
                  torch_stepper(lambda o: L.OneCycleLR(o, max_lr=1e-3, total_steps=n), "beta1"), "beta1"))

    gbs = 256
    meg_cfg = {"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "cosine", "lr_warmup_iters": W, "train_iters": n,
               "global_batch_size": gbs, "weight_decay_incr_style": "linear", "start_weight_decay": 0.01,
               "end_weight_decay": 0.1}
    meg = schedules.from_config("megatron", meg_cfg)
    try:
        from megatron.core.optimizer_param_scheduler import OptimizerParamScheduler

        def megatron_run(m: int):
            import torch
            p = torch.nn.Parameter(torch.zeros(1))
            opt = torch.optim.AdamW([p], lr=3e-4)
            s = OptimizerParamScheduler(opt, init_lr=0.0, max_lr=3e-4, min_lr=3e-5, lr_warmup_steps=W * gbs,
                                        lr_decay_steps=n * gbs, lr_decay_style="cosine", start_wd=0.01,
                                        end_wd=0.1, wd_incr_steps=n * gbs, wd_incr_style="linear")
            g = opt.param_groups[0]
            lr, wd = np.empty(m), np.empty(m)
            for k in range(m):
                lr[k], wd[k] = g["lr"], g["weight_decay"]
                s.step(increment=gbs)
            return lr, wd
        cases.append(("Megatron cosine, GBS 256 (lr, wd)", [meg.lr, meg.weight_decay],
                      "megatron-core OptimizerParamScheduler", megatron_run, "weight_decay"))
    except Exception as exc:  # noqa: BLE001 - any import failure means: skip
        cases.append(("Megatron cosine, GBS 256 (lr, wd)", [meg.lr, meg.weight_decay],
                      f"skipped: megatron-core not importable ({type(exc).__name__})", None, None))

    hf = schedules.from_config("hf", {"lr_scheduler_type": "cosine", "learning_rate": 3e-4,
                                      "num_warmup_steps": W, "num_training_steps": n})
    try:
        from transformers import get_cosine_schedule_with_warmup
        cases.append(("HF cosine", [hf.lr], "transformers get_cosine_schedule_with_warmup",
                      torch_stepper(lambda o: get_cosine_schedule_with_warmup(o, W, n)), None))
    except Exception as exc:  # noqa: BLE001
        cases.append(("HF cosine", [hf.lr], f"skipped: transformers not importable ({type(exc).__name__})",
                      None, None))
    return cases


def bench_cli(n: int, repeats: int) -> list[tuple[str, float, int]]:
    from npadam.cli import main
    args = ["schedule", "warmup-cosine", "--peak", "3e-4", "--warmup-steps", "2000", "--total-steps", str(n),
            "--final", "3e-5", "--steps", str(n)]
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt in ("csv", "json", "npy"):
            path = os.path.join(tmp, f"lr.{fmt}")
            t, rc = median_time(lambda: main(args + ["-o", path]), repeats)
            assert rc == 0
            rows.append((f"npadam schedule ... -o lr.{fmt} (in-process)", t, os.path.getsize(path)))
        megatron = os.path.join(tmp, "megatron.json")
        with open(megatron, "w") as f:
            f.write('{"lr": 3e-4, "min_lr": 3e-5, "lr_decay_style": "cosine", "lr_warmup_iters": 2000, '
                    f'"train_iters": {n}, "global_batch_size": 256, "weight_decay_incr_style": "linear", '
                    '"start_weight_decay": 0.01, "end_weight_decay": 0.1}')
        path = os.path.join(tmp, "meg.csv")
        t, rc = median_time(lambda: main(["schedule", "--framework", "megatron", "--config", megatron,
                                          "--steps", str(n), "-o", path]), repeats)
        rows.append(("npadam schedule --framework megatron (lr, wd) -o .csv", t, os.path.getsize(path)))
        script = os.path.join(os.path.dirname(sys.executable), "npadam")
        if not os.path.exists(script):
            script = shutil.which("npadam")
        if script:
            path = os.path.join(tmp, "lr2.csv")
            t, res = median_time(lambda: subprocess.run([script, *args, "-o", path], capture_output=True), 1)
            assert res.returncode == 0, res.stderr
            rows.append(("console script end to end, csv (interpreter start incl.)", t, os.path.getsize(path)))
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--steps", type=int, default=1_000_000)
    ap.add_argument("--peer-steps", type=int, default=None,
                    help="steps of the real scheduler (default: --steps); its time is scaled to --steps")
    ap.add_argument("--repeats", type=int, default=3)
    a = ap.parse_args()
    n = a.steps
    peer_n = min(a.peer_steps or n, n)
    t_start = time.perf_counter()

    import torch
    import npadam
    print(f"# npadam schedule benchmark, {datetime.datetime.now().astimezone().isoformat(timespec='seconds')}")
    print(f"# machine: {cpu_model()}, {os.cpu_count()} logical cores, {platform.system()} {platform.release()}")
    print(f"# python {platform.python_version()}, numpy {np.__version__}, torch {torch.__version__}, "
          f"npadam {npadam.__version__}")
    print(f"# npadam: one vectorized call over {n:,} steps (median of {max(a.repeats, 5)}); "
          f"peer: {peer_n:,} scheduler.step() calls reading the lr each step (median of {a.repeats})"
          + (f", time scaled x{n / peer_n:g} to {n:,} steps" if peer_n < n else ""))
    print()
    header = f"{'schedule':<36} {'npadam':>10} {'peer':>10} {'speedup':>9} {'max rel diff':>13}  peer"
    print(header)
    print("-" * len(header))
    k = np.arange(n, dtype=np.int64)
    for name, scheds, peer_name, peer, other in bench_cases(n):
        t_np, vals = median_time(lambda: [s(k) for s in scheds], max(a.repeats, 5))
        if peer is None:
            print(f"{name:<36} {t_np * 1e3:>8.1f}ms {'-':>10} {'-':>9} {'-':>13}  {peer_name}")
            continue
        t_peer, (lr, oth) = median_time(lambda: peer(peer_n), a.repeats)
        t_peer_full = t_peer * n / peer_n
        diff = max_rel(vals[0][:peer_n], lr)
        if other is not None:
            diff = max(diff, max_rel(vals[1][:peer_n], oth))
        print(f"{name:<36} {t_np * 1e3:>8.1f}ms {t_peer_full:>9.2f}s {t_peer_full / t_np:>8.0f}x {diff:>13.2e}  "
              f"{peer_name}")
    print()
    print(f"{'CLI dump of ' + format(n, ',') + ' steps (warmup-cosine unless noted)':<60} {'time':>8} {'size':>10}")
    for label, t, size in bench_cli(n, a.repeats):
        print(f"{label:<60} {t:>7.3f}s {size / 1e6:>8.1f}MB")
    print(f"\n# total benchmark time {time.perf_counter() - t_start:.0f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
