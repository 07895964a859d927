"""The server's edge under attack: who may open a socket, how many, and what a session leaves.

Every test runs a real server on a real socket. Upgrades that must be refused are
sent as raw HTTP, so the test sees exactly the status, headers and body the server
wrote; upgrades that must succeed go through the websockets client.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import resource
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from planchet.codec import encode
from planchet.config import Settings
from planchet.dispatcher import Ending
from planchet.messages import (
    PROTOCOL_VERSION,
    Batch,
    Credit,
    Error,
    Hello,
    Reply,
    ServerCommand,
    Welcome,
)
from planchet.server import PlanchetServer
from planchet.store import Store
from tests.support import eventually
from tests.test_server import http_get, recv, refused, report, request, start_job, url_of

WAIT = 20.0  # seconds: a bound on waiting for what must happen, never a threshold
EVIL = "https://evil.example"

MakeServer = Callable[..., Awaitable[PlanchetServer]]


async def upgrade(port: int, **headers: str) -> tuple[int, dict[str, str], str]:
    """Send a WebSocket upgrade by hand: the status, the headers (lower-case) and the body.

    ``Host`` defaults to ``127.0.0.1:<port>``; pass ``Origin`` (or any header) as a keyword.
    """
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fields = {"Host": f"127.0.0.1:{port}", "Upgrade": "websocket", "Connection": "Upgrade",
              "Sec-WebSocket-Key": "dGhlIHNhbXBsZSBub25jZQ==", "Sec-WebSocket-Version": "13",
              **headers}
    head = "GET / HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items()) + "\r\n"
    writer.write(head.encode())
    try:
        raw = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), WAIT)
        status_line, *lines = raw.decode().split("\r\n")
        response = {k.lower(): v.strip() for k, _, v in (line.partition(":") for line in lines
                                                         if line)}
        length = int(response.get("content-length", 0))
        body = await asyncio.wait_for(reader.readexactly(length), WAIT) if length else b""
    finally:
        writer.close()
    return int(status_line.split()[1]), response, body.decode()


async def greet(server: PlanchetServer, token: str | None = None, **options: Any
                ) -> ClientConnection:
    """A connection that has said hello and been welcomed (``options`` go to ``connect``)."""
    ws = await connect(url_of(server), max_size=None, **options)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, token=token, client="tests")))
    assert isinstance(await recv(ws), Welcome)
    return ws


async def health(server: PlanchetServer) -> tuple[int, dict[str, Any]]:
    return await asyncio.to_thread(http_get, f"http://127.0.0.1:{server.port}/health")


# --- origins ----------------------------------------------------------------------------------


async def test_a_page_on_another_site_cannot_open_a_socket(server: PlanchetServer) -> None:
    """An upgrade from a foreign Origin gets 403 naming the origin and the flag, and no session."""
    status, headers, body = await upgrade(server.port, Origin=EVIL)
    assert status == 403
    assert headers["content-type"].startswith("text/plain")
    assert EVIL in body and "--allow-origin" in body
    assert not server.dispatcher.sessions
    assert (await health(server))[1]["connections"] == 0


@pytest.mark.parametrize("origin", [
    None, "http://localhost:3000", "http://127.0.0.1:9", "http://[::1]:8080", "https://localhost",
    "HTTP://LOCALHOST:3000",
])
async def test_scripts_and_loopback_pages_are_welcome(
    server: PlanchetServer, origin: str | None
) -> None:
    """No Origin (a script) and loopback origins, any port or scheme, are accepted by default."""
    ws = await greet(server, origin=origin)
    await ws.close()


async def test_the_servers_own_origin_is_welcome(server: PlanchetServer) -> None:
    """A page the server serves (Origin equal to the Host it was reached by) may connect."""
    host = f"10.20.30.40:{server.port}"  # the server as reached from the network
    status, _, _ = await upgrade(server.port, Host=host, Origin=f"http://{host}")
    assert status == 101


async def test_dns_rebinding_is_not_the_servers_own_origin(server: PlanchetServer) -> None:
    """A foreign name that resolves to the server (Host equal to Origin, not an IP) is refused."""
    host = f"evil.example:{server.port}"
    status, _, body = await upgrade(server.port, Host=host, Origin=f"http://{host}")
    assert status == 403 and "evil.example" in body


async def test_allow_origin_adds_sites(make_server: MakeServer) -> None:
    """``allow_origins`` lets the named sites in (case and a trailing slash aside), no others."""
    server = await make_server(allow_origins=("https://Ops.Example/",))
    ws = await greet(server, origin="https://ops.example")
    await ws.close()
    assert (await upgrade(server.port, Origin=EVIL))[0] == 403


async def test_a_star_allows_every_origin_and_is_warned_about(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """``*`` accepts any Origin, and the server says at start that it does."""
    with caplog.at_level(logging.WARNING, logger="planchet"):
        server = await make_server(allow_origins=("*",))
    assert any("--allow-origin '*'" in r.getMessage() for r in caplog.records)
    ws = await greet(server, origin=EVIL)
    await ws.close()


async def test_two_origin_headers_are_refused(server: PlanchetServer) -> None:
    """An upgrade with two Origin headers is refused with 403, not a server error."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    writer.write((f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\n"
                  "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
                  "Sec-WebSocket-Version: 13\r\nOrigin: http://localhost\r\n"
                  f"Origin: {EVIL}\r\n\r\n").encode())
    status_line = await asyncio.wait_for(reader.readline(), WAIT)
    writer.close()
    assert status_line.split()[1] == b"403"


