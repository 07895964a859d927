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

import logging
import time
from typing import Any

from .commit import Group
from .exceptions import BadRequest
from .jobcore import Dead, JobBase
from .leasing import Budget, take_queued
from .messages import Ack, Item, ItemError
from .readahead import Closed, ReadAhead
from .report import job_report
from .state import DONE, PAUSED, RUNNING, Broken, Fault, JobState, Lease, Watcher
from .store import Blob, LeasedItem, Span, pack

log = logging.getLogger("planchet")


class Job(JobBase):
    """Leases, results and the ways a lease ends, on the shared life cycle."""

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
        if taken is None:
            return None
        blob, items = taken
        return self._hold(group, [(i, item) for i, item, _ in items],
                          {i: (item, tries) for i, item, tries in items}, owner, blob)

    def _lease_fresh(self, group: Group, owner: Watcher, n: int,
                     budget: Budget | None) -> Lease | None:
        ahead = self.ahead
        if ahead is None or self.counts["exhausted"]:
            return None
        taken = ahead.take(n, budget.admit if budget else None)
        if ahead.drained:
            self.counts["exhausted"] = 1
        if taken is None:
            return None
        start = self.counts["next_id"], self.counts["offset"]
        self.counts["next_id"], self.counts["offset"] = taken.next_id, taken.end
        self._log_dead(group, [(i, why, 0) for i, why in taken.bad])
        if not taken.items:
            return None
        span = (Span(start, (taken.next_id, taken.end), len(taken.items)).pack
                if ahead.reader.rereadable else None)  # gzip: its items
        return self._hold(group, taken.items, None, owner, span)

    def _hold(self, group: Group, batch: list[Item], pending: dict[int, tuple[Any, int]] | None,
              owner: Watcher, blob: Blob | None = None) -> Lease:
        """A new lease of ``batch`` (its frame's ``[(id, item), ...]``), with ``pending``
        (id -> item, attempts; None: fresh items). Redis keeps ``blob``, or else the items
        packed, only if the lease outlives its group (most are settled within it); the
        readers yield only items orjson can write, so packing them cannot fail."""
        now = time.monotonic()
        lease = Lease(self._next_lease_id(), batch, owner, now + self.spec.lease_timeout, now,
                      pending)
        self._leased += 1
        self.leases[lease.id] = lease
        owner.leases.add(lease.id)
        def packed() -> bytes:
            return pack(_packed(lease))

        group.change.hold(lease.id, packed if blob is None else blob, new=True)
        return lease

    def _next_lease_id(self) -> str:
        """The id the next lease will have (a budget sizes the frame that carries it)."""
        return f"{self._lease_prefix}{self._leased:06x}"

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
        pending, accepted, failing = _split(lease, results, errors)
        dead: list[Dead] = []
        requeue: list[LeasedItem] = []
        for err, entry in failing:
            self._fail_item(requeue, dead, err.id, entry, err.message, err.retry)
        written = self._write(group, dead, accepted, lease)
        self._requeue(group, requeue)
        self._log_dead(group, dead)
        lease.items = pending
        if pending:
            group.change.hold(lease.id, pack(_packed(lease)))
        else:
            self._end(group, lease)
        finishing = self._check_done()
        if finishing is not None:  # the last result: answered once ``done`` is committed
            await self._wait(finishing)
        return Ack(job=self.name, lease=lease_id, written=written, retried=len(requeue),
                   failed=len(dead),
                   dropped=len(results) + len(errors) - len(accepted) - len(failing))

    def _write(self, group: Group, dead: list[Dead], accepted: list[Item],
               lease: Lease | None) -> int:
        """Encode accepted results for the output (a read-only job just counts them); a
        result that cannot be encoded fails its item (of ``lease``; None: never leased)."""
        written = len(accepted)
        if accepted and self.files.writer is not None:
            data, bad = self.files.writer.encode(accepted)
            group.output.append(data)
            dead += [(i, f"cannot write result: {why}", (lease.items[i][1] if lease else 0) + 1)
                     for i, why in bad]
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
        group.change.end(lease.id)
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
                group.change.hold(lease.id, pack(_packed(lease)))
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

    # --- reporting ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return job_report(self)


def _split(lease: Lease, results: list[Item], errors: list[ItemError]
           ) -> tuple[dict[int, tuple[Any, int]], list[Item], list[tuple[ItemError, Any]]]:
    """A result against its lease: what is left pending, the results taken (the first
    result for an item wins: a later one, or one for an item not pending, is dropped),
    and the errors for pending items, each with its (item, attempts)."""
    if not errors and lease.settles_whole(results):  # validated pairs, taken as they are
        return {}, results, []
    pending = dict(lease.items)
    accepted = [(i, item) for i, item in results if pending.pop(i, None) is not None]
    failing = [(e, pending.pop(e.id)) for e in errors if e.id in pending]
    return pending, accepted, failing


def _packed(lease: Lease) -> list[LeasedItem]:
    """What is pending of ``lease``, as Redis keeps it: ``(id, item, attempts)``."""
    if lease.pending is None:
        return [(i, item, 0) for i, item in lease.batch]
    return [(i, item, attempts) for i, (item, attempts) in lease.pending.items()]


__all__ = ["DONE", "PAUSED", "RUNNING", "Broken", "Fault", "Job", "JobState", "Lease"]
