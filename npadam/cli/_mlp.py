"""The model behind ``npadam demo``: a NumPy MLP with a hand-written backward pass.

A fixed random *teacher* MLP labels Gaussian inputs into ``classes`` classes; a
*student* MLP (``d_in -> hidden -> hidden -> classes``, ReLU, softmax
cross-entropy) learns it. Parameters and gradients live in npadam flat buffers
(``npadam.flat_parameters``), so the optimizer streams one contiguous buffer.
With ``dtype="bf16"`` the parameters and gradients are stored in bfloat16 (the
optimizer keeps fp32 masters); the forward and backward passes compute in float32.
Everything is deterministic for a given seed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from .. import AdamW, flat_parameters
from ..schedules import Schedule


@dataclass
class Task:
    """Generated data: train and held-out inputs with the teacher's labels."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_test: np.ndarray
    y_test: np.ndarray


def make_task(d_in: int, classes: int, n_train: int, n_test: int, seed: int) -> Task:
    """Label Gaussian inputs with a random two-layer teacher (argmax of its logits)."""
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((d_in, 64)).astype(np.float32) / np.sqrt(d_in)
    w2 = rng.standard_normal((64, classes)).astype(np.float32) / 8.0
    x = rng.standard_normal((n_train + n_test, d_in)).astype(np.float32)
    y = np.argmax(np.tanh(x @ w1) @ w2, axis=1)
    return Task(x[:n_train], y[:n_train], x[n_train:], y[n_train:])


def init_params(d_in: int, hidden: int, classes: int, seed: int) -> dict[str, np.ndarray]:
    """He-initialised weights (float32), zero biases."""
    rng = np.random.default_rng(seed + 1)
    shapes = {"w1": (d_in, hidden), "b1": (hidden,), "w2": (hidden, hidden), "b2": (hidden,),
              "w3": (hidden, classes), "b3": (classes,)}
    out = {}
    for name, shape in shapes.items():
        if name.startswith("w"):
            out[name] = (rng.standard_normal(shape) * np.sqrt(2.0 / shape[0])).astype(np.float32)
        else:
            out[name] = np.zeros(shape, np.float32)
    return out


def loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    """Mean softmax cross-entropy and its gradients (float32), by hand. A diverged model gives a
    NaN or inf loss quietly (no floating-point warnings): the caller reports it."""
    with np.errstate(all="ignore"):
        return _loss_and_grads(p, x, y)


