"""Adaptive batching: batches sized to a target time, learned from each connection's acks."""

from __future__ import annotations

from pathlib import Path

from planchet.batching import BatchSizer
from planchet.dispatcher import Dispatcher
from planchet.messages import MAX_BATCH_SIZE
from tests.conftest import MakeDispatcher
from tests.test_dispatcher import Peer


def run(sizer: BatchSizer, per_second: float, acks: int) -> list[int]:
    """Sizes chosen while a worker settles ``per_second`` items, one ack per batch."""
    now, sizes = 0.0, []
    sizer.settled(0, now)  # the first ack only starts the clock
    for _ in range(acks):
        now += sizer.size / per_second
        sizer.settled(sizer.size, now)
        sizes.append(sizer.size)
    return sizes


def test_a_fast_worker_gets_bigger_batches_until_they_take_the_target_time() -> None:
    """20,000 items/s and a 0.5 s target: from 100 up to about 10,000, the protocol's cap."""
    sizes = run(BatchSizer(100, 0.5), 20_000, 30)
    assert sizes[0] == 200  # at most doubled at a time
    assert sizes[-1] == MAX_BATCH_SIZE


def test_a_slow_worker_gets_smaller_batches() -> None:
    """4 items/s and a 2 s target: from 100 down to 8, halving at most at a time."""
    sizes = run(BatchSizer(100, 2.0), 4, 30)
    assert sizes[0] == 50
    assert sizes[-1] == 8


def test_it_settles_near_the_target() -> None:
    """300 items/s and a 1 s target: it converges on 300 and stays."""
    sizes = run(BatchSizer(10, 1.0), 300, 40)
    assert sizes[-5:] == [300] * 5


def test_time_spent_waiting_for_work_is_not_counted() -> None:
    """After an idle spell the next ack only restarts the clock."""
    sizer = BatchSizer(100, 1.0)
    sizer.settled(0, 0.0)
    sizer.settled(100, 1.0)  # 100/s
    sizer.idle()
    sizer.settled(100, 500.0)  # came after a long wait for work: not a rate
    assert sizer.rate == 100.0


async def test_a_job_with_batch_seconds_grows_the_batches_of_a_fast_worker(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """A credit without a batch size lets the server size batches; acks at once (a fast
    worker) make them grow from the job's batch_size."""
    dispatcher: Dispatcher = await make_dispatcher()
    peer = Peer(dispatcher)
    await peer.start(batch_size=5, batch_seconds=60.0)
    await peer.credit(1)
    sizes = []
    for _ in range(4):
        batch = await peer.next_batch()
        sizes.append(len(batch.items))
        await peer.settle(batch)
    assert sizes[0] == 5 and sizes[-1] > 5


async def test_a_credit_that_names_a_batch_size_fixes_it(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """Adaptive batching never overrides a batch size the worker asked for."""
    dispatcher: Dispatcher = await make_dispatcher()
    peer = Peer(dispatcher)
    await peer.start(batch_size=5, batch_seconds=60.0)
    await peer.credit(1, batch_size=7)
    for _ in range(4):
        batch = await peer.next_batch()
        assert len(batch.items) == 7
        await peer.settle(batch)
