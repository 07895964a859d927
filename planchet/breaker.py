"""A client's circuit breaker: a worker that fails every item, batch after batch, stops.

A worker with a bug (a program that answers in the wrong shape, a missing model file)
fails every item it is given, as fast as it is given them, and burns the job's attempts
on the way. ``Breaker`` counts, per job, the batches in a row that the server acked
with every item failed by the worker's own errors and none written. Partial results
for one lease add up: a batch counts once, when the result that settles its last item
is acked, and any result written in it starts the count again. A batch whose every item
this worker failed before is left out of the count: at the end of a job, the retries of
a few poisonous items fail batch after batch whoever works on them. At ``limit`` the next
request for a batch of the job raises ``CircuitOpen``, naming the last error the worker
sent. The server has a breaker of its own, a few batches later (``max_failing_batches``);
its ``circuit_open`` frame opens this one at once.
"""

from __future__ import annotations

from .exceptions import CircuitOpen
from .messages import Ack, Result

MAX_PARTIAL = 1024  # leases partly settled that are remembered
MAX_FAILED_IDS = 100_000  # ids failed per job remembered (to know a batch of retries)
MAX_MESSAGE = 500  # characters of the last error quoted


class Breaker:
    """Sans-I/O: told what was sent and what was acked; says when a job's worker must stop."""

    def __init__(self, limit: int) -> None:
        self.limit = limit  # 0: never open
        self.failing: dict[str, int] = {}  # job -> batches failed on every item, in a row
        self._wrote: set[str] = set()  # jobs this worker has had a result written for
        self.last_error: dict[str, str] = {}  # job -> the last error message sent
        self.opened: dict[str, CircuitOpen] = {}  # job -> why its worker must stop
        self._sent: dict[int, tuple[bool, bool]] = {}  # key -> (settles its lease, any new id)
        self._partial: dict[str, tuple[int, int, bool]] = {}  # lease -> written, failed, new
        self._failed_ids: dict[str, set[int]] = {}  # job -> ids this worker failed

    def sent(self, key: int, result: Result, settles_lease: bool) -> None:
        """``result`` was queued under ``key``; it settles the last items of its lease, or not."""
        if result.errors:
            self.last_error[result.job] = result.errors[-1].message
        if not self.limit or result.lease is None:
            return
        failed = self._failed_ids.setdefault(result.job, set())
        new = any(i not in failed for i, _ in result.items) or any(
            e.id not in failed for e in result.errors)
        if result.errors:
            if len(failed) > MAX_FAILED_IDS:
                failed.clear()
            failed.update(e.id for e in result.errors)
        self._sent[key] = settles_lease, new

    def acked(self, key: int, result: Result, ack: Ack) -> None:
        """The answer to the result under ``key``: count the batch once its lease is settled."""
        sent = self._sent.pop(key, None)
        if sent is None or result.lease is None:
            return
        closing, new = sent
        written, failed, was_new = self._partial.pop(result.lease, (0, 0, False))
        written, failed = written + ack.written, failed + ack.retried + ack.failed
        new = new or was_new
        if not closing:
            self._partial[result.lease] = written, failed, new
            while len(self._partial) > MAX_PARTIAL:
                del self._partial[next(iter(self._partial))]
        elif written:
            self.failing[result.job] = 0
            self._wrote.add(result.job)
        elif failed and (new or result.job not in self._wrote):  # retries count until it
            self._failed(result.job)  # wrote anything: a worker that never did is broken

    def _failed(self, job: str) -> None:
        count = self.failing[job] = self.failing.get(job, 0) + 1
        if count >= self.limit:
            self.opened[job] = CircuitOpen(
                f"the last {count} batches of job {job} failed on every item (the last "
                f"error: {_clip(self.last_error.get(job, ''))}); stopping this worker: "
                f"fix it and start it again (max_failing_batches={self.limit})")

    def open(self, job: str, message: str) -> None:
        """The server cut this connection off ``job``, saying ``message``."""
        last = self.last_error.get(job)
        if last is not None:
            message += f" (the last error: {_clip(last)})"
        self.opened.setdefault(job, CircuitOpen(message))

    def is_open(self, job: str) -> bool:
        return job in self.opened

    def check(self, job: str) -> None:
        """Raise, once, if the job's worker must stop; the count then starts again."""
        error = self.opened.pop(job, None)
        if error is not None:
            self.failing[job] = 0
            raise error


def _clip(text: str) -> str:
    return text if len(text) <= MAX_MESSAGE else text[:MAX_MESSAGE] + "..."
