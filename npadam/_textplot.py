"""A line plot drawn with ASCII characters, for terminals (``npadam schedule --plot terminal``,
``npadam demo``, ``LRFinderResult.plot("terminal")``).

Each column of the plot covers a range of steps and shows the full min..max range
of the values in it (so a spike between two samples is never lost), joined to the
next column so that the curve reads as a line. Several curves share the axes, each
with its own marker. The whole plot, axes and legend included, fits ``width`` x
``height`` characters (80 x 24 by default).

It lives here, below ``npadam.cli``, so that the library (``npadam.lr_finder``) and the
command line share it: ``npadam.cli._textplot`` re-exports it (layers import downward only).
"""

from __future__ import annotations

import numpy as np

MARKERS = "*+ox#@%&"


def _label(v: float, log_y: bool) -> str:
    return f"{10 ** v if log_y else v:.3g}"


def _bins(values: np.ndarray, n: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-column (min, max) of ``values`` padded with NaN to ``n`` steps (NaN: empty)."""
    v = np.full(n, np.nan)
    v[:values.size] = values[:n]
    starts = np.minimum((np.arange(cols) * n) // cols, n - 1)
    with np.errstate(invalid="ignore"):
        return np.fmin.reduceat(v, starts), np.fmax.reduceat(v, starts)


def render(curves: list[tuple[str, np.ndarray]], *, width: int = 80, height: int = 24,
           log_y: bool = False, title: str | None = None, xlabel: str = "step",
           xticks: tuple[str, str] | None = None) -> str:
    """Draw ``curves`` (label, values at steps 0, 1, ...) and return the text (no final newline).

    ``xticks``: the labels under the first and the last step (default ``"0"`` and ``"n-1"``),
    e.g. the learning rates there when the steps stand for an lr sweep."""
    if width < 20 or height < 6:
        raise ValueError(f"a terminal plot needs at least 20x6 characters, got {width}x{height}")
    n = max((v.size for _, v in curves), default=0)
    lines: list[str] = []
    if title:
        lines.append(title[:width])
    legend = _legend([label for label, _ in curves], log_y, width)
    rows = height - len(lines) - 2 - len(legend)
    if rows < 3:
        legend = legend[:1]
        rows = height - len(lines) - 3
    series = []
    for label, v in curves:
        v = np.asarray(v, dtype=np.float64)
        if log_y:
            with np.errstate(divide="ignore", invalid="ignore"):
                v = np.where(v > 0, np.log10(np.where(v > 0, v, 1.0)), np.nan)
        series.append((label, np.where(np.isfinite(v), v, np.nan)))
    finite = [s[np.isfinite(s)] for _, s in series]
    finite = [f for f in finite if f.size]
    if n == 0 or not finite:
        lines.append("(nothing to plot: no finite values)")
        return "\n".join(lines)
    lo = min(float(f.min()) for f in finite)
    hi = max(float(f.max()) for f in finite)
    if hi == lo:
        pad = abs(hi) * 0.1 or 1.0
        lo, hi = lo - pad, hi + pad
    ticks = {0: hi, (rows - 1) // 2: hi - (hi - lo) * ((rows - 1) // 2) / (rows - 1), rows - 1: lo}
    lw = max(len(_label(v, log_y)) for v in ticks.values())
    cols = width - lw - 2
    grid = [[" "] * cols for _ in range(rows)]

    def row(y: np.ndarray) -> np.ndarray:
        return np.rint((hi - y) / (hi - lo) * (rows - 1)).astype(np.int64)

    for i, (_, v) in reversed(list(enumerate(series))):   # the first curve ends on top
        mark = MARKERS[i % len(MARKERS)]
        vmin, vmax = _bins(v, n, cols)
        ok = np.isfinite(vmin)
        tops = row(np.where(ok, vmax, lo))
        bots = row(np.where(ok, vmin, lo))
        prev = None
        for c in range(cols):
            if not ok[c]:
                prev = None
                continue
            top, bot = int(tops[c]), int(bots[c])
            if prev is not None:
                ptop, pbot = prev
                if bot < ptop - 1:
                    bot = ptop - 1
                elif top > pbot + 1:
                    top = pbot + 1
            for r in range(top, bot + 1):
                grid[r][c] = mark
            prev = (top, bot)
    for r in range(rows):
        label = _label(ticks[r], log_y) if r in ticks else ""
        lines.append(f"{label:>{lw}} |" + "".join(grid[r]))
    lines.append(" " * lw + " +" + "-" * cols)
    axis = [" "] * cols
    first, last = xticks if xticks is not None else ("0", str(n - 1))
    for pos, text in ((0, first), (cols - len(last), last), ((cols - len(xlabel)) // 2, xlabel)):
        for j, ch in enumerate(text):
            if 0 <= pos + j < cols:
                axis[pos + j] = ch
    lines.append(" " * (lw + 2) + "".join(axis))
    lines += [(" " * (lw + 2) + text)[:width] for text in legend]
    return "\n".join(line.rstrip() for line in lines)


def _legend(labels: list[str], log_y: bool, width: int) -> list[str]:
    """Legend entries, wrapped onto as many lines as needed (the y labels take ~10 columns)."""
    items = [f"{MARKERS[i % len(MARKERS)]} {label}" for i, label in enumerate(labels)]
    if log_y:
        items.append("(log scale)")
    out, cur = [], ""
    for item in items:
        if cur and len(cur) + 3 + len(item) > width - 12:
            out.append(cur)
            cur = item
        else:
            cur = f"{cur}   {item}" if cur else item
    return out + [cur]
