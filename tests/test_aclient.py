"""The asyncio client against a real server and Redis, in one event loop."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest

from planchet import AsyncPlanchetClient, JobNotFound
from planchet.embedded import free_port
from planchet.messages import ItemError

META = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


def output_ids(data_dir: Path) -> list[int]:
    lines = (data_dir / "out.jsonl").read_bytes().splitlines()
    return sorted(orjson.loads(line)["id"] for line in lines)


async def consume(client: AsyncPlanchetClient, job: str, prefetch: int = 2) -> int:
    count = 0
    async for batch in client.batches(job, prefetch=prefetch):
        ack = await batch.ack([(i, {"len": len(str(item))}) for i, item in batch.items])
        count += ack.written
    return count


async def test_push_consumers_share_a_job(server, issues_input, data_dir) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as a, AsyncPlanchetClient(url) as b:
        await a.start_job("push", META, "JsonlReader", writer_name="JsonlWriter", batch_size=25)
        counts = await asyncio.gather(consume(a, "push"), consume(b, "push", prefetch=1))
        assert sum(counts) == 830
        assert (await a.report("push"))["state"] == "done"
    assert output_ids(data_dir) == list(range(830))


async def test_credit_bounds_what_a_slow_consumer_holds(server, issues_input) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("slow", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=10)
        seen = []
        async for batch in client.batches("slow", prefetch=3):
            seen.append(batch)
            if len(seen) == 3:
                break
        await asyncio.sleep(0.2)  # give the server every chance to push too much
        report = await client.report("slow")
        assert report["in_flight"] == 30  # three batches of ten, no more


async def test_partial_acks_and_errors(server, issues_input, data_dir) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("part", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=100, max_attempts=1)
        async for batch in client.batches("part", prefetch=1):
            half = len(batch.items) // 2
            first = await batch.ack(batch.items[:half])
            rest = batch.items[half:]
            second = await batch.ack(rest[1:], [ItemError(id=rest[0][0], message="bad")])
            again = await batch.ack(batch.items[:1])  # a duplicate: dropped
            assert (first.written + second.written, second.failed, again.dropped) == (
                len(batch.items) - 1, 1, 1)
    errors = (data_dir / "out.jsonl.errors.jsonl").read_bytes().splitlines()
    assert len(errors) == 9 and len(output_ids(data_dir)) == 821


async def test_unknown_job_raises(server) -> None:
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        with pytest.raises(JobNotFound):
            async for _ in client.batches("missing"):
                pass


async def test_reconnects_after_server_restart(make_server, issues_input, data_dir) -> None:
    port = free_port()
    first = await make_server(port=port)
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{port}", retries=20) as client:
        await client.start_job("re", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=50)
        restarted = False
        async for batch in client.batches("re", prefetch=2):
            if not restarted:
                await first.stop()  # the server goes away holding our leases...
                await make_server(port=port)  # ...and comes back: we reconnect
                restarted = True
            await batch.ack(batch.items)
    assert output_ids(data_dir) == list(range(830))


async def test_a_deleted_job_ends_batches_with_an_error(server, issues_input) -> None:
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as worker, AsyncPlanchetClient(url) as admin:
        await worker.start_job("gone", META, "JsonlReader", writer_name="JsonlWriter")
        with pytest.raises(JobNotFound, match="deleted"):
            async for _ in worker.batches("gone", prefetch=1):
                await admin.delete("gone")


async def test_concurrent_acks_of_one_lease_each_get_their_answer(
    server, issues_input, data_dir
) -> None:
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.start_job("many", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=100)
        async for batch in client.batches("many", prefetch=2):
            halves = batch.items[::2], batch.items[1::2]
            acks = await asyncio.gather(*(batch.ack(half) for half in halves))
            assert [a.written for a in acks] == [len(h) for h in halves]
    assert output_ids(data_dir) == list(range(830))
