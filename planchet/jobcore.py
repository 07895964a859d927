"""A job's life cycle, failure and commits: what every kind of job shares.

``jobs.Job`` builds serving and settling on this base: see its docstring for the rules
that keep every item exactly once. Here a job is opened (reloaded from Redis, files cut
back to the committed offsets), closed, paused and resumed; every step joins the open
group commit, and anything that fails breaks the job until ``open`` reloads it.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from . import retrying
from .commit import Committer, Flusher, Group
from .exceptions import BadRequest, PlanchetError, ServerError, Unavailable
from .formats.errorlog import encode_errors
from .jobfiles import JobFiles
from .readahead import ReadAhead
from .report import Rate
from .spec import JobSpec
from .state import DONE, RUNNING, Broken, Fault, JobState, Lease, Unusable, Watcher
from .store import LeasedItem, Store, pack

log = logging.getLogger("planchet")

Dead = tuple[int, str, int | None]  # id, why, attempts


class JobBase:
    """Life cycle, failure and commits of one job; ``jobs.Job`` adds the serving."""

    def __init__(self, spec: JobSpec, store: Store, root: Path | None = None,
                 flusher: Flusher | None = None) -> None:
        self.spec = spec
        self.store = store
        self.flusher = flusher or Flusher(store)  # the server's jobs share one
        self.root = root  # the data dir: every file is checked to be inside it when opened
        self.name = spec.name
        self.watchers: set[Watcher] = set()
        self.leases: dict[str, Lease] = {}  # in the order they were leased
        self.queue: collections.deque[tuple[bytes, list[LeasedItem]]] = collections.deque()
        self.state = RUNNING
        self.broken: Broken | None = Broken(Fault.NOT_OPENED, "not opened yet")
        self.files = JobFiles(spec, root)
        self.ahead: ReadAhead | None = None
        self.counts: dict[str, int] = {}
        self._committer: Committer | None = None
        self._finishing: Group | None = None  # the group that commits ``done``
        self._opening = asyncio.Lock()
        self._lease_prefix, self._leased = "", 0  # lease ids: the prefix, then a count
        self.rate = Rate()  # items settled per second, recently
        self.retries: list[Any] = []  # the records of retries of its failures

    @property
    def queued(self) -> int:
        return sum(len(items) for _, items in self.queue)

    # --- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """(Re)load the job from Redis: requeue leases, cut files back, seek the reader.

        A job whose last step committed but whose ``done`` did not (a crash in between)
        is finished here, since no later step would notice.
        """
        async with self._opening:
            self.broken = Broken(Fault.NOT_OPENED, "reopening")
            await self._stop()
            await self._reload()

    async def _reload(self) -> None:
        try:
            await self._load()
        except Exception as exc:
            self._break(exc, opening=True)
            raise self._as_error(exc) from exc
        self._notify()

    async def _load(self) -> None:
        record = await self.store.load_job(self.name)
        if record is None:  # opening would cut the output back to nothing
            raise Unusable("its state is gone from Redis")
        if record.rotation is not None:  # a retry was cut short: before any file is cut
            await self._rotate(*record.rotation)
        self.retries = await self.store.retries(self.name)
        queue = await self.store.requeue_all_leases(self.name, self._reread)
        self.queue = collections.deque((pack(batch), batch) for batch in queue)
        self.state = JobState(record.state)
        self.counts = dict(record.counts)
        if self.state != DONE:
            await asyncio.to_thread(self.files.open, self.counts)  # never block the loop
        self._committer = Committer(self._seal, self._flush, self._break, self.name)
        if self.files.reader is not None:
            self.ahead = ReadAhead(self.files.reader, self.counts["offset"], self._ahead_changed)
        self.broken = None
        self._lease_prefix = secrets.token_hex(5)  # lease ids: unique across reopens,
        self._leased = 0  # cheap within one
        self._finishing = None
        self.rate.clear()
        finishing = self._check_done()
        if finishing is not None:
            await self._wait(finishing)

    async def _reread(self, blobs: list[bytes]) -> list[bytes]:
        return await asyncio.to_thread(self.files.reread, blobs)  # never block the loop

    async def retry(self) -> dict[str, Any]:
        """Put the items of the error file back in the queue, once; rotate the file.

        A variant of ``open``: the pipeline stops, one transaction queues the items
        (attempts 0), lowers ``failed``, reopens a done job and names the file the error
        file goes to; the rename follows, then the reload (which finishes a rotation cut
        short by a crash before it cuts any file back). Nothing committed: nothing to do.
        """
        if self.spec.mode == "write":
            raise BadRequest(f"job {self.name} is write-only: it has no input to read "
                             "its failed items from again")
        self._check_retry()
        if not self.counts.get("err_offset"):  # committed: no failure to retry yet
            return {"retried": 0, "rotated_to": None}
        async with self._opening:
            self._check_retry()
            self.broken = Broken(Fault.NOT_OPENED, "retrying its failed items")
            await self._stop()
            try:
                outcome = await self._retry()
            except Exception as exc:
                await self._reload()  # nothing, or all of it, was committed
                if isinstance(exc, PlanchetError):
                    raise
                raise ServerError(f"retry of job {self.name} failed: {exc}") from exc
            await self._reload()
        return outcome

    def _check_retry(self) -> None:
        if self.broken:
            raise Unavailable(f"job {self.name} cannot retry now: {self.broken}")

    async def _retry(self) -> dict[str, Any]:
        record = await self.store.load_job(self.name)
        if record is None:
            raise Unusable("its state is gone from Redis")
        spec, root = self.spec, self.root
        plan = await asyncio.to_thread(retrying.plan, spec, root, record.counts["err_offset"])
        if not plan.items:
            return {"retried": 0, "rotated_to": None}
        rotated, n = await asyncio.to_thread(retrying.free_path, spec.error_path)
        while await self.store.owner_of(rotated):  # another job's file: not that one
            rotated, n = await asyncio.to_thread(retrying.free_path, spec.error_path, n + 1)
        shown = retrying.shown(rotated, root)
        fields: dict[str, Any] = {"err_offset": len(plan.keep), "rotating": rotated,
                                  "rotating_keep": plan.keep.decode()}
        if record.state == DONE:
            fields["state"] = RUNNING
        await self.store.retry_failures(self.name, plan.batches, plan.items, fields,
                                        {"time": time.time(), "items": plan.items,
                                         "file": shown})
        await self._rotate(rotated, plan.keep)
        return {"retried": plan.items, "rotated_to": shown}

    async def _rotate(self, rotated: str, keep: bytes) -> None:
        """Finish the error file's rotation (see ``retrying``), then tell Redis."""
        await asyncio.to_thread(retrying.finish_rotation, self.spec.error_path, rotated,
                                keep, self.root)
        await self.store.rotated(self.name)

    async def _stop(self) -> None:
        """Let the pipeline finish what it is doing, then forget memory and close files."""
        if self._committer is not None:
            await self._committer.stop()
        if self.ahead is not None:
            await self.ahead.close()
        self._committer = self.ahead = None
        for lease in self.leases.values():
            lease.owner.leases.discard(lease.id)
        self.leases.clear()
        self.queue.clear()
        self._forget()
        await asyncio.to_thread(self.files.close)

    def _forget(self) -> None:
        """Drop memory of work in progress, kept by a subclass (reloaded by ``open``)."""

    async def flushed(self) -> None:
        """Wait until every step so far is committed (or the job broke)."""
        if self._committer is not None:
            await self._committer.drain()

    async def close(self) -> None:
        """Stop the job for good (deleted, replaced, server stopping): no step after this.

        Watchers are not woken here: ``end`` tells them once the removal is certain.
        """
        async with self._opening:
            self.broken = Broken(Fault.CLOSED, "closed")
            await self._stop()

    def end(self, event: str) -> None:
        """Tell the watchers of a closed job why (``deleted``), and wake them to leave."""
        self.announce(event)
        self._notify()

    async def set_state(self, state: JobState, event: str | None = None) -> None:
        """Pause at once, resume once committed; then tell the watchers ``event``, before
        any of them is woken to push a batch."""
        if self.state == DONE:
            return
        group = self._group()
        group.change.fields["state"] = state
        if state != RUNNING:
            self.state = state
        await self._wait(group)
        self.state = state
        if event:
            self.announce(event)
        self._notify()

    @property
    def done(self) -> bool:
        return self.state == DONE

    @property
    def closed(self) -> bool:
        return self.broken is not None and self.broken.kind is Fault.CLOSED

    def announce(self, event: str) -> None:
        for watcher in list(self.watchers):
            watcher.tell(event)

    def _notify(self) -> None:
        for watcher in list(self.watchers):
            watcher.wake()

    # --- failure: anything that fails breaks the job until ``open`` ---------------------

    def _group(self) -> Group:
        if self._committer is None:
            raise Unavailable(f"job {self.name} cannot change now: {self.broken}")
        return self._committer.current()

    async def _wait(self, group: Group) -> None:
        """Wait for ``group`` to be committed; if it is not, nothing of it was taken."""
        assert self._committer is not None
        try:
            await self._committer.wait(group)
        except Exception as exc:
            raise self._as_error(exc) from exc

    def _break(self, exc: BaseException, opening: bool = False) -> None:
        if self.closed:
            return
        self.broken = Broken.by(exc, opening)
        if self.broken.kind is Fault.STEP and not isinstance(exc, PlanchetError):
            log.error("job %s: a step failed; reopening it from its last commit", self.name,
                      exc_info=exc)
        self._notify()

    def _as_error(self, exc: BaseException) -> PlanchetError:
        if self.broken is not None and self.broken.kind is Fault.UNUSABLE:
            return exc if isinstance(exc, PlanchetError) else ServerError(str(exc))
        # nothing of the step was taken; its items come back when the job reloads
        return Unavailable(f"job {self.name}: {self.broken or 'reopened meanwhile'}")

    # --- committing -----------------------------------------------------------------------

    def _seal(self, group: Group) -> None:
        """Close a group: the counters and leases it commits are memory's as its last
        step left them."""
        group.change.seal()
        c = self.counts
        group.change.fields.update({k: c[k] for k in ("next_id", "offset", "exhausted",
                                                      "written", "failed")})

    async def _flush(self, group: Group) -> None:
        offsets = self.counts["out_offset"], self.counts["err_offset"]
        out, err = await self.flusher.flush(
            self.name, functools.partial(self.files.append, group.output, group.errors, offsets),
            group.change)
        self.counts.update(out_offset=out, err_offset=err)
        self.rate.add(self.counts["written"] + self.counts["failed"])

    def _log_dead(self, group: Group, dead: list[Dead]) -> None:
        if dead:
            group.errors.append(encode_errors(dead))
            self.counts["failed"] += len(dead)

    def _ahead_changed(self) -> None:
        """The read-ahead found the end of the file (or failed): finish, or tell waiters."""
        ahead = self.ahead
        if ahead is None or self.broken:
            return
        if ahead.failure is not None:
            self._break(ahead.failure)
        elif ahead.drained and not self.counts["exhausted"]:
            self.counts["exhausted"] = 1
            self._group()  # commits the flag
            self._check_done()

    def _check_done(self) -> Group | None:
        """Once nothing is left to serve, commit ``done``; memory says so once committed."""
        if (
            self.state == DONE or self._finishing is not None or self.spec.mode == "write"
            or not self.counts["exhausted"] or self.leases or self.queue
        ):
            return None
        group = self._finishing = self._group()
        group.change.fields["state"] = DONE
        group.after.append(self._finish)
        return group

    def _finish(self) -> None:
        self.state = DONE
        self.files.close()
        self._notify()
