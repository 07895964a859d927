"""``watch`` and ``status``: pushed at once then per tick, built once for all watchers,
with each job's workers (by kind), errors and history, hidden from whoever may not see
them; and ``GET /metrics``. Real Redis, real sockets."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families
from websockets.asyncio.client import ClientConnection, connect

from planchet.aclient import AsyncPlanchetClient
from planchet.client import PlanchetClient
from planchet.codec import encode
from planchet.errortail import LAST, MAX_TEXT, TAIL_BYTES, read_tail
from planchet.messages import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Credit,
    Grant,
    Hello,
    ItemError,
    Reply,
    Result,
    Status,
    Watch,
    Welcome,
)
from planchet.server import PlanchetServer
from tests.support import REPO, clean_env, eventually
from tests.test_server import greet, recv, request, start_job, url_of
from tests.test_server_guard import EVIL
from tests.test_web import fetch

MakeServer = Callable[..., Awaitable[PlanchetServer]]
MASTER = "master-watch"
ADMIN = "admin-of-j"


async def watch(ws: ClientConnection, interval: float = 0.25, jobs: list[str] | None = None,
                token: str | None = None, id: int = 5) -> Status:
    """Send a watch; check the reply comes first and the first status right after."""
    await ws.send(encode(Watch(id=id, jobs=jobs, interval=interval, token=token)))
    reply = await recv(ws)
    assert isinstance(reply, Reply) and reply.id == id, reply
    assert reply.data == {"interval": interval, "jobs": jobs}
    status = await recv(ws)
    assert isinstance(status, Status), status
    return status


async def next_status(ws: ClientConnection) -> Status:
    """The next status frame, skipping anything else the connection gets meanwhile."""
    while True:
        message = await recv(ws)
        if isinstance(message, Status):
            return message


async def status_until(ws: ClientConnection, check: Callable[[Status], Any], what: str) -> Any:
    """Statuses until ``check`` says yes (bounded by ``eventually``'s deadline)."""
    found: list[Any] = []

    async def seen() -> bool:
        value = check(await next_status(ws))
        found[:] = [value]
        return bool(value)

    await eventually(seen, what)
    return found[0]


def job_of(status: Status, name: str = "j") -> dict[str, Any]:
    return next(job for job in status.jobs if job["job"] == name)


async def raw_hello(server: PlanchetServer, client: str | None, **headers: str
                    ) -> ClientConnection:
    """A connection whose hello says ``client`` (and whose upgrade carries ``headers``)."""
    ws = await connect(url_of(server), max_size=None, additional_headers=headers or None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, client=client)))
    assert isinstance(await recv(ws), Welcome)
    return ws


# --- pushing --------------------------------------------------------------------------------


async def test_status_comes_at_once_and_then_each_tick(
    server: PlanchetServer, issues_input: Path
) -> None:
    """The reply, a status at once with the job's report, workers, errors and history,
    then one status per tick, each later than the one before."""
    ws = await greet(server)
    assert isinstance(await request(ws, start_job()), Reply)
    first = await watch(ws)
    job = job_of(first)
    assert job["read"] == 0 and job["state"] == "running" and "eta_seconds" in job
    assert job["workers"] == [] and job["errors"] == [] and isinstance(job["history"], list)
    assert first.server["connections"] == 1 and first.server["redis"] == "online"
    times = [first.time]
    for _ in range(3):
        times.append((await next_status(ws)).time)
    assert times == sorted(set(times))


async def test_interval_zero_stops_and_a_second_watch_replaces_the_first(
    server: PlanchetServer, issues_input: Path
) -> None:
    """A second watch replaces the first (its jobs, its interval); interval 0 stops it."""
    ws = await greet(server)
    await request(ws, start_job())
    assert [j["job"] for j in (await watch(ws)).jobs] == ["j"]
    replaced = await watch(ws, interval=60.0, jobs=[], id=6)  # the first one's may come between
    while replaced.jobs:
        replaced = await next_status(ws)
    board = server.dispatcher.board
    assert board.watchers == 1
    await ws.send(encode(Watch(id=7, interval=0.0)))
    while not isinstance(reply := await recv(ws), Reply):
        assert isinstance(reply, Status) and reply.jobs == []  # the second watch's, if any
    assert reply.data == {"interval": 0.0, "jobs": None}
    await eventually(lambda: board.watchers == 0, "the watch stopped")


