#!/usr/bin/env python3
"""Precision-aware optimizer state (issue 11): step time and memory of each storage configuration.

    python3 tools/bench_precision.py                           # 16M and 64M elements, memory at 16M
    python3 tools/bench_precision.py --sizes 16 --repeats 5 --mem-size 0

Times (milliseconds per step, median of ``--repeats`` rounds; the contenders of a group are
timed in turns, round after round, in a new (seeded) random order each round, so that the
machine's slow phases and the previous contender's spinning thread pool hit them alike; each
sample runs the step enough times to last ``--min-time``):

* **fp32 params** group: npadam with fp32 state (28 B/element: read p, g, m, v = 16, write p,
  m, v = 12), with bf16 m and v rounded to nearest and stochastically (20 B/element: read
  4+4+2+2, write 4+2+2), all update-only (``skip_nonfinite=False``), and npadam's default step
  with bf16 m/v (a read-only norm/inf pass over the grads first, 4 more B/element); against
  ``torch.optim.AdamW(fused=True)`` (fp32 state, 28 B); and two no-arithmetic Numba passes with
  the 28 B and the 20 B access patterns over arrays of the same sizes (the pattern floors).
* **bf16 params** group: bf16 params and grads with an int16 remainder and bf16 m/v (18 B:
  read p, r, g, m, v = 2 each, write p, r, m, v), nearest and stochastic, update-only and the
  default step; npadam's bf16 params with an fp32 master and fp32 m/v (30 B: the param is read
  too, issue 7) for reference; against torch's best mixed pipeline (``grad.float()`` -> fused
  AdamW on an fp32 master -> copy to the bf16 param: 6 + 28 + 6 = 40 B/element); and the 18 B
  pattern floor.
* **fp8 moments**, when this npadam has them (``float8_e4m3fn`` m and v with a float32 scale per
  256 elements, torchao's scheme): fp32 params (16 B/element) in the first group, bf16 params
  with remainders and bf16 grads (14 B) in the second, each with its pattern floor.

The machine's copy bandwidth is measured in the same run (``tools/bench_cpu.bandwidth``:
NumPy copy, a Numba parallel copy, the 28 B AdamW pattern); "floor (copy)" is a
configuration's bytes over the Numba copy rate, "floor (pattern)" the time of the
no-arithmetic pass with the configuration's own access pattern (the stricter one: several
streams at once move more bytes per second than one copy).

Memory: for each configuration a fresh interpreter holds the params and grads, loads the
kernels on a 512K-element optimizer (the parallel build) and frees it, resets its peak RSS
(``/proc/self/clear_refs``), builds the optimizer and takes one step; the growth of VmHWM
(peak) and VmRSS (after) over VmRSS before, per param, against the configuration's arithmetic.

Threads: Numba and torch both use every core. Other processes' CPU use during each group is
printed (the machine may be shared: then the absolute times move, ratios within a row less).
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import random
import statistics
import subprocess
import sys
import time
from typing import Callable

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import npadam  # noqa: E402
from tools._machine import cpu_clock, cpu_model, other_load  # noqa: E402

LR, WD = 1e-4, 0.1
BF16_MV = dict(exp_avg_dtype="bfloat16", exp_avg_sq_dtype="bfloat16")
FP8_MV = dict(exp_avg_dtype="float8_e4m3fn", exp_avg_sq_dtype="float8_e4m3fn")  # torchao's choice for both
# bytes moved per element by one update
B_FP32, B_BF16MV, B_REM, B_MIX, B_TORCH_MIX = 28, 20, 18, 30, 40
B_FP8MV, B_REM_FP8 = 16, 14  # + a float32 scale per 256 elements of m and of v, read and written (+0.06 B)


def fp8_available() -> bool:
    """Whether this npadam has fp8 moments (added after the first runs of this tool)."""
    try:
        npadam.AdamW([np.ones(256, np.float32)], **FP8_MV)
    except ValueError:
        return False
    return True


# ---------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each callable, timed in turns (round after round, in a new seeded
    random order each round). Each sample runs the callable enough times to last ``min_time`` (calibrated
    after a warm-up call)."""
    number = {}
    for k, fn in fns.items():
        fn()  # warm-up: compiles / loads kernels, allocates state
        t0 = time.perf_counter()
        fn()
        number[k] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    order = random.Random(0)
    for _ in range(repeats):
        keys = list(fns)
        order.shuffle(keys)  # a new order each round: no contender always follows the same one (spinning pools)
        for k in keys:
            fn, n = fns[k], number[k]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


