"""Group commit: the work of many steps shares one file append, one fsync, one transaction.

A job's steps (lease, settle, release, expire) change its memory at once, without
waiting, and add what must be made durable to the open ``Group``: output and error
bytes, and the Redis ``Change``. One committer task per job flushes a group at a time;
whatever steps arrive meanwhile gather in the next group. So throughput grows with the
load instead of being one step per fsync, and the rules stay those of a single step:

* a group's bytes are appended and fsynced before the transaction that names their
  offsets, and its Redis changes are one MULTI/EXEC, in the order the steps made them;
* a lease or a result is answered at once, before its group is committed: if the
  commit fails, the job reopens from the last commit and those items are served again,
  so nothing is lost or written twice (processing is at least once anyway); what must be
  durable before it is answered (a write-only result, a pause) waits for its group;
* if a flush fails, that group and every later one fail with it, and the job must be
  reopened from Redis and the files: memory that ran ahead of them is thrown away.

The jobs of one server share their flushes too (``Flusher``): those that wait at the
same moment take one thread hop, where each job's files are appended and fsynced in
turn, and one MULTI/EXEC for all their changes. A hundred jobs served at once then take
about as many thread hops and transactions as one (each still fsyncs its own files).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from .store import Change, Store


@dataclass
class Group:
    """What a run of steps must make durable together."""

    change: Change = field(default_factory=Change)
    output: list[bytes] = field(default_factory=list)
    errors: list[bytes] = field(default_factory=list)
    after: list[Callable[[], None]] = field(default_factory=list)  # once committed
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())


Flush = Callable[[Group], Awaitable[None]]


class Committer:
    """Flushes one group at a time; ``current`` is where steps add their changes."""

    def __init__(self, seal: Callable[[Group], None], flush: Flush,
                 failed: Callable[[BaseException], None], name: str) -> None:
        self._seal = seal  # adds what the group's steps left in memory (counters)
        self._flush = flush
        self._failed = failed
        self._open: Group | None = None
        self._flushing: Group | None = None
        self._wake = asyncio.Event()
        self._stopped = False
        self._failure: BaseException | None = None
        self._task = asyncio.create_task(self._run(), name=f"commit {name}")

    def current(self) -> Group:
        """The group that collects changes now; its ``done`` resolves when committed."""
        if self._open is None:
            self._open = Group()
            if self._failure is not None or self._task.done():
                self._open.done.set_exception(self._failure or _Stopped())
            self._wake.set()
        return self._open

    async def wait(self, group: Group) -> None:
        await asyncio.shield(group.done)

    async def _run(self) -> None:
        while True:
            if self._open is None:
                if self._stopped:
                    return
                self._wake.clear()
                await self._wake.wait()
                continue
            group, self._open = self._open, None
            self._flushing = group
            try:  # any failure, even in sealing or an after-commit action, breaks the job
                self._seal(group)
                await self._flush(group)
                group.done.set_result(None)
                for action in group.after:
                    action()
            except BaseException as exc:
                self._fail(exc, group)
                if not isinstance(exc, Exception):
                    raise
                return
            finally:
                self._flushing = None

    def _fail(self, exc: BaseException, group: Group) -> None:
        self._failure = exc
        for failed in (group, self._open):
            if failed is not None and not failed.done.done():
                failed.done.set_exception(exc)
                failed.done.exception()  # told to the job below; steps need not await it
        self._failed(exc)

    async def drain(self) -> None:
        """Wait until everything changed so far is committed (or has failed)."""
        for group in (self._flushing, self._open):
            if group is not None:
                await asyncio.wait([group.done])

    async def stop(self) -> None:
        """Commit what is open, then stop; a flush in progress is never cut short."""
        self._stopped = True
        self._wake.set()
        with contextlib.suppress(Exception):
            await self._task


class _Stopped(Exception):
    """The job was reopened or closed before this group could be committed, or its
    flusher's round was cancelled with the group's flush in it or waiting for it."""


Offsets = tuple[int, int]  # the output's and the error file's length


@dataclass
class _Request:
    """One job's flush: its files' append (in the thread: the new offsets), then its
    change, with those offsets, in the shared transaction."""

    name: str
    append: Callable[[], Offsets]
    change: Change
    done: asyncio.Future[Offsets]


class Flusher:
    """The flushes of jobs that share it: those that wait at the same moment share a
    thread hop (each job's files appended and fsynced in turn) and a transaction. A job
    whose append fails fails alone (nothing of it goes to Redis); a transaction that
    fails fails every job in it, and each is reopened from what Redis holds, as when it
    fails alone. The server's jobs share one (``admin``); a job made alone has its own."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._waiting: list[_Request] = []
        self._task: asyncio.Task[None] | None = None

    async def flush(self, name: str, append: Callable[[], Offsets], change: Change) -> Offsets:
        """Run ``append`` in a thread, then commit ``change`` with the offsets it returns
        (``out_offset``, ``err_offset``); the offsets. Raises what the append raised, or
        what the transaction, which this job shares with others, raised; ``_Stopped``
        if the flusher's round was cancelled first."""
        request = _Request(name, append, change, asyncio.get_running_loop().create_future())
        self._waiting.append(request)
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._run(), name="flush")
        return await asyncio.shield(request.done)

    async def _run(self) -> None:
        while self._waiting:
            flushing, self._waiting = self._waiting, []
            try:
                await self._round(flushing)
            except BaseException as exc:  # cancelled, or a bug: nobody waits for ever
                flushing += self._waiting
                self._waiting = []
                for request in flushing:
                    _fail(request.done, exc if isinstance(exc, Exception) else _Stopped())
                if not isinstance(exc, Exception):
                    raise

    async def _round(self, flushing: list[_Request]) -> None:
        appended = await asyncio.to_thread(_append_all, [r.append for r in flushing])
        committing: list[tuple[_Request, Offsets]] = []
        for request, offsets in zip(flushing, appended, strict=True):
            if isinstance(offsets, Exception):
                _fail(request.done, offsets)
            else:
                out, err = offsets
                request.change.fields.update(out_offset=out, err_offset=err)
                committing.append((request, offsets))
        if not committing:
            return
        try:
            await self.store.commit_all([(r.name, r.change) for r, _ in committing])
        except Exception as exc:
            for request, _ in committing:
                _fail(request.done, exc)
            return
        for request, offsets in committing:
            if not request.done.done():
                request.done.set_result(offsets)


def _append_all(appends: list[Callable[[], Offsets]]) -> list[Offsets | Exception]:
    """In the thread: each job's append, in turn; a failure is that job's alone."""
    results: list[Offsets | Exception] = []
    for append in appends:
        try:
            results.append(append())
        except Exception as exc:
            results.append(exc)
    return results


def _fail(done: asyncio.Future[Offsets], exc: Exception) -> None:
    if not done.done():
        done.set_exception(exc)
        done.exception()  # told to the job that waits; an orphan is not reported as lost
