#!/usr/bin/env python3
"""Precision-aware optimizer state (issue 11): does it still train?

    python3 tools/quality_precision.py                 # demo MLP + small torch GPT, seeds 0 1 2 (~5 min, 2 cores)
    python3 tools/quality_precision.py --only mlp --mlp-steps 200

Two tasks, fixed seeds, the same number of steps for every configuration:

* **mlp**: the model of ``npadam demo`` (``npadam.cli._mlp``: a NumPy MLP 64 -> 256 -> 256 -> 10
  on a generated 10-class task, ``npadam.AdamW(betas=(0.9, 0.95), weight_decay=0.1 on the
  weights, max_grad_norm=1.0)``, warmup-cosine lr 3e-3 -> 3e-4, batch 256), run through the
  demo's own ``_mlp.build`` / ``_mlp.train`` with the precision options added to its AdamW;
* **gpt**: ``tests/_gpt.GPT`` (torch, ``nn.MultiheadAttention`` blocks) of 4 layers, width 32,
  4 heads, context 32, vocabulary 64, on sequences of a seeded random bigram language (each token
  has 4 successors with probabilities 0.5/0.25/0.15/0.10: the loss floor is their entropy,
  1.21 nats), batch 16, ``npadam.torch.AdamW(lr=2e-3, betas=(0.9, 0.95), weight_decay=0.1,
  max_grad_norm=1.0)``; held-out loss on 64 fixed sequences.

Configurations (fp32 params unless said): fp32 state; bf16 moments rounded to nearest; bf16
moments rounded stochastically (``seed`` = the run's seed); and for bf16 params, an fp32 master
against ``store_param_remainders=True`` (with fp32 and with bf16 moments). The seeds change the
data, the init and the batches; fp32 state runs on every seed give the run-to-run spread that
the bf16 moments are judged against, and fp32 seed 0 runs twice (determinism: the repeat must
be identical).

Remainders vs fp32 master: the two runs step in lockstep on the same batches. Their masters
agree bit for bit as long as no bf16 rounding tie changed a param (the fp32-master run writes
the param rounded to nearest-even, the remainder run ties away from zero: they differ when a
master's low 16 bits are exactly 0x8000 and its high half is even); from that step on the
forward passes see different params. The tool reports the first step whose masters differ,
the ties before it, and whether the losses were identical. A second, gradient-forced lockstep
feeds the fp32-master run's gradients to both optimizers: there the masters must agree at
every step, and the bf16 params must differ exactly at the tie positions.

fp8 moments (torchao's blockwise scheme: a float32 scale per 256 elements) join the fp32-param
configurations when this npadam has them: m and v in float8_e4m3fn, and m in float8_e4m3fn with
v in float8_e5m2; without them the tool says that the options reject fp8.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, ROOT)

import npadam  # noqa: E402
from npadam.reference.precision import join_remainder  # noqa: E402
from tools._machine import cpu_model  # noqa: E402

BF16_MV = {"exp_avg_dtype": "bfloat16", "exp_avg_sq_dtype": "bfloat16"}
CONFIGS = {  # name -> (label, options); fp32 params
    "fp32": ("fp32 state", {}),
    "bf16": ("bf16 m/v, nearest", BF16_MV),
    "bf16_sr": ("bf16 m/v, stochastic", {**BF16_MV, "rounding": "stochastic"}),
}


@dataclass
class Curve:
    losses: list[float]
    eval_loss: float
    accuracy: float = float("nan")
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)

    def final(self) -> float:
        """Mean training loss over the last 10% of the steps (one minibatch is noisy)."""
        k = max(1, len(self.losses) // 10)
        return float(np.mean(self.losses[-k:]))


def with_seed(opts: dict, seed: int) -> dict:
    return {**opts, "seed": seed} if opts.get("rounding") == "stochastic" else dict(opts)


def bits(a) -> np.ndarray:
    a = np.asarray(a)
    return a.view(np.uint32 if a.dtype.itemsize == 4 else np.uint16).ravel()


def even_ties(master: np.ndarray) -> np.ndarray:
    """Where round-to-nearest-even and ties-away-from-zero give different bf16 values of the master."""
    b = bits(np.asarray(master, np.float32))
    return ((b & 0xFFFF) == 0x8000) & (((b >> 16) & 1) == 0)


class Lockstep:
    """Bookkeeping of a lockstep of an fp32-master run (A) and a remainder run (B): masters compared
    bit for bit after every step, even ties of A's masters counted, losses kept."""

    def __init__(self, steps: int, forced: bool) -> None:
        self.steps, self.forced = steps, forced
        self.la: list[float] = []
        self.lb: list[float] = []
        self.first_diff: int | None = None
        self.ties_before = self.ties_total = 0
        self.matches = True
        self.numel = 0

    def after_step(self, k: int, ma: np.ndarray, mb: np.ndarray, pa: Callable[[], np.ndarray],
                   pb: Callable[[], np.ndarray]) -> None:
        """Masters of A and B after update ``k + 1``; ``pa``/``pb`` give the bf16 params' bits."""
        ties = even_ties(ma)
        self.numel = ma.size
        if self.first_diff is None:
            if not np.array_equal(bits(ma), bits(mb)):
                self.first_diff = k + 1
            else:
                self.ties_before += int(ties.sum())
                if not np.array_equal(pa() != pb(), ties):
                    self.matches = False
        self.ties_total += int(ties.sum())

    def summary(self, **extra: float) -> dict:
        la, lb = np.asarray(self.la), np.asarray(self.lb)
        same, d, tail = la == lb, np.abs(la - lb), max(1, self.steps // 10)
        return {"steps": self.steps, "forced": self.forced, "first_master_diff_step": self.first_diff,
                "ties_before_first_diff": self.ties_before, "ties_total_in_A": self.ties_total,
                "param_diff_equals_tie_positions": self.matches,
                "losses_identical_steps": int(np.argmin(same)) if not same.all() else self.steps,
                "losses_all_identical": bool(same.all()), "mean_abs_loss_diff": float(d.mean()),
                "max_abs_loss_diff": float(d.max()), "final_A": float(la[-tail:].mean()),
                "final_B": float(lb[-tail:].mean()), "numel": int(self.numel), **extra}


# ====================================================================== the demo MLP
MLP = dict(d_in=64, classes=10, n_train=20_000, n_test=4_000, hidden=256, batch=256, lr=3e-3, wd=0.1)


@contextlib.contextmanager
def demo_adamw(**opts):
    """The demo's model and loop (``npadam.cli._mlp``) with precision options added to its AdamW."""
    from npadam.cli import _mlp

    orig = _mlp.AdamW
    _mlp.AdamW = functools.partial(orig, **opts)
    try:
        yield _mlp
    finally:
        _mlp.AdamW = orig


def mlp_schedule(steps: int):
    from npadam import schedules

    return schedules.warmup_cosine(peak=MLP["lr"], warmup_steps=max(1, steps // 10), total_steps=steps,
                                   final=MLP["lr"] / 10)


def mlp_task(seed: int):
    from npadam.cli import _mlp

    return _mlp.make_task(MLP["d_in"], MLP["classes"], n_train=MLP["n_train"], n_test=MLP["n_test"], seed=seed)


def mlp_run(seed: int, steps: int, opts: dict, dtype: str = "fp32") -> Curve:
    task = mlp_task(seed)
    t0 = time.perf_counter()
    with demo_adamw(**with_seed(opts, seed)) as _mlp:
        run = _mlp.train(task, hidden=MLP["hidden"], classes=MLP["classes"], steps=steps, batch=MLP["batch"],
                         lr=mlp_schedule(steps), weight_decay=MLP["wd"], dtype=dtype, kernel="cpu", seed=seed)
        ev, _ = _mlp.loss_and_grads(run.params, task.x_test, task.y_test)
        acc = _mlp.accuracy(run.params, task.x_test, task.y_test)
    return Curve(list(run.losses), ev, acc, time.perf_counter() - t0)


def mlp_lockstep(seed: int, steps: int, mv: dict, forced: bool) -> dict:
    """bf16 params: fp32 master (A) vs param remainders (B), same batches; see the module docstring."""
    task = mlp_task(seed)
    models = []
    for rem in (False, True):
        with demo_adamw(**mv, store_param_remainders=rem) as _mlp:
            models.append(_mlp.build(task, hidden=MLP["hidden"], classes=MLP["classes"], lr=mlp_schedule(steps),
                                     weight_decay=MLP["wd"], dtype="bf16", kernel="cpu", seed=seed))
    a, b = models
    rng = np.random.default_rng(seed + 2)  # the demo's batch order

    def masters():
        sa, sb = a.opt.state_dict()["state"], b.opt.state_dict()["state"]
        ma = np.concatenate([np.asarray(sa[i]["master"], np.float32).ravel() for i in range(len(a.order))])
        mb = np.concatenate([join_remainder(bits(b.params[n]), np.asarray(sb[i]["param_remainder"]).ravel())
                             for i, n in enumerate(b.order)])
        return ma, mb

    def params(m):
        return np.concatenate([bits(m.params[n]) for n in m.order])

    log = Lockstep(steps, forced)
    for k in range(steps):
        idx = rng.integers(0, task.x_train.shape[0], MLP["batch"])
        x, y = task.x_train[idx], task.y_train[idx]
        log.la.append(a.batch_grads(x, y))
        if forced:
            for n in b.order:
                b.grads[n][...] = a.grads[n]
            log.lb.append(log.la[-1])
        else:
            log.lb.append(b.batch_grads(x, y))
        a.opt.step([a.grads[n] for n in a.order])
        b.opt.step([b.grads[n] for n in b.order])
        log.after_step(k, *masters(), lambda: params(a), lambda: params(b))
    return log.summary()


# ====================================================================== the small torch GPT
GPT = dict(vocab=64, d=32, heads=4, layers=4, ctx=32, batch=16, lr=2e-3, wd=0.1, n_eval=64)
SUCC_P = np.array([0.5, 0.25, 0.15, 0.10])


def gpt_language(seed: int) -> np.ndarray:
    """Each token's 4 successors (a seeded random bigram language)."""
    rng = np.random.default_rng(10_000 + seed)
    return np.stack([rng.choice(GPT["vocab"], 4, replace=False) for _ in range(GPT["vocab"])])


def gpt_sequences(succ: np.ndarray, rng: np.random.Generator, n: int) -> np.ndarray:
    L = GPT["ctx"] + 1
    out = np.empty((n, L), np.int64)
    out[:, 0] = rng.integers(0, GPT["vocab"], n)
    cum = np.cumsum(SUCC_P)
    for t in range(1, L):
        j = np.searchsorted(cum, rng.random(n), side="right").clip(0, 3)
        out[:, t] = succ[out[:, t - 1], j]
    return out


def gpt_entropy_floor() -> float:
    """Mean loss of the true model over the ctx predicted tokens (all are bigram-determined)."""
    return float(-(SUCC_P * np.log(SUCC_P)).sum())


def gpt_setup(seed: int, dtype):
    import torch

    from tests import _gpt

    model = _gpt.make(seed, vocab=GPT["vocab"], d=GPT["d"], heads=GPT["heads"], layers=GPT["layers"], ctx=GPT["ctx"])
    if dtype is not None:
        model = model.to(dtype)
    succ = gpt_language(seed)
    ev = torch.from_numpy(gpt_sequences(succ, np.random.default_rng(20_000 + seed), GPT["n_eval"]))
    return model, succ, ev


def gpt_loss(model, tokens):
    import torch

    x, y = tokens[:, :-1], tokens[:, 1:]
    logits = model(x).float()
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]), y.reshape(-1))