async def test_one_build_per_tick_for_every_watcher(
    server: PlanchetServer, issues_input: Path
) -> None:
    """Eight watchers at the same interval share one status per tick: the builds are
    the distinct statuses they got, far fewer than the statuses sent."""
    conns = [await greet(server) for _ in range(8)]
    board = server.dispatcher.board
    before = board.builds
    got = [[await watch(ws)] for ws in conns]
    for frames, ws in zip(got, conns, strict=True):
        for _ in range(3):
            frames.append(await next_status(ws))
    for ws in conns:  # no build after the statuses counted
        await request(ws, Watch(id=9, interval=0.0))
    distinct = {status.time for frames in got for status in frames}
    assert board.builds - before == len(distinct)
    assert len(distinct) <= 4 + 8  # three ticks shared by all; each first status at worst
    assert len(distinct) < sum(map(len, got)) / 2


async def test_async_client_watch_iterates_statuses(
    server: PlanchetServer, issues_input: Path
) -> None:
    """AsyncPlanchetClient.watch yields Status frames; leaving the loop stops the watch."""
    async with AsyncPlanchetClient(url_of(server)) as client:
        await client.start_job("j", {"input_file_path": "in.jsonl",
                                     "output_file_path": "out.jsonl"}, "JsonlReader",
                               "JsonlWriter")
        statuses = []
        async for status in client.watch(jobs=["j"], interval=0.25):
            statuses.append(status)
            if len(statuses) == 2:
                break
        assert [job_of(s)["job"] for s in statuses] == ["j", "j"]
        await eventually(lambda: server.dispatcher.board.watchers == 0, "the watch stopped")


# --- workers --------------------------------------------------------------------------------


def kinds(status: Status) -> dict[str, dict[str, Any]]:
    return {w["kind"]: w for w in job_of(status)["workers"]}


