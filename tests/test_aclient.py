"""The asyncio client against a real server and Redis, in one event loop."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import TypeVar

import orjson
import pytest

from planchet import AsyncPlanchetClient, BadRequest, ConnectionLost, JobNotFound, PlanchetClient
from planchet.embedded import free_port
from planchet.messages import ItemError
from planchet.progress import Progress

T = TypeVar("T")
META = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


def output_ids(data_dir: Path) -> list[int]:
    lines = (data_dir / "out.jsonl").read_bytes().splitlines()
    return sorted(orjson.loads(line)["id"] for line in lines)


async def wait_until_async(fetch, ok, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    """The async twin of tests.support.wait_until: poll ``fetch()`` until ``ok`` holds."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not ok(value := await fetch()):
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.05)
    return value


async def consume(client: AsyncPlanchetClient, job: str, prefetch: int = 2) -> int:
    count = 0
    async for batch in client.batches(job, prefetch=prefetch):
        ack = await batch.ack([(i, {"len": len(str(item))}) for i, item in batch.items])
        count += ack.written
    return count


async def test_push_consumers_share_a_job(server, issues_input, data_dir) -> None:
    """Two push consumers share a job and every id is written once."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as a, AsyncPlanchetClient(url) as b:
        await a.start_job("push", META, "JsonlReader", writer_name="JsonlWriter", batch_size=25)
        counts = await asyncio.gather(consume(a, "push"), consume(b, "push", prefetch=1))
        assert sum(counts) == 830
        assert (await a.report("push"))["state"] == "done"
    assert output_ids(data_dir) == list(range(830))


async def test_credit_bounds_what_a_slow_consumer_holds(server, issues_input) -> None:
    """A consumer never holds more batches than its prefetch."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("slow", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=10)
        seen = []
        async for batch in client.batches("slow", prefetch=3):
            seen.append(batch)
            if len(seen) == 3:
                break
        # three batches of ten are out; however long we wait for more, none comes
        await wait_until_async(lambda: client.report("slow"), lambda r: r["in_flight"] >= 30,
                               "thirty items in flight")
        for _ in range(5):  # a few more round trips: each gives the server a chance to overpush
            assert (await client.report("slow"))["in_flight"] == 30


async def test_partial_acks_and_errors(server, issues_input, data_dir) -> None:
    """A batch can be acked in parts, with errors, and a duplicate is dropped."""
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
    """Consuming a job that does not exist raises JobNotFound."""
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        with pytest.raises(JobNotFound):
            async for _ in client.batches("missing"):
                pass


async def test_reconnects_after_server_restart(make_server, issues_input, data_dir) -> None:
    """A consumer rides out a graceful server restart and the job finishes exactly once."""
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
    """Deleting a job under a consumer ends its batches with JobNotFound."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as worker, AsyncPlanchetClient(url) as admin:
        await worker.start_job("gone", META, "JsonlReader", writer_name="JsonlWriter")
        with pytest.raises(JobNotFound, match="deleted"):
            async for _ in worker.batches("gone", prefetch=1):
                await admin.delete("gone")


async def test_concurrent_acks_of_one_lease_each_get_their_answer(
    server, issues_input, data_dir
) -> None:
    """Concurrent partial acks of one lease each get their own answer."""
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.start_job("many", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=100)
        async for batch in client.batches("many", prefetch=2):
            halves = batch.items[::2], batch.items[1::2]
            acks = await asyncio.gather(*(batch.ack(half) for half in halves))
            assert [a.written for a in acks] == [len(h) for h in halves]
    assert output_ids(data_dir) == list(range(830))


async def test_results_sent_without_waiting_are_each_written_once(
    server, issues_input, data_dir
) -> None:
    """A consumer that never waits for acks gets the job done, each id written once,
    and its progress still counts every ack the server sent."""
    seen: list[Progress] = []
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.start_job("nowait", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=30)
        async for batch in client.batches("nowait", prefetch=3, progress=seen.append):
            batch.ack_nowait([(i, {"len": len(str(item))}) for i, item in batch.items])
        assert (await client.report("nowait"))["state"] == "done"
    assert output_ids(data_dir) == list(range(830))
    assert seen[-1].final and seen[-1].done == 830


async def written_ids(data_dir: Path) -> list[int]:
    return output_ids(data_dir) if (data_dir / "out.jsonl").exists() else []


async def test_results_sent_without_waiting_leave_at_once(server, issues_input, data_dir) -> None:
    """ack_nowait writes the results then and there, before the caller awaits anything:
    nothing is left queued, and they are written while the consumer is busy elsewhere."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("now", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=40)
        async for batch in client.batches("now", prefetch=1):
            batch.ack_nowait(batch.items)
            assert client._session.outbox == []  # handed to the socket, not to a later flush
            assert await wait_until_async(lambda: written_ids(data_dir), lambda ids: len(ids) >= 40,
                                          "the 40 results written") == list(range(40))
            break


