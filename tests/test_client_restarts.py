"""Both clients under fire: restarts, refusals, drops mid-request and crashing workers.

Most tests here talk to a scripted WebSocket server on a real socket: it plays a fixed
part per connection (welcome, hang up, refuse with 503, send a batch and a close frame
in one write...), so each situation happens exactly, every run. The same situations
with a real server (a kill and restart under a working client, the close codes the
server acts on) are in test_client.py and test_aclient.py.
"""

from __future__ import annotations

import asyncio
import collections
import socket
import threading
from collections.abc import Callable, Coroutine
from typing import Any

import orjson
import pytest
from websockets.frames import Opcode
from websockets.server import ServerProtocol

from planchet import AsyncPlanchetClient, AuthError, ConnectionLost, PlanchetClient
from planchet.messages import Ack
from tests.support import wait_until

WELCOME = {"type": "welcome", "server": "scripted", "max_message_bytes": 1 << 20}
BATCH = {"type": "batch", "job": "j", "lease": "L1", "items": [[0, "a"], [1, "b"]],
         "lease_timeout": 60.0}


class Peer:
    """One connection to the scripted server: websockets' sans-I/O protocol on a socket."""

    def __init__(self, sock: socket.socket) -> None:
        self.sock = sock
        self.proto = ServerProtocol()
        self.events: collections.deque[Any] = collections.deque()
        self.close_code: int | None = None
        self.finished = threading.Event()

    def _write(self) -> None:
        data = b"".join(self.proto.data_to_send())
        if data:
            self.sock.sendall(data)

    def _next_event(self) -> Any:
        while not self.events:
            data = self.sock.recv(65536)
            if not data:
                return None
            self.proto.receive_data(data)
            self._write()
            self.events.extend(self.proto.events_received())
        return self.events.popleft()

    def handshake(self, status: int = 101, **headers: str) -> None:
        request = self._next_event()
        if status == 101:
            response = self.proto.accept(request)
        else:
            response = self.proto.reject(status, f"refused with {status}\n")
            for name, value in headers.items():
                response.headers[name.replace("_", "-")] = value
        self.proto.send_response(response)
        self._write()

    def recv(self) -> dict[str, Any] | None:
        """The client's next message; None once it has closed (``close_code`` says how)."""
        while (event := self._next_event()) is not None:
            if event.opcode in (Opcode.TEXT, Opcode.BINARY):
                return orjson.loads(event.data)
            if event.opcode is Opcode.CLOSE:
                break
        rcvd = self.proto.close_rcvd
        self.close_code = rcvd.code if rcvd else 1006
        return None

    def send(self, *messages: dict[str, Any], close: int | None = None) -> None:
        """Send ``messages`` (and a close frame) in a single write."""
        for message in messages:
            self.proto.send_binary(orjson.dumps(message))
        if close is not None:
            self.proto.send_close(close)
        self._write()


Script = Callable[[Peer], None]


class ScriptedServer:
    """Accepts connections on 127.0.0.1 and plays ``scripts[n]`` on the n-th (the last
    one again for any after)."""

    def __init__(self, *scripts: Script) -> None:
        self.scripts = scripts
        self.peers: list[Peer] = []
        self.errors: list[BaseException] = []
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"ws://127.0.0.1:{self.listener.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                sock, _ = self.listener.accept()
            except OSError:  # closed
                return
            peer = Peer(sock)
            script = self.scripts[min(len(self.peers), len(self.scripts) - 1)]
            self.peers.append(peer)
            threading.Thread(target=self._play, args=(script, peer), daemon=True).start()

    def _play(self, script: Script, peer: Peer) -> None:
        try:
            script(peer)
        except OSError:
            pass  # the client went away first
        except BaseException as exc:
            self.errors.append(exc)
        finally:
            peer.sock.close()
            peer.finished.set()

    def close_codes(self) -> list[int | None]:
        wait_until(lambda: all(p.finished.is_set() for p in self.peers), "connections to end")
        return [p.close_code for p in self.peers]

    def close(self) -> None:
        self.listener.close()
        assert not self.errors, self.errors


@pytest.fixture
def scripted() -> Any:
    servers: list[ScriptedServer] = []

    def start(*scripts: Script) -> ScriptedServer:
        servers.append(ScriptedServer(*scripts))
        return servers[-1]

    yield start
    for server in servers:
        server.close()


