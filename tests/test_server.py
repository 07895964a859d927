"""The WebSocket server over real sockets: handshake, bad frames, close codes, /health."""

from __future__ import annotations

import asyncio
import urllib.error
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from planchet.codec import decode_server, encode
from planchet.embedded import RedisProcess
from planchet.messages import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Credit,
    Error,
    Event,
    Hello,
    JobCommand,
    Message,
    Reply,
    Result,
    StartJob,
    Welcome,
)
from planchet.server import PlanchetServer
from tests.support import eventually

LINES = 830
WAIT = 20.0  # seconds: a bound on waiting for what must happen, never a threshold
LIMIT = 4096  # max_message_bytes of the servers that test oversize frames

MakeServer = Callable[..., Awaitable[PlanchetServer]]


def url_of(server: PlanchetServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


async def recv(ws: ClientConnection) -> Message:
    return decode_server(await asyncio.wait_for(ws.recv(), WAIT))


async def greet(server: PlanchetServer, token: str | None = None) -> ClientConnection:
    """A connection that has said hello and been welcomed."""
    ws = await connect(url_of(server), max_size=None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, token=token, client="tests")))
    welcome = await recv(ws)
    assert isinstance(welcome, Welcome)
    return ws


async def request(ws: ClientConnection, message: Message) -> Reply | Error:
    """Send a request; its reply or error, skipping batches and events meanwhile."""
    await ws.send(encode(message))
    while True:
        answer = await recv(ws)
        if isinstance(answer, Reply | Error) and answer.id == message.id:  # type: ignore[attr-defined]
            return answer


async def refused(ws: ClientConnection) -> tuple[list[Message], int | None]:
    """Every frame until the server closes the connection, and the close code."""
    frames: list[Message] = []
    try:
        while True:
            frames.append(await recv(ws))
    except ConnectionClosed:
        pass
    return frames, ws.close_code