def gpt_opt(model, opts: dict):
    import npadam.torch

    return npadam.torch.AdamW(model.parameters(), lr=GPT["lr"], betas=(0.9, 0.95), weight_decay=GPT["wd"],
                              max_grad_norm=1.0, **opts)


def gpt_run(seed: int, steps: int, opts: dict) -> Curve:
    import torch

    model, succ, ev = gpt_setup(seed, None)
    opt = gpt_opt(model, with_seed(opts, seed))
    rng = np.random.default_rng(30_000 + seed)
    losses = []
    t0 = time.perf_counter()
    for _ in range(steps):
        tokens = torch.from_numpy(gpt_sequences(succ, rng, GPT["batch"]))
        loss = gpt_loss(model, tokens)
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    with torch.no_grad():
        e = float(gpt_loss(model, ev))
    return Curve(losses, e, seconds=time.perf_counter() - t0)


def gpt_lockstep(seed: int, steps: int, mv: dict, forced: bool) -> dict:
    import torch

    a, succ, ev = gpt_setup(seed, torch.bfloat16)
    b, _, _ = gpt_setup(seed, torch.bfloat16)
    oa, ob = gpt_opt(a, dict(mv)), gpt_opt(b, {**mv, "store_param_remainders": True})
    pa_list, pb_list = list(a.parameters()), list(b.parameters())
    rng = np.random.default_rng(30_000 + seed)

    def masters():
        sa, sb = oa.state_dict()["state"], ob.state_dict()["state"]
        ma = np.concatenate([sa[i]["master"].numpy().ravel() for i in range(len(pa_list))])
        mb = np.concatenate([join_remainder(p.detach().view(torch.int16).numpy().view(np.uint16).ravel(),
                                            sb[i]["param_remainder"].numpy().ravel()) for i, p in enumerate(pb_list)])
        return ma, mb

    def params(ps):
        return np.concatenate([p.detach().view(torch.int16).numpy().view(np.uint16).ravel() for p in ps])

    log = Lockstep(steps, forced)
    for k in range(steps):
        tokens = torch.from_numpy(gpt_sequences(succ, rng, GPT["batch"]))
        loss_a = gpt_loss(a, tokens)
        loss_a.backward()
        log.la.append(float(loss_a.detach()))
        if forced:
            for p, q in zip(pa_list, pb_list):
                q.grad = p.grad.clone()
            log.lb.append(log.la[-1])
        else:
            loss_b = gpt_loss(b, tokens)
            loss_b.backward()
            log.lb.append(float(loss_b.detach()))
        oa.step()
        ob.step()
        oa.zero_grad()
        ob.zero_grad()
        log.after_step(k, *masters(), lambda: params(pa_list), lambda: params(pb_list))
    with torch.no_grad():
        return log.summary(eval_A=float(gpt_loss(a, ev)), eval_B=float(gpt_loss(b, ev)))