# --- the parts the scripted server plays -------------------------------------------------


def welcome(peer: Peer) -> None:
    peer.handshake()
    assert peer.recv()["type"] == "hello"  # type: ignore[index]
    peer.send(WELCOME)


def serve(peer: Peer) -> None:
    """A well-behaved server: replies to requests, says 'done' to credit, drops results."""
    welcome(peer)
    while (msg := peer.recv()) is not None:
        if "id" in msg:
            peer.send({"type": "reply", "id": msg["id"], "data": []})
        elif msg["type"] == "credit":
            peer.send({"type": "event", "job": msg["job"], "event": "done"})
        elif msg["type"] == "result":
            peer.send({"type": "ack", "job": msg["job"], "lease": msg["lease"],
                       "dropped": len(msg["items"]) + len(msg["errors"])})


def hang_up(peer: Peer) -> None:
    """Accept the TCP connection and close it before the handshake answers."""


def refuse(status: int, **headers: str) -> Script:
    return lambda peer: peer.handshake(status, **headers)


def batch_then_hang_up(peer: Peer) -> None:
    """Lease a batch, take its result, and die before the ack."""
    welcome(peer)
    assert peer.recv()["type"] == "credit"  # type: ignore[index]
    peer.send(BATCH)
    assert peer.recv()["type"] == "result"  # type: ignore[index]


def batch_and_close(peer: Peer) -> None:
    """Lease a batch and close the connection in the same write."""
    welcome(peer)
    assert peer.recv()["type"] == "credit"  # type: ignore[index]
    peer.send(BATCH, close=1001)
    while peer.recv() is not None:
        pass


def welcome_credit_batch_wait(peer: Peer) -> None:
    welcome(peer)
    assert peer.recv()["type"] == "credit"  # type: ignore[index]
    peer.send(BATCH)
    while peer.recv() is not None:
        pass


def result_then_hang_up(peer: Peer) -> None:
    welcome(peer)
    assert peer.recv()["type"] == "result"  # type: ignore[index]


def welcome_then_hang_up(peer: Peer) -> None:
    welcome(peer)
    peer.recv()


# --- helpers ---------------------------------------------------------------------------


def run_async(make: Callable[[], Coroutine[Any, Any, Any]], what: str) -> Any:
    """Run a coroutine on its own loop in a thread; fail, not hang, if it never ends.

    A thread, because a client that spins never yields: a timeout on its own loop would
    never fire.
    """
    outcome: dict[str, Any] = {}

    def main() -> None:
        try:
            outcome["value"] = asyncio.run(make())
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=main, daemon=True)
    thread.start()
    wait_until(lambda: not thread.is_alive(), what, timeout=60)
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


async def acks_of(url: str, job: str = "j") -> list[Ack]:
    acks = []
    async with AsyncPlanchetClient(url, retries=3) as client:
        async for batch in client.batches(job, prefetch=1):
            acks.append(await batch.ack(batch.items))
    return acks


# --- the asyncio client across drops ------------------------------------------------------


def test_an_ack_in_flight_when_the_connection_drops_is_answered(scripted) -> None:
    """A result whose ack was lost with the connection is answered as dropped, not awaited
    for ever."""
    server = scripted(batch_then_hang_up, serve)
    acks = run_async(lambda: acks_of(server.url), "the ack of a result sent before a drop")
    assert [a.dropped for a in acks] == [2]


def test_a_batch_and_a_close_in_one_read_are_answered(scripted) -> None:
    """Acking a batch whose connection closed in the same read gets an answer (dropped)
    instead of waiting for ever."""
    server = scripted(batch_and_close, serve)
    acks = run_async(lambda: acks_of(server.url), "an ack on a closing connection")
    assert [a.dropped for a in acks] == [2]


def test_an_ack_right_after_the_socket_died_does_not_spin(scripted) -> None:
    """Acking when the socket is closed but the reader has not run yet (the race a
    restart causes) waits for the reconnect instead of spinning on the dead socket."""
    server = scripted(welcome_credit_batch_wait, serve)

    async def scenario() -> list[Ack]:
        acks = []
        async with AsyncPlanchetClient(server.url, retries=3) as client:
            async for batch in client.batches("j", prefetch=1):
                if not acks:  # the socket dies; the reader wakes only after this task
                    client._ws.transport.abort()  # type: ignore[union-attr]
                    await asyncio.sleep(0)
                acks.append(await batch.ack(batch.items))
        return acks

    acks = run_async(scenario, "an ack on a dead socket")
    assert [a.dropped for a in acks] == [2]


