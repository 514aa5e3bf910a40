"""The CLI's config-file reading: ``npadam._configfile`` (shared with ``npadam.config``), its
errors turned into ``CLIError`` (one line, exit status 2)."""

from __future__ import annotations

from typing import Any

from .._configfile import ConfigFileError, label_for, parse_args_text
from .._configfile import load_mapping as _load_mapping
from ._errors import CLIError

__all__ = ["label_for", "load_mapping", "parse_args_text"]


def load_mapping(path: str, label: str | None = None) -> dict[str, Any]:
    """``npadam._configfile.load_mapping``; a ``ConfigFileError`` becomes a ``CLIError``."""
    try:
        return _load_mapping(path, label)
    except ConfigFileError as exc:
        raise CLIError(str(exc)) from None
