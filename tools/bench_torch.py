#!/usr/bin/env python3
"""npadam.torch.AdamW vs torch.optim.AdamW(fused=True) on GPT-like torch models, in one run.

    python3 -m tools.bench_torch                          # 30/150/400-tensor GPTs, ~1.5 min on 2 cores
    python3 -m tools.bench_torch --sizes 150 --repeats 5 --no-cold

Models (``--sizes``, approximate parameter-tensor counts): a GPT stack of
nn.Embedding (tokens, positions), blocks of LayerNorm -> Linear qkv -> causal
attention -> Linear proj, LayerNorm -> Linear 4d -> GELU -> Linear (12 tensors a
block), a final LayerNorm and an untied head: 12 * layers + 5 tensors.

For each model, every contender gets its own copy of the same weights and the same
random grads (assigned once; a step does not change them), and the contenders of a
case are timed in turns, round after round (median per step; each timed call runs
enough steps to last ``--min-time``):

(a) ``npadam.torch.AdamW(max_grad_norm=1.0)`` (norm + clip + skip-on-inf inside the
    step) vs ``clip_grad_norm_(params, 1.0)`` + ``torch.optim.AdamW(fused=True)``;
(b) ``npadam.torch.AdamW(flat_storage=True)`` (no clipping; its default
    skip_nonfinite=True still reads the grads once for the inf check), the same with
    ``skip_nonfinite=False`` (the update pass alone), vs bare ``torch.optim.AdamW(fused=True)``;
(c) a whole training iteration (forward, backward, step, zero_grad) on a small batch:
    npadam default, npadam flat_storage (max_grad_norm=1.0 too, so that all three do the
    same math) and torch fused + clip; forward+backward alone for reference;
(d) cold start: the first step in a fresh interpreter with an empty Numba cache
    (NUMBA_CACHE_DIR a new temp dir: the kernels compile), then again in a fresh
    interpreter with that cache filled (they load).

Then npadam's per-tensor Python overhead: steps on 1000 tensors of 64 elements
(and on 10, for the marginal cost), divided by the tensor count.

Ratios are torch time / npadam time: >= 1.00x means npadam is faster.
"""

from __future__ import annotations

import argparse
import datetime
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Callable

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import torch  # noqa: E402
from torch import nn  # noqa: E402

import npadam  # noqa: E402
import npadam.torch  # noqa: E402
from tools._machine import cpu_clock, cpu_model, other_load  # noqa: E402

# preset -> (layers, width, heads); vocab 256, context 64
PRESETS = {30: (2, 128, 4), 150: (12, 192, 4), 400: (33, 248, 4)}
VOCAB, CTX = 256, 64
LR, WD = 1e-4, 0.1


# ---------------------------------------------------------------------- the model
class Block(nn.Module):
    def __init__(self, d: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.ln1 = nn.LayerNorm(d)
        self.qkv = nn.Linear(d, 3 * d)
        self.proj = nn.Linear(d, d)
        self.ln2 = nn.LayerNorm(d)
        self.fc = nn.Linear(d, 4 * d)
        self.out = nn.Linear(4 * d, d)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=-1)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, c))
        return x + self.out(nn.functional.gelu(self.fc(self.ln2(x))))


