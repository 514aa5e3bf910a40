"""Image plots (``--plot out.png``; also .svg, .pdf) with matplotlib, imported only here.

One panel per scheduled quantity (lr, weight_decay, beta1, beta2), every schedule
of the comparison overlaid. Long schedules are drawn from a min/max envelope of
about 4,000 points per curve, which looks the same and keeps the file small.
The figure is rendered with the Agg canvas directly (no pyplot, no global state).
"""

from __future__ import annotations

import os

import numpy as np

from . import _outfile
from ._errors import CLIError

_POINTS = 4000


def envelope(values: np.ndarray, points: int = _POINTS) -> tuple[np.ndarray, np.ndarray]:
    """``(x, y)`` to draw: every step when short, else the min and max of each bin."""
    n = values.size
    if n <= 2 * points:
        return np.arange(n), values
    starts = (np.arange(points) * n) // points
    with np.errstate(invalid="ignore"):
        lo = np.fmin.reduceat(values, starts)
        hi = np.fmax.reduceat(values, starts)
    ends = np.append(starts[1:], n) - 1
    x = np.empty(2 * points)
    y = np.empty(2 * points)
    x[0::2], x[1::2] = starts, ends
    first_is_max = values[starts] >= values[ends]
    y[0::2] = np.where(first_is_max, hi, lo)
    y[1::2] = np.where(first_is_max, lo, hi)
    return x, y


def save(path: str, panels: dict[str, list[tuple[str, np.ndarray]]], *, log_y: bool = False,
         title: str | None = None, force: bool = False) -> None:
    """Write ``panels`` (quantity -> [(label, values at steps 0, 1, ...)]) to ``path``, atomically
    (``_outfile.atomic``; the format comes from the extension)."""
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError:
        raise CLIError("--plot FILE needs matplotlib (pip install 'npadam[plot]'); "
                       "--plot terminal needs nothing") from None
    names = list(panels)
    fig = Figure(figsize=(8.0, 1.0 + 2.4 * len(names)), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(len(names), 1, sharex=True, squeeze=False)[:, 0]
    for ax, name in zip(axes, names):
        for label, values in panels[name]:
            x, y = envelope(np.asarray(values, dtype=np.float64))
            ax.plot(x, y, lw=1.3, label=label)
        ax.set_ylabel(name)
        if log_y:
            ax.set_yscale("log")
        ax.grid(True, alpha=0.3)
        if len(panels[name]) > 1:
            ax.legend(fontsize="small")
    axes[-1].set_xlabel("step (optimizer update, 0-based)")
    if title:
        axes[0].set_title(title)
    fmt = os.path.splitext(path)[1].lower().lstrip(".")
    try:
        with _outfile.atomic(path, "--plot", force=force) as f:
            fig.savefig(f, dpi=110, format=fmt)
    except (ValueError, ImportError) as exc:   # a format this matplotlib cannot write (jpg without Pillow)
        raise CLIError(f"--plot {path}: cannot write: {' '.join(str(exc).split())}") from None
