"""The read-ahead reads in the event loop only what the page cache holds, on real files."""

from __future__ import annotations

import asyncio
import gzip
import os
import threading
from pathlib import Path

import pytest

from planchet.formats import Chunk, JsonlReader
from planchet.readahead import ReadAhead

LINES = b"".join(b'{"n": %d, "text": "%s"}\n' % (i, b"x" * (i % 50)) for i in range(5000))


class Traced(JsonlReader):
    """A JsonlReader that notes the thread of each read."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, {})
        self.threads: list[threading.Thread] = []

    def read(self, n: int) -> Chunk:
        self.threads.append(threading.current_thread())
        return super().read(n)


def evicted(path: Path) -> bool:
    """Drop the file's pages from the page cache; False if they stay (tmpfs keeps them)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        try:
            return os.preadv(fd, [bytearray(4096)], 0, os.RWF_NOWAIT) < 4096
        except BlockingIOError:
            return True
    finally:
        os.close(fd)


async def read_through(reader: Traced) -> int:
    """Lease everything through a ReadAhead; the number of items taken."""
    ahead = ReadAhead(reader, 0, lambda: None)
    taken = 0
    while not ahead.drained:
        await ahead.ready(100)
        got = ahead.take(100)
        taken += len(got.items) if got else 0
    await ahead.close()
    return taken


def test_a_file_in_the_page_cache_is_read_in_the_event_loop(tmp_path: Path) -> None:
    """Once the first chunk (read in a thread: no record seen to size the probe) says
    how long records are, cached chunks are read in the loop."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(LINES)
    path.read_bytes()  # cached now
    reader = Traced(path)
    reader.open()
    assert asyncio.run(read_through(reader)) == 5000
    first, *rest = reader.threads
    assert first is not threading.main_thread()
    assert rest and set(rest) == {threading.main_thread()}


def test_a_gzip_file_is_read_in_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(gzip.compress(LINES))
    reader = Traced(path)
    reader.open()
    assert not reader.cached(100)  # a gzip stream cannot be probed
    assert asyncio.run(read_through(reader)) == 5000
    assert threading.main_thread() not in reader.threads


def test_cached_says_whether_reading_could_wait_for_the_disk(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(LINES)
    reader = JsonlReader(path, {})
    reader.open()
    if not evicted(path):
        pytest.skip("this filesystem keeps the file's pages in memory")
    assert not reader.cached(len(LINES))
    path.read_bytes()
    assert reader.cached(len(LINES))
    assert reader.cached(10 * len(LINES))  # all that is left of it
    reader.read(5000)
    assert reader.cached(100)  # at the end: a read returns at once
    reader.close()
    assert not reader.cached(100)


def test_a_cold_file_is_read_in_a_thread(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(LINES)
    reader = Traced(path)
    reader.open()
    if not evicted(path):
        pytest.skip("this filesystem keeps the file's pages in memory")
    assert asyncio.run(read_through(reader)) == 5000
    assert reader.threads[0] is not threading.main_thread()


def test_a_consumer_that_keeps_up_still_gets_big_chunks(tmp_path: Path) -> None:
    """A lease that empties the buffer each time must not shrink every later read to one
    batch: after the first chunk, reads are sized by bytes (a thousand of these records),
    so 5,000 records take a handful of reads, not fifty."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(LINES)
    reader = Traced(path)
    reader.open()
    assert asyncio.run(read_through(reader)) == 5000
    assert len(reader.threads) <= 7  # the first 100, then 1,000 at a time, then the end
