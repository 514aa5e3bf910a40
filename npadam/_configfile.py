"""Reading config files (JSON, YAML, TOML, argument files): shared by ``npadam.config`` and the CLI.

- ``.json``: JSON. ``.yaml`` / ``.yml``: YAML (``yaml.safe_load`` rules, except that
  ``3e-4`` is a float as in YAML 1.2, where PyYAML would read the string "3e-4").
  ``.toml``: TOML (``tomllib``, ``tomli`` before Python 3.11). ``.args`` / ``.txt``:
  command-line arguments as a launcher passes them, ``--lr 3e-4 --lr-decay-style
  cosine --train-iters 1000`` (numbers become numbers, a bare ``--flag`` is true,
  hyphens in names become underscores). Any other name, or ``-`` for stdin, is
  sniffed: JSON, then argument text when it starts with ``--``, then YAML.
- The top level must be a mapping.
- Limits (below), each a one-line ``ConfigFileError`` (a ValueError) naming the file, never a
  ``MemoryError`` or ``RecursionError``: at most ``MAX_FILE_BYTES`` are read (``/dev/zero``
  ends); mappings and lists nest at most ``MAX_DEPTH`` deep; YAML aliases add at most
  ``MAX_ALIAS_NODES`` nodes when expanded, and none is recursive (both checked on the
  node graph, before any value is constructed: a "billion laughs" file costs
  milliseconds); integers fit in 64 bits; no key appears twice (JSON, YAML; TOML refuses
  that itself). A UTF-8 byte-order mark is skipped.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import sys
from typing import Any, Mapping

#: At most this many bytes of a file are read (``/dev/zero`` ends).
MAX_FILE_BYTES = 256 << 20
#: Nesting of mappings and lists (real configs nest fewer than 10 levels).
MAX_DEPTH = 100
#: Nodes that YAML aliases (``*name``) may add to a document when expanded.
MAX_ALIAS_NODES = 100_000
#: Integers must fit in 64 bits (the schedules compute in int64 and float64).
MAX_INT_BITS = 63


class ConfigFileError(ValueError):
    """A config file cannot be used; the message names the file (its label) and the problem."""


def int_text(v: int) -> str:
    """An integer for an error line: the digits when short, else their count."""
    if v.bit_length() <= 128:
        return str(v)
    return f"an integer of about {int(v.bit_length() * 0.30103) + 1:,} digits"


_YAML_FLOAT = re.compile(r"""^(?:
     [-+]?(?:[0-9][0-9_]*)\.[0-9_]*(?:[eE][-+]?[0-9]+)?
    |[-+]?(?:[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)
    |[-+]?\.[0-9_]+(?:[eE][-+]?[0-9]+)?
    |[-+]?\.(?:inf|Inf|INF)
    |\.(?:nan|NaN|NAN))$""", re.X)


class _Refused(Exception):
    """A parser hook refused the input; the message is completed with the file's label."""


def _too_deep() -> _Refused:
    return _Refused(f"nested more than {MAX_DEPTH} levels deep (mappings and lists); "
                    f"a config needs only a few")


def _yaml_loader() -> type:
    import yaml

    class Loader(yaml.SafeLoader):
        """SafeLoader that also reads ``3e-4`` (no dot) as a float, and refuses duplicate keys,
        nesting deeper than ``MAX_DEPTH`` and aliases that expand to more than ``MAX_ALIAS_NODES``
        extra nodes (a "billion laughs" document), before anything is constructed."""

        _depth = 0

        def _nested(self, compose: Any, anchor: Any) -> Any:
            self._depth += 1
            if self._depth > MAX_DEPTH:
                raise _too_deep()
            try:
                return compose(anchor)
            finally:
                self._depth -= 1

        def compose_sequence_node(self, anchor: Any) -> Any:
            return self._nested(super().compose_sequence_node, anchor)

        def compose_mapping_node(self, anchor: Any) -> Any:
            return self._nested(super().compose_mapping_node, anchor)

        def compose_document(self) -> Any:
            node = super().compose_document()
            _check_aliases(node)
            return node

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen: dict[tuple[str, str], Any] = {}
            for key, _ in node.value:
                if isinstance(key, yaml.ScalarNode) and key.tag != "tag:yaml.org,2002:merge":
                    if (key.tag, key.value) in seen:
                        raise _Refused(f"duplicate key {key.value!r} at line {key.start_mark.line + 1} "
                                       f"(first at line {seen[key.tag, key.value].line + 1})")
                    seen[key.tag, key.value] = key.start_mark
            return super().construct_mapping(node, deep=deep)

    Loader.add_implicit_resolver("tag:yaml.org,2002:float", _YAML_FLOAT, list("-+0123456789."))
    return Loader


def _check_aliases(root: Any) -> None:
    """Refuse a YAML node graph whose aliases are recursive, nest deeper than ``MAX_DEPTH`` or
    expand to more than ``MAX_ALIAS_NODES`` nodes beyond the document's own: the expanded size is
    counted (memoized per node), never built."""
    import yaml

    done: dict[int, tuple[int, int]] = {}      # id(node) -> (expanded size, height)
    active: set[int] = set()

    def visit(node: Any, depth: int) -> tuple[int, int]:
        key = id(node)
        if key in done:
            size, height = done[key]
        else:
            if key in active:
                raise _Refused("an alias refers to a node that contains it (a recursive alias)")
            if depth > MAX_DEPTH:
                raise _too_deep()
            active.add(key)
            size, height = 1, 0
            if isinstance(node, yaml.SequenceNode):
                children = node.value
            elif isinstance(node, yaml.MappingNode):
                children = [n for pair in node.value for n in pair]
            else:
                children = []
            for child in children:
                s, h = visit(child, depth + 1)
                size, height = size + s, max(height, h + 1)
            active.discard(key)
            done[key] = size, height
        if depth + height > MAX_DEPTH + 1:
            raise _too_deep()
        return size, height

    expanded = visit(root, 0)[0] if root is not None else 0
    if expanded - len(done) > MAX_ALIAS_NODES:
        raise _Refused(f"its aliases (*name) expand to {expanded - len(done):,} more nodes; at most "
                       f"{MAX_ALIAS_NODES:,} are allowed (is it a 'billion laughs' document?)")


def _read_text(path: str, label: str) -> str:
    """The text of ``path`` (``-``: stdin), at most ``MAX_FILE_BYTES``, UTF-8 with or without a BOM."""
    if path == "":
        raise ConfigFileError(f"{label}: expected a file name")
    if path == "-":
        stream = getattr(sys.stdin, "buffer", sys.stdin)
        data = stream.read(MAX_FILE_BYTES + 1)
    else:
        try:
            if os.path.isdir(path):
                raise ConfigFileError(f"{label}: cannot read: it is a directory")
            with open(path, "rb") as f:
                data = f.read(MAX_FILE_BYTES + 1)
        except OSError as exc:
            raise ConfigFileError(f"{label}: cannot read: {exc.strerror or exc}") from None
    if len(data) > MAX_FILE_BYTES:
        raise ConfigFileError(f"{label}: larger than {MAX_FILE_BYTES >> 20} MiB, too large for a config file")
    if isinstance(data, str):
        return data.lstrip("\ufeff")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"{label}: cannot read: not a UTF-8 text file (byte {exc.start})") from None


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise _Refused(f"duplicate key {key!r}")
        out[key] = value
    return out


