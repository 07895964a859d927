"""Write-only jobs: workers send results for items that were never leased.

A job with no input file (mode ``write``) takes whatever ids its workers produce and
writes each id once: the ids settled are kept in Redis, and the ids of groups not yet
committed in memory, so two results for one id never both land, even in one group.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from .commit import Flusher
from .exceptions import Unavailable
from .jobs import Dead, Job
from .messages import Ack, Item, ItemError
from .spec import JobSpec
from .store import Store


def new_job(spec: JobSpec, store: Store, root: Path | None = None,
            flusher: Flusher | None = None) -> Job:
    """The job for ``spec``: a ``WriteOnlyJob`` for mode ``write``."""
    return (WriteOnlyJob if spec.mode == "write" else Job)(spec, store, root, flusher)


class WriteOnlyJob(Job):
    def __init__(self, spec: JobSpec, store: Store, root: Path | None = None,
                 flusher: Flusher | None = None) -> None:
        super().__init__(spec, store, root, flusher)
        self._settling: set[int] = set()  # ids in groups not yet committed

    def _forget(self) -> None:
        self._settling.clear()

    async def _settle_unleased(self, results: list[Item], errors: list[ItemError]) -> Ack:
        """Take items that were never leased; each id settles once."""
        unique: dict[int, Any] = {}
        for i, item in results:
            unique.setdefault(i, item)  # the first result for an id wins; order is kept
        failing: dict[int, str] = {}
        for err in errors:
            if err.id not in unique:  # a result beats an error for the same id
                failing.setdefault(err.id, err.message)
        ids = [*unique, *failing]
        seen = await self._unbroken(self.store.new_ids(self.name, ids))
        fresh = {i for i, new in zip(ids, seen, strict=True) if new and i not in self._settling}
        group = self._group()
        dead: list[Dead] = [(i, why, 1) for i, why in failing.items() if i in fresh]
        written = self._write(group, dead, [(i, x) for i, x in unique.items() if i in fresh], None)
        self._log_dead(group, dead)
        group.change.settled_ids += list(fresh)
        self._settling |= fresh
        group.after.append(lambda: self._settling.difference_update(fresh))
        await self._wait(group)
        return Ack(job=self.name, lease=None, written=written, failed=len(dead),
                   dropped=len(results) + len(errors) - len(fresh))

    async def _unbroken(self, read: Any) -> Any:
        if self.broken:
            raise Unavailable(f"job {self.name} cannot take results now: {self.broken}")
        try:
            result = await read
        except Exception as exc:
            self._break(exc)
            raise self._as_error(exc) from exc
        if self.broken:
            raise Unavailable(f"job {self.name} cannot take results now: {self.broken}")
        return result
