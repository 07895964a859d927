"""The server's circuit breaker over real sockets: a worker that fails every item of batch
after batch is cut off its job; one that also gets some right, or a server with the
breaker off, is not.

The bad workers here are raw WebSocket clients with no breaker of their own.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from pathlib import Path

import orjson
from websockets.asyncio.client import ClientConnection

from planchet.codec import encode
from planchet.messages import (
    Ack,
    Batch,
    Credit,
    Error,
    Event,
    ItemError,
    JobCommand,
    Message,
    Reply,
    Result,
)
from planchet.server import PlanchetServer
from tests.test_server import LINES, greet, recv, report, request, run_job, start_job

MakeServer = Callable[..., Awaitable[PlanchetServer]]
WRONG = "ValueError: the program answered in the wrong shape"


def failed(batch: Batch) -> Result:
    """The result of a worker that failed every item of ``batch``."""
    return Result(job=batch.job, lease=batch.lease,
                  errors=[ItemError(id=i, message=WRONG) for i, _ in batch.items])


async def fail_until_cut_off(ws: ClientConnection, job: str = "j") -> tuple[list[Ack], Error]:
    """Fail every item of every batch until an error frame comes: the acks before it, and it."""
    await ws.send(encode(Credit(job=job, batches=2)))
    acks: list[Ack] = []
    while True:
        message = await recv(ws)
        if isinstance(message, Batch):
            await ws.send(encode(failed(message)))
        elif isinstance(message, Ack):
            acks.append(message)
        elif isinstance(message, Error):
            return acks, message


async def until_reply(ws: ClientConnection, request_id: int) -> list[Message]:
    """Every frame up to the reply to ``request_id``, that reply last."""
    frames: list[Message] = []
    while True:
        frames.append(message := await recv(ws))
        if isinstance(message, Reply) and message.id == request_id:
            return frames


def ids_in(path: Path) -> list[int]:
    return sorted(orjson.loads(line)["id"] for line in path.read_bytes().splitlines())


async def test_a_worker_failing_every_item_is_cut_off_after_n_batches(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """After 5 batches failed on every item the server sends circuit_open, sends no more,
    gives the prefetched leases back free and refuses credit; a good worker holding a
    lease meanwhile is untouched and finishes the job with every item exactly once."""
    admin = await greet(server)
    assert isinstance(await request(admin, start_job(batch_size=5, max_attempts=1)), Reply)
    good = await greet(server)
    await good.send(encode(Credit(job="j", batches=1)))
    first = await recv(good)
    assert isinstance(first, Batch)

    bad = await greet(server)
    acks, error = await fail_until_cut_off(bad)
    assert (error.code, error.job, error.id) == ("circuit_open", "j", None)
    assert "last 5 batches of job j failed on every item" in error.message
    assert [(a.written, a.failed) for a in acks] == [(0, 5)] * 5

    await bad.send(encode(Credit(job="j", batches=2)))
    await bad.send(encode(JobCommand(type="report", id=7, job="j")))
    after = await until_reply(bad, 7)
    assert not [m for m in after if isinstance(m, Batch)]
    assert all(a.written == a.failed == a.retried == 0 for a in after if isinstance(a, Ack))
    refusals = [m for m in after if isinstance(m, Error)]
    assert [(e.code, e.job) for e in refusals] == [("circuit_open", "j")]
    state = after[-1].data  # type: ignore[union-attr]
    assert (state["failed"], state["in_flight"]) == (25, 5)  # only the good worker's lease

    await good.send(encode(Result(job="j", lease=first.lease, items=first.items)))
    assert await run_job(good) == LINES - 25
    errors, output = ids_in(data_dir / "out.jsonl.errors.jsonl"), ids_in(data_dir / "out.jsonl")
    assert len(errors) == 25  # charged once each, and the released leases not at all
    assert sorted(errors + output) == list(range(LINES))
    for ws in (admin, good, bad):
        await ws.close()


async def test_a_worker_that_never_wrote_is_cut_off_even_on_retries(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """With attempts to spare, a worker failing everything gets its own failures back as
    retries; they count until it has written anything, so it is cut off after 5 batches
    and no item reaches the error file."""
    admin = await greet(server)
    assert isinstance(await request(admin, start_job(batch_size=5, max_attempts=10)), Reply)
    bad = await greet(server)
    acks, error = await fail_until_cut_off(bad)
    assert error.code == "circuit_open" and len(acks) == 5
    assert all(a.retried == 5 and a.failed == 0 for a in acks)
    errors = data_dir / "out.jsonl.errors.jsonl"
    assert not errors.exists() or ids_in(errors) == []
    for ws in (admin, bad):
        await ws.close()


async def test_a_worker_that_gets_some_batches_right_is_never_cut_off(
    make_server: MakeServer, issues_input: Path, data_dir: Path
) -> None:
    """Runs of 2 batches failed on every item, then one with a single result sent in a
    separate frame (a partial result): under a threshold of 3 the worker is never cut off."""
    server = await make_server(max_failing_batches=3)
    ws = await greet(server)
    assert isinstance(await request(ws, start_job(batch_size=5, max_attempts=1)), Reply)
    await ws.send(encode(Credit(job="j", batches=1)))
    batches = 0
    while True:
        message = await recv(ws)
        assert not isinstance(message, Error), message
        if isinstance(message, Event) and message.event == "done":
            break
        if not isinstance(message, Batch):
            continue
        batches += 1
        if batches % 3:
            await ws.send(encode(failed(message)))
            continue
        (last, item), rest = message.items[-1], message.items[:-1]
        await ws.send(encode(Result(job="j", lease=message.lease,
                                    errors=[ItemError(id=i, message=WRONG) for i, _ in rest])))
        await ws.send(encode(Result(job="j", lease=message.lease, items=[(last, item)])))
    state = await report(ws)
    assert state["written"] == len(ids_in(data_dir / "out.jsonl")) == batches // 3
    assert state["written"] + state["failed"] == LINES
    await ws.close()


async def test_max_failing_batches_0_turns_the_breaker_off(
    make_server: MakeServer, issues_input: Path, data_dir: Path
) -> None:
    """With --max-failing-batches 0 a worker may fail the whole job, batch after batch."""
    server = await make_server(max_failing_batches=0)
    ws = await greet(server)
    assert isinstance(await request(ws, start_job(batch_size=50, max_attempts=1)), Reply)
    await ws.send(encode(Credit(job="j", batches=2)))
    while True:
        message = await recv(ws)
        assert not isinstance(message, Error), message
        if isinstance(message, Batch):
            await ws.send(encode(failed(message)))
        elif isinstance(message, Event) and message.event == "done":
            break
    assert (await report(ws))["failed"] == LINES
    assert len(ids_in(data_dir / "out.jsonl.errors.jsonl")) == LINES
    await ws.close()


async def test_a_new_connection_starts_fresh(server: PlanchetServer, issues_input: Path) -> None:
    """The breaker holds for one connection: the same worker reconnecting gets batches again."""
    admin = await greet(server)
    assert isinstance(await request(admin, start_job(batch_size=5, max_attempts=3)), Reply)
    bad = await greet(server)
    _, error = await fail_until_cut_off(bad)
    assert error.code == "circuit_open"
    await bad.close()
    again = await greet(server)
    await again.send(encode(Credit(job="j", batches=1)))
    assert isinstance(await asyncio.wait_for(_first_batch(again), 20), Batch)
    for ws in (admin, again):
        await ws.close()


async def _first_batch(ws: ClientConnection) -> Batch:
    while not isinstance(message := await recv(ws), Batch):
        pass
    return message


async def test_retries_of_poisonous_items_do_not_count_against_a_worker(
    make_server: MakeServer, data_dir: Path
) -> None:
    """At a job's end the retries of a few items that fail everywhere come in batches of
    nothing else, failed batch after batch: they do not cut the worker off."""
    poison = {0, 13, 14, 39}
    (data_dir / "in.jsonl").write_text("".join(f'{{"n": {i}}}\n' for i in range(50)))
    server = await make_server(max_failing_batches=2)
    ws = await greet(server)
    assert isinstance(await request(ws, start_job(batch_size=10, max_attempts=5)), Reply)
    await ws.send(encode(Credit(job="j", batches=1)))
    while True:
        message = await recv(ws)
        assert not isinstance(message, Error), message
        if isinstance(message, Event) and message.event == "done":
            break
        if isinstance(message, Batch):
            await ws.send(encode(Result(
                job="j", lease=message.lease,
                items=[(i, x) for i, x in message.items if i not in poison],
                errors=[ItemError(id=i, message=WRONG) for i, _ in message.items if i in poison])))
    assert ids_in(data_dir / "out.jsonl.errors.jsonl") == sorted(poison)
    await ws.close()