# ====================================================================== reporting
def curve_diff(a: Curve, b: Curve) -> tuple[float, float]:
    d = np.abs(np.asarray(a.losses) - np.asarray(b.losses))
    return float(d.mean()), float(d.max())


def report_task(name: str, runs: dict[tuple[str, int], Curve], seeds: list[int], repeat: Curve | None) -> dict:
    """Tables for one task; returns the summary."""
    print(f"\n### {name}: final loss (mean of the last 10% of steps), held-out loss"
          + (", held-out accuracy" if name == "mlp" else "") + " per seed; curve vs fp32 state at the same seed")
    acc = name == "mlp"
    print("\n| configuration | seed | final train loss | held-out loss" + (" | accuracy" if acc else "")
          + " | mean abs loss diff vs fp32 (per step) | max abs diff | held-out diff vs fp32 | seconds |")
    print("|---|---|---|---" + ("|---" if acc else "") + "|---|---|---|---|")
    for cfg, (label, _) in CONFIGS.items():
        for s in seeds:
            c = runs[(cfg, s)]
            ref = runs[("fp32", s)]
            md, mx = curve_diff(c, ref)
            print(f"| {label} | {s} | {c.final():.4f} | {c.eval_loss:.4f}"
                  + (f" | {100 * c.accuracy:.1f}%" if acc else "")
                  + f" | {md:.2e} | {mx:.2e} | {c.eval_loss - ref.eval_loss:+.1e} | {c.seconds:.1f} |")
    # spread across seeds of fp32 state
    f_ev = np.array([runs[("fp32", s)].eval_loss for s in seeds])
    f_fin = np.array([runs[("fp32", s)].final() for s in seeds])
    pair = [curve_diff(runs[("fp32", s)], runs[("fp32", t)])[0] for i, s in enumerate(seeds) for t in seeds[i + 1:]]
    out = {"fp32_eval_range": float(np.ptp(f_ev)), "fp32_eval_std": float(f_ev.std(ddof=1)) if len(seeds) > 1 else 0.0,
           "fp32_final_range": float(np.ptp(f_fin)), "fp32_pairwise_curve_diff": float(np.mean(pair)) if pair else 0.0,
           "configs": {}}
    print(f"\nrun-to-run spread of fp32 state over seeds {seeds}: held-out loss range {out['fp32_eval_range']:.4f} "
          f"(std {out['fp32_eval_std']:.4f}), final train loss range {out['fp32_final_range']:.4f}, mean abs per-step "
          f"loss diff between seeds {out['fp32_pairwise_curve_diff']:.3e}")
    if repeat is not None:
        first = runs[("fp32", seeds[0])]
        same = repeat.losses == first.losses and repeat.eval_loss == first.eval_loss
        out["fp32_repeat_identical"] = bool(same)
        print(f"fp32 seed {seeds[0]} run twice: {'identical (bit for bit losses)' if same else 'NOT identical'}")
    print("\n| configuration | mean held-out loss (seeds) | vs fp32 mean | max abs held-out diff vs fp32 (same seed) | "
          "within fp32's seed range? | mean curve diff vs fp32 | vs fp32's seed-to-seed curve diff |")
    print("|---|---|---|---|---|---|---|")
    for cfg, (label, _) in CONFIGS.items():
        ev = np.array([runs[(cfg, s)].eval_loss for s in seeds])
        dif = np.array([runs[(cfg, s)].eval_loss - runs[("fp32", s)].eval_loss for s in seeds])
        cd = float(np.mean([curve_diff(runs[(cfg, s)], runs[("fp32", s)])[0] for s in seeds]))
        within = bool(np.max(np.abs(dif)) <= out["fp32_eval_range"])
        out["configs"][cfg] = {"mean_eval": float(ev.mean()), "max_abs_eval_diff": float(np.max(np.abs(dif))),
                               "within_seed_range": within, "mean_curve_diff": cd}
        print(f"| {label} | {ev.mean():.4f} | {ev.mean() - f_ev.mean():+.1e} | {np.max(np.abs(dif)):.1e} | "
              f"{'yes' if within else 'no'} | {cd:.2e} | "
              f"{cd / out['fp32_pairwise_curve_diff'] if out['fp32_pairwise_curve_diff'] else float('nan'):.2g}x |")
    return out