def _loss_and_grads(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> tuple[float, dict[str, np.ndarray]]:
    h1 = np.maximum(x @ p["w1"] + p["b1"], 0)
    h2 = np.maximum(h1 @ p["w2"] + p["b2"], 0)
    z = h2 @ p["w3"] + p["b3"]
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    prob = e / e.sum(axis=1, keepdims=True)
    n = x.shape[0]
    loss = float(-np.mean(np.log(prob[np.arange(n), y] + 1e-12)))
    dz = prob
    dz[np.arange(n), y] -= 1.0
    dz /= n
    g = {"w3": h2.T @ dz, "b3": dz.sum(0)}
    dh2 = (dz @ p["w3"].T) * (h2 > 0)
    g["w2"], g["b2"] = h1.T @ dh2, dh2.sum(0)
    dh1 = (dh2 @ p["w2"].T) * (h1 > 0)
    g["w1"], g["b1"] = x.T @ dh1, dh1.sum(0)
    return loss, {k: v.astype(np.float32) for k, v in g.items()}


def accuracy(p: dict[str, np.ndarray], x: np.ndarray, y: np.ndarray) -> float:
    """Share of ``x`` classified as ``y`` (quietly, like ``loss_and_grads``)."""
    with np.errstate(all="ignore"):
        h1 = np.maximum(x @ p["w1"] + p["b1"], 0)
        h2 = np.maximum(h1 @ p["w2"] + p["b2"], 0)
        return float(np.mean(np.argmax(h2 @ p["w3"] + p["b3"], axis=1) == y))


@dataclass
class Run:
    """What a training run produced."""

    losses: list[float] = field(default_factory=list)
    lrs: list[float] = field(default_factory=list)
    params: dict[str, np.ndarray] = field(default_factory=dict)
    flat: list[np.ndarray] = field(default_factory=list)
    optimizer_seconds: float = 0.0
    total_seconds: float = 0.0
    numel: int = 0
    skipped: int = 0          # steps the optimizer skipped (non-finite gradients)


@dataclass
class Model:
    """The student in flat buffers with its optimizer: ``params``/``grads`` by name are views into
    ``flats``/``gflats``; ``order`` is the optimizer's param order (weights, then biases)."""

    params: dict[str, np.ndarray]
    grads: dict[str, np.ndarray]
    flats: list[np.ndarray]
    gflats: list[np.ndarray]
    opt: AdamW
    order: list[str]
    numel: int

    def batch_grads(self, x: np.ndarray, y: np.ndarray) -> float:
        """The loss of a batch; its gradients are written into ``grads``."""
        compute = {n: v.astype(np.float32) for n, v in self.params.items()}
        loss, g = loss_and_grads(compute, x, y)
        for n, v in g.items():
            self.grads[n][...] = v
        return loss


def build(task: Task, *, hidden: int, classes: int, lr: Schedule, weight_decay: float, dtype: str, kernel: str,
          seed: int) -> Model:
    """The student (He init from ``seed``) in flat buffers, and its AdamW (decay on the weights only)."""
    import ml_dtypes

    store = np.dtype(ml_dtypes.bfloat16) if dtype == "bf16" else np.dtype(np.float32)
    init = init_params(task.x_train.shape[1], hidden, classes, seed)
    layout, flats, views = flat_parameters({k: v.astype(store) for k, v in init.items()})
    names = layout.names
    params = dict(zip(names, views))
    decay = [{"params": {n: params[n] for n in names if n.startswith("w")}, "weight_decay": weight_decay},
             {"params": {n: params[n] for n in names if n.startswith("b")}, "weight_decay": 0.0}]
    opt = AdamW(decay, lr=lr, betas=(0.9, 0.95), kernel=kernel, max_grad_norm=1.0)
    _, gflats, gviews = flat_parameters({n: np.zeros(params[n].shape, store) for n in names})
    order = [n for g in opt.param_groups for n in g["names"]]
    return Model(params, dict(zip(names, gviews)), flats, gflats, opt, order, layout.numel)


def train(task: Task, *, hidden: int, classes: int, steps: int, batch: int, lr: Schedule, weight_decay: float,
          dtype: str, kernel: str, seed: int, on_step: Callable[[int, float, float], None] | None = None) -> Run:
    """Train the student for ``steps`` updates; ``on_step(k, loss, lr)`` is called after each."""
    import time

    model = build(task, hidden=hidden, classes=classes, lr=lr, weight_decay=weight_decay, dtype=dtype,
                  kernel=kernel, seed=seed)
    params, grads, flats, opt, order = model.params, model.grads, model.flats, model.opt, model.order
    rng = np.random.default_rng(seed + 2)
    run = Run(numel=model.numel)
    t_start = time.perf_counter()
    for k in range(steps):
        idx = rng.integers(0, task.x_train.shape[0], batch)
        loss = model.batch_grads(task.x_train[idx], task.y_train[idx])
        t0 = time.perf_counter()
        info = opt.step([grads[n] for n in order])
        run.optimizer_seconds += time.perf_counter() - t0
        run.losses.append(loss)
        run.lrs.append(info.lr)
        run.skipped += bool(info.skipped)
        if on_step is not None:
            on_step(k, loss, info.lr)
    run.total_seconds = time.perf_counter() - t_start
    run.params = {n: v.astype(np.float32) for n, v in params.items()}
    run.flat = [f.copy() for f in flats]
    return run
