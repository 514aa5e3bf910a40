"""``npadam.lr_finder``: the learning-rate range test as a diagnostic, with everything put back afterwards.

The range test (L. Smith, "Cyclical Learning Rates for Training Neural Networks", 2015;
fastai's ``lr_find``, torch-lr-finder's ``LRFinder``, Lightning's ``Tuner.lr_find``)
trains for ``num_steps`` updates while the learning rate grows from ``start_lr`` to
``end_lr``, records the loss of every batch and stops early once the loss diverges.
The curve of loss against lr shows where training is fastest; ``suggestion`` is the
lr of its steepest descent.

Learning rate of update ``k`` (0-based, ``n = num_steps``), torch-lr-finder's
``ExponentialLR`` / ``LinearLR`` (both reach ``end_lr`` at ``k = n - 1``)::

    exp:     lr_k = start_lr * (end_lr / start_lr) ** (k / (n - 1))
    linear:  lr_k = start_lr + k / (n - 1) * (end_lr - start_lr)

Smoothed loss (an exponential moving average with bias correction, fastai's
``AvgSmoothLoss`` and Lightning's, with ``beta = 1 - smooth``; ``smooth = 1``: no
smoothing)::

    avg_k      = beta * avg_{k-1} + (1 - beta) * loss_k,      avg_{-1} = 0
    smoothed_k = avg_k / (1 - beta ** (k + 1))               (smoothed_0 = loss_0, to rounding)

(float64, in this order of operations: Lightning's, bit for bit).

The test stops after update ``k`` when ``smoothed_k`` is not finite, or when
``smoothed_k > diverge * min(smoothed_0 .. smoothed_k)`` (fastai and Lightning use 4;
the ratio test needs a positive minimum and is skipped while the minimum is <= 0;
``diverge=None`` turns it off). The update that diverged is part of the result.

Suggestions, over the window ``[skip_start : len(lrs) - skip_end]`` of the smoothed
curve (torch-lr-finder's plot defaults 10 and 5; cut before its first non-finite value,
as fastai does):

- ``suggestion``: the lr where ``numpy.gradient`` of the smoothed loss (over the
  update index: per decade of lr in ``exp`` mode, per unit of lr in ``linear`` mode)
  is most negative, as torch-lr-finder's ``plot(suggest_lr=True)``;
- ``min_lr_over_10``: the lr of the smallest smoothed loss, divided by 10 (fastai's
  ``minimum`` suggestion).

Either is None when the window holds too few points (2 for ``suggestion``, 1 for
``min_lr_over_10``).

What is put back, in a ``finally`` (an exception from ``step_fn`` and Ctrl-C
included): the params (bit for bit, all dtypes), the optimizer's state (moments,
fp32 masters, per-param and global step counts, the loss scaler), the param groups
(the same dict objects holding the same values: floats, Schedules in npadam's
``"schedules"``, tensors) and, for torch optimizers, each param's ``.grad``. Memory:
one host copy of the params (float32) and of the optimizer state, held during the test.
``npadam.torch.lr_finder`` also restores the model's buffers and the random number
generators.
"""

from __future__ import annotations

import math
import numbers
import os
import sys
from dataclasses import dataclass
from typing import Any, Callable, TextIO

import numpy as np

from . import _validate as V
from ._snapshot import Snapshot

MODES = ("exp", "linear")
#: why a range test ended: all ``num_steps`` ran, the smoothed loss exceeded ``diverge`` x its
#: minimum, or it stopped being finite
STOPS = ("completed", "diverged", "non-finite")
_F32_MAX = float(np.finfo(np.float32).max)


# ---------------------------------------------------------------------- the math
def lr_range(start_lr: float, end_lr: float, num_steps: int, mode: str = "exp") -> np.ndarray:
    """The learning rates of the ``num_steps`` updates (float64), computed in Python floats with
    torch-lr-finder's expressions, so that both give the same bits (see the module docstring)."""
    start_lr, end_lr, num_steps, mode = _check_range(start_lr, end_lr, num_steps, mode)
    last = num_steps - 1
    if mode == "exp":
        return np.array([start_lr * (end_lr / start_lr) ** (k / last) for k in range(num_steps)], np.float64)
    return np.array([start_lr + k / last * (end_lr - start_lr) for k in range(num_steps)], np.float64)


