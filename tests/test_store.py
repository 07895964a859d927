"""The Redis layer on a real redis-server: keys, atomic moves, prefixes, restarts."""

from __future__ import annotations

import pytest
import redis.asyncio

from planchet.embedded import RedisProcess
from planchet.exceptions import Unavailable
from planchet.store import Change, Span, Store, pack, unpack

FILES = ["/data/out.jsonl", "/data/out.jsonl.errors.jsonl"]


async def test_pack_and_unpack_are_inverse() -> None:
    items = [(0, {"text": "é", "n": [1, None]}, 0), (5, "x", 3)]
    assert unpack(pack(items)) == items


async def test_ping(store: Store, redis_proc: RedisProcess) -> None:
    assert await store.ping() is True
    redis_proc.kill()
    assert await store.ping() is False


async def test_create_read_and_delete_a_job(store: Store) -> None:
    assert await store.job_names() == []
    await store.create_job("j", {"spec": "{}", "state": "running", "next_id": 0}, FILES)
    await store.create_job("a", {"spec": "{}"}, ["/data/a"])
    assert await store.job_names() == ["a", "j"]
    assert await store.read_job("j") == {"spec": "{}", "state": "running", "next_id": "0"}
    assert [await store.owner_of(p) for p in FILES] == ["j", "j"]
    assert await store.owner_of("/data/nobody") is None

    await store.update_job("j", {"state": "paused", "written": 3})
    assert (await store.read_job("j"))["state"] == "paused"

    await store.delete_job("j", FILES)
    assert await store.job_names() == ["a"]
    assert await store.read_job("j") == {}
    assert [await store.owner_of(p) for p in FILES] == [None, None]
    assert await store.owner_of("/data/a") == "a"


def leased(lease_id: str, *items: tuple) -> Change:
    return Change(leases={lease_id: pack(list(items))})


def queued(*items: tuple) -> Change:
    return Change(queue=[pack(list(items))])


async def test_create_job_wipes_every_trace_of_an_old_one(
    store: Store, redis_client: redis.asyncio.Redis
) -> None:
    """A job created again over an old one's name keeps nothing of it."""
    await store.create_job("j", {"spec": "old", "written": 9}, FILES)
    await store.commit("j", Change(leases={"l1": pack([(1, "a", 0)])},
                                   queue=[pack([(2, "b", 1)])], settled_ids=[3]))
    await store.create_job("j", {"spec": "new"}, FILES)
    assert await store.read_job("j") == {"spec": "new"}
    assert await store.requeue_all_leases("j") == []
    assert await store.new_ids("j", [3]) == [True]
    keys = {k.decode() for k in await redis_client.keys("*")}
    assert keys == {"planchet:jobs", "planchet:outputs", "planchet:job:j"}


async def test_delete_job_leaves_no_keys(store: Store, redis_client: redis.asyncio.Redis) -> None:
    """Deleting a job removes its hash, leases, queue and settled ids."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(leases={"l1": pack([(1, "a", 0)])},
                                   queue=[pack([(2, "b", 1)])], settled_ids=[3]))
    await store.delete_job("j", FILES)
    assert await redis_client.keys("*") == []


async def test_commit_moves_items_in_one_step(store: Store) -> None:
    """One commit sets the counters, writes and drops leases and pushes to the queue."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(fields={"next_id": 3, "offset": 30},
                                   leases={"l1": pack([(0, "a", 0), (1, "b", 0), (2, "c", 0)])}))
    # settle item 0, fail item 1 back to the queue, keep item 2 leased
    await store.commit("j", Change(fields={"written": 1}, leases={"l1": pack([(2, "c", 0)])},
                                   queue=[pack([(1, "b", 1)])]))
    fields = await store.read_job("j")
    assert (fields["next_id"], fields["offset"], fields["written"]) == ("3", "30", "1")
    # the lease comes back on reopen, after what was queued
    assert await store.requeue_all_leases("j") == [[(1, "b", 1)], [(2, "c", 0)]]


async def test_the_queue_changes_in_the_order_the_steps_made_them(store: Store) -> None:
    """Pops (None) and pushes interleave as they happened: a batch pushed and popped in
    one commit is gone, what was queued before is popped first."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(queue=[pack([(0, "a", 1)]), pack([(1, "b", 1)])]))
    await store.commit("j", Change(queue=[None, pack([(2, "c", 1)]), None, None,
                                          pack([(3, "d", 1)])],
                                   leases={"l1": pack([(0, "a", 1)]), "l2": None}))
    assert await store.requeue_all_leases("j") == [[(3, "d", 1)], [(0, "a", 1)]]


async def test_leases_kept_as_spans_are_queued_as_the_items_read_again(store: Store) -> None:
    """A span names where a lease's records are; requeueing asks for its items, in
    the leases' order, and queues them in one step with the rest."""
    span = Span((10, 400), (13, 520), 2)
    assert Span.unpack(span.pack()) == span and Span.unpack(pack([(0, "a", 0)])) is None
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(leases={"l1": span.pack(), "l2": pack([(0, "a", 2)])}))
    with pytest.raises(ValueError, match="spans"):
        await store.requeue_all_leases("j")
    asked = []

    async def reread(blobs: list[bytes]) -> list[bytes]:
        asked.extend(blobs)
        return [pack([(10, "k", 0), (12, "m", 0)]) if Span.unpack(b) else b for b in blobs]

    assert await store.requeue_all_leases("j", reread) == [
        [(10, "k", 0), (12, "m", 0)], [(0, "a", 2)]]
    assert asked == [span.pack(), pack([(0, "a", 2)])]
    assert await store.requeue_all_leases("j") == [[(10, "k", 0), (12, "m", 0)], [(0, "a", 2)]]


