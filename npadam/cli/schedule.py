"""``npadam schedule``: dump (CSV, JSON, NPY) or plot (image, terminal) a schedule.

Where things go:

- data: to ``--output FILE``, else to stdout. It is written when ``--output`` or
  ``--format`` is given, or when no ``--plot`` is asked for and stdout is not a
  terminal. In a terminal with none of these, a terminal plot is shown instead.
- a terminal plot: to stdout, or to stderr when the data is on stdout.
- the summary: to stderr, with ``--summary`` or when stderr is a terminal.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, TextIO

import numpy as np

from .. import schedules
from ..schedules import FRAMEWORKS, Schedule, ScheduleSet
from . import _horizon, _summary, _textplot, _writers
from ._args import parse
from ._config import load_mapping
from ._errors import CLIError
from ._named import named_schedules, usage_line

HELP = "dump (csv, json, npy) or plot (png, terminal) a learning-rate schedule"
QUANTITIES = ("lr", "weight_decay", "beta1", "beta2")


@dataclass
class Source:
    """A schedule set to evaluate: label, JSON-able description, quantity -> schedule."""

    label: str
    config: Any
    schedules: dict[str, Schedule]
    values: dict[str, np.ndarray] = field(default_factory=dict)


def _lib_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    return " ".join(str(exc).split())


_LIB_ERRORS = (ValueError, TypeError, KeyError)


def _column(s: Schedule) -> str:
    if s.kind == "weight_decay":
        return "weight_decay"
    return "beta1" if s.params.get("quantity") == "momentum" else "lr"


def _from_framework(framework: str, path: str) -> Source:
    cfg = load_mapping(path)
    try:
        sset = schedules.from_config(framework, cfg)
    except _LIB_ERRORS as exc:
        raise CLIError(f"{path}: {_lib_error(exc)}") from None
    name = "stdin" if path == "-" else os.path.basename(path)
    return Source(f"{framework}:{name}", cfg, dict(sset.items()))


def _from_schedule_dict(data: Mapping[str, Any], path: str) -> Source:
    label = "stdin" if path == "-" else os.path.basename(path)
    try:
        if "type" in data:
            s = schedules.from_dict(data)
            return Source(label, dict(data), {_column(s): s})
        if isinstance(data.get("lr"), Mapping):
            sset = ScheduleSet.from_dict(data)
            return Source(label, dict(data), dict(sset.items()))
    except _LIB_ERRORS as exc:
        raise CLIError(f"{path}: {_lib_error(exc)}") from None
    if "config" in data and "step" in data:
        if isinstance(data["config"], Mapping) and ("type" in data["config"] or "lr" in data["config"]):
            return _from_schedule_dict(data["config"], path)
        raise CLIError(f"{path} is a dump of a framework config, not a schedule: overlay it with "
                       f"--compare {path}, or dump the original with --framework and --config")
    raise CLIError(f"{path} is not a saved schedule: expected {{\"type\": ...}} from Schedule.to_dict() "
                   f"or {{\"lr\": {{...}}, ...}} from ScheduleSet.to_dict()")


def _source(args: Any) -> Source:
    given = [n for n, v in (("NAME", args.name), ("--config", args.config),
                            ("--schedule-json", args.schedule_json)) if v is not None]
    if len(given) > 1:
        raise CLIError(f"give one schedule source, not {' and '.join(given)}")
    if args.framework is not None and args.config is None:
        raise CLIError("--framework needs --config FILE (the framework's config)")
    if args.config is not None:
        if args.framework is None:
            raise CLIError(f"--config needs --framework (one of {', '.join(FRAMEWORKS)})")
        return _from_framework(args.framework, args.config)
    if args.schedule_json is not None:
        return _from_schedule_dict(load_mapping(args.schedule_json), args.schedule_json)
    if args.named is None:
        raise CLIError("no schedule given: name one (npadam schedule --list), or give --framework F "
                       "--config FILE, or --schedule-json FILE")
    named = args.named
    try:
        s = named.build(args.params)
    except _LIB_ERRORS as exc:
        raise CLIError(f"{named.name}: {_lib_error(exc)}") from None
    return Source(named.name, s.to_dict(), {named.column(args.params): s})


def _evaluate(src: Source, steps: int, *, strict: bool) -> None:
    """Fill ``src.values``; past a schedule's limit: an error (strict) or NaN."""
    for q, s in src.schedules.items():
        n = steps
        lim = s.limit
        if not strict and lim is not None:
            n = min(n, lim)
        try:
            v = s(np.arange(n, dtype=np.int64))
        except _LIB_ERRORS as exc:
            raise CLIError(f"{src.label}: {_lib_error(exc)}") from None
        if n < steps:
            v = np.concatenate([v, np.full(steps - n, np.nan)])
        src.values[q] = v


