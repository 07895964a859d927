"""The group committer on its own: whatever fails in a commit breaks the job, loudly;
and the flushes of many jobs share thread hops and transactions (``Flusher``)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from typing import Any

import pytest

from planchet.commit import Committer, Flusher, Group, Offsets, _Stopped
from planchet.store import Change, Store
from tests.support import eventually

WAIT = 20.0


async def test_a_failure_while_sealing_fails_the_group_and_tells_the_job() -> None:
    """A bug outside the flush itself (here in sealing) is not a silent death of the
    committer: the group's waiters hear it, the job is told, later groups fail too."""
    failures: list[BaseException] = []

    def seal(group: Group) -> None:
        raise RuntimeError("a bug while sealing")

    async def flush(group: Group) -> None:
        return None

    committer = Committer(seal, flush, failures.append, "j")
    group = committer.current()
    with pytest.raises(RuntimeError, match="sealing"):
        await asyncio.wait_for(committer.wait(group), WAIT)
    assert [str(exc) for exc in failures] == ["a bug while sealing"]
    with pytest.raises(RuntimeError):
        await asyncio.wait_for(committer.wait(committer.current()), WAIT)
    await committer.stop()


async def test_a_failing_after_commit_action_tells_the_job() -> None:
    """An action run once a group is committed that raises breaks the job too."""
    failures: list[BaseException] = []

    async def flush(group: Group) -> None:
        return None

    committer = Committer(lambda group: None, flush, failures.append, "j")
    group = committer.current()
    group.after.append(lambda: 1 / 0)  # type: ignore[func-returns-value,arg-type]
    await asyncio.wait_for(committer.wait(group), WAIT)  # the group itself was committed
    await asyncio.wait_for(committer.stop(), WAIT)
    assert [type(exc) for exc in failures] == [ZeroDivisionError]


async def test_groups_commit_in_order_and_stop_drains_what_is_open() -> None:
    """Steps gathered while a flush runs go into the next group; stop commits it."""
    flushed: list[list[str]] = []
    release = asyncio.Event()

    async def flush(group: Group) -> None:
        await release.wait()
        flushed.append(list(group.change.fields))

    committer = Committer(lambda group: None, flush, lambda exc: None, "j")
    first = committer.current()
    first.change.fields["a"] = 1
    await eventually(lambda: committer._flushing is first, "the first flush to start", WAIT)
    second = committer.current()
    second.change.fields["b"] = 2
    assert second is not first
    release.set()
    await asyncio.wait_for(committer.stop(), WAIT)
    assert flushed == [["a"], ["b"]] and first.done.done() and second.done.done()


async def _hold_a_round(flusher: Flusher) -> tuple[threading.Event, asyncio.Task[Offsets]]:
    """Start a flush of job "first" whose append waits for the returned event; return
    once its round runs, so that flushes asked for meanwhile gather in the next one."""
    gate = threading.Event()

    def append() -> Offsets:
        gate.wait(WAIT)
        return 1, 0

    first = asyncio.create_task(flusher.flush("first", append, Change(fields={"written": 1})))
    await eventually(lambda: flusher._task is not None and not flusher._waiting,
                     "the first round to start", WAIT)
    return gate, first


def _counting(store: Store) -> list[list[str]]:
    """The jobs of each transaction ``store`` commits (Redis still runs every one)."""
    rounds: list[list[str]] = []
    commit_all = store.commit_all

    async def counted(changes: list[tuple[str, Change]]) -> None:
        rounds.append([name for name, _ in changes])
        await commit_all(changes)

    store.commit_all = counted  # type: ignore[method-assign]
    return rounds


async def _fields(store: Store, job: str) -> dict[Any, Any]:
    return dict(await store.redis.hgetall(store._job(job)))


def _appending(offsets: Offsets) -> Callable[[], Offsets]:
    return lambda: offsets


