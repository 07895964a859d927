"""The clients' circuit breaker: a worker that fails every item of batch after batch stops
itself, with CircuitOpen naming the threshold and its last error, before the server has
to cut it off; the batches it held go back free. Real server, real sockets."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from planchet import AsyncPlanchetClient, PlanchetClient
from planchet.codec import encode
from planchet.exceptions import CircuitOpen
from planchet.messages import Ack, Error, ItemError, Result
from planchet.server import PlanchetServer
from planchet.session import ClientSession
from tests.support import clean_env, eventually, wait_until

WRONG = "KeyError: 'text' (the program answered in the wrong shape)"
META = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


def url_of(server: PlanchetServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def error_ids(data_dir: Path, name: str = "out.jsonl.errors.jsonl") -> list[int]:
    path = data_dir / name
    lines = path.read_bytes().splitlines() if path.exists() else []
    return sorted(orjson.loads(line)["id"] for line in lines)


async def fail_everything(client: AsyncPlanchetClient) -> tuple[int, CircuitOpen]:
    """Fail every item of every batch until the client stops itself: the batches whose
    failures the server took (a batch prefetched before a cut-off is dropped), and why."""
    failed = 0
    with pytest.raises(CircuitOpen) as stopped:
        async for batch in client.batches("j", prefetch=2):
            ack = await batch.ack([], [ItemError(id=i, message=WRONG) for i, _ in batch.items])
            failed += ack.failed > 0
    return failed, stopped.value


async def settled(client: AsyncPlanchetClient, data_dir: Path, failed: int) -> bool:
    """Nothing in flight, and the failed items committed to the error file."""
    in_flight = (await client.report("j"))["in_flight"]
    return in_flight == 0 and len(error_ids(data_dir)) >= failed


async def test_the_asyncio_client_stops_itself_after_3_failed_batches(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """`batches` raises CircuitOpen after 3 batches failed on every item, naming the
    threshold and the last error; closing gives the prefetched batches back free."""
    async with AsyncPlanchetClient(url_of(server)) as admin:
        await admin.start_job("j", META, "JsonlReader", "JsonlWriter", batch_size=5,
                              max_attempts=1)
        async with AsyncPlanchetClient(url_of(server)) as worker:
            batches, error = await fail_everything(worker)
        assert batches == 3
        message = str(error)
        assert "the last 3 batches of job j failed on every item" in message
        assert WRONG in message and "max_failing_batches=3" in message
        await eventually(lambda: settled(admin, data_dir, 15), "the held batches back")
        assert error_ids(data_dir) == list(range(15))  # the 3 failed batches, no more
        assert (await admin.report("j"))["queued"] > 0


async def test_the_server_breaker_reaches_a_client_without_its_own(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """With max_failing_batches=0 the client goes on until the server cuts it off after 5:
    its circuit_open frame ends `batches` with CircuitOpen, adding the last error."""
    async with AsyncPlanchetClient(url_of(server)) as admin:
        await admin.start_job("j", META, "JsonlReader", "JsonlWriter", batch_size=5,
                              max_attempts=1)
        async with AsyncPlanchetClient(url_of(server), max_failing_batches=0) as worker:
            batches, error = await fail_everything(worker)
        assert batches == 5
        message = str(error)
        assert message.startswith("the last 5 batches of job j failed on every item: this "
                                  "connection gets no more of them")
        assert message.endswith(f"(the last error: {WRONG})")
        await eventually(lambda: settled(admin, data_dir, 25), "the held batches back")
        assert error_ids(data_dir) == list(range(25))


def test_the_blocking_client_stops_itself_after_3_failed_batches(
    serve_url: str, issues_input: Path, data_dir: Path
) -> None:
    """`get` raises CircuitOpen after 3 batches marked as errors; results reset the count."""
    url = serve_url
    with PlanchetClient(url) as admin:
        admin.start_job("j", META, "JsonlReader", "JsonlWriter", batch_size=5, max_attempts=1)
    batches = 0
    with (pytest.raises(CircuitOpen, match="the last 3 batches of job j") as stopped,
          PlanchetClient(url) as worker):
        while items := worker.get("j", 5):
            batches += 1
            if batches == 2:  # one good batch among the bad: the count starts again
                worker.send("j", items)
            else:
                worker.mark_errors("j", [i for i, _ in items], message=WRONG)
    assert batches == 5 and WRONG in str(stopped.value)
    with PlanchetClient(url) as admin:
        wait_until(lambda: admin.get_job_report("j")["in_flight"] == 0
                   and len(error_ids(data_dir)) >= 20, "the batches back")
        assert admin.get_job_report("j")["written"] == 5
    assert error_ids(data_dir) == [*range(5), *range(10, 25)]


WRONG_SHAPE = """
import json, sys
for line in sys.stdin:
    print(json.dumps({"answer": json.loads(line)["item"]}), flush=True)
