"""One job at run time: leases, requeue, results, completion; decisions without sockets.

The rules that keep every item exactly once in the output:

* Items move between *unread* (the file past the cursor), *queued*, *leased* and
  *written*/*failed* only inside one Redis transaction (``Store.apply``).
* Output and error files are appended and fsynced *before* the transaction that
  commits their new offsets; ``open`` truncates them back to the committed offsets, so
  bytes written by a step that did not commit disappear with the step.
* ``open`` also puts every lease back in the queue: after a server or Redis restart no
  lease has a live owner. That one recovery path serves every kind of crash.
* A late or duplicate result names a lease or an id that is no longer leased, and is
  dropped: the first accepted result wins.
"""

from __future__ import annotations

import asyncio
import collections
import secrets
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from .exceptions import BadRequest, PlanchetError, ServerError, Unavailable
from .formats import ErrorLog, Position, Reader, Writer, get_reader, get_writer
from .messages import Ack, Item, ItemError
from .spec import JobSpec
from .store import Change, LeasedItem, Store, pack

RUNNING, PAUSED, DONE = "running", "paused", "done"


class Watcher(Protocol):
    """Whoever waits for a job (a subscription): told when work or state changes."""

    leases: set[str]

    def wake(self) -> None: ...


@dataclass
class Lease:
    id: str
    items: dict[int, tuple[Any, int]]  # id -> (item, failed attempts before this one)
    owner: Watcher
    deadline: float


@dataclass
class Outcome:
    """What one step decided, before it is committed."""

    change: Change = field(default_factory=Change)
    dead: list[tuple[int, str, int]] = field(default_factory=list)  # id, reason, attempts


