"""The faults: a seeded schedule of them, and how each kind is injected.

The same seed gives the same list of faults, times and choices; only which worker a
choice lands on depends on the pool at that moment (timing jitter). A fault that the
system should have absorbed and did not (a Redis that is not back, a server that does
not come up again) is a *finding*: the harness repairs what it must so the job can
finish, and the verdict fails.
"""

from __future__ import annotations

import os
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from tests.chaos.processes import Pool, Server, poll

KINDS = {  # fault kind -> weight in the random draw
    "kill_worker": 4,  # kill -9 of a worker process group, mid-batch
    "hang_worker": 2,  # SIGSTOP; later SIGCONT or kill -9
    "duplicate": 2,  # a worker that acks each batch twice
    "midframe": 2,  # a worker that sends half a frame and drops the socket
    "churn": 1,  # a hundred connect/hello/credit/close cycles
    "kill_server": 1,  # kill -9 of planchet serve, then a restart on the same port
    "kill_redis": 1,  # kill -9 of the embedded redis-server
}
WARMUP = 2.0  # seconds of calm at the start, so the first batches are out


@dataclass(frozen=True)
class Fault:
    at: float  # seconds after the start of the run
    kind: str
    pick: int  # chooses the victim among the workers alive at that moment
    hold: float  # hang_worker: seconds until the worker is released
    resume: bool  # hang_worker: SIGCONT (True) or kill -9 (False) on release


def schedule(seed: int, duration: float, interval: float) -> list[Fault]:
    """About ``duration / interval`` faults over the run, every kind at least once."""
    rng = random.Random(seed)
    count = max(len(KINDS), round(duration / interval))
    kinds = list(KINDS)
    kinds += rng.choices(list(KINDS), weights=list(KINDS.values()), k=count - len(kinds))
    rng.shuffle(kinds)
    span = max(duration - WARMUP, 1.0)
    times = sorted(WARMUP + rng.random() * span for _ in kinds)
    return [
        Fault(at=round(at, 2), kind=kind, pick=rng.randrange(1 << 30),
              hold=round(rng.uniform(4.0, 10.0), 2), resume=rng.random() < 0.5)
        for at, kind in zip(times, kinds, strict=True)
    ]


REDIS_DEADLINE = 20.0  # seconds the server gets to bring its redis-server back
CHURN = 100  # connections per churn fault
DUPLICATE_BATCHES = 3  # batches a duplicate-sending worker takes before it leaves


@dataclass
class Injector:
    server: Server
    pool: Pool
    injected: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)  # no victim at that moment
    findings: list[str] = field(default_factory=list)

    def inject(self, fault: Fault, job: str) -> None:
        actions: dict[str, Callable[[Fault, str], bool]] = {
            "kill_worker": self._kill_worker,
            "hang_worker": self._hang_worker,
            "duplicate": self._duplicate,
            "midframe": self._midframe,
            "churn": self._churn,
            "kill_server": self._kill_server,
            "kill_redis": self._kill_redis,
        }
        done = actions[fault.kind](fault, job)
        (self.injected if done else self.skipped)[fault.kind] += 1

    def _kill_worker(self, fault: Fault, job: str) -> bool:
        worker = self.pool.victim(fault.pick)
        if worker is None:
            return False
        self.pool.kill(worker)
        return True

    def _hang_worker(self, fault: Fault, job: str) -> bool:
        worker = self.pool.victim(fault.pick)
        if worker is None:
            return False
        self.pool.hang(worker, time.monotonic() + fault.hold, fault.resume)
        return True

    def _duplicate(self, fault: Fault, job: str) -> bool:
        self.pool.spawn("duplicate", job, str(DUPLICATE_BATCHES))
        return True

    def _midframe(self, fault: Fault, job: str) -> bool:
        self.pool.spawn("midframe", job)
        return True

    def _churn(self, fault: Fault, job: str) -> bool:
        self.pool.spawn("churn", job, str(CHURN))
        return True

    def _kill_server(self, fault: Fault, job: str) -> bool:
        self.server.kill()
        self.server.start()
        return True

    def _kill_redis(self, fault: Fault, job: str) -> bool:
        victims = self.server.redis_pids()
        if not victims:
            self.findings.append("no embedded redis-server found to kill")
            return False
        for pid in victims:
            os.kill(pid, signal.SIGKILL)

        def back() -> bool:
            pids = self.server.redis_pids()
            return bool(pids) and not set(pids) & set(victims) and self.server.healthy()

        if not poll(back, REDIS_DEADLINE, 0.2):
            self.findings.append(f"redis-server not back {REDIS_DEADLINE:g} s after kill -9 "
                                 "(the harness restarted planchet serve)")
            self.server.kill()
            self.server.start()
        return True
