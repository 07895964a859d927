"""Sessions, credit and job administration: every decision the server makes, no sockets.

A ``Session`` is one connection, seen through the coroutine that sends it a message.
A ``Subscription`` is a session's credit on one job; its pump leases and pushes a
batch whenever the session has fewer batches in flight than it asked for, and sleeps
otherwise until the job or the credit changes. When the session ends its pumps stop
first and its leases go back to the queue after, so no lease can outlive it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import logging
from collections.abc import Awaitable, Callable, Coroutine
from pathlib import Path
from typing import Any

from .config import Settings
from .exceptions import (
    AuthError,
    FormatError,
    JobConflict,
    JobNotFound,
    PlanchetError,
    ProtocolError,
    Unavailable,
)
from .jobs import PAUSED, RUNNING, Job
from .messages import (
    Batch,
    Credit,
    Event,
    Hello,
    JobCommand,
    Message,
    Reply,
    Result,
    ServerCommand,
    StartJob,
)
from .spec import JobSpec, build_spec
from .store import Store

log = logging.getLogger("planchet")

Send = Callable[[Message], Awaitable[None]]


class Session:
    def __init__(self, send: Send, token: str | None = None) -> None:
        self.send = send
        self.token = token
        self.subscriptions: dict[str, Subscription] = {}


class Subscription:
    """One session's credit on one job, and the pump that honours it."""

    def __init__(self, session: Session, job: Job, batches: int, batch_size: int) -> None:
        self.session = session
        self.job = job
        self.credit = batches
        self.batch_size = batch_size
        self.leases: set[str] = set()
        self.closed = False
        self.stalled = False  # a lease expired: push nothing until the worker speaks again
        self._wake = asyncio.Event()
        job.watchers.add(self)
        self.task = asyncio.create_task(self._pump(), name=f"pump {job.name}")

    def wake(self) -> None:
        self._wake.set()

    def revive(self) -> None:
        """The worker sent a frame for this job: it is alive, so serve it again."""
        if self.stalled:
            self.stalled = False
            self.wake()

    async def _pump(self) -> None:
        job = self.job
        try:
            while not self.closed:
                self._wake.clear()
                if job.done:
                    await self.session.send(Event(job=job.name, event="done"))
                    return
                if not self.stalled and len(self.leases) < self.credit and await self._push():
                    continue
                await self._wake.wait()
        except Exception as exc:  # the connection is gone; the session will clean up
            log.debug("pump for %s stopped: %r", job.name, exc)
        finally:
            job.watchers.discard(self)

    async def _push(self) -> bool:
        try:
            lease = await self.job.lease(self, self.batch_size)
        except PlanchetError as exc:  # storage down: wait for the job to be reopened
            log.warning("%s", exc)
            return False
        if lease is None:
            return False
        items = [(i, item) for i, (item, _) in lease.items.items()]
        batch = Batch(job=self.job.name, lease=lease.id, items=items,
                      lease_timeout=self.job.spec.lease_timeout)
        await self.session.send(batch)
        return True

    async def stop(self) -> None:
        self.closed = True
        self.wake()
        await self.task


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Dispatcher:
    def __init__(self, store: Store, settings: Settings) -> None:
        self.store = store
        self.settings = settings
        self.jobs: dict[str, Job] = {}
        self.tokens: dict[str, str] = {}  # job name -> sha256 of its token
        self.sessions: set[Session] = set()
        self._admin = asyncio.Lock()
        self.stopping = False  # set by a graceful shutdown: leases return uncharged
        self._maintenance: asyncio.Task[None] | None = None

    # --- life cycle -------------------------------------------------------------------

    async def start(self) -> None:
        """Load every job from Redis (requeueing old leases) and start the lease clock."""
        for name in await self.store.job_names():
            fields = await self.store.read_job(name)
            job = Job(JobSpec.model_validate_json(fields["spec"]), self.store)
            self.jobs[name] = job
            self.tokens[name] = fields.get("token", "")
            try:
                await job.open()
            except PlanchetError as exc:  # one broken job must not stop the server
                if not isinstance(exc, Unavailable):  # storage failures are retried
                    job.broken = str(exc)
                log.error("job %s cannot be opened: %s", name, exc)
        self._maintenance = asyncio.create_task(self._maintain(), name="maintenance")

    async def close(self) -> None:
        if self._maintenance:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
        for session in list(self.sessions):
            await self.disconnect(session)
        for job in self.jobs.values():
            await job.close()

    async def _maintain(self) -> None:
        """Expire hung leases; reopen jobs whose storage failed once Redis is back."""
        while True:
            await asyncio.sleep(self.settings.tick)
            for job in list(self.jobs.values()):
                try:
                    if job.broken and job.broken.startswith("storage"):
                        if await self.store.ping():
                            await job.open()
                            log.warning("job %s reopened after a storage failure", job.name)
                    elif not job.broken:
                        for owner in await job.expire():
                            if isinstance(owner, Subscription):
                                owner.stalled = True  # hung: do not feed it more to expire
                except PlanchetError as exc:
                    log.warning("maintenance of %s: %s", job.name, exc)
                except Exception:  # a bug in one job must not stop expiry for them all
                    log.exception("maintenance of %s failed", job.name)

    def connect(self, send: Send, hello: Hello) -> Session:
        session = Session(send, hello.token)
        self.sessions.add(session)
        return session

    async def disconnect(self, session: Session) -> None:
        """Stop the session's pumps, then requeue everything it held."""
        self.sessions.discard(session)
        subscriptions = list(session.subscriptions.values())
        session.subscriptions.clear()
        for sub in subscriptions:
            await sub.stop()
            try:
                await sub.job.release(sub, charge=not self.stopping)
            except PlanchetError as exc:  # storage down: reopening the job requeues it
                log.warning("release on %s: %s", sub.job.name, exc)

    # --- requests ---------------------------------------------------------------------

    async def handle(self, session: Session, msg: Message) -> Message | None:
        """Carry out one message; the reply to send, if any. Errors raise."""
        match msg:
            case Credit():
                await self._credit(session, msg)
                return None
            case Result():
                job = self._authorized(session, msg.job, msg.token)
                if sub := session.subscriptions.get(msg.job):
                    sub.revive()
                return await job.settle(msg.lease, msg.items, list(msg.errors))
            case StartJob():
                return Reply(id=msg.id, data=await self._start(session, msg))
            case JobCommand():
                return Reply(id=msg.id, data=await self._job_command(session, msg))
            case ServerCommand():
                return Reply(id=msg.id, data=await self._server_command(session, msg))
        raise ProtocolError(f"unexpected {getattr(msg, 'type', '?')!r} message")

    async def _credit(self, session: Session, msg: Credit) -> None:
        job = self._authorized(session, msg.job, msg.token)
        sub = session.subscriptions.get(job.name)
        if sub is None or sub.job is not job or sub.task.done():  # done: say so again
            batch_size = msg.batch_size or job.spec.batch_size
            sub = Subscription(session, job, msg.batches, batch_size)
            session.subscriptions[job.name] = sub
        sub.credit = msg.batches
        sub.batch_size = msg.batch_size or sub.batch_size
        sub.stalled = False
        sub.wake()

    async def _job_command(self, session: Session, msg: JobCommand) -> Any:
        if msg.type == "report":  # open to all, as in the original
            return self._job(msg.job).report()
        job = self._authorized(session, msg.job, msg.token)
        async with self._admin:
            if msg.type in ("pause", "resume"):
                await job.set_state(PAUSED if msg.type == "pause" else RUNNING)
                if not job.done:
                    await self._tell(job, "paused" if msg.type == "pause" else "resumed")
            elif msg.type == "delete":
                await self._remove(job)
                return {"deleted": job.name}
            else:  # clean: start again from the top, with empty output
                token = self.tokens[job.name]
                _check_input(job.spec)
                await self._remove(job)
                job = await self._create(job.spec, token)
        return job.report()

    async def _server_command(self, session: Session, msg: ServerCommand) -> Any:
        self._check_master(msg.token, session.token)
        if msg.type == "jobs":
            return [job.report() for job in self.jobs.values()]
        async with self._admin:
            names = list(self.jobs)
            for name in names:
                await self._remove(self.jobs[name])
        return {"deleted": names}

    # --- jobs -------------------------------------------------------------------------

    async def _start(self, session: Session, msg: StartJob) -> dict[str, Any]:
        spec = build_spec(msg, self.settings.data_dir)
        async with self._admin:
            job = self.jobs.get(spec.name)
            if job is not None:
                self._check_job_token(job.name, msg.token, session.token)
                if not msg.clean_start:
                    return await self._resume(job, spec)
            else:  # the hello may prove the master token while ``msg.token`` is the job's
                self._check_master(msg.token, session.token, to="create a job")
            await self._claim_files(spec, fresh=msg.clean_start)
            _check_input(spec)
            token_digest = _digest(msg.token) if msg.token else ""
            if job is not None:  # only now: a refused clean start keeps the old job
                token_digest = token_digest or self.tokens.get(job.name, "")
                await self._remove(job)
            job = await self._create(spec, token_digest)
            return job.report()

    async def _resume(self, job: Job, spec: JobSpec) -> dict[str, Any]:
        if job.spec.identity() != spec.identity():
            old, new = job.spec.identity(), spec.identity()
            differ = sorted(k for k in new if old[k] != new[k])
            raise JobConflict(
                f"job {spec.name} exists with another {', '.join(differ)}; "
                "start it with clean_start to replace it"
            )
        if spec != job.spec:  # only tunables changed: batch size, lease timeout, attempts
            await self.store.update_job(spec.name, {"spec": spec.model_dump_json()})
            job.spec = spec
        if job.broken and not job.broken.startswith("storage"):
            await job.open()  # e.g. the input file was missing and is back
        return job.report()

    async def _claim_files(self, spec: JobSpec, fresh: bool) -> None:
        """Refuse files another job writes or reads, and existing data unless fresh."""
        for path in [*spec.files, spec.input_path]:
            owner = await self.store.owner_of(path) if path else None
            if owner and owner != spec.name:
                raise JobConflict(f"{path} is written by job {owner}")
        for other in self.jobs.values():
            if other.name != spec.name and other.spec.input_path in spec.files:
                raise JobConflict(f"{other.spec.input_path} is the input of job {other.name}")
        for path in spec.files:
            if not fresh and _nonempty(Path(path)):
                raise JobConflict(
                    f"{path} already has data; remove it or use clean_start to overwrite"
                )

    async def _create(self, spec: JobSpec, token_digest: str) -> Job:
        fields = {"spec": spec.model_dump_json(), "token": token_digest, "state": RUNNING}
        await self.store.create_job(spec.name, fields, spec.files)
        job = Job(spec, self.store)
        try:
            await job.open()
        except PlanchetError:
            await self.store.delete_job(spec.name, spec.files)
            raise
        self.jobs[spec.name] = job
        self.tokens[spec.name] = token_digest
        return job

    async def _remove(self, job: Job) -> None:
        """Forget a job. If Redis fails, the job stays: reopened now, or by maintenance."""
        await job.close()  # no step of the job can commit after this
        try:
            await self.store.delete_job(job.name, job.spec.files)
        except Unavailable:
            with contextlib.suppress(PlanchetError):
                await job.open()
            raise
        await self._tell(job, "deleted")
        for sub in [w for w in job.watchers if isinstance(w, Subscription)]:
            sub.session.subscriptions.pop(job.name, None)
            await sub.stop()
        self.jobs.pop(job.name, None)
        self.tokens.pop(job.name, None)

    async def _tell(self, job: Job, event: str) -> None:
        """Tell the job's subscribers, without waiting on any slow reader of them."""
        for sub in [w for w in job.watchers if isinstance(w, Subscription)]:
            _spawn(sub.session.send(Event(job=job.name, event=event)))  # type: ignore[arg-type]

    # --- auth -------------------------------------------------------------------------

    def _job(self, name: str) -> Job:
        job = self.jobs.get(name)
        if job is None:
            raise JobNotFound(f"no job named {name!r}")
        return job

    def _authorized(self, session: Session, name: str, token: str | None) -> Job:
        job = self._job(name)
        self._check_job_token(name, token, session.token)
        return job

    def _is_master(self, token: str | None) -> bool:
        master = self.settings.token
        return bool(master and token and hmac.compare_digest(master, token))

    def _check_master(self, *tokens: str | None, to: str = "do this") -> None:
        """Pass if any of ``tokens`` (a message's, its session's) is the master token."""
        if self.settings.token and not any(self._is_master(t) for t in tokens):
            raise AuthError(f"the server's master token is needed to {to}")

    def _check_job_token(self, name: str, *tokens: str | None) -> None:
        """Pass if the job has no token, or any of ``tokens`` is its token or the master."""
        expected = self.tokens.get(name)
        presented = [t for t in tokens if t]
        if not expected or any(self._is_master(t) for t in presented):
            return
        if not presented:
            raise AuthError(f"job {name} needs its token")
        if not any(hmac.compare_digest(expected, _digest(t)) for t in presented):
            raise AuthError(f"wrong token for job {name}")


_background: set[asyncio.Task[None]] = set()


def _spawn(coro: Coroutine[Any, Any, None]) -> None:
    """Run a best-effort send in the background, keeping a reference until it ends."""
    task = asyncio.ensure_future(_quietly(coro))
    _background.add(task)
    task.add_done_callback(_background.discard)


async def _quietly(coro: Coroutine[Any, Any, None]) -> None:
    with contextlib.suppress(Exception):
        await coro


def _check_input(spec: JobSpec) -> None:
    if spec.input_path and not Path(spec.input_path).is_file():
        raise FormatError(f"cannot open {spec.input_path}: no such file")


def _nonempty(path: Path) -> bool:
    try:
        return path.stat().st_size > 0
    except FileNotFoundError:
        return False