# --- connection caps --------------------------------------------------------------------------


async def test_past_the_cap_an_upgrade_gets_503_and_health_still_answers(
    make_server: MakeServer,
) -> None:
    """With 20 connections open the 21st gets 503 and Retry-After; /health answers; a slot frees."""
    server = await make_server(max_connections=20)
    sockets = [await greet(server) for _ in range(20)]
    status, headers, body = await upgrade(server.port)
    assert status == 503
    assert int(headers["retry-after"]) > 0
    assert "20" in body and "--max-connections" in body
    code, state = await health(server)
    assert (code, state["connections"]) == (200, 20)

    await sockets.pop().close()
    sockets.append(await eventually(lambda: _try_greet(server), "a freed slot"))
    for ws in sockets:
        await ws.close()


async def _try_greet(server: PlanchetServer) -> ClientConnection | None:
    try:
        return await greet(server)
    except Exception:
        return None


async def _idle(server: PlanchetServer) -> ClientConnection | int:
    """An upgraded connection that never says hello, or the status of a refused upgrade."""
    try:
        return await connect(url_of(server))
    except Exception as exc:
        return getattr(getattr(exc, "response", None), "status_code", 0)


async def test_an_idle_flood_cannot_lock_out_the_admin(
    make_server: MakeServer, issues_input: Path
) -> None:
    """300 idle connections hold at most the pending cap; /health and the admin still get in."""
    server = await make_server(max_connections=40, max_pending_connections=10, token="master")
    admin = await greet(server, token="master")
    assert isinstance(await request(admin, start_job()), Reply)

    flood: list[ClientConnection | int] = []
    for _ in range(10):  # in waves of 30, as a script would
        flood += await asyncio.gather(*(_idle(server) for _ in range(30)))
    idle = [ws for ws in flood if not isinstance(ws, int)]
    assert len(idle) + flood.count(503) == 300
    alive = await eventually(lambda: _settled(idle, 10), "the pending cap to hold")
    assert alive <= 10

    assert (await health(server))[0] == 200
    second = await greet(server, token="master")
    assert (await report(second))["state"] == "running"
    for ws in (admin, second, *idle):
        await ws.close()


async def _settled(sockets: list[ClientConnection], cap: int) -> int | None:
    """How many of ``sockets`` the server left open, once no more than ``cap`` are."""
    alive = sum(1 for ws in sockets if ws.close_code is None)
    return alive if alive <= cap else None


async def test_greeted_connections_are_not_evicted(make_server: MakeServer) -> None:
    """A flood of idle connections never costs a connection that has said hello."""
    server = await make_server(max_connections=40, max_pending_connections=5)
    workers = [await greet(server) for _ in range(10)]
    flood = await asyncio.gather(*(_idle(server) for _ in range(60)))
    for ws in workers:
        assert (await request(ws, ServerCommand(type="jobs", id=1))).id == 1  # type: ignore[attr-defined]
    for ws in (*workers, *(f for f in flood if not isinstance(f, int))):
        await ws.close()