def report_lockstep(name: str, rows: list[tuple[str, dict]]) -> None:
    print(f"\n### {name}: bf16 params, fp32 master (A) vs store_param_remainders (B), lockstep on the same batches")
    print("\n| moments | mode | steps | params | masters equal through step | even ties before | bf16 params differ "
          "exactly at the ties | losses identical | first differing loss | mean abs loss diff | max abs diff | "
          "final A / B |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|")
    for mv, r in rows:
        upto = r["first_master_diff_step"]
        print(f"| {mv} | {'same grads (forced)' if r['forced'] else 'independent'} | {r['steps']} | {r['numel']:,} | "
              f"{'all ' + str(r['steps']) if upto is None else upto - 1} | {r['ties_before_first_diff']} | "
              f"{'yes' if r['param_diff_equals_tie_positions'] else 'no'} | "
              f"{'yes (all)' if r['losses_all_identical'] else 'no'} | "
              f"{'-' if r['losses_all_identical'] else 'step ' + str(r['losses_identical_steps'] + 1)} | "
              f"{r['mean_abs_loss_diff']:.2e} | {r['max_abs_loss_diff']:.2e} | "
              f"{r['final_A']:.4f} / {r['final_B']:.4f} |")


FP8_CONFIGS = {
    "fp8": ("fp8 m/v (e4m3fn)", {"exp_avg_dtype": "float8_e4m3fn", "exp_avg_sq_dtype": "float8_e4m3fn"}),
    "fp8_e5m2v": ("fp8 m e4m3fn, v e5m2", {"exp_avg_dtype": "float8_e4m3fn", "exp_avg_sq_dtype": "float8_e5m2"}),
}