def _parse_json(text: str, label: str) -> Any:
    try:
        return json.loads(text, object_pairs_hook=_no_duplicates)
    except _Refused as exc:
        raise ConfigFileError(f"{label}: {exc}") from None
    except RecursionError:
        raise ConfigFileError(f"{label}: {_too_deep()}") from None
    except ValueError as exc:
        raise ConfigFileError(f"{label}: cannot parse as JSON: {_one_line(exc)}") from None


def _parse_yaml(text: str, label: str) -> Any:
    import yaml
    try:
        return yaml.load(text, Loader=_yaml_loader())  # noqa: S506 - a SafeLoader subclass
    except _Refused as exc:
        raise ConfigFileError(f"{label}: {exc}") from None
    except RecursionError:
        raise ConfigFileError(f"{label}: {_too_deep()}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark is not None else ""
        what = getattr(exc, "problem", None) or _one_line(exc)
        raise ConfigFileError(f"{label}: cannot parse as YAML: {what}{where}") from None
    except ValueError as exc:               # e.g. an integer of more than 4300 digits
        raise ConfigFileError(f"{label}: cannot parse as YAML: {_one_line(exc)}") from None


def _parse_toml(text: str, label: str) -> Any:
    if sys.version_info >= (3, 11):
        import tomllib
    else:  # pragma: no cover - Python 3.10
        try:
            import tomli as tomllib
        except ImportError:
            raise ConfigFileError(f"{label}: reading TOML needs tomli on Python 3.10: pip install tomli") from None
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise ConfigFileError(f"{label}: {_too_deep()}") from None
    except ValueError as exc:               # TOMLDecodeError, or an integer of more than 4300 digits
        raise ConfigFileError(f"{label}: cannot parse as TOML: {_one_line(exc)}") from None


def _scalar(text: str) -> Any:
    """A command-line value: int, float, bool (true/false), None (none/null) or the text itself."""
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


def parse_args_text(text: str, label: str) -> dict[str, Any]:
    """``--key value`` / ``--key=value`` / ``--flag`` tokens into a dict (words before the
    first ``--`` option, such as ``python pretrain_gpt.py``, are skipped; ``--key v1 v2 v3``
    gives a list)."""
    try:
        tokens = shlex.split(text.replace("\\\n", " "), comments=True)
    except ValueError as exc:
        raise ConfigFileError(f"{label}: cannot parse as command-line arguments: {exc}") from None
    out: dict[str, Any] = {}
    i = 0
    while i < len(tokens) and not tokens[i].startswith("--"):
        i += 1
    while i < len(tokens):
        tok = tokens[i]
        if not tok.startswith("--") or tok == "--":
            raise ConfigFileError(f"{label}: cannot parse as command-line arguments: expected an option, got {tok!r}")
        key, eq, value = tok[2:].partition("=")
        key = key.replace("-", "_")
        if eq:
            out[key] = _scalar(value)
        elif i + 1 < len(tokens) and not tokens[i + 1].startswith("--"):
            j = i + 1  # several values (nargs, e.g. --rampup-batch-size 16 8 300000) make a list
            while j < len(tokens) and not tokens[j].startswith("--"):
                j += 1
            vals = [_scalar(t) for t in tokens[i + 1:j]]
            out[key] = vals[0] if len(vals) == 1 else vals
            i = j - 1
        else:
            out[key] = True
        i += 1
    return out


def _key_path(path: tuple[Any, ...]) -> str:
    out = ""
    for key in path:
        out += f"[{key}]" if isinstance(key, int) else (f".{key}" if out else str(key))
    return out or "the top level"


_INT_MAX = 2 ** MAX_INT_BITS - 1


def _big_int(value: Any) -> bool:
    return type(value) is int and not -_INT_MAX - 1 <= value <= _INT_MAX


def _check_tree(data: Any, label: str) -> None:
    """Refuse nesting deeper than ``MAX_DEPTH`` and integers beyond 64 bits (iteratively: the
    check itself cannot run out of stack). A long list of plain numbers is checked at C speed
    (``min``/``max``), so a dump of millions of values costs little."""
    stack: list[tuple[Any, int, tuple[Any, ...]]] = [(data, 1, ())]
    while stack:
        obj, depth, path = stack.pop()
        if depth > MAX_DEPTH:
            raise ConfigFileError(f"{label}: {_too_deep()}")
        if isinstance(obj, list):
            kinds = set(map(type, obj))
            if kinds <= {float, bool, type(None)}:
                continue
            if int in kinds and kinds <= {int, float, bool}:
                if -_INT_MAX - 1 <= min(obj) and max(obj) <= _INT_MAX:
                    continue
            items: Any = enumerate(obj)
        else:
            items = obj.items()
        for key, value in items:
            if isinstance(value, (dict, list)):         # what the parsers build
                stack.append((value, depth + 1, path + (key,)))
            elif _big_int(value):
                raise ConfigFileError(f"{label}: {_key_path(path + (key,))} = {int_text(value)}: out of range "
                               f"(integers must be within +-2**{MAX_INT_BITS})")


def label_for(flag: str | None, path: str) -> str:
    """How errors name a file: ``--config hf.json``; ``-`` is stdin, odd names are quoted."""
    shown = "- (stdin)" if path == "-" else repr(path) if not path or not path.isprintable() else path
    return shown if flag is None else f"{flag} {shown}"


def load_mapping(path: str, label: str | None = None) -> dict[str, Any]:
    """Read a config file (format from the extension, else sniffed) into a dict. Errors start
    with ``label`` (default ``label_for(None, path)``), which names the flag and the file."""
    label = label_for(None, path) if label is None else label
    if "\0" in path:
        raise ConfigFileError(f"{label}: not a valid file name")
    text = _read_text(path, label)
    if not text.strip():
        raise ConfigFileError(f"{label} is empty")
    ext = os.path.splitext(path)[1].lower()
    if ext == ".json":
        data = _parse_json(text, label)
    elif ext in (".yaml", ".yml"):
        data = _parse_yaml(text, label)
    elif ext == ".toml":
        data = _parse_toml(text, label)
    elif ext in (".args", ".txt"):
        data = parse_args_text(text, label)
    else:
        stripped = text.lstrip()
        if stripped.startswith(("{", "[")):
            data = _parse_json(text, label)
        elif stripped.startswith("--"):
            data = parse_args_text(text, label)
        else:
            data = _parse_yaml(text, label)
    if data is None:
        raise ConfigFileError(f"{label} is empty")
    if not isinstance(data, Mapping):
        raise ConfigFileError(f"{label}: expected a mapping (key: value pairs) at the top level, "
                       f"got {type(data).__name__}")
    _check_tree(data, label)
    return dict(data)
