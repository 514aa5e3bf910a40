"""The soak run of tests/test_soak.py: a training loop with random skip-on-inf events, lr / beta /
weight-decay schedules, a dynamic loss scaler with hysteresis, mixed-precision params and
amsgrad, that saves a checkpoint every few steps and can resume from it in a fresh process.

As a script: ``python tests/_soak.py CKPT_DIR STEPS SAVE_EVERY`` resumes from CKPT_DIR if it
holds a checkpoint, runs to STEPS loop iterations, saves every SAVE_EVERY iterations and at
the end, and prints ``loaded <i>`` once started and ``digest <hex>`` when done.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

import ml_dtypes
import numpy as np

import npadam
from npadam import checkpoint as C
from npadam import schedules as S

SEED = 20261201


def make() -> tuple[npadam.AdamW, dict[str, np.ndarray]]:
    rng = np.random.default_rng(SEED)
    p = {"emb": rng.standard_normal((64, 16)).astype(np.float32),
         "w1": rng.standard_normal((16, 48)).astype(np.float32).astype(ml_dtypes.bfloat16),
         "w2": rng.standard_normal((48, 16)).astype(np.float16),
         "b": np.zeros(48, np.float32), "norm": np.ones(16, np.float32)}
    lr = S.warmup_cosine(peak=3e-3, warmup_steps=50, total_steps=3000, final=1e-4)
    beta1 = S.join([S.constant(0.9), S.linear(0.9, 0.8, 500), S.constant(0.8)], [300, 800])
    wd = S.linear(0.01, 0.1, 2000)
    groups = [{"params": {k: p[k] for k in ("emb", "w1", "w2")}, "weight_decay": wd,
               "betas": (beta1, 0.98)},
              {"params": {k: p[k] for k in ("b", "norm")}, "weight_decay": 0.0, "amsgrad": True}]
    scaler = npadam.LossScaler(init_scale=2.0**12, growth_interval=25, hysteresis=2, min_scale=1.0)
    opt = npadam.AdamW(groups, lr=lr, max_grad_norm=1.0, loss_scaler=scaler)
    return opt, p


def grads(p: dict[str, np.ndarray], i: int, scale: float) -> dict[str, np.ndarray]:
    """Loop iteration i's gradients (scaled like a loss-scaled backward pass); about one in
    twelve iterations overflows somewhere."""
    rng = np.random.default_rng([SEED, i])
    out = {k: (rng.standard_normal(a.shape) * 0.05 * scale).astype(np.float32).astype(a.dtype) for k, a in p.items()}
    if rng.random() < 1 / 12:
        name = ["emb", "w1", "w2", "b"][int(rng.integers(4))]
        out[name].reshape(-1)[int(rng.integers(out[name].size))] = np.inf if rng.random() < 0.5 else np.nan
    return out


def digest(opt: npadam.AdamW, p: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(p):
        h.update(p[k].tobytes())
    sd = opt.state_dict()
    for i in sorted(sd["state"]):
        for key in sorted(sd["state"][i]):
            h.update(np.asarray(sd["state"][i][key]).tobytes())
    h.update(repr((sd["npadam"]["step"], sd["npadam"]["loss_scaler"])).encode())
    return h.hexdigest()


def run(opt: npadam.AdamW, p: dict[str, np.ndarray], start: int, stop: int, ckpt: Path | None = None,
        save_every: int = 0) -> None:
    for i in range(start, stop):
        opt.step(grads(p, i, opt.loss_scaler.scale))
        if ckpt is not None and ((i + 1) % save_every == 0 or i + 1 == stop):
            C.save(ckpt, opt, metadata={"i": i + 1})


def main(argv: list[str]) -> None:
    ckpt, steps, every = Path(argv[0]), int(argv[1]), int(argv[2])
    opt, p = make()
    start = 0
    if (ckpt / C.INDEX).exists() or any(ckpt.parent.glob(f".{ckpt.name}.npadam-old-*")):
        start = C.load(ckpt, opt)["user"]["i"]
    warm, wp = make()  # compile the kernels before the parent's kill clock starts: on a slow machine the
    warm.step(grads(wp, 0, warm.loss_scaler.scale))  # first step's JIT alone can outlast every random delay
    print("loaded", start, flush=True)
    run(opt, p, start, steps, ckpt, every)
    print("digest", digest(opt, p), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
