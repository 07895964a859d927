"""The WebSocket server: I/O only. Decode a frame, hand it to the dispatcher, encode.

Bad frames are answered with an ``error`` frame and a close code that says why
(1007 not JSON, 1008 not a valid message, 1009 too big, 1002 wrong protocol); the
session's leases go back to the queue and every other connection goes on untouched.
An upgrade must first pass the :class:`~planchet.gate.Gate` (origin, connection caps);
plain HTTP requests (``/health``, pages, the JavaScript client) are answered in ``web.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from typing import Any

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from .codec import admission, decode_client, encode, envelope
from .config import Settings
from .dispatcher import Dispatcher, Ending, Session
from .embedded import RedisProcess, supervise
from .exceptions import (
    AuthError,
    BadFrame,
    ConnectionLost,
    MessageTooBig,
    PlanchetError,
    ProtocolError,
    ServerError,
    Unavailable,
)
from .gate import Gate, peer, raise_descriptor_limit
from .messages import PROTOCOL_VERSION, ClientMessage, Error, Goodbye, Hello, Welcome
from .outbox import JoinedWrites, Outbox
from .store import Store
from .version import __version__
from .web import Web, tls_context

log = logging.getLogger("planchet")
# the websockets library logs every frame, tokens included, at DEBUG: never below INFO
# unless someone asks for this logger by name
wire_log = logging.getLogger("planchet.wire")
if wire_log.level == logging.NOTSET:
    wire_log.setLevel(logging.INFO)

HELLO_TIMEOUT = 10.0
RESTART_HINT = 5.0  # seconds: the goodbye's retry_after on a graceful shutdown
GOODBYE_TIMEOUT = 2.0  # seconds a slow reader may hold up the shutdown for its goodbye


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
        self.gate = Gate(settings)
        self.web = Web(settings, self.gate, self.dispatcher, store)
        self.tls = tls_context(settings)  # None: plain ws:// and http://
        self.server: Server | None = None

    async def start(self) -> None:
        if "*" in self.settings.allow_origins:
            log.warning("--allow-origin '*': any web page a user of this machine visits "
                        "can drive this server")
        raise_descriptor_limit(self.settings.max_connections)
        await self.dispatcher.start()
        self.server = await serve(
            self._connection,
            self.settings.host,
            self.settings.port,
            process_request=self.web.respond,
            ssl=self.tls,
            max_size=2 * self.settings.max_message_bytes,  # larger frames: closed unread
            ping_interval=20,
            ping_timeout=60,
            logger=wire_log,
            # deflate costs more CPU than it saves on a LAN; --compression for slow links
            compression="deflate" if self.settings.compression else None,
            create_connection=JoinedWrites,
        )

    @property
    def port(self) -> int:
        assert self.server is not None
        return self.server.sockets[0].getsockname()[1]

    async def stop(self) -> None:
        """Stop accepting, close every connection (requeueing its work), close files."""
        self.dispatcher.stopping = True
        if self.server is not None:
            self.server.server.close()  # no new connection from here on
            await self._goodbye()
            self.server.close(close_connections=True)
            await self.server.wait_closed()
        await self.dispatcher.close()

    async def _goodbye(self) -> None:
        """Tell every session the server is going away, and when to come back."""
        bye = Goodbye(reason="server shutting down", retry_after=RESTART_HINT)
        sends = [asyncio.ensure_future(asyncio.wait_for(s.send(bye), GOODBYE_TIMEOUT))
                 for s in self.dispatcher.sessions]
        for result in await asyncio.gather(*sends, return_exceptions=True):
            if isinstance(result, Exception) and not isinstance(result, ConnectionLost):
                log.debug("no goodbye: %r", result)

    async def _connection(self, ws: ServerConnection) -> None:
        """One client from hello to close. Whatever happens, its work goes back."""
        session: Session | None = None
        try:
            hello = await self._greet(ws)
            if hello is not None:
                session = self.dispatcher.connect(Outbox(ws).send, hello, close=ws.close)
                session.identify(hello.client, peer(ws), _origin(ws))  # for watch
                await self._session(ws, session, hello)
        except Exception:  # a bug must cost this connection, and never pass unheard
            log.exception("connection from %s failed", peer(ws))
            if session is not None:
                session.faulted = True  # the server's fault: the leases go back free
            await _refuse(ws, ServerError("internal error; see the server log"), 1011)
        finally:
            self.gate.closed(ws)
            if session is not None:
                await self._disconnect(ws, session)

    async def _greet(self, ws: ServerConnection) -> Hello | None:
        """The hello; None if the connection ended or was refused first."""
        try:
            hello = await self._hello(ws)
        except (ProtocolError, TimeoutError) as exc:
            await _refuse(ws, exc if isinstance(exc, ProtocolError) else ProtocolError(
                f"no hello within {HELLO_TIMEOUT:g} s"))
            return None
        except ConnectionClosed:
            return None
        self.gate.greeted(ws)
        return hello

    async def _session(self, ws: ServerConnection, session: Session, hello: Hello) -> None:
        try:
            if hello.session is not None:
                await self.dispatcher.resume(session, hello.session)
            await session.send(Welcome(
                server=f"planchet {__version__}", max_message_bytes=self.settings.max_message_bytes,
                session=session.name, resume_grace=self.settings.resume_grace,
                resumed=session.resumed))
            await self.dispatcher.restart(session, hello.leases)
            # bytes, text frames too: the limit counts bytes and orjson parses them as they are
            while await self._frame(ws, session, await ws.recv(decode=False)):
                pass
        except (ConnectionClosed, ConnectionLost):
            pass

    async def _disconnect(self, ws: ServerConnection, session: Session) -> None:
        session.away = _client_code(ws) == 1001
        try:
            await self.dispatcher.disconnect(session, _ending(ws))
        except Exception:
            log.exception("could not give back the work of %s", peer(ws))

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
        return decode_client(self._envelope(frame))

    def _envelope(self, frame: bytes) -> dict[str, Any]:
        limit = self.settings.max_message_bytes
        if len(frame) > limit:
            raise MessageTooBig(f"frame of {len(frame)} bytes exceeds the limit of {limit}")
        return envelope(frame)

    async def _frame(self, ws: ServerConnection, session: Session, frame: bytes) -> bool:
        """Handle one frame; False when the connection must close.

        Cheap checks first: the size, then the envelope and the token, and only then the
        full validation, so a stranger's big frame costs little.
        """
        try:
            data = self._envelope(frame)
            self.dispatcher.admit(session, *admission(data))
            msg = decode_client(data)
        except ProtocolError as exc:
            await _refuse(ws, exc)
            return False
        except AuthError as exc:
            await session.send(_error(exc, data))
            return True
        try:
            reply = await self.dispatcher.handle(session, msg, admitted=True)
        except Exception as exc:
            if not isinstance(exc, PlanchetError):  # a bug must cost one request, not the server
                log.exception("error handling %s", msg.type)
                exc = ServerError("internal error; see the server log")
            reply = Error(code=exc.code, message=exc.message, id=getattr(msg, "id", None),
                          job=getattr(msg, "job", None), retry_after=self._retry_after(exc))
        if reply is not None:
            await session.send(reply)
        return True

    def _retry_after(self, exc: PlanchetError) -> float | None:
        """When a request is worth trying again: ``unavailable``, at the next maintenance
        tick (which reopens a job once Redis answers again)."""
        return self.settings.tick if isinstance(exc, Unavailable) else None


def _error(exc: PlanchetError, data: dict[str, Any]) -> Error:
    """An error frame for a request known only by its envelope."""
    request_id, job = data.get("id"), data.get("job")
    return Error(code=exc.code, message=exc.message,
                 id=request_id if type(request_id) is int else None,
                 job=job if isinstance(job, str) else None)


class _WrongVersion(ProtocolError):
    code = "unsupported_protocol"


async def _refuse(ws: ServerConnection, exc: PlanchetError, code: int | None = None) -> None:
    """An error frame, then a close with ``code`` (by default the one ``exc`` stands for)."""
    if code is None:
        assert isinstance(exc, ProtocolError)
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


def _origin(ws: ServerConnection) -> str | None:
    """The page that opened the connection, if a browser did."""
    return ws.request.headers.get("Origin") if ws.request is not None else None


def _client_code(ws: ServerConnection) -> int | None:
    """The code of the client's close, if the client closed first."""
    protocol = ws.protocol
    rcvd = protocol.close_rcvd
    return rcvd.code if protocol.close_rcvd_then_sent and rcvd is not None else None


