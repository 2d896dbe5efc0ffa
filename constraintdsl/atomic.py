"""Atomic file writes: write a temporary file beside the target, then rename it into place.

A new file gets the mode the user's umask gives (``0666 & ~umask``, like any program's output); a file
that is replaced keeps its mode.  A symlink is written through (the file it points to is replaced, the
link stays).  Every OS error is a :class:`~constraintdsl.errors.UserError` naming the path and what to do.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from constraintdsl.files import os_error

__all__ = ["umask", "write_atomic", "write_bytes_atomic"]


def umask() -> int:
    """The process's file mode creation mask."""
    try:
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)  # reading it means setting it; put it straight back
    os.umask(mask)
    return mask


def write_bytes_atomic(
    path: str | os.PathLike[str], data: bytes, *, where: str | None = None, parents: bool = False
) -> None:
    """Write ``data`` to ``path`` so readers see the old file or the new one, never a part.

    ``parents`` creates missing folders first.  Errors name ``where`` (a flag) or the path.
    """
    target = Path(path)
    if target.is_symlink():
        target = target.resolve()
    folder = target.parent if str(target.parent) else Path(".")
    tmp: str | None = None
    try:
        if parents:
            folder.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=folder)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            mode = os.stat(target).st_mode & 0o7777
        except FileNotFoundError:
            mode = 0o666 & ~umask()
        os.chmod(tmp, mode)
        os.replace(tmp, target)
        tmp = None
    except OSError as exc:
        raise os_error(exc, target, "write", where=where) from None
    finally:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)


def write_atomic(path: str | os.PathLike[str], text: str, *, where: str | None = None, parents: bool = False) -> None:
    """Write UTF-8 ``text`` atomically (see :func:`write_bytes_atomic`)."""
    write_bytes_atomic(path, text.encode("utf-8"), where=where, parents=parents)
