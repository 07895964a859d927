"""The last errors of each job's error file, for ``watch``: read by offset and bounded.

At most the last ``TAIL_BYTES`` before the committed error offset are read (so a huge
error file costs no more than a small one), each error's text is cut to ``MAX_TEXT``
characters, and a file is read again only when its committed offset (or the file, after
a retry rotated it) changed. Every read of a round happens in one thread, off the loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

if TYPE_CHECKING:
    from .jobs import Job

TAIL_BYTES = 64 * 1024
LAST = 10  # errors shown per job, newest last
MAX_TEXT = 1000  # characters of one error's text

Key = tuple[str, int, int]  # path, committed offset, retries so far
Tail = list[dict[str, Any]]


def read_tail(path: str, end: int, limit: int = TAIL_BYTES, last: int = LAST) -> Tail:
    """The last ``last`` records among the complete lines before offset ``end``."""
    start = max(0, end - limit)
    try:
        with open(path, "rb") as file:
            file.seek(max(0, start - 1))
            data = file.read(end - start + (1 if start else 0))
    except OSError:
        return []
    if start:  # the byte before ``start`` says whether the first line is whole
        data = data[data.find(b"\n") + 1:] if b"\n" in data else b""
    records: Tail = []
    for line in reversed(data.split(b"\n")):
        if len(records) == last:
            break
        record = _record(line)
        if record is not None:
            records.append(record)
    return records[::-1]


def _record(line: bytes) -> dict[str, Any] | None:
    try:
        record = orjson.loads(line) if line else None
    except orjson.JSONDecodeError:
        return None
    if not isinstance(record, dict):
        return None
    error = record.get("error")
    text = error if isinstance(error, str) else str(error)
    return {"id": record.get("id"), "error": text[:MAX_TEXT], "attempts": record.get("attempts")}


class ErrorTails:
    """The tail of every job's error file, read again only when its offset moved."""

    def __init__(self) -> None:
        self._tails: dict[str, tuple[Key, Tail]] = {}
        self.reads = 0  # files read so far (tests count them)

    async def refresh(self, jobs: Iterable[Job]) -> None:
        """Read, in one thread, the tails whose committed offset changed."""
        wanted = {job.name: _key(job) for job in jobs}
        for name in [n for n in self._tails if n not in wanted]:
            del self._tails[name]
        stale = {name: key for name, key in wanted.items()
                 if name not in self._tails or self._tails[name][0] != key}
        if not stale:
            return
        read = await asyncio.to_thread(_read_all, stale)
        self.reads += len(stale)
        for name, key in stale.items():
            self._tails[name] = key, read[name]

    def get(self, name: str) -> Tail:
        entry = self._tails.get(name)
        return entry[1] if entry else []


def _key(job: Job) -> Key:
    return job.spec.error_path, job.counts.get("err_offset", 0), len(job.retries)


def _read_all(stale: dict[str, Key]) -> dict[str, Tail]:
    return {name: read_tail(path, end) if end else [] for name, (path, end, _) in stale.items()}
