"""``npadam schedule``: dump (CSV, JSON, NPY) or plot (image, terminal) a schedule.

Where things go:

- data: to ``--output FILE``, else to stdout. It is written when ``--output`` or
  ``--format`` is given, or when no ``--plot`` is asked for and stdout is not a
  terminal. In a terminal with none of these, a terminal plot is shown instead.
- a terminal plot: to stdout, or to stderr when the data is on stdout.
- the summary: to stderr, with ``--summary`` or when stderr is a terminal.

Files written (``--output``, ``--plot FILE``) are never replaced unless ``--force`` is
given, and are written atomically: to a temporary file in the same directory, then
renamed over the target, so an interrupted run never leaves half a file. Both checks
happen before the schedule is evaluated. Devices such as ``/dev/null`` are written
directly.
"""

from __future__ import annotations

import dataclasses
import os
import re
import shlex
import sys
from dataclasses import dataclass, field
from typing import Any, Iterable, Mapping, Sequence, TextIO

import numpy as np

from .. import schedules
from ..schedules import FRAMEWORKS, GroupSchedules, Schedule, ScheduleSet
from . import _horizon, _outfile, _summary, _textplot, _writers
from ._args import parse
from ._config import label_for, load_mapping
from ._errors import CLIError
from ._limits import MAX_STEPS, steps_text
from ._named import Named, named_schedules, usage_line

HELP = "dump (csv, json, npy) or plot (png, terminal) a learning-rate schedule"
QUANTITIES = ("lr", "weight_decay", "beta1", "beta2")


@dataclass
class Source:
    """A schedule set to evaluate: label (plots, summary), origin (errors: the flag that gave it),
    JSON-able description, quantity -> schedule."""

    label: str
    origin: str
    config: Any
    schedules: dict[str, Schedule]
    values: dict[str, np.ndarray] = field(default_factory=dict)
    inputs: str = ""  # every flag that set a value (a named schedule): what to name when the values overflow


