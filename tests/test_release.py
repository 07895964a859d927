"""release, extend and the per-batch byte cap: in a job, through the dispatcher, over a socket."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import websockets

from planchet import AsyncPlanchetClient, PlanchetClient
from planchet.codec import encode
from planchet.dispatcher import Dispatcher
from planchet.jobs import Job
from planchet.leasing import pair_size
from planchet.messages import Batch, Extend, Release
from planchet.store import Store, unpack
from tests.support import held
from tests.test_dispatcher import WAIT, Peer, ids_of
from tests.test_jobs import (
    Owner,
    close_jobs,  # noqa: F401  (autouse: closes the jobs these tests open)
    errors_of,
    items_of,
    new_job,
    output_of,
    settled,
    small_input,  # noqa: F401  (a fixture)
    write_lines,
)

META = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


def frame_size(job: Job, lease_id: str, items: list[tuple[int, Any]]) -> int:
    """The bytes of the batch frame the dispatcher sends for these items."""
    return len(encode(Batch.model_construct(job=job.name, lease=lease_id, items=items,
                                            lease_timeout=float(job.spec.lease_timeout))))


async def redis_queue(job: Job) -> list[list[int]]:
    """The ids of each batch in the job's queue, as Redis holds it."""
    blobs = await job.store.redis.lrange(f"planchet:job:{job.name}:queue", 0, -1)
    return [[i for i, _, _ in unpack(blob)] for blob in blobs]


def memory_queue(job: Job) -> list[list[int]]:
    return [[i for i, _, _ in items] for _, items in job.queue]


# --- release ---------------------------------------------------------------------------


async def test_release_of_a_whole_lease_requeues_it_with_no_attempt_charged(
    store: Store, data_dir: Path, small_input: list  # noqa: F811
) -> None:
    """Releasing every item ends the lease, frees its slot and keeps the attempts as they were."""
    job = await new_job(store, data_dir, batch_size=3, max_attempts=2)
    owner = Owner()
    first = await job.lease(owner, 3)
    assert first is not None
    await job.expire(now=first.deadline)  # one attempt used up
    again = await job.lease(owner, 3)
    assert again is not None and held(again.items) == {i: ({"n": i}, 1) for i in range(3)}
    wakes = owner.wakes

    assert job.release_items(again.id, None) == (3, 0)
    assert again.id not in job.leases and owner.leases == set() and owner.wakes > wakes
    await job.flushed()
    assert await redis_queue(job) == [[0, 1, 2]]
    assert await store.redis.hgetall("planchet:job:j:leases") == {}
    for _ in range(3):  # released as often as you like: never charged
        lease = await job.lease(owner, 3)
        assert lease is not None and held(lease.items) == {i: ({"n": i}, 1) for i in range(3)}
        assert job.release_items(lease.id, None) == (3, 0)
    lease = await job.lease(owner, 3)
    assert lease is not None
    await settled(job, lease.id, [], [])
    await job.expire(now=lease.deadline)  # the second attempt: now it fails, at 2 attempts
    await job.flushed()
    assert {i: e["attempts"] for i, e in errors_of(job).items()} == {0: 2, 1: 2, 2: 2}


async def test_release_of_some_ids_keeps_the_rest_leased_and_counts_the_others_dropped(
    store: Store, data_dir: Path, small_input: list  # noqa: F811
) -> None:
    """Ids not pending in the lease (foreign, repeated, settled) are dropped; the rest stay."""
    job = await new_job(store, data_dir, batch_size=4)
    owner = Owner()
    lease = await job.lease(owner, 4)
    assert lease is not None
    await settled(job, lease.id, [(0, "done")], [])
    assert job.release_items(lease.id, [2, 99, 2, 0]) == (1, 3)
    assert sorted(lease.items) == [1, 3] and lease.id in owner.leases
    await job.flushed()
    assert await redis_queue(job) == [[2]]
    stored = await store.redis.hget("planchet:job:j:leases", lease.id)
    assert [i for i, _, _ in unpack(stored)] == [1, 3]
    assert job.release_items(lease.id, []) == (0, 0)
    ack = await settled(job, lease.id, [(1, "one"), (3, "three")], [])
    assert ack.written == 2 and lease.id not in job.leases
    again = await job.lease(owner, 4)
    assert again is not None and held(again.items)[2] == ({"n": 2}, 0)


async def test_release_of_an_unknown_lease_drops_everything(
    store: Store, data_dir: Path, small_input: list  # noqa: F811
) -> None:
    """A lease that is not held releases nothing: every id named is dropped."""
    job = await new_job(store, data_dir)
    assert job.release_items("nope", [1, 2, 3]) == (0, 3)
    assert job.release_items("nope", None) == (0, 0)
    assert job.queued == 0


# --- extend ----------------------------------------------------------------------------