def fp8_status() -> str:
    """Adds the fp8 configurations to CONFIGS when this npadam has fp8 moments; says which."""
    try:
        npadam.AdamW([np.ones(256, np.float32)], exp_avg_dtype="float8_e4m3fn")
    except ValueError as e:
        return f"not implemented: npadam.AdamW(exp_avg_dtype='float8_e4m3fn') raises ValueError: {e}"
    CONFIGS.update(FP8_CONFIGS)
    return "available: measured as " + ", ".join(label for label, _ in FP8_CONFIGS.values())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", choices=("mlp", "gpt"), help="one task only")
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--mlp-steps", type=int, default=500)
    ap.add_argument("--gpt-steps", type=int, default=300)
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch's intra-op threads for the GPT (default 1: on a shared 2-core machine OpenMP's "
                         "spinning threads slow a step 10x; losses do not depend on speed)")
    ap.add_argument("--json", help="also write the results here")
    args = ap.parse_args()
    from npadam.kernels import threads

    layer = threads.configure()
    import numba

    try:
        import torch

        torch.set_num_threads(args.torch_threads)
        tv = f"torch {torch.__version__} ({torch.get_num_threads()} threads)"
    except ImportError:
        torch, tv = None, "no torch"
    t_all = time.perf_counter()
    print(f"# npadam precision quality, {datetime.date.today()}, {cpu_model()}, {os.cpu_count()} cores, Python "
          f"{platform.python_version()}, NumPy {np.__version__}, Numba {numba.__version__} ({layer} layer), {tv}")
    print(f"fp8 moments: {fp8_status()}")
    results: dict = {"date": str(datetime.date.today()), "cpu": cpu_model(), "cores": os.cpu_count(),
                     "seeds": args.seeds}
    tasks = [("mlp", mlp_run, mlp_lockstep, args.mlp_steps), ("gpt", gpt_run, gpt_lockstep, args.gpt_steps)]
    for name, run, lockstep, steps in tasks:
        if args.only and name != args.only or (name == "gpt" and torch is None):
            continue
        t0 = time.perf_counter()
        runs = {}
        for cfg, (_, opts) in CONFIGS.items():
            for s in args.seeds:
                runs[(cfg, s)] = run(s, steps, opts)
                print(f"  {name} {cfg} seed {s}: final {runs[(cfg, s)].final():.4f}, held-out "
                      f"{runs[(cfg, s)].eval_loss:.4f} ({runs[(cfg, s)].seconds:.1f} s)", flush=True)
        repeat = run(args.seeds[0], steps, CONFIGS["fp32"][1])
        if name == "mlp":
            print(f"\n## demo MLP ({MLP['d_in']} -> {MLP['hidden']} -> {MLP['hidden']} -> {MLP['classes']}), "
                  f"{steps} steps, batch {MLP['batch']}")
        else:
            print(f"\n## torch GPT (tests/_gpt.py: {GPT['layers']} layers, width {GPT['d']}, {GPT['heads']} heads, "
                  f"context {GPT['ctx']}, vocabulary {GPT['vocab']}), {steps} steps, batch {GPT['batch']}; "
                  f"entropy floor of the language {gpt_entropy_floor():.4f}")
        summary = report_task(name, runs, args.seeds, repeat)
        lock = []
        for mv_name, mv in (("fp32", {}), ("bf16", BF16_MV)):
            for forced in (False, True):
                lock.append((mv_name, lockstep(args.seeds[0], steps, mv, forced)))
        report_lockstep(name, lock)
        results[name] = {"steps": steps, "summary": summary, "lockstep": [{"moments": m, **r} for m, r in lock],
                         "runs": {f"{c}/{s}": {"final": v.final(), "eval": v.eval_loss, "accuracy": v.accuracy,
                                               "losses": v.losses} for (c, s), v in runs.items()},
                         "seconds": time.perf_counter() - t0}
        print(f"\n({name}: {time.perf_counter() - t0:.0f} s)", flush=True)
    print(f"\n(total {time.perf_counter() - t_all:.0f} s)")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