def smooth_losses(losses: Any, smooth: float = 0.05) -> np.ndarray:
    """The bias-corrected exponential moving average of ``losses`` (float64), ``beta = 1 - smooth``
    (see the module docstring). A non-finite loss makes it non-finite from there on."""
    smooth = V.real("smooth", smooth, lo=0.0, hi=1.0, lo_open=True)
    raw = np.asarray(losses, dtype=np.float64).reshape(-1)
    out = np.empty_like(raw)
    avg, beta = 0.0, 1.0 - smooth
    for k, loss in enumerate(raw.tolist()):
        avg = beta * avg + (1.0 - beta) * loss
        out[k] = avg / (1.0 - beta ** (k + 1))
    return out


def _window(n: int, smoothed: np.ndarray, skip_start: int, skip_end: int) -> slice:
    """The part of the curve the suggestions read: ``[skip_start : n - skip_end]``, ended before
    its first non-finite value."""
    lo, hi = skip_start, max(skip_start, n - skip_end)
    bad = np.flatnonzero(~np.isfinite(smoothed[lo:hi]))
    return slice(lo, lo + int(bad[0]) if bad.size else hi)


def suggest(lrs: Any, smoothed: Any, skip_start: int = 10, skip_end: int = 5) -> tuple[float | None, float | None]:
    """``(suggestion, min_lr_over_10)`` from a recorded curve (see the module docstring)."""
    skip_start = V.integer("skip_start", skip_start, lo=0)
    skip_end = V.integer("skip_end", skip_end, lo=0)
    lrs = np.asarray(lrs, dtype=np.float64).reshape(-1)
    smoothed = np.asarray(smoothed, dtype=np.float64).reshape(-1)
    if lrs.shape != smoothed.shape:
        raise ValueError(f"lrs and smoothed must have the same length, got {lrs.size} and {smoothed.size}")
    w = _window(lrs.size, smoothed, skip_start, skip_end)
    x, y = lrs[w], smoothed[w]
    steepest = float(x[int(np.argmin(np.gradient(y)))]) if y.size >= 2 else None
    lowest = float(x[int(np.argmin(y))]) / 10 if y.size >= 1 else None
    return steepest, lowest


