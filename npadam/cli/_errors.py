"""The CLI's error type and an argparse parser that raises it instead of exiting."""

from __future__ import annotations

import argparse
import difflib
from typing import NoReturn


class CLIError(Exception):
    """Bad input: ``main`` prints ``npadam: error: <message>`` on one line and returns 2."""


class Parser(argparse.ArgumentParser):
    """``ArgumentParser`` whose usage errors raise ``CLIError`` (one line, with a hint)."""

    def __init__(self, *args, **kwargs) -> None:
        kwargs.setdefault("allow_abbrev", False)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        if message.startswith("unrecognized arguments:"):
            known = [s for a in self._actions for s in a.option_strings]
            for arg in message.split(":", 1)[1].split():
                if arg.startswith("--"):
                    close = difflib.get_close_matches(arg.split("=")[0], known, n=1)
                    if close:
                        message += f" (did you mean {close[0]}?)"
                        break
        raise CLIError(f"{message} (see '{self.prog} --help')")