async def test_workers_show_their_kind_and_counts_and_leave(
    server: PlanchetServer, issues_input: Path
) -> None:
    """A blocking client, an asyncio client, ``planchet work`` and a browser hello show up
    as workers of their kind with their leases; counts move; they go when they leave."""
    admin = await greet(server)
    await request(admin, start_job(batch_size=5))
    await watch(admin, interval=0.25)
    url = url_of(server)
    blocking = PlanchetClient(url)
    await asyncio.to_thread(blocking.get, "j", 5)
    aclient = AsyncPlanchetClient(url)
    await aclient.connect()
    batches = aclient.batches("j", prefetch=1)
    await anext(batches)
    work = subprocess.Popen(  # a worker whose program never answers: it holds its lease
        [sys.executable, "-m", "planchet", "work", "j", "--url", url, "--prefetch", "1", "--",
         sys.executable, "-c", "import time; time.sleep(600)"],
        env={**clean_env(), "PYTHONPATH": str(REPO)}, cwd=REPO,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    browser = await raw_hello(server, "planchet-js/1.0.0 browser", Origin="http://localhost:1")
    try:
        await browser.send(encode(Credit(job="j", batches=1)))
        batch = await recv(browser)
        assert isinstance(batch, Batch)
        everyone = {"blocking", "asyncio", "work", "browser"}
        seen = await status_until(admin, lambda s: kinds(s).keys() >= everyone and kinds(s),
                                  "all four kinds of worker")
        assert all(w["leases"] == 1 and w["in_flight"] == 5 for w in seen.values())
        assert seen["browser"]["client"] == "planchet-js/1.0.0 browser"
        assert seen["browser"]["address"].startswith("127.0.0.1:")
        assert len({w["id"] for w in seen.values()}) == 4
        await browser.send(encode(Result(job="j", lease=batch.lease, items=batch.items[:4],
                                         errors=[ItemError(id=batch.items[4][0], message="x")])))
        moved = await status_until(admin, lambda s: kinds(s).get("browser", {}).get("done"),
                                   "the browser's count")
        assert moved == 4
        browser_w = kinds(await next_status(admin))["browser"]
        assert browser_w["failed"] == 1 and browser_w["rate"] > 0
    finally:
        await browser.close()
        await batches.aclose()
        await aclient.close()
        await asyncio.to_thread(blocking.close)
        work.kill()
        work.wait()
    await status_until(admin, lambda s: not job_of(s)["workers"], "every worker gone")


@pytest.mark.parametrize(("client", "origin", "kind"), [
    ("planchet-python/1.0.0 blocking", None, "blocking"),
    ("planchet-js/1.0.0 node", None, "node"),
    ("curl", None, "other"),
    (None, "http://localhost:8000", "browser"),
    (None, None, "other"),
])
async def test_a_raw_hello_gets_its_kind(
    server: PlanchetServer, issues_input: Path, client: str | None, origin: str | None,
    kind: str
) -> None:
    """The kind comes from hello.client; a page without one is a browser; else other."""
    admin = await greet(server)
    await request(admin, start_job())
    headers = {"Origin": origin} if origin else {}
    ws = await raw_hello(server, client, **headers)
    await ws.send(encode(Credit(job="j", batches=1)))
    status = await watch(admin)
    workers = await status_until(admin, lambda s: job_of(s)["workers"], "the worker") \
        if not job_of(status)["workers"] else job_of(status)["workers"]
    assert [w["kind"] for w in workers] == [kind]
    await ws.close()


# --- errors -----------------------------------------------------------------------------------


async def test_the_errors_tail_shows_the_last_errors(
    server: PlanchetServer, issues_input: Path
) -> None:
    """Failed items appear in the job's errors, the last ten, newest last; the file is
    read again only when its committed offset moved."""
    ws = await greet(server)
    await request(ws, start_job(batch_size=20))
    await ws.send(encode(Credit(job="j", batches=1)))
    batch = await recv(ws)
    assert isinstance(batch, Batch)
    errors = [ItemError(id=i, message=f"broken {i}", retry=False) for i, _ in batch.items]
    await ws.send(encode(Result(job="j", lease=batch.lease, errors=errors)))
    assert isinstance(await recv(ws), Ack)
    viewer = await greet(server)
    await watch(viewer)
    shown = await status_until(viewer, lambda s: job_of(s)["errors"], "the errors")
    ids = [i for i, _ in batch.items]
    assert [e["id"] for e in shown] == ids[-LAST:]
    assert shown[-1] == {"id": ids[-1], "error": f"broken {ids[-1]}", "attempts": 1}
    tails = server.dispatcher.board.tails
    reads = tails.reads
    for _ in range(3):
        await next_status(viewer)
    assert tails.reads == reads  # nothing new committed: not read again


def test_a_huge_error_file_is_read_by_its_tail_only(tmp_path: Path) -> None:
    """A 64 GiB (sparse) error file: its last errors come back at once, each cut short,
    and a line longer than the window is skipped, never read whole."""
    path = tmp_path / "errors.jsonl"
    with open(path, "wb") as f:
        f.seek(64 * 2**30)
        f.write(b'\n{"id": 1, "error": "' + b"y" * (2 * TAIL_BYTES) + b'"}\n')
        for i in range(2, 30):
            f.write(b'{"id": %d, "error": "%s", "attempts": 5}\n' % (i, b"x" * 5000))
        end = f.tell()
    tail = read_tail(str(path), end)
    assert [e["id"] for e in tail] == list(range(20, 30))
    assert all(len(e["error"]) == MAX_TEXT and e["attempts"] == 5 for e in tail)
    with open(path, "ab") as f:
        f.write(b'{"id": 30, "error": "' + b"z" * (2 * TAIL_BYTES) + b'"}\n')
    assert read_tail(str(path), os.path.getsize(path)) == []  # the window holds no whole line


# --- who sees workers and errors ------------------------------------------------------------


async def test_workers_and_errors_only_for_the_jobs_admins(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A job with a token: its workers and errors go to its token and the master token
    (in hello or in the watch), never to a worker token or no token; counts go to all."""
    server = await make_server(token=MASTER)
    master = await greet(server, token=MASTER)
    await request(master, start_job(token=ADMIN))
    granted = await request(master, Grant(id=2, jobs=["j"]))
    assert isinstance(granted, Reply)
    worker_token = granted.data["token"]
    worker = await greet(server, token=worker_token)
    await worker.send(encode(Credit(job="j", batches=1)))
    assert isinstance(await recv(worker), Batch)

    async def sees(ws: ClientConnection, token: str | None = None) -> bool:
        job = job_of(await watch(ws, token=token))
        assert job["read"] > 0  # counts are public
        assert (job["workers"] is None) == (job["errors"] is None)
        return job["workers"] is not None

    assert await sees(master)
    assert await sees(await greet(server, token=ADMIN))
    assert await sees(await greet(server), token=ADMIN)
    assert await sees(await greet(server), token=MASTER)
    assert not await sees(await greet(server))
    assert not await sees(worker)
    assert not await sees(await greet(server, token=ADMIN), token=worker_token)
    assert not await sees(await greet(server), token="wrong")


# --- /metrics ---------------------------------------------------------------------------------


def families(text: str) -> dict[str, Any]:
    return {f.name: f for f in text_string_to_metric_families(text)}


def value(family: Any, suffix: str = "", **labels: str) -> float:
    return next(s.value for s in family.samples
                if s.name == family.name + suffix and all(s.labels.get(k) == v
                                                          for k, v in labels.items()))


async def test_metrics_in_prometheus_text(server: PlanchetServer, issues_input: Path) -> None:
    """/metrics parses as Prometheus text with each job's counts, the connections, the
    leases and the Redis latency histogram; a foreign Origin gets 403."""
    ws = await greet(server)
    await request(ws, start_job(batch_size=10))
    await request(ws, start_job("k", id=2, batch_size=10, metadata={
        "input_file_path": "in.jsonl", "output_file_path": "out-k.jsonl"}))
    await ws.send(encode(Credit(job="j", batches=2)))
    first, second = await recv(ws), await recv(ws)
    assert isinstance(first, Batch) and isinstance(second, Batch)
    items = first.items
    await ws.send(encode(Result(job="j", lease=first.lease, items=items[:7], errors=[
        ItemError(id=i, message="no", retry=False) for i, _ in items[7:]])))
    answers = [await recv(ws), await recv(ws)]  # the ack, and the batch it made room for
    assert {type(a) for a in answers} == {Ack, Batch}
    board = server.dispatcher.board
    await eventually(lambda: sum(board.latency.counts), "a Redis PING timed")
    answer = await fetch(server.port, "/metrics")
    assert answer.status == 200 and answer.headers["content-type"].startswith("text/plain")
    m = families(answer.body.decode())
    assert value(m["planchet_items_read"], "_total", job="j") == 30
    assert value(m["planchet_items_written"], "_total", job="j") == 7
    assert value(m["planchet_items_failed"], "_total", job="j") == 3
    assert value(m["planchet_items_written"], "_total", job="k") == 0
    assert value(m["planchet_in_flight"], job="j") == 20
    assert value(m["planchet_leases"], job="j") == 2
    assert value(m["planchet_queued"], job="j") == 0
    assert value(m["planchet_connections"]) == 1
    assert value(m["planchet_redis_latency_seconds"], "_count") >= 1
    assert (await fetch(server.port, "/metrics", Origin=EVIL)).status == 403
