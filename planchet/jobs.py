"""One job at run time: leases, requeue, results, completion; decisions without sockets.

The rules that keep every item exactly once in the output:

* Items move between *unread* (the file past the cursor), *queued*, *leased* and
  *written*/*failed* only inside one Redis transaction (``Store.apply``).
* Output and error files are appended and fsynced *before* the transaction that
  commits their new offsets; ``open`` truncates them back to the committed offsets, so
  bytes written by a step that did not commit disappear with the step.
* ``open`` also puts every lease back in the queue: after a server or Redis restart no
  lease has a live owner. That one recovery path serves every kind of crash.
* A step that fails, for any reason and with any exception, leaves the job *broken*:
  it serves nothing until ``open`` has reloaded it from Redis and the files, so it
  never goes on from half-changed memory (a reader that moved past a chunk whose
  commit failed, say).
* A late or duplicate result names a lease or an id that is no longer leased, and is
  dropped: the first accepted result wins.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import secrets
import time
from collections.abc import Awaitable
from pathlib import Path
from typing import Any, TypeVar

from .exceptions import BadRequest, PlanchetError, ServerError, Unavailable
from .formats import ErrorLog, Position, Reader, Writer, get_reader, get_writer
from .messages import Ack, Item, ItemError
from .report import job_report
from .spec import JobSpec
from .state import DONE, PAUSED, RUNNING, Broken, Fault, JobState, Lease, Outcome, Watcher
from .store import LeasedItem, Store, pack, pack_leased

log = logging.getLogger("planchet")
T = TypeVar("T")


class Job:
    def __init__(self, spec: JobSpec, store: Store, root: Path | None = None) -> None:
        self.spec = spec
        self.store = store
        self.root = root  # the data dir: every file is checked to be inside it when opened
        self.name = spec.name
        self.lock = asyncio.Lock()
        self.watchers: set[Watcher] = set()
        self.leases: dict[str, Lease] = {}  # in the order they were leased
        self.state = RUNNING
        self.broken: Broken | None = Broken(Fault.NOT_OPENED, "not opened yet")
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
            self._forget_leases()
            await asyncio.to_thread(self._close_files)
            try:
                await self._load()
            except Exception as exc:
                self._break(exc, opening=True)
                raise self._as_error(exc) from exc
            self._notify()

    async def _load(self) -> None:
        record = await self.store.load_job(self.name)
        if record is None:  # opening would cut the output back to nothing
            raise _Unusable("its state is gone from Redis")
        queue = await self.store.requeue_all_leases(self.name)
        self.queued = sum(len(batch) for batch in queue)
        self.state = JobState(record.state)
        self.counts = dict(record.counts)
        if self.state != DONE:
            await asyncio.to_thread(self._open_files)  # never block the loop on a file
        self.broken = None
        self._history.clear()
        await self._check_done()

    def _open_files(self) -> None:
        spec, root = self.spec, self.root
        try:
            if spec.reader and not self.counts["exhausted"]:
                self.reader = get_reader(spec.reader)(Path(spec.input_path or ""), spec.metadata,
                                                      root=root)
                self.reader.open(Position(self.counts["next_id"], self.counts["offset"]))
            if spec.writer and spec.mode != "read":
                self.writer = get_writer(spec.writer)(Path(spec.output_path or ""), spec.metadata,
                                                      root=root)
                self.writer.open(self.counts["out_offset"])
            self.errors = ErrorLog(Path(spec.error_path), root=root)
            self.errors.open(self.counts["err_offset"])
        except BaseException:
            self._close_files()
            raise

    def _close_files(self) -> None:
        for f in (self.reader, self.writer, self.errors):
            if f is not None:
                f.close()
        self.reader = self.writer = self.errors = None

    def _forget_leases(self) -> None:
        for lease in self.leases.values():
            lease.owner.leases.discard(lease.id)
        self.leases.clear()

    async def close(self) -> None:
        """Stop the job for good (deleted, replaced, server stopping): no step after this.

        Watchers are not woken here: ``end`` tells them once the removal is certain.
        """
        async with self.lock:
            self._forget_leases()
            await asyncio.to_thread(self._close_files)
            self.broken = Broken(Fault.CLOSED, "closed")

    def end(self, event: str) -> None:
        """Tell the watchers of a closed job why (``deleted``), and wake them to leave."""
        self.announce(event)
        self._notify()

    async def set_state(self, state: JobState) -> None:
        async with self.lock:
            if self.state == DONE:
                return
            await self._step(self.store.update_job(self.name, {"state": state}))
            self.state = state
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

    # --- failure: any exception in a step breaks the job until ``open`` ---------------

    async def _step(self, work: Awaitable[T]) -> T:
        """Await part of a step; if it fails, in any way, break the job and raise."""
        try:
            return await work
        except Exception as exc:
            self._break(exc)
            raise self._as_error(exc) from exc

    def _break(self, exc: BaseException, opening: bool = False) -> None:
        if isinstance(exc, Unavailable):
            self.broken = Broken(Fault.STORAGE, f"storage failed: {exc}")
        elif isinstance(exc, _Unusable) or (opening and isinstance(exc, PlanchetError)):
            self.broken = Broken(Fault.UNUSABLE, str(exc))
        else:
            if not isinstance(exc, PlanchetError):
                log.error("job %s: a step failed; reopening it from its last commit",
                          self.name, exc_info=exc)
            self.broken = Broken(Fault.STEP, f"a step failed ({type(exc).__name__}: {exc})")

    def _as_error(self, exc: BaseException) -> PlanchetError:
        assert self.broken is not None
        if self.broken.kind is Fault.UNUSABLE:
            return exc if isinstance(exc, PlanchetError) else ServerError(str(exc))
        # nothing of the step was taken; its items come back when the job reloads
        return Unavailable(f"job {self.name}: {self.broken}")

    # --- serving ----------------------------------------------------------------------

    async def lease(self, owner: Watcher, batch_size: int) -> Lease | None:
        """Lease the next batch to ``owner``: queued items first, then the file.

        ``None`` means nothing to serve now (paused, done, broken, or all in flight).
        """
        async with self.lock:
            while self.state == RUNNING and not self.broken and self.spec.mode != "write":
                lease_id = secrets.token_hex(8)
                if self.queued and (
                    queued := await self._step(self.store.take_queued(self.name, lease_id))
                ):
                    self.queued -= len(queued)
                    return self._hold(lease_id, queued, owner)
                if self.counts["exhausted"]:
                    return None
                items = await self._step(self._read(lease_id, batch_size))
                if items:
                    return self._hold(lease_id, items, owner)
            return None

    def _hold(self, lease_id: str, items: list[LeasedItem], owner: Watcher) -> Lease:
        lease = Lease(
            lease_id,
            {i: (item, attempts) for i, item, attempts in items},
            owner,
            time.monotonic() + self.spec.lease_timeout,
            time.monotonic(),
        )
        self.leases[lease_id] = lease
        owner.leases.add(lease_id)
        return lease

    async def _read(self, lease_id: str, batch_size: int) -> list[LeasedItem]:
        """Read a chunk, log its bad lines, and lease its items, in one commit."""
        assert self.reader is not None
        chunk = await asyncio.to_thread(self.reader.read, batch_size)  # big lines: off the loop
        blob, items, unencodable = pack_leased(chunk.items)
        outcome = Outcome()
        outcome.dead = [(i, reason, 0) for i, reason in [*chunk.errors, *unencodable]]
        outcome.change.fields = {"next_id": chunk.position.next_id, "offset": chunk.position.offset}
        if not chunk.items and not chunk.errors:
            outcome.change.fields["exhausted"] = 1
        if items:
            outcome.change.put_lease = (lease_id, blob)
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
                if self.spec.mode != "write":
                    raise BadRequest("a result needs a lease, except in a write-only job")
                if self.broken:
                    raise Unavailable(f"job {self.name} cannot take results now: {self.broken}")
                return await self._step(self._write_unleased(results, errors))
            lease = self.leases.get(lease_id)
            if lease is None or self.broken:
                return Ack(job=self.name, lease=lease_id, dropped=len(results) + len(errors))
            return await self._step(self._settle(lease, results, errors))

    async def _settle(self, lease: Lease, results: list[Item], errors: list[ItemError]) -> Ack:
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
            self._end(lease)
        await self._check_done()
        return Ack(
            job=self.name,
            lease=lease.id,
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
        unique: dict[int, Any] = {}
        for i, item in results:
            unique.setdefault(i, item)  # the first result for an id wins; order is kept
        failing: dict[int, str] = {}
        for err in errors:
            if err.id not in unique:  # a result beats an error for the same id
                failing.setdefault(err.id, err.message)
        ids = [*unique, *failing]
        fresh = dict(zip(ids, await self.store.new_ids(self.name, ids), strict=True))
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
        self._end(lease)
        await self._check_done()

    def _end(self, lease: Lease) -> None:
        del self.leases[lease.id]
        lease.owner.leases.discard(lease.id)
        lease.owner.wake()

    async def release(self, owner: Watcher, crashed: bool = True, grace: float = 0.0) -> None:
        """Give back every lease of ``owner`` (its connection ended): requeue at once.

        A worker that crashed is charged an attempt on its oldest lease, the one it was
        working on, so an item that kills its workers ends in the error file, unless it
        had that lease for less than ``grace`` seconds: it cannot have worked on it much.
        The batches it had only prefetched go back free, so workers that merely come and
        go fail nothing. A clean goodbye, or a server shutting down, charges nothing.
        """
        worked = time.monotonic() - grace
        async with self.lock:
            for n, lease in enumerate([le for le in self.leases.values() if le.owner is owner]):
                if self.broken:
                    return  # ``open`` will requeue it from Redis
                charge = crashed and n == 0 and lease.given <= worked
                await self._step(self._fail_lease(lease, "worker disconnected", charge))

    async def expire(self, now: float | None = None) -> list[Watcher]:
        """Requeue leases past their deadline (a hung worker); return their owners."""
        now = time.monotonic() if now is None else now
        async with self.lock:
            expired = [le for le in self.leases.values() if le.deadline <= now]
            for lease in expired:
                if self.broken:
                    break
                reason = f"lease expired after {self.spec.lease_timeout}s"
                await self._step(self._fail_lease(lease, reason))
            return [lease.owner for lease in expired]

    async def _commit(self, outcome: Outcome) -> None:
        """Log dead items, then commit the step; memory changes only after Redis has."""
        change = outcome.change
        if outcome.dead:
            assert self.errors is not None
            offset = await asyncio.to_thread(self.errors.write, outcome.dead)
            change.fields["err_offset"] = offset
            change.fields["failed"] = self.counts["failed"] + len(outcome.dead)
        await self.store.apply(self.name, change)
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
            await self.store.update_job(self.name, {"state": DONE})
            self.state = DONE
            self._close_files()
            self._notify()

    # --- reporting ----------------------------------------------------------------------

    def report(self) -> dict[str, Any]:
        return job_report(self)

    def rate(self) -> float:
        """Items settled per second over the recent past (up to 120 steps)."""
        if len(self._history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class _Unusable(ServerError):
    """The job cannot be opened as it is; an operator must act."""


def _packed(items: dict[int, tuple[Any, int]]) -> list[LeasedItem]:
    return [(i, item, attempts) for i, (item, attempts) in items.items()]


__all__ = ["DONE", "PAUSED", "RUNNING", "Broken", "Fault", "Job", "JobState", "Lease"]
