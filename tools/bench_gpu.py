#!/usr/bin/env python3
"""GPU validation and benchmark in one call, for an H100/H200 machine.

    PYTHONPATH=. python3 tools/bench_gpu.py --out "$OUT"

1. runs the GPU tests (tests/test_gpu.py with the >2**31-element buffer, and
   tests/test_gpu_source.py) and records their result;
2. checks bit-identity of the GPU optimizer against the Numba CPU kernel for every
   param dtype x grad dtype x amsgrad x decoupled x maximize on random data;
3. measures device-to-device copy bandwidth (CuPy), then times one step of
   ``npadam.AdamW`` on CuPy arrays against ``torch.optim.AdamW(fused=True)`` for
   256M..2B params, fp32 and mixed (bf16 params and grads with fp32 masters vs
   torch's grad.float() -> fused AdamW on the fp32 master -> copy to bf16), with
   CUDA events, median of --repeats, contenders timed in turns;
4. writes ``bench_gpu.md`` (a table) and ``bench_gpu.json`` to --out.

The floor of one step is 28 bytes per element (read p, g, m, v; write p, m, v)
over the measured copy bandwidth; "% of copy bw" is floor / time.
"""

from __future__ import annotations

import argparse
import datetime
import itertools
import json
import os
import statistics
import subprocess
import sys

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import npadam  # noqa: E402

BYTES = 28


def cuda_time(fns: dict, repeats: int, cupy) -> dict[str, float]:
    """Median milliseconds of each callable, CUDA events around each call, in turns."""
    for fn in fns.values():
        fn()
    cupy.cuda.Device().synchronize()
    times: dict[str, list[float]] = {k: [] for k in fns}
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(repeats):
        for k, fn in fns.items():
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[k].append(cupy.cuda.get_elapsed_time(start, end))
    return {k: statistics.median(v) for k, v in times.items()}


def copy_bandwidth(cupy, n: int, repeats: int) -> float:
    a = cupy.ones(n, cupy.float32)
    b = cupy.empty_like(a)
    ms = cuda_time({"copy": lambda: b.__setitem__(slice(None), a)}, repeats, cupy)["copy"]
    return 8 * n / (ms * 1e-3) / 1e9


def run_tests(out_dir: str) -> tuple[int, str]:
    env = dict(os.environ, NPADAM_GPU_BIG="1")
    proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py",
                           "tests/test_gpu_source.py"], capture_output=True, text=True, env=env)
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-15:])
    with open(os.path.join(out_dir, "gpu_tests.log"), "w") as f:
        f.write(proc.stdout + proc.stderr)
    return proc.returncode, tail


def bit_identity(cupy, ml_dtypes, steps: int = 3) -> list[str]:
    """GPU vs CPU kernel over every option combination, ``steps`` steps (so amsgrad's max and
    the bias corrections move), params and every state array compared; returns the failures."""
    store = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
    rng = np.random.default_rng(1)
    failures = []
    sizes = [3, 64, 1000, 1 << 20]

    def dev(a):  # bfloat16 bits travel in a uint16 CuPy array marked as Bfloat16
        if a.dtype == store["bfloat16"]:
            return npadam.interop.Bfloat16(cupy.asarray(a.view(np.uint16)))
        return cupy.asarray(a)

    for pdt, gdt, ams, dec, mx in itertools.product(store, store, (False, True), (False, True), (False, True)):
        init = [rng.standard_normal(n).astype(np.float32).astype(store[pdt]) for n in sizes]
        grads = [[(rng.standard_normal(n) * 2).astype(np.float32).astype(store[gdt]) for n in sizes]
                 for _ in range(steps)]
        cls = npadam.AdamW if dec else npadam.Adam
        kw = dict(lr=1e-3, weight_decay=0.1, amsgrad=ams, maximize=mx, max_grad_norm=1.0)
        cpu = [p.copy() for p in init]
        copt = cls(cpu, kernel="cpu", **kw)
        cnorms = [copt.step(g).grad_norm for g in grads]
        gpu = [dev(p) for p in init]
        gopt = cls(gpu, kernel="gpu", **kw)
        gnorms = [gopt.step([dev(g) for g in gs]).grad_norm for gs in grads]
        host = [(x.array if isinstance(x, npadam.interop.Bfloat16) else x).get() for x in gpu]
        same = cnorms == gnorms and all(c.tobytes() == h.tobytes() for c, h in zip(cpu, host))
        cs, gs = copt.state_dict()["state"], gopt.state_dict()["state"]
        same = same and all(np.asarray(cs[i][k]).tobytes() == np.asarray(gs[i][k]).tobytes()
                            for i in cs for k in cs[i] if k != "step")
        if not same:
            failures.append(f"{pdt}/{gdt} amsgrad={ams} decoupled={dec} maximize={mx}")
    return failures


