"""Opening files as a server that trusts no path should.

A path checked when the job started can be swapped for a link, a FIFO or a device
later, so every open checks again: the directories are resolved and must stay inside
the data directory (and out of its private corner), the last part is never followed
(``O_NOFOLLOW``), and the file is opened non-blocking and refused unless ``fstat``
says it is a regular file, so a FIFO cannot hang the server in ``open()``.
"""

from __future__ import annotations

import errno
import os
import stat
from pathlib import Path

from planchet.exceptions import FormatError
from planchet.paths import refusal, resolve_parent

NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
NONBLOCK = getattr(os, "O_NONBLOCK", 0)

_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
    stat.S_IFSOCK: "a socket",
    stat.S_IFLNK: "a symbolic link (never followed)",
}
_REASONS = {
    errno.ELOOP: "it is a symbolic link (never followed)",
    errno.EISDIR: "it is a directory, not a regular file",
    errno.ENXIO: "it is not a regular file (a FIFO or a socket)",
}


def checked_path(path: Path, root: Path | None) -> Path:
    """The name to open: directories resolved, last part as is; refused outside ``root``.

    ``root`` is the data directory; None skips the check (for tests of the formats).
    """
    if root is None:
        return Path(path)
    target = resolve_parent(path)
    reason = refusal(root, target)
    if reason:
        raise FormatError(f"cannot open {path}: it is {reason}")
    return target


def open_fd(path: Path, root: Path | None, flags: int) -> int:
    """Open a regular file without following a final link or blocking; return the fd."""
    target = checked_path(path, root)
    try:
        fd = os.open(target, flags | NOFOLLOW | NONBLOCK | os.O_CLOEXEC, 0o666)
    except OSError as exc:
        raise FormatError(f"cannot open {path}: {_reason(exc)}") from exc
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise FormatError(f"cannot open {path}: it is {_kind(mode)}, not a regular file")
        os.set_blocking(fd, True)  # regular files ignore it; clear it all the same
    except OSError as exc:
        os.close(fd)
        raise FormatError(f"cannot open {path}: {exc.strerror or exc}") from exc
    except BaseException:
        os.close(fd)
        raise
    return fd


def check_regular(path: Path, root: Path | None) -> int:
    """The size of ``path``, a regular file inside ``root``; FormatError otherwise.

    Like ``open_fd`` it never follows a final link, and it opens nothing: safe to call
    on a path that has become a FIFO.
    """
    target = checked_path(path, root)
    try:
        info = os.lstat(target)
    except FileNotFoundError as exc:
        raise FormatError(f"cannot open {path}: no such file") from exc
    except OSError as exc:
        raise FormatError(f"cannot stat {path}: {exc.strerror or exc}") from exc
    if not stat.S_ISREG(info.st_mode):
        raise FormatError(f"cannot open {path}: it is {_kind(info.st_mode)}, not a regular file")
    return info.st_size


def _kind(mode: int) -> str:
    return _KINDS.get(stat.S_IFMT(mode), "a special file")


def _reason(exc: OSError) -> str:
    return _REASONS.get(exc.errno or 0, exc.strerror or str(exc))