# ---------------------------------------------------------------------- pattern floors
_FLOORS: dict[str, Callable] = {}


def floors() -> dict[str, Callable]:
    """No-arithmetic Numba passes with the access patterns of the configurations (each element of
    every array is read, and p, m, v (and r) written once)."""
    if not _FLOORS:
        from numba import njit, prange

        @njit(parallel=True)
        def f28(p, g, m, v):  # fp32 p, g, m, v
            for i in prange(p.shape[0]):
                x = g[i]
                p[i] = p[i] + x
                m[i] = m[i] + x
                v[i] = v[i] + x

        @njit(parallel=True)
        def f20(p, g, m, v):  # fp32 p, g; 16-bit m, v
            for i in prange(p.shape[0]):
                p[i] = p[i] + g[i]
                m[i] = m[i] ^ np.uint16(1)
                v[i] = v[i] ^ np.uint16(1)

        @njit(parallel=True)
        def f18(p, r, g, m, v):  # 16-bit p, r, g, m, v
            for i in prange(p.shape[0]):
                x = g[i]
                p[i] = p[i] ^ x
                r[i] = r[i] ^ x
                m[i] = m[i] ^ x
                v[i] = v[i] ^ x

        _FLOORS.update(f28=f28, f20=f20, f18=f18)
    return _FLOORS


# ---------------------------------------------------------------------- the two groups
def group_fp32(n: int, repeats: int, min_time: float, torch) -> dict[str, float]:
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n, dtype=np.float32)
    g = rng.standard_normal(n, dtype=np.float32)
    fns: dict[str, Callable[[], object]] = {}
    opts = {}
    for name, kw in (("fp32", {"skip_nonfinite": False}),
                     ("bf16mv", {**BF16_MV, "skip_nonfinite": False}),
                     ("bf16mv_sr", {**BF16_MV, "rounding": "stochastic", "skip_nonfinite": False}),
                     ("bf16mv_default", dict(BF16_MV)),
                     *((("fp8mv", {**FP8_MV, "skip_nonfinite": False}),) if fp8_available() else ())):
        p = p0.copy()
        opts[name] = npadam.AdamW([p], lr=LR, weight_decay=WD, **kw)
        fns[name] = (lambda o: lambda: o.step([g]))(opts[name])
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_numpy(p0.copy()))
        tp.grad = torch.from_numpy(g)
        topt = torch.optim.AdamW([tp], lr=LR, weight_decay=WD, fused=True)
        fns["torch_fused"] = topt.step
    f = floors()
    a28 = (np.ones(n, np.float32), g, np.ones(n, np.float32), np.ones(n, np.float32))
    a20 = (np.ones(n, np.float32), g, np.ones(n, np.uint16), np.ones(n, np.uint16))
    fns["floor28"] = lambda: f["f28"](*a28)
    fns["floor20"] = lambda: f["f20"](*a20)
    if "fp8mv" in fns:
        a16 = (np.ones(n, np.float32), g, np.ones(n, np.uint8), np.ones(n, np.uint8))
        fns["floor16"] = lambda: f["f20"](*a16)  # the same pass over 1-byte m, v
    return interleaved(fns, repeats, min_time)


