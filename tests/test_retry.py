"""``retry``: a job's failed items go back through a fixed worker, exactly once.

A worker that fails every id divisible by 7 (``max_attempts`` 1, so each failure is for
good) fills the error file; ``retry`` queues those items again, renames the error file
to ``<error file>.<n>``, and a fixed worker brings the output to every id exactly once.
Real Redis, real sockets, real files; crashes are injected at each step of a retry.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import orjson
import pytest

from planchet import retrying
from planchet.aclient import AsyncPlanchetClient
from planchet.exceptions import AuthError, BadRequest, FormatError, Unavailable
from planchet.messages import Batch, Event, ItemError
from planchet.server import PlanchetServer
from planchet.store import Store
from tests.conftest import MakeDispatcher
from tests.support import run
from tests.test_dispatcher import Peer, error_ids, output_ids

LINES = 830
SEVENS = [i for i in range(LINES) if i % 7 == 0]
ERRORS = "j.out.jsonl.errors.jsonl"


def sevens(i: int) -> bool:
    return i % 7 == 0


def never(i: int) -> bool:
    return False


def start_args(**fields: Any) -> dict[str, Any]:
    return {"metadata": {"input_file_path": "in.jsonl", "output_file_path": "j.out.jsonl"},
            "reader_name": "JsonlReader", "writer_name": "JsonlWriter", "batch_size": 25,
            "max_attempts": 1, **fields}


async def work(url: str, fails: Callable[[int], bool], token: str | None = None) -> None:
    """Work job ``j`` until it is done: an error for each id ``fails`` picks."""
    async with AsyncPlanchetClient(url, token) as client:
        async for batch in client.batches("j"):
            await batch.ack([(i, x) for i, x in batch.items if not fails(i)],
                            [ItemError(id=i, message=f"{i} is bad")
                             for i, _ in batch.items if fails(i)])


def exact(data_dir: Path) -> bool:
    ids = output_ids(data_dir / "j.out.jsonl")
    return len(ids) == len(set(ids)) and sorted(ids) == list(range(LINES))


async def test_retry_brings_the_failures_back_exactly_once(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """A done job's failures go back once, run it again, and it ends with every id once."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("j", **start_args())
        await work(url, sevens)
        before = await client.report("j")
        assert (before["state"], before["failed"], before["retries"]) == ("done", 119, [])
        reply = await client.retry("j")
        assert reply["job"] == "j" and reply["retried"] == 119
        assert reply["rotated_to"] == f"{ERRORS}.1"
        assert (reply["state"], reply["failed"], reply["queued"]) == ("running", 0, 119)
        await work(url, never)
        after = await client.report("j")
    assert exact(data_dir)
    assert sorted(error_ids(data_dir / f"{ERRORS}.1")) == SEVENS
    assert (data_dir / ERRORS).read_bytes() == b""
    assert (after["state"], after["failed"], after["written"]) == ("done", 0, LINES)
    [record] = after["retries"]
    assert record["items"] == 119 and record["file"] == f"{ERRORS}.1"
    assert record["time"] > 0