async def test_the_descriptor_limit_is_raised_and_checked(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Start raises the soft RLIMIT_NOFILE and warns when max_connections cannot fit under it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    low = min(hard, 256)
    resource.setrlimit(resource.RLIMIT_NOFILE, (low, hard))
    try:
        with caplog.at_level(logging.WARNING, logger="planchet"):
            await make_server(max_connections=hard + 1)
        raised, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert raised > low or low == hard
    assert any("max_connections" in r.getMessage() for r in caplog.records)


# --- logs ----------------------------------------------------------------------------------


async def test_debug_logging_never_shows_a_frame(
    make_server: MakeServer, caplog: pytest.LogCaptureFixture
) -> None:
    """Even with every logger at DEBUG, the server logs no frame, so no token."""
    server = await make_server(token="s3cret-master-4711")
    with caplog.at_level(logging.DEBUG):
        ws = await greet(server, token="s3cret-master-4711")
        await ws.close()
        await eventually(lambda: not server.dispatcher.sessions, "the session to end")
    server_side = [r.getMessage() for r in caplog.records if r.name != "websockets.client"]
    assert not [m for m in server_side if "s3cret" in m]  # a frame is logged cut, not hidden


# --- how a session ends ------------------------------------------------------------------------


@pytest.fixture
async def recording(
    make_server: MakeServer, issues_input: Path
) -> AsyncIterator[tuple[PlanchetServer, list[Ending]]]:
    """A server whose dispatcher records how every connection ended, and a job."""
    server = await make_server()
    seen: list[Ending] = []
    real = server.dispatcher.disconnect

    async def disconnect(session: Any, ending: Ending = Ending.VANISHED) -> None:
        seen.append(ending)
        await real(session, ending)

    server.dispatcher.disconnect = disconnect  # type: ignore[method-assign]
    admin = await greet(server)
    assert isinstance(await request(admin, start_job()), Reply)
    yield server, seen
    await admin.close()


@pytest.mark.parametrize(("code", "ending"), [
    (1000, Ending.GOODBYE), (1001, Ending.GOODBYE), (1011, Ending.FAILED),
    (4000, Ending.VANISHED), (None, Ending.VANISHED)])
async def test_the_dispatcher_hears_how_a_connection_ended(
    recording: tuple[PlanchetServer, list[Ending]], code: int | None, ending: Ending
) -> None:
    """A client's close with 1000 or 1001 is a goodbye, with 1011 a failure of its own;
    any other code, or a dropped socket, and it vanished."""
    server, seen = recording
    ws = await greet(server)
    if code is None:
        ws.transport.abort()
    else:
        await ws.close(code)
    await eventually(lambda: seen, "the disconnect")
    assert seen == [ending]


async def test_a_refused_frame_is_not_a_clean_end(
    recording: tuple[PlanchetServer, list[Ending]],
) -> None:
    """When the server closes a connection for a bad frame, the client vanished."""
    server, seen = recording
    ws = await greet(server)
    await ws.send(b"not json")
    await refused(ws)
    await eventually(lambda: seen, "the disconnect")
    assert seen == [Ending.VANISHED]


class _Faulty(PlanchetServer):
    """A server with a bug: a frame ``b"boom"`` raises an error no handler expects."""

    def _envelope(self, frame: bytes) -> Any:
        if frame == b"boom":
            raise RuntimeError("boom")
        return super()._envelope(frame)


async def test_a_bug_in_a_session_is_logged_closed_1011_and_gives_the_work_back(
    settings: Settings, redis_url: str, issues_input: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An unexpected exception is logged with its traceback, closes 1011, requeues the leases."""
    store = Store.from_url(redis_url)
    server = _Faulty(dataclasses.replace(settings), store)
    await server.start()
    try:
        admin = await greet(server)
        assert isinstance(await request(admin, start_job()), Reply)
        ws = await greet(server)
        await ws.send(encode(Credit(job="j", batches=1)))
        assert isinstance(await recv(ws), Batch)
        with caplog.at_level(logging.ERROR, logger="planchet"):
            await ws.send(b"boom")
            frames, closed = await refused(ws)
        assert closed == 1011
        assert [(f.code, f.id) for f in frames if isinstance(f, Error)] == [("server_error", None)]
        logged = [r for r in caplog.records if r.name.startswith("planchet") and r.exc_info]
        assert logged and "boom" in str(logged[0].exc_info[1])

        async def requeued() -> bool:
            state = await report(admin)
            return (state["in_flight"], state["queued"]) == (0, 5)

        await eventually(requeued, "the lease to go back")
        await admin.close()
    finally:
        await server.stop()
        await store.close()


async def test_a_closed_connection_is_not_an_error(
    server: PlanchetServer, caplog: pytest.LogCaptureFixture
) -> None:
    """A client that goes away mid-session leaves no error in the log."""
    with caplog.at_level(logging.ERROR):
        ws = await greet(server)
        ws.transport.abort()
        await eventually(lambda: not server.dispatcher.sessions, "the session to end")
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_a_connection_closed_early_frees_its_slot(make_server: MakeServer) -> None:
    """Connections that end before or after hello give their slot back, and the cap still holds."""
    server = await make_server(max_connections=3, max_pending_connections=3)
    for _ in range(10):
        idle = await eventually(lambda: _idle_or_none(server), "a free slot")
        await idle.close()
        ws = await eventually(lambda: _try_greet(server), "a free slot")
        await ws.close()
    sockets = [await eventually(lambda: _try_greet(server), "a free slot") for _ in range(3)]
    assert (await upgrade(server.port))[0] == 503
    for ws in sockets:
        await ws.close()


async def _idle_or_none(server: PlanchetServer) -> ClientConnection | None:
    ws = await _idle(server)
    return None if isinstance(ws, int) else ws