# ---------------------------------------------------------------------- the result
@dataclass(frozen=True, eq=False)
class LRFinderResult:
    """What ``lr_finder`` recorded: one entry per update that ran.

    ``lrs``: the learning rate of each update; ``losses``: the loss ``step_fn`` returned;
    ``smoothed``: their bias-corrected moving average (float64 arrays of one length).
    ``suggestion`` / ``min_lr_over_10``: see the module docstring (None when the curve is
    too short). ``stopped``: ``"completed"``, ``"diverged"`` or ``"non-finite"``. The other
    fields repeat the arguments of the test.
    """

    lrs: np.ndarray
    losses: np.ndarray
    smoothed: np.ndarray
    suggestion: float | None
    min_lr_over_10: float | None
    stopped: str
    num_steps: int
    start_lr: float
    end_lr: float
    mode: str
    smooth: float
    diverge: float | None
    skip_start: int
    skip_end: int

    def __str__(self) -> str:
        n = self.lrs.size
        head = (f"lr range test: {n} of {self.num_steps} updates, lr {self.start_lr:.3g} .. {self.end_lr:.3g} "
                f"({'exponential' if self.mode == 'exp' else 'linear'})")
        if self.stopped == "diverged":
            best = float(np.min(self.smoothed))
            head += (f"; stopped at update {n} (lr {self.lrs[-1]:.3g}): the smoothed loss {self.smoothed[-1]:.4g} "
                     f"> {self.diverge:g} x its minimum {best:.4g}")
        elif self.stopped == "non-finite":
            head += f"; stopped at update {n} (lr {self.lrs[-1]:.3g}): the loss is {self.losses[-1]!r}"
        lines = [head]
        if self.suggestion is None:
            lines.append(f"suggestion: none (the curve needs at least {self.skip_start + self.skip_end + 2} finite "
                         f"points, skip_start={self.skip_start} + skip_end={self.skip_end} + 2; got {n})")
        else:
            lines.append(f"suggestion: lr {self.suggestion:.3g} (steepest descent of the smoothed loss)")
        if self.min_lr_over_10 is not None:
            lines.append(f"min_lr_over_10: lr {self.min_lr_over_10:.3g} (lr of the lowest smoothed loss / 10)")
        return "\n".join(lines)

    def _shown(self) -> slice:
        """The points a plot shows: the suggestions' window, or everything when that is too short."""
        w = _window(self.lrs.size, self.smoothed, self.skip_start, self.skip_end)
        return w if w.stop - w.start >= 2 else slice(0, self.lrs.size)

    def plot(self, target: str | os.PathLike[str] = "terminal", *, width: int = 80, height: int = 20,
             file: TextIO | None = None) -> str:
        """Plot the smoothed loss against the lr, with the suggestion marked.

        ``target="terminal"``: an ASCII plot of ``width`` x ``height`` characters (npadam's
        terminal plot, shared with ``npadam schedule --plot terminal``), written to ``file``
        (default ``sys.stdout``) and returned. Any other string or path: a matplotlib figure
        (PNG, SVG, PDF, ... by the extension; ``pip install 'npadam[plot]'``) with the raw and
        the smoothed loss, the suggestion and ``min_lr_over_10``; returns the path. Both show
        the suggestions' window (``skip_start``/``skip_end`` cut off), like torch-lr-finder.
        """
        if not isinstance(target, (str, os.PathLike)):
            raise TypeError(f"plot target must be 'terminal' or a file path, got {type(target).__name__}")
        if isinstance(target, str) and target == "terminal":
            width = V.integer("width", width, lo=20)
            height = V.integer("height", height, lo=6)
            if file is not None and not callable(getattr(file, "write", None)):
                raise TypeError(f"file must be a text stream with write(), got {type(file).__name__}")
            text = self._terminal(width, height)
            print(text, file=sys.stdout if file is None else file)
            return text
        if file is not None:
            raise ValueError(f"file= is for plot('terminal'); plot({os.fspath(target)!r}) writes the file itself")
        return self._image(os.fspath(target))

    def _terminal(self, width: int, height: int) -> str:
        from ._textplot import render

        w = self._shown()
        lrs, ys = self.lrs[w], self.smoothed[w]
        curves = [("smoothed loss", ys)]
        i = np.flatnonzero(lrs == self.suggestion) if self.suggestion is not None else []
        if len(i):  # a one-point curve, first: the first curve is drawn on top
            mark = np.full(ys.size, np.nan)
            mark[i[0]] = ys[i[0]]
            curves.insert(0, (f"suggestion: lr {self.suggestion:.3g}", mark))
        xlabel = "lr (log scale)" if self.mode == "exp" else "lr"
        return render(curves, width=width, height=height, title="lr range test: smoothed loss vs lr",
                      xlabel=xlabel, xticks=(f"{lrs[0]:.3g}", f"{lrs[-1]:.3g}"))

    def _image(self, path: str) -> str:
        try:
            from matplotlib.backends.backend_agg import FigureCanvasAgg
            from matplotlib.figure import Figure
        except ImportError:
            raise ModuleNotFoundError(f"plot({path!r}) needs matplotlib (pip install 'npadam[plot]'); "
                                      "plot('terminal') needs nothing") from None
        fig = Figure(figsize=(7.0, 4.2), layout="constrained")
        canvas = FigureCanvasAgg(fig)
        fmt = os.path.splitext(path)[1].lower().lstrip(".")
        supported = canvas.get_supported_filetypes()
        if fmt not in supported:
            raise ValueError(f"plot({path!r}): the extension must name an image format matplotlib writes "
                             f"({', '.join(sorted(supported))}), got {fmt or 'none'!r}")
        if not os.path.isdir(os.path.dirname(os.path.abspath(path))):
            raise ValueError(f"plot({path!r}): the directory {os.path.dirname(os.path.abspath(path))} does not exist")
        w = self._shown()
        ax = fig.subplots()
        ax.plot(self.lrs[w], self.losses[w], lw=0.8, alpha=0.35, label="loss")
        ax.plot(self.lrs[w], self.smoothed[w], lw=1.6, label=f"smoothed loss (smooth={self.smooth:g})")
        if self.suggestion is not None:
            i = int(np.flatnonzero(self.lrs == self.suggestion)[0])
            ax.scatter([self.suggestion], [self.smoothed[i]], s=60, color="red", zorder=3,
                       label=f"suggestion {self.suggestion:.3g} (steepest)")
        if self.min_lr_over_10 is not None:
            ax.axvline(self.min_lr_over_10, color="gray", ls="--", lw=1,
                       label=f"min_lr_over_10 {self.min_lr_over_10:.3g}")
        if self.mode == "exp":
            ax.set_xscale("log")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("loss")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize="small")
        ax.set_title(f"lr range test ({self.lrs.size} of {self.num_steps} updates, {self.stopped})")
        fig.savefig(path, dpi=110, format=fmt)
        return path


