"""``watch``: a ``status`` frame now and every ``interval`` seconds, built once per tick.

Watchers wake on a shared clock (multiples of their interval), and the status is built
at most once per ``QUANTUM`` of it for all of them: a cache keyed by time, so a hundred
dashboards cost what one does. Building reads what the server keeps anyway: each job's
report, the sessions' counters (``Session.count``: two integer additions per ack, the
only cost on the dispatch path), the error files' tails (``errortail``: bounded, read
off the loop, only when the committed offset moved) and each job's rate history,
sampled at the maintenance tick (``tick``) with the Redis PING that feeds the latency
histogram of ``/metrics``.

Counts are public (``watch`` is open like ``report``); a job's ``workers`` and
``errors`` go only to a watcher whose token may administer the job (``Keys.may_administer``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .auth import Keys
from .errortail import ErrorTails
from .exceptions import ConnectionLost
from .jobs import Job
from .messages import Reply, Status, Watch
from .report import History
from .sessions import Session
from .store import Store
from .version import __version__

log = logging.getLogger("planchet")

QUANTUM = 0.25  # seconds: the shortest interval, and the age a shared status may have
MAX_INTERVAL = 60.0
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0,
                   2.5, 5.0)


@dataclass
class Snapshot:
    slot: float  # the tick it was built for, on the QUANTUM grid
    time: float
    server: dict[str, Any]
    jobs: dict[str, dict[str, Any]]  # with workers and errors, before any is hidden


class Latency:
    """Redis PING round trips, counted in the buckets of a Prometheus histogram."""

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS) + 1)  # the last: above every bucket
        self.sum = 0.0

    def observe(self, seconds: float) -> None:
        self.counts[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.sum += seconds

    def cumulative(self) -> list[tuple[str, int]]:
        """``(le, count)`` pairs, ``+Inf`` last, as ``HistogramMetricFamily`` takes them."""
        total, pairs = 0, []
        for bound, count in zip([*map(str, LATENCY_BUCKETS), "+Inf"], self.counts, strict=True):
            total += count
            pairs.append((bound, total))
        return pairs


class Board:
    """The watchers of one server, the status they share, what the status samples."""

    def __init__(self, sessions: set[Session], jobs: Callable[[], dict[str, Job]], keys: Keys,
                 store: Store) -> None:
        self.sessions = sessions
        self.jobs = jobs
        self.keys = keys
        self.store = store
        self.builds = 0  # statuses built so far (tests count them)
        self.tails = ErrorTails()
        self.latency = Latency()
        self.redis_online = True  # as the last PING said
        self._histories: dict[str, tuple[Job, History]] = {}
        self._snapshot: Snapshot | None = None
        self._building = asyncio.Lock()
        self._watchers: dict[Session, asyncio.Task[None]] = {}
        self._pinging = False

    # --- watchers -------------------------------------------------------------------

    async def watch(self, session: Session, msg: Watch) -> None:
        """Reply, then start pushing (a second watch replaces the first; 0 stops)."""
        self.unwatch(session)
        interval = min(MAX_INTERVAL, max(QUANTUM, msg.interval)) if msg.interval else 0.0
        await session.send(Reply(id=msg.id, data={"interval": interval, "jobs": msg.jobs}))
        if interval:
            self._watchers[session] = asyncio.create_task(
                self._push(session, msg, interval), name="watch")

    def unwatch(self, session: Session) -> None:
        task = self._watchers.pop(session, None)
        if task is not None:
            task.cancel()

    @property
    def watchers(self) -> int:
        return len(self._watchers)

    async def close(self) -> None:
        tasks = list(self._watchers.values())
        self._watchers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def _push(self, session: Session, msg: Watch, interval: float) -> None:
        """The first status at once, then one at each multiple of ``interval``."""
        try:
            tick = time.time()
            while True:
                await session.send(self._view(await self.snapshot(tick), session, msg))
                now = time.time()
                tick = (math.floor(now / interval) + 1) * interval
                await asyncio.sleep(tick - now)
        except (ConnectionLost, ConnectionError):
            pass  # the connection went: its end unwatches it
        except Exception:
            log.exception("watch failed; it stops")
        finally:
            if self._watchers.get(session) is asyncio.current_task():
                del self._watchers[session]

    def _view(self, snap: Snapshot, session: Session, msg: Watch) -> Status:
        """What this watcher sees: its jobs, with workers and errors where it may."""
        names = snap.jobs if msg.jobs is None else [n for n in msg.jobs if n in snap.jobs]
        jobs = []
        for name in names:
            entry = snap.jobs[name]
            if not self.keys.may_administer(name, msg.token, session.token):
                entry = {**entry, "workers": None, "errors": None}
            jobs.append(entry)
        return Status.model_construct(time=snap.time, server=snap.server, jobs=jobs)

    # --- building, once per tick ------------------------------------------------------

    async def snapshot(self, when: float) -> Snapshot:
        """The status for the tick at ``when`` (Unix seconds): built by the first watcher
        of the tick, shared by every other."""
        slot = math.floor(when / QUANTUM + 1e-6) * QUANTUM
        async with self._building:
            if self._snapshot is None or self._snapshot.slot < slot:
                self._snapshot = await self._build(slot)
            return self._snapshot

    async def _build(self, slot: float) -> Snapshot:
        jobs = dict(self.jobs())
        await self.tails.refresh(jobs.values())
        self.builds += 1
        workers = self._workers(jobs, time.monotonic())
        entries = {}
        for name, job in jobs.items():
            entry = job.report()
            entry["workers"] = sorted(workers.get(name, []), key=_worker_order)
            entry["errors"] = self.tails.get(name)
            entry["history"] = self._history(job).list()
            entries[name] = entry
        busy = sum(1 for s in self.sessions if s.subscriptions or s.settled)
        server = {"version": __version__, "connections": len(self.sessions), "workers": busy,
                  "redis": "online" if self.redis_online else "offline"}
        return Snapshot(slot, round(time.time(), 3), server, entries)

    def _workers(self, jobs: dict[str, Job], now: float) -> dict[str, list[dict[str, Any]]]:
        """Each job's workers: sessions with credit on it, or that settled results for it."""
        found: dict[str, list[dict[str, Any]]] = {}
        for session in list(self.sessions):
            for name in session.subscriptions.keys() | session.settled.keys():
                job = jobs.get(name)
                if job is not None:
                    found.setdefault(name, []).append(_worker(session, job, now))
        return found

    def _history(self, job: Job) -> History:
        entry = self._histories.get(job.name)
        if entry is None or entry[0] is not job:  # new, or replaced by a clean start
            entry = self._histories[job.name] = job, History()
        return entry[1]

    # --- the maintenance tick -----------------------------------------------------------

    async def tick(self) -> None:
        """PING Redis (its latency for ``/metrics``, its state for ``status``) and
        sample every job's rate history; a PING still out skips this round."""
        if self._pinging:
            return
        self._pinging = True
        try:
            start = time.perf_counter()
            self.redis_online = await self.store.ping()
            if self.redis_online:
                self.latency.observe(time.perf_counter() - start)
        finally:
            self._pinging = False
        now, jobs = time.time(), self.jobs()
        for name in [n for n in self._histories if n not in jobs]:
            del self._histories[name]
        for job in jobs.values():
            c = job.counts
            self._history(job).sample(c.get("written", 0) + c.get("failed", 0), now)


def _worker(session: Session, job: Job, now: float) -> dict[str, Any]:
    sub = session.subscriptions.get(job.name)
    held = [job.leases[lid] for lid in list(sub.leases) if lid in job.leases] if sub else []
    tally = session.settled.get(job.name)
    return {
        "id": session.id, "kind": session.kind, "client": session.client,
        "address": session.address,
        "rate": round(tally.rate(now), 2) if tally else 0.0,
        "done": tally.done if tally else 0, "failed": tally.failed if tally else 0,
        "leases": len(held), "in_flight": sum(lease.outstanding for lease in held),
        "last_seen": round(max(0.0, now - session.seen), 1),
    }


def _worker_order(worker: dict[str, Any]) -> tuple[str, str]:
    return worker["address"], worker["id"]
