"""The CLI's error type, its exit statuses, and an argparse parser that raises instead of exiting."""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn

#: Exit status for bad input: a bad flag or value, a file that cannot be read, parsed or written,
#: a request over one of the documented limits.
EXIT_USAGE = 2
#: Exit status for a bug in npadam (an exception nobody expected); sysexits' EX_SOFTWARE.
EXIT_INTERNAL = 70


class CLIError(Exception):
    """Bad input: ``main`` prints ``npadam: error: <message>`` on one line and returns ``EXIT_USAGE``."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors raise ``CLIError`` (one line that starts with the flag,
    with a hint)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("argument "):             # "argument --steps: ..." -> "--steps: ..."
            message = message[len("argument "):]
            if message.endswith(": expected one argument"):
                flag = message.split(":", 1)[0].split("/")[-1]
                message += f" (a value that starts with '-' is written {flag}=VALUE)"
        if message.startswith("unrecognized arguments:"):
            known = [s for a in self._actions for s in a.option_strings]
            for arg in message.split(":", 1)[1].split():
                if arg.startswith("--"):
                    close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                    if close:
                        message += f" (did you mean {close[0]}?)"
                        break
        raise CLIError(f"{message} (see '{self.prog} --help')")
