"""The asyncio client, for push-style consumers.

    async with AsyncPlanchetClient(url) as client:
        async for batch in client.batches("my-job", prefetch=2):
            await batch.ack([(i, work(item)) for i, item in batch.items])

The connection (``delivery.Delivering``) files every incoming message into a
``ClientSession`` as it arrives, and wakes whoever waits; a reader task waits for the
connection to drop. Then it reconnects with backoff; the session then sends the
credit of every job being consumed and every pending request again, and answers results
for leases of the old connection as ``dropped`` (the server requeued them). Senders
never retry by themselves: a send on a dead connection leaves the message pending for
the reconnect, so nothing spins and nothing waits for ever.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect

from .codec import encode, make_result
from .connecting import (
    DEFAULT_URL,
    FAILURES,
    close_code,
    forget_released,
    refusal,
    retry_after,
    tls_options,
    websocket_url,
)
from .delivery import Delivering
from .exceptions import ConnectionLost, PlanchetError, Unavailable
from .messages import (
    Ack,
    Batch,
    Credit,
    Extend,
    Grant,
    Item,
    ItemError,
    JobCommand,
    Release,
    Revoke,
    ServerCommand,
    StartJob,
    Status,
    Tokens,
    Watch,
)
from .progress import ProgressOption, make_callback
from .session import MAX_FAILING_BATCHES, ClientSession, check_close, dropped
from .version import __version__

HELLO_TIMEOUT = 30.0
log = logging.getLogger("planchet")


@dataclass
class WorkBatch:
    """A leased batch; ``ack`` sends its results (all at once or in parts)."""

    client: AsyncPlanchetClient = field(repr=False)
    job: str
    lease: str
    items: list[Item]
    lease_timeout: float

    async def ack(self, results: list[Item], errors: list[ItemError] | None = None) -> Ack:
        """Send the results and wait for the server's ack: what became of them."""
        return await self.client.send_results(self.job, self.lease, results, errors or [])

    def ack_nowait(self, results: list[Item], errors: list[ItemError] | None = None) -> None:
        """Send the results and go on at once, without waiting for the server's ack, so
        the worker works while the server writes (the fastest way to consume a job).

        They are written at once, with no task step and no wait for the socket to drain
        (or, while a flush is under way, by that flush once it has sent what it took).
        Their ack still counts for ``progress`` and the breaker; an error in its place
        ends ``batches`` with that error. Results that cannot be sent as JSON raise
        here, as ``ack`` would."""
        self.client.send_results_nowait(self.job, self.lease, results, errors or [])


