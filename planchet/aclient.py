"""The asyncio client, for push-style consumers.

    async with AsyncPlanchetClient(url) as client:
        async for batch in client.batches("my-job", prefetch=2):
            await batch.ack([(i, work(item)) for i, item in batch.items])

One reader task files every incoming frame: replies by request id, acks by lease,
batches into the queue of their job. When the connection drops it reconnects with
backoff and sends its credit again; requests in progress are sent again, and results
for leases of the old connection come back as ``dropped`` (the server requeued them).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .client import DEFAULT_URL, backoff_delays, hello_message, websocket_url
from .exceptions import (
    ConnectionLost,
    JobNotFound,
    ProtocolError,
    Unavailable,
    error_from_code,
)
from .messages import (
    Ack,
    Batch,
    Credit,
    Error,
    Event,
    Item,
    ItemError,
    JobCommand,
    Message,
    Reply,
    Result,
    ServerCommand,
    StartJob,
    Welcome,
    decode_server,
    encode,
)

_DONE = object()


@dataclass
class WorkBatch:
    """A leased batch; ``ack`` sends its results (all at once or in parts)."""

    client: AsyncPlanchetClient = field(repr=False)
    job: str
    lease: str
    items: list[Item]
    lease_timeout: float

    async def ack(self, results: list[Item], errors: list[ItemError] | None = None) -> Ack:
        return await self.client.send_results(self.job, self.lease, results, errors or [])


class AsyncPlanchetClient:
    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 retries: int = 8) -> None:
        self.url = websocket_url(url)
        self.token = token
        self.retries = retries
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._replies: dict[int, asyncio.Future[Message]] = {}  # by request id
        # acks by job, in the order the results were sent: the server answers in order
        self._acks: dict[str, collections.deque[asyncio.Future[Message]]] = (
            collections.defaultdict(collections.deque))
        self._queues: dict[str, asyncio.Queue[Any]] = collections.defaultdict(asyncio.Queue)
        self._credits: dict[str, Credit] = {}
        self._reader: asyncio.Task[None] | None = None
        self._connected = asyncio.Event()
        self._closing = False

    async def __aenter__(self) -> AsyncPlanchetClient:
        await self.connect()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()

    async def connect(self) -> None:
        await self._open()
        self._reader = asyncio.create_task(self._read_forever(), name="planchet reader")

    async def close(self) -> None:
        self._closing = True
        if self._reader:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        if self._ws:
            await self._ws.close()
        self._fail_pending(ConnectionLost("client closed"))

    async def _open(self) -> None:
        last: Exception | None = None
        for delay in backoff_delays(self.retries):
            await asyncio.sleep(delay)
            try:
                ws = await connect(self.url, max_size=None, open_timeout=10)
            except (OSError, TimeoutError, InvalidHandshake) as exc:
                last = exc
                continue
            await ws.send(encode(hello_message(self.token)))
            reply = decode_server(await ws.recv())
            if isinstance(reply, Error):
                raise error_from_code(reply.code, reply.message)
            if not isinstance(reply, Welcome):
                raise ProtocolError(f"expected welcome, got {reply.type!r}")
            self._ws = ws
            for credit in self._credits.values():  # the new connection holds nothing yet
                await ws.send(encode(credit))
            self._connected.set()
            return
        raise ConnectionLost(f"cannot reach {self.url}: {last}")

    async def _read_forever(self) -> None:
        while True:
            try:
                assert self._ws is not None
                async for frame in self._ws:
                    self._file(decode_server(frame))
            except ConnectionClosed:
                pass
            if self._closing:
                return
            self._connected.clear()
            self._fail_pending(_Reconnected())
            try:
                await self._open()
            except ConnectionLost as exc:
                self._fail_pending(exc)
                for queue in self._queues.values():
                    queue.put_nowait(exc)
                return

    def _file(self, msg: Message) -> None:
        match msg:
            case Batch():
                self._queues[msg.job].put_nowait(
                    WorkBatch(self, msg.job, msg.lease, msg.items, msg.lease_timeout))
            case Event(event="done"):
                self._queues[msg.job].put_nowait(_DONE)
            case Event(event="deleted"):
                self._queues[msg.job].put_nowait(JobNotFound(f"job {msg.job} was deleted"))
            case Reply() | Error() if msg.id is not None:
                _resolve(self._replies.pop(msg.id, None), msg)
            case Ack() | Error() if msg.job and self._acks[msg.job]:
                _resolve(self._acks[msg.job].popleft(), msg)  # the oldest result's answer
            case Error() if msg.job:  # a refused credit: the job's consumer hears of it
                self._queues[msg.job].put_nowait(error_from_code(msg.code, msg.message))

    def _fail_pending(self, exc: Exception) -> None:
        waiting = [*self._replies.values(), *(f for q in self._acks.values() for f in q)]
        self._replies.clear()
        self._acks.clear()
        for future in waiting:
            if not future.done():
                future.set_exception(exc)

    async def _exchange(self, message: Message,
                        register: Callable[[asyncio.Future[Message]], None]) -> Message:
        """Send, and wait for the answer ``register`` files the future under; after a
        reconnect, send again."""
        while True:
            await self._connected.wait()
            future = asyncio.get_running_loop().create_future()
            register(future)
            try:
                assert self._ws is not None
                await self._ws.send(encode(message))
                reply = await future
            except (_Reconnected, ConnectionClosed):
                continue
            if isinstance(reply, Error):
                raise error_from_code(reply.code, reply.message)
            return reply

    async def _request(self, message: Message) -> Any:
        request_id: int = message.id  # type: ignore[attr-defined]
        reply = await self._exchange(message, partial(self._replies.__setitem__, request_id))
        return reply.data  # type: ignore[attr-defined]

    # --- work -------------------------------------------------------------------------

    async def batches(self, job: str, prefetch: int = 2, batch_size: int | None = None,
                      token: str | None = None) -> AsyncIterator[WorkBatch]:
        """Batches of ``job`` as the server pushes them, until the job is done."""
        credit = Credit(job=job, batches=prefetch, batch_size=batch_size,
                        token=token or self.token)
        self._credits[job] = credit
        await self._connected.wait()
        assert self._ws is not None
        await self._ws.send(encode(credit))
        queue = self._queues[job]
        try:
            while True:
                got = await queue.get()
                if got is _DONE:
                    return
                if isinstance(got, Exception):
                    raise got
                yield got
        finally:
            self._credits.pop(job, None)

    async def send_results(self, job: str, lease: str | None, results: list[Item],
                           errors: list[ItemError] | None = None,
                           token: str | None = None) -> Ack:
        message = Result(job=job, lease=lease, items=results, errors=errors or [],
                         token=token or self.token)
        try:
            return await self._exchange(message, self._acks[job].append)  # type: ignore[return-value]
        except Unavailable:  # not taken: the items are requeued when the job reloads
            return Ack(job=job, lease=lease, dropped=len(results) + len(errors or []))

    # --- jobs -------------------------------------------------------------------------

    async def start_job(self, job_name: str, metadata: dict[str, Any],
                        reader_name: str | None = None, writer_name: str | None = None,
                        clean_start: bool = False, token: str | None = None,
                        mode: str = "read-write", **options: Any) -> dict[str, Any]:
        return await self._request(StartJob(
            id=next(self._ids), job=job_name, reader=reader_name, writer=writer_name,
            metadata=metadata, mode=mode, clean_start=clean_start,  # type: ignore[arg-type]
            token=token or self.token, **options))

    async def report(self, job: str, token: str | None = None) -> dict[str, Any]:
        return await self._command("report", job, token)

    async def pause(self, job: str, token: str | None = None) -> dict[str, Any]:
        return await self._command("pause", job, token)

    async def resume(self, job: str, token: str | None = None) -> dict[str, Any]:
        return await self._command("resume", job, token)

    async def delete(self, job: str, token: str | None = None) -> dict[str, Any]:
        return await self._command("delete", job, token)

    async def jobs(self, token: str | None = None) -> list[dict[str, Any]]:
        return await self._request(ServerCommand(type="jobs", id=next(self._ids),
                                                 token=token or self.token))

    async def _command(self, op: str, job: str, token: str | None) -> Any:
        return await self._request(JobCommand(type=op, id=next(self._ids), job=job,  # type: ignore[arg-type]
                                              token=token or self.token))


def _resolve(future: asyncio.Future[Message] | None, msg: Message) -> None:
    if future is not None and not future.done():
        future.set_result(msg)


class _Reconnected(Exception):
    """The connection dropped while waiting; the request is sent again."""