def _compare(spec: str, steps: int) -> Source:
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FRAMEWORKS:
        src = _from_framework(prefix, rest)
    else:
        data = load_mapping(spec)
        if "step" in data and isinstance(data.get("lr"), list):
            label = os.path.basename(spec)
            cols = {q: np.asarray(data[q], dtype=np.float64) for q in QUANTITIES if isinstance(data.get(q), list)}
            return Source(label, data.get("config"), {}, cols)
        src = _from_schedule_dict(data, spec)
    _evaluate(src, steps, strict=False)
    return src


def _list_text() -> str:
    lines = ["named schedules (npadam schedule NAME --help for details):"]
    for name, named in named_schedules().items():
        lines.append(f"  {name:<16} {usage_line(named)}")
    lines.append("")
    lines.append("frameworks (npadam schedule --framework NAME --config FILE):")
    lines.append("  " + ", ".join(FRAMEWORKS))
    return "\n".join(lines)


def _write_chunks(stream: TextIO, chunks: Iterable[bytes]) -> None:
    stream.flush()
    buf = getattr(stream, "buffer", None)
    for data in chunks:
        if buf is not None:
            buf.write(data)
        else:
            stream.write(data.decode("utf-8"))
    (buf or stream).flush()


def _format(args: Any) -> str:
    if args.format:
        return args.format
    if args.output and args.output != "-":
        ext = os.path.splitext(args.output)[1].lower().lstrip(".")
        if ext in ("json", "npy"):
            return ext
    return "csv"


def _dump(args: Any, src: Source, steps: np.ndarray, fmt: str) -> None:
    to_stdout = args.output in (None, "-")
    if fmt == "npy" and to_stdout:
        raise CLIError("--format npy writes binary data: give --output FILE")
    if fmt == "csv":
        chunks = _writers.csv_chunks(steps, src.values)
    elif fmt == "json":
        chunks = _writers.json_chunks(src.config, steps, src.values)
    if to_stdout:
        _write_chunks(sys.stdout, chunks)
        return
    try:
        with open(args.output, "wb") as f:
            if fmt == "npy":
                _writers.write_npy(f, steps, src.values)
            else:
                for data in chunks:
                    f.write(data)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output}: {exc.strerror or exc}") from None


_IMAGE_TYPES = ("png", "svg", "svgz", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def _check_plot(path: str | None, width: int | None, height: int | None) -> None:
    if (width or 80) < 20 or (height or 24) < 6:
        raise CLIError(f"a terminal plot needs at least 20x6 characters, got --width {width or 80} "
                       f"--height {height or 24}")
    if path is None or path == "terminal":
        return
    ext = os.path.splitext(path)[1].lower().lstrip(".")
    if ext not in _IMAGE_TYPES:
        raise CLIError(f"--plot {path}: give 'terminal' or an image file name ending in "
                       f"{', '.join('.' + t for t in _IMAGE_TYPES[:5])}, ...")


def main(argv: Sequence[str]) -> int:
    """``npadam schedule ...``; returns the exit status (errors raise CLIError)."""
    args = parse(argv)
    if args.list:
        print(_list_text())
        return 0
    _check_plot(args.plot, args.width, args.height)
    src = _source(args)
    steps = args.steps
    if steps is None:
        steps = _horizon.default_steps(src.schedules.values())
        if steps is None:
            raise CLIError(f"--steps N is needed: {src.label} has no natural length")
    _evaluate(src, steps, strict=True)
    others = [_compare(spec, steps) for spec in args.compare]
    k = np.arange(steps, dtype=np.int64)

    stdout_tty = sys.stdout.isatty()
    dump = args.output is not None or args.format is not None or (args.plot is None and not stdout_tty)
    data_on_stdout = dump and args.output in (None, "-")
    preview = not dump and args.plot is None
    if dump:
        _dump(args, src, k, _format(args))

    curves = [src, *others]
    if args.plot is not None and args.plot != "terminal":
        from . import _plot
        panels = {q: [(c.label, c.values[q]) for c in curves if q in c.values]
                  for q in QUANTITIES if any(q in c.values for c in curves)}
        _plot.save(args.plot, panels, log_y=args.log_y, title=src.label if len(curves) == 1 else None)
    if args.plot == "terminal" or preview:
        first = next(iter(src.values))          # the terminal plot shows one quantity (lr)
        shown = [c for c in curves if first in c.values]
        text = _textplot.render([(c.label, c.values[first]) for c in shown], width=args.width or 80,
                                height=args.height or 24, log_y=args.log_y,
                                title=f"{first} of {src.label}" if len(shown) == 1
                                else f"{first}: " + " vs ".join(c.label for c in shown))
        stream = sys.stderr if data_on_stdout else sys.stdout
        print(text, file=stream, flush=True)
    if args.summary or (args.summary is None and (sys.stderr.isatty() or preview)):
        lines = []
        for c in curves:
            lines += _summary.summary(c.label, c.values)
        if preview:
            lines.append("(stdout is a terminal: showing a plot; use --format, -o FILE or a pipe for the data)")
        print("\n".join(lines), file=sys.stderr, flush=True)
    return 0