# ---------------------------------------------------------------------- the optimizers
def _kind(optimizer: Any) -> str:
    """``"npadam"`` (``npadam.AdamW``/``Adam``/``SGD``: step_fn returns ``(loss, grads)``),
    ``"npadam.torch"`` or ``"torch"`` (step_fn runs backward and returns the loss)."""
    from .checkpoint import _frontend

    try:
        return {"generic": "npadam", "torch": "npadam.torch"}[_frontend(optimizer)[0]]
    except TypeError:
        pass
    if "torch" in sys.modules:
        import torch

        if isinstance(optimizer, torch.optim.Optimizer):
            return "torch"
    raise TypeError(f"optimizer must be an npadam optimizer (npadam.AdamW, npadam.torch.AdamW, ...) or a "
                    f"torch.optim.Optimizer, got {type(optimizer).__name__}")


def _set_lr(groups: list[dict[str, Any]], lr: float) -> None:
    """The lr of the next update in every group (a torch tensor lr stays a tensor, a new one)."""
    for g in groups:
        cur = g["lr"]
        g["lr"] = cur.new_tensor(lr) if hasattr(cur, "new_tensor") else lr


def _loss_value(x: Any, k: int) -> float:
    """The loss ``step_fn`` returned, as a float: a real number, or a one-element array / tensor."""
    v = x
    if not isinstance(v, numbers.Real) and hasattr(v, "item"):
        size = v.numel() if callable(getattr(v, "numel", None)) else getattr(v, "size", None)
        if size == 1:
            v = v.item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real):
        raise TypeError(f"step_fn must return a loss that is a real number or a one-element array or tensor; "
                        f"at update {k} it returned {type(x).__name__} {str(x)[:60]}")
    return float(v)


def _check_range(start_lr: Any, end_lr: Any, num_steps: Any, mode: Any) -> tuple[float, float, int, str]:
    mode = V.choice("mode", mode, MODES)
    start_lr = V.real("start_lr", start_lr, lo=0.0, lo_open=mode == "exp")
    end_lr = V.real("end_lr", end_lr, hi=_F32_MAX)
    if end_lr <= start_lr:
        raise ValueError(f"end_lr must be > start_lr ({start_lr!r}), got {end_lr!r}")
    num_steps = V.integer("num_steps", num_steps, lo=2)
    return start_lr, end_lr, num_steps, mode


def _progress_bar(progress: bool | None, total: int) -> Any:
    if progress is False:
        return None
    try:
        from tqdm.auto import tqdm
    except ModuleNotFoundError:
        if progress:
            raise ModuleNotFoundError("progress=True needs tqdm (pip install tqdm)") from None
        return None
    return tqdm(total=total, desc="lr range test", unit="step", disable=None if progress is None else False)