def group_bf16(n: int, repeats: int, min_time: float, torch) -> dict[str, float]:
    import ml_dtypes

    bf16 = np.dtype(ml_dtypes.bfloat16)
    rng = np.random.default_rng(1)
    p0 = rng.standard_normal(n, dtype=np.float32).astype(bf16)
    g = rng.standard_normal(n, dtype=np.float32).astype(bf16)
    fns: dict[str, Callable[[], object]] = {}
    for name, kw in (("mix", {"skip_nonfinite": False}),
                     ("rem", {**BF16_MV, "store_param_remainders": True, "skip_nonfinite": False}),
                     ("rem_sr", {**BF16_MV, "store_param_remainders": True, "rounding": "stochastic",
                                 "skip_nonfinite": False}),
                     ("rem_default", {**BF16_MV, "store_param_remainders": True}),
                     *((("rem_fp8", {**FP8_MV, "store_param_remainders": True, "skip_nonfinite": False}),)
                       if fp8_available() else ())):
        p = p0.copy()  # each optimizer its own params: two remainders over one param would fight
        o = npadam.AdamW([p], lr=LR, weight_decay=WD, **kw)
        fns[name] = (lambda o: lambda: o.step([g]))(o)
    if torch is not None:
        model = torch.from_numpy(p0.copy().view(np.int16)).view(torch.bfloat16)
        grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
        master = torch.nn.Parameter(model.float())
        master.grad = torch.empty(n, dtype=torch.float32)
        topt = torch.optim.AdamW([master], lr=LR, weight_decay=WD, fused=True)

        def pipeline() -> None:
            master.grad.copy_(grad)        # grad.float()
            topt.step()                    # fused AdamW on the fp32 master
            model.copy_(master.detach())   # copy-out to bf16

        fns["torch_pipeline"] = pipeline
    f = floors()
    u = g.view(np.uint16)
    a18 = tuple(np.ones(n, np.uint16) for _ in range(4))
    fns["floor18"] = lambda: f["f18"](a18[0], a18[1], u, a18[2], a18[3])
    if "rem_fp8" in fns:
        a14 = (np.ones(n, np.uint16), np.ones(n, np.uint16), np.ones(n, np.uint8), np.ones(n, np.uint8))
        fns["floor14"] = lambda: f["f18"](a14[0], a14[1], u, a14[2], a14[3])  # 1-byte m, v
    return interleaved(fns, repeats, min_time)


# ---------------------------------------------------------------------- memory
# name -> (label, param dtype, npadam options or "torch"/"torch_mix", state B/param by arithmetic, param B/param)
MEM_CONFIGS = {
    "fp32": ("fp32 params, fp32 m/v", "float32", {}, 8, 4),
    "bf16mv": ("fp32 params, bf16 m/v", "float32", BF16_MV, 4, 4),
    "mix": ("bf16 params, fp32 master, fp32 m/v", "bfloat16", {}, 12, 2),
    "mix_bf16mv": ("bf16 params, fp32 master, bf16 m/v", "bfloat16", BF16_MV, 8, 2),
    "rem_fp32mv": ("bf16 params + remainder, fp32 m/v", "bfloat16", {"store_param_remainders": True}, 10, 2),
    "rem": ("bf16 params + remainder, bf16 m/v", "bfloat16", {**BF16_MV, "store_param_remainders": True}, 6, 2),
    "rem_sr": ("bf16 params + remainder, bf16 m/v, stochastic", "bfloat16",
               {**BF16_MV, "store_param_remainders": True, "rounding": "stochastic"}, 6, 2),
    "fp8mv": ("fp32 params, fp8 (e4m3) m/v + block scales", "float32", FP8_MV, 2 + 8 / 256, 4),
    "rem_fp8": ("bf16 params + remainder, fp8 (e4m3) m/v + block scales", "bfloat16",
                {**FP8_MV, "store_param_remainders": True}, 4 + 8 / 256, 2),
    "torch_fused": ("torch fused AdamW, fp32 params and m/v", "float32", "torch", 8, 4),
    "torch_mix": ("torch pipeline: bf16 params, fp32 master + fp32 grad + fp32 m/v", "bfloat16", "torch_mix", 16, 2),
}