class Job:
    def __init__(self, spec: JobSpec, store: Store) -> None:
        self.spec = spec
        self.store = store
        self.name = spec.name
        self.lock = asyncio.Lock()
        self.watchers: set[Watcher] = set()
        self.leases: dict[str, Lease] = {}
        self.state = RUNNING
        self.broken: str | None = "not opened"
        self.reader: Reader | None = None
        self.writer: Writer | None = None
        self.errors: ErrorLog | None = None
        self.counts: dict[str, int] = {}
        self.queued = 0
        self._history: collections.deque[tuple[float, int]] = collections.deque(maxlen=120)

    # --- life cycle -------------------------------------------------------------------

    async def open(self) -> None:
        """(Re)load the job from Redis: requeue leases, cut files back, seek the reader.

        A job whose last step committed but whose ``done`` did not (a crash in between)
        is finished here, since no later step would notice.
        """
        async with self.lock:
            self._close_files()
            for lease in self.leases.values():
                lease.owner.leases.discard(lease.id)
            self.leases.clear()
            fields = await self._guard(self.store.read_job(self.name))
            if "spec" not in fields:  # opening would cut the output back to nothing
                self.broken = "its state is gone from Redis"
                raise ServerError(f"job {self.name}: {self.broken}")
            queue = await self._guard(self.store.requeue_all_leases(self.name))
            self.queued = sum(len(batch) for batch in queue)
            self.state = fields.get("state", RUNNING)
            self.counts = {
                k: int(fields.get(k, 0))
                for k in ("next_id", "offset", "exhausted", "out_offset", "err_offset",
                          "written", "failed")
            }
            if self.state != DONE:
                self._open_files()
            self.broken = None
            self._history.clear()
            await self._check_done()
            self._notify()

    def _open_files(self) -> None:
        spec = self.spec
        try:
            if spec.reader and not self.counts["exhausted"]:
                self.reader = get_reader(spec.reader)(Path(spec.input_path or ""), spec.metadata)
                self.reader.open(Position(self.counts["next_id"], self.counts["offset"]))
            if spec.writer and spec.mode != "read":
                self.writer = get_writer(spec.writer)(Path(spec.output_path or ""), spec.metadata)
                self.writer.open(self.counts["out_offset"])
            self.errors = ErrorLog(Path(spec.error_path))
            self.errors.open(self.counts["err_offset"])
        except PlanchetError:
            self._close_files()
            raise

    def _close_files(self) -> None:
        for f in (self.reader, self.writer, self.errors):
            if f is not None:
                f.close()
        self.reader = self.writer = self.errors = None

    async def close(self) -> None:
        async with self.lock:
            self._close_files()
            self.broken = "closed"
            self._notify()

    async def set_state(self, state: str) -> None:
        async with self.lock:
            if self.state == DONE:
                return
            await self._guard(self.store.update_job(self.name, {"state": state}))
            self.state = state
            self._notify()

    @property
    def done(self) -> bool:
        return self.state == DONE

    def _notify(self) -> None:
        for watcher in list(self.watchers):
            watcher.wake()

    async def _guard(self, step: Any) -> Any:
        """Run a Redis step; on failure mark the job broken until ``open`` reloads it."""
        try:
            return await step
        except Unavailable as exc:
            self.broken = f"storage failed: {exc}"
            raise Unavailable(f"job {self.name}: {self.broken}") from exc

    # --- serving ----------------------------------------------------------------------

    async def lease(self, owner: Watcher, batch_size: int) -> Lease | None:
        """Lease the next batch to ``owner``: queued items first, then the file.

        ``None`` means nothing to serve now (paused, done, broken, or all in flight).
        """
        async with self.lock:
            while self.state == RUNNING and not self.broken and self.spec.mode != "write":
                lease_id = secrets.token_hex(8)
                if self.queued and (
                    queued := await self._guard(self.store.take_queued(self.name, lease_id))
                ):
                    self.queued -= len(queued)
                    return self._hold(lease_id, queued, owner)
                if self.counts["exhausted"]:
                    return None
                items = await self._read(lease_id, batch_size)
                if items:
                    return self._hold(lease_id, items, owner)
            return None

    def _hold(self, lease_id: str, items: list[LeasedItem], owner: Watcher) -> Lease:
        lease = Lease(
            lease_id,
            {i: (item, attempts) for i, item, attempts in items},
            owner,
            time.monotonic() + self.spec.lease_timeout,
        )
        self.leases[lease_id] = lease
        owner.leases.add(lease_id)
        return lease

    async def _read(self, lease_id: str, batch_size: int) -> list[LeasedItem]:
        """Read a chunk, log its bad lines, and lease its items, in one commit."""
        assert self.reader is not None
        chunk = await asyncio.to_thread(self.reader.read, batch_size)  # big lines: off the loop
        items = [(i, item, 0) for i, item in chunk.items]
        outcome = Outcome()
        outcome.dead = [(i, reason, 0) for i, reason in chunk.errors]
        outcome.change.fields = {"next_id": chunk.position.next_id, "offset": chunk.position.offset}
        if not chunk.items and not chunk.errors:
            outcome.change.fields["exhausted"] = 1
        if items:
            outcome.change.put_lease = (lease_id, pack(items))
        await self._commit(outcome)
        if self.counts["exhausted"]:
            self.reader.close()
            await self._check_done()
        return items

    # --- results and failures -----------------------------------------------------------

    async def settle(
        self, lease_id: str | None, results: list[Item], errors: list[ItemError]
    ) -> Ack:
        """Take a worker's results for (part of) a lease: write, retry or fail each item."""
        async with self.lock:
            if lease_id is None:
                return await self._write_unleased(results, errors)
            lease = self.leases.get(lease_id)
            if lease is None or self.broken:
                return Ack(job=self.name, lease=lease_id, dropped=len(results) + len(errors))
            pending = dict(lease.items)
            accepted = [(i, item) for i, item in results if pending.pop(i, None) is not None]
            outcome = Outcome()
            failing = [(e, pending.pop(e.id)) for e in errors if e.id in pending]
            for err, entry in failing:
                self._fail_item(outcome, err.id, entry, err.message, err.retry)
            written = await self._write(outcome, accepted, lease.items)
            if pending:
                outcome.change.put_lease = (lease.id, pack(_packed(pending)))
            else:
                outcome.change.drop_lease = lease.id
            await self._commit(outcome)
            lease.items = pending
            if not pending:
                self._release(lease)
            await self._check_done()
            return Ack(
                job=self.name,
                lease=lease_id,
                written=written,
                retried=len(outcome.change.requeue),
                failed=len(outcome.dead),
                dropped=len(results) + len(errors) - len(accepted) - len(failing),
            )

    async def _write(self, outcome: Outcome, accepted: list[Item],
                     leased: dict[int, tuple[Any, int]]) -> int:
        """Append accepted results to the output (a read-only job just counts them)."""
        written = len(accepted)
        if accepted and self.writer is not None:
            offset, bad = await asyncio.to_thread(self.writer.write, accepted)
            outcome.change.fields["out_offset"] = offset
            outcome.dead += [(i, f"cannot write result: {why}", leased[i][1] + 1) for i, why in bad]
            written -= len(bad)
        outcome.change.fields["written"] = self.counts["written"] + written
        return written

    async def _write_unleased(self, results: list[Item], errors: list[ItemError]) -> Ack:
        """A write-only job takes items that were never leased; each id settles once."""
        if self.spec.mode != "write":
            raise BadRequest("a result needs a lease, except in a write-only job")
        if self.broken:
            raise Unavailable(f"job {self.name} cannot take results now: {self.broken}")
        unique: dict[int, Any] = {}
        for i, item in results:
            unique.setdefault(i, item)  # the first result for an id wins; order is kept
        failing: dict[int, str] = {}
        for err in errors:
            if err.id not in unique:  # a result beats an error for the same id
                failing.setdefault(err.id, err.message)
        ids = [*unique, *failing]
        fresh = dict(zip(ids, await self._guard(self.store.new_ids(self.name, ids)), strict=True))
        accepted = [(i, item) for i, item in unique.items() if fresh[i]]
        outcome = Outcome()
        written = await self._write(outcome, accepted, {i: (None, 0) for i in unique})
        outcome.dead += [(i, why, 1) for i, why in failing.items() if fresh[i]]
        outcome.change.settled_ids = [i for i in ids if fresh[i]]  # written or failed: settled
        await self._commit(outcome)
        return Ack(job=self.name, lease=None, written=written, failed=len(outcome.dead),
                   dropped=len(results) + len(errors) - len(outcome.change.settled_ids))

    def _fail_item(self, outcome: Outcome, item_id: int, entry: tuple[Any, int],
                   reason: str, retry: bool = True) -> None:
        item, attempts = entry
        attempts += 1
        if retry and attempts < self.spec.max_attempts:
            outcome.change.requeue.append((item_id, item, attempts))
        else:
            outcome.dead.append((item_id, reason, attempts))

    async def _fail_lease(self, lease: Lease, reason: str, charge: bool = True) -> None:
        """End a lease its owner did not settle; ``charge`` counts it as a failed attempt."""
        outcome = Outcome()
        for item_id, (item, attempts) in lease.items.items():
            if charge:
                self._fail_item(outcome, item_id, (item, attempts), reason)
            else:
                outcome.change.requeue.append((item_id, item, attempts))
        outcome.change.drop_lease = lease.id
        await self._commit(outcome)
        self._release(lease)
        await self._check_done()

    def _release(self, lease: Lease) -> None:
        del self.leases[lease.id]
        lease.owner.leases.discard(lease.id)
        lease.owner.wake()

    async def release(self, owner: Watcher, charge: bool = True) -> None:
        """Give back every lease of ``owner`` (its connection closed): requeue at once.

        A worker that vanished counts an attempt (so an item that kills its workers
        ends in the error file); a server shutting down (``charge=False``) does not.
        """
        async with self.lock:
            for lease in [le for le in self.leases.values() if le.owner is owner]:
                if self.broken:
                    return  # ``open`` will requeue it from Redis
                await self._fail_lease(lease, "worker disconnected", charge)

    async def expire(self, now: float | None = None) -> list[Watcher]:
        """Requeue leases past their deadline (a hung worker); return their owners."""
        now = time.monotonic() if now is None else now
        async with self.lock:
            expired = [le for le in self.leases.values() if le.deadline <= now]
            for lease in expired:
                if self.broken:
                    break
                await self._fail_lease(lease, f"lease expired after {self.spec.lease_timeout}s")
            return [lease.owner for lease in expired]

    async def _commit(self, outcome: Outcome) -> None:
        """Log dead items, then commit the step; memory changes only after Redis has.

        A failed log write breaks the job like a failed Redis write: the step may already
        have appended output or moved the reader, and only ``open`` puts both back.
        """
        change = outcome.change
        if outcome.dead:
            assert self.errors is not None
            try:
                offset = await asyncio.to_thread(self.errors.write, outcome.dead)
            except PlanchetError as exc:
                self.broken = f"storage failed: {exc}"
                raise
            change.fields["err_offset"] = offset
            change.fields["failed"] = self.counts["failed"] + len(outcome.dead)
        await self._guard(self.store.apply(self.name, change))
        for key, value in change.fields.items():
            self.counts[key] = int(value)
        self.queued += len(change.requeue)
        if change.requeue:
            self._notify()
        self._history.append((time.monotonic(), self.counts["written"] + self.counts["failed"]))

    async def _check_done(self) -> None:
        if (
            self.state != DONE
            and self.spec.mode != "write"
            and self.counts["exhausted"]
            and not self.leases
            and not self.queued
        ):
            await self._guard(self.store.update_job(self.name, {"state": DONE}))
            self.state = DONE
            self._close_files()
            self._notify()

    # --- reporting ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        c = self.counts
        in_flight = sum(len(le.items) for le in self.leases.values())
        rate = self._rate()
        # a read-out file is closed and may be gone: its size is what was read
        size = self.reader.size() if self.reader and not c["exhausted"] else c["offset"]
        remaining = in_flight + self.queued
        if not c["exhausted"] and c["offset"]:
            remaining += round(c["next_id"] * max(size - c["offset"], 0) / c["offset"])
        return {
            "job": self.name,
            "state": self.state,
            "mode": self.spec.mode,
            "read": c["next_id"],
            "written": c["written"],
            "failed": c["failed"],
            "in_flight": in_flight,
            "queued": self.queued,
            "exhausted": bool(c["exhausted"]),
            "bytes_read": c["offset"],
            "bytes_total": size,
            "rate": rate,
            "eta_seconds": remaining / rate if rate else None,
            "error": self.broken,
            # the original Planchet's report keys, for old scripts
            "served": in_flight,
            "received": c["written"],
            "status": "COMPLETE" if self.state == DONE else "IN_PROGRESS",
        }

    def _rate(self) -> float:
        """Items settled per second over the recent past (up to 120 steps)."""
        if len(self._history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


def _packed(items: dict[int, tuple[Any, int]]) -> list[LeasedItem]:
    return [(i, item, attempts) for i, (item, attempts) in items.items()]
