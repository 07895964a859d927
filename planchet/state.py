"""A job's state as typed values: what it is doing, why it is stopped, what it lends.

No behaviour lives here but what a value says of itself; ``jobs`` acts on these values,
``admin`` and ``report`` read them.
"""

from __future__ import annotations

import enum
import operator
from dataclasses import dataclass
from typing import Any, Protocol

from .exceptions import CorruptInput, PlanchetError, ServerError, Unavailable

_ID = operator.itemgetter(0)


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

    @classmethod
    def by(cls, exc: BaseException, opening: bool = False) -> Broken:
        """What a failure means for a job: Redis failed; the job cannot be opened as it is
        (a file problem while opening); or a step failed (anything else, a bug included)."""
        if isinstance(exc, Unavailable):
            return cls(Fault.STORAGE, f"storage failed: {exc}")
        if isinstance(exc, Unusable | CorruptInput) or (
                opening and isinstance(exc, PlanchetError)):
            return cls(Fault.UNUSABLE, str(exc))
        return cls(Fault.STEP, f"a step failed ({type(exc).__name__}: {exc})")

    @property
    def recoverable(self) -> bool:
        """Maintenance reopens the job by itself (storage back, or a step to retry)."""
        return self.kind in (Fault.STORAGE, Fault.STEP)


class Watcher(Protocol):
    """Whoever waits for a job (a subscription): told when work or state changes."""

    leases: set[str]

    def wake(self) -> None: ...

    def tell(self, event: str) -> None: ...

    def stall(self) -> None: ...  # its lease expired: feed it nothing until it speaks again


@dataclass
class Lease:
    """Items lent to one worker until ``deadline``.

    ``batch`` is the lease as given, ``[(id, item), ...]``, what its frame carries.
    ``items`` is what is still pending of it: id -> (item, failed attempts before this
    one). For a fresh batch (``pending`` None) it is made only when first asked for,
    since most leases are settled whole at once and never need it (``settles_whole``).
    """

    id: str
    batch: list[tuple[int, Any]]
    owner: Watcher
    deadline: float
    given: float = 0.0  # when it was leased (time.monotonic)
    pending: dict[int, tuple[Any, int]] | None = None  # None: all of ``batch``, untried

    @property
    def items(self) -> dict[int, tuple[Any, int]]:
        if self.pending is None:
            self.pending = {i: (item, 0) for i, item in self.batch}
        return self.pending

    @items.setter
    def items(self, pending: dict[int, tuple[Any, int]]) -> None:
        self.pending = pending

    @property
    def unsettled(self) -> list[tuple[int, Any]]:
        """What is still pending, as a frame carries it: ``[(id, item), ...]``."""
        if self.pending is None:
            return self.batch
        return [(i, item) for i, (item, _) in self.pending.items()]

    @property
    def outstanding(self) -> int:
        """How many items are still pending."""
        return len(self.batch) if self.pending is None else len(self.pending)

    def untried(self) -> bool:
        """Whether some pending item has never failed before."""
        return self.pending is None or any(tries == 0 for _, tries in self.pending.values())

    def settles_whole(self, results: list[tuple[int, Any]]) -> bool:
        """Whether ``results`` are, in order, one for each item of an untouched batch:
        the usual result, taken without building ``items``."""
        return (self.pending is None and len(results) == len(self.batch)
                and list(map(_ID, results)) == list(map(_ID, self.batch)))


class Unusable(ServerError):
    """The job cannot be opened as it is; an operator must act."""
