"""What a job says about itself: counts, rate and ETA, in the keys clients read.

The original Planchet's keys (``served``, ``received``, ``status``) are kept beside the
new ones, for old scripts.
"""

from __future__ import annotations

import collections
import time
from typing import TYPE_CHECKING, Any

from .exceptions import PlanchetError
from .state import DONE

if TYPE_CHECKING:
    from .jobs import Job


def job_report(job: Job) -> dict[str, Any]:
    c = job.counts
    in_flight = sum(le.outstanding for le in job.leases.values())
    rate = job.rate.per_second()
    size = _input_size(job)
    remaining = in_flight + job.queued
    if c and not c["exhausted"] and c["offset"]:
        remaining += round(c["next_id"] * max(size - c["offset"], 0) / c["offset"])
    return {
        "job": job.name,
        "state": str(job.state),
        "mode": job.spec.mode,
        "read": c.get("next_id", 0),
        "written": c.get("written", 0),
        "failed": c.get("failed", 0),
        "in_flight": in_flight,
        "queued": job.queued,
        "exhausted": bool(c.get("exhausted")),
        "bytes_read": c.get("offset", 0),
        "bytes_total": size,
        "rate": rate,
        "eta_seconds": remaining / rate if rate else None,
        "error": str(job.broken) if job.broken else None,
        "retries": job.retries,  # {time, items, file}: each retry of its failures
        # the original Planchet's report keys, for old scripts
        "served": in_flight,
        "received": c.get("written", 0),
        "status": "COMPLETE" if job.state == DONE else "IN_PROGRESS",
    }


class Rate:
    """Items settled per second over the recent past (the last 120 commits)."""

    def __init__(self) -> None:
        self._history: collections.deque[tuple[float, int]] = collections.deque(maxlen=120)

    def add(self, settled: int) -> None:
        self._history.append((time.monotonic(), settled))

    def clear(self) -> None:
        self._history.clear()

    def per_second(self) -> float:
        if len(self._history) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self._history[0], self._history[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0


class History:
    """A job's items/s, one point every ``step`` seconds over the last ``span`` (memory
    only): the rate chart of ``watch``. The rate of a point is what was settled since
    the one before, so a job that stopped shows 0, not its last rate."""

    def __init__(self, step: float = 5.0, span: float = 600.0) -> None:
        self.step = step
        self.points: collections.deque[tuple[float, float]] = collections.deque(
            maxlen=int(span / step))
        self._last: tuple[float, int] | None = None  # (when, settled) of the last sample

    def sample(self, settled: int, now: float | None = None) -> None:
        """Called often (each maintenance tick); keeps a point every ``step`` seconds."""
        now = time.time() if now is None else now
        last = self._last
        if last is None or settled < last[1]:  # the first, or the counts went back
            self._last = now, settled
        elif now - last[0] >= self.step:
            self.points.append((round(now, 2), round((settled - last[1]) / (now - last[0]), 2)))
            self._last = now, settled

    def list(self) -> list[list[float]]:
        return [[t, r] for t, r in self.points]


def _input_size(job: Job) -> int:
    """A read-out file is closed and may be gone: its size is what was read."""
    reader = job.files.reader
    if reader and not job.counts["exhausted"]:
        try:
            return reader.size()
        except PlanchetError:
            pass
    return job.counts.get("offset", 0)