class GPT(nn.Module):
    """``12 * layers + 5`` parameter tensors."""

    def __init__(self, layers: int, d: int, heads: int, vocab: int = VOCAB, ctx: int = CTX) -> None:
        super().__init__()
        self.tok = nn.Embedding(vocab, d)
        self.pos = nn.Embedding(ctx, d)
        self.blocks = nn.ModuleList(Block(d, heads) for _ in range(layers))
        self.ln = nn.LayerNorm(d)
        self.head = nn.Linear(d, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        x = self.tok(idx) + self.pos(torch.arange(idx.shape[1]))
        for blk in self.blocks:
            x = blk(x)
        return self.head(self.ln(x))


def make_model(size: int, seed: int = 0) -> GPT:
    torch.manual_seed(seed)
    return GPT(*PRESETS[size])


def random_grads(params: list[torch.Tensor], seed: int = 1) -> list[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(p.shape, generator=g) for p in params]


def with_grads(model: nn.Module, grads: list[torch.Tensor]) -> list[nn.Parameter]:
    """The model's params with copies of ``grads`` as their ``.grad``."""
    params = list(model.parameters())
    for p, g in zip(params, grads):
        p.grad = g.clone()
    return params


def set_flat_grads(params: list[nn.Parameter], grads: list[torch.Tensor]) -> None:
    """flat_storage: the grads are views into npadam's flat buffer; write the values into them."""
    for p, g in zip(params, grads):
        p.grad.copy_(g)


# ---------------------------------------------------------------------- timing
def interleaved(fns: dict[str, Callable[[], object]], repeats: int, min_time: float) -> dict[str, float]:
    """Median seconds per call of each callable, timed in turns (round after round) so that a
    slow phase of a noisy machine hits every contender alike. Each timed sample runs the
    callable enough times to last ``min_time`` (calibrated after one warm-up call)."""
    number = {}
    for k, fn in fns.items():
        fn()  # warm-up (compiles, allocates state)
        t0 = time.perf_counter()
        fn()
        number[k] = max(1, math.ceil(min_time / max(time.perf_counter() - t0, 1e-9)))
    times: dict[str, list[float]] = {k: [] for k in fns}
    gc.collect()
    for _ in range(repeats):
        for k, fn in fns.items():
            n = number[k]
            t0 = time.perf_counter()
            for _ in range(n):
                fn()
            times[k].append((time.perf_counter() - t0) / n)
    return {k: statistics.median(v) for k, v in times.items()}


def bandwidth(n: int, repeats: int) -> dict[str, float]:
    """Streaming rates (GB/s, read + write) from tools/bench_cpu.py, after npadam picked Numba's
    threading layer (so that the measurement does not start OpenMP under torch)."""
    from npadam.kernels import threads

    threads.configure()
    from tools.bench_cpu import bandwidth as bw

    return bw(n, repeats)


# ---------------------------------------------------------------------- (a), (b)
def bench_step(size: int, repeats: int, min_time: float) -> dict[str, float]:
    base = make_model(size)
    grads = random_grads(list(base.parameters()))
    state = base.state_dict()

    def fresh() -> GPT:
        m = make_model(size)
        m.load_state_dict(state)
        return m

    r = _clipped(fresh, grads, repeats, min_time)
    gc.collect()
    return {**r, **_unclipped(fresh, grads, repeats, min_time)}


def _clipped(fresh: Callable[[], GPT], grads: list[torch.Tensor], repeats: int, min_time: float) -> dict:
    """(a) npadam default with max_grad_norm vs clip_grad_norm_ + torch fused."""
    npa = npadam.torch.AdamW(with_grads(fresh(), grads), lr=LR, weight_decay=WD, max_grad_norm=1.0)
    pt = with_grads(fresh(), grads)
    tca = torch.optim.AdamW(pt, lr=LR, weight_decay=WD, fused=True)

    def torch_clip() -> None:
        torch.nn.utils.clip_grad_norm_(pt, 1.0)
        tca.step()

    r = interleaved({"npadam": npa.step, "torch_clip": torch_clip}, repeats, min_time)
    return {"a_npadam": r["npadam"], "a_torch": r["torch_clip"]}


def _unclipped(fresh: Callable[[], GPT], grads: list[torch.Tensor], repeats: int, min_time: float) -> dict:
    """(b) npadam flat_storage (its default skip-on-inf check; and update only) vs bare torch fused."""
    pf = list(fresh().parameters())
    npf = npadam.torch.AdamW(pf, lr=LR, weight_decay=WD, flat_storage=True)
    set_flat_grads(pf, grads)
    pu = list(fresh().parameters())
    npu = npadam.torch.AdamW(pu, lr=LR, weight_decay=WD, flat_storage=True, skip_nonfinite=False)
    set_flat_grads(pu, grads)
    tb = torch.optim.AdamW(with_grads(fresh(), grads), lr=LR, weight_decay=WD, fused=True)
    r = interleaved({"flat": npf.step, "flat_update": npu.step, "torch": tb.step}, repeats, min_time)
    return {"b_flat": r["flat"], "b_flat_update": r["flat_update"], "b_torch": r["torch"]}


# ---------------------------------------------------------------------- (c)
def bench_train(size: int, repeats: int, batch: int, min_time: float) -> dict[str, float]:
    base = make_model(size)
    state = base.state_dict()
    g = torch.Generator().manual_seed(2)
    tokens = torch.randint(0, VOCAB, (batch, CTX + 1), generator=g)
    x, y = tokens[:, :-1], tokens[:, 1:]

    def fresh() -> GPT:
        m = make_model(size)
        m.load_state_dict(state)
        return m

    def iteration(model: GPT, opt: torch.optim.Optimizer | None, clip: bool) -> Callable[[], None]:
        params = list(model.parameters())

        def run() -> None:
            logits = model(x)
            loss = nn.functional.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
            loss.backward()
            if opt is None:  # forward + backward alone
                for p in params:
                    p.grad = None
                return
            if clip:
                torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            opt.zero_grad()

        return run

    m1, m2, m3, m4 = fresh(), fresh(), fresh(), fresh()
    fns = {
        "npadam": iteration(m1, npadam.torch.AdamW(m1.parameters(), lr=LR, weight_decay=WD, max_grad_norm=1.0),
                            False),
        "flat": iteration(m2, npadam.torch.AdamW(m2.parameters(), lr=LR, weight_decay=WD, max_grad_norm=1.0,
                                                 flat_storage=True), False),
        "torch_clip": iteration(m3, torch.optim.AdamW(m3.parameters(), lr=LR, weight_decay=WD, fused=True), True),
        "fwd_bwd": iteration(m4, None, False),
    }
    r = interleaved(fns, repeats, min_time)
    return {f"c_{k}": v for k, v in r.items()}


# ---------------------------------------------------------------------- per-tensor overhead
def bench_tiny(count: int, numel: int, repeats: int, min_time: float) -> dict[str, float]:
    """Seconds per step on ``count`` tensors of ``numel`` elements each."""
    g = torch.Generator().manual_seed(3)
    data = [torch.randn(numel, generator=g) for _ in range(count)]
    grads = [torch.randn(numel, generator=g) for _ in range(count)]

    def params() -> list[nn.Parameter]:
        ps = [nn.Parameter(d.clone()) for d in data]
        for p, gr in zip(ps, grads):
            p.grad = gr.clone()
        return ps

    pa = params()
    npa = npadam.torch.AdamW(pa, lr=LR, weight_decay=WD, max_grad_norm=1.0)
    pf = params()
    npf = npadam.torch.AdamW(pf, lr=LR, weight_decay=WD, flat_storage=True)
    set_flat_grads(pf, grads)
    pt = params()
    tc = torch.optim.AdamW(pt, lr=LR, weight_decay=WD, fused=True)

    def torch_clip() -> None:
        torch.nn.utils.clip_grad_norm_(pt, 1.0)
        tc.step()

    pb = params()
    tb = torch.optim.AdamW(pb, lr=LR, weight_decay=WD, fused=True)
    return interleaved({"npadam": npa.step, "flat": npf.step, "torch_clip": torch_clip, "torch": tb.step},
                       repeats, min_time)


# ---------------------------------------------------------------------- (d) cold start
COLD_CHILD = r"""
import json, sys, time
t0 = time.perf_counter()
import torch
import torch._dynamo  # imported by the first torch.optim.Optimizer constructor, whichever optimizer it is
import npadam.torch
from tools.bench_torch import make_model, random_grads, with_grads, LR, WD
t_import = time.perf_counter() - t0
size = int(sys.argv[1])
grads = random_grads(list(make_model(size).parameters()))
out = {"import": t_import}
for name in ("npadam", "torch_clip"):
    params = with_grads(make_model(size), grads)
    t0 = time.perf_counter()
    if name == "npadam":
        opt = npadam.torch.AdamW(params, lr=LR, weight_decay=WD, max_grad_norm=1.0)
        step = opt.step
    else:
        opt = torch.optim.AdamW(params, lr=LR, weight_decay=WD, fused=True)
        def step():
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
    t1 = time.perf_counter()
    step()
    t2 = time.perf_counter()
    later = []
    for _ in range(5):
        t = time.perf_counter()
        step()
        later.append(time.perf_counter() - t)
    out[name] = {"init": t1 - t0, "first": t2 - t1, "steady": sorted(later)[2]}
print(json.dumps(out))
"""


def bench_cold(size: int) -> dict[str, dict]:
    root = os.path.join(os.path.dirname(__file__), "..")
    with tempfile.TemporaryDirectory(prefix="npadam-numba-cache-") as cache:
        env = {**os.environ, "NUMBA_CACHE_DIR": cache,
               "PYTHONPATH": os.pathsep.join(filter(None, [os.path.abspath(root), os.environ.get("PYTHONPATH")]))}
        res = {}
        for run in ("cold", "warm"):
            out = subprocess.run([sys.executable, "-c", COLD_CHILD, str(size)], capture_output=True, text=True,
                                 env=env, cwd=root)
            if out.returncode:
                raise RuntimeError(f"cold-start child failed:\n{out.stderr}")
            res[run] = json.loads(out.stdout.strip().splitlines()[-1])
    return res


# ---------------------------------------------------------------------- other load on the machine
# ---------------------------------------------------------------------- main
def ms(x: float) -> str:
    return f"{x * 1e3:.2f}" if x < 0.1 else f"{x * 1e3:.1f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", type=int, nargs="+", default=sorted(PRESETS), choices=sorted(PRESETS),
                    help="models by approximate parameter-tensor count")
    ap.add_argument("--repeats", type=int, default=15, help="timed rounds per case (median)")
    ap.add_argument("--min-time", type=float, default=0.05,
                    help="seconds each timed sample lasts at least (steps are repeated inside it)")
    ap.add_argument("--train-repeats", type=int, default=7, help="timed rounds of whole iterations (0: skip (c))")
    ap.add_argument("--batch", type=int, default=4, help=f"sequences of {CTX} tokens per training iteration")
    ap.add_argument("--tiny", type=int, default=1000, help="tensors of --tiny-numel elements for the "
                    "per-tensor overhead (0: skip)")
    ap.add_argument("--tiny-numel", type=int, default=64)
    ap.add_argument("--cold-size", type=int, default=150, choices=sorted(PRESETS),
                    help="model of the cold-start runs")
    ap.add_argument("--no-cold", action="store_true", help="skip the cold-start subprocesses (d)")
    ap.add_argument("--bandwidth-size", type=int, default=32, help="millions of fp32 elements (0: skip)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    import numba
    import numpy as np

    clock = cpu_clock()
    t_start = clock[0]
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    # npadam picks Numba's threading layer before Numba's first launch (numba.get_num_threads() would
    # launch Numba's own default): the layer measured is the one npadam users get
    from npadam.kernels import threads

    layer = threads.configure()
    print(f"# npadam.torch benchmark, {datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, "
          f"{mem:.0f} GiB, Python {platform.python_version()}, NumPy {np.__version__}, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), Numba {numba.__version__} ({numba.config.NUMBA_NUM_THREADS} "
          f"threads, {layer} layer)")
    results: dict = {"date": str(datetime.date.today()), "cpu": cpu_model(), "cores": os.cpu_count(),
                     "numba_layer": layer, "rows": []}
    if args.bandwidth_size:
        rates = bandwidth(args.bandwidth_size << 20, 5)
        print(f"streaming bandwidth at {args.bandwidth_size}M fp32 (read+write): "
              + ", ".join(f"{k} {v:.1f} GB/s" for k, v in rates.items()))
        results["bandwidth_gbs"] = rates
    print("times: milliseconds per step (a, b) or per iteration (c), median of the rounds; "
          "ratio = torch / npadam (>= 1.00x: npadam faster)", flush=True)

    rows = []
    disturbed = []  # sections during which other processes used the CPU

    def check(section: str, since: tuple[float, float, float]) -> float:
        load = other_load(since)
        if load >= 0.1:
            disturbed.append(f"{section} ({load:.2f} cores)")
        return load

    for size in args.sizes:
        since = cpu_clock()
        model = make_model(size)
        ntensors = len(list(model.parameters()))
        nparams = sum(p.numel() for p in model.parameters())
        del model
        r = {"size": size, "tensors": ntensors, "params": nparams}
        r.update(bench_step(size, args.repeats, args.min_time))
        if args.train_repeats:
            r.update(bench_train(size, args.train_repeats, args.batch, args.min_time))
        r["other_load_cores"] = check(f"GPT-{size}", since)
        rows.append(r)
        results["rows"].append(r)
        print(f"  {ntensors} tensors, {nparams / 1e6:.2f}M params: (a) npadam {ms(r['a_npadam'])} vs torch+clip "
              f"{ms(r['a_torch'])} = {r['a_torch'] / r['a_npadam']:.2f}x; (b) flat {ms(r['b_flat'])} / update "
              f"{ms(r['b_flat_update'])} vs torch {ms(r['b_torch'])} = {r['b_torch'] / r['b_flat']:.2f}x / "
              f"{r['b_torch'] / r['b_flat_update']:.2f}x" + (
                  f"; (c) npadam {ms(r['c_npadam'])}, flat {ms(r['c_flat'])}, torch+clip {ms(r['c_torch_clip'])}, "
                  f"fwd+bwd {ms(r['c_fwd_bwd'])}" if args.train_repeats else ""), flush=True)

    print()
    print("| model | tensors | params | (a) npadam clip | torch fused + clip | (a) torch / npadam "
          "| (b) npadam flat | flat, update only | torch fused | (b) torch / flat | torch / update only |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| GPT-{r['size']} | {r['tensors']} | {r['params'] / 1e6:.2f}M | {ms(r['a_npadam'])} | "
              f"{ms(r['a_torch'])} | **{r['a_torch'] / r['a_npadam']:.2f}x** | {ms(r['b_flat'])} | "
              f"{ms(r['b_flat_update'])} | {ms(r['b_torch'])} | **{r['b_torch'] / r['b_flat']:.2f}x** | "
              f"{r['b_torch'] / r['b_flat_update']:.2f}x |")
    if args.train_repeats:
        print()
        print(f"| (c) iteration, batch {args.batch}x{CTX} | npadam clip | npadam flat + clip | torch fused + clip | "
              "fwd+bwd alone | torch / npadam | torch / flat | optimizer share (npadam / torch) |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            fb = r["c_fwd_bwd"]
            print(f"| GPT-{r['size']} ({r['params'] / 1e6:.2f}M) | {ms(r['c_npadam'])} | {ms(r['c_flat'])} | "
                  f"{ms(r['c_torch_clip'])} | {ms(fb)} | {r['c_torch_clip'] / r['c_npadam']:.2f}x | "
                  f"{r['c_torch_clip'] / r['c_flat']:.2f}x | "
                  f"{max(r['c_npadam'] - fb, 0) / r['c_npadam']:.0%} / "
                  f"{max(r['c_torch_clip'] - fb, 0) / r['c_torch_clip']:.0%} |")
    if args.tiny:
        n = args.tiny
        since = cpu_clock()
        big = bench_tiny(n, args.tiny_numel, args.repeats, args.min_time)
        small = bench_tiny(10, args.tiny_numel, args.repeats, args.min_time)
        results["tiny"] = {"count": n, "numel": args.tiny_numel, "big": big, "small": small,
                           "other_load_cores": check("per-tensor overhead", since)}
        print()
        print(f"| per-tensor overhead, {n} x {args.tiny_numel} elements | npadam clip | npadam flat "
              "| torch fused + clip | torch fused |")
        print("|---|---|---|---|---|")
        keys = ("npadam", "flat", "torch_clip", "torch")
        print(f"| step, {n} tensors (ms) | " + " | ".join(ms(big[k]) for k in keys) + " |")
        print("| step, 10 tensors (ms) | " + " | ".join(ms(small[k]) for k in keys) + " |")
        print(f"| per tensor: step / {n} (us) | " + " | ".join(f"{big[k] / n * 1e6:.1f}" for k in keys) + " |")
        print(f"| per tensor, marginal: (t{n} - t10) / {n - 10} (us) | "
              + " | ".join(f"{(big[k] - small[k]) / (n - 10) * 1e6:.1f}" for k in keys) + " |")
    if not args.no_cold:
        since = cpu_clock()
        c = bench_cold(args.cold_size)
        c["other_load_cores"] = check("cold start", since)
        results["cold"] = c
        print()
        print(f"| (d) fresh process, GPT-{args.cold_size} | import torch, torch._dynamo, npadam.torch | "
              "npadam init | npadam 1st step | npadam steady | torch init | torch+clip 1st step | torch+clip steady |")
        print("|---|---|---|---|---|---|---|---|")
        for run, label in (("cold", "empty Numba cache (compiles)"), ("warm", "same cache, re-run (loads)")):
            d, t = c[run], c[run]["torch_clip"]
            print(f"| {label} | {d['import']:.2f} s | {ms(d['npadam']['init'])} ms | "
                  f"{d['npadam']['first']:.2f} s | {ms(d['npadam']['steady'])} ms | {ms(t['init'])} ms | "
                  f"{ms(t['first'])} ms | {ms(t['steady'])} ms |")
    load = other_load(clock)
    results["other_load_cores"] = load
    print(f"\n(total {time.perf_counter() - t_start:.0f} s; other processes used {load:.2f} of the "
          f"{os.cpu_count()} cores meanwhile" + ("" if not disturbed else "; disturbed, re-run on an idle machine: "
                                                 + ", ".join(disturbed)) + ")")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