def bench(cupy, torch, n: int, repeats: int) -> dict[str, float]:
    rows = {}
    p = cupy.random.standard_normal(n, dtype=cupy.float32)
    g = cupy.random.standard_normal(n, dtype=cupy.float32)
    opt = npadam.AdamW([p], lr=1e-4, weight_decay=0.1)
    opt_u = npadam.AdamW([p], lr=1e-4, weight_decay=0.1, skip_nonfinite=False)
    fns = {"npadam": lambda: opt.step([g]), "npadam_update": lambda: opt_u.step([g])}
    if torch is not None:
        tp = torch.nn.Parameter(torch.from_dlpack(p))
        tp.grad = torch.from_dlpack(g)
        topt = torch.optim.AdamW([tp], lr=1e-4, weight_decay=0.1, fused=True)
        fns["torch_fused"] = topt.step
    rows.update({f"fp32_{k}": v for k, v in cuda_time(fns, repeats, cupy).items()})
    del opt, opt_u, fns, p, g
    if torch is not None:
        del topt, tp
        torch.cuda.empty_cache()
    cupy.get_default_memory_pool().free_all_blocks()
    pb = (cupy.random.standard_normal(n, dtype=cupy.float32).view(cupy.uint32) >> 16).astype(cupy.uint16)
    gb = (cupy.random.standard_normal(n, dtype=cupy.float32).view(cupy.uint32) >> 16).astype(cupy.uint16)
    if torch is not None:
        # through int16: torch before 2.3 has no uint16 to import from DLPack
        model = torch.from_dlpack(pb.view(cupy.int16)).view(torch.bfloat16)
        grad = torch.from_dlpack(gb.view(cupy.int16)).view(torch.bfloat16)
        opt = npadam.AdamW([model], lr=1e-4, weight_decay=0.1)
        opt_u = npadam.AdamW([model], lr=1e-4, weight_decay=0.1, skip_nonfinite=False)
        master = torch.nn.Parameter(model.float())
        master.grad = torch.empty(n, dtype=torch.float32, device="cuda")
        topt = torch.optim.AdamW([master], lr=1e-4, weight_decay=0.1, fused=True)

        def pipeline():
            master.grad.copy_(grad)
            topt.step()
            model.copy_(master.detach())

        fns = {"npadam": lambda: opt.step([grad]), "npadam_update": lambda: opt_u.step([grad]),
               "torch_pipeline": pipeline}
        rows.update({f"mixed_{k}": v for k, v in cuda_time(fns, repeats, cupy).items()})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sizes", type=int, nargs="+", default=[256, 512, 1024, 2048], help="millions of params")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-tests", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    import cupy
    import ml_dtypes

    try:
        import torch
    except ImportError:
        torch = None
    dev = cupy.cuda.runtime.getDeviceProperties(0)
    name = dev["name"].decode() if isinstance(dev["name"], bytes) else dev["name"]
    lines = [f"# npadam GPU benchmark, {datetime.date.today()}, {name}, CuPy {cupy.__version__}, "
             f"torch {getattr(torch, '__version__', '-')}"]
    result = {"date": str(datetime.date.today()), "device": name, "rows": []}
    if not args.skip_tests:
        rc, tail = run_tests(args.out)
        lines += [f"GPU tests: exit {rc}", "```", tail, "```"]
        result["tests_rc"] = rc
    fails = bit_identity(cupy, ml_dtypes)
    lines.append(f"bit-identity GPU vs CPU kernel, 72 option combinations: "
                 f"{'all identical' if not fails else 'FAILED ' + ', '.join(fails)}")
    result["bit_identity_failures"] = fails
    bw = copy_bandwidth(cupy, 1 << 30, args.repeats)
    lines.append(f"device-to-device copy bandwidth (read + write): {bw:.0f} GB/s; floor = {BYTES} B/element")
    result["copy_gbs"] = bw
    lines.append("")
    lines.append("| case | params | npadam ms | update-only ms | torch ms | npadam vs torch | floor ms | % of copy bw |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for m in args.sizes:
        n = m << 20
        r = bench(cupy, torch, n, args.repeats)
        floor = BYTES * n / (bw * 1e9) * 1e3
        t = r.get("fp32_torch_fused", float("nan"))
        lines.append(f"| fp32 | {m}M | {r['fp32_npadam']:.2f} | {r['fp32_npadam_update']:.2f} | {t:.2f} | "
                     f"{t / r['fp32_npadam']:.2f}x (update {t / r['fp32_npadam_update']:.2f}x) | {floor:.2f} | "
                     f"{100 * floor / r['fp32_npadam_update']:.0f}% |")
        if "mixed_npadam" in r:
            t = r["mixed_torch_pipeline"]
            lines.append(f"| bf16 mixed | {m}M | {r['mixed_npadam']:.2f} | {r['mixed_npadam_update']:.2f} | {t:.2f} | "
                         f"{t / r['mixed_npadam']:.2f}x (update {t / r['mixed_npadam_update']:.2f}x) | {floor:.2f} | "
                         f"{100 * floor / r['mixed_npadam_update']:.0f}% |")
        result["rows"].append({"mparams": m, **r, "floor_ms": floor})
        print("\n".join(lines[-2:]), flush=True)
        cupy.get_default_memory_pool().free_all_blocks()
        if torch is not None:
            torch.cuda.empty_cache()
    text = "\n".join(lines) + "\n"
    print(text)
    with open(os.path.join(args.out, "bench_gpu.md"), "w") as f:
        f.write(text)
    with open(os.path.join(args.out, "bench_gpu.json"), "w") as f:
        json.dump(result, f, indent=1)


if __name__ == "__main__":
    main()
