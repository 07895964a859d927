"""The group committer on its own: whatever fails in a commit breaks the job, loudly."""

from __future__ import annotations

import asyncio

import pytest

from planchet.commit import Committer, Group
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
