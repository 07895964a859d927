"""The Redis layer on a real redis-server: keys, atomic moves, prefixes, restarts."""

from __future__ import annotations

import pytest
import redis.asyncio

from planchet.embedded import RedisProcess
from planchet.exceptions import Unavailable
from planchet.store import Change, Store, pack, unpack

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


async def test_create_job_wipes_every_trace_of_an_old_one(
    store: Store, redis_client: redis.asyncio.Redis
) -> None:
    await store.create_job("j", {"spec": "old", "written": 9}, FILES)
    await store.apply("j", Change(put_lease=("l1", pack([(1, "a", 0)])),
                                  requeue=[(2, "b", 1)], settled_ids=[3]))
    await store.create_job("j", {"spec": "new"}, FILES)
    assert await store.read_job("j") == {"spec": "new"}
    assert await store.requeue_all_leases("j") == []
    assert await store.new_ids("j", [3]) == [True]
    keys = {k.decode() for k in await redis_client.keys("*")}
    assert keys == {"planchet:jobs", "planchet:outputs", "planchet:job:j"}


async def test_delete_job_leaves_no_keys(store: Store, redis_client: redis.asyncio.Redis) -> None:
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.apply("j", Change(put_lease=("l1", pack([(1, "a", 0)])),
                                  requeue=[(2, "b", 1)], settled_ids=[3]))
    await store.delete_job("j", FILES)
    assert await redis_client.keys("*") == []


async def test_apply_moves_items_in_one_step(store: Store) -> None:
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.apply("j", Change(fields={"next_id": 3, "offset": 30},
                                  put_lease=("l1", pack([(0, "a", 0), (1, "b", 0), (2, "c", 0)]))))
    # settle item 0, fail item 1 back to the queue, keep item 2 leased
    await store.apply("j", Change(fields={"written": 1},
                                  put_lease=("l1", pack([(2, "c", 0)])),
                                  requeue=[(1, "b", 1)]))
    fields = await store.read_job("j")
    assert (fields["next_id"], fields["offset"], fields["written"]) == ("3", "30", "1")
    assert await store.take_queued("j", "l2") == [(1, "b", 1)]
    assert await store.take_queued("j", "l3") is None
    # the two leases come back on reopen, in one batch each
    assert sorted(await store.requeue_all_leases("j")) == [[(1, "b", 1)], [(2, "c", 0)]]

    await store.apply("j", Change(drop_lease="l1"))
    assert await store.requeue_all_leases("j") == [[(2, "c", 0)], [(1, "b", 1)]]


async def test_take_queued_is_fifo_and_leases_what_it_pops(store: Store) -> None:
    await store.create_job("j", {"spec": "s"}, FILES)
    for n in range(3):
        await store.apply("j", Change(requeue=[(n, f"item{n}", 1)]))
    assert await store.take_queued("j", "first") == [(0, "item0", 1)]
    assert await store.take_queued("j", "second") == [(1, "item1", 1)]
    # what was taken is leased under the given ids, the rest is still queued
    queue = await store.requeue_all_leases("j")
    assert sorted(queue) == [[(0, "item0", 1)], [(1, "item1", 1)], [(2, "item2", 1)]]


async def test_take_queued_survives_a_flushed_script_cache(
    store: Store, redis_client: redis.asyncio.Redis
) -> None:
    """A restarted Redis has forgotten the Lua script: it must be loaded again, silently."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.apply("j", Change(requeue=[(1, "a", 0)]))
    await store.apply("j", Change(requeue=[(2, "b", 0)]))
    assert await store.take_queued("j", "l1") == [(1, "a", 0)]
    await redis_client.script_flush()
    assert await store.take_queued("j", "l2") == [(2, "b", 0)]


async def test_nothing_is_lost_in_a_redis_restart(store: Store, redis_proc: RedisProcess) -> None:
    """A pooled socket from before the restart fails once, loudly; then all is back."""
    await store.create_job("j", {"spec": "s"}, FILES)
    await store.apply("j", Change(requeue=[(1, "a", 0)]))
    redis_proc.kill()
    redis_proc.start()  # same port, same append-only file
    try:
        taken = await store.take_queued("j", "l1")
    except Unavailable:  # the stale socket; the command never reached Redis
        taken = await store.take_queued("j", "l1")
    assert taken == [(1, "a", 0)]
    assert await store.requeue_all_leases("j") == [[(1, "a", 0)]]


async def test_new_ids_remembers_settled_ids(store: Store) -> None:
    await store.create_job("w", {"spec": "s"}, FILES)
    assert await store.new_ids("w", []) == []
    assert await store.new_ids("w", [1, 2, 3]) == [True, True, True]
    await store.apply("w", Change(settled_ids=[1, 3]))
    assert await store.new_ids("w", [1, 2, 3, 4]) == [False, True, False, True]


async def test_prefixes_keep_stores_apart(redis_url: str) -> None:
    one, two = Store.from_url(redis_url), Store.from_url(redis_url, prefix="other:")
    try:
        await one.create_job("j", {"spec": "1"}, FILES)
        await two.create_job("j", {"spec": "2"}, FILES)
        await two.apply("j", Change(requeue=[(1, "x", 0)]))
        assert await one.read_job("j") == {"spec": "1"}
        assert await two.read_job("j") == {"spec": "2"}
        assert await one.take_queued("j", "l") is None
        assert await one.owner_of(FILES[0]) == await two.owner_of(FILES[0]) == "j"
        await one.delete_job("j", FILES)
        assert await two.job_names() == ["j"]
    finally:
        await one.close()
        await two.close()


@pytest.mark.parametrize("step", ["apply", "take_queued", "read_job"])
async def test_a_dead_redis_raises_unavailable(
    store: Store, redis_proc: RedisProcess, step: str
) -> None:
    """The store does not hide failures: it names them, and the job layer breaks the job."""
    await store.create_job("j", {"spec": "s"}, FILES)
    redis_proc.kill()
    calls = {
        "apply": lambda: store.apply("j", Change(fields={"written": 1})),
        "take_queued": lambda: store.take_queued("j", "l"),
        "read_job": lambda: store.read_job("j"),
    }
    with pytest.raises(Unavailable) as caught:
        await calls[step]()
    assert isinstance(caught.value.__cause__, redis.RedisError)
