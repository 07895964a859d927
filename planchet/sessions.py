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
import secrets
import time
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
        self.circuits: dict[str, str] = {}  # job -> why it is cut off it: no more credit
        self.grants: set[str] = set()  # keys of the worker tokens its credits named
        # what ``watch`` shows of it: cheap integer bookkeeping only (see ``watch.py``)
        self.id = secrets.token_hex(4)  # a short public id, never the resumable ``name``
        self.client: str | None = None  # hello.client
        self.kind = "other"  # blocking, asyncio, work, browser, node, other
        self.address = "?"  # the peer's address
        self.seen = time.monotonic()  # its last frame
        self.settled: dict[str, Tally] = {}  # job -> what it settled of it

    def identify(self, client: str | None, address: str, origin: str | None) -> None:
        """Who is on the other end, as its hello and its connection say."""
        self.client, self.address = client, address
        self.kind = client_kind(client, origin)

    def count(self, job: str, ack: Ack) -> None:
        """Count a result's ack for ``watch``: two additions, no clock but the first."""
        tally = self.settled.get(job)
        if tally is None:
            tally = self.settled[job] = Tally()
        tally.done += ack.written
        tally.failed += ack.retried + ack.failed


class Tally:
    """What one session settled of one job; ``watch`` samples it to find a rate."""

    __slots__ = ("done", "failed", "samples")

    def __init__(self) -> None:
        self.done = self.failed = 0
        self.samples: list[tuple[float, int]] = [(time.monotonic(), 0)]  # (when, settled)

    def rate(self, now: float, window: float = 10.0) -> float:
        """Items settled per second over about the last ``window`` seconds; samples once."""
        total = self.done + self.failed
        samples = self.samples
        while len(samples) > 1 and samples[1][0] <= now - window:
            del samples[0]  # keep one sample at least as old as the window
        then, before = samples[0]
        samples.append((now, total))
        return (total - before) / (now - then) if now > then else 0.0


def client_kind(client: str | None, origin: str | None = None) -> str:
    """The kind of a client from its ``hello.client`` (``planchet-python/1.0 asyncio``,
    ``planchet-work/1.0``, ``planchet-js/1.0 browser``...); a page's Origin says browser."""
    name, _, flavour = (client or "").partition(" ")
    family = name.split("/", 1)[0]
    if family == "planchet-work":
        return "work"
    if family in ("planchet-python", "planchet-js") and flavour in KINDS:
        return flavour
    return "browser" if client is None and origin else "other"


KINDS = frozenset({"blocking", "asyncio", "browser", "node"})


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
        self.failing = 0  # batches in a row whose every item the worker failed (the breaker)
        self.wrote = False  # a result of this worker was written: retries no longer count
        self._partial: dict[str, tuple[int, int, bool]] = {}  # lease -> written, failed, new
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

    def failed_batch(self, lease: str, ack: Ack, ended: bool, new: bool) -> int:
        """Count, at the result that ends each lease, the batches in a row whose items all
        failed by the worker's own errors (some failed, none written; partial results
        add up); a batch with a result written starts the count again. A batch of items
        that had all failed before (``new`` False: retries) is left out once this worker
        has written something: a worker that never did is broken, whatever it gets. The
        count."""
        written, failed, was_new = self._partial.pop(lease, (0, 0, False))
        written, failed = written + ack.written, failed + ack.retried + ack.failed
        new = new or was_new
        if not ended:
            self._partial[lease] = written, failed, new
            if len(self._partial) > len(self.leases):  # ended otherwise: expired, released
                self._partial = {k: v for k, v in self._partial.items() if k in self.leases}
        elif written:
            self.failing, self.wrote = 0, True
        elif failed and (new or not self.wrote):  # retries count until it wrote anything
            self.failing += 1
        return self.failing

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
        batch = Batch.model_construct(job=self.job.name, lease=lease.id, items=lease.batch,
                                      lease_timeout=float(self.job.spec.lease_timeout))
        await self.session.send(batch)
        return True

    async def stop(self, patience: float | None = None) -> None:
        """Stop the pump; after ``patience`` seconds (a send stuck on a dead connection),
        cancel it: whatever it leased stays recorded on this subscription."""
        self.closed = True
        self.wake()
        if patience is None:
            await self.task
            return
        done, _ = await asyncio.wait([self.task], timeout=patience)
        if not done:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
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
