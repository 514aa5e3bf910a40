"""Reading framework config files (JSON, YAML, TOML, argument files) and schedule files.

- ``.json``: JSON. ``.yaml`` / ``.yml``: YAML (``yaml.safe_load`` rules, except that
  ``3e-4`` is a float as in YAML 1.2, where PyYAML would read the string "3e-4").
  ``.toml``: TOML (``tomllib``, ``tomli`` before Python 3.11). ``.args`` / ``.txt``:
  command-line arguments as a launcher passes them, ``--lr 3e-4 --lr-decay-style
  cosine --train-iters 1000`` (numbers become numbers, a bare ``--flag`` is true,
  hyphens in names become underscores). Any other name, or ``-`` for stdin, is
  sniffed: JSON, then argument text when it starts with ``--``, then YAML.
- The top level must be a mapping.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any, Mapping

from ._errors import CLIError

_YAML_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that also reads ``3e-4`` (no dot) as a float."""

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    return Loader


def _read_text(path: str) -> str:
    if path == "-":
        return sys.stdin.read()
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError:
        raise CLIError(f"cannot read {path}: not a UTF-8 text file") from None
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _parse_json(text: str, path: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:
        raise CLIError(f"cannot parse {path} as JSON: {_one_line(exc)}") from None


def _parse_yaml(text: str, path: str) -> Any:
    import yaml
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or _one_line(exc)
        raise CLIError(f"cannot parse {path} as YAML: {what}{where}") from None


def _parse_toml(text: str, path: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise CLIError(f"reading {path} needs tomli on Python 3.10: pip install tomli") from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise CLIError(f"cannot parse {path} as TOML: {_one_line(exc)}") from None


def _scalar(text: str) -> Any:
    for conv in (int, float):
        try:
            return conv(text)
        except ValueError:
            pass
    low = text.lower()
    if low in ("true", "false"):
        return low == "true"
    if low in ("none", "null"):
        return None
    return text


def parse_args_text(text: str, path: str) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` tokens into a dict (words before the
    first ``--`` option, such as ``python pretrain_gpt.py``, are skipped)."""
    try:
        tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise CLIError(f"cannot parse {path} as command-line arguments: {exc}") from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens) and not tokens[i].startswith("--"):
        i += 1
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise CLIError(f"cannot parse {path} as command-line arguments: expected an option, got {tok!r}")
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = _scalar(value)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            out[key] = _scalar(tokens[i + 1])
            i += 1
        else:
            out[key] = True
        i += 1
    return out


def load_mapping(path: str) -> dict[str, Any]:
    """Read a config file (format from the extension, else sniffed) into a dict."""
    if path != "-" and os.path.isdir(path):
        raise CLIError(f"cannot read {path}: it is a directory")
    text = _read_text(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        data = _parse_json(text, path)
    elif ext in (".yaml", ".yml"):
        data = _parse_yaml(text, path)
    elif ext == ".toml":
        data = _parse_toml(text, path)
    elif ext in (".args", ".txt"):
        data = parse_args_text(text, path)
    else:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            data = _parse_json(text, path)
        elif stripped.startswith("--"):
            data = parse_args_text(text, path)
        else:
            data = _parse_yaml(text, path)
    if data is None:
        raise CLIError(f"{path} is empty")
    if not isinstance(data, Mapping):
        raise CLIError(f"{path}: expected a mapping (key: value pairs) at the top level, "
                       f"got {type(data).__name__}")
    return dict(data)