MEM_CHILD = r"""
import json, sys
import numpy as np, ml_dtypes
sys.path.insert(0, sys.argv[3])
from tools.bench_precision import MEM_CONFIGS, LR, WD

def status():
    out = {}
    for line in open("/proc/self/status"):
        k, _, v = line.partition(":")
        if k in ("VmHWM", "VmRSS"):
            out[k] = int(v.split()[0]) * 1024
    return out

name, n = sys.argv[1], int(sys.argv[2])
label, pdtype, opts, _, _ = MEM_CONFIGS[name]
dt = np.dtype(ml_dtypes.bfloat16) if pdtype == "bfloat16" else np.dtype(np.float32)
p = np.ones(n, np.float32).astype(dt)
g = np.full(n, 0.5, np.float32).astype(dt)
if isinstance(opts, str):
    import torch
    def build(p, g):
        if opts == "torch":
            tp = torch.nn.Parameter(torch.from_numpy(p)); tp.grad = torch.from_numpy(g)
            o = torch.optim.AdamW([tp], lr=LR, weight_decay=WD, fused=True)
            return o.step
        model = torch.from_numpy(p.view(np.int16)).view(torch.bfloat16)
        grad = torch.from_numpy(g.view(np.int16)).view(torch.bfloat16)
        master = torch.nn.Parameter(model.float()); master.grad = torch.empty(p.size, dtype=torch.float32)
        o = torch.optim.AdamW([master], lr=LR, weight_decay=WD, fused=True)
        def step():
            master.grad.copy_(grad); o.step(); model.copy_(master.detach())
        return step
else:
    import npadam
    def build(p, g):
        o = npadam.AdamW([p], lr=LR, weight_decay=WD, **opts)
        return lambda: o.step([g])
warm = build(p[:1 << 19].copy(), g[:1 << 19].copy())  # load the kernels (the parallel build: 512K elements)
warm()
del warm
import gc; gc.collect()
reset = True
try:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")  # reset VmHWM to the current RSS
except OSError:
    reset = False
before = status()
step = build(p, g)
step()
after = status()
print(json.dumps({"before": before, "after": after, "hwm_reset": reset}))
"""