def start_job(job: str = "j", **fields: Any) -> StartJob:
    base: dict[str, Any] = {
        "id": 1,
        "job": job,
        "reader": "JsonlReader",
        "writer": "JsonlWriter",
        "metadata": {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"},
        "batch_size": 5,
    }
    base.update(fields)
    return StartJob(**base)


async def report(ws: ClientConnection, job: str = "j") -> dict[str, Any]:
    reply = await request(ws, JobCommand(type="report", id=99, job=job))
    assert isinstance(reply, Reply), reply
    return reply.data


async def until_requeued(ws: ClientConnection, count: int) -> None:
    """Wait (up to ``WAIT`` s) until the leases are back: ``count`` queued, none in flight."""

    async def requeued() -> bool:
        state = await report(ws)
        return state["in_flight"] == 0 and state["queued"] == count

    await eventually(requeued, f"{count} items back in the queue", WAIT)


def http_get(url: str) -> tuple[int, dict[str, Any]]:
    try:
        with urllib.request.urlopen(url, timeout=WAIT) as response:
            return response.status, orjson.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, orjson.loads(exc.read())


async def run_job(ws: ClientConnection, job: str = "j", batches: int = 2) -> int:
    """Echo every batch until the job is done; the number of items written."""
    await ws.send(encode(Credit(job=job, batches=batches)))
    written = 0
    while True:
        message = await recv(ws)
        if isinstance(message, Batch):
            await ws.send(encode(Result(job=job, lease=message.lease, items=message.items)))
        elif isinstance(message, Ack):
            written += message.written
        elif isinstance(message, Event) and message.event == "done":
            return written


def output_ids(path: Path) -> list[int]:
    return sorted(orjson.loads(line)["id"] for line in path.read_bytes().splitlines())


# --- the happy path ------------------------------------------------------------------------


async def test_a_whole_job_over_a_socket(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    ws = await greet(server)
    reply = await request(ws, start_job(batch_size=50))
    assert isinstance(reply, Reply) and reply.data["state"] == "running"
    assert await run_job(ws) == LINES
    state = await report(ws)
    assert (state["state"], state["written"], state["failed"]) == ("done", LINES, 0)
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    await ws.close()


async def test_two_workers_share_a_job(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    admin = await greet(server)
    assert isinstance(await request(admin, start_job(batch_size=20)), Reply)
    one, two = await greet(server), await greet(server)
    written = await asyncio.gather(run_job(one, batches=3), run_job(two, batches=1))
    assert sum(written) == LINES
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    for ws in (admin, one, two):
        await ws.close()


async def test_welcome_tells_the_limits(make_server: MakeServer) -> None:
    server = await make_server(max_message_bytes=LIMIT)
    async with connect(url_of(server)) as ws:
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
        welcome = await recv(ws)
        assert isinstance(welcome, Welcome)
        assert (welcome.protocol, welcome.max_message_bytes) == (PROTOCOL_VERSION, LIMIT)
        assert welcome.server.startswith("planchet ")


# --- a bad start -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("first", "code", "close_code"),
    [
        (encode(JobCommand(type="report", id=1, job="j")), "bad_message", 1008),
        (encode(Credit(job="j", batches=1)), "bad_message", 1008),
        (b'{"type": "hello"}', "bad_message", 1008),
        (orjson.dumps({"type": "hello", "protocol": PROTOCOL_VERSION + 1}),
         "unsupported_protocol", 1002),
        (orjson.dumps({"type": "hello", "protocol": 0}), "unsupported_protocol", 1002),
        ("hello, server", "bad_frame", 1007),
        (b"\x00\x01", "bad_frame", 1007),
    ],
    ids=["report", "credit", "no-version", "newer", "older", "text", "binary"],
)
async def test_the_first_frame_must_be_a_hello_we_speak(
    server: PlanchetServer, issues_input: Path, first: bytes | str, code: str, close_code: int
) -> None:
    bystander = await greet(server)
    assert isinstance(await request(bystander, start_job()), Reply)

    async with connect(url_of(server)) as ws:
        await ws.send(first)
        frames, closed = await refused(ws)
    assert closed == close_code
    assert len(frames) == 1 and isinstance(frames[0], Error)
    assert (frames[0].code, frames[0].id) == (code, None)
    if code == "unsupported_protocol":
        assert f"speaks {PROTOCOL_VERSION}" in frames[0].message

    assert (await report(bystander))["state"] == "running"
    await bystander.close()


# --- bad frames after the hello -----------------------------------------------------------------

BAD_FRAMES: dict[str, tuple[bytes | str, str, int]] = {
    "not-json": ("this is not JSON", "bad_frame", 1007),
    "binary-garbage": (b"\xff\xfe\x00", "bad_frame", 1007),
    "unknown-type": (b'{"type": "subscribe", "job": "j"}', "bad_message", 1008),
    "not-an-object": (b"[1, 2, 3]", "bad_message", 1008),
    "missing-field": (b'{"type": "credit", "batches": 1}', "bad_message", 1008),
    "extra-field": (b'{"type": "credit", "job": "j", "batches": 1, "x": 1}', "bad_message", 1008),
    "long-unicode-type": (orjson.dumps({"type": "é" * 200}), "bad_message", 1008),
    "second-hello": (encode(Hello(protocol=PROTOCOL_VERSION)), None, 0),  # answered, not fatal
    "too-big": (orjson.dumps({"type": "result", "job": "j", "items": [[0, "x" * LIMIT]]}),
                "too_big", 1009),
    "too-big-in-bytes": (orjson.dumps({"type": "result", "job": "j",
                                       "items": [[0, "é" * (LIMIT * 3 // 4)]]}).decode(),
                         "too_big", 1009),
}


@pytest.mark.parametrize("case", list(BAD_FRAMES))
async def test_a_bad_frame_costs_only_its_own_connection(
    make_server: MakeServer, issues_input: Path, data_dir: Path, case: str
) -> None:
    frame, code, close_code = BAD_FRAMES[case]
    server = await make_server(max_message_bytes=LIMIT)
    good = await greet(server)
    assert isinstance(await request(good, start_job()), Reply)
    bad = await greet(server)
    await bad.send(encode(Credit(job="j", batches=1)))
    leased = await recv(bad)
    assert isinstance(leased, Batch) and len(leased.items) == 5

    await bad.send(frame)
    if close_code == 0:  # a second hello is a request error: the connection lives on
        answer = await recv(bad)
        assert isinstance(answer, Error) and answer.code == "bad_message"
        await bad.close()
    else:
        frames, closed = await refused(bad)
        assert closed == close_code
        assert [(f.code, f.id) for f in frames if isinstance(f, Error)] == [(code, None)]
        error = frames[-1]
        assert isinstance(error, Error) and len(error.message) < 1000

    await until_requeued(good, 5)  # the bad connection's lease went back at once
    await good.send(encode(Credit(job="j", batches=1)))
    again = await recv(good)
    assert isinstance(again, Batch) and again.items == leased.items
    await good.send(encode(Result(job="j", lease=again.lease, items=again.items)))
    await run_job(good)
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    await good.close()


async def test_a_frame_past_twice_the_limit_is_cut_off_unread(
    make_server: MakeServer, issues_input: Path
) -> None:
    server = await make_server(max_message_bytes=LIMIT)
    good = await greet(server)
    assert isinstance(await request(good, start_job()), Reply)
    bad = await greet(server)
    await bad.send(b"x" * (3 * LIMIT))
    _, closed = await refused(bad)
    assert closed == 1009
    assert (await report(good))["state"] == "running"
    await good.close()


# --- request errors ---------------------------------------------------------------------------


async def test_request_errors_name_the_request_and_keep_the_connection(
    server: PlanchetServer, issues_input: Path
) -> None:
    ws = await greet(server)
    answer = await request(ws, JobCommand(type="report", id=7, job="nope"))
    assert isinstance(answer, Error)
    assert (answer.code, answer.id) == ("job_not_found", 7)
    assert "nope" in answer.message

    outside = {"input_file_path": "../../etc/passwd", "output_file_path": "o.jsonl"}
    answer = await request(ws, start_job(id=8, metadata=outside))
    assert isinstance(answer, Error) and (answer.code, answer.id) == ("path_refused", 8)

    answer = await request(ws, start_job(id=9, writer=None))
    assert isinstance(answer, Error) and (answer.code, answer.id) == ("bad_request", 9)

    answer = await request(ws, start_job(id=10, metadata={"input_file_path": "missing.jsonl",
                                                          "output_file_path": "o.jsonl"}))
    assert isinstance(answer, Error) and (answer.code, answer.id) == ("format_error", 10)

    await ws.send(encode(Credit(job="nope", batches=1)))  # no id: the error has none either
    answer = await recv(ws)
    assert isinstance(answer, Error) and (answer.code, answer.id) == ("job_not_found", None)

    reply = await request(ws, start_job(id=11))
    assert isinstance(reply, Reply) and reply.data["job"] == "j"
    await ws.close()


async def test_auth_errors_over_the_wire(make_server: MakeServer, issues_input: Path) -> None:
    server = await make_server(token="master")
    admin = await greet(server, token="master")
    reply = await request(admin, start_job(token="job-token"))
    assert isinstance(reply, Reply)

    stranger = await greet(server)
    answer = await request(stranger, start_job(id=2, job="k"))
    assert isinstance(answer, Error) and (answer.code, answer.id) == ("unauthorized", 2)
    await stranger.send(encode(Credit(job="j", batches=1)))
    answer = await recv(stranger)
    assert isinstance(answer, Error) and answer.code == "unauthorized"

    worker = await greet(server, token="job-token")
    await worker.send(encode(Credit(job="j", batches=1)))
    assert isinstance(await recv(worker), Batch)
    for ws in (admin, stranger, worker):
        await ws.close()


# --- health ---------------------------------------------------------------------------------


async def test_health(server: PlanchetServer, issues_input: Path) -> None:
    ws = await greet(server)
    assert isinstance(await request(ws, start_job()), Reply)
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/health")
    assert status == 200
    assert (body["status"], body["redis"], body["jobs"], body["jobs_done"]) == (
        "ok", "online", 1, 0)
    assert body["connections"] == 1
    assert body["version"]
    await ws.close()


async def test_health_says_when_redis_is_down(
    server: PlanchetServer, redis_proc: RedisProcess
) -> None:
    redis_proc.kill()
    status, body = await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/health")
    assert status == 503
    assert (body["status"], body["redis"]) == ("degraded", "offline")


# --- shutdown -------------------------------------------------------------------------------


async def test_stopping_gives_the_work_back(
    make_server: MakeServer, issues_input: Path, data_dir: Path
) -> None:
    first = await make_server()
    ws = await greet(first)
    assert isinstance(await request(ws, start_job()), Reply)
    await ws.send(encode(Credit(job="j", batches=2)))
    held = [await recv(ws), await recv(ws)]
    assert all(isinstance(b, Batch) for b in held)
    await first.stop()
    _, closed = await refused(ws)
    assert closed == 1001  # going away

    second = await make_server()
    ws = await greet(second)
    state = await report(ws)
    assert (state["queued"], state["in_flight"]) == (10, 0)
    assert await run_job(ws) == LINES
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    await ws.close()


async def test_health_is_json_with_one_content_type(server: PlanchetServer) -> None:
    def headers() -> list[str]:
        with urllib.request.urlopen(f"http://127.0.0.1:{server.port}/health") as response:
            return response.headers.get_all("Content-Type")

    assert await asyncio.to_thread(headers) == ["application/json"]


async def test_an_oversize_hello_is_refused(make_server, issues_input: Path) -> None:
    server = await make_server(max_message_bytes=1000)
    async with connect(url_of(server)) as ws:
        await ws.send(orjson.dumps({"type": "hello", "protocol": PROTOCOL_VERSION,
                                    "client": "x" * 1500}))  # over 1000, under the 2x hard cap
        frames, closed = await refused(ws)
    assert closed == 1009
    assert [(f.code, f.id) for f in frames] == [("too_big", None)]