async def test_a_lease_written_and_dropped_in_one_commit_is_gone(store: Store) -> None:
    """The last word on a lease within a commit is the one Redis keeps."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(leases={"l1": None}))
    assert await store.requeue_all_leases("j") == []


async def test_nothing_is_lost_in_a_redis_restart(store: Store, redis_proc: RedisProcess) -> None:
    """A pooled socket from before the restart fails once, loudly; then all is back."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", queued((1, "a", 0)))
    redis_proc.kill()
    redis_proc.start()  # same port, same append-only file
    try:
        queue = await store.requeue_all_leases("j")
    except Unavailable:  # the stale socket; the command never reached Redis
        queue = await store.requeue_all_leases("j")
    assert queue == [[(1, "a", 0)]]


async def test_new_ids_remembers_settled_ids(store: Store) -> None:
    """A write-only job's settled ids are remembered, so each settles once."""
    await store.create_job("w", {"spec": "s"}, FILES)
    assert await store.new_ids("w", []) == []
    assert await store.new_ids("w", [1, 2, 3]) == [True, True, True]
    await store.commit("w", Change(settled_ids=[1, 3]))
    assert await store.new_ids("w", [1, 2, 3, 4]) == [False, True, False, True]


async def test_prefixes_keep_stores_apart(redis_url: str) -> None:
    """Two stores with different key prefixes share a Redis without seeing each other."""
    one, two = Store.from_url(redis_url), Store.from_url(redis_url, prefix="other:")
    try:
        await one.create_job("j", {"spec": "1"}, FILES)
        await two.create_job("j", {"spec": "2"}, FILES)
        await two.commit("j", queued((1, "x", 0)))
        assert await one.read_job("j") == {"spec": "1"}
        assert await two.read_job("j") == {"spec": "2"}
        assert await one.requeue_all_leases("j") == []
        assert await one.owner_of(FILES[0]) == await two.owner_of(FILES[0]) == "j"
        await one.delete_job("j", FILES)
        assert await two.job_names() == ["j"]
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("step", ["commit", "requeue_all_leases", "read_job"])
async def test_a_dead_redis_raises_unavailable(
    store: Store, redis_proc: RedisProcess, step: str
) -> None:
    """The store does not hide failures: it names them, and the job layer breaks the job."""
    await store.create_job("j", {"spec": "s"}, FILES)
    redis_proc.kill()
    calls = {
        "commit": lambda: store.commit("j", Change(fields={"written": 1})),
        "requeue_all_leases": lambda: store.requeue_all_leases("j"),
        "read_job": lambda: store.read_job("j"),
    }
    with pytest.raises(Unavailable) as caught:
        await calls[step]()
    assert isinstance(caught.value.__cause__, redis.RedisError)


async def test_a_lease_born_and_ended_in_one_group_never_reaches_redis(store: Store) -> None:
    """A group that creates a lease and drops it again writes nothing of it: Redis is as
    if the lease never was, while a lease from an earlier group is deleted."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.commit("j", Change(leases={"old": pack([(1, "a", 0)])}))
    change = Change()
    change.hold("new", pack([(2, "b", 0)]), new=True)
    change.hold("kept", pack([(3, "c", 0)]), new=True)
    change.end("new")
    change.end("old")
    assert change.leases == {"kept": pack([(3, "c", 0)]), "old": None}
    await store.commit("j", change)
    assert await store.redis.hkeys("planchet:job:j:leases") == [b"kept"]


async def test_a_lease_packed_late_is_packed_as_its_group_left_it(store: Store) -> None:
    """A fresh lease is packed when its group is sealed, not when it is leased nor when
    Redis is written: a later group's step (a settle while this group's file append is
    under way) must not leak into this group's commit."""
    await store.create_job("j", {"spec": "s"}, FILES)
    items = {1: ("a", 0), 2: ("b", 0)}
    change = Change()
    change.hold("l", lambda: pack([(i, x, n) for i, (x, n) in items.items()]), new=True)
    items[3] = ("c", 0)  # a step of the same group: it counts
    change.seal()
    del items[1]  # a step of the next group: it does not
    await store.commit("j", change)
    assert unpack(await store.redis.hget("planchet:job:j:leases", "l")) == [
        (1, "a", 0), (2, "b", 0), (3, "c", 0)]


async def test_a_change_not_sealed_is_refused_and_writes_nothing(store: Store) -> None:
    """Packing at commit time could take in a later group's steps: a lease still left to
    pack is a bug of the caller, refused loudly, with nothing written."""
    await store.create_job("j", {"spec": "s"}, FILES)
    change = Change(fields={"written": 5})
    change.hold("l", lambda: pack([(1, "a", 0)]), new=True)
    with pytest.raises(ValueError, match="unsealed"):
        await store.commit("j", change)
    assert await store.redis.hkeys("planchet:job:j:leases") == []
    assert await store.redis.hget("planchet:job:j", "written") is None