def memory(n: int) -> dict[str, dict]:
    out = {}
    fp8 = fp8_available()
    for name, (label, _, opts, state_b, param_b) in MEM_CONFIGS.items():
        if not fp8 and isinstance(opts, dict) and "float8" in str(opts.get("exp_avg_dtype")):
            continue
        # a fixed mmap threshold: freed blocks of 64 KiB and more go back to the OS instead of glibc raising its
        # threshold and reusing the warm-up's memory (which would hide state at small sizes)
        r = subprocess.run([sys.executable, "-c", MEM_CHILD, name, str(n), ROOT], capture_output=True, text=True,
                           cwd=ROOT, env={**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"})
        if r.returncode:
            out[name] = {"error": r.stderr.strip().splitlines()[-1] if r.stderr.strip() else f"rc {r.returncode}"}
            continue
        d = json.loads(r.stdout.strip().splitlines()[-1])
        base = d["before"]["VmRSS"]
        out[name] = {"label": label, "arith_state": state_b, "param_bytes": param_b,
                     "peak_per_param": (d["after"]["VmHWM"] - base) / n,
                     "steady_per_param": (d["after"]["VmRSS"] - base) / n, "hwm_reset": d["hwm_reset"]}
    return out


# ---------------------------------------------------------------------- main
def ms(x: float) -> str:
    return "-" if x != x else (f"{x * 1e3:.2f}" if x < 0.01 else f"{x * 1e3:.1f}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=[16, 64], help="millions (2**20) of elements")
    ap.add_argument("--repeats", type=int, default=11, help="timed rounds (median)")
    ap.add_argument("--min-time", type=float, default=0.2, help="seconds each timed sample lasts at least")
    ap.add_argument("--bandwidth-size", type=int, default=64, help="millions of fp32 elements for the copy rates")
    ap.add_argument("--mem-size", type=int, default=16, help="millions of params for the memory check (0: skip)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()

    from npadam.kernels import threads

    layer = threads.configure()  # before anything launches Numba (and before torch's OpenMP starts)
    try:
        import torch

        torch.set_num_threads(os.cpu_count())
    except ImportError:
        torch = None
        print("torch not installed: npadam only")
    import numba

    need = max(args.sizes) * 2**20 * 90 / 2**30
    avail = _mem_available()
    print(f"# npadam precision benchmark, {datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, "
          f"Python {platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__} "
          f"({numba.config.NUMBA_NUM_THREADS} threads, {layer} layer), torch "
          f"{getattr(torch, '__version__', '-')} ({torch.get_num_threads() if torch else '-'} threads); "
          f"about {need:.1f} GiB needed at the largest size, {avail:.1f} GiB available")
    if need > 0.8 * avail:
        sys.exit(f"not enough memory for --sizes {max(args.sizes)} ({need:.1f} GiB of {avail:.1f} GiB available)")
    start = cpu_clock()
    results: dict = {"date": str(datetime.date.today()), "cpu": cpu_model(), "cores": os.cpu_count(),
                     "numba_layer": layer, "torch": getattr(torch, "__version__", None), "rows": []}
    from tools.bench_cpu import bandwidth

    rates = bandwidth(args.bandwidth_size << 20, 5)
    results["bandwidth_gbs"] = rates
    print(f"copy bandwidth at {args.bandwidth_size}M fp32 (read+write): "
          + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items()), flush=True)
    copy_bw = rates["numba_copy"] * 1e9

    rows = []
    for m in args.sizes:
        n = m << 20
        since = cpu_clock()
        a = group_fp32(n, args.repeats, args.min_time, torch)
        load_a = other_load(since)
        gc.collect()
        since = cpu_clock()
        b = group_bf16(n, args.repeats, args.min_time, torch)
        load_b = other_load(since)
        gc.collect()
        row = {"mparams": m, "fp32_group": a, "bf16_group": b, "other_load": [load_a, load_b]}
        rows.append(row)
        results["rows"].append(row)
        print(f"  {m}M: fp32 group {', '.join(f'{k} {ms(v)}' for k, v in a.items())} (other load {load_a:.2f} "
              f"cores); bf16 group {', '.join(f'{k} {ms(v)}' for k, v in b.items())} (other load {load_b:.2f} "
              "cores)", flush=True)

    nan = float("nan")
    print("\nMilliseconds per step (median); vs torch = torch's time / npadam's; floor = floor time / npadam's "
          "(1.00 = at the floor); update-only unless marked default")
    print("\n| size | configuration | B/elem | npadam | torch | vs torch | floor (pattern) | floor / npadam | "
          "floor (copy) | copy floor / npadam |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        a, b, m = r["fp32_group"], r["bf16_group"], r["mparams"]
        n = m << 20
        tf, tp = a.get("torch_fused", nan), b.get("torch_pipeline", nan)
        lines = [
            ("fp32 params, fp32 m/v", B_FP32, a["fp32"], tf, a["floor28"]),
            ("fp32 params, bf16 m/v, nearest", B_BF16MV, a["bf16mv"], tf, a["floor20"]),
            ("fp32 params, bf16 m/v, stochastic", B_BF16MV, a["bf16mv_sr"], tf, a["floor20"]),
            ("fp32 params, bf16 m/v, nearest, default step", B_BF16MV + 4, a["bf16mv_default"], tf, nan),
            ("bf16 params, fp32 master, fp32 m/v, bf16 grads", B_MIX, b["mix"], tp, nan),
            ("bf16 params + remainder, bf16 m/v, bf16 grads, nearest", B_REM, b["rem"], tp, b["floor18"]),
            ("bf16 params + remainder, bf16 m/v, bf16 grads, stochastic", B_REM, b["rem_sr"], tp, b["floor18"]),
            ("bf16 params + remainder, bf16 m/v, bf16 grads, nearest, default step", B_REM + 2, b["rem_default"],
             tp, nan),
        ]
        if "fp8mv" in a:
            lines.insert(4, ("fp32 params, fp8 (e4m3) m/v", B_FP8MV, a["fp8mv"], tf, a["floor16"]))
        if "rem_fp8" in b:
            lines.append(("bf16 params + remainder, fp8 (e4m3) m/v, bf16 grads", B_REM_FP8, b["rem_fp8"], tp,
                          b["floor14"]))
        for label, nbytes, t, peer, floor in lines:
            cf = nbytes * n / copy_bw
            print(f"| {m}M | {label} | {nbytes} | {ms(t)} | {ms(peer)} | {peer / t:.2f}x | {ms(floor)} | "
                  f"{'-' if floor != floor else f'{floor / t:.2f}'} | {ms(cf)} | {cf / t:.2f} |")
    print("\n(torch: fused AdamW with fp32 state (28 B/elem) for the fp32-param rows; grad.float() -> fused AdamW "
          "on an fp32 master -> copy to bf16 (40 B/elem) for the bf16-param rows)")

    print("\n| size | stochastic / nearest, fp32 params | stochastic / nearest, remainders | bf16 m/v / fp32 m/v "
          "(fp32 params) | remainders+bf16 m/v / fp32 master+fp32 m/v (bf16 params) | pattern floor 20 / 28 |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        a, b = r["fp32_group"], r["bf16_group"]
        print(f"| {r['mparams']}M | {a['bf16mv_sr'] / a['bf16mv']:.2f} | {b['rem_sr'] / b['rem']:.2f} | "
              f"{a['bf16mv'] / a['fp32']:.2f} | {b['rem'] / b['mix']:.2f} | {a['floor20'] / a['floor28']:.2f} |")

    print("\nTargets (issue 11):")
    for r in rows:
        a, b = r["fp32_group"], r["bf16_group"]
        v1 = a.get("torch_fused", nan) / a["bf16mv"]
        f1 = a["floor20"] / a["bf16mv"]
        v2 = b.get("torch_pipeline", nan) / b["rem"]
        print(f"  {r['mparams']}M: fp32 params + bf16 m/v vs torch fused {v1:.2f}x (>= 1.3: "
              f"{'met' if v1 >= 1.3 else 'NOT met'}), at {f1:.2f} of its pattern floor's speed (>= 0.9: "
              f"{'met' if f1 >= 0.9 else 'NOT met'}); remainders + bf16 m/v + bf16 grads vs torch's mixed pipeline "
              f"{v2:.2f}x (>= 2.0: {'met' if v2 >= 2.0 else 'NOT met'})")

    if args.mem_size:
        n = args.mem_size << 20
        mem = memory(n)
        results["memory"] = {"mparams": args.mem_size, **mem}
        print(f"\nMemory at {args.mem_size}M params (fresh process each; growth of RSS over the RSS before the "
              "optimizer was built, per param):")
        print("\n| configuration | state B/param (arithmetic) | peak growth B/param | after the step B/param | "
              "peak / arithmetic | with the param: arithmetic | with the param: measured |")
        print("|---|---|---|---|---|---|---|")
        for name, d in mem.items():
            if "error" in d:
                print(f"| {MEM_CONFIGS[name][0]} | {MEM_CONFIGS[name][3]} | failed: {d['error']} | | | | |")
                continue
            print(f"| {d['label']} | {d['arith_state']:g} | {d['peak_per_param']:.3f} | {d['steady_per_param']:.3f} | "
                  f"{d['peak_per_param'] / d['arith_state']:.4f} | {d['arith_state'] + d['param_bytes']:g} | "
                  f"{d['peak_per_param'] + d['param_bytes']:.3f} |")
        if not all(d.get("hwm_reset", True) for d in mem.values()):
            print("(peak RSS could not be reset in the child: peak growth may be understated)")
    load = other_load(start)
    results["other_load"] = load
    print(f"\n(other processes used {load:.2f} of the {os.cpu_count()} cores during the run)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


def _mem_available() -> float:
    try:
        for line in open("/proc/meminfo"):
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 2**20
    except OSError:
        pass
    return float("inf")


if __name__ == "__main__":
    main()
