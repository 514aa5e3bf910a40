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
4. offload (``--skip-offload`` leaves it out; ``--offload-params`` sizes it): optimizer state of
   GPU params in host memory (``offload_fraction``), see ``offload_section``: bit-identity of
   offload 0 / 0.5 / 1, then one step at 0 / 0.5 / 1 timed against what its parts cost alone,
   and a torch baseline that keeps the state on the CPU;
5. sharded (``--skip-sharded`` leaves it out): ``tools/bench_sharded.py --device gpu`` on 1 and 2
   MPI ranks sharing this GPU, npadam.AdamW on CuPy arrays and npadam.torch with flat storage on
   CUDA tensors (``comm=``, collectives staged through host copies: pip's MPI moves host memory);
6. writes ``bench_gpu.md`` (the tables) and ``bench_gpu.json`` to --out, again after each part
   (a run cut short keeps what it measured).

The floor of one step is 28 bytes per element (read p, g, m, v; write p, m, v)
over the measured copy bandwidth; "% of copy bw" is floor / time.
"""

from __future__ import annotations

import argparse
import datetime
import functools
import gc
import itertools
import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from typing import Any, Callable

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import npadam  # noqa: E402
from npadam._placement import tail_split  # noqa: E402

BYTES = 28
GIB = 1 << 30


class Timings(dict):
    """Median milliseconds per name; ``rounds``: how many timed calls each median is of."""

    rounds: int = 0


def cuda_time(fns: dict[str, Callable[[], Any]], repeats: int, cupy, *, wall: bool = False,
              budget_s: float | None = None) -> Timings:
    """Median milliseconds of each callable, timed in turns after one warm-up call each.

    CUDA events around each call on the current stream; with ``wall``, the host's clock around the
    call and a device synchronize (steps that run partly on the CPU). ``budget_s``: fewer rounds
    (at least 3) where the warm-up round says ``repeats`` rounds would take longer."""
    t0 = time.perf_counter()
    for fn in fns.values():
        fn()
    cupy.cuda.Device().synchronize()
    if budget_s is not None:
        repeats = max(3, min(repeats, int(budget_s / max(time.perf_counter() - t0, 1e-6))))
    times: dict[str, list[float]] = {k: [] for k in fns}
    start, end = cupy.cuda.Event(), cupy.cuda.Event()
    for _ in range(repeats):
        for k, fn in fns.items():
            if wall:
                t = time.perf_counter()
                fn()
                cupy.cuda.Device().synchronize()
                times[k].append((time.perf_counter() - t) * 1e3)
                continue
            start.record()
            fn()
            end.record()
            end.synchronize()
            times[k].append(cupy.cuda.get_elapsed_time(start, end))
    out = Timings({k: statistics.median(v) for k, v in times.items()})
    out.rounds = repeats
    return out


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


def to_device(cupy, a: np.ndarray) -> Any:
    """A CuPy copy of host array ``a``; bfloat16 bits travel in a uint16 array marked as Bfloat16."""
    if a.dtype.name == "bfloat16":
        return npadam.interop.Bfloat16(cupy.asarray(a.view(np.uint16)))
    return cupy.asarray(a)


def to_host(x: Any) -> np.ndarray:
    """The host copy of a ``to_device`` array (bfloat16 as its uint16 bits)."""
    return (x.array if isinstance(x, npadam.interop.Bfloat16) else x).get()


def state_bytes(opt: Any) -> dict[tuple[int, str], bytes]:
    """Every array of ``opt.state_dict()["state"]`` as bytes (step counts left out)."""
    st = opt.state_dict()["state"]
    return {(i, k): np.asarray(v).tobytes() for i in st for k, v in st[i].items() if k != "step"}


def bit_identity(cupy, ml_dtypes, steps: int = 3) -> list[str]:
    """GPU vs CPU kernel over every option combination, ``steps`` steps (so amsgrad's max and
    the bias corrections move), params and every state array compared; returns the failures."""
    store = {"float32": np.dtype(np.float32), "bfloat16": np.dtype(ml_dtypes.bfloat16), "float16": np.dtype(np.float16)}
    rng = np.random.default_rng(1)
    failures = []
    sizes = [3, 64, 1000, 1 << 20]
    dev = functools.partial(to_device, cupy)
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
        same = cnorms == gnorms and all(c.tobytes() == to_host(h).tobytes() for c, h in zip(cpu, gpu))
        if not (same and state_bytes(copt) == state_bytes(gopt)):
            failures.append(f"{pdt}/{gdt} amsgrad={ams} decoupled={dec} maximize={mx}")
    return failures


def random_bf16(cupy, n: int) -> Any:
    """``n`` standard-normal bfloat16 values (truncated from float32) as their uint16 bits."""
    return (cupy.random.standard_normal(n, dtype=cupy.float32).view(cupy.uint32) >> 16).astype(cupy.uint16)


def as_torch_bf16(torch, cupy, bits: Any) -> Any:
    """The CuPy uint16 array ``bits`` as a torch bfloat16 tensor (same memory; through int16: torch
    before 2.3 has no uint16 to import from DLPack)."""
    return torch.from_dlpack(bits.view(cupy.int16)).view(torch.bfloat16)


def bench(cupy, torch, n: int, repeats: int) -> dict[str, float]:
    rows = {}
    p = cupy.random.standard_normal(n, dtype=cupy.float32)
    g = cupy.random.standard_normal(n, dtype=cupy.float32)
    opt = npadam.AdamW([p], lr=1e-4, weight_decay=0.1)
    opt_u = npadam.AdamW([p], lr=1e-4, weight_decay=0.1, skip_nonfinite=False)
    fns = {"npadam": functools.partial(opt.step, [g]), "npadam_update": functools.partial(opt_u.step, [g])}
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
    pb, gb = random_bf16(cupy, n), random_bf16(cupy, n)
    if torch is not None:
        model, grad = as_torch_bf16(torch, cupy, pb), as_torch_bf16(torch, cupy, gb)
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


class Report:
    """``bench_gpu.md`` (``lines``) and ``bench_gpu.json`` (``result``) in ``out``, rewritten by ``write``."""

    def __init__(self, out: str, lines: list[str], result: dict[str, Any]) -> None:
        self.out, self.lines, self.result = out, lines, result

    def write(self) -> None:
        with open(os.path.join(self.out, "bench_gpu.md"), "w") as f:
            f.write("\n".join(self.lines) + "\n")
        with open(os.path.join(self.out, "bench_gpu.json"), "w") as f:
            json.dump(self.result, f, indent=1)


# ---------------------------------------------------------------------- offload: state in host memory

OFFLOAD_FRACTIONS = (0.0, 0.5, 1.0)
#: the issue's target: an offloaded step within this factor of the slower of its two sides
OFFLOAD_TARGET = 1.1
#: seconds of the section's budget below which no further case is started
OFFLOAD_MIN_CASE_S = 30.0
OFFLOAD_DEFINITIONS = """\
Offload: params and grads on the GPU, `offload_fraction` f of each buffer's optimizer state in pinned host
memory. Times are wall-clock around `opt.step` + a device synchronize (part of the step runs on the CPU),
medians, fractions timed in turns.
- **step**: `npadam.AdamW(offload_fraction=f)`, default options (the norm pass runs on the GPU).
- **CPU part**: `npadam.AdamW(skip_nonfinite=False)` (the update alone) on NumPy arrays of the host share's
  size: the Numba kernel an offloaded step runs, without copies.
- **transfers**: CuPy memcpy of the bytes the step moves (params and grads of the host share GPU->pinned host,
  params pinned host->GPU), both directions at once on two streams as the step's pipeline issues them
  (each direction alone in parentheses).
- **GPU part**: the f = 0 step x the GPU share of the elements.
- **target**: step <= 1.1 x max(CPU part, GPU part + transfers).
- **torch baseline** (f = 1): grads GPU->pinned CPU (`copy_(non_blocking=True)`, then a stream sync),
  `torch.optim.AdamW(fused=True)` on pinned fp32 CPU masters, params back CPU->GPU (bf16: grads widened and
  params rounded on the CPU through pinned bf16 copies)."""


@dataclass(frozen=True)
class OffloadCase:
    """Params and grads of ``pdtype`` on the GPU, fp32 state (with an fp32 master for bfloat16)."""

    name: str
    pdtype: str  # "float32" or "bfloat16"

    @property
    def item(self) -> int:
        """Bytes per param element, and per grad element (the grads have the params' dtype)."""
        return 4 if self.pdtype == "float32" else 2

    @property
    def state(self) -> int:
        """Bytes of optimizer state per element: exp_avg and exp_avg_sq (and the master)."""
        return 8 if self.pdtype == "float32" else 12

    def host_dtype(self, ml_dtypes) -> np.dtype:
        return np.dtype(np.float32) if self.pdtype == "float32" else np.dtype(ml_dtypes.bfloat16)

    def host_elements(self, n: int, fraction: float) -> int:
        """Elements of an ``n``-element buffer whose state ``offload_fraction=fraction`` keeps in host memory."""
        return tail_split(n, self.state, fraction, None, 0)[0]

    def random(self, cupy, n: int) -> Any:
        """``n`` random values on the GPU (bfloat16 as uint16 bits)."""
        return cupy.random.standard_normal(n, dtype=cupy.float32) if self.pdtype == "float32" else random_bf16(cupy, n)

    def for_npadam(self, arr: Any) -> Any:
        return arr if self.pdtype == "float32" else npadam.interop.Bfloat16(arr)

    def for_torch(self, torch, cupy, arr: Any) -> Any:
        return torch.from_dlpack(arr) if self.pdtype == "float32" else as_torch_bf16(torch, cupy, arr)


OFFLOAD_CASES = (OffloadCase("fp32", "float32"), OffloadCase("bf16 mixed", "bfloat16"))


@dataclass
class OffloadRow:
    """One offload fraction of one case (milliseconds; None where a part was not measured)."""

    case: str
    fraction: float
    params: int
    host_elements: int
    step_ms: float | None = None
    cpu_ms: float | None = None
    transfer_ms: float | None = None
    d2h_ms: float | None = None
    h2d_ms: float | None = None
    gpu_ms: float | None = None

    @property
    def gpu_transfer_ms(self) -> float | None:
        return None if self.gpu_ms is None or self.transfer_ms is None else self.gpu_ms + self.transfer_ms

    @property
    def ratio(self) -> float | None:
        """step / max(CPU part, GPU part + transfers)."""
        if self.step_ms is None or self.cpu_ms is None or self.gpu_transfer_ms is None:
            return None
        return self.step_ms / max(self.cpu_ms, self.gpu_transfer_ms)

    def as_json(self) -> dict[str, Any]:
        ratio = self.ratio
        return {**asdict(self), "gpu_transfer_ms": self.gpu_transfer_ms, "ratio": ratio,
                "meets_target": None if ratio is None else ratio <= OFFLOAD_TARGET}

    def markdown(self) -> str:
        def ms(x: float | None) -> str:
            return "-" if x is None else f"{x:.1f}"

        ratio = self.ratio
        alone = "" if self.d2h_ms is None else f" ({ms(self.d2h_ms)}, {ms(self.h2d_ms)})"
        verdict = "-" if ratio is None else ("yes" if ratio <= OFFLOAD_TARGET else "NO")
        return (f"| {self.case} | {self.fraction:g} | {self.host_elements:,} | {ms(self.step_ms)} | {ms(self.cpu_ms)} | "
                f"{ms(self.transfer_ms)}{alone} | {ms(self.gpu_ms)} | {ms(self.gpu_transfer_ms)} | "
                f"{'-' if ratio is None else f'{ratio:.2f}x'} | {verdict} |")


class Deadline:
    """The section's time budget: ``share(k)`` is the left time split over ``k`` parts to come."""

    def __init__(self, seconds: float) -> None:
        self.end = time.perf_counter() + seconds

    def left(self) -> float:
        return self.end - time.perf_counter()

    def share(self, parts: int) -> float:
        return max(1.0, self.left() / max(parts, 1))


def host_available() -> int:
    """Bytes of host memory available now (MemAvailable; free pages where /proc has no such line)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


def release(cupy, torch) -> None:
    """Hand cached blocks back: CuPy's device and pinned pools, torch's CUDA cache."""
    gc.collect()  # optimizers just dropped hold pinned state and GPU arrays
    cupy.get_default_memory_pool().free_all_blocks()
    cupy.get_default_pinned_memory_pool().free_all_blocks()
    if torch is not None:
        torch.cuda.empty_cache()


def too_big(cupy, torch, gpu_bytes: int, host_bytes: int) -> str | None:
    """Why ``gpu_bytes`` more of GPU memory and ``host_bytes`` more of host memory would not fit (each
    with a 10% + 2 GiB margin), or None."""
    release(cupy, torch)
    free = {"GPU": cupy.cuda.runtime.memGetInfo()[0], "host": host_available()}
    need = {"GPU": gpu_bytes, "host": host_bytes}
    short = [f"needs {need[k] / GIB:.1f} GiB of {k} memory, {free[k] / GIB:.1f} GiB free"
             for k in need if need[k] and 1.1 * need[k] + 2 * GIB > free[k]]
    return "; ".join(short) or None


def offload_identity(cupy, ml_dtypes, case: OffloadCase, steps: int = 3) -> bool:
    """Offload 0 vs 0.5 vs 1.0 on ~4.9M random params in 6 tensors, ``steps`` clipped steps: the same
    grad norms, params and state, bit for bit."""
    dtype = case.host_dtype(ml_dtypes)
    rng = np.random.default_rng(3)
    sizes = [3_000_017, 1 << 20, 777_777, 65_537, 1000, 1]
    init = [rng.standard_normal(k).astype(np.float32).astype(dtype) for k in sizes]
    grads = [[(rng.standard_normal(k) * 2).astype(np.float32).astype(dtype) for k in sizes] for _ in range(steps)]
    prints = []
    for f in OFFLOAD_FRACTIONS:
        params = [to_device(cupy, a) for a in init]
        opt = npadam.AdamW(params, lr=1e-3, weight_decay=0.1, max_grad_norm=1.0, offload_fraction=f)
        norms = [opt.step([to_device(cupy, g) for g in gs]).grad_norm for gs in grads]
        prints.append((norms, [to_host(p).tobytes() for p in params], state_bytes(opt)))
    return all(p == prints[0] for p in prints)


def transfer_times(cupy, case: OffloadCase, p: Any, g: Any, counts: dict[float, int], repeats: int,
                   budget_s: float) -> Timings:
    """What an offloaded step moves for ``counts[f]`` host elements, with CuPy memcpy between the GPU
    arrays and pinned host memory: params and grads down (``"<f> d2h"``), params up into a scratch GPU
    array (``"<f> h2d"``), and both at once on two streams (``"<f> both"``), as the step's pipeline
    overlaps them."""
    top = max(counts.values())
    down = cupy.cuda.alloc_pinned_memory(2 * case.item * top)
    up = cupy.cuda.alloc_pinned_memory(case.item * top)
    scratch = cupy.empty(case.item * top, cupy.uint8)
    rt = cupy.cuda.runtime
    d2h_stream, h2d_stream = cupy.cuda.Stream(non_blocking=True), cupy.cuda.Stream(non_blocking=True)

    def d2h(k: int) -> None:
        for i, src in enumerate((p, g)):
            rt.memcpyAsync(down.ptr + i * case.item * top, src.data.ptr, case.item * k, rt.memcpyDeviceToHost,
                           d2h_stream.ptr)

    def h2d(k: int) -> None:
        rt.memcpyAsync(scratch.data.ptr, up.ptr, case.item * k, rt.memcpyHostToDevice, h2d_stream.ptr)

    def both(k: int) -> None:
        d2h(k)
        h2d(k)

    fns = {f"{f} {name}": functools.partial(fn, k) for f, k in counts.items()
           for name, fn in (("d2h", d2h), ("h2d", h2d), ("both", both))}
    return cuda_time(fns, repeats, cupy, wall=True, budget_s=budget_s)


def offload_steps(cupy, case: OffloadCase, p: Any, g: Any, repeats: int, budget_s: float) -> Timings:
    """One ``npadam.AdamW`` step at each offload fraction (keys ``str(f)``), on the same params and grads."""
    param, grad = case.for_npadam(p), case.for_npadam(g)
    opts = {f: npadam.AdamW([param], lr=1e-4, weight_decay=0.1, offload_fraction=f) for f in OFFLOAD_FRACTIONS}
    return cuda_time({str(f): functools.partial(opt.step, [grad]) for f, opt in opts.items()}, repeats, cupy,
                     wall=True, budget_s=budget_s)


def cpu_part_times(cupy, ml_dtypes, case: OffloadCase, counts: dict[float, int], repeats: int,
                   budget_s: float) -> Timings:
    """The update alone (``skip_nonfinite=False``: an offloaded step takes its norm on the GPU) of
    ``npadam.AdamW`` on host arrays of ``counts[f]`` elements (keys ``str(f)``)."""
    top = max(counts.values())
    dtype = case.host_dtype(ml_dtypes)
    params, grads = np.full(top, 0.5, dtype), np.full(top, 1e-3, dtype)
    opts = {f: npadam.AdamW([params[:k]], lr=1e-4, weight_decay=0.1, skip_nonfinite=False) for f, k in counts.items()}
    return cuda_time({str(f): functools.partial(opts[f].step, [grads[:k]]) for f, k in counts.items()}, repeats, cupy,
                     wall=True, budget_s=budget_s)


def torch_cpu_state_step(torch, cupy, case: OffloadCase, p: Any, g: Any) -> Callable[[], None]:
    """One step of the torch way to keep the state on the CPU (see ``OFFLOAD_DEFINITIONS``)."""
    n = p.size
    dev_p, dev_g = case.for_torch(torch, cupy, p), case.for_torch(torch, cupy, g)
    master = torch.nn.Parameter(torch.empty(n, dtype=torch.float32, pin_memory=True))
    master.data.copy_(dev_p)
    topt = torch.optim.AdamW([master], lr=1e-4, weight_decay=0.1, fused=True)
    if case.pdtype == "float32":
        master.grad = torch.empty(n, dtype=torch.float32, pin_memory=True)

        def step() -> None:
            master.grad.copy_(dev_g, non_blocking=True)
            torch.cuda.current_stream().synchronize()
            topt.step()
            dev_p.copy_(master.detach(), non_blocking=True)

        return step
    g16, p16 = (torch.empty(n, dtype=torch.bfloat16, pin_memory=True) for _ in range(2))
    master.grad = torch.empty(n, dtype=torch.float32)

    def step_bf16() -> None:
        g16.copy_(dev_g, non_blocking=True)
        torch.cuda.current_stream().synchronize()
        master.grad.copy_(g16)
        topt.step()
        p16.copy_(master.detach())
        dev_p.copy_(p16, non_blocking=True)

    return step_bf16


def offload_case(cupy, torch, ml_dtypes, case: OffloadCase, n: int, repeats: int, deadline: Deadline,
                 parts_left: int, skipped: list[str]) -> tuple[list[OffloadRow], dict[str, float]]:
    """The timed parts of one case: its rows (fractions 0, 0.5, 1) and the torch baseline
    (``{"torch_ms", "npadam_ms"}``, empty where not measured). Parts that do not fit in memory are
    skipped with the reason appended to ``skipped``."""
    counts = {f: case.host_elements(n, f) for f in OFFLOAD_FRACTIONS if f}
    rows = {f: OffloadRow(case.name, f, n, case.host_elements(n, f)) for f in OFFLOAD_FRACTIONS}
    baseline: dict[str, float] = {}
    why = too_big(cupy, torch, n * (2 * case.item + 8), 0)  # params, grads, float32 random temporaries
    if why:
        skipped.append(f"{case.name}: {why}")
        return [], baseline
    p, g = case.random(cupy, n), case.random(cupy, n)
    widen = 0 if case.pdtype == "float32" else 8 * n  # a bfloat16 master is loaded through uint32 temporaries
    plan: list[tuple[str, int, int]] = [  # (part, GPU bytes, host bytes) beyond the params and grads
        ("transfers", case.item * n, 3 * case.item * n),
        ("steps", case.state * (2 * n - counts[0.5]) + widen, case.state * (n + counts[0.5])),
        ("CPU part", 0, 2 * case.item * n + case.state * (n + counts[0.5])),
    ]
    if torch is not None:
        plan.append(("torch baseline", 4 * n, (16 if case.pdtype == "float32" else 20) * n))
    else:
        parts_left -= 1
        skipped.append(f"{case.name} torch baseline: torch is not installed")
    for part, gpu_bytes, host_bytes in plan:
        budget = 0.6 * deadline.share(parts_left)
        parts_left -= 1
        why = too_big(cupy, torch, gpu_bytes, host_bytes)
        if why or deadline.left() < 2 * OFFLOAD_MIN_CASE_S / 3:
            skipped.append(f"{case.name} {part}: {why or 'out of the time budget'}")
            continue
        t0 = time.perf_counter()
        if part == "transfers":
            t = transfer_times(cupy, case, p, g, counts, repeats, budget)
            for f in counts:
                rows[f].transfer_ms, rows[f].d2h_ms, rows[f].h2d_ms = t[f"{f} both"], t[f"{f} d2h"], t[f"{f} h2d"]
        elif part == "steps":
            t = offload_steps(cupy, case, p, g, repeats, budget)
            for f, row in rows.items():
                row.step_ms = t[str(f)]
                row.gpu_ms = t["0.0"] * (n - row.host_elements) / n
        elif part == "CPU part":
            t = cpu_part_times(cupy, ml_dtypes, case, counts, repeats, budget)
            for f in counts:
                rows[f].cpu_ms = t[str(f)]
        else:
            try:
                t = cuda_time({"torch": torch_cpu_state_step(torch, cupy, case, p, g)}, repeats, cupy, wall=True,
                              budget_s=budget)
            except (RuntimeError, TypeError) as e:  # e.g. a torch without fused AdamW on the CPU
                skipped.append(f"{case.name} {part}: {type(e).__name__}: {e}")
                continue
            baseline = {"torch_ms": t["torch"], "npadam_ms": rows[1.0].step_ms}
        print(f"offload {case.name} {part}: {t.rounds} rounds, {time.perf_counter() - t0:.1f} s", flush=True)
        release(cupy, torch)
    del p, g
    release(cupy, torch)
    return list(rows.values()), baseline


def offload_section(cupy, torch, ml_dtypes, n: int, repeats: int, seconds: float,
                    report: Report) -> None:
    """Bit-identity of offload 0 / 0.5 / 1, then per case the timed parts (``OFFLOAD_DEFINITIONS``);
    the tables go into ``report``, written after each case. Cases that do not fit the memory or the
    ``seconds`` budget are skipped, saying why."""
    import numba

    deadline = Deadline(seconds)
    identity = {case.name: offload_identity(cupy, ml_dtypes, case) for case in OFFLOAD_CASES}
    out: dict[str, Any] = {"params": n, "bit_identical": identity, "rows": [], "torch": [], "skipped": []}
    report.result["offload"] = out
    report.lines += ["", "offload bit-identity, offload_fraction 0 vs 0.5 vs 1.0, 3 clipped steps, ~4.9M params in "
                     "6 tensors: " + ", ".join(f"{k} {'identical' if v else 'FAILED'}" for k, v in identity.items()),
                     "", OFFLOAD_DEFINITIONS, "",
                     f"{n:,} params; Numba {numba.get_num_threads()} threads, torch "
                     f"{torch.get_num_threads() if torch is not None else '-'} threads; median of up to {repeats} "
                     f"rounds (fewer where the section's {seconds:.0f} s budget asked)", "",
                     "| case | offload | host elements | step ms | CPU part ms | transfers ms (D2H, H2D alone) | "
                     "GPU part ms | GPU part + transfers ms | step / max(CPU, GPU + transfers) | <= 1.1x |",
                     "|---|---|---|---|---|---|---|---|---|---|"]
    torch_lines = ["", "| case | torch, state on the CPU (offload 1.0) ms | npadam offload 1.0 ms | npadam vs torch |",
                   "|---|---|---|---|"]
    report.write()
    for k, case in enumerate(OFFLOAD_CASES):
        if deadline.left() < OFFLOAD_MIN_CASE_S:
            out["skipped"].append(f"{case.name}: out of the section's {seconds:.0f} s budget")
            continue
        rows, baseline = offload_case(cupy, torch, ml_dtypes, case, n, repeats, deadline,
                                      4 * (len(OFFLOAD_CASES) - k), out["skipped"])
        report.lines += [row.markdown() for row in rows]
        out["rows"] += [row.as_json() for row in rows]
        if baseline:
            out["torch"].append({"case": case.name, **baseline})
            npm = baseline["npadam_ms"]
            torch_lines.append(f"| {case.name} | {baseline['torch_ms']:.1f} | "
                               + ("- | - |" if npm is None else f"{npm:.1f} | {baseline['torch_ms'] / npm:.2f}x |"))
        report.write()
    if out["torch"]:
        report.lines += torch_lines
    report.lines += [f"- skipped: {s}" for s in out["skipped"]]
    out["seconds"] = seconds - deadline.left()
    report.write()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default=os.environ.get("OUT", "."))
    ap.add_argument("--sizes", type=int, nargs="*", default=[256, 512, 1024, 2048],
                    help="millions of params (none: no GPU-only table)")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--skip-tests", action="store_true")
    ap.add_argument("--skip-offload", action="store_true", help="leave out the offload section")
    ap.add_argument("--offload-params", type=float, default=1e9,
                    help="params of the offload timings (default 1e9; lower it where memory or time is short)")
    ap.add_argument("--offload-repeats", type=int, default=5, help="timed rounds of the offload parts, at most")
    ap.add_argument("--offload-seconds", type=float, default=240.0,
                    help="time budget of the offload section (fewer rounds, then skipped parts, beyond it)")
    ap.add_argument("--skip-sharded", action="store_true", help="leave out the sharded (comm=) section")
    ap.add_argument("--sharded-params", type=float, default=64, help="millions of params of the sharded timings")
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
    report = Report(args.out, lines, {"date": str(datetime.date.today()), "device": name, "rows": []})
    result = report.result
    if not args.skip_tests:
        rc, tail = run_tests(args.out)
        lines += [f"GPU tests: exit {rc}", "```", tail, "```"]
        result["tests_rc"] = rc
    fails = bit_identity(cupy, ml_dtypes)
    lines.append(f"bit-identity GPU vs CPU kernel, 72 option combinations: "
                 f"{'all identical' if not fails else 'FAILED ' + ', '.join(fails)}")
    result["bit_identity_failures"] = fails
    report.write()
    if args.sizes:
        gpu_table(cupy, torch, args.sizes, args.repeats, report)
    if not args.skip_offload:
        release(cupy, torch)
        offload_section(cupy, torch, ml_dtypes, int(args.offload_params), args.offload_repeats, args.offload_seconds,
                        report)
    if not args.skip_sharded:
        release(cupy, torch)
        sharded_section(args.sharded_params, report)
    print("\n".join(lines))


def sharded_section(mparams: float, report: Report, timeout_s: float = 240.0) -> None:
    """``tools/bench_sharded.py --device gpu`` for each front (its tables into the report; a failure or
    a timeout is recorded, not raised)."""
    tool = os.path.join(os.path.dirname(os.path.abspath(__file__)), "bench_sharded.py")
    report.result["sharded"] = {}
    for front in ("numpy", "torch-flat"):
        cmd = [sys.executable, tool, "--device", "gpu", "--ranks", "1", "2", "--repeats", "5", "--elems",
               str(mparams), "--front", front]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
            text, rc = proc.stdout.strip() + ("\n" + proc.stderr.strip()[-2000:] if proc.returncode else ""), proc.returncode
        except subprocess.TimeoutExpired:
            text, rc = f"timed out after {timeout_s:.0f} s", -1
        report.lines += ["", f"Sharded ({front}), exit {rc}:", text]
        report.result["sharded"][front] = {"rc": rc, "output": text}
        print("\n".join(report.lines[-3:]), flush=True)
        report.write()


def gpu_table(cupy, torch, sizes: list[int], repeats: int, report: Report) -> None:
    """The copy bandwidth and the GPU-only table: npadam vs torch at ``sizes`` millions of params."""
    lines, result = report.lines, report.result
    bw = copy_bandwidth(cupy, 1 << 30, repeats)
    lines.append(f"device-to-device copy bandwidth (read + write): {bw:.0f} GB/s; floor = {BYTES} B/element")
    result["copy_gbs"] = bw
    lines.append("")
    lines.append("| case | params | npadam ms | update-only ms | torch ms | npadam vs torch | floor ms | % of copy bw |")
    lines.append("|---|---|---|---|---|---|---|---|")
    for m in sizes:
        n = m << 20
        r = bench(cupy, torch, n, repeats)
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
        report.write()


if __name__ == "__main__":
    main()
