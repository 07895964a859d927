"""Read-ahead: parsed input waiting to be leased, so that a lease never waits for the disk.

A task reads the next chunks while the job serves what is already checked: in the event
loop when the bytes are already in the page cache (``Reader.cached``, probed for twice
the bytes the records seen so far suggest), in a thread when reading them could wait
for the disk, and for the first chunk, before any record is seen. Parsing needs the GIL
either way; handing it to a thread only added switches (a sixth of the throughput at
batches of 100 items). A chunk of records far longer than those before it can read past
the probe; the kernel's own read-ahead of a file read in order makes a wait there rare.
Records are kept as the reader gave them, in runs of good items (sliced, never one
object per record), each with its end offset, so a lease can take any number of items
and commit the exact position after the last one: what was read ahead but not leased is
simply read again after a restart. Memory is bounded by a count of items and of bytes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, NamedTuple

from .formats import Chunk, Reader
from .formats.base import READ_BUFFER

TARGET_ITEMS = 2000  # good items to keep parsed ahead (more while a bigger batch waits)
TARGET_BYTES = 8 * 2**20  # ... unless the input they come from is already this big
MAX_CHUNK = 1000  # records per read, fewer for long lines


class Closed(Exception):
    """The job stopped reading (closed or reopening) while a lease waited."""


class Run(NamedTuple):
    """Records read in one go: good items with consecutive ids, or one bad record."""

    first: int  # the id of the first record
    ends: list[int]  # the offset just past each record
    items: list[tuple[int, Any]]  # (id, item) for each record; empty for a bad one
    error: str | None = None  # a bad record: why


@dataclass
class Taken:
    """What one lease took: good items, bad records among and after them, and where the
    next record starts (its id and offset)."""

    items: list[tuple[int, Any]]
    bad: list[tuple[int, str]]
    next_id: int
    end: int


class ReadAhead:
    def __init__(self, reader: Reader, start: int, on_change: Callable[[], None]) -> None:
        self.reader = reader
        self.runs: collections.deque[Run] = collections.deque()
        self.good = 0  # good items in ``runs``
        self.eof = False
        self.failure: BaseException | None = None
        self._start = start  # offset where the first buffered record begins
        self._wanted = 0  # the biggest batch a lease is waiting for
        self._on_change = on_change
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
        self._line_bytes = 0  # the mean size of the last chunk's records; 0: none yet
        self._kick()

    # --- the consumer side ------------------------------------------------------------

    def has(self, n: int) -> bool:
        """Whether ``take(n)`` can serve a full batch (or all there is) right now."""
        return self.good >= n or self.eof or self.failure is not None

    async def ready(self, n: int) -> None:
        """Wait until ``has(n)``; raise what the reading task failed with, or ``Closed``."""
        self._wanted = max(self._wanted, n)
        while not self.has(n):
            if self._closed:
                raise Closed("the read-ahead was closed")
            self._changed.clear()
            self._kick()
            await self._changed.wait()
        if self.failure is not None:
            raise self.failure

    def take(self, n: int, fits: Callable[[int, Any], bool] | None = None) -> Taken | None:
        """Up to ``n`` good items, with the bad records among and before them, in id order;
        ``fits(id, item)`` False ends the batch before that item (a byte cap). None if
        nothing is buffered."""
        if not self.runs:
            return None
        taken = Taken([], [], 0, 0)
        while self.runs and len(taken.items) < n:
            run = self.runs[0]
            if run.error is not None:
                self._pop_bad(taken)
                continue
            k = min(n - len(taken.items), len(run.items))
            if fits is not None:
                k = _fitting(run.items, k, fits)
                if not k:
                    break
            self._take_from(run, k, taken)
        while self.runs and self.runs[0].error is not None:  # they need no worker
            self._pop_bad(taken)
        self.good -= len(taken.items)
        if taken.end:
            self._start = taken.end
        self._kick()
        return taken if taken.end else None

    def _take_from(self, run: Run, k: int, taken: Taken) -> None:
        taken.items += run.items[:k] if k < len(run.items) else run.items
        taken.next_id, taken.end = run.first + k, run.ends[k - 1]
        if k < len(run.items):
            self.runs[0] = Run(run.first + k, run.ends[k:], run.items[k:])
        else:
            self.runs.popleft()

    def _pop_bad(self, taken: Taken) -> None:
        run = self.runs.popleft()
        taken.bad.append((run.first, run.error or ""))
        taken.next_id, taken.end = run.first + 1, run.ends[0]

    @property
    def drained(self) -> bool:
        """Every record of the file has been taken."""
        return self.eof and not self.runs

    async def close(self) -> None:
        """Stop reading; wait for a read in progress, so the reader can be closed."""
        self._closed = True
        self._changed.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the reading task -----------------------------------------------------------

    def _buffered_bytes(self) -> int:
        return self.runs[-1].ends[-1] - self._start if self.runs else 0

    def _hungry(self) -> bool:
        if self.eof or self.failure is not None or self._closed:
            return False
        if self.good < self._wanted:
            return True
        return self.good < TARGET_ITEMS and self._buffered_bytes() < TARGET_BYTES

    def _kick(self) -> None:
        if self._hungry() and (self._task is None or self._task.done()):
            self._task = asyncio.create_task(self._fill(), name=f"read-ahead {self.reader.path}")

    async def _fill(self) -> None:
        try:
            while self._hungry():
                chunk = await self._read(self._chunk_size())
                self._add(chunk)
                if self.good >= self._wanted:
                    self._wanted = 0
                self._changed.set()
                self._on_change()
                await asyncio.sleep(0)  # a chunk read in the loop: let the others run
        except Exception as exc:  # told to whoever waits, and to the job
            self.failure = exc
            self._changed.set()
            self._on_change()

    async def _read(self, n: int) -> Chunk:
        """Read ``n`` records, in the loop if their bytes (twice as many as the records
        seen so far suggest) are cached, else in a thread."""
        if self._line_bytes and self.reader.cached(2 * n * self._line_bytes + READ_BUFFER):
            return self.reader.read(n)
        return await asyncio.to_thread(self.reader.read, n)

    def _chunk_size(self) -> int:
        """About a megabyte of input per read, judging by the last chunk; 100 records
        first, so that the first lease waits for little."""
        if not self._line_bytes:
            return 100
        return max(1, min(MAX_CHUNK, 2**20 // self._line_bytes))

    def _add(self, chunk: Chunk) -> None:
        if chunk.ends:
            before = self.runs[-1].ends[-1] if self.runs else self._start
            self._line_bytes = max(1, (chunk.ends[-1] - before) // len(chunk.ends))
        first = chunk.position.next_id - len(chunk.ends)
        if not chunk.errors and len(chunk.items) == len(chunk.ends):  # the usual case
            if chunk.items:
                self.runs.append(Run(first, chunk.ends, chunk.items))
        else:
            self._add_mixed(chunk, first)
        self.good += len(chunk.items)
        if not chunk.ends:
            self.eof = True

    def _add_mixed(self, chunk: Chunk, first: int) -> None:
        items = dict(chunk.items)
        errors = dict(chunk.errors)
        for k, end in enumerate(chunk.ends):
            i = first + k
            if i in items:
                self.runs.append(Run(i, [end], [(i, items[i])]))
            else:
                self.runs.append(Run(i, [end], [], errors.get(i, "unreadable record")))


def _fitting(items: list[tuple[int, Any]], k: int, fits: Callable[[int, Any], bool]) -> int:
    """How many of the first ``k`` items ``fits`` admits, in order."""
    for n, (item_id, item) in enumerate(items[:k]):
        if not fits(item_id, item):
            return n
    return k
