"""A connection's session and its credit pumps: what the server holds per client.

A ``Session`` is one connection, seen through the coroutines that send it a message
and close it. A ``Subscription`` is a session's credit on one job; its pump leases and
pushes a batch whenever the session has fewer batches in flight than it asked for, and
sleeps otherwise until the job or the credit changes. No sockets here: the server
passes the coroutines in.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

from .batching import BatchSizer
from .exceptions import ConnectionLost, PlanchetError
from .jobs import Job
from .messages import Ack, Batch, Event, Message

log = logging.getLogger("planchet")

Send = Callable[[Message], Awaitable[None]]
Close = Callable[[int, str], Awaitable[None]]


async def no_close(code: int, reason: str) -> None:
    return None


class Ending(enum.Enum):
    """How a connection ended, which decides what its leases cost."""

    GOODBYE = "goodbye"  # the client closed with 1000 or 1001 (see ``Session.away``): free
    FAILED = "failed"  # the client closed with 1011, its own code failed: charged
    VANISHED = "vanished"  # no goodbye at all: charged, unless it was gone at once


class Session:
    def __init__(self, send: Send, token: str | None = None, close: Close = no_close) -> None:
        self.send = send
        self.close = close
        self.token = token
        self.subscriptions: dict[str, Subscription] = {}
        self.faulted = False  # the server failed this session: its leases go back free
        self.name: str | None = None  # a resumable session's id: a capability, never logged
        self.resumed = False  # it took over the session its hello named
        self.away = False  # the client closed with 1001 (going away): it may come back
        self.moved = False  # taken over by another connection: its own end changes nothing
        self.ending = Ending.VANISHED  # how its connection ended, once parked
        self.parked_at = 0.0  # when (time.monotonic)


class Subscription:
    """One session's credit on one job, and the pump that honours it."""

    def __init__(self, session: Session, job: Job, batches: int, batch_size: int | None) -> None:
        self.session = session
        self.job = job
        self.credit = batches
        self.batch_size = batch_size or job.spec.batch_size
        self.sizer: BatchSizer | None = None  # adaptive batching, if the credit allows it
        self.max_batch_bytes: int | None = None  # no batch frame bigger (but a lone item)
        self.resize(batch_size)
        self.leases: set[str] = set()
        self.closed = False
        self.stalled = False  # a lease expired: push nothing until the worker speaks again
        self._wake = asyncio.Event()
        self.start()

    def start(self) -> None:
        """Start (or, for a resumed session, restart) the pump."""
        self.closed = self.stalled = False
        self.job.watchers.add(self)
        self.task = asyncio.create_task(self._pump(), name=f"pump {self.job.name}")

    def wake(self) -> None:
        self._wake.set()

    def resize(self, batch_size: int | None) -> None:
        """A credit that names a batch size fixes it; one that does not lets the server
        size batches to the job's ``batch_seconds``, when the job has one."""
        target = self.job.spec.batch_seconds
        if batch_size is not None or target is None:
            self.batch_size, self.sizer = batch_size or self.batch_size, None
        elif self.sizer is None:
            self.sizer = BatchSizer(self.batch_size, target)

    def settled(self, ack: Ack) -> None:
        if self.sizer is not None:
            self.sizer.settled(ack.written + ack.retried + ack.failed)

    def tell(self, event: str) -> None:
        """Send a job event without waiting on a slow reader of this session."""
        spawn(self.session.send(Event(job=self.job.name, event=event)))  # type: ignore[arg-type]

    def stall(self) -> None:
        self.stalled = True

    def revive(self) -> None:
        """The worker sent a frame for this job: it is alive, so serve it again."""
        if self.stalled:
            self.stalled = False
            self.wake()

    async def _pump(self) -> None:
        job = self.job
        try:
            while not self.closed and not job.closed:
                self._wake.clear()
                if job.done:
                    await self.session.send(Event(job=job.name, event="done"))
                    return
                if not self.stalled and len(self.leases) < self.credit and await self._push():
                    continue
                await self._wake.wait()
        except Exception as exc:
            await self._failed(exc)
        finally:
            job.watchers.discard(self)
            if job.closed and self.session.subscriptions.get(job.name) is self:
                del self.session.subscriptions[job.name]

    async def _failed(self, exc: Exception) -> None:
        """A pump never dies silently: a lost connection is quiet, anything else is a bug
        that costs this session (closed, its leases requeued free), never the job."""
        if _is_disconnect(exc):
            log.debug("pump for %s stopped: %r", self.job.name, exc)
            return
        log.error("pump for %s failed; closing its connection", self.job.name, exc_info=exc)
        self.session.faulted = True
        spawn(self.session.close(1011, "internal error; see the server log"))

    async def _push(self) -> bool:
        size = self.sizer.size if self.sizer else self.batch_size
        try:
            lease = await self.job.lease(self, size, self.max_batch_bytes)
        except PlanchetError as exc:  # the job broke: wait until it is reopened
            log.warning("%s", exc)
            return False
        if lease is None:
            if self.sizer is not None and not self.leases:
                self.sizer.idle()  # waiting for work is not working
            return False
        items = [(i, item) for i, (item, _) in lease.items.items()]
        batch = Batch.model_construct(job=self.job.name, lease=lease.id, items=items,
                                      lease_timeout=float(self.job.spec.lease_timeout))
        await self.session.send(batch)
        return True

    async def stop(self) -> None:
        self.closed = True
        self.wake()
        await self.task


def _is_disconnect(exc: Exception) -> bool:
    """The connection went away under a send (the server's ``send`` says ConnectionLost)."""
    return isinstance(exc, ConnectionLost | ConnectionError)


_background: set[asyncio.Task[None]] = set()


def spawn(coro: Awaitable[None]) -> None:
    """Run a best-effort send in the background, keeping a reference until it ends."""
    task = asyncio.ensure_future(_quietly(coro))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _quietly(coro: Awaitable[None]) -> None:
    with contextlib.suppress(Exception):
        await coro
