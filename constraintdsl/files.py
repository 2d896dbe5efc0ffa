"""The user's files: bounded reads of regular files only, and output locations checked before any work.

Every input file (spec, include, concept artifact, pair set, prompts, corpus, A/B set) is read through
:func:`read_bytes`: it is looked at first (``stat``) and refused unless it is a regular file no larger than
its kind's limit, so a device (``/dev/zero``), a FIFO (which would block), a directory or a huge file is a
clear error before one byte is read.  A symlink loop, a missing file, a permission problem — every OS error on
a user's path — is a :class:`~constraintdsl.errors.UserError` (exit 2) naming the path and what to do, or a
:class:`~constraintdsl.errors.SpecError` at the spec statement that names the file.

Output locations are checked the same way before a command does its work (:func:`check_output_file`,
:func:`check_output_dir`), and written with :mod:`constraintdsl.atomic`; nothing the user had is removed.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from constraintdsl.errors import Span, SpecError, UserError

__all__ = [
    "LIMITS",
    "check_input",
    "check_output_dir",
    "check_output_file",
    "explain_os_error",
    "kind_of",
    "os_error",
    "read_bytes",
]

MIB = 1024 * 1024
# Largest file of each kind that is read at all (bytes).
LIMITS: dict[str, int] = {
    "spec": 16 * MIB,
    "concept": 1024 * MIB,
    "pairs": 64 * MIB,
    "prompts": 64 * MIB,
    "corpus": 256 * MIB,
    "ab": 64 * MIB,
}
_NAMES = {
    "spec": "spec file",
    "concept": "concept file",
    "pairs": "pair dataset",
    "prompts": "prompt file",
    "corpus": "corpus file",
    "ab": "A/B set",
}

# errno -> (what happened, what to do) for a path the user gave.
_REASONS: dict[int, tuple[str, str]] = {
    errno.ENOENT: ("no such file or folder", "check the path"),
    errno.EACCES: ("permission denied", "check its permissions (ls -l), or use another path"),
    errno.EPERM: ("operation not permitted", "check its permissions and attributes (ls -l, lsattr)"),
    errno.EROFS: ("the file system is read-only", "write somewhere else"),
    errno.ENOSPC: ("no space left on the device", "free some space, or write somewhere else"),
    errno.EDQUOT: ("the disk quota is exceeded", "free some space, or write somewhere else"),
    errno.ELOOP: ("it is a symlink loop (a link that points back to itself)", "fix or remove the link"),
    errno.ENOTDIR: ("a part of the path is a file, not a folder", "check the path"),
    errno.EISDIR: ("it is a folder", "give a file"),
    errno.ENAMETOOLONG: ("the name is too long", "use a shorter path"),
    errno.EIO: ("an input/output error occurred", "check the disk"),
    errno.EBUSY: ("the file is busy", "try again later"),
    errno.ETXTBSY: ("the file is busy", "try again later"),
    errno.EMFILE: ("too many files are open", "close some programs and try again"),
}


def os_error(
    exc: OSError, path: str | os.PathLike[str], doing: str, *, at: Span | None = None, where: str | None = None
) -> UserError:
    """``exc`` (raised while ``doing`` something with ``path``) as an error for the user: the path, what
    happened and what to do.  A :class:`SpecError` at ``at`` when given; else located at ``where`` (a flag)
    or the path."""
    reason, hint = explain_os_error(exc)
    return _fail(where or str(path), f"cannot {doing} {path}: {reason}", hint, at)


def explain_os_error(exc: OSError) -> tuple[str, str]:
    """What an OS error means for a user's path, and what to do about it."""
    return _REASONS.get(exc.errno or 0, (exc.strerror or type(exc).__name__, "check the path"))


def kind_of(path: str | os.PathLike[str]) -> str | None:
    """What ``path`` is when it is not a regular file (``a folder``, ``a FIFO (named pipe)``, ``a device``,
    ...), or None for a regular file.  OS errors propagate."""
    return _kind_of(os.stat(path).st_mode)


def _fail(path: str, message: str, hint: str | None, at: Span | None) -> UserError:
    if at is not None:
        return SpecError.single(at, message, hint)
    return UserError(path, message, hint)


def _kind_of(mode: int) -> str | None:
    """What a non-regular file is, for messages; None for a regular file."""
    if stat.S_ISREG(mode):
        return None
    if stat.S_ISDIR(mode):
        return "a folder"
    if stat.S_ISFIFO(mode):
        return "a FIFO (named pipe)"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a regular file"


