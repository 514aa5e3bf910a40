#!/usr/bin/env python3
"""CPU AdamW benchmark: npadam vs torch's fused CPU AdamW, in one run, against the bandwidth floor.

    python tools/bench_cpu.py                     # 32M..256M fp32 + mixed, RSS check
    python tools/bench_cpu.py --sizes 64 --repeats 5

For each size it times (median of --repeats steps after a warm-up):
  * fp32: ``npadam.AdamW`` (norm pass + fused update, and with ``skip_nonfinite=False``:
    update only) vs ``torch.optim.AdamW(fused=True)``;
  * mixed: npadam with bfloat16 params and grads and fp32 masters vs torch's best
    equivalent pipeline (grad.float() -> fused AdamW on an fp32 master -> copy to bf16).
The machine's streaming bandwidth is measured in the same run (a multi-threaded copy);
the floor of one fp32 step is 28 bytes per element over that bandwidth. Peak RSS is
measured in a child process that holds only npadam's params, grads and state.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import npadam  # noqa: E402
from tools._machine import cpu_model  # noqa: E402

BYTES_FP32 = 28  # read p, g, m, v (16) + write p, m, v (12)


def median_time(fn, repeats: int) -> float:
    return interleaved({"x": fn}, repeats)["x"]


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Median seconds of each callable, timed in turns (round after round), so that a
    slow phase of a noisy machine hits every contender alike. One warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(repeats):
        for k, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in times.items()}


def bandwidth(n: int, repeats: int) -> dict[str, float]:
    """Streaming rates in GB/s (read + write): NumPy copy (one thread), a Numba parallel copy,
    and a Numba parallel pass with AdamW's access pattern (read p, g, m, v; write p, m, v)
    doing no arithmetic to speak of; its time per element is the floor an update can reach."""
    from numba import njit, prange

    @njit(parallel=True)
    def pcopy(src, dst):
        for i in prange(src.shape[0]):
            dst[i] = src[i]

    stream = _stream()
    a = np.ones(n, np.float32)
    b = np.empty_like(a)
    c, d = np.ones_like(a), np.ones_like(a)
    out = {"numpy_copy": 8 * n / median_time(lambda: np.copyto(b, a), repeats) / 1e9,
           "numba_copy": 8 * n / median_time(lambda: pcopy(a, b), repeats) / 1e9,
           "adam_stream": BYTES_FP32 * n / median_time(lambda: stream(a, b, c, d), repeats) / 1e9}
    return out


_STREAM = []


def _stream():
    """A Numba pass with AdamW's access pattern (read p, g, m, v; write p, m, v) and no math."""
    if not _STREAM:
        from numba import njit, prange

        @njit(parallel=True)
        def stream(p, g, m, v):
            for i in prange(p.shape[0]):
                x = g[i]
                p[i] = p[i] + x
                m[i] = m[i] + x
                v[i] = v[i] + x

        _STREAM.append(stream)
    return _STREAM[0]


def bench_fp32(n: int, repeats: int, torch) -> dict[str, float]:
    rng = np.random.default_rng(0)
    p = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    fns = {}
    opt = npadam.AdamW([p], lr=1e-4, weight_decay=0.1)
    fns["npadam"] = lambda: opt.step([g])
    opt2 = npadam.AdamW([p], lr=1e-4, weight_decay=0.1, skip_nonfinite=False)
    fns["npadam_noskip"] = lambda: opt2.step([g])
    floor_arrays = (p, g, opt._engine.bufs[0].exp_avg, opt._engine.bufs[0].exp_avg_sq)
    fns["floor"] = lambda: _stream()(*floor_arrays)
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p))
        tp.grad = torch.from_numpy(g)
        topt = torch.optim.AdamW([tp], lr=1e-4, weight_decay=0.1, fused=True)
        fns["torch_fused"] = topt.step

        def clipped():  # the same work as npadam's step: global norm (clipping) + fused update
            torch.nn.utils.clip_grad_norm_([tp], 1e9)
            topt.step()

        fns["torch_clip_fused"] = clipped
    return interleaved(fns, repeats)


def bench_mixed(n: int, repeats: int, torch) -> dict[str, float]:
    import ml_dtypes

    rng = np.random.default_rng(1)
    p = rng.standard_normal(n, dtype=np.float32).astype(ml_dtypes.bfloat16)
    g = rng.standard_normal(n, dtype=np.float32).astype(ml_dtypes.bfloat16)
    fns = {}
    opt = npadam.AdamW([p], lr=1e-4, weight_decay=0.1)
    fns["npadam"] = lambda: opt.step([g])
    opt2 = npadam.AdamW([p], lr=1e-4, weight_decay=0.1, skip_nonfinite=False)
    fns["npadam_noskip"] = lambda: opt2.step([g])
    if torch is not None:
        model = torch.from_numpy(p.view(np.int16)).view(torch.bfloat16)
        grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
        master = torch.nn.Parameter(model.float())
        master.grad = torch.empty(n, dtype=torch.float32)
        topt = torch.optim.AdamW([master], lr=1e-4, weight_decay=0.1, fused=True)

        def pipeline():
            master.grad.copy_(grad)        # grad.float()
            topt.step()                    # fused AdamW on the fp32 master
            model.copy_(master.detach())   # copy-out to bf16

        fns["torch_pipeline"] = pipeline

        def clipped():
            master.grad.copy_(grad)
            torch.nn.utils.clip_grad_norm_([master], 1e9)
            topt.step()
            model.copy_(master.detach())

        fns["torch_clip_pipeline"] = clipped
    return interleaved(fns, repeats)


