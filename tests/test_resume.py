"""Sessions that survive a blip, and the server's hints (goodbye, retry_after), over real
sockets: raw ``websockets`` clients for the wire, then the Python clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect

from planchet.aclient import AsyncPlanchetClient
from planchet.codec import encode
from planchet.embedded import RedisProcess
from planchet.exceptions import ConnectionLost
from planchet.messages import (
    PROTOCOL_VERSION,
    Batch,
    Credit,
    Error,
    Event,
    Goodbye,
    Hello,
    JobCommand,
    Reply,
    Result,
    Welcome,
)
from planchet.server import RESTART_HINT, PlanchetServer
from planchet.session import ClientSession
from tests.support import queued_types
from tests.test_server import (
    LINES,
    WAIT,
    MakeServer,
    output_ids,
    recv,
    refused,
    report,
    request,
    start_job,
    url_of,
)


async def hello(server: PlanchetServer, session: str | None = None, leases: list[str] = (),
                token: str | None = None) -> tuple[ClientConnection, Welcome]:
    """A resumable connection (resuming ``session``, holding ``leases``) and its welcome."""
    ws = await connect(url_of(server), max_size=None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, token=token, resumable=True,
                               session=session, leases=list(leases))))
    welcome = await recv(ws)
    assert isinstance(welcome, Welcome)
    return ws, welcome


async def batches(ws: ClientConnection, n: int) -> list[Batch]:
    got = [await recv(ws) for _ in range(n)]
    assert all(isinstance(b, Batch) for b in got), got
    return got  # type: ignore[return-value]


async def settle(ws: ClientConnection, batch: Batch) -> None:
    await ws.send(encode(Result(job=batch.job, lease=batch.lease, items=batch.items)))


async def finish(ws: ClientConnection, pending: list[Batch]) -> None:
    """Settle ``pending`` and every batch that follows until the job is done."""
    for batch in pending:
        await settle(ws, batch)
    while not isinstance(message := await recv(ws), Event) or message.event != "done":
        if isinstance(message, Batch):
            await settle(ws, message)


def errors_of(data_dir: Path) -> list[int]:
    path = data_dir / "out.jsonl.errors.jsonl"
    return [orjson.loads(line)["id"] for line in path.read_bytes().splitlines()] \
        if path.exists() else []


async def test_a_vanished_session_resumes_with_its_leases_and_credit(
    make_server: MakeServer, issues_input: Path, data_dir: Path
) -> None:
    """A resumable session that drops without a close gets ``resumed:true`` under the same
    id; the lease it did not list comes again (same id, same items), the listed one stays
    its own, its credit goes on, and no attempt is charged (max_attempts 1)."""
    server = await make_server(resume_grace=WAIT, crash_grace=0.0)
    ws, welcome = await hello(server)
    assert welcome.session and len(welcome.session) == 32 and not welcome.resumed
    assert welcome.resume_grace == WAIT
    assert isinstance(await request(ws, start_job(max_attempts=1)), Reply)
    await ws.send(encode(Credit(job="j", batches=2)))
    kept, lost = await batches(ws, 2)
    ws.transport.abort()

    ws, again = await hello(server, welcome.session, [kept.lease])
    assert (again.session, again.resumed) == (welcome.session, True)
    [resent] = await batches(ws, 1)
    assert (resent.lease, resent.items) == (lost.lease, lost.items)
    await finish(ws, [kept, resent])  # no credit sent: the old one goes on
    await ws.close()
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    assert errors_of(data_dir) == []


async def test_a_plain_hello_gets_no_session(server: PlanchetServer) -> None:
    """A hello that does not ask to be resumable gets no session id."""
    ws = await connect(url_of(server), max_size=None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION)))
    welcome = await recv(ws)
    assert isinstance(welcome, Welcome)
    assert (welcome.session, welcome.resumed) == (None, False)
    await ws.close()


@pytest.mark.parametrize(("close", "queued", "failed"), [(None, 5, 5), (1001, 10, 0)])
async def test_after_the_grace_the_leases_go_back_as_the_ending_says(
    make_server: MakeServer, issues_input: Path, close: int | None, queued: int, failed: int
) -> None:
    """Past the grace a parked session's leases are requeued: a vanished one is charged
    on its oldest lease, one that closed with 1001 is not; a late resume is refused."""
    server = await make_server(resume_grace=0.2, crash_grace=0.0)
    admin, _ = await hello(server)
    assert isinstance(await request(admin, start_job(max_attempts=1)), Reply)
    ws, welcome = await hello(server)
    await ws.send(encode(Credit(job="j", batches=2)))
    await batches(ws, 2)
    if close is None:
        ws.transport.abort()
    else:
        await ws.close(close)

    async def released() -> bool:
        state = await report(admin)
        return (state["queued"], state["in_flight"], state["failed"]) == (queued, 0, failed)

    await asyncio.wait_for(_poll(released), WAIT)
    late, again = await hello(server, welcome.session)
    assert not again.resumed and again.session not in (None, welcome.session)
    await late.close()
    await admin.close()


async def _poll(check) -> None:  # type: ignore[no-untyped-def]
    while not await check():
        await asyncio.sleep(0.01)


async def test_a_goodbye_with_1000_is_not_parked(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A resumable session that says goodbye (1000) gives its leases back at once."""
    server = await make_server(resume_grace=WAIT)
    admin, _ = await hello(server)
    assert isinstance(await request(admin, start_job()), Reply)
    ws, welcome = await hello(server)
    await ws.send(encode(Credit(job="j", batches=2)))
    await batches(ws, 2)
    await ws.close(1000)

    async def released() -> bool:
        state = await report(admin)
        return (state["queued"], state["in_flight"]) == (10, 0)

    await asyncio.wait_for(_poll(released), WAIT)
    late, again = await hello(server, welcome.session)
    assert not again.resumed
    await late.close()
    await admin.close()