def _ending(ws: ServerConnection) -> Ending:
    """How the client ended the connection: it closed first with 1000 or 1001 (goodbye),
    or with 1011 (its own code failed); anything else, it vanished."""
    code = _client_code(ws)
    if code in (1000, 1001):
        return Ending.GOODBYE
    return Ending.FAILED if code == 1011 else Ending.VANISHED


async def run(settings: Settings, ready: Callable[[PlanchetServer], None] | None = None) -> None:
    """Run a server until SIGINT or SIGTERM; start and supervise a private Redis if no URL."""
    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stopping.set)
    async with contextlib.AsyncExitStack() as stack:  # undone in reverse order
        url = settings.redis_url or await _private_redis(settings, stack)
        store = Store.from_url(url, settings.key_prefix)
        stack.push_async_callback(store.close)
        server = PlanchetServer(settings, store)
        stack.push_async_callback(server.stop)
        await server.start()
        log.info("planchet %s serving on %s://%s:%d (data dir %s)", __version__,
                 "wss" if server.tls else "ws", settings.host, server.port, settings.data_dir)
        if ready:
            ready(server)
        await stopping.wait()
        log.info("stopping: requeueing work in flight")


async def _private_redis(settings: Settings, stack: contextlib.AsyncExitStack) -> str:
    """Start the private redis-server, supervised until ``stack`` closes; its URL.

    The URL carries the password: it is never logged, only the address is.
    """
    private = RedisProcess(settings.embedded_redis_dir)
    stack.push_async_callback(asyncio.to_thread, private.stop)
    await asyncio.to_thread(private.start)
    log.info("started a private redis-server on %s (data in %s)", private.address,
             private.directory)
    supervisor = asyncio.create_task(supervise(private), name="redis supervisor")
    stack.push_async_callback(_cancel, supervisor)
    return private.url


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
