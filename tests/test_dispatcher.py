"""Sessions, credit, tokens and job administration, without a socket.

A session's ``send`` here just files each message in an inbox; the rest is the real
dispatcher on a real Redis.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import orjson
import pytest

from planchet.dispatcher import Dispatcher, Ending
from planchet.embedded import RedisProcess
from planchet.exceptions import (
    AuthError,
    BadRequest,
    FormatError,
    JobConflict,
    JobNotFound,
    PathRefused,
    PlanchetError,
    Unavailable,
)
from planchet.messages import (
    Ack,
    Batch,
    Credit,
    Event,
    Hello,
    Item,
    ItemError,
    JobCommand,
    Message,
    Reply,
    Result,
    ServerCommand,
    StartJob,
)
from planchet.state import DONE, Fault
from planchet.store import Store
from tests.conftest import MakeDispatcher
from tests.support import asleep, eventually

LINES = 830
WAIT = 20.0  # seconds: a bound on waiting for something that must happen, never a threshold

class Peer:
    """One session, seen from the client's side: an inbox of what the server sent it."""

    def __init__(self, dispatcher: Dispatcher, token: str | None = None) -> None:
        self.dispatcher = dispatcher
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        self.held: dict[str, list[Item]] = {}  # batches received and not settled yet
        self.max_held = 0
        self.overdrawn: list[Batch] = []  # batches pushed past the credit: a pump bug
        self.session = dispatcher.connect(self._send, Hello(protocol=1, token=token))

    async def _send(self, message: Message) -> None:
        if isinstance(message, Batch):
            sub = self.session.subscriptions[message.job]
            if len(sub.leases) > sub.credit:  # recorded, not raised: the pump would catch it
                self.overdrawn.append(message)
            self.held[message.lease] = list(message.items)
            self.max_held = max(self.max_held, len(self.held))
        self.inbox.put_nowait(message)

    async def request(self, message: Message) -> Any:
        """Handle one message; the ``data`` of its reply, if it has one."""
        reply = await self.dispatcher.handle(self.session, message)
        return reply.data if isinstance(reply, Reply) else reply

    async def start(self, job: str = "j", **fields: Any) -> dict[str, Any]:
        return await self.request(start_job(job, **fields))

    async def credit(self, batches: int, job: str = "j", **fields: Any) -> None:
        await self.request(Credit(job=job, batches=batches, **fields))

    async def command(self, kind: str, job: str = "j", token: str | None = None) -> Any:
        return await self.request(JobCommand(type=kind, id=1, job=job, token=token))  # type: ignore[arg-type]

    async def next(self) -> Message:
        return await asyncio.wait_for(self.inbox.get(), WAIT)

    async def next_batch(self) -> Batch:
        message = await self.next()
        assert isinstance(message, Batch), message
        return message

    async def settle(self, batch: Batch, items: list[Item] | None = None,
                     errors: list[ItemError] | None = None, token: str | None = None) -> Ack:
        ack = await self.request(Result(job=batch.job, lease=batch.lease,
                                        items=batch.items if items is None else items,
                                        errors=errors or [], token=token))
        assert isinstance(ack, Ack)
        self.held.pop(batch.lease, None)
        return ack

    async def work(self, job: str = "j") -> int:
        """Echo every batch until the job is done; tolerate a failing server. Items settled."""
        settled = 0
        while True:
            message = await self.next()
            if isinstance(message, Batch):
                try:
                    settled += (await self.settle(message)).written
                except PlanchetError:
                    self.held.pop(message.lease, None)  # a reopened job serves it again
            elif isinstance(message, Event) and message.event == "done" and message.job == job:
                return settled

    async def quiet(self, job: str = "j") -> list[Message]:
        """Wait until this session's pump on ``job`` sleeps, woken for nothing; what it sent.

        The positive event that proves the pump has had its chance to send more.
        """
        sub = self.session.subscriptions[job]
        await eventually(lambda: asleep(sub.task), f"the pump of {job} to sleep", WAIT)
        assert self.overdrawn == [], "pushed past the credit"
        return self.pending()

    def pending(self) -> list[Message]:
        messages = []
        while not self.inbox.empty():
            messages.append(self.inbox.get_nowait())
        return messages