def _lib_error(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing key {exc.args[0]!r}" if exc.args else "missing key"
    if isinstance(exc, RecursionError):
        return "nested too deeply"
    if isinstance(exc, ArithmeticError):
        return f"a number is out of range ({' '.join(str(exc).split())})"
    return " ".join(str(exc).split())


#: What the library raises for bad values (an OverflowError: a number too large for int64/float64).
_LIB_ERRORS = (ValueError, TypeError, KeyError, ArithmeticError, RecursionError)


def _column(s: Schedule) -> str:
    if s.kind == "weight_decay":
        return "weight_decay"
    return "beta1" if s.params.get("quantity") == "momentum" else "lr"


_RUN_SECTIONS = ("optimizer", "scheduler", "train")


def _megatron_run_config(cfg: Mapping[str, Any]) -> bool:
    """A config of ``npadam.config`` (Megatron's OptimizerConfig + SchedulerConfig fields, maybe in
    sections) rather than the flat argument mapping ``schedules.from_config("megatron")`` reads."""
    return any(isinstance(cfg.get(s), Mapping) for s in _RUN_SECTIONS) or bool(_optimizer_only(cfg))


def _optimizer_only(cfg: Mapping[str, Any]) -> list[Any]:
    """The keys of ``cfg`` that are OptimizerConfig fields but not scheduler parameters."""
    from .. import config as C

    opt_only = ({f.name for f in dataclasses.fields(C.OptimizerConfig)}
                - {"lr", "min_lr", "weight_decay", "decoupled_lr", "decoupled_min_lr"})
    return [k for k in cfg if str(k).replace("-", "_") in opt_only]


def _megatron_schedules(cfg: Mapping[str, Any], origin: str) -> ScheduleSet | GroupSchedules:
    from .. import config as C

    if "param_groups" in cfg:  # a key of the flat scheduler form only: a run config builds its groups
        if any(k in cfg for k in ("decoupled_lr", "decoupled_min_lr")):
            return schedules.from_config("megatron", {k: cfg[k] for k in cfg if k not in _optimizer_only(cfg)})
        extra = sorted(str(k) for k in _optimizer_only(cfg)) or [s for s in _RUN_SECTIONS if s in cfg]
        raise ValueError(f"param_groups (the scheduler's per-group overrides) cannot go with the run-config fields "
                         f"{', '.join(extra)}: a run config builds Megatron's groups itself; drop param_groups, "
                         "or keep only the scheduler fields")

    opt_cfg, sched_cfg = C.from_mapping(cfg, where=origin)
    if sched_cfg is None:
        raise ValueError("no scheduler fields (train_iters, lr_decay_style, ...): the lr is constant "
                         f"{opt_cfg.lr}; name a schedule instead")
    return C.schedules_for(opt_cfg, sched_cfg)  # per group (lr[0], lr[1]) with decoupled_lr


def _from_framework(framework: str, path: str, origin: str) -> Source:
    cfg = load_mapping(path, origin)
    try:
        if framework == "megatron" and _megatron_run_config(cfg):
            sset = _megatron_schedules(cfg, origin)
        else:
            sset = schedules.from_config(framework, cfg)
    except _LIB_ERRORS as exc:
        msg = _lib_error(exc)
        raise CLIError(msg if msg.startswith(origin) else f"{origin}: {msg}") from None
    name = "stdin" if path == "-" else os.path.basename(path)
    return Source(f"{framework}:{name}", origin, cfg, dict(sset.items()))


def _from_schedule_dict(data: Mapping[str, Any], path: str, origin: str) -> Source:
    label = "stdin" if path == "-" else os.path.basename(path)
    try:
        if "type" in data:
            s = schedules.from_dict(data)
            return Source(label, origin, dict(data), {_column(s): s})
        if isinstance(data.get("lr"), Mapping):
            sset = ScheduleSet.from_dict(data)
            return Source(label, origin, dict(data), dict(sset.items()))
        if isinstance(data.get("groups"), list):
            gsets = GroupSchedules.from_dict(data)
            return Source(label, origin, dict(data), dict(gsets.items()))
    except _LIB_ERRORS as exc:
        raise CLIError(f"{origin}: {_lib_error(exc)}") from None
    if "config" in data and "step" in data:
        if isinstance(data["config"], Mapping) and ("type" in data["config"] or "lr" in data["config"]):
            return _from_schedule_dict(data["config"], path, origin)
        raise CLIError(f"{origin} is a dump of a framework config, not a schedule: overlay it with "
                       f"--compare {path}, or dump the original with --framework and --config")
    raise CLIError(f"{origin} is not a saved schedule: expected {{\"type\": ...}} from Schedule.to_dict() "
                   f"or {{\"lr\": {{...}}, ...}} from ScheduleSet.to_dict() or {{\"groups\": [...]}} from "
                   "GroupSchedules.to_dict()")


def _given_flags(named: Named, given: Mapping[str, Any], keep: Any = None) -> list[str]:
    """``--flag value`` (the value shell-quoted) of each of ``named``'s params set in ``given`` that
    ``keep`` (a predicate on the param; all when None) selects, in the schedule's param order."""
    return [f"--{p.flag} {shlex.quote(str(given[p.name]))}" for p in named.params
            if p.name in given and (keep is None or keep(p))]


def _named_error(named: Named, given: Mapping[str, Any], exc: BaseException) -> str:
    """The library's message about a named schedule, led by the flags it is about:
    ``--warmup-steps 20 --total-steps 9: warmup-cosine: warmup_steps (20) must be < total_steps (9)``."""
    msg = _lib_error(exc)
    flags = _given_flags(named, given, lambda p: re.search(rf"(?<![\w-]){re.escape(p.name)}(?![\w-])", msg))
    return f"{' '.join(flags) + ': ' if flags else ''}{named.name}: {msg}"


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
        return _from_framework(args.framework, args.config, label_for("--config", args.config))
    if args.schedule_json is not None:
        origin = label_for("--schedule-json", args.schedule_json)
        return _from_schedule_dict(load_mapping(args.schedule_json, origin), args.schedule_json, origin)
    if args.named is None:
        raise CLIError("no schedule given: name one (npadam schedule --list), or give --framework F "
                       "--config FILE, or --schedule-json FILE")
    named = args.named
    try:
        s = named.build(args.params)
        config = s.to_dict()
    except _LIB_ERRORS as exc:
        raise CLIError(_named_error(named, args.params, exc)) from None
    lengths = " ".join(_given_flags(named, args.params, lambda p: p.type == "int"))  # the step counts
    inputs = " ".join(_given_flags(named, args.params))
    return Source(named.name, f"{named.name} {lengths}".strip(), config, {named.column(args.params): s},
                  inputs=f"{inputs}: {named.name}" if inputs else "")


def _default_steps(src: Source) -> int:
    """The schedule's length + 10%, refused over ``MAX_STEPS`` before anything is allocated."""
    try:
        steps = _horizon.default_steps(src.schedules.values())
    except _LIB_ERRORS as exc:
        raise CLIError(f"{src.origin}: {_lib_error(exc)}") from None
    if steps is None:
        raise CLIError(f"--steps N is needed: {src.origin} has no natural length")
    if steps > MAX_STEPS:
        raise CLIError(f"{src.origin}: dumping its length + 10%: {steps_text(steps)}; "
                       f"give --steps N to dump fewer")
    return steps


def _evaluate(src: Source, steps: int, *, strict: bool) -> None:
    """Fill ``src.values``; past a schedule's limit: an error (strict) or NaN."""
    for q, s in src.schedules.items():
        n = steps
        try:
            lim = s.limit
            if not strict and lim is not None:
                n = max(0, min(n, lim))
            with np.errstate(over="ignore", invalid="ignore"):
                v = s(np.arange(n, dtype=np.int64))
        except _LIB_ERRORS as exc:
            raise CLIError(f"{src.origin}: {_lib_error(exc)} (dumping --steps {steps:,})") from None
        bad = np.flatnonzero(~np.isfinite(v))
        if bad.size:  # huge but finite inputs (lr=1.7e308) overflow in the formula: no optimizer takes that
            raise CLIError(f"{src.inputs or src.origin}: {q} is {v[bad[0]]} at step {bad[0]:,} (the values overflow float64; "
                           f"the optimizer would refuse it)")
        if n < steps:
            v = np.concatenate([v, np.full(steps - n, np.nan)])
        src.values[q] = v


def _dump_columns(data: Mapping[str, Any], origin: str) -> dict[str, np.ndarray]:
    """The columns of a JSON dump made by this command: lists of numbers (``null`` is NaN)."""
    cols = {}
    for q in QUANTITIES:
        col = data.get(q)
        if col is None:
            continue
        if not isinstance(col, list) or not set(map(type, col)) <= {int, float, type(None)}:
            raise CLIError(f"{origin}: {q!r} must be a list of numbers, as dumped by npadam schedule --format json")
        if len(col) > MAX_STEPS:
            raise CLIError(f"{origin}: {q!r} has {len(col):,} values; at most {MAX_STEPS:,}")
        cols[q] = np.array(col, dtype=np.float64)         # null -> NaN
    return cols


def _compare(spec: str, steps: int) -> Source:
    origin = label_for("--compare", spec)
    prefix, sep, rest = spec.partition(":")
    if sep and prefix in FRAMEWORKS:
        src = _from_framework(prefix, rest, origin)
    else:
        data = load_mapping(spec, origin)
        if "step" in data and isinstance(data.get("lr"), list):
            label = os.path.basename(spec)
            return Source(label, origin, data.get("config"), {}, _dump_columns(data, origin))
        src = _from_schedule_dict(data, spec, origin)
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
    if fmt == "csv":
        chunks = _writers.csv_chunks(steps, src.values)
    elif fmt == "json":
        chunks = _writers.json_chunks(src.config, steps, src.values)
    if to_stdout:
        _write_chunks(sys.stdout, chunks)
        return
    with _outfile.atomic(args.output, "--output", force=args.force) as f:
        if fmt == "npy":
            _writers.write_npy(f, steps, src.values)
        else:
            for data in chunks:
                f.write(data)


_IMAGE_TYPES = ("png", "svg", "svgz", "pdf", "eps", "ps", "jpg", "jpeg", "tif", "tiff", "webp")


def _check_outputs(args: Any) -> None:
    """Refuse bad or existing output files before anything is computed."""
    if args.format == "npy" and args.output in (None, "-"):
        raise CLIError("--format npy writes binary data: give --output FILE")
    if args.output not in (None, "-"):
        _outfile.check(args.output, "--output", force=args.force)
    if args.plot is None or args.plot == "terminal":
        return
    ext = os.path.splitext(args.plot)[1].lower().lstrip(".")
    if ext not in _IMAGE_TYPES:
        raise CLIError(f"--plot {args.plot}: give 'terminal' or an image file name ending in "
                       f"{', '.join('.' + t for t in _IMAGE_TYPES[:5])}, ...")
    _outfile.check(args.plot, "--plot", force=args.force)
    if args.output not in (None, "-") and _outfile.same_file(args.output, args.plot):
        raise CLIError(f"--output and --plot name the same file {args.plot}")


def main(argv: Sequence[str]) -> int:
    """``npadam schedule ...``; returns the exit status (errors raise CLIError)."""
    args = parse(argv)
    if args.list:
        print(_list_text())
        return 0
    _check_outputs(args)
    src = _source(args)
    with np.errstate(over="ignore", invalid="ignore"):  # overflowing values are refused by _evaluate
        steps = args.steps if args.steps is not None else _default_steps(src)
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
        _plot.save(args.plot, panels, log_y=args.log_y, title=src.label if len(curves) == 1 else None,
                   force=args.force)
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