class AsyncPlanchetClient:
    client_name = f"planchet-python/{__version__} asyncio"  # hello.client, shown by watch

    def __init__(self, url: str = DEFAULT_URL, token: str | None = None, *,
                 retries: int = 8, ssl: ssl.SSLContext | None = None,
                 max_failing_batches: int = MAX_FAILING_BATCHES) -> None:
        self.url = websocket_url(url)
        self.token = token
        self.ssl = ssl  # for wss:// URLs: the TLS context (say, trusting a private CA)
        self.retries = retries  # failed connection attempts in a row before ConnectionLost
        # batches of a job in a row failed on every item (errors, nothing written) after
        # which ``batches`` raises CircuitOpen; 0: never
        self._session = ClientSession(token, max_failing_batches=max_failing_batches,
                                      client=self.client_name)
        self._ws: Delivering | None = None
        self._reader: asyncio.Task[None] | None = None
        self._sending = asyncio.Lock()  # frames leave in the order the session queued them
        self._opening = asyncio.Lock()
        self._changed = asyncio.Event()  # replaced each time it is set: a broadcast
        self._closing = False

    async def __aenter__(self) -> AsyncPlanchetClient:
        await self.connect()
        return self

    async def __aexit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        await self.close(*close_code(exc_type))

    async def connect(self) -> None:
        """Open the connection (with backoff) and start the reader."""
        async with self._opening:
            if self._reader is not None and not self._reader.done():
                return
            self._closing = False
            await self._open()
            self._reader = asyncio.create_task(self._read_forever(), name="planchet reader")

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close with ``code`` (1000: the server requeues what we held, uncharged); what
        is queued to send (results sent with ``ack_nowait``) leaves first."""
        self._closing = True
        await self._flush()
        if self._reader:
            self._reader.cancel()
            await asyncio.wait([self._reader])  # its own end, whatever it was, is not ours
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(*FAILURES):
                await ws.close(code, reason)
        self._session.disconnected()
        self._session.fail(ConnectionLost("client closed"))
        self._notify()

    # --- the connection ---------------------------------------------------------------

    async def _open(self) -> None:
        last: Exception | None = None
        hint = 0.0
        while (delay := self._session.next_delay(self.retries, hint)) is not None:
            await asyncio.sleep(delay)
            try:
                ws = await self._handshake()
            except FAILURES as exc:
                if (final := refusal(self.url, exc)) is not None:
                    raise final from exc
                last, hint = exc, retry_after(exc)
                continue
            self._ws = ws
            ws.deliver_to(self._receive)
            await self._flush()  # the credits and requests the session queued on welcome
            return
        raise ConnectionLost(f"cannot reach {self.url}: {last}") from last

    async def _handshake(self) -> Delivering:
        ws = await connect(self.url, max_size=None, open_timeout=10, close_timeout=2,
                           create_connection=Delivering, **tls_options(self.url, self.ssl))
        assert isinstance(ws, Delivering)
        try:
            await ws.send(encode(self._session.hello()))
            self._session.welcome(await ws.first(HELLO_TIMEOUT))
        except BaseException:
            await ws.close()
            raise
        return ws

    def _receive(self, message: bytes) -> None:
        """File one message, in the connection's protocol callback."""
        try:
            self._session.receive(message)
        except Exception as exc:  # a bug must not leave the waiters waiting for ever; the
            # connection ends with it (never half-watched), and the reader connects again
            log.exception("could not file a message from the server")
            self._session.fail(ConnectionLost(f"client reader failed: {exc!r}"))
            if self._ws is not None:
                self._ws.transport.abort()
        finally:
            self._notify()

    async def _read_forever(self) -> None:
        """Reconnect when the connection drops; fail the waiters at the end."""
        try:
            while True:
                ws = self._ws
                assert ws is not None
                await ws.wait_closed()
                self._ws = None
                check_close(ws.close_code)
                self._session.disconnected()
                self._notify()
                await self._open()
        except PlanchetError as exc:  # no connection to be had, or a final refusal
            self._session.fail(exc)
        except Exception as exc:  # a bug must not leave the waiters waiting for ever
            self._session.fail(ConnectionLost(f"client reader failed: {exc!r}"))
            raise
        finally:
            self._notify()

    def _notify(self) -> None:
        changed, self._changed = self._changed, asyncio.Event()
        changed.set()

    async def _until(self, ready: Callable[[], bool]) -> None:
        while not ready():
            await self._changed.wait()

    async def _flush(self) -> None:
        """Send what the session queued, and what it queues meanwhile. On a dead
        connection, stop: the reader sees the drop, and the session queues everything
        still pending on the next connection."""
        async with self._sending:
            while self._session.outbox and (ws := self._ws) is not None:
                if not await self._send(ws, self._session.take_outbox()):
                    return

    async def _send(self, ws: Delivering, frames: list[bytes]) -> bool:
        """Send ``frames``; False if the connection failed."""
        for n, frame in enumerate(frames):
            try:
                await ws.send(frame)
            except FAILURES:
                return False
            except asyncio.CancelledError:  # the caller gave up, the connection did not:
                # websockets hands a frame to the socket before its only wait (the
                # drain), so this one went; the rest go with the next flush
                self._session.outbox[:0] = frames[n + 1:]
                raise
        return True

    async def _ensure_open(self) -> None:
        if self._closing:
            raise ConnectionLost("client closed")
        if self._reader is None or self._reader.done():
            await self.connect()

    async def _wait(self, key: int) -> Any:
        """Send what is queued and wait for the answer filed under ``key``."""
        try:
            await self._flush()
            await self._until(lambda: self._session.has_answer(key))
        except BaseException:
            self._session.abandon(key)
            raise
        return self._session.answer(key)

    async def _request(self, message: Any) -> Any:
        await self._ensure_open()
        reply = await self._wait(self._session.request(message))
        return reply.data

    # --- work -------------------------------------------------------------------------

    async def batches(self, job: str, prefetch: int = 2, batch_size: int | None = None,
                      token: str | None = None, max_batch_bytes: int | None = None,
                      progress: ProgressOption = None) -> AsyncIterator[WorkBatch]:
        """Batches of ``job`` as the server pushes them, until the job is done.

        ``max_batch_bytes``: no batch frame is bigger, but for a lone item that is.
        ``progress``: a function called with a ``Progress`` (this worker's counts, the
        job's total and ETA) at each batch when they moved, and once more at the end;
        True draws a ``tqdm`` bar.
        """
        callback = make_callback(progress)
        await self._ensure_open()
        if callback is not None:
            self._session.track(job, callback, token)
        self._session.credit(Credit(job=job, batches=prefetch, batch_size=batch_size,
                                    max_batch_bytes=max_batch_bytes, token=token or self.token))
        try:
            while True:
                if self._session.outbox:  # the credit, results sent with ``ack_nowait``
                    await self._flush()
                await self._until(lambda: self._session.has_batch(job))
                got = self._session.take_batch(job)  # a deleted job or refused credit raises
                if not isinstance(got, Batch):
                    return
                self._session.progress(job)
                if self._session.outbox:  # a report request
                    await self._flush()
                yield WorkBatch(self, got.job, got.lease, got.items, got.lease_timeout)
        finally:
            self._session.uncredit(job)
            self._session.progress(job, final=True)

    async def send_results(self, job: str, lease: str | None, results: list[Item],
                           errors: list[ItemError] | None = None,
                           token: str | None = None) -> Ack:
        message = make_result(job, lease, results, errors, token or self.token)
        await self._ensure_open()
        try:
            return await self._wait(self._session.result(message))
        except Unavailable:  # not taken: the items are requeued when the job reloads
            return dropped(message)

    def send_results_nowait(self, job: str, lease: str | None, results: list[Item],
                            errors: list[ItemError] | None = None,
                            token: str | None = None) -> None:
        """``send_results`` without waiting for the ack (see ``WorkBatch.ack_nowait``)."""
        if self._closing or self._reader is None or self._reader.done():
            raise ConnectionLost("not connected: connect (or use async with) first")
        message = make_result(job, lease, results, errors, token or self.token)
        self._session.result(message, wait=False)
        self._send_now()

    def _send_now(self) -> None:
        """Write what is queued at once, unless a flush is under way (it sends this too,
        in order) or the connection is not open (the session queues what is pending
        again on the next one)."""
        ws = self._ws
        if ws is not None and not self._sending.locked() and ws.write_now(self._session.outbox):
            self._session.outbox = []

    async def release(self, job: str, lease: str, ids: list[int] | None = None,
                      token: str | None = None) -> dict[str, Any]:
        """Hand back items of ``lease`` (``ids``, or every pending one), no attempt
        charged; the reply: ``{"lease", "released", "dropped"}``."""
        data = await self._request(Release(id=self._session.next_id(), job=job, lease=lease,
                                           ids=ids, token=token or self.token))
        forget_released(self._session, job, lease, ids)
        return data

    async def extend(self, job: str, lease: str, seconds: float | None = None,
                     token: str | None = None) -> dict[str, Any]:
        """Push ``lease``'s deadline to ``seconds`` from now (at most, and None: the job's
        lease_timeout); the reply: ``{"lease", "held", "lease_timeout"}``."""
        return await self._request(Extend(
            id=self._session.next_id(), job=job, lease=lease,
            seconds=None if seconds is None else float(seconds), token=token or self.token))

    # --- jobs -------------------------------------------------------------------------

    async def start_job(self, job_name: str, metadata: dict[str, Any],
                        reader_name: str | None = None, writer_name: str | None = None,
                        clean_start: bool = False, token: str | None = None,
                        mode: str = "read-write", **options: Any) -> dict[str, Any]:
        return await self._request(StartJob(
            id=self._session.next_id(), job=job_name, reader=reader_name, writer=writer_name,
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

    async def retry(self, job: str, token: str | None = None) -> dict[str, Any]:
        """Put the job's failed items back in the queue (see ``PlanchetClient.retry_job``)."""
        return await self._command("retry", job, token)

    async def jobs(self, token: str | None = None) -> list[dict[str, Any]]:
        return await self._request(ServerCommand(type="jobs", id=self._session.next_id(),
                                                 token=token or self.token))

    async def watch(self, jobs: Sequence[str] | None = None, interval: float = 1.0,
                    token: str | None = None) -> AsyncIterator[Status]:
        """The server's ``status`` (every job, or ``jobs``) now and every ``interval``
        seconds (0.25 to 60), across reconnects, until the loop stops. A job's workers and
        errors are ``None`` unless ``token`` (or the client's) may administer the job.
        A reader slower than the statuses gets the newest ones."""
        watch = Watch(id=self._session.next_id(), jobs=None if jobs is None else list(jobs),
                      interval=float(interval), token=token or self.token)
        await self._ensure_open()
        self._session.statuses.clear()
        self._session.watching = watch
        try:
            await self._wait(self._session.request(watch))
            while True:
                await self._until(lambda: bool(self._session.statuses) or self._ended())
                if not self._session.statuses:
                    raise ConnectionLost("the connection ended")
                yield self._session.statuses.popleft()
        finally:
            if self._session.watching is watch:
                self._session.watching = None
                await self._unwatch()

    def _ended(self) -> bool:
        return self._closing or self._reader is None or self._reader.done()

    async def _unwatch(self) -> None:
        """Stop the server's statuses; nobody waits for the reply."""
        if self._ended():
            return
        self._session.abandon(self._session.request(Watch(id=self._session.next_id(),
                                                          interval=0.0)))
        await self._flush()

    # --- worker tokens -----------------------------------------------------------------

    async def grant_token(self, jobs: str | Sequence[str], label: str | None = None,
                          token: str | None = None) -> dict[str, Any]:
        """A new worker token for ``jobs`` (see ``PlanchetClient.grant_token``)."""
        names = [jobs] if isinstance(jobs, str) else list(jobs)
        return await self._request(Grant(id=self._session.next_id(), jobs=names,
                                         label=label, token=token or self.token))

    async def worker_tokens(self, job: str | None = None,
                            token: str | None = None) -> list[dict[str, Any]]:
        """The worker tokens of ``job`` (every one, with the master token): no secrets."""
        return await self._request(Tokens(id=self._session.next_id(), job=job,
                                          token=token or self.token))

    async def revoke_token(self, key: str, token: str | None = None) -> dict[str, Any]:
        """Revoke the worker token named ``key``: it stops working at once."""
        return await self._request(Revoke(id=self._session.next_id(), key=key,
                                          token=token or self.token))

    async def _command(self, op: str, job: str, token: str | None) -> Any:
        return await self._request(JobCommand(type=op, id=self._session.next_id(), job=job,  # type: ignore[arg-type]
                                              token=token or self.token))
