"""Every decision about a connection the server makes, no sockets: routing, life cycle.

Sessions and their credit pumps live in ``sessions.py``. When a session ends its pumps
stop first and its leases go back to the queue after, so no lease can outlive it.
A resumable session whose connection drops is parked instead (``parking.py``): its
pumps stop, its leases and credit wait ``resume_grace`` seconds for a new connection
that names it in ``hello``; that connection takes them over and gets its unsettled
leases sent again.

Tokens are checked by ``auth.Keys`` and jobs are run by ``admin.Admin``; this module
routes each message to them.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from .admin import Admin
from .auth import Keys, WorkerGrant
from .codec import admission_of
from .config import Settings
from .exceptions import AuthError, CircuitOpen, PlanchetError, ProtocolError
from .jobs import Job
from .messages import (
    Ack,
    Batch,
    Credit,
    Error,
    Extend,
    Grant,
    Hello,
    JobCommand,
    Message,
    Release,
    Reply,
    Result,
    Revoke,
    ServerCommand,
    StartJob,
    Tokens,
    Watch,
)
from .parking import Parking, new_name
from .sessions import Close, Ending, Send, Session, Subscription, no_close, spawn
from .store import Store
from .watch import Board

log = logging.getLogger("planchet")

TAKEOVER_PATIENCE = 2.0  # seconds a resumed session's old pump may take to stop

__all__ = ["Dispatcher", "Ending", "Session", "Subscription"]


class Dispatcher:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.keys = Keys(settings.token)
        self.admin = Admin(store, settings, self.keys)
        self.sessions: set[Session] = set()
        self.stopping = False  # set by a graceful shutdown: leases return uncharged
        self.parking: Parking[Session] = Parking(settings.resume_grace, self._expire)
        self.board = Board(self.sessions, lambda: self.admin.jobs, self.keys, store)  # watch
        self._maintenance: asyncio.Task[None] | None = None

    @property
    def jobs(self) -> dict[str, Job]:
        return self.admin.jobs

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load every job from Redis (requeueing old leases) and start the lease clock."""
        await self.admin.load()
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")

    async def close(self) -> None:
        if self._maintenance:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        await self.board.close()
        for session in list(self.sessions):
            await self.disconnect(session)
        for session in await self.parking.close():
            await self._release(session)
        await self.admin.close()

    async def _maintain(self) -> None:
        """Expire hung leases; reopen broken jobs. A bug here is logged, never fatal."""
        while True:
            await asyncio.sleep(self.settings.tick)
            try:
                await self.admin.maintain()
                spawn(self.board.tick())  # a PING, history samples: never holds this up
            except Exception:
                log.exception("maintenance failed")

    def connect(self, send: Send, hello: Hello, close: Close = no_close) -> Session:
        """A new session; a resumable one gets a name (``resume`` may take an old one's)."""
        session = Session(send, hello.token, close)
        self.sessions.add(session)
        if hello.resumable or hello.session is not None:
            session.name = new_name()
            self.parking.add(session.name, session)
        return session

    async def disconnect(self, session: Session, ending: Ending = Ending.VANISHED) -> None:
        """Stop the session's pumps, then requeue everything it held, or park it.

        What it costs depends on ``ending`` (see ``Ending`` and ``Job.release``); nothing
        when the server itself is stopping or failed the session. A resumable session is
        parked unless its client closed with 1000 or 1011.
        """
        self.sessions.discard(session)
        self.board.unwatch(session)
        if session.moved:
            return
        session.ending, session.parked_at = ending, time.monotonic()
        if session.name is not None and self._parks(session, ending):
            for sub in list(session.subscriptions.values()):
                await sub.stop()
            if not session.moved:  # resumed while its pumps stopped: the new one has it
                self.parking.park(session.name, session)
            return
        if session.name is not None:
            self.parking.drop(session.name, session)
        await self._release(session)

    def _parks(self, session: Session, ending: Ending) -> bool:
        if self.stopping or session.faulted or ending is Ending.FAILED:
            return False
        return ending is Ending.VANISHED or session.away

    async def _expire(self, session: Session) -> None:
        """A parked session's grace ran out: its leases go back as its ending says."""
        if not session.moved:
            await self._release(session)

    async def _release(self, session: Session, *subs: Subscription) -> None:
        """Stop the pumps of ``subs`` (default: every one of the session), then requeue
        their leases as ``session.ending`` says; the time spent parked is not charged."""
        ending = session.ending
        crashed = ending is not Ending.GOODBYE and not (self.stopping or session.faulted)
        grace = self.settings.crash_grace if ending is Ending.VANISHED else 0.0
        grace += time.monotonic() - session.parked_at
        if not subs:
            subs = tuple(session.subscriptions.values())
            session.subscriptions.clear()
        for sub in subs:
            await sub.stop()
            try:
                await sub.job.release(sub, crashed=crashed, grace=grace)
            except PlanchetError as exc:  # the job broke: reopening it requeues the leases
                log.warning("release on %s: %s", sub.job.name, exc)

    # --- resuming a session -----------------------------------------------------------

    async def resume(self, session: Session, name: str) -> bool:
        """Take over the session ``name`` names, parked or still open elsewhere (closed
        with 4001): its subscriptions move to ``session``, pumps stopped until
        ``restart``. A job the new hello's token may not take is released. False when
        the name is unknown or its grace ran out."""
        old = self.parking.take(name, session)
        if old is None:
            return False
        old.moved = True
        if session.name is not None:
            self.parking.drop(session.name, session)
        session.name, session.resumed = name, True
        if old in self.sessions:  # the server has not noticed the blip yet
            self.sessions.discard(old)
            spawn(old.close(4001, "session resumed on another connection"))
            old.ending, old.parked_at = Ending.VANISHED, time.monotonic()
        for job_name, sub in list(old.subscriptions.items()):
            await sub.stop(patience=TAKEOVER_PATIENCE)
            if self.jobs.get(job_name) is not sub.job or sub.job.closed:
                continue  # deleted or replaced meanwhile: its leases went with it
            try:
                self.keys.check("credit", job_name, None, session.token)
            except AuthError:
                await self._release(old, sub)
                continue
            sub.session = session
            session.subscriptions[job_name] = sub
        old.subscriptions.clear()
        return True

    async def restart(self, session: Session, held: list[str]) -> None:
        """After the welcome of a resumed session: send again the leases its client does
        not hold (same ids, a fresh deadline, no attempt charged), then restart pumps."""
        keep = set(held)
        for sub in list(session.subscriptions.values()):
            job = sub.job
            for lease_id in [le for le in job.leases if le in sub.leases and le not in keep]:
                lease = job.leases.get(lease_id)  # it may have ended during a send
                if lease is not None and job.extend(lease_id) is not None:
                    await session.send(Batch.model_construct(
                        job=job.name, lease=lease_id, items=lease.unsettled,
                        lease_timeout=float(job.spec.lease_timeout)))
            sub.start()

    # --- requests ---------------------------------------------------------------------

    def admit(self, session: Session, kind: str, job: str | None, token: str | None,
              replace: bool = False) -> None:
        """Check the request's right to run; cheap, so it may run before full validation."""
        self.keys.check(kind, job, token, session.token, replace)

    async def handle(self, session: Session, msg: Message, admitted: bool = False
                     ) -> Message | None:
        """Carry out one message; the reply to send, if any. Errors raise. ``admitted``:
        ``admit`` has passed the frame's envelope already (the server does so before it
        validates a frame; the envelope's fields are the message's once it is valid)."""
        session.seen = time.monotonic()
        if not admitted:
            self.admit(session, *admission_of(msg))
        match msg:
            case Credit():
                self._credit(session, msg)
                return None
            case Result():
                return await self._result(session, msg)
            case StartJob():
                return Reply(id=msg.id, data=await self.admin.start(msg))
            case JobCommand(type="report"):
                return Reply(id=msg.id, data=self.admin.get(msg.job).report())
            case JobCommand():
                return Reply(id=msg.id, data=await self.admin.command(msg.type, msg.job))
            case Release() | Extend():
                return self._lease_request(session, msg)
            case Watch():
                await self.board.watch(session, msg)  # the reply, then the statuses
                return None
            case ServerCommand():
                return Reply(id=msg.id, data=await self._server_command(msg))
        return await self._worker_tokens(session, msg)

    async def _server_command(self, msg: ServerCommand) -> Any:
        """``jobs``: every job's report; ``purge``: delete them all."""
        if msg.type == "jobs":
            return [job.report() for job in self.jobs.values()]
        return {"deleted": await self.admin.purge()}

    async def _worker_tokens(self, session: Session, msg: Message) -> Reply:
        """``grant``, ``tokens``, ``revoke``: their jobs are checked here, where the whole
        message is known (``admit`` sees only the envelope)."""
        match msg:
            case Grant():
                self.keys.check_jobs(msg.jobs, msg.token, session.token)
                return Reply(id=msg.id, data=await self.admin.grant(msg.jobs, msg.label))
            case Tokens():
                return Reply(id=msg.id, data=self.admin.worker_tokens(msg.job))
            case Revoke():
                jobs = self.keys.granted(msg.key).jobs
                self.keys.check_jobs(jobs, msg.token, session.token)
                holders = [s for s in self.sessions if msg.key in s.grants
                           or _key_of(self.keys.worker(s.token)) == msg.key]
                reply = Reply(id=msg.id, data=await self.admin.revoke(msg.key))
                for holder in holders:  # cut off now; what they hold goes back free
                    holder.faulted = True
                    spawn(holder.close(1008, "worker token revoked"))
                return reply
        raise ProtocolError(f"unexpected {getattr(msg, 'type', '?')!r} message")

    def _credit(self, session: Session, msg: Credit) -> None:
        job = self.admin.get(msg.job)
        if job.name in session.circuits:
            raise CircuitOpen(session.circuits[job.name])
        key = _key_of(self.keys.worker(msg.token if msg.token is not None else session.token))
        if key is not None:  # a revoke of that token cuts this session off
            session.grants.add(key)
        sub = session.subscriptions.get(job.name)
        if sub is None or sub.job is not job or sub.task.done():  # done: say so again
            sub = Subscription(session, job, msg.batches, msg.batch_size)
            session.subscriptions[job.name] = sub
        sub.credit = msg.batches
        sub.resize(msg.batch_size)
        if msg.max_batch_bytes is not None:
            sub.max_batch_bytes = msg.max_batch_bytes
        sub.stalled = False
        sub.wake()

    def _spoke(self, session: Session, job: str) -> Subscription | None:
        """The worker sent a frame for ``job``: it is alive, so a stalled pump serves again."""
        sub = session.subscriptions.get(job)
        if sub:
            sub.revive()
        return sub

    async def _result(self, session: Session, msg: Result) -> Ack | None:
        job = self.admin.get(msg.job)
        sub = self._spoke(session, msg.job)
        held = sub is not None and msg.lease in sub.leases
        new = held and self.settings.max_failing_batches > 0 and _untried(job, msg.lease)
        ack = await job.settle(msg.lease, msg.items, list(msg.errors))
        session.count(msg.job, ack)
        if sub:
            sub.settled(ack)
            if held and self._trips(sub, msg.lease or "", ack, new):
                await session.send(ack)  # the ack first: it answers this result
                await self._open_circuit(session, sub)
                return None
        return ack

    def _trips(self, sub: Subscription, lease: str, ack: Ack, new: bool) -> bool:
        """Whether this result makes the session's last ``max_failing_batches`` batches
        of the job failed on every item: the circuit breaker (0: never)."""
        limit = self.settings.max_failing_batches
        ended = lease not in sub.leases
        return sub.failed_batch(lease, ack, ended, new) >= limit > 0

    async def _open_circuit(self, session: Session, sub: Subscription) -> None:
        """Cut the session off the job: its pump stops, its leases go back free (the
        worker failed nothing of them), and every later credit for the job is refused."""
        job, limit = sub.job, self.settings.max_failing_batches
        why = (f"the last {limit} batches of job {job.name} failed on every item: this "
               "connection gets no more of them; fix the worker and reconnect")
        session.circuits[job.name] = why
        if session.subscriptions.get(job.name) is sub:
            del session.subscriptions[job.name]
        await sub.stop()
        log.warning("a worker failed every item of %d batches of %s in a row: cut off",
                    limit, job.name)
        try:
            await job.release(sub, crashed=False)
        except PlanchetError as exc:  # the job broke: reopening it requeues the leases
            log.warning("release on %s: %s", job.name, exc)
        await session.send(Error(code=CircuitOpen.code, message=why, job=job.name))

    def _lease_request(self, session: Session, msg: Release | Extend) -> Reply:
        """Release (no attempt charged) or extend a lease, by any connection authorized."""
        job = self.admin.get(msg.job)
        self._spoke(session, msg.job)
        if isinstance(msg, Release):
            released, dropped = job.release_items(msg.lease, msg.ids)
            return Reply(id=msg.id, data={"lease": msg.lease, "released": released,
                                          "dropped": dropped})
        granted = job.extend(msg.lease, msg.seconds)
        return Reply(id=msg.id, data={"lease": msg.lease, "held": granted is not None,
                                      "lease_timeout": granted})


def _untried(job: Job, lease_id: str | None) -> bool:
    """Whether the lease holds an item that never failed: a batch of nothing but retries
    (the poisonous items at the end of a job) does not count against its worker."""
    lease = job.leases.get(lease_id or "")
    return lease is not None and lease.untried()


def _key_of(grant: WorkerGrant | None) -> str | None:
    return grant.key if grant else None