# ---------------------------------------------------------------------- the test
def lr_finder(step_fn: Callable[[], Any], optimizer: Any, start_lr: float = 1e-7, end_lr: float = 10.0,
              num_steps: int = 100, mode: str = "exp", smooth: float = 0.05, diverge: float | None = 4.0, *,
              skip_start: int = 10, skip_end: int = 5, progress: bool | None = None,
              callback: Callable[[int, float, float, float], Any] | None = None) -> LRFinderResult:
    """Run the learning-rate range test on ``optimizer`` and put everything back; return the curve.

    For each update ``k`` the lr ``lr_k`` is set on every param group, then

    - ``npadam.AdamW`` / ``Adam`` / ``SGD``: ``loss, grads = step_fn()`` (grads as for
      ``optimizer.step(grads)``), then ``optimizer.step(grads)``;
    - ``npadam.torch`` and ``torch.optim`` optimizers: ``optimizer.zero_grad()``, ``loss =
      step_fn()`` (which runs ``backward()``), then ``optimizer.step()``.

    ``loss`` is a real number or a one-element array/tensor (the batch's mean loss).

    Arguments (formulas in the module docstring): ``start_lr`` > 0 (>= 0 for ``mode="linear"``)
    and ``end_lr`` > ``start_lr`` (finite in float32), ``num_steps`` >= 2 updates, ``mode``
    ``"exp"`` or ``"linear"``, ``smooth`` in (0, 1] (the newest loss's weight in the moving
    average; 1: none), ``diverge`` > 1 or None, ``skip_start``/``skip_end`` >= 0 (the points
    the suggestions ignore), ``progress`` (None: a tqdm bar when stderr is a terminal and
    tqdm is installed; True: always, needs tqdm; False: never), ``callback(k, lr, loss,
    smoothed)`` called after each update. Everything is checked before anything changes.

    Afterwards params, optimizer state, step counts and group hyperparameters (schedules
    included) are what they were, bit for bit, also when ``step_fn`` raises or on Ctrl-C
    (the exception then propagates).

    >>> import numpy as np, npadam
    >>> w = np.full(4, 3.0, np.float32)
    >>> opt = npadam.AdamW([w], lr=1e-3, weight_decay=0.0)
    >>> res = npadam.lr_finder(lambda: (float(w @ w), [2 * w]), opt, start_lr=1e-4, end_lr=10, num_steps=30,
    ...                        progress=False)
    >>> res.lrs.size, float(res.lrs[0]), float(res.lrs[-1]), w.tolist(), opt.step_count  # w, step put back
    (30, 0.0001, 10.0, [3.0, 3.0, 3.0, 3.0], 0)
    """
    if not callable(step_fn):
        raise TypeError(f"step_fn must be callable, got {type(step_fn).__name__}")
    kind = _kind(optimizer)
    start_lr, end_lr, num_steps, mode = _check_range(start_lr, end_lr, num_steps, mode)
    smooth = V.real("smooth", smooth, lo=0.0, hi=1.0, lo_open=True)
    if diverge is not None:
        diverge = V.real("diverge", diverge, lo=1.0, lo_open=True)
    skip_start = V.integer("skip_start", skip_start, lo=0)
    skip_end = V.integer("skip_end", skip_end, lo=0)
    if progress is not None:
        progress = V.flag("progress", progress)
    if callback is not None and not callable(callback):
        raise TypeError(f"callback must be callable or None, got {type(callback).__name__}")
    if not optimizer.param_groups:
        raise ValueError("optimizer has no param groups")
    lrs = lr_range(start_lr, end_lr, num_steps, mode)
    schedule = lrs.tolist()

    losses: list[float] = []
    smoothed: list[float] = []
    stopped = "completed"
    snapshot = Snapshot(optimizer, kind)
    bar = _progress_bar(progress, num_steps)
    current = [schedule[0]]
    # torch front-ends: a step pre-hook registered before this one may write the lr (npadam.torch's
    # LRScheduler does for stateful schedules); this one runs last, so the test's lr is the one used
    hook = optimizer.register_step_pre_hook(lambda opt, args, kwargs: _set_lr(opt.param_groups, current[0])) \
        if kind != "npadam" else None
    try:
        avg, best, beta = 0.0, math.inf, 1.0 - smooth
        for k, lr in enumerate(schedule):
            current[0] = lr
            _set_lr(optimizer.param_groups, lr)
            if kind == "npadam":
                out = step_fn()
                if not isinstance(out, (tuple, list)) or len(out) != 2:
                    raise TypeError(f"step_fn must return (loss, grads) for {type(optimizer).__name__}; at update "
                                    f"{k} it returned {type(out).__name__}")
                loss = _loss_value(out[0], k)
                optimizer.step(out[1])
            else:
                optimizer.zero_grad()
                out = step_fn()
                if isinstance(out, (tuple, list)):
                    raise TypeError(f"step_fn must run backward() and return the loss for a torch optimizer "
                                    f"({type(optimizer).__name__}); at update {k} it returned a {type(out).__name__}")
                loss = _loss_value(out, k)
                optimizer.step()
            avg = beta * avg + (1.0 - beta) * loss
            s = avg / (1.0 - beta ** (k + 1))
            losses.append(loss)
            smoothed.append(s)
            best = min(best, s)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(lr=f"{lr:.2e}", loss=f"{s:.4g}", refresh=False)
            if callback is not None:
                callback(k, lr, loss, s)
            if not math.isfinite(s):
                stopped = "non-finite"
                break
            if diverge is not None and best > 0 and s > diverge * best:
                stopped = "diverged"
                break
    finally:
        if hook is not None:
            hook.remove()
        if bar is not None:
            bar.close()
        snapshot.restore()
    n = len(losses)
    curve = [lrs[:n].copy(), np.asarray(losses, dtype=np.float64), np.asarray(smoothed, dtype=np.float64)]
    for a in curve:
        a.setflags(write=False)  # the result is frozen, its arrays too
    suggestion, lowest = suggest(curve[0], curve[2], skip_start, skip_end)
    return LRFinderResult(lrs=curve[0], losses=curve[1], smoothed=curve[2],
                          suggestion=suggestion, min_lr_over_10=lowest, stopped=stopped, num_steps=num_steps,
                          start_lr=start_lr, end_lr=end_lr, mode=mode, smooth=smooth, diverge=diverge,
                          skip_start=skip_start, skip_end=skip_end)