async def test_a_second_round_of_failures_rotates_to_2(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """Retrying twice keeps both old error files, numbered, and the output still exact."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("j", **start_args())
        await work(url, sevens)
        assert (await client.retry("j"))["rotated_to"] == f"{ERRORS}.1"
        await work(url, lambda i: i % 14 == 0)  # half of them still fail
        second = await client.retry("j")
        assert (second["retried"], second["rotated_to"]) == (60, f"{ERRORS}.2")
        await work(url, never)
        report = await client.report("j")
    assert exact(data_dir)
    assert sorted(error_ids(data_dir / f"{ERRORS}.2")) == [i for i in SEVENS if i % 14 == 0]
    assert sorted(error_ids(data_dir / f"{ERRORS}.1")) == SEVENS
    assert [r["items"] for r in report["retries"]] == [119, 60]
    assert report["failed"] == 0


async def test_retry_with_no_failures_is_a_no_op(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """No committed failure: the reply says 0 retried and no file, and nothing changes."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("j", **start_args())
        running = await client.retry("j")  # nothing failed yet, and nothing is stopped
        assert (running["retried"], running["rotated_to"], running["state"]) == (
            0, None, "running")
        await work(url, never)
        done = await client.retry("j")
    assert (done["retried"], done["rotated_to"], done["state"]) == (0, None, "done")
    assert done["retries"] == []
    assert not (data_dir / f"{ERRORS}.1").exists()
    assert exact(data_dir)


async def test_retry_needs_the_jobs_admin_token(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """A worker token, no token and a wrong token cannot retry; the job's token can."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url, "admin") as admin:
        await admin.start_job("j", **start_args(token="admin"))
        worker = (await admin.grant_token("j"))["token"]
        await work(url, sevens, token=worker)
        for token in (worker, "wrong"):
            async with AsyncPlanchetClient(url, token) as other:
                with pytest.raises(AuthError):
                    await other.retry("j")
        async with AsyncPlanchetClient(url) as anonymous:
            with pytest.raises(AuthError):
                await anonymous.retry("j")
        assert (await admin.report("j"))["failed"] == 119
        assert (await admin.retry("j"))["retried"] == 119


async def test_a_write_only_job_cannot_retry(server: PlanchetServer, data_dir: Path) -> None:
    """A write-only job has no input to read its failed items from: bad_request."""
    async with AsyncPlanchetClient(f"ws://127.0.0.1:{server.port}") as client:
        await client.start_job("w", {"output_file_path": "w.jsonl"}, None,
                               writer_name="JsonlWriter", mode="write")
        await client.send_results("w", None, [(1, "a")], [ItemError(id=2, message="no")])
        with pytest.raises(BadRequest, match="write-only"):
            await client.retry("w")


async def test_a_retry_that_cannot_read_the_input_changes_nothing(
    server: PlanchetServer, issues_input: Path, data_dir: Path
) -> None:
    """The input gone after the job is done: format_error, and the job is as it was."""
    url = f"ws://127.0.0.1:{server.port}"
    async with AsyncPlanchetClient(url) as client:
        await client.start_job("j", **start_args())
        await work(url, sevens)
        issues_input.rename(data_dir / "elsewhere.jsonl")
        with pytest.raises(FormatError, match=r"(?i)no such file"):
            await client.retry("j")
        report = await client.report("j")
        assert (report["state"], report["failed"], report["retries"]) == ("done", 119, [])
        assert sorted(error_ids(data_dir / ERRORS)) == SEVENS
        assert not (data_dir / f"{ERRORS}.1").exists()
        (data_dir / "elsewhere.jsonl").rename(issues_input)  # back: now it works
        assert (await client.retry("j"))["retried"] == 119
        await work(url, never)
    assert exact(data_dir)


# --- a broken job, and crashes, on the dispatcher itself ---------------------------------


async def fail_sevens(peer: Peer, fails: Callable[[int], bool] = sevens) -> None:
    """Work job ``j`` through ``peer`` until its ``done`` event."""
    await peer.credit(2)
    while True:
        message = await peer.next()
        if isinstance(message, Batch):
            await peer.settle(message, [(i, x) for i, x in message.items if not fails(i)],
                              [ItemError(id=i, message="bad") for i, _ in message.items
                               if fails(i)])
        elif isinstance(message, Event) and message.event == "done":
            return


async def test_a_broken_job_cannot_retry(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path
) -> None:
    """A job that cannot be opened (its input is gone) answers retry with unavailable."""
    first = await make_dispatcher()
    peer = Peer(first)
    await peer.start(max_attempts=1, batch_size=25)
    await peer.credit(1)
    batch = await peer.next_batch()
    await peer.settle(batch, [], [ItemError(id=i, message="bad") for i, _ in batch.items])
    await first.close()
    issues_input.unlink()
    second = await make_dispatcher()
    assert second.jobs["j"].broken is not None
    with pytest.raises(Unavailable, match="cannot retry now"):
        await Peer(second).command("retry")


class Crash(BaseException):
    """The process dies here: nothing after this line of the retry runs."""


def crash_at(monkeypatch: pytest.MonkeyPatch, point: str) -> None:
    """Make the first retry die at ``point``; every later call runs as it should."""
    targets: dict[str, tuple[Any, str, bool]] = {  # (owner, name, after the real call)
        "before the commit": (Store, "retry_failures", False),
        "before the rename": (retrying, "finish_rotation", False),
        "after the rename": (retrying, "start_error_file", False),
        "after the new error file": (retrying, "finish_rotation", True),
        "before rotating is cleared": (Store, "rotated", False),
        "before the reload": (Store, "rotated", True),
    }
    owner, name, after = targets[point]
    real = getattr(owner, name)
    calls = []

    def once() -> None:
        calls.append(1)
        if len(calls) == 1:
            raise Crash(point)

    if owner is retrying:
        def hooked(*args: Any) -> Any:
            if not after:
                once()
            result = real(*args)
            if after:
                once()
            return result
    else:
        async def hooked(*args: Any) -> Any:  # type: ignore[misc]
            if not after:
                once()
            result = await real(*args)
            if after:
                once()
            return result
    monkeypatch.setattr(owner, name, hooked)


@pytest.mark.parametrize("point", ["before the commit", "before the rename",
                                   "after the rename", "after the new error file",
                                   "before rotating is cleared",
                                   "before the reload"])
async def test_a_crash_at_any_step_of_a_retry_loses_and_doubles_nothing(
    make_dispatcher: MakeDispatcher, issues_input: Path, data_dir: Path, store: Store,
    monkeypatch: pytest.MonkeyPatch, point: str
) -> None:
    """A server that dies anywhere in a retry comes back with it undone or finished."""
    with issues_input.open("ab") as f:
        f.write(b"not json\n")  # id 830: unreadable, so it stays in the new error file
    crashed = await make_dispatcher()
    peer = Peer(crashed)
    await peer.start(max_attempts=1, batch_size=25)
    await fail_sevens(peer)
    crash_at(monkeypatch, point)
    with pytest.raises(Crash):
        await peer.command("retry")
    for sub in peer.session.subscriptions.values():  # the process dies: nothing given back
        sub.closed = True
        sub.task.cancel()
    crashed.sessions.clear()
    assert crashed._maintenance is not None
    crashed._maintenance.cancel()
    abandoned = crashed.jobs.pop("j")

    restarted = await make_dispatcher()
    worker = Peer(restarted)
    assert "rotating" not in await store.read_job("j")  # finished, or never begun
    assert bool(restarted.jobs["j"].retries) is (point != "before the commit")
    if point == "before the commit":  # nothing happened: retry again
        assert (await worker.command("retry"))["retried"] == 119
    await fail_sevens(worker, never)
    report = restarted.jobs["j"].report()
    assert exact(data_dir)
    assert sorted(error_ids(data_dir / f"{ERRORS}.1")) == [*SEVENS, LINES]
    assert error_ids(data_dir / ERRORS) == [LINES]  # the record that still cannot be read
    assert not (data_dir / f"{ERRORS}.2").exists()
    assert (report["failed"], report["written"], len(report["retries"])) == (1, LINES, 1)
    await abandoned.close()


def test_planchet_retry_end_to_end(
    serve_url: str, issues_input: Path, data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str]
) -> None:
    """``planchet retry`` against ``planchet serve``: failures come back once, and say so."""
    program = tmp_path / "echo.py"
    program.write_text(
        "import json, sys\n"
        "fail = sys.argv[1:] == ['sevens']\n"
        "for line in sys.stdin:\n"
        "    m = json.loads(line)\n"
        "    answer = {'id': m['id'], 'error': 'seven', 'retry': False} if fail and "
        "m['id'] % 7 == 0 else {'id': m['id'], 'result': m['item']}\n"
        "    print(json.dumps(answer), flush=True)\n")
    u = ("--url", serve_url)
    assert run(capsys, "start", "j", *u, "--input", "in.jsonl", "--output", "j.out.jsonl")[0] == 0
    code, out, _ = run(capsys, "work", "j", *u, "--", sys.executable, str(program), "sevens")
    assert code == 0 and "119 failed attempts" in out
    code, out, _ = run(capsys, "retry", "j", *u)
    assert code == 0
    assert out.strip() == (f"job j: 119 failed items back in the queue; "
                           f"the old error file is now {ERRORS}.1")
    assert run(capsys, "work", "j", *u, "--", sys.executable, str(program))[0] == 0
    code, out, _ = run(capsys, "retry", "j", *u, "--json")
    reply = orjson.loads(out)
    assert (code, reply["retried"], reply["rotated_to"], reply["failed"]) == (0, 0, None, 0)
    assert [r["items"] for r in reply["retries"]] == [119]
    assert exact(data_dir)
    assert sorted(error_ids(data_dir / f"{ERRORS}.1")) == SEVENS