def test_a_write_only_result_pending_during_a_drop_is_sent_again(scripted) -> None:
    """Results for no lease (a write-only job) whose ack was lost are sent again on the
    next connection, by both clients, and their ack is awaited there."""

    async def send_async(url: str) -> Ack:
        async with AsyncPlanchetClient(url, retries=3) as client:
            return await client.send_results("j", None, [(5, "x")])

    blocking = scripted(result_then_hang_up, serve)
    with PlanchetClient(blocking.url, retries=3) as client:
        assert client.send("j", [(5, "x")])["dropped"] == 1  # the scripted ack says dropped
    asyncio_ = scripted(result_then_hang_up, serve)
    assert run_async(lambda: send_async(asyncio_.url), "a resent result").dropped == 1
    assert len(blocking.peers) == len(asyncio_.peers) == 2


# --- handshakes: retried when they may succeed, final when they cannot ------------------


def blocking_jobs(url: str, retries: int = 3) -> Any:
    with PlanchetClient(url, retries=retries) as client:
        return client.list_jobs()


async def async_jobs(url: str, retries: int = 3) -> Any:
    async with AsyncPlanchetClient(url, retries=retries) as client:
        return await client.jobs()


def jobs_both_ways(url: str, retries: int = 3) -> list[Any]:
    return [blocking_jobs(url, retries), run_async(lambda: async_jobs(url, retries), "jobs")]


def test_handshake_failures_are_retried_and_never_leak(scripted) -> None:
    """EOF during the handshake and a 503 are retried with backoff, by both clients."""
    blocking = scripted(hang_up, refuse(503, Retry_After="0"), serve)
    assert blocking_jobs(blocking.url) == []
    asyncio_ = scripted(hang_up, refuse(503, Retry_After="0"), serve)
    assert run_async(lambda: async_jobs(asyncio_.url), "jobs") == []
    assert len(blocking.peers) == len(asyncio_.peers) == 3


@pytest.mark.parametrize("status", [401, 403])
def test_a_refused_handshake_is_final(scripted, status: int) -> None:
    """401 and 403 raise AuthError at once, with no retry loop, in both clients."""
    server = scripted(refuse(status))
    with pytest.raises(AuthError, match=str(status)):
        blocking_jobs(server.url)
    with pytest.raises(AuthError, match=str(status)):
        run_async(lambda: async_jobs(server.url), "a refused connection")
    assert len(server.peers) == 2


@pytest.mark.parametrize("script", [hang_up, welcome_then_hang_up, refuse(503)])
def test_a_server_that_never_answers_ends_in_connection_lost(scripted, script) -> None:
    """Hanging up before or after the welcome, or 503 for ever, ends in ConnectionLost
    after the retries (from the websockets error, never the error itself)."""
    server = scripted(script)
    with pytest.raises(ConnectionLost):
        blocking_jobs(server.url, retries=2)
    with pytest.raises(ConnectionLost):
        run_async(lambda: async_jobs(server.url, retries=2), "a server that never answers")
    assert len(server.peers) == 6  # three tries each: no more, no less


# --- close codes tell the server whether the worker crashed ------------------------------


class Crash(Exception):
    pass


def test_blocking_close_codes(scripted) -> None:
    """close() and a clean `with` exit close with 1000; an exception in `with` closes
    with 1011, so the server charges an attempt."""
    server = scripted(serve)
    client = PlanchetClient(server.url)
    client.list_jobs()
    client.close()
    with PlanchetClient(server.url) as client:
        client.list_jobs()
    with pytest.raises(Crash), PlanchetClient(server.url) as client:
        client.list_jobs()
        raise Crash
    assert server.close_codes() == [1000, 1000, 1011]


def test_async_close_codes(scripted) -> None:
    """The same close codes from the asyncio client."""
    server = scripted(serve)

    async def scenario() -> None:
        client = AsyncPlanchetClient(server.url)
        await client.connect()
        await client.close()
        async with AsyncPlanchetClient(server.url) as client:
            await client.jobs()
        with pytest.raises(Crash):
            async with AsyncPlanchetClient(server.url) as client:
                raise Crash

    run_async(scenario, "three clients")
    assert server.close_codes() == [1000, 1000, 1011]
