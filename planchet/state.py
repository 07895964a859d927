"""A job's state as typed values: what it is doing, why it is stopped, what it lends.

No behaviour lives here; ``jobs`` acts on these values, ``admin`` and ``report`` read them.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Protocol

from .store import Change


class JobState(enum.StrEnum):
    RUNNING = "running"
    PAUSED = "paused"
    DONE = "done"


RUNNING, PAUSED, DONE = JobState.RUNNING, JobState.PAUSED, JobState.DONE


class Fault(enum.StrEnum):
    """Why a job serves nothing right now."""

    NOT_OPENED = "not_opened"  # created, not loaded yet
    STORAGE = "storage"  # Redis failed: reopened once it answers again
    STEP = "step"  # a step failed (a file, a bug): reopened from the last commit
    UNUSABLE = "unusable"  # cannot be opened as it is (input gone, state lost): the operator
    CLOSED = "closed"  # deleted, replaced or the server is stopping


@dataclass(frozen=True)
class Broken:
    kind: Fault
    reason: str

    def __str__(self) -> str:
        return self.reason

    @property
    def recoverable(self) -> bool:
        """Maintenance reopens the job by itself (storage back, or a step to retry)."""
        return self.kind in (Fault.STORAGE, Fault.STEP)


class Watcher(Protocol):
    """Whoever waits for a job (a subscription): told when work or state changes."""

    leases: set[str]

    def wake(self) -> None: ...

    def tell(self, event: str) -> None: ...


@dataclass
class Lease:
    id: str
    items: dict[int, tuple[Any, int]]  # id -> (item, failed attempts before this one)
    owner: Watcher
    deadline: float
    given: float = 0.0  # when it was leased (time.monotonic)


@dataclass
class Outcome:
    """What one step decided, before it is committed."""

    change: Change = field(default_factory=Change)
    dead: list[tuple[int, str, int | None]] = field(default_factory=list)  # id, why, attempts
