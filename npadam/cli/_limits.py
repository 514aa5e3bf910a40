"""The CLI's documented limits, checked before anything is allocated or parsed.

A request over one of them is bad input (exit status 2, one line naming the flag or
the file), never a ``MemoryError`` or a ``RecursionError`` halfway through.
``docs/CLI.md`` lists the same numbers.
"""

from __future__ import annotations

#: ``npadam schedule --steps``: rows of a dump (8 bytes per row and column: 0.8 GB a column;
#: a whole run with summary and plot peaks near 50 bytes per row, ~5 GB here).
MAX_STEPS = 100_000_000
#: ``npadam schedule --width`` / ``--height``: characters of a terminal plot.
MIN_WIDTH, MAX_WIDTH = 20, 1_000
MIN_HEIGHT, MAX_HEIGHT = 6, 1_000
#: Config, schedule and comparison files (``--config``, ``--schedule-json``, ``--compare``):
#: bytes read, nesting, YAML alias expansion, integer size (``npadam._configfile`` checks them).
from .._configfile import MAX_ALIAS_NODES, MAX_DEPTH, MAX_FILE_BYTES, MAX_INT_BITS, int_text  # noqa: E402,F401
#: Integer flags of named schedules (``--total-steps``, ``--warmup-steps``, ...): |value| <= 2**53,
#: so that every value is exact in float64.
MAX_FLAG_INT = 2 ** 53
#: ``npadam demo``.
MAX_DEMO_STEPS = 1_000_000
MAX_DEMO_HIDDEN = 4_096
MAX_DEMO_BATCH = 20_000        # the generated training set
MAX_SEED = 2 ** 64 - 1


def nbytes(n: float) -> str:
    """``8e12`` -> ``'8 TB'`` (decimal units, three significant digits at most)."""
    for unit in ("B", "kB", "MB", "GB", "TB", "PB"):
        if n < 1000:
            return f"{n:.3g} {unit}"
        n /= 1000
    return f"{n:,.0f} EB"


def steps_text(n: int, text: str | None = None) -> str:
    """``1e12`` -> ``'1,000,000,000,000 steps (1e12) would need 8 TB for each column of values;
    at most 100,000,000 steps'``."""
    given = f" ({text})" if text is not None and text != str(n) else ""
    return (f"{n:,} steps{given} would need {nbytes(8.0 * n)} for each column of values; "
            f"at most {MAX_STEPS:,} steps")