def check_input(path: str | os.PathLike[str], kind: str, *, at: Span | None = None) -> int:
    """Refuse ``path`` unless it is a regular file within the limit for ``kind`` (see :data:`LIMITS`);
    returns its size.  Nothing is opened."""
    name = _NAMES[kind]
    where = str(path)
    # located at the path itself, the message need not repeat it; at a statement, it names the file
    subject = where if at is not None else "this"
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise _fail(where, "no such file" + (f": {where}" if at else ""), f"check the path of the {name}", at) from None
    except OSError as exc:
        reason, hint = explain_os_error(exc)
        raise _fail(where, f"cannot read the {name}" + (f" {where}" if at else "") + f": {reason}", hint, at) from None
    except (RuntimeError, ValueError) as exc:  # a path with a NUL byte, and the like
        raise _fail(where, f"cannot read the {name} {where}: {exc}", "check the path", at) from None
    what = _kind_of(info.st_mode)
    if what is not None:
        hint = "give a file" if what == "a folder" else "only regular files are read; save the data to a file first"
        raise _fail(where, f"{subject} is {what}, not a {name}", hint, at)
    limit = LIMITS[kind]
    if info.st_size > limit:
        raise _fail(
            where,
            f"{subject} is {info.st_size:,} bytes; a {name} may be at most {limit // MIB:,} MiB",
            "is this the right file?",
            at,
        )
    return int(info.st_size)


def read_bytes(path: str | os.PathLike[str], kind: str, *, at: Span | None = None) -> bytes:
    """The bytes of ``path``, a regular file of ``kind`` within its limit; every problem is a located error.

    The file is checked before it is opened, opened without blocking (a file swapped for a FIFO after the
    check cannot hang the read), checked again, and read up to the limit only.
    """
    check_input(path, kind, at=at)
    name = _NAMES[kind]
    where = str(path)
    limit = LIMITS[kind]
    doing = f"read the {name}" + (f" {where}" if at else "")
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise _fail(where, f"cannot {doing}: {explain_os_error(exc)[0]}", explain_os_error(exc)[1], at) from None
    try:
        if _kind_of(os.fstat(fd).st_mode) is not None:
            raise _fail(where, f"cannot {doing}: it is not a regular file", "only regular files are read", at)
        chunks: list[bytes] = []
        total = 0
        while total <= limit:
            chunk = os.read(fd, min(1 << 20, limit + 1 - total))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    except OSError as exc:
        raise _fail(where, f"cannot {doing}: {explain_os_error(exc)[0]}", explain_os_error(exc)[1], at) from None
    finally:
        os.close(fd)
    if total > limit:
        raise _fail(where, f"cannot {doing}: it grew past the {limit // MIB:,} MiB limit while it was read", None, at)
    return b"".join(chunks)


def _nearest_existing(path: Path) -> Path:
    """``path`` or its closest ancestor that exists (``.`` for a relative path with none)."""
    current = path
    while True:
        try:
            os.stat(current)
            return current
        except FileNotFoundError:
            parent = current.parent
            if parent == current:
                return current
            current = parent
        except NotADirectoryError:
            return current


def _check_folder_chain(path: Path, flag: str) -> None:
    """Every existing ancestor of ``path`` is a folder, and the nearest one can be written to."""
    base = _nearest_existing(path.parent if str(path.parent) else Path("."))
    try:
        info = os.stat(base)
    except OSError as exc:
        raise os_error(exc, base, "use the folder", where=flag) from None
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(flag, f"{base} is a file, so {path} cannot be created under it", "choose another path")
    if not os.access(base, os.W_OK | os.X_OK):
        raise UserError(flag, f"cannot write into {base}: permission denied", "choose a folder you can write to")


def check_output_file(path: str | os.PathLike[str], flag: str, *, replaceable: bool = True) -> Path:
    """Check, before any work, that ``path`` (given with ``flag``) can be written as one file.

    It may not be a folder or a device; an existing regular file is only replaced when ``replaceable``
    (the caller has checked it is a file of the kind it writes).  Missing parent folders are created at
    write time; an ancestor that is a file, or a folder that cannot be written, is refused now.
    """
    target = Path(path)
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        info = None  # reported by the folder check below
    except OSError as exc:
        raise os_error(exc, target, "write", where=flag) from None
    if info is not None:
        what = _kind_of(info.st_mode)
        if what is not None:
            raise UserError(flag, f"{target} is {what}, not a file", "give the path of a file to write")
        if not replaceable:
            raise UserError(
                flag, f"{target} exists and is not a file this command wrote", "choose another path, or move it aside"
            )
        if not os.access(target, os.W_OK) and not os.access(target.parent if str(target.parent) else ".", os.W_OK):
            raise UserError(flag, f"cannot replace {target}: permission denied", "choose another path")
    _check_folder_chain(target, flag)
    return target


def check_output_dir(path: str | os.PathLike[str], flag: str, files: tuple[str, ...]) -> Path:
    """Check, before any work, that ``path`` can hold the output ``files``: an existing folder (only those
    files are written in it) or a folder that can be created.  A path that is a file is refused."""
    target = Path(path)
    try:
        info: os.stat_result | None = os.stat(target)
    except FileNotFoundError:
        info = None
    except NotADirectoryError:
        info = None
    except OSError as exc:
        raise os_error(exc, target, "use the folder", where=flag) from None
    if info is None:
        _check_folder_chain(target / "x", flag)
        return target
    if not stat.S_ISDIR(info.st_mode):
        raise UserError(flag, f"{target} is {_kind_of(info.st_mode) or 'a file'}, not a folder", "give a folder")
    if not os.access(target, os.W_OK | os.X_OK):
        raise UserError(flag, f"cannot write into {target}: permission denied", "choose a folder you can write to")
    for name in files:
        check_output_file(target / name, flag)
    return target