def start_job(job: str = "j", **fields: Any) -> StartJob:
    base: dict[str, Any] = {
        "id": 1,
        "job": job,
        "reader": "JsonlReader",
        "writer": "JsonlWriter",
        "metadata": {"input_file_path": "in.jsonl", "output_file_path": f"{job}.out.jsonl"},
        "batch_size": 10,
    }
    base.update(fields)
    return StartJob(**base)


def output_ids(path: Path) -> list[int]:
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def error_ids(path: Path) -> list[int]:
    if not path.exists():
        return []
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()]


def ids_of(batch: Batch) -> set[int]:
    return {i for i, _ in batch.items}


# --- credit ------------------------------------------------------------------------------


async def test_credit_bounds_the_batches_in_flight(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    first, second = Peer(dispatcher), Peer(dispatcher)
    await first.start()
    await first.credit(3)
    batches = [await first.next_batch() for _ in range(3)]
    sub = first.session.subscriptions["j"]
    assert len(sub.leases) == 3
    assert await first.quiet() == []  # not a fourth

    await second.credit(1)  # the first holds all its credit: the second still gets work
    other = await second.next_batch()
    assert not ids_of(other) & set().union(*map(ids_of, batches))

    await first.settle(batches[0], batches[0].items[:5])  # half: the lease stays
    assert await first.quiet() == []
    await first.settle(batches[0])
    replacement = await first.next_batch()  # one out, one in
    assert await first.quiet() == []

    await first.credit(1)  # lowering credit lets the batches in flight drain
    for batch in (*batches[1:], replacement):
        await first.settle(batch)
    follow_up = await first.next_batch()
    assert await first.quiet() == []

    await first.credit(0)  # zero stops the flow
    await first.settle(follow_up)
    await second.settle(other)
    assert await first.quiet() == []
    assert first.max_held == 3


async def test_credit_drives_a_whole_job_with_two_sessions(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    a, b = Peer(dispatcher), Peer(dispatcher)
    await a.start(batch_size=25)
    await a.credit(4)
    await b.credit(2, batch_size=7)
    done_a, done_b = await asyncio.gather(a.work(), b.work())
    assert done_a + done_b == LINES
    assert done_a and done_b
    assert a.max_held <= 4 and b.max_held <= 2
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))


async def test_the_jobs_of_a_server_share_one_flusher(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    """Jobs served at once flush through the server's one ``Flusher`` (flushes that wait
    together share a thread hop and a transaction), and each writes every line once."""
    a, b = Peer(dispatcher), Peer(dispatcher)
    await a.start("a", batch_size=7)
    await b.start("b", batch_size=5)
    await a.credit(2, job="a")
    await b.credit(2, job="b")
    assert await asyncio.gather(a.work("a"), b.work("b")) == [LINES, LINES]
    assert dispatcher.admin.get("a").flusher is dispatcher.admin.get("b").flusher
    for job in ("a", "b"):
        assert sorted(output_ids(data_dir / f"{job}.out.jsonl")) == list(range(LINES))


async def test_credit_on_a_done_job_says_done(dispatcher: Dispatcher, data_dir: Path) -> None:
    (data_dir / "in.jsonl").write_bytes(b'{"a": 1}\n')
    peer = Peer(dispatcher)
    await peer.start()
    await peer.credit(1)
    await peer.work()
    late = Peer(dispatcher)
    await late.credit(5)
    assert await late.next() == Event(job="j", event="done")
    await peer.credit(1)  # asking again on the same connection gets the same answer
    assert await peer.next() == Event(job="j", event="done")


# --- disconnects -------------------------------------------------------------------------


async def test_disconnect_requeues_at_once_for_another_session(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    gone, other = Peer(dispatcher), Peer(dispatcher)
    await gone.start()
    await gone.credit(2)
    held = ids_of(await gone.next_batch()) | ids_of(await gone.next_batch())
    job = dispatcher.jobs["j"]

    await dispatcher.disconnect(gone.session)
    assert job.leases == {}
    assert job.queued == 20
    assert gone.session not in dispatcher.sessions

    await other.credit(1)
    first = await other.next_batch()
    await other.settle(first)
    second = await other.next_batch()
    assert ids_of(first) | ids_of(second) == held  # the queue comes before the file
    await other.settle(second)
    await other.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))
    assert gone.pending() == []


# --- tokens ------------------------------------------------------------------------------