"""


def test_planchet_work_stops_a_program_that_answers_in_the_wrong_shape(
    serve_url: str, headlines: str, data_dir: Path
) -> None:
    """The issue's story: `planchet work` exits non-zero with a clear message after 3
    batches, and the error file holds those batches' items, not the whole job."""
    with PlanchetClient(serve_url) as admin:
        admin.start_job("shape", {"input_file_path": headlines,
                                  "output_file_path": "shape.jsonl"},
                        "JsonlReader", "JsonlWriter", batch_size=10, max_attempts=1)
    done = subprocess.run(
        [sys.executable, "-m", "planchet", "work", "shape", "--url", serve_url,
         "--", sys.executable, "-c", WRONG_SHAPE],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert done.returncode == 1, done.stderr
    assert "planchet: circuit_open: the last 3 batches of job shape failed on every item" \
        in done.stderr
    assert "lines that were not answers: no such id waiting: {\"answer\"" in done.stderr
    with PlanchetClient(serve_url) as admin:
        wait_until(lambda: admin.get_job_report("shape")["in_flight"] == 0
                   and len(error_ids(data_dir, "shape.jsonl.errors.jsonl")) >= 30,
                   "the batches back")
        assert admin.get_job_report("shape")["failed"] == 30
    assert len(error_ids(data_dir, "shape.jsonl.errors.jsonl")) == 30


def test_a_circuit_open_frame_answers_no_result() -> None:
    """The server's circuit_open frame (no id) is not taken for the answer of a pending
    result: that result's ack still comes, and the next batch request raises."""
    session = ClientSession()
    session.connected = True
    key = session.result(Result(job="j", lease="l1", errors=[ItemError(id=1, message="x")]))
    session.receive(encode(Error(code="circuit_open", message="cut off", job="j")))
    assert not session.has_answer(key) and session.has_batch("j")
    session.receive(encode(Ack(job="j", lease="l1", failed=1)))
    assert session.answer(key) == Ack(job="j", lease="l1", failed=1)
    with pytest.raises(CircuitOpen, match=r"^cut off \(the last error: x\)$"):
        session.take_batch("j")
    assert session.take_batch("j") is None


ALWAYS_FAILS = """
import json, sys
for line in sys.stdin:
    print(json.dumps({"id": json.loads(line)["id"], "error": "boom"}), flush=True)
"""


def test_a_worker_that_never_wrote_is_stopped_before_its_retries_burn_the_attempts(
    serve_url: str, headlines: str, data_dir: Path
) -> None:
    """A program that fails every item (retryable) is stopped after 3 batches even
    though the 2nd and 3rd are retries of the 1st: no item reaches the error file."""
    with PlanchetClient(serve_url) as admin:
        admin.start_job("boom", {"input_file_path": headlines,
                                 "output_file_path": "boom.jsonl"},
                        "JsonlReader", "JsonlWriter", batch_size=20, max_attempts=5)
    done = subprocess.run(
        [sys.executable, "-m", "planchet", "work", "boom", "--url", serve_url,
         "--", sys.executable, "-c", ALWAYS_FAILS],
        capture_output=True, text=True, env=clean_env(), timeout=120,
    )
    assert done.returncode == 1 and "circuit_open" in done.stderr, done.stderr
    with PlanchetClient(serve_url) as admin:
        wait_until(lambda: admin.get_job_report("boom")["in_flight"] == 0, "the batches back")
        assert admin.get_job_report("boom")["failed"] == 0
    assert error_ids(data_dir, "boom.jsonl.errors.jsonl") == []
