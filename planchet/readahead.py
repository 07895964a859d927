"""Read-ahead: parsed input waiting to be leased, so that a lease never waits for the disk.

A task reads the next chunks in a thread while the job serves what is already parsed.
Each record keeps its end offset, so a lease can take any number of items and commit
the exact position after the last one: what was read ahead but not leased is simply
read again after a restart. Memory is bounded by a count of items and a count of bytes.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any, NamedTuple

from .formats import Chunk, Reader

TARGET_ITEMS = 2000  # good items to keep parsed ahead (more while a bigger batch waits)
TARGET_BYTES = 8 * 2**20  # ... unless the input they come from is already this big
MAX_CHUNK = 1000  # records per read, fewer for long lines


class Closed(Exception):
    """The job stopped reading (closed or reopening) while a lease waited."""


class Record(NamedTuple):
    """One input record: its id, the offset just past it, and its item or its error."""

    id: int
    end: int
    item: Any
    error: str | None  # None: a good item


class ReadAhead:
    def __init__(self, reader: Reader, start: int, on_change: Callable[[], None]) -> None:
        self.reader = reader
        self.records: collections.deque[Record] = collections.deque()
        self.good = 0  # good items in ``records``
        self.eof = False
        self.failure: BaseException | None = None
        self._start = start  # offset where the first buffered record begins
        self._wanted = 0  # the biggest batch a lease is waiting for
        self._on_change = on_change
        self._changed = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._closed = False
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

    def take(self, n: int, fits: Callable[[int, Any], bool] | None = None) -> list[Record]:
        """Up to ``n`` good items, with the bad records among and before them, in id order;
        ``fits(id, item)`` False ends the batch before that item (a byte cap)."""
        taken: list[Record] = []
        good = 0
        while self.records and good < n:
            record = self.records[0]
            if record.error is None and fits is not None and not fits(record.id, record.item):
                break
            taken.append(self.records.popleft())
            good += record.error is None
        # bad records right after the batch go with it: they need no worker
        while self.records and self.records[0].error is not None:
            taken.append(self.records.popleft())
        self.good -= good
        if taken:
            self._start = taken[-1].end
        self._kick()
        return taken

    @property
    def drained(self) -> bool:
        """Every record of the file has been taken."""
        return self.eof and not self.records

    async def close(self) -> None:
        """Stop reading; wait for a read in progress, so the reader can be closed."""
        self._closed = True
        self._changed.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)

    # --- the reading task -----------------------------------------------------------

    def _buffered_bytes(self) -> int:
        return self.records[-1].end - self._start if self.records else 0

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
                chunk = await asyncio.to_thread(self.reader.read, self._chunk_size())
                self._add(chunk)
                if self.good >= self._wanted:
                    self._wanted = 0
                self._changed.set()
                self._on_change()
        except Exception as exc:  # told to whoever waits, and to the job
            self.failure = exc
            self._changed.set()
            self._on_change()

    def _chunk_size(self) -> int:
        """About a megabyte of input per read, judging by the lines seen so far."""
        if not self.records:
            return 100
        per_line = max(1, self._buffered_bytes() // len(self.records))
        return max(1, min(MAX_CHUNK, 2**20 // per_line))

    def _add(self, chunk: Chunk) -> None:
        first = chunk.position.next_id - len(chunk.ends)
        items = dict(chunk.items)
        errors = dict(chunk.errors)
        for k, end in enumerate(chunk.ends):
            i = first + k
            if i in items:
                self.records.append(Record(i, end, items[i], None))
            else:
                self.records.append(Record(i, end, None, errors.get(i, "unreadable record")))
        self.good += len(chunk.items)
        if not chunk.ends:
            self.eof = True
