"""CSV, JSON and NPY output of a dumped schedule.

Every float is written as ``repr`` prints it (the shortest decimal that reads back
as the same float64), so ``float(text)`` / ``json.loads`` / ``np.loadtxt`` give the
library's values bit for bit. The text is built with array operations
(``_floatfmt``): about 0.2 s per million rows and column.
"""

from __future__ import annotations

import json
from typing import Any, BinaryIO, Iterator, Mapping

import numpy as np

from ._floatfmt import float_field, int_field, join_rows


CHUNK = 1 << 18      # rows formatted at a time (bounds the memory of the text matrices)


def csv_chunks(steps: np.ndarray, columns: Mapping[str, np.ndarray], chunk: int = CHUNK) -> Iterator[bytes]:
    """``step,lr,...`` header, then one row per step, as consecutive byte strings."""
    yield ",".join(["step", *columns]).encode("ascii") + b"\n"
    for lo in range(0, steps.size, chunk):
        fields: list[Any] = [int_field(steps[lo:lo + chunk])]
        for values in columns.values():
            fields += [b",", float_field(values[lo:lo + chunk])]
        yield join_rows(fields)


def _json_list(values: np.ndarray, ints: bool = False, chunk: int = CHUNK) -> Iterator[bytes]:
    if not ints and not np.all(np.isfinite(values)):
        # JSON has no inf/nan; use Python's json spelling (Infinity, NaN), which json.loads reads
        yield json.dumps(values.tolist()).encode("ascii")
        return
    yield b"["
    for lo in range(0, values.size, chunk):
        part = values[lo:lo + chunk]
        body = join_rows([int_field(part) if ints else float_field(part)], end=b",")
        yield body if lo + chunk < values.size else body[:-1]
    yield b"]"


def json_chunks(config: Any, steps: np.ndarray, columns: Mapping[str, np.ndarray],
                chunk: int = CHUNK) -> Iterator[bytes]:
    """``{"config": ..., "step": [...], "lr": [...], ...}`` (one key per line)."""
    yield b'{"config": ' + json.dumps(config, default=str).encode("utf-8") + b',\n"step": '
    yield from _json_list(steps, ints=True, chunk=chunk)
    for name, values in columns.items():
        yield b",\n" + json.dumps(name).encode("ascii") + b": "
        yield from _json_list(values, chunk=chunk)
    yield b"}\n"


def csv_bytes(steps: np.ndarray, columns: Mapping[str, np.ndarray]) -> bytes:
    return b"".join(csv_chunks(steps, columns))


def json_bytes(config: Any, steps: np.ndarray, columns: Mapping[str, np.ndarray]) -> bytes:
    return b"".join(json_chunks(config, steps, columns))


def npy_array(steps: np.ndarray, columns: Mapping[str, np.ndarray]) -> np.ndarray:
    """A structured array with fields ``step`` (int64) and one float64 field per column."""
    dtype = np.dtype([("step", "<i8")] + [(name, "<f8") for name in columns])
    out = np.empty(steps.size, dtype=dtype)
    out["step"] = steps
    for name, values in columns.items():
        out[name] = values
    return out


def write_npy(f: BinaryIO, steps: np.ndarray, columns: Mapping[str, np.ndarray]) -> None:
    np.save(f, npy_array(steps, columns), allow_pickle=False)
