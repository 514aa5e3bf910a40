"""Output files (``--output``, ``--plot FILE``): never replaced by accident, never left half written.

``check`` runs before any work: a file that exists is refused unless ``--force``.
``atomic`` writes to a temporary file in the target's directory and renames it over
the target only once everything is written and flushed to disk, so Ctrl-C, a full
disk or a crash leaves either the old file or the new one. Without ``--force`` the
rename is a hard link, which fails if the file appeared in the meantime. A path
that is not a regular file (``/dev/null``, a named pipe), or any path under ``/dev/``
or ``/proc/`` (``/dev/stdout`` is the caller's stdout even when that was redirected
to a file: it must be written through, not replaced), is written in place.
"""

from __future__ import annotations

import contextlib
import os
import stat
import tempfile
from typing import BinaryIO, Iterator

from ._errors import CLIError


def _in_place(path: str) -> bool:
    """A device or a descriptor alias (``/dev/stdout``, ``/proc/self/fd/1``): written through."""
    return os.path.abspath(path).startswith(("/dev/", "/proc/"))


def _regular(path: str) -> bool | None:
    """True: a regular file (links followed); False: something else; None: nothing there."""
    try:
        return stat.S_ISREG(os.stat(path).st_mode)
    except FileNotFoundError:
        return None


def check(path: str, flag: str, *, force: bool) -> None:
    """Refuse ``path`` as an output of ``flag`` if it cannot be written or would be replaced."""
    if path == "":
        raise CLIError(f"{flag}: expected a file name, got ''")
    if "\0" in path:
        raise CLIError(f"{flag} {path!r}: not a valid file name")
    try:
        if os.path.isdir(path):
            raise CLIError(f"{flag} {path}: cannot write: it is a directory")
        regular = _regular(path)
    except OSError as exc:
        raise CLIError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
    if regular and not force and not _in_place(path):
        raise CLIError(f"{flag} {path}: the file exists; give --force (-f) to replace it")
    parent = os.path.dirname(os.path.realpath(path))
    if not os.path.isdir(parent):
        raise CLIError(f"{flag} {path}: cannot write: the directory {os.path.dirname(path) or parent} "
                       f"does not exist")


def same_file(a: str, b: str) -> bool:
    return os.path.realpath(a) == os.path.realpath(b)


def _new_file_mode(existing: str) -> int:
    try:
        return stat.S_IMODE(os.stat(existing).st_mode)
    except OSError:
        umask = os.umask(0)
        os.umask(umask)
        return 0o666 & ~umask


@contextlib.contextmanager
def atomic(path: str, flag: str, *, force: bool) -> Iterator[BinaryIO]:
    """A binary file to write; on success it becomes ``path`` in one rename (see the module doc)."""
    target = os.path.realpath(path)
    try:
        if _in_place(path) or _regular(target) is False:     # a device, a pipe: nothing to replace
            with open(path, "wb") as f:
                yield f
            return
        fd, tmp = tempfile.mkstemp(dir=os.path.dirname(target), prefix=f".{os.path.basename(target)}.",
                                   suffix=".tmp")
    except OSError as exc:
        raise CLIError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _new_file_mode(target))
        if force:
            os.replace(tmp, target)
        else:
            _link_new(tmp, target, flag, path)
    except OSError as exc:
        raise CLIError(f"{flag} {path}: cannot write: {exc.strerror or exc}") from None
    finally:
        with contextlib.suppress(OSError):
            os.unlink(tmp)


def _link_new(tmp: str, target: str, flag: str, path: str) -> None:
    """Give ``tmp`` the name ``target`` only if that name is still free."""
    try:
        os.link(tmp, target)
    except FileExistsError:
        raise CLIError(f"{flag} {path}: the file exists; give --force (-f) to replace it") from None
    except OSError:                               # no hard links on this file system
        if os.path.lexists(target):
            raise CLIError(f"{flag} {path}: the file exists; give --force (-f) to replace it") from None
        os.replace(tmp, target)
