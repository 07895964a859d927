"""Issue 5's findings in the job runtime and the dispatcher, each proved closed.

Failures of any kind inside a step, specs that could not be read back, auth gaps,
connection churn, and the pump that must not die silently. Real Redis, real files;
the dispatcher is driven through the ``Peer`` sessions of ``test_dispatcher``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from planchet.dispatcher import Ending
from planchet.exceptions import AuthError, BadRequest
from planchet.formats import READERS, JsonlReader
from planchet.formats.base import Chunk
from planchet.messages import Batch, Credit, Event, Hello, Message
from planchet.state import Fault
from planchet.store import Store
from tests.conftest import MakeDispatcher
from tests.support import eventually
from tests.test_dispatcher import Peer, error_ids, output_ids

WAIT = 20.0


def write_lines(path: Path, lines: list[bytes]) -> None:
    path.write_bytes(b"".join(line + b"\n" for line in lines))


# --- any failure inside a step ------------------------------------------------------------


async def test_a_line_nested_too_deep_to_encode_loses_nothing(
    make_dispatcher: MakeDispatcher, data_dir: Path
) -> None:
    """A line orjson parses but cannot encode goes to the error file; no id is lost."""
    deep = b"[" * 300 + b"]" * 300
    lines = [orjson.dumps({"n": n}) for n in range(40)]
    lines[13] = deep
    write_lines(data_dir / "in.jsonl", lines)
    peer = Peer(await make_dispatcher())
    await peer.start(batch_size=5)
    await peer.credit(2)
    await peer.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == [n for n in range(40) if n != 13]
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == [13]


class FlakyReader(JsonlReader):
    """Reads like JsonlReader, but the first read to reach id 20 raises after advancing:
    the shape of any bug in a step (not a PlanchetError) once the reader has moved on."""

    failed = False

    def read(self, n: int) -> Chunk:
        chunk = super().read(n)
        if not FlakyReader.failed and chunk.position.next_id > 20:
            FlakyReader.failed = True
            raise RuntimeError("a bug after the reader moved past a chunk")
        return chunk


@pytest.fixture
def flaky_reader() -> Any:
    READERS["FlakyReader"] = FlakyReader
    FlakyReader.failed = False
    yield "FlakyReader"
    del READERS["FlakyReader"]
    assert FlakyReader.failed, "the reader never failed: the test proved nothing"


async def test_a_bug_in_a_step_reopens_the_job_from_its_last_commit(
    make_dispatcher: MakeDispatcher, data_dir: Path, flaky_reader: str
) -> None:
    """Any exception in a step breaks the job until it is reloaded, so none of the chunk
    the reader had moved past is lost, and the pump keeps serving after the reopen."""
    write_lines(data_dir / "in.jsonl", [orjson.dumps({"n": n}) for n in range(60)])
    dispatcher = await make_dispatcher()
    peer = Peer(dispatcher)
    await peer.start(reader=flaky_reader, batch_size=5)
    await peer.credit(1)
    await peer.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(60))
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []


async def test_a_failed_step_marks_the_job_broken_with_a_kind_and_a_reason(
    make_dispatcher: MakeDispatcher, data_dir: Path, flaky_reader: str
) -> None:
    """The broken job says why (kind STEP, the exception named) before maintenance
    reopens it."""
    write_lines(data_dir / "in.jsonl", [orjson.dumps({"n": n}) for n in range(60)])
    dispatcher = await make_dispatcher(tick=3600)  # no maintenance: look at the broken job
    peer = Peer(dispatcher)
    await peer.start(reader=flaky_reader, batch_size=5)
    await peer.credit(4)
    job = dispatcher.jobs["j"]
    await eventually(lambda: job.broken is not None, "the step to fail", WAIT)
    assert job.broken is not None and job.broken.kind is Fault.STEP
    assert "RuntimeError" in job.broken.reason
    assert job.report()["error"] == job.broken.reason


# --- what start_job stores must load again ------------------------------------------------


async def test_metadata_that_could_not_be_loaded_again_is_refused(
    make_dispatcher: MakeDispatcher, issues_input: Path, store: Store
) -> None:
    """Metadata nested too deep to be read back is refused at start_job, not stored."""
    deep: Any = "leaf"
    for _ in range(300):
        deep = {"k": deep}
    peer = Peer(await make_dispatcher())
    with pytest.raises(BadRequest, match="cannot be stored"):
        await peer.start(metadata={"input_file_path": "in.jsonl",
                                   "output_file_path": "j.out.jsonl", "deep": deep})
    assert await store.job_names() == []


async def test_a_spec_the_server_cannot_read_does_not_stop_it(
    make_dispatcher: MakeDispatcher, issues_input: Path, store: Store
) -> None:
    """A job whose stored spec cannot be read is skipped at start; the others run."""
    await Peer(await make_dispatcher()).start("good")
    await store.create_job("bad", {"spec": '{"name": "bad"}', "token": "", "state": "running"},
                           [])
    restarted = await make_dispatcher()
    assert list(restarted.jobs) == ["good"]
    peer = Peer(restarted)
    await peer.credit(2, job="good")
    assert await peer.work("good") == 830


# --- tokens ----------------------------------------------------------------------------------


async def test_clean_start_over_a_tokenless_job_needs_the_master_token(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """Replacing a job may name new files and truncate them: only the master may."""
    dispatcher = await make_dispatcher(token="master")
    await Peer(dispatcher, token="master").start()
    (data_dir / "precious.txt").write_text("keep me\n")
    stranger = Peer(dispatcher)
    with pytest.raises(AuthError, match="master token"):
        await stranger.start(clean_start=True, metadata={
            "input_file_path": "in.jsonl", "output_file_path": "precious.txt"})
    assert (data_dir / "precious.txt").read_text() == "keep me\n"


async def test_a_wrong_message_token_does_not_fall_back_to_the_hello_token(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """A per-message token replaces the connection's: a wrong one is refused even when
    the hello token would have passed."""
    dispatcher = await make_dispatcher()
    owner = Peer(dispatcher, token="t")
    await owner.start(token="t")
    with pytest.raises(AuthError, match="wrong token"):
        await owner.credit(1, token="wrong")
    await owner.credit(1)  # the hello token alone still works
    assert isinstance(await owner.next(), Batch)


# --- connections that come and go ---------------------------------------------------------------


async def test_workers_that_come_and_go_fail_nothing(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """Hundreds of connect / credit / goodbye cycles send no healthy item to the error file,
    even with a single attempt allowed."""
    dispatcher = await make_dispatcher()
    await Peer(dispatcher).start(max_attempts=1, batch_size=10)
    for _ in range(300):
        churn = Peer(dispatcher)
        await churn.credit(3)
        await churn.next_batch()
        await dispatcher.disconnect(churn.session, Ending.GOODBYE)
    worker = Peer(dispatcher)
    await worker.credit(2)
    await worker.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(830))
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []


async def test_workers_that_vanish_at_once_fail_nothing(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """Connections that take batches and drop without a goodbye, sooner than the crash
    grace, send no healthy item to the error file either, even with one attempt allowed."""
    dispatcher = await make_dispatcher(crash_grace=3600)
    await Peer(dispatcher).start(max_attempts=1, batch_size=10)
    for _ in range(300):
        churn = Peer(dispatcher)
        await churn.credit(3)
        await churn.next_batch()
        await dispatcher.disconnect(churn.session)  # no goodbye
    worker = Peer(dispatcher)
    await worker.credit(2)
    await worker.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(830))
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []


async def test_a_crash_charges_only_the_lease_being_worked_on(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """A worker that vanishes is charged for its oldest lease (the one it was working on,
    so an item that kills workers still ends in the error file), not for what it had
    only prefetched."""
    dispatcher = await make_dispatcher(crash_grace=0)
    await Peer(dispatcher).start(max_attempts=1, batch_size=10)
    crasher = Peer(dispatcher)
    await crasher.credit(3)
    batches = [await crasher.next_batch() for _ in range(3)]
    await dispatcher.disconnect(crasher.session)  # no goodbye: a crash
    worker = Peer(dispatcher)
    await worker.credit(2)
    await worker.work()
    first = sorted(i for i, _ in batches[0].items)
    assert sorted(error_ids(data_dir / "j.out.jsonl.errors.jsonl")) == first
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == sorted(set(range(830)) - set(first))


# --- a pump never dies silently -------------------------------------------------------------------


async def test_a_failing_send_closes_the_session_and_returns_its_leases_free(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """An unexpected error in a pump closes its connection with 1011 (logged), and the
    leases it held go back without costing an attempt."""
    dispatcher = await make_dispatcher()
    await Peer(dispatcher).start(max_attempts=1)
    closed: list[tuple[int, str]] = []

    async def send(message: Message) -> None:
        if isinstance(message, Batch):
            raise RuntimeError("a bug in sending")

    async def close(code: int, reason: str) -> None:
        closed.append((code, reason))

    session = dispatcher.connect(send, Hello(protocol=1), close)
    await dispatcher.handle(session, Credit(job="j", batches=1))
    await eventually(lambda: closed, "the session to be closed", WAIT)
    assert closed[0][0] == 1011
    await dispatcher.disconnect(session)
    worker = Peer(dispatcher)
    await worker.credit(2)
    await worker.work()
    assert sorted(output_ids(data_dir / "j.out.jsonl")) == list(range(830))
    assert error_ids(data_dir / "j.out.jsonl.errors.jsonl") == []


async def test_deleting_a_job_tells_its_workers(
    make_dispatcher: MakeDispatcher, issues_input: Path
) -> None:
    """Subscribers of a deleted job hear ``deleted`` and their subscription ends."""
    dispatcher = await make_dispatcher()
    owner = Peer(dispatcher)
    await owner.start()
    await owner.credit(1)
    await owner.next_batch()
    await owner.command("delete")
    assert await owner.next() == Event(job="j", event="deleted")
    await eventually(lambda: "j" not in owner.session.subscriptions, "the subscription to end")