async def test_flushes_that_wait_together_share_one_transaction(store: Store) -> None:
    """Jobs whose flushes are asked for while a round runs share the next one: one
    MULTI/EXEC for all; each job gets its own offsets, and Redis holds each change."""
    flusher, rounds = Flusher(store), _counting(store)
    gate, first = await _hold_a_round(flusher)
    others = [asyncio.create_task(flusher.flush(job, _appending((10 * k, k)),
                                                Change(fields={"written": k})))
              for k, job in enumerate(["b", "c", "d"], 2)]
    await eventually(lambda: len(flusher._waiting) == 3, "the others to wait", WAIT)
    gate.set()
    assert await asyncio.wait_for(first, WAIT) == (1, 0)
    assert [await asyncio.wait_for(t, WAIT) for t in others] == [(20, 2), (30, 3), (40, 4)]
    assert rounds == [["first"], ["b", "c", "d"]]
    fields = await _fields(store, "c")
    assert (fields[b"written"], fields[b"out_offset"], fields[b"err_offset"]) == (b"3", b"30", b"3")


async def test_a_failed_append_fails_its_own_job_alone(store: Store) -> None:
    """A job whose files cannot be appended (the disk is full) hears why; the others of
    its round are committed, and nothing of it reaches Redis."""
    flusher = Flusher(store)
    gate, first = await _hold_a_round(flusher)

    def full() -> Offsets:
        raise OSError("No space left on device")

    bad = asyncio.create_task(flusher.flush("bad", full, Change(fields={"written": 5})))
    good = asyncio.create_task(flusher.flush("good", _appending((7, 0)),
                                             Change(fields={"written": 6})))
    await eventually(lambda: len(flusher._waiting) == 2, "both to wait", WAIT)
    gate.set()
    await asyncio.wait_for(first, WAIT)
    with pytest.raises(OSError, match="No space"):
        await asyncio.wait_for(bad, WAIT)
    assert await asyncio.wait_for(good, WAIT) == (7, 0)
    assert (await _fields(store, "good"))[b"written"] == b"6"
    assert await _fields(store, "bad") == {}


async def test_a_failed_transaction_fails_every_job_of_its_round(store: Store) -> None:
    """A transaction that cannot be made (here a change left unsealed, a bug) fails each
    job in it, and commits none of them; the next round goes on."""
    flusher = Flusher(store)
    gate, first = await _hold_a_round(flusher)
    unsealed: Any = lambda: b"packed too late"  # noqa: E731
    broken = asyncio.create_task(flusher.flush("x", _appending((1, 0)),
                                               Change(leases={"lease": unsealed})))
    bystander = asyncio.create_task(flusher.flush("y", _appending((2, 0)),
                                                  Change(fields={"written": 2})))
    await eventually(lambda: len(flusher._waiting) == 2, "both to wait", WAIT)
    gate.set()
    await asyncio.wait_for(first, WAIT)
    for task in (broken, bystander):
        with pytest.raises(ValueError, match="unsealed"):
            await asyncio.wait_for(task, WAIT)
    assert await _fields(store, "y") == {}
    assert await asyncio.wait_for(flusher.flush("z", _appending((3, 0)), Change()), WAIT) == (3, 0)


async def test_a_cancelled_round_fails_every_flush_in_it_and_waiting(store: Store) -> None:
    """When the flusher's round is cancelled (the server's loop ends), the jobs of that
    round and those waiting for the next all hear it: none waits for ever; a later
    flush starts a round of its own."""
    flusher = Flusher(store)
    gate, first = await _hold_a_round(flusher)
    waiting = asyncio.create_task(flusher.flush("w", _appending((1, 0)), Change()))
    await eventually(lambda: len(flusher._waiting) == 1, "a flush to wait", WAIT)
    assert flusher._task is not None
    flusher._task.cancel()
    for task in (first, waiting):
        with pytest.raises(_Stopped):
            await asyncio.wait_for(task, WAIT)
    gate.set()  # the thread's append ends
    later = flusher.flush("later", _appending((5, 0)), Change(fields={"written": 5}))
    assert await asyncio.wait_for(later, WAIT) == (5, 0)
    assert (await _fields(store, "later"))[b"written"] == b"5"