RSS_CHILD = """
import sys, numpy as np, npadam
def hwm():  # peak RSS of this process (VmHWM is per address space: exec resets it)
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
n = int(sys.argv[1])
p = np.ones(n, np.float32); g = np.full(n, 0.5, np.float32)
opt0 = npadam.AdamW([np.ones(64, np.float32)]); opt0.step([np.ones(64, np.float32)])  # load + compile kernels
base = hwm()
opt = npadam.AdamW([p], lr=1e-4)
for _ in range(3):
    opt.step([g])
print(base, hwm())
"""


def rss_check(n: int) -> dict[str, float]:
    """Peak RSS of a process holding p, g (fp32) and npadam's m, v, vs those 16 bytes/element."""
    out = subprocess.run([sys.executable, "-c", RSS_CHILD, str(n)], capture_output=True, text=True, check=True,
                         env={**os.environ, "PYTHONPATH": os.path.join(os.path.dirname(__file__), "..")})
    base, peak = map(int, out.stdout.split())
    state = 16 * n
    # the interpreter + NumPy + Numba runtime is measured before the optimizer exists (minus p and g)
    runtime = base - 8 * n
    return {"state_bytes": state, "peak_rss": peak, "runtime_bytes": runtime,
            "ratio": peak / state, "ratio_excl_runtime": (peak - runtime) / state}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128, 256], help="millions of params")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--rss-size", type=int, default=256, help="millions of params for the RSS check (0: skip)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    try:
        import torch
    except ImportError:
        torch = None
        print("torch not installed: npadam only")
    import numba

    from npadam.kernels import threads

    layer = threads.configure()  # before anything launches Numba: the layer npadam runs on
    print(f"# npadam CPU benchmark, {datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, "
          f"numba threads {numba.config.NUMBA_NUM_THREADS} ({layer} layer), torch {getattr(torch, '__version__', '-')}, "
          f"torch threads {torch.get_num_threads() if torch else '-'}")
    rates = bandwidth(64 << 20, args.repeats)
    print("streaming bandwidth at 64M fp32 (read+write): "
          + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items()))
    results = {"date": str(datetime.date.today()), "cpu": cpu_model(), "cores": os.cpu_count(),
               "bandwidth_gbs": rates, "rows": []}
    print("npadam = norm/inf pass + fused update (its default); update = skip_nonfinite=False (update only);\n"
          "torch = fused AdamW (fp32) or grad.float() + fused AdamW + copy to bf16 (bf16mix: npadam keeps\n"
          "bf16 params and grads with fp32 masters, one pass); +clip = clip_grad_norm_ first (the same work\n"
          "as npadam's default); floor = a no-math pass with AdamW's access pattern (28 B/element) over the\n"
          "same arrays; the contenders of a row are timed in turns")
    hdr = (f"{'case':<8}{'params':>7}{'npadam':>9}{'update':>9}{'torch':>9}{'+clip':>9}{'floor':>8}"
           f"{'update/torch':>14}{'npadam/+clip':>14}{'floor/npadam':>14}")
    print(hdr + "\n" + " " * 15 + "(milliseconds)")
    for m in args.sizes:
        n = m << 20
        floor = None
        for case, fn in (("fp32", bench_fp32), ("bf16mix", bench_mixed)):
            r = fn(n, args.repeats, torch)
            floor = r.pop("floor", floor)
            t = r.get("torch_fused", r.get("torch_pipeline", float("nan")))
            r.setdefault("npadam_noskip", float("nan"))
            tc = r.get("torch_clip_fused", r.get("torch_clip_pipeline", float("nan")))
            upd = r.get("npadam_noskip", float("nan"))
            ms = lambda x: f"{x * 1e3:.1f}" if x == x else "-"  # noqa: E731
            print(f"{case:<8}{m:>6}M{ms(r['npadam']):>9}{ms(upd):>9}{ms(t):>9}{ms(tc):>9}{ms(floor):>8}"
                  f"{(t / upd if upd == upd else float('nan')):>13.2f}x{tc / r['npadam']:>13.2f}x"
                  f"{floor / r['npadam']:>13.2f}x", flush=True)
            results["rows"].append({"case": case, "mparams": m, **r, "floor": floor})
    if args.rss_size:
        r = rss_check(args.rss_size << 20)
        print(f"peak RSS at {args.rss_size}M fp32 params: {r['peak_rss'] / 2**30:.2f} GiB for "
              f"{r['state_bytes'] / 2**30:.2f} GiB of p+g+m+v = {r['ratio']:.3f}x "
              f"({r['ratio_excl_runtime']:.3f}x without the {r['runtime_bytes'] / 2**20:.0f} MiB interpreter/"
              f"NumPy/Numba runtime)")
        results["rss"] = r
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