async def test_job_tokens(make_dispatcher: MakeDispatcher, issues_input: Path) -> None:
    dispatcher = await make_dispatcher(token="master")
    creator = Peer(dispatcher, token="master")
    await creator.start(token="job-secret")

    stranger, wrong = Peer(dispatcher), Peer(dispatcher, token="guess")
    with pytest.raises(AuthError, match="needs its token"):
        await stranger.credit(1)
    with pytest.raises(AuthError, match="wrong token"):
        await wrong.credit(1)
    with pytest.raises(AuthError, match="wrong token"):
        await stranger.credit(1, token="guess")
    for kind in ("pause", "resume", "delete", "clean"):
        with pytest.raises(AuthError):
            await stranger.command(kind)
    with pytest.raises(AuthError):
        await stranger.request(Result(job="j", lease="x", items=[(0, "x")]))
    assert stranger.session.subscriptions == {}
    assert (await stranger.command("report"))["job"] == "j"  # reports are open to all

    by_message, by_hello, master = Peer(dispatcher), Peer(dispatcher, "job-secret"), creator
    await by_message.credit(1, token="job-secret")
    await by_hello.credit(1)
    await master.credit(1)
    batch = await by_message.next_batch()
    with pytest.raises(AuthError):
        await by_message.settle(batch)
    assert (await by_message.settle(batch, token="job-secret")).written == 10
    for peer in (by_hello, master):
        batch = await peer.next_batch()
        assert (await peer.settle(batch)).written == 10
    assert (await by_hello.command("pause"))["state"] == "paused"


async def test_a_job_without_a_token_is_open_to_all(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    await Peer(dispatcher).start()
    anyone = Peer(dispatcher, token="whatever")
    await anyone.credit(1)
    await anyone.settle(await anyone.next_batch())
    assert (await anyone.command("pause"))["state"] == "paused"


async def test_creating_a_job_needs_the_master_token_when_there_is_one(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    dispatcher = await make_dispatcher(token="master")
    with pytest.raises(AuthError, match="master token"):
        await Peer(dispatcher).start()
    with pytest.raises(AuthError, match="master token"):
        await Peer(dispatcher, token="not-master").start(token="job-secret")
    assert dispatcher.jobs == {} and await dispatcher.store.job_names() == []

    await Peer(dispatcher).start(token="master")
    assert list(dispatcher.jobs) == ["j"]
    # resuming is the job's business: its own token is enough
    assert (await Peer(dispatcher, token="master").start(batch_size=50))["job"] == "j"


async def test_server_commands_need_the_master_token(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    dispatcher = await make_dispatcher(token="master")
    await Peer(dispatcher, token="master").start()
    peer = Peer(dispatcher, token="j-token")
    for kind in ("jobs", "purge"):
        with pytest.raises(AuthError):
            await peer.request(ServerCommand(type=kind, id=1))  # type: ignore[arg-type]
    listed = await peer.request(ServerCommand(type="jobs", id=1, token="master"))
    assert [r["job"] for r in listed] == ["j"]


# --- starting jobs -----------------------------------------------------------------------


async def test_starting_the_same_spec_resumes(
    dispatcher: Dispatcher, issues_input: Path, store: Store
) -> None:
    peer = Peer(dispatcher)
    report = await peer.start()
    assert (report["state"], report["written"]) == ("running", 0)
    job = dispatcher.jobs["j"]
    await peer.credit(1)
    batch = await peer.next_batch()
    await peer.credit(0)
    await peer.settle(batch)

    report = await Peer(dispatcher).start(batch_size=20, lease_timeout=9.0, max_attempts=2)
    assert dispatcher.jobs["j"] is job
    assert (report["written"], report["read"]) == (10, 10)
    assert (job.spec.batch_size, job.spec.lease_timeout, job.spec.max_attempts) == (20, 9.0, 2)
    stored = orjson.loads((await store.read_job("j"))["spec"])
    assert stored["batch_size"] == 20


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"metadata": {"input_file_path": "in.jsonl", "output_file_path": "other.jsonl"}},
         "output_path"),
        ({"writer": "CsvWriter"}, "writer"),
        ({"mode": "read", "writer": None}, "mode"),
    ],
)
async def test_starting_another_spec_under_the_same_name_conflicts(
    dispatcher: Dispatcher, issues_input: Path, change: dict, named: str
) -> None:
    await Peer(dispatcher).start()
    job = dispatcher.jobs["j"]
    with pytest.raises(JobConflict, match=named):
        await Peer(dispatcher).start(**change)
    assert dispatcher.jobs["j"] is job and job.broken is None


