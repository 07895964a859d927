"""Retrying a job's failures: the files' side of ``JobBase.retry``, run in a thread.

The error file holds ids, not items, so a retry reads it up to its committed offset,
then reads those records again from the input in one streaming pass, and plans what
one Redis transaction commits: the items queued again (attempts 0, ``batch_size`` to a
batch), and the error lines that cannot go back (a record the reader still cannot read
or encode), kept for the fresh error file. ``finish_rotation`` then renames the old
error file to ``<error file>.<n>`` and writes the kept lines to a new one; every load
repeats it until Redis says it is done, so a crash at any point leaves the old state or
the new one, never a mix.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson

from .exceptions import FormatError
from .formats import ErrorLog, get_reader
from .formats.base import START
from .formats.files import checked_path, open_fd
from .spec import JobSpec
from .store import pack_leased

READ_ITEMS = 1000  # good records per read of the input


@dataclass(frozen=True)
class Plan:
    """What a retry commits: the batches to queue, how many items, the lines kept."""

    batches: list[bytes]
    items: int
    keep: bytes


def plan(spec: JobSpec, root: Path | None, upto: int) -> Plan:
    """The retry of the failures in the first ``upto`` bytes of the job's error file."""
    lines = list(_error_lines(Path(spec.error_path), root, upto))
    wanted = {i for i, _ in lines if i is not None}
    found = _read_items(spec, root, wanted) if wanted else []
    batches: list[bytes] = []
    queued: set[int] = set()
    for start in range(0, len(found), spec.batch_size):
        blob, good, _ = pack_leased(found[start:start + spec.batch_size])
        if good:  # an item that cannot be encoded stays in the error file
            batches.append(blob)
            queued.update(i for i, _, _ in good)
    keep = b"".join(line for i, line in lines if i not in queued)
    return Plan(batches, len(queued), keep)


def _error_lines(path: Path, root: Path | None, upto: int) -> Iterator[tuple[int | None, bytes]]:
    """Each committed line with its id (None: not one of ours); an id seen again is
    dropped. The bytes past ``upto`` (a flush that never committed) are cut off first,
    so the file that is rotated holds exactly what Redis counts."""
    log = ErrorLog(path, root=root)
    log.open(upto)  # truncates to the committed offset, or refuses a file cut short
    log.close()
    seen: set[int] = set()
    with os.fdopen(open_fd(path, root, os.O_RDONLY), "rb") as file:
        left = upto
        while left > 0:
            line = file.readline(left)
            if not line:
                break
            left -= len(line)
            record_id = _id_of(line)
            if record_id is None:  # written by someone else: kept, as valid UTF-8
                yield None, line.decode("utf-8", "replace").encode()
            elif record_id not in seen:
                seen.add(record_id)
                yield record_id, line


def _id_of(line: bytes) -> int | None:
    try:
        record = orjson.loads(line)
    except orjson.JSONDecodeError:
        return None
    record_id = record.get("id") if isinstance(record, dict) else None
    return record_id if type(record_id) is int else None


def _read_items(spec: JobSpec, root: Path | None, wanted: set[int]) -> list[tuple[int, Any]]:
    """The good records among ``wanted`` ids, read from the input in one pass, in order."""
    reader = get_reader(spec.reader or "")(Path(spec.input_path or ""), spec.metadata,
                                           root=root)
    last = max(wanted)
    found: list[tuple[int, Any]] = []
    try:
        reader.open(START)
        while True:
            chunk = reader.read(READ_ITEMS)
            if not chunk.items and not chunk.errors:
                break
            found += [(i, item) for i, item in chunk.items if i in wanted]
            if chunk.position.next_id > last:
                break
    finally:
        reader.close()
    return found


def free_path(error_path: str, start: int = 1) -> tuple[str, int]:
    """The first ``<error_path>.<n>`` (n >= ``start``) that does not exist, and its n."""
    n = start
    while os.path.lexists(f"{error_path}.{n}"):
        n += 1
    return f"{error_path}.{n}", n


def finish_rotation(error_path: str, rotated: str, keep: bytes, root: Path | None) -> None:
    """Rename the error file to ``rotated`` unless that is done, then start the new one
    with ``keep``; durable once it returns. Safe to repeat after a crash at any point."""
    error, target = checked_path(Path(error_path), root), checked_path(Path(rotated), root)
    try:
        if os.path.lexists(error) and not os.path.lexists(target):
            os.rename(error, target)
        start_error_file(error, keep, root)
        _fsync_dir(error.parent)
    except OSError as exc:
        raise FormatError(f"cannot rotate {error_path} to {rotated}: "
                          f"{exc.strerror or exc}") from exc


def start_error_file(error: Path, keep: bytes, root: Path | None) -> None:
    """Write the new error file: the ``keep`` lines (none: it is created when opened)."""
    if not keep:
        return
    fd = open_fd(error, root, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
    try:
        view = memoryview(keep)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        with contextlib.suppress(OSError):  # some file systems cannot; the rename stands
            os.fsync(fd)
    finally:
        os.close(fd)


def shown(path: str, root: Path | None) -> str:
    """``path`` as users name files: relative to the data directory."""
    if root is not None:
        with contextlib.suppress(ValueError):
            return str(Path(path).relative_to(root.resolve()))
    return path
