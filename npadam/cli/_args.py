"""Command-line parsing for ``npadam schedule``.

The parser is built for the named schedule on the command line (if any), so that
``npadam schedule warmup-cosine --help`` lists exactly that schedule's flags.
"""

from __future__ import annotations

import argparse
import inspect
import textwrap
from typing import Sequence

from ..schedules import FRAMEWORKS
from ._argtypes import float_arg, integer, magnitude, steps_arg
from ._errors import Parser
from ._limits import MAX_FLAG_INT, MAX_HEIGHT, MAX_STEPS, MAX_WIDTH, MIN_HEIGHT, MIN_WIDTH
from ._named import Named, named_schedules, usage_line

FORMATS = ("csv", "json", "npy")

#: Options of ``npadam schedule`` that take a value (to find the schedule name in argv).
_VALUED = ("--framework", "--config", "--schedule-json", "--steps", "--format", "-o", "--output",
           "--plot", "--compare", "--width", "--height")
_WIDTH = integer(MIN_WIDTH, MAX_WIDTH, "columns")
_HEIGHT = integer(MIN_HEIGHT, MAX_HEIGHT, "lines")
_FLAG_INT = magnitude(MAX_FLAG_INT)

EXAMPLES = """\
examples:
  npadam schedule warmup-cosine --peak 3e-4 --warmup-steps 2000 --total-steps 100000 --final 3e-5 > lr.csv
  npadam schedule --framework hf --config hf.json --format json -o lr.json --force
  npadam schedule --framework megatron --config megatron.yaml --steps 5000 --plot terminal
  npadam schedule --framework deepspeed --config ds_config.json --plot lr.png --compare hf:hf.json
  npadam schedule NAME --help      (the flags of one named schedule)
  npadam schedule --list           (named schedules and frameworks)
"""


def schedule_name(argv: Sequence[str]) -> str | None:
    """The first positional argument (the named schedule), skipping option values."""
    skip = False
    for tok in argv:
        if skip:
            skip = False
            continue
        if tok == "--":
            return None
        if tok.startswith("-") and len(tok) > 1:
            skip = tok in _VALUED
            continue
        return tok.replace("_", "-")
    return None


def build_parser(named: Named | None, prog: str = "npadam schedule") -> argparse.ArgumentParser:
    names = list(named_schedules())
    if named is None:
        usage = (f"{prog} NAME [--PARAM VALUE ...] [options]\n"
                 f"       {prog} --framework FRAMEWORK --config FILE [options]\n"
                 f"       {prog} --schedule-json FILE [options]")
    else:
        usage = f"{prog} {named.name} {usage_line(named)} [options]"
    p = Parser(prog=prog, usage=usage, formatter_class=argparse.RawDescriptionHelpFormatter,
               description="Dump or plot a learning-rate schedule: a named schedule with flags,\n"
                           "a framework config file, or a schedule saved with to_dict().",
               epilog=EXAMPLES)
    p.add_argument("name", nargs="?", metavar="NAME", type=lambda s: s.replace("_", "-"), choices=names,
                   help="a named schedule: " + ", ".join(names))
    src = p.add_argument_group("schedule source (one of NAME, --config, --schedule-json)")
    src.add_argument("--framework", choices=list(FRAMEWORKS),
                     help="the framework whose config --config holds")
    src.add_argument("--config", metavar="FILE",
                     help="framework config: .json, .yaml/.yml, .toml, or .args/.txt (--key value ...); "
                          "'-' reads stdin")
    src.add_argument("--schedule-json", metavar="FILE",
                     help="a schedule saved with Schedule.to_dict() (or ScheduleSet.to_dict(), GroupSchedules.to_dict())")
    out = p.add_argument_group("output")
    out.add_argument("--steps", type=steps_arg, metavar="N",
                     help=f"number of steps to dump, 0 .. N-1, at most {MAX_STEPS:,} "
                          f"(default: the schedule's length + 10%%)")
    out.add_argument("--format", choices=FORMATS,
                     help="csv (default), json or npy (default from the --output extension)")
    out.add_argument("-o", "--output", metavar="FILE",
                     help="write the data to FILE (default: stdout for csv and json); an existing "
                          "file is kept unless --force is given")
    out.add_argument("-f", "--force", action="store_true",
                     help="replace existing --output and --plot files")
    plot = p.add_argument_group("plot and summary")
    plot.add_argument("--plot", metavar="FILE|terminal",
                      help="draw the schedule: an image file (.png, .svg, .pdf; needs matplotlib) or "
                           "'terminal' for a text plot")
    plot.add_argument("--compare", action="append", default=[], metavar="SPEC",
                      help="overlay another schedule (repeatable): FRAMEWORK:FILE for a framework config, "
                           "or FILE for a to_dict() JSON or a JSON dump of this command")
    plot.add_argument("--width", type=_WIDTH, default=None, metavar="N",
                      help=f"terminal plot width, {MIN_WIDTH} .. {MAX_WIDTH:,} (default 80)")
    plot.add_argument("--height", type=_HEIGHT, default=None, metavar="N",
                      help=f"terminal plot height, {MIN_HEIGHT} .. {MAX_HEIGHT:,} (default 24)")
    plot.add_argument("--log-y", action="store_true", help="logarithmic y axis")
    plot.add_argument("--summary", action=argparse.BooleanOptionalAction, default=None,
                      help="print the summary (peak, warmup end, final value, lr budget) on stderr "
                           "(default: when stderr is a terminal)")
    p.add_argument("--list", action="store_true", help="list the named schedules and the frameworks")
    if named is not None:
        doc = (inspect.getdoc(named.cls) or "").replace("``", "")
        g = p.add_argument_group(f"{named.name} parameters (npadam.schedules.{named.cls.__name__})",
                                 textwrap.indent(doc, "  "))
        for prm in named.params:
            flag = f"--{prm.flag}"
            dest = f"param_{prm.name}"
            if prm.type == "bool":
                g.add_argument(flag, dest=dest, action=argparse.BooleanOptionalAction,
                               default=argparse.SUPPRESS,
                               help=f"(default: {prm.default})")
                continue
            conv = {"int": _FLAG_INT, "float": float_arg, "str": str}[prm.type]
            meta = prm.type.upper()
            note = f" ({prm.name!r} of the class)" if prm.flag != prm.name.replace("_", "-") else ""
            if prm.required:
                g.add_argument(flag, dest=dest, type=conv, required=True, metavar=meta, help="required" + note)
            else:
                g.add_argument(flag, dest=dest, type=conv, default=argparse.SUPPRESS, metavar=meta,
                               help=f"(default: {prm.default!r}){note}")
    return p


def parse(argv: Sequence[str], prog: str = "npadam schedule") -> argparse.Namespace:
    """Parse ``npadam schedule`` arguments; ``ns.named`` is the Named schedule or None and
    ``ns.params`` the flags given for it."""
    name = schedule_name(argv)
    named = named_schedules().get(name) if name else None
    ns = build_parser(named, prog).parse_args(list(argv))
    ns.named = named_schedules().get(ns.name) if ns.name else None
    ns.params = {k[len("param_"):]: v for k, v in vars(ns).items() if k.startswith("param_")}
    return ns
