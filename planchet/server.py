"""The WebSocket server: I/O only. Decode a frame, hand it to the dispatcher, encode.

Bad frames are answered with an ``error`` frame and a close code that says why
(1007 not JSON, 1008 not a valid message, 1009 too big, 1002 wrong protocol); the
session's leases go back to the queue and every other connection goes on untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import http
import logging
import signal
from collections.abc import Awaitable, Callable

import orjson
from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed
from websockets.http11 import Request, Response

from . import __version__
from .config import Settings
from .dispatcher import Dispatcher, Session
from .embedded import RedisProcess
from .exceptions import (
    BadFrame,
    MessageTooBig,
    PlanchetError,
    ProtocolError,
    ServerError,
)
from .messages import (
    PROTOCOL_VERSION,
    ClientMessage,
    Error,
    Hello,
    Message,
    Welcome,
    decode_client,
    encode,
)
from .store import Store

log = logging.getLogger("planchet")

HELLO_TIMEOUT = 10.0


def close_code(exc: ProtocolError) -> int:
    if isinstance(exc, BadFrame):
        return 1007
    if isinstance(exc, MessageTooBig):
        return 1009
    return 1008


class PlanchetServer:
    """Owns the dispatcher and the listening socket; ``serve`` runs until stopped."""

    def __init__(self, settings: Settings, store: Store) -> None:
        self.settings = settings
        self.store = store
        self.dispatcher = Dispatcher(store, settings)
        self.server: Server | None = None

    async def start(self) -> None:
        await self.dispatcher.start()
        self.server = await serve(
            self._connection,
            self.settings.host,
            self.settings.port,
            process_request=self._http,
            max_size=2 * self.settings.max_message_bytes,  # larger frames: closed unread
            ping_interval=20,
            ping_timeout=60,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, close every connection (requeueing its work), close files."""
        self.dispatcher.stopping = True
        if self.server is not None:
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.dispatcher.close()

    async def _http(self, connection: ServerConnection, request: Request) -> Response | None:
        if request.path.split("?")[0] != "/health":
            return None
        redis_ok = await self.store.ping()
        body = {
            "status": "ok" if redis_ok else "degraded",
            "redis": "online" if redis_ok else "offline",
            "version": __version__,
            "jobs": len(self.dispatcher.jobs),
            "jobs_done": sum(job.done for job in self.dispatcher.jobs.values()),
            "connections": len(self.dispatcher.sessions),
        }
        status = http.HTTPStatus.OK if redis_ok else http.HTTPStatus.SERVICE_UNAVAILABLE
        response = connection.respond(status, orjson.dumps(body).decode() + "\n")
        del response.headers["Content-Type"]
        response.headers["Content-Type"] = "application/json"
        return response

    async def _connection(self, ws: ServerConnection) -> None:
        send = _sender(ws)
        try:
            hello = await self._hello(ws)
        except (ProtocolError, TimeoutError) as exc:
            await _refuse(ws, exc if isinstance(exc, ProtocolError) else ProtocolError(
                "no hello within 10 s"))
            return
        except ConnectionClosed:
            return
        session = self.dispatcher.connect(send, hello)
        try:
            await send(Welcome(server=f"planchet {__version__}",
                               max_message_bytes=self.settings.max_message_bytes))
            # bytes, text frames too: the limit counts bytes and orjson parses them as they are
            while await self._frame(ws, session, await ws.recv(decode=False)):
                pass
        except ConnectionClosed:
            pass
        finally:
            await self.dispatcher.disconnect(session)

    async def _hello(self, ws: ServerConnection) -> Hello:
        frame = await asyncio.wait_for(ws.recv(decode=False), HELLO_TIMEOUT)
        msg = self._decode(frame)
        if not isinstance(msg, Hello):
            raise ProtocolError(f"the first frame must be 'hello', not {msg.type!r}")
        if msg.protocol != PROTOCOL_VERSION:
            raise _WrongVersion(
                f"protocol {msg.protocol} is not supported; this server speaks {PROTOCOL_VERSION}"
            )
        return msg

    def _decode(self, frame: bytes) -> ClientMessage:
        limit = self.settings.max_message_bytes
        if len(frame) > limit:
            raise MessageTooBig(f"frame of {len(frame)} bytes exceeds the limit of {limit}")
        return decode_client(frame)

    async def _frame(self, ws: ServerConnection, session: Session, frame: bytes) -> bool:
        """Handle one frame; False when the connection must close."""
        try:
            msg = self._decode(frame)
        except ProtocolError as exc:
            await _refuse(ws, exc)
            return False
        try:
            reply = await self.dispatcher.handle(session, msg)
        except Exception as exc:
            if not isinstance(exc, PlanchetError):  # a bug must cost one request, not the server
                log.exception("error handling %s", msg.type)
                exc = ServerError("internal error; see the server log")
            reply = Error(code=exc.code, message=exc.message, id=getattr(msg, "id", None),
                          job=getattr(msg, "job", None))
        if reply is not None:
            await session.send(reply)
        return True


class _WrongVersion(ProtocolError):
    code = "unsupported_protocol"


def _sender(ws: ServerConnection) -> Callable[[Message], Awaitable[None]]:
    async def send(message: Message) -> None:
        await ws.send(encode(message))

    return send


async def _refuse(ws: ServerConnection, exc: ProtocolError) -> None:
    code = 1002 if isinstance(exc, _WrongVersion) else close_code(exc)
    with contextlib.suppress(ConnectionClosed):
        await ws.send(encode(Error(code=exc.code, message=exc.message)))
        await ws.close(code, _close_reason(exc.message))


def _close_reason(message: str) -> str:
    """``message`` cut to the 123 bytes of UTF-8 a close frame has room for.

    Cutting characters is not enough: a longer reason makes ``close`` raise, and the
    connection then ends with 1011 instead of the code that says what was wrong.
    """
    return message.encode("utf-8", "replace")[:123].decode("utf-8", "ignore")


async def run(settings: Settings, ready: Callable[[PlanchetServer], None] | None = None) -> None:
    """Run a server until SIGINT or SIGTERM; start a private Redis if no URL is given."""
    embedded = None
    url = settings.redis_url
    if not url:
        embedded = RedisProcess(settings.embedded_redis_dir)
        await asyncio.to_thread(embedded.start)
        url = embedded.url
        log.info("started a private redis-server on %s (data in %s)", url,
                 settings.embedded_redis_dir)
    store = Store.from_url(url, settings.key_prefix)
    server = PlanchetServer(settings, store)
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    try:
        await server.start()
        log.info("planchet %s serving on ws://%s:%d (data dir %s)", __version__,
                 settings.host, server.port, settings.data_dir)
        if ready:
            ready(server)
        await stopping.wait()
        log.info("stopping: requeueing work in flight")
    finally:
        await server.stop()
        await store.close()
        if embedded:
            await asyncio.to_thread(embedded.stop)