async def test_extend_pushes_the_deadline_out_capped_at_the_lease_timeout(
    store: Store, data_dir: Path, small_input: list  # noqa: F811
) -> None:
    """extend moves the deadline to now + seconds (at most lease_timeout); not held: None."""
    job = await new_job(store, data_dir, batch_size=2, lease_timeout=10.0)
    owner = Owner()
    lease = await job.lease(owner, 2)
    assert lease is not None
    now = lease.deadline - 1.0  # nine seconds into the lease
    assert job.extend(lease.id, 5.0, now=now) == 5.0
    assert await job.expire(now=lease.deadline - 0.01) == []
    assert lease.deadline == now + 5.0
    assert job.extend(lease.id, 1000.0, now=now) == 10.0  # capped
    assert job.extend(lease.id, None, now=now + 2) == 10.0  # the job's lease_timeout
    assert await job.expire(now=now + 11.9) == []
    assert job.extend(lease.id, 3.0, now=now + 12) is None  # past its deadline: expired
    assert job.extend("nope") is None
    assert await job.expire(now=now + 12) == [owner]
    assert job.extend(lease.id) is None


# --- splitting and the byte cap -----------------------------------------------------------


async def test_a_requeued_batch_is_split_to_the_asking_batch_size(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    """A requeued batch of 100 is served 10 at a time to a connection that asks for 10,
    the rest at the head of the queue, in memory and in Redis alike."""
    job = await new_job(store, data_dir, batch_size=100)
    big, small = Owner(), Owner()
    lease = await job.lease(big, 100)
    assert lease is not None and len(lease.items) == 100
    assert job.release_items(lease.id, None) == (100, 0)
    pieces = []
    for _ in range(3):
        piece = await job.lease(small, 10)
        assert piece is not None
        pieces.append(sorted(piece.items))
    assert pieces == [list(range(k, k + 10)) for k in (0, 10, 20)]
    await job.flushed()
    assert memory_queue(job) == await redis_queue(job) == [list(range(30, 100))]
    rest = await job.lease(big, 100)  # the remainder next, whole, before the file
    assert rest is not None and sorted(rest.items) == list(range(30, 100))
    fresh = await job.lease(big, 100)
    assert fresh is not None and min(fresh.items) == 100
    await job.flushed()
    assert await redis_queue(job) == []


async def test_a_requeued_batch_is_split_to_a_byte_cap(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    """Each piece of a split batch fits the cap exactly as tight as it can; all are served."""
    job = await new_job(store, data_dir, batch_size=100)
    owner = Owner()
    lease = await job.lease(owner, 100)
    assert lease is not None
    original = items_of(lease)
    assert job.release_items(lease.id, None) == (100, 0)
    cap, served = 2048, []
    while job.queue:
        piece = await job.lease(owner, 100, max_bytes=cap)
        assert piece is not None
        items = items_of(piece)
        assert frame_size(job, piece.id, items) <= cap
        if job.queue:  # the next queued item would not have fitted
            after = job.queue[0][1][0]
            assert frame_size(job, piece.id, [*items, (after[0], after[1])]) > cap
        served += items
    assert served == original
    await job.flushed()
    assert await redis_queue(job) == []


async def test_fresh_batches_stop_before_the_item_that_would_overflow_the_cap(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    """Fresh records are taken until the next would overflow the frame; the job still ends
    with every id written once."""
    job = await new_job(store, data_dir, batch_size=100)
    owner, cap, sizes = Owner(), 1500, []
    while not job.done:
        lease = await job.lease(owner, 100, max_bytes=cap)
        if lease is None:
            break
        items = items_of(lease)
        assert frame_size(job, lease.id, items) <= cap
        run = job.ahead.runs[0] if job.ahead and job.ahead.runs else None
        if run is not None and run.error is None:  # the next item would not have fitted
            assert frame_size(job, lease.id, [*items, run.items[0]]) > cap
        sizes.append(len(items))
        await settled(job, lease.id, items, [])
    assert job.done and set(output_of(job)) == set(range(830))
    assert max(sizes) < 100 and min(sizes) >= 1


async def test_a_lone_item_over_the_cap_is_sent_alone(store: Store, data_dir: Path) -> None:
    """An item bigger than the cap comes in a batch of its own, queued or fresh."""
    write_lines(data_dir / "in.jsonl", [{"n": 0}, {"big": "x" * 5000}, {"n": 2}])
    job = await new_job(store, data_dir, batch_size=10)
    owner = Owner()
    first = await job.lease(owner, 10, max_bytes=1024)
    assert first is not None and sorted(first.items) == [0]
    big = await job.lease(owner, 10, max_bytes=1024)
    assert big is not None and sorted(big.items) == [1]
    assert frame_size(job, big.id, items_of(big)) > 1024
    assert pair_size(1, {"big": "x" * 5000}) > 5000
    assert job.release_items(big.id, None) == (1, 0)
    again = await job.lease(owner, 10, max_bytes=1024)
    assert again is not None and sorted(again.items) == [1]
    rest = await job.lease(owner, 10, max_bytes=1024)
    assert rest is not None and sorted(rest.items) == [2]


# --- through the dispatcher ----------------------------------------------------------------


async def test_release_and_extend_revive_a_stalled_worker(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    """A worker whose lease expired is fed again once it releases or extends anything."""
    peer = Peer(dispatcher)
    await peer.start()
    await peer.credit(1)
    job = dispatcher.jobs["j"]
    for request in (lambda lease: Release(id=1, job="j", lease=lease),
                    lambda lease: Extend(id=2, job="j", lease=lease, seconds=1.0)):
        lost = await peer.next_batch()
        assert await job.expire(now=job.leases[lost.lease].deadline)
        assert await peer.quiet() == []  # stalled: fed nothing
        data = await peer.request(request(lost.lease))
        assert data in ({"lease": lost.lease, "released": 0, "dropped": 0},
                        {"lease": lost.lease, "held": False, "lease_timeout": None})
        again = await peer.next_batch()  # the requeued batch, to the revived worker
        assert ids_of(again) == ids_of(lost)
        await peer.settle(again)


async def test_release_and_extend_replies(dispatcher: Dispatcher, issues_input: Path) -> None:
    """The replies name the lease and what was done, as docs/protocol.md shows them."""
    peer, other = Peer(dispatcher), Peer(dispatcher)
    await peer.start(lease_timeout=60.0)
    await peer.credit(1)
    batch = await peer.next_batch()
    assert await peer.request(Extend(id=3, job="j", lease=batch.lease, seconds=30)) == {
        "lease": batch.lease, "held": True, "lease_timeout": 30.0}
    assert await peer.request(Extend(id=4, job="j", lease=batch.lease)) == {
        "lease": batch.lease, "held": True, "lease_timeout": 60.0}
    await peer.credit(0)  # or the pump would take the released items straight back
    data = await other.request(Release(id=5, job="j", lease=batch.lease, ids=[0, 1, 77]))
    assert data == {"lease": batch.lease, "released": 2, "dropped": 1}
    assert await peer.request(Release(id=6, job="j", lease=batch.lease)) == {
        "lease": batch.lease, "released": 8, "dropped": 0}
    assert dispatcher.jobs["j"].queued == 10 and dispatcher.jobs["j"].leases == {}


# --- over a real socket, and the Python clients -------------------------------------------------


async def test_frames_never_exceed_the_cap_and_the_output_is_exact(
    server: Any, issues_input: Path, data_dir: Path
) -> None:
    """A credit with max_batch_bytes gets batch frames no bigger than the cap, counted in
    bytes as received, and the job still writes every id exactly once."""
    url, cap = f"ws://127.0.0.1:{server.port}", 1024
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "hello", "protocol": 1}))
        await ws.recv()
        await ws.send(orjson.dumps({"type": "start_job", "id": 1, "job": "c", "batch_size": 100,
                                    "reader": "JsonlReader", "writer": "JsonlWriter",
                                    "metadata": META}))
        await ws.send(orjson.dumps({"type": "credit", "job": "c", "batches": 2,
                                    "max_batch_bytes": cap}))
        sizes = []
        while True:
            frame = await asyncio.wait_for(ws.recv(decode=False), WAIT)
            msg = orjson.loads(frame)
            if msg["type"] == "batch":
                sizes.append(len(frame))
                await ws.send(orjson.dumps({"type": "result", "job": "c", "lease": msg["lease"],
                                            "items": msg["items"]}))
            elif msg["type"] == "event" and msg["event"] == "done":
                break
    assert max(sizes) <= cap and len(sizes) > 20  # 9 batches of 100 without the cap
    lines = (data_dir / "out.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == list(range(830))


async def test_the_async_client_releases_extends_and_caps(
    server: Any, issues_input: Path, data_dir: Path
) -> None:
    """AsyncPlanchetClient: batches(max_batch_bytes=...), extend and release of a lease."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("a", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=100, lease_timeout=60.0)
        released = 0
        async for batch in client.batches("a", prefetch=1, max_batch_bytes=2048):
            assert len(encode(Batch(job="a", lease=batch.lease, items=batch.items,
                                    lease_timeout=batch.lease_timeout))) <= 2048
            if not released:
                assert await client.extend("a", batch.lease, 5) == {
                    "lease": batch.lease, "held": True, "lease_timeout": 5.0}
                reply = await client.release("a", batch.lease, [batch.items[0][0]])
                released = reply["released"]
                assert reply == {"lease": batch.lease, "released": 1, "dropped": 0}
                await batch.ack(batch.items[1:])
                continue
            await batch.ack(batch.items)
        assert (await client.report("a"))["state"] == "done"
    lines = (data_dir / "out.jsonl").read_bytes().splitlines()
    assert sorted(orjson.loads(line)["id"] for line in lines) == list(range(830))


def test_the_blocking_client_releases_and_extends(serve_url: str, issues_input: Path) -> None:
    """PlanchetClient: a released batch comes back to the next get, and extend answers."""
    with PlanchetClient(serve_url) as client:
        client.start_job("b", META, "JsonlReader", writer_name="JsonlWriter", batch_size=10)
        first = client.get("b", 10)
        lease = client._leases["b"][first[0][0]][0]
        assert client.extend("b", lease)["held"] is True
        assert client.release("b", lease) == {"lease": lease, "released": 10, "dropped": 0}
        assert client.extend("b", lease) == {"lease": lease, "held": False, "lease_timeout": None}
        assert client.get("b", 10) == first  # the released items, served again