async def test_the_old_connection_gets_4001_when_its_session_moves(
    make_server: MakeServer, issues_input: Path
) -> None:
    """Resuming a session whose connection is still open closes that one with 4001 and
    sends every lease again on the new one."""
    server = await make_server(resume_grace=WAIT)
    old, welcome = await hello(server)
    assert isinstance(await request(old, start_job()), Reply)
    await old.send(encode(Credit(job="j", batches=2)))
    held = await batches(old, 2)
    new, again = await hello(server, welcome.session)
    assert again.resumed
    resent = await batches(new, 2)
    assert sorted(b.lease for b in resent) == sorted(b.lease for b in held)
    _, code = await refused(old)
    assert code == 4001
    await new.close()


async def test_a_wrong_token_does_not_resume_a_protected_job(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A session resumed with a token that may not take the job does not get its leases:
    they are released (vanished, within the crash grace: free) and nothing is resent."""
    server = await make_server(resume_grace=WAIT, crash_grace=WAIT)
    ws, welcome = await hello(server, token="s3cret")
    assert isinstance(await request(ws, start_job(token="s3cret")), Reply)
    await ws.send(encode(Credit(job="j", batches=2)))
    await batches(ws, 2)
    ws.transport.abort()

    thief, again = await hello(server, welcome.session, token="wrong")
    assert again.resumed
    owner, _ = await hello(server, token="s3cret")

    async def released() -> bool:
        state = await report(owner)
        return (state["queued"], state["in_flight"], state["failed"]) == (10, 0, 0)

    await asyncio.wait_for(_poll(released), WAIT)
    await thief.send(encode(JobCommand(type="report", id=5, job="j")))
    assert isinstance(await recv(thief), Reply)  # the first frame after the welcome: no batch
    await thief.close()
    await owner.close()


async def test_goodbye_comes_before_1001_on_stop(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A server that stops says goodbye, with a retry_after, before it closes with 1001."""
    server = await make_server()
    ws, _ = await hello(server)
    await server.stop()
    frames, code = await refused(ws)
    assert frames == [Goodbye(reason="server shutting down", retry_after=RESTART_HINT)]
    assert code == 1001


async def test_unavailable_errors_carry_retry_after(
    server: PlanchetServer, issues_input: Path, redis_proc: RedisProcess
) -> None:
    """An ``unavailable`` error says when to try again (the maintenance tick); other
    errors say nothing."""
    ws, _ = await hello(server)
    assert isinstance(await request(ws, start_job()), Reply)
    missing = await request(ws, JobCommand(type="pause", id=2, job="nope"))
    assert isinstance(missing, Error) and missing.retry_after is None
    redis_proc.kill()
    refused_now = await request(ws, JobCommand(type="delete", id=3, job="j"))
    assert isinstance(refused_now, Error) and refused_now.code == "unavailable"
    assert refused_now.retry_after == server.settings.tick
    await ws.close()


# --- the Python clients -----------------------------------------------------------------


async def test_a_worker_that_blips_again_and_again_loses_nothing(
    make_server: MakeServer, issues_input: Path, data_dir: Path
) -> None:
    """The asyncio client, its socket killed every few batches, resumes each time: every
    id is written exactly once and no attempt is charged (max_attempts 1)."""
    server = await make_server(resume_grace=WAIT, crash_grace=0.0)
    blips = 0
    async with AsyncPlanchetClient(url_of(server)) as client:
        await client.start_job("j", {"input_file_path": "in.jsonl",
                                     "output_file_path": "out.jsonl"},
                               "JsonlReader", "JsonlWriter", batch_size=20, max_attempts=1)
        name = client._session.name
        async for n, batch in _numbered(client.batches("j", prefetch=3)):
            if n % 4 == 1:
                blips += 1
                assert client._ws is not None
                client._ws.transport.abort()  # mid-batch: the result goes after the resume
            await batch.ack([(i, item) for i, item in batch.items])
        assert client._session.name == name  # every reconnect resumed the same session
    assert blips >= 5
    assert output_ids(data_dir / "out.jsonl") == list(range(LINES))
    assert errors_of(data_dir) == []


async def _numbered(source):  # type: ignore[no-untyped-def]
    n = 0
    async for item in source:
        yield n, item
        n += 1


def test_client_session_resumes_or_forgets_its_leases() -> None:
    """The sans-I/O session names itself and its held leases in the next hello, keeps
    them when resumed, answers their results as dropped when not; a goodbye's
    retry_after sets the next delay."""
    def frame(**fields: object) -> bytes:
        return orjson.dumps(fields)

    session = ClientSession("t")
    session.welcome(frame(type="welcome", server="t", max_message_bytes=1024, session="s1",
                          resume_grace=9.0, resumed=False))
    session.receive(frame(type="batch", job="a", lease="L", items=[[0, 1], [1, 2]],
                          lease_timeout=9.0))
    assert session.take_batch("a").lease == "L"  # type: ignore[union-attr]
    session.receive(frame(type="batch", job="a", lease="Q", items=[[2, 3]], lease_timeout=9.0))
    session.disconnected()  # Q was never handed out: the server sends it again
    sent = session.result(Result(job="a", lease="L", items=[(0, "x")]))
    first = session.hello()
    assert (first.resumable, first.session, first.leases) == (True, "s1", ["L"])
    session.welcome(frame(type="welcome", server="t", max_message_bytes=1024, session="s1",
                          resume_grace=9.0, resumed=True))
    assert session.holds("a", "L", 1) and queued_types(session) == ["result"]
    session.receive(frame(type="ack", job="a", lease="L", written=1))
    assert session.answer(sent).written == 1  # type: ignore[union-attr]

    session.receive(frame(type="goodbye", reason="bye", retry_after=3.0))
    session.disconnected()
    late = session.result(Result(job="a", lease="L", items=[(1, "y")]))
    assert session.next_delay(5) == 3.0
    session.welcome(frame(type="welcome", server="t", max_message_bytes=1024, session="s2",
                          resume_grace=9.0, resumed=False))
    assert session.answer(late).dropped == 1  # type: ignore[union-attr]
    assert session.hello().session == "s2" and not session.holds("a", "L", 1)


async def test_a_python_client_whose_session_moved_stops_instead_of_taking_it_back(
    make_server: MakeServer, issues_input: Path
) -> None:
    """4001 is final for the Python clients: the connection whose session was resumed
    elsewhere raises ConnectionLost instead of reconnecting and stealing it back."""
    server = await make_server(resume_grace=WAIT)
    async with AsyncPlanchetClient(url_of(server)) as client:
        await client.jobs()
        name = client._session.name
        assert name is not None
        new, again = await hello(server, name)
        assert again.resumed
        with pytest.raises(ConnectionLost, match="resumed on another connection"):
            async with asyncio.timeout(30):  # until the 4001 has reached the client
                while True:
                    await client.jobs()
        await new.close()
