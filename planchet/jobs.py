"""One job at run time: leases, requeue, results, completion; decisions without sockets.

The rules that keep every item exactly once in the output:

* Items move between *unread* (the file past the cursor), *queued*, *leased* and
  *written*/*failed* only by changes that Redis commits atomically (``commit``: a
  group of steps is one MULTI/EXEC), after the files they name are fsynced.
* Each step changes memory at once and joins the open group commit (``commit``), so
  steps never wait on each other's disk or Redis round trips: they share them.
* ``open`` truncates the files back to the committed offsets and puts every lease back
  in the queue: after a crash no lease has a live owner. That one recovery path serves
  every kind of failure: a step or a commit that fails, for any reason, leaves the job
  *broken* until ``open`` has reloaded it; memory that ran ahead is thrown away.
* A late or duplicate result names a lease or an id that is no longer leased, and is
  dropped: the first accepted result wins.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from pathlib import Path
from typing import Any

from .commit import Committer, Group
from .exceptions import BadRequest, PlanchetError, ServerError, Unavailable
from .formats.errorlog import encode_errors
from .jobfiles import JobFiles
from .leasing import Budget, take_queued
from .messages import Ack, Item, ItemError
from .readahead import Closed, ReadAhead, Record
from .report import Rate, job_report
from .spec import JobSpec
from .state import DONE, PAUSED, RUNNING, Broken, Fault, JobState, Lease, Unusable, Watcher
from .store import LeasedItem, Store, pack, pack_leased

log = logging.getLogger("planchet")

Dead = tuple[int, str, int | None]  # id, why, attempts


class Job:
    def __init__(self, spec: JobSpec, store: Store, root: Path | None = None) -> None:
        self.spec = spec
        self.store = store
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
        queue = await self.store.requeue_all_leases(self.name)
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
        """Close a group: the counters it commits are memory's as its last step left them."""
        c = self.counts
        group.change.fields.update({k: c[k] for k in ("next_id", "offset", "exhausted",
                                                      "written", "failed")})

    async def _flush(self, group: Group) -> None:
        offsets = self.counts["out_offset"], self.counts["err_offset"]
        out, err = await asyncio.to_thread(self.files.append, group.output, group.errors, offsets)
        group.change.fields.update(out_offset=out, err_offset=err)
        await self.store.commit(self.name, group.change)
        self.counts.update(out_offset=out, err_offset=err)
        self.rate.add(self.counts["written"] + self.counts["failed"])

    def _log_dead(self, group: Group, dead: list[Dead]) -> None:
        if dead:
            group.errors.append(encode_errors(dead))
            self.counts["failed"] += len(dead)

    # --- serving ----------------------------------------------------------------------

    def _serving(self) -> bool:
        return self.state == RUNNING and not self.broken and self.spec.mode != "write"

    async def lease(self, owner: Watcher, batch_size: int,
                    max_bytes: int | None = None) -> Lease | None:
        """Lease the next batch to ``owner``: queued items first, then the file.

        The batch holds at most ``batch_size`` items, and its frame at most ``max_bytes``
        bytes but for a lone bigger item (see ``leasing``); a queued batch is split to
        fit, the rest staying at the head of the queue. ``None`` means nothing to serve
        now (paused, done, broken, or all in flight).
        """
        while self._serving():
            if not self.queue:
                ahead = self.ahead
                if ahead is None or self.counts["exhausted"]:
                    if self._finishing is not None:  # answer once ``done`` is committed
                        await self._wait(self._finishing)
                    return None
                if not ahead.has(batch_size):
                    await self._ready(ahead, batch_size)
                    continue  # the job may have changed while it waited
            group = self._group()
            budget = None if max_bytes is None else Budget(
                self.name, self._next_lease_id(), float(self.spec.lease_timeout), max_bytes)
            lease = (self._lease_queued(group, owner, batch_size, budget)
                     or self._lease_fresh(group, owner, batch_size, budget))
            self._check_done()
            if lease is not None:  # sent before its commit lands: see ``commit``
                return lease
        return None

    async def _ready(self, ahead: ReadAhead, batch_size: int) -> None:
        try:
            await ahead.ready(batch_size)
        except Closed:
            pass  # reopened or closed meanwhile: the loop looks again
        except Exception as exc:
            self._break(exc)
            raise self._as_error(exc) from exc

    def _lease_queued(self, group: Group, owner: Watcher, n: int,
                      budget: Budget | None) -> Lease | None:
        taken = take_queued(self.queue, group.change, n, budget)
        return None if taken is None else self._hold(group, *taken, owner)

    def _lease_fresh(self, group: Group, owner: Watcher, n: int,
                     budget: Budget | None) -> Lease | None:
        ahead = self.ahead
        if ahead is None or self.counts["exhausted"]:
            return None
        records = ahead.take(n, budget.admit if budget else None)
        if ahead.drained:
            self.counts["exhausted"] = 1
        if not records:
            return None
        last: Record = records[-1]
        self.counts["next_id"], self.counts["offset"] = last.id + 1, last.end
        blob, items, unencodable = pack_leased(
            [(r.id, r.item) for r in records if r.error is None])
        bad = [(r.id, r.error, 0) for r in records if r.error is not None]
        self._log_dead(group, [*bad, *[(i, why, 0) for i, why in unencodable]])
        return self._hold(group, blob, items, owner) if items else None

    def _hold(self, group: Group, blob: bytes, items: list[LeasedItem], owner: Watcher) -> Lease:
        lease = Lease(
            self._next_lease_id(),
            {i: (item, attempts) for i, item, attempts in items},
            owner,
            time.monotonic() + self.spec.lease_timeout,
            time.monotonic(),
        )
        self._leased += 1
        self.leases[lease.id] = lease
        owner.leases.add(lease.id)
        group.change.leases[lease.id] = blob
        return lease

    def _next_lease_id(self) -> str:
        """The id the next lease will have (a budget sizes the frame that carries it)."""
        return f"{self._lease_prefix}{self._leased:06x}"

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

    # --- results and failures -----------------------------------------------------------

    async def settle(
        self, lease_id: str | None, results: list[Item], errors: list[ItemError]
    ) -> Ack:
        """Take a worker's results for (part of) a lease: write, retry or fail each item."""
        if lease_id is None:
            return await self._settle_unleased(results, errors)
        lease = self.leases.get(lease_id)
        if lease is None or self.broken:
            return Ack(job=self.name, lease=lease_id, dropped=len(results) + len(errors))
        group = self._group()
        pending = dict(lease.items)
        accepted = [(i, item) for i, item in results if pending.pop(i, None) is not None]
        dead: list[Dead] = []
        requeue: list[LeasedItem] = []
        failing = [(e, pending.pop(e.id)) for e in errors if e.id in pending]
        for err, entry in failing:
            self._fail_item(requeue, dead, err.id, entry, err.message, err.retry)
        written = self._write(group, dead, accepted, lease.items)
        self._requeue(group, requeue)
        self._log_dead(group, dead)
        lease.items = pending
        if pending:
            group.change.leases[lease.id] = pack(_packed(pending))
        else:
            self._end(group, lease)
        finishing = self._check_done()
        if finishing is not None:  # the last result: answered once ``done`` is committed
            await self._wait(finishing)
        return Ack(job=self.name, lease=lease_id, written=written, retried=len(requeue),
                   failed=len(dead),
                   dropped=len(results) + len(errors) - len(accepted) - len(failing))

    def _write(self, group: Group, dead: list[Dead], accepted: list[Item],
               leased: dict[int, tuple[Any, int]]) -> int:
        """Encode accepted results for the output (a read-only job just counts them)."""
        written = len(accepted)
        if accepted and self.files.writer is not None:
            data, bad = self.files.writer.encode(accepted)
            group.output.append(data)
            dead += [(i, f"cannot write result: {why}", leased[i][1] + 1) for i, why in bad]
            written -= len(bad)
        self.counts["written"] += written
        return written

    async def _settle_unleased(self, results: list[Item], errors: list[ItemError]) -> Ack:
        raise BadRequest("a result needs a lease, except in a write-only job")

    def _fail_item(self, requeue: list[LeasedItem], dead: list[Dead], item_id: int,
                   entry: tuple[Any, int], reason: str, retry: bool = True) -> None:
        item, attempts = entry
        attempts += 1
        if retry and attempts < self.spec.max_attempts:
            requeue.append((item_id, item, attempts))
        else:
            dead.append((item_id, reason, attempts))

    def _requeue(self, group: Group, items: list[LeasedItem]) -> None:
        if items:
            blob = pack(items)
            self.queue.append((blob, items))
            group.change.queue.append(blob)
            self._notify()

    def _end(self, group: Group, lease: Lease) -> None:
        del self.leases[lease.id]
        group.change.leases[lease.id] = None
        lease.owner.leases.discard(lease.id)
        lease.owner.wake()

    def _fail_lease(self, group: Group, lease: Lease, reason: str, charge: bool) -> None:
        """End a lease its owner did not settle; ``charge`` counts it as a failed attempt."""
        requeue: list[LeasedItem] = []
        dead: list[Dead] = []
        for item_id, (item, attempts) in lease.items.items():
            if charge:
                self._fail_item(requeue, dead, item_id, (item, attempts), reason)
            else:
                requeue.append((item_id, item, attempts))
        self._requeue(group, requeue)
        self._log_dead(group, dead)
        self._end(group, lease)

    def release_items(self, lease_id: str, ids: list[int] | None) -> tuple[int, int]:
        """A worker hands back pending items of a lease (None: all): they are queued
        again, no attempt charged. Returns (released, dropped: ids not pending)."""
        lease = self.leases.get(lease_id)
        asked = 0 if ids is None else len(ids)
        if lease is None or self.broken:
            return 0, asked
        back = list(lease.items) if ids is None else [
            i for i in dict.fromkeys(ids) if i in lease.items]
        if back:
            group = self._group()
            self._requeue(group, [(i, *lease.items.pop(i)) for i in back])
            if lease.items:
                group.change.leases[lease.id] = pack(_packed(lease.items))
            else:
                self._end(group, lease)
        return len(back), 0 if ids is None else asked - len(back)

    def extend(self, lease_id: str, seconds: float | None = None,
               now: float | None = None) -> float | None:
        """Move a live lease's deadline to ``seconds`` from now (at most the job's
        lease_timeout, which None means); the seconds granted, None if not held. Memory
        only: a reload requeues every lease anyway."""
        now = time.monotonic() if now is None else now
        lease = self.leases.get(lease_id)
        if lease is None or lease.deadline <= now or self.broken:
            return None
        timeout = float(self.spec.lease_timeout)
        granted = timeout if seconds is None else min(float(seconds), timeout)
        lease.deadline = now + granted
        return granted

    async def release(self, owner: Watcher, crashed: bool = True, grace: float = 0.0) -> None:
        """Give back every lease of ``owner`` (its connection ended): requeue at once.

        A worker that crashed is charged an attempt on its oldest lease, the one it was
        working on, so an item that kills its workers ends in the error file, unless it
        had that lease for less than ``grace`` seconds: it cannot have worked on it much.
        The batches it had only prefetched go back free, so workers that merely come and
        go fail nothing. A clean goodbye, or a server shutting down, charges nothing.
        """
        worked = time.monotonic() - grace
        held = [le for le in self.leases.values() if le.owner is owner]
        if not held or self.broken:
            return  # a broken job's ``open`` requeues them from Redis
        group = self._group()
        for n, lease in enumerate(held):
            charge = crashed and n == 0 and lease.given <= worked
            self._fail_lease(group, lease, "worker disconnected", charge=charge)
        self._check_done()
        await self._wait(group)

    async def expire(self, now: float | None = None) -> list[Watcher]:
        """Requeue leases past their deadline (a hung worker); return their owners."""
        now = time.monotonic() if now is None else now
        expired = [le for le in self.leases.values() if le.deadline <= now]
        if not expired or self.broken:
            return []
        group = self._group()
        for lease in expired:
            lease.owner.stall()  # hung: before anything wakes it, so it is fed no more
            reason = f"lease expired after {self.spec.lease_timeout}s"
            self._fail_lease(group, lease, reason, charge=True)
        self._check_done()
        await self._wait(group)
        return [lease.owner for lease in expired]

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

    # --- reporting ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return job_report(self)



def _packed(items: dict[int, tuple[Any, int]]) -> list[LeasedItem]:
    return [(i, item, attempts) for i, (item, attempts) in items.items()]


__all__ = ["DONE", "PAUSED", "RUNNING", "Broken", "Fault", "Job", "JobState", "Lease"]
