"""The ``npadam`` command line: ``npadam schedule ...``, ``npadam demo``, ``npadam config FILE``,
``npadam --version``.

``main(argv)`` returns the exit status: 0; 2 (``EXIT_USAGE``) after printing one
line ``npadam: error: ...`` on stderr for bad input, which includes a request over a
documented limit and running out of memory; 70 (``EXIT_INTERNAL``) with the same
one line, marked ``internal error``, for a bug; 130 on Ctrl-C. No traceback is
printed (set ``NPADAM_DEBUG=1`` to see one). Each command lives in its own module
with ``HELP`` and ``main(argv) -> int``; commands are imported only when run.
Nothing here is imported by ``import npadam``.
"""

from __future__ import annotations

import importlib
import os
import sys
from typing import Sequence

from ._errors import EXIT_INTERNAL, EXIT_USAGE, CLIError, Parser

__all__ = ["main", "CLIError", "EXIT_USAGE", "EXIT_INTERNAL"]

#: command name -> module (relative to this package) with HELP and main(argv)
COMMANDS = {"schedule": ".schedule", "demo": ".demo", "config": ".config"}
_HELPS = {
    "schedule": "dump (csv, json, npy) or plot (png, terminal) a learning-rate schedule",
    "demo": "train a small NumPy MLP with npadam end to end (loss, lr, throughput, check vs the reference)",
    "config": "check a Megatron-style optimizer/scheduler config and describe it",
}


def _top_parser() -> Parser:
    from .. import __version__

    lines = [f"  {name:<10} {_HELPS[name]}" for name in COMMANDS]
    p = Parser(prog="npadam", usage="npadam [-h] [--version] COMMAND [ARGS]",
               description="npadam: framework-agnostic AdamW runtime and schedule tools.",
               epilog="commands:\n" + "\n".join(lines) + "\n\nnpadam COMMAND --help for the options of a command.",
               formatter_class=__import__("argparse").RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"npadam {__version__}")
    p.add_argument("command", nargs="?", choices=list(COMMANDS), metavar="COMMAND",
                   help=" | ".join(COMMANDS))
    return p


def _dispatch(argv: list[str]) -> int:
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]], __name__)
        return module.main(argv[1:])
    p = _top_parser()
    p.parse_args(argv)          # --help / --version exit; an unknown command raises CLIError
    p.print_help()
    return 0


def _fail(message: str, status: int = EXIT_USAGE) -> int:
    print(f"npadam: error: {' '.join(message.split())}", file=sys.stderr, flush=True)
    return status


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; ``argv`` excludes the program name (default ``sys.argv[1:]``)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = os.environ.get("NPADAM_DEBUG", "") not in ("", "0")
    try:
        return _dispatch(argv)
    except SystemExit as exc:            # argparse --help / --version
        return exc.code if isinstance(exc.code, int) else 0
    except CLIError as exc:
        if debug:
            raise
        return _fail(str(exc))
    except BrokenPipeError:              # e.g. `npadam schedule ... | head`
        try:
            devnull = os.open(os.devnull, os.O_WRONLY)
            os.dup2(devnull, sys.stdout.fileno())
        except (OSError, ValueError, AttributeError):
            pass
        return 0
    except KeyboardInterrupt:
        return 130
    except MemoryError as exc:           # the limits are checked up front; this is the machine's
        if debug:
            raise
        return _fail(f"out of memory{f' ({exc})' if str(exc) else ''}: ask for less (a smaller --steps, "
                     f"--hidden or --batch), or free some memory")
    except RecursionError:
        if debug:
            raise
        return _fail("the input is nested too deeply (RecursionError)")
    except (ValueError, TypeError, KeyError, OSError) as exc:
        if debug:
            raise
        return _fail(f"{type(exc).__name__}: {exc}" if isinstance(exc, KeyError) else str(exc))
    except Exception as exc:  # noqa: BLE001 - a bug, but still one line for the user
        if debug:
            raise
        return _fail(f"internal error: {type(exc).__name__}: {exc} (NPADAM_DEBUG=1 shows the traceback)",
                     EXIT_INTERNAL)
