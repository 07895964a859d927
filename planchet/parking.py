"""Resumable sessions by name: who holds a session's leases, and the clock of a parked one.

A resumable session has a name (its id: a capability, never logged). While its
connection is open the name points to it. When the connection ends without a goodbye
for good, the session is *parked*: its pumps stop, its leases and credit stay, and a
timer of ``grace`` seconds runs. A new connection that names it in ``hello`` takes it
over (``take``) and the timer is cancelled; otherwise, when the timer fires, ``expire``
gives its leases back as its ending says. Nothing here knows what a session is.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
from collections.abc import Awaitable, Callable
from typing import Generic, TypeVar

log = logging.getLogger("planchet")

S = TypeVar("S")


def new_name() -> str:
    """A fresh session id: 128 random bits as 32 hex characters."""
    return secrets.token_hex(16)


class Parking(Generic[S]):
    def __init__(self, grace: float, expire: Callable[[S], Awaitable[None]]) -> None:
        self.grace = grace
        self._expire = expire
        self._named: dict[str, S] = {}  # name -> the session holding its leases
        self._timers: dict[str, asyncio.Task[None]] = {}  # name -> the grace of a parked one

    def __len__(self) -> int:
        return len(self._timers)

    def add(self, name: str, session: S) -> None:
        self._named[name] = session

    def take(self, name: str, new: S) -> S | None:
        """Hand the name over to ``new``; the session that held it (parked or not), if any."""
        old = self._named.get(name)
        if old is None or old is new:
            return None
        timer = self._timers.pop(name, None)
        if timer is not None:
            timer.cancel()
        self._named[name] = new
        return old

    def park(self, name: str, session: S) -> None:
        """Start the grace period of ``session``, unless another has taken its name."""
        if self._named.get(name) is session and name not in self._timers:
            self._timers[name] = asyncio.create_task(self._wait(name, session), name="parked")

    def drop(self, name: str, session: S) -> None:
        """``session`` ended for good: forget its name (if it still holds it)."""
        if self._named.get(name) is session:
            del self._named[name]

    async def _wait(self, name: str, session: S) -> None:
        await asyncio.sleep(self.grace)
        del self._named[name]  # from here on nobody can take it: the timer is not cancelled
        try:
            await self._expire(session)
        except Exception:
            log.exception("could not give back the work of a parked session")
        finally:
            self._timers.pop(name, None)

    async def close(self) -> list[S]:
        """Stop every clock: the parked sessions whose grace had not run out, to release now
        (those already expiring are awaited)."""
        parked = []
        for name, timer in list(self._timers.items()):
            if self._named.get(name) is not None:
                parked.append(self._named.pop(name))
                timer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await timer
        self._timers.clear()
        return parked