async def test_clean_start_replaces_a_job(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start()
    old = dispatcher.jobs["j"]
    await peer.credit(1)
    await peer.settle(await peer.next_batch())
    await peer.next_batch()
    await old.flushed()
    assert (data_dir / "j.out.jsonl").stat().st_size > 0

    fresh = {"input_file_path": "in.jsonl", "output_file_path": "fresh.jsonl"}
    report = await Peer(dispatcher).start(metadata=fresh, clean_start=True)
    assert (report["written"], report["read"]) == (0, 0)
    assert dispatcher.jobs["j"] is not old and old.closed
    assert await peer.next() == Event(job="j", event="deleted")
    assert peer.session.subscriptions == {}
    assert await dispatcher.store.owner_of(str(data_dir / "j.out.jsonl")) is None

    # the same spec with clean_start throws the progress away and empties the output
    worker = Peer(dispatcher)
    await worker.credit(1)
    await worker.settle(await worker.next_batch())
    report = await Peer(dispatcher).start(metadata=fresh, clean_start=True)
    assert report["written"] == 0
    assert (data_dir / "fresh.jsonl").stat().st_size == 0


async def test_two_jobs_cannot_write_one_file(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start("a", metadata={"input_file_path": "in.jsonl", "output_file_path": "o.jsonl"})
    for metadata in (
        {"input_file_path": "in.jsonl", "output_file_path": "o.jsonl"},
        {"input_file_path": "in.jsonl", "output_file_path": "./o.jsonl"},
        {"input_file_path": "in.jsonl", "output_file_path": "o.jsonl.errors.jsonl"},
        {"input_file_path": "in.jsonl", "output_file_path": "p.jsonl",
         "error_file_path": "o.jsonl"},
    ):
        for clean_start in (False, True):
            with pytest.raises(JobConflict, match="written by job a"):
                await peer.start("b", metadata=metadata, clean_start=clean_start)
    assert list(dispatcher.jobs) == ["a"]
    assert await dispatcher.store.job_names() == ["a"]


async def test_a_failed_clean_start_keeps_the_old_job(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start("a", metadata={"input_file_path": "in.jsonl", "output_file_path": "a.jsonl"})
    await peer.start("b", metadata={"input_file_path": "in.jsonl", "output_file_path": "b.jsonl"})
    job = dispatcher.jobs["a"]
    with pytest.raises(JobConflict, match="written by job b"):
        await peer.start("a", clean_start=True,
                         metadata={"input_file_path": "in.jsonl", "output_file_path": "b.jsonl"})
    assert dispatcher.jobs["a"] is job and job.broken is None
    assert await dispatcher.store.job_names() == ["a", "b"]
    await peer.credit(1, job="a")
    assert isinstance(await peer.next(), Batch)


async def test_existing_output_needs_clean_start(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    output = data_dir / "j.out.jsonl"
    output.write_bytes(b'{"id": 0, "item": "precious"}\n')
    with pytest.raises(JobConflict, match="already has data"):
        await Peer(dispatcher).start()
    assert output.read_bytes() == b'{"id": 0, "item": "precious"}\n'
    assert dispatcher.jobs == {} and await dispatcher.store.job_names() == []
    assert await dispatcher.store.owner_of(str(output)) is None

    await Peer(dispatcher).start(clean_start=True)
    assert output.stat().st_size == 0


async def test_an_existing_empty_output_is_fine(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    (data_dir / "j.out.jsonl").touch()
    assert (await Peer(dispatcher).start())["state"] == "running"


async def test_bad_requests_leave_nothing_behind(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    peer = Peer(dispatcher)
    with pytest.raises(PathRefused):
        await peer.start(metadata={"input_file_path": "../in.jsonl", "output_file_path": "o"})
    with pytest.raises(BadRequest, match="needs writer"):
        await peer.start(writer=None)
    with pytest.raises(FormatError, match="cannot open"):
        await peer.start(metadata={"input_file_path": "missing.jsonl", "output_file_path": "o"})
    assert dispatcher.jobs == {}
    assert await dispatcher.store.job_names() == []
    assert await dispatcher.store.owner_of(str(data_dir / "o")) is None
    for message in (Credit(job="nope", batches=1), Result(job="nope", lease="x"),
                    JobCommand(type="report", id=1, job="nope")):
        with pytest.raises(JobNotFound, match="nope"):
            await peer.request(message)


# --- administration ----------------------------------------------------------------------


async def test_pause_and_resume_reach_every_subscriber(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    worker, admin = Peer(dispatcher), Peer(dispatcher)
    await admin.start()
    await worker.credit(1)
    batch = await worker.next_batch()

    assert (await admin.command("pause"))["state"] == "paused"
    assert await worker.next() == Event(job="j", event="paused")
    await worker.settle(batch)  # work in flight still lands while paused
    assert await worker.quiet() == []  # but no new batch comes

    assert (await admin.command("resume"))["state"] == "running"
    assert await worker.next() == Event(job="j", event="resumed")
    assert isinstance(await worker.next(), Batch)


async def test_delete(dispatcher: Dispatcher, issues_input: Path, data_dir: Path) -> None:
    worker, admin = Peer(dispatcher), Peer(dispatcher)
    await admin.start()
    await worker.credit(1)
    batch = await worker.next_batch()

    assert await admin.command("delete") == {"deleted": "j"}
    assert await worker.next() == Event(job="j", event="deleted")
    assert dispatcher.jobs == {} and await dispatcher.store.job_names() == []
    with pytest.raises(JobNotFound):
        await worker.settle(batch)
    assert (data_dir / "j.out.jsonl").exists()  # files are the user's to remove
    # the files are free again
    await admin.start("k", metadata={"input_file_path": "in.jsonl",
                                     "output_file_path": "j.out.jsonl"})


async def test_clean_starts_over_and_keeps_the_token(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    owner = Peer(dispatcher, token="t")
    await owner.start(token="t")
    await owner.credit(1)
    await owner.settle(await owner.next_batch())
    await owner.next_batch()

    report = await owner.command("clean")
    assert (report["written"], report["read"], report["in_flight"]) == (0, 0, 0)
    assert await owner.next() == Event(job="j", event="deleted")
    assert (data_dir / "j.out.jsonl").stat().st_size == 0
    with pytest.raises(AuthError):
        await Peer(dispatcher).credit(1)
    await owner.credit(2)
    await owner.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))


async def test_purge(dispatcher: Dispatcher, issues_input: Path, redis_client: Any) -> None:
    peer = Peer(dispatcher)
    await peer.start("a")
    await peer.start("b")
    await peer.credit(1, job="a")
    await peer.next_batch()
    assert await peer.request(ServerCommand(type="purge", id=1)) == {"deleted": ["a", "b"]}
    assert dispatcher.jobs == {}
    assert await redis_client.keys("*") == []
    assert await peer.request(ServerCommand(type="jobs", id=2)) == []


# --- restarts ----------------------------------------------------------------------------


async def test_a_new_dispatcher_takes_over_from_a_crashed_one(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    crashed = await make_dispatcher()
    peer = Peer(crashed, token="t")
    await peer.start(token="t")
    await peer.credit(3)
    batches = [await peer.next_batch() for _ in range(3)]
    await peer.credit(0)  # the settle below must not free a slot for a fourth batch
    await peer.settle(batches[0])
    await crashed.jobs["j"].flushed()  # the crash comes after these steps' commit
    # the process dies: its tasks stop, nothing is given back
    assert crashed._maintenance is not None
    crashed._maintenance.cancel()
    for sub in peer.session.subscriptions.values():
        sub.closed = True
        sub.task.cancel()
    crashed.sessions.clear()
    abandoned = crashed.jobs.pop("j")  # its open files go with the process

    dispatcher = await make_dispatcher()
    job = dispatcher.jobs["j"]
    assert job.queued == 20 and job.counts["written"] == 10
    with pytest.raises(AuthError):
        await Peer(dispatcher).credit(1)
    worker = Peer(dispatcher, token="t")
    await worker.credit(2)
    served = [await worker.next_batch(), await worker.next_batch()]
    assert set().union(*map(ids_of, served)) == ids_of(batches[1]) | ids_of(batches[2])
    for batch in served:  # the queue came first
        await worker.settle(batch)
    await worker.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))
    await abandoned.close()


async def test_closing_gives_the_work_back(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    first = await make_dispatcher()
    peer = Peer(first)
    await peer.start()
    await peer.credit(2)
    await peer.next_batch()
    await peer.next_batch()
    await first.close()
    assert first.jobs["j"].closed

    second = await make_dispatcher()
    assert second.jobs["j"].queued == 20
    worker = Peer(second)
    await worker.credit(2)
    await worker.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))


async def test_a_redis_restart_breaks_the_job_and_maintenance_mends_it(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path, redis_proc: RedisProcess
) -> None:
    """Redis killed mid-job: the next commit fails and breaks the job, which says why;
    once Redis is back, maintenance reopens it and the job ends exactly once."""
    worker = Peer(dispatcher)
    await worker.start(batch_size=20)
    job = dispatcher.jobs["j"]
    await worker.credit(2)
    for _ in range(10):
        await worker.settle(await worker.next_batch())
    redis_proc.kill()
    await worker.settle(await worker.next_batch())  # answered; its commit fails
    await eventually(lambda: bool(job.broken), "the job to notice", WAIT)
    assert job.broken and job.broken.kind is Fault.STORAGE
    report = await worker.command("report")
    assert report["error"] == str(job.broken)
    redis_proc.start()

    await asyncio.wait_for(worker.work(), WAIT)
    assert job.done and job.broken is None
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(LINES))
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []
    assert (await dispatcher.store.read_job("j"))["state"] == DONE


async def test_maintenance_expires_hung_leases(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    hung, healthy = Peer(dispatcher), Peer(dispatcher)
    await hung.start(lease_timeout=0.2)
    await hung.credit(1)
    lost = await hung.next_batch()
    job = dispatcher.jobs["j"]
    await eventually(lambda: job.queued == len(lost.items), "the lease to expire", WAIT)
    assert await hung.quiet() == []  # a hung worker is fed nothing more to let expire
    await healthy.credit(1)
    again = await healthy.next_batch()  # the queue comes first
    assert ids_of(again) == ids_of(lost)
    ack = await hung.settle(lost)  # the hung worker wakes up: too late
    assert (ack.written, ack.dropped) == (0, 10)
    assert ids_of(await hung.next_batch()) == set(range(10, 20))  # alive again: served


# --- shutdown, file claims, tokens on a clean start --------------------------------------


async def test_a_graceful_stop_does_not_use_up_attempts(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    first = await make_dispatcher()
    peer = Peer(first)
    await peer.start(max_attempts=1)
    await peer.credit(2)
    held = ids_of(await peer.next_batch()) | ids_of(await peer.next_batch())
    first.stopping = True  # what PlanchetServer.stop sets before closing connections
    await first.disconnect(peer.session)
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []
    job = first.jobs["j"]
    assert job.queued == len(held) and job.counts["failed"] == 0


async def test_a_vanished_worker_uses_up_an_attempt(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """A worker gone without a goodbye after the crash grace is charged its batch."""
    dispatcher = await make_dispatcher(crash_grace=0)
    peer = Peer(dispatcher)
    await peer.start(max_attempts=1)
    await peer.credit(1)
    held = ids_of(await peer.next_batch())
    await dispatcher.disconnect(peer.session)  # an item that kills its workers ends here
    assert sorted(error_ids(data_dir / "j.out.jsonl.errors.jsonl")) == sorted(held)


async def test_files_of_other_jobs_and_existing_errors_are_refused(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start("a")
    with pytest.raises(JobConflict, match="input of job a"):
        await peer.start("b", metadata={"input_file_path": "x.jsonl",
                                        "output_file_path": "in.jsonl"})
    with pytest.raises(JobConflict, match="written by job a"):
        await peer.start("c", metadata={"input_file_path": "a.out.jsonl",
                                        "output_file_path": "c.jsonl"})
    (data_dir / "d.out.jsonl.errors.jsonl").write_text('{"id": 1, "error": "old"}\n')
    with pytest.raises(JobConflict, match="already has data"):
        await peer.start("d")
    with pytest.raises(PathRefused, match=r"own \.planchet directory"):
        await peer.start("e", metadata={"input_file_path": "in.jsonl",
                                        "output_file_path": ".planchet/redis/appendonly.aof"})


async def test_clean_start_without_a_token_keeps_the_jobs_token(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    owner = Peer(dispatcher, token="t0k")
    await owner.start(token="t0k")
    await owner.start(clean_start=True)  # authorised by the hello token; sets no new one
    with pytest.raises(AuthError):
        await Peer(dispatcher).credit(1)


async def test_write_only_keeps_order_and_ignores_errors_for_results(
    dispatcher: Dispatcher, data_dir: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start("w", reader=None, mode="write",
                     metadata={"output_file_path": "w.jsonl"})
    ack = await peer.request(Result(job="w", items=[(3, "c"), (1, "a"), (3, "x"), (2, "b")],
                                    errors=[ItemError(id=1, message="late")]))
    assert (ack.written, ack.failed, ack.dropped) == (3, 0, 2)  # 5 in: 3 written, 2 dropped
    assert output_ids(data_dir / "w.jsonl") == [3, 1, 2]


async def test_a_delete_that_redis_refuses_leaves_the_job_whole(
    dispatcher: Dispatcher, issues_input: Path, data_dir: Path, redis_proc: RedisProcess
) -> None:
    worker = Peer(dispatcher)
    await worker.start(batch_size=100)
    job = dispatcher.jobs["j"]
    redis_proc.kill()
    with pytest.raises(Unavailable):
        await worker.command("delete")
    assert dispatcher.jobs["j"] is job
    redis_proc.start()
    await eventually(lambda: job.broken is None, "maintenance to reopen the job", WAIT)
    await worker.credit(1)
    assert await worker.work() == LINES  # still there, and whole


async def test_clean_of_a_job_whose_input_is_gone_keeps_the_job(
    dispatcher: Dispatcher, issues_input: Path
) -> None:
    peer = Peer(dispatcher)
    await peer.start()
    issues_input.unlink()
    with pytest.raises(FormatError):
        await peer.command("clean")
    assert (await peer.command("report"))["job"] == "j"


async def test_clean_start_can_give_a_job_a_new_token_under_the_master(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    dispatcher = await make_dispatcher(token="master")
    admin = Peer(dispatcher, token="master")
    await admin.start(token="old")
    await admin.start(token="new", clean_start=True)
    await Peer(dispatcher, token="new").credit(1)
    with pytest.raises(AuthError):
        await Peer(dispatcher, token="old").credit(1)


async def test_a_lease_that_ends_while_a_resume_sends_it_again_is_skipped(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """A resumed session's leases are sent again one by one; one that another connection
    settles meanwhile is skipped, not a KeyError that would fail the resumed session."""
    dispatcher = await make_dispatcher(resume_grace=WAIT)
    peer = Peer(dispatcher)
    await dispatcher.disconnect(peer.session, Ending.GOODBYE)  # a resumable one instead:
    before = peer.session = dispatcher.connect(peer._send, Hello(protocol=1, resumable=True))
    await peer.start()
    await peer.credit(2)
    first, second = await peer.next_batch(), await peer.next_batch()
    await dispatcher.disconnect(before)  # vanished: parked, its leases kept
    job = dispatcher.jobs["j"]
    sent: list[str] = []

    async def send(message: Message) -> None:  # the first re-sent batch: the other ends
        if isinstance(message, Batch):
            sent.append(message.lease)
            other = second.lease if message.lease == first.lease else first.lease
            if other in job.leases:
                await job.settle(other, list(job.leases[other].items.items()), [])

    after = dispatcher.connect(send, Hello(protocol=1, resumable=True))
    assert before.name is not None and await dispatcher.resume(after, before.name)
    await dispatcher.restart(after, held=[])
    assert len(sent) == 1  # the one settled meanwhile was not sent again
    assert not after.subscriptions["j"].task.done()  # its pump runs again


async def test_a_resume_does_not_wait_for_ever_on_the_old_connections_stuck_send(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """Taking over a session whose old connection is half dead (its pump stuck in a send)
    cancels that pump after a short patience; the lease it held is sent again."""
    dispatcher = await make_dispatcher(resume_grace=WAIT)
    stuck = asyncio.Event()
    sent: list[Batch] = []

    async def send_nothing(message: Message) -> None:  # a full socket buffer, for ever
        if isinstance(message, Batch):
            sent.append(message)
            stuck.set()
            await asyncio.Event().wait()

    old = dispatcher.connect(send_nothing, Hello(protocol=1, resumable=True))
    await Peer(dispatcher).start()
    await dispatcher.handle(old, Credit(job="j", batches=1))
    await asyncio.wait_for(stuck.wait(), WAIT)
    peer = Peer(dispatcher)
    new = peer.session = dispatcher.connect(peer._send, Hello(protocol=1, resumable=True))
    assert old.name is not None
    async with asyncio.timeout(WAIT):
        assert await dispatcher.resume(new, old.name)
        await dispatcher.restart(new, held=[])
    assert (await peer.next_batch()).lease == sent[0].lease