async def test_closing_sends_the_results_not_yet_sent(server, issues_input, data_dir) -> None:
    """Results queued with ack_nowait while a flush is under way wait for it, and leave
    before the client closes: they are written, not served again."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("last", META, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=40)
        async for batch in client.batches("last", prefetch=1):
            async with client._sending:  # a flush under way: these must queue behind it
                batch.ack_nowait(batch.items)
            break  # and close at once
    async def written() -> list[int]:
        return output_ids(data_dir) if (data_dir / "out.jsonl").exists() else []

    assert await wait_until_async(written, lambda ids: len(ids) >= 40,
                                  "the 40 results written") == list(range(40))


async def test_unsendable_results_raise_at_once(server, issues_input) -> None:
    """ack_nowait refuses results that are not JSON right away, as ack does, and results
    for no lease (a write-only job's), whose ack only the caller can act on."""
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.start_job("bad", META, "JsonlReader", writer_name="JsonlWriter")
        async for batch in client.batches("bad", prefetch=1):
            with pytest.raises(BadRequest, match="JSON"):
                batch.ack_nowait([(batch.items[0][0], {1, 2})])
            with pytest.raises(BadRequest, match="no lease"):
                client.send_results_nowait("bad", None, [(0, 1)])
            break


async def aenumerate(items: AsyncIterator[T]) -> AsyncIterator[tuple[int, T]]:
    n = 0
    async for item in items:
        yield n, item
        n += 1


class Crash(Exception):
    pass


async def test_the_server_charges_a_crash_in_with_and_not_a_clean_exit(server,
                                                                       issues_input) -> None:
    """With max_attempts=1, leaving `with` cleanly gives the held batch back free, and
    leaving it by an exception (close code 1011) fails that batch, for both clients."""
    url = f"ws://127.0.0.1:{server.port}"

    def blocking(crash: bool) -> None:
        with PlanchetClient(url) as client:
            client.get("c", 10)
            if crash:
                raise Crash

    async def pushed(crash: bool) -> None:
        async with AsyncPlanchetClient(url) as client:
            async for _ in client.batches("c", prefetch=1):
                if crash:
                    raise Crash
                break

    async with AsyncPlanchetClient(url) as admin:
        await admin.start_job("c", META, "JsonlReader", writer_name="JsonlWriter",
                              batch_size=10, max_attempts=1)

        async def report_when(ok, what: str):  # type: ignore[no-untyped-def]
            return await wait_until_async(lambda: admin.report("c"), ok, what)

        await asyncio.to_thread(blocking, False)
        await pushed(False)
        report = await report_when(lambda r: r["in_flight"] == 0, "a free requeue")
        assert report["failed"] == 0
        with pytest.raises(Crash):
            await asyncio.to_thread(blocking, True)
        await report_when(lambda r: r["failed"] == 10, "the first crash charged")
        with pytest.raises(Crash):
            await pushed(True)
        await report_when(lambda r: r["failed"] == 20, "the second crash charged")


@pytest.mark.parametrize("nowait", [False, True], ids=["ack", "ack_nowait"])
async def test_a_worker_survives_kill_and_restart(serve_process, issues_input,
                                                  data_dir, nowait: bool) -> None:
    """A server killed with -9 and restarted mid-job: the worker reconnects, its acks in
    flight are answered (not awaited for ever), and every id is written once; a worker
    that never waits for acks has results of several batches in flight at the kill."""

    async def work() -> None:
        async with AsyncPlanchetClient(serve_process.url, retries=20) as client:
            await client.start_job("k", META, "JsonlReader", writer_name="JsonlWriter",
                                   batch_size=25)
            kill_at = 3 if nowait else 0  # batches acked before the kill
            async for n, batch in aenumerate(client.batches("k", prefetch=2)):
                if n == kill_at:  # blocks this loop on purpose: it cannot see the drop
                    serve_process.kill()
                    serve_process.start()
                if nowait:
                    batch.ack_nowait(batch.items)
                else:
                    await batch.ack(batch.items)

    await asyncio.wait_for(work(), 90)  # a hang fails here, before the suite's timeout
    assert output_ids(data_dir) == list(range(830))


async def test_a_message_the_session_cannot_file_costs_the_waiters_and_the_connection(
    server, caplog
) -> None:
    """A bug while filing a message (in the protocol callback) answers what waited with
    ConnectionLost and drops that connection; the client connects again and goes on."""
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        first_ws = client._ws
        filed = client._session.receive

        def broken(frame: bytes | str) -> None:
            client._session.receive = filed  # once
            raise RuntimeError("a bug")

        client._session.receive = broken  # type: ignore[method-assign]
        with pytest.raises(ConnectionLost, match="a bug"):
            await client.jobs()
        assert await client.jobs() == []  # on a new connection
        assert client._ws is not first_ws
    assert "could not file a message" in caplog.text
