"""Worker tokens over real sockets: what they may do, who may make them, how they end."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import redis.asyncio
from websockets.asyncio.client import ClientConnection

from planchet.aclient import AsyncPlanchetClient
from planchet.client import PlanchetClient
from planchet.codec import encode
from planchet.messages import (
    Ack,
    Batch,
    Credit,
    Error,
    Extend,
    Grant,
    JobCommand,
    Message,
    Release,
    Reply,
    Result,
    Revoke,
    ServerCommand,
    Tokens,
)
from planchet.server import PlanchetServer
from planchet.store import Store
from tests.support import eventually
from tests.test_server import greet, recv, request, start_job, url_of
from tests.test_server import refused as closed

MakeServer = Callable[..., Awaitable[PlanchetServer]]
MASTER = "master-7f3a"
ADMIN_J, ADMIN_K = "admin-of-j-19", "admin-of-k-23"
WORKER_ONLY = "a worker token may only take batches and send results"


async def ok(ws: ClientConnection, message: Message) -> Any:
    """Send a request that must succeed; its reply's data."""
    answer = await request(ws, message)
    assert isinstance(answer, Reply), answer
    return answer.data


async def refused(ws: ClientConnection, message: Message) -> str:
    """Send a request that must be refused as unauthorized; the error's message."""
    answer = await request(ws, message)
    assert isinstance(answer, Error) and answer.code == "unauthorized", answer
    return answer.message


async def guarded(make_server: MakeServer) -> tuple[PlanchetServer, ClientConnection]:
    """A server with a master token, jobs j and k with admin tokens; the master's socket."""
    server = await make_server(token=MASTER)
    master = await greet(server, token=MASTER)
    await ok(master, start_job("j", token=ADMIN_J))
    await ok(master, start_job("k", id=2, token=ADMIN_K,
                               metadata={"input_file_path": "in.jsonl",
                                         "output_file_path": "k.jsonl"}))
    return server, master


async def batch(ws: ClientConnection) -> Batch:
    message = await recv(ws)
    assert isinstance(message, Batch), message
    return message


async def test_a_worker_token_takes_batches_and_sends_results_only(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A worker token can credit, settle, release and extend, and is refused anything else."""
    server, master = await guarded(make_server)
    granted = await ok(master, Grant(id=3, jobs=["j"], label="volunteers"))
    assert set(granted) == {"key", "token", "jobs", "label", "created"}
    assert (granted["jobs"], granted["label"]) == (["j"], "volunteers")
    assert granted["token"].startswith(f"pw_{granted['key']}_")
    worker = await greet(server, token=granted["token"])

    await worker.send(encode(Credit(job="j", batches=1, batch_size=5)))
    first = await batch(worker)
    await worker.send(encode(Result(job="j", lease=first.lease, items=first.items)))
    ack = await recv(worker)
    assert isinstance(ack, Ack) and ack.written == 5
    second = await batch(worker)
    held = await ok(worker, Extend(id=4, job="j", lease=second.lease, seconds=30.0))
    assert held["held"] is True
    released = await ok(worker, Release(id=5, job="j", lease=second.lease))
    assert released["released"] == len(second.items)
    assert (await ok(worker, JobCommand(type="report", id=6, job="j")))["written"] == 5

    forbidden: list[Message] = [
        *(JobCommand(type=op, id=7, job="j") for op in ("pause", "resume", "delete", "clean")),
        start_job("j", id=8), Grant(id=9, jobs=["j"]), Tokens(id=10, job="j"),
        Tokens(id=11), Revoke(id=12, key=granted["key"]),
        *(ServerCommand(type=op, id=13) for op in ("jobs", "purge")),
    ]
    for message in forbidden:
        assert await refused(worker, message) == WORKER_ONLY, message
    assert sorted(j["job"] for j in await ok(master, ServerCommand(type="jobs", id=14))) == [
        "j", "k"]
    for ws in (master, worker):
        await ws.close()


async def test_a_worker_token_for_one_job_cannot_touch_another(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A token granted for j is refused on k, whether it came in hello or in the message."""
    server, master = await guarded(make_server)
    token = (await ok(master, Grant(id=3, jobs=["j"])))["token"]
    anonymous = await greet(server)
    await anonymous.send(encode(Credit(job="k", batches=1, token=token)))
    error = await recv(anonymous)
    assert isinstance(error, Error) and error.code == "unauthorized"
    assert error.message == "this worker token is not for job k"
    assert await refused(anonymous, Extend(id=4, job="k", lease="x", token=token))
    await anonymous.send(encode(Credit(job="j", batches=1, token=token)))
    await batch(anonymous)  # the same token in the message works on its own job
    for ws in (master, anonymous):
        await ws.close()


async def test_a_revoked_token_stops_working_at_once(
    make_server: MakeServer, issues_input: Path
) -> None:
    """After revoke, a connection that said hello with the token is closed with 1008 and
    its batch goes back free; any later message with the token is refused; a forged
    secret too."""
    server, master = await guarded(make_server)
    granted = await ok(master, Grant(id=3, jobs=["j"]))
    worker = await greet(server, token=granted["token"])
    await worker.send(encode(Credit(job="j", batches=1)))
    held = await batch(worker)

    admin_k = await greet(server, token=ADMIN_K)
    assert await refused(admin_k, Revoke(id=4, key=granted["key"])) == "wrong token for job j"
    admin_j = await greet(server, token=ADMIN_J)
    assert await ok(admin_j, Revoke(id=5, key=granted["key"])) == {"revoked": granted["key"]}

    _, code = await closed(worker)
    assert code == 1008 and worker.close_reason == "worker token revoked"
    await eventually(lambda: server.dispatcher.jobs["j"].queued == len(held.items),
                     "the revoked worker's batch is queued again")
    report = await ok(admin_j, JobCommand(type="report", id=9, job="j"))
    assert report["failed"] == 0  # handed back free: revoking is not the worker's fault

    late = await greet(server)
    await late.send(encode(Result(job="j", lease=held.lease, items=held.items,
                                  token=granted["token"])))
    error = await recv(late)
    assert isinstance(error, Error) and error.code == "unauthorized"
    assert "unknown or revoked worker token" in error.message
    assert await refused(late, Extend(id=6, job="j", lease=held.lease,
                                      token=granted["token"]))
    again = await request(admin_j, Revoke(id=7, key=granted["key"]))
    assert isinstance(again, Error) and again.code == "bad_request"

    other = await ok(master, Grant(id=8, jobs=["j"]))
    forged = f"pw_{other['key']}_{'A' * 43}"
    anonymous = await greet(server)
    await anonymous.send(encode(Credit(job="j", batches=1, token=forged)))
    error = await recv(anonymous)
    assert isinstance(error, Error) and error.code == "unauthorized"
    for ws in (master, admin_k, admin_j, late, anonymous):
        await ws.close()


async def test_a_revoke_also_cuts_off_a_connection_that_named_the_token_per_message(
    make_server: MakeServer, issues_input: Path
) -> None:
    """A connection with no hello token whose credit named the worker token is closed
    with 1008 on revoke too, and its batch goes back free instead of expiring charged."""
    server, master = await guarded(make_server)
    granted = await ok(master, Grant(id=3, jobs=["j"]))
    worker = await greet(server)
    await worker.send(encode(Credit(job="j", batches=1, token=granted["token"])))
    held = await batch(worker)
    admin_j = await greet(server, token=ADMIN_J)
    await ok(admin_j, Revoke(id=5, key=granted["key"]))
    _, code = await closed(worker)
    assert code == 1008
    await eventually(lambda: server.dispatcher.jobs["j"].queued == len(held.items),
                     "the revoked worker's batch is queued again")
    assert (await ok(admin_j, JobCommand(type="report", id=9, job="j")))["failed"] == 0
    for ws in (master, admin_j):
        await ws.close()


async def test_who_may_grant_list_and_revoke(
    make_server: MakeServer, issues_input: Path
) -> None:
    """grant/revoke need every job's admin token (or master); listing all needs master."""
    server, master = await guarded(make_server)
    admin_j, stranger = await greet(server, token=ADMIN_J), await greet(server)
    mine = await ok(admin_j, Grant(id=3, jobs=["j", "j"]))
    assert mine["jobs"] == ["j"]
    assert await refused(admin_j, Grant(id=4, jobs=["j", "k"])) == "wrong token for job k"
    assert await refused(stranger, Grant(id=5, jobs=["j"])) == "job j needs its token"
    nowhere = await request(master, Grant(id=6, jobs=["nope"]))
    assert isinstance(nowhere, Error) and nowhere.code == "job_not_found"
    both = await ok(master, Grant(id=7, jobs=["j", "k"], label="two"))

    assert [g["key"] for g in await ok(admin_j, Tokens(id=8, job="j"))] == [
        mine["key"], both["key"]]
    assert "master token" in await refused(admin_j, Tokens(id=9))
    assert await refused(stranger, Tokens(id=10, job="k")) == "job k needs its token"
    assert [g["key"] for g in await ok(master, Tokens(id=11))] == [mine["key"], both["key"]]
    assert [g["key"] for g in await ok(master, Tokens(id=12, job="k"))] == [both["key"]]

    assert await refused(admin_j, Revoke(id=13, key=both["key"])) == "wrong token for job k"
    assert await ok(admin_j, Revoke(id=14, key=both["key"], token=MASTER))
    assert await ok(master, Tokens(id=15)) == [
        {"key": mine["key"], "jobs": ["j"], "label": None, "created": mine["created"]}]
    for ws in (master, admin_j, stranger):
        await ws.close()


async def test_an_open_server_stays_open_but_a_worker_token_stays_a_worker(
    server: PlanchetServer, issues_input: Path
) -> None:
    """No master or job token: anyone may grant, list and revoke; a worker still may not pause."""
    anyone = await greet(server)
    await ok(anyone, start_job())
    granted = await ok(anyone, Grant(id=3, jobs=["j"]))
    assert len(await ok(anyone, Tokens(id=4))) == 1
    worker = await greet(server, token=granted["token"])
    assert await refused(worker, JobCommand(type="pause", id=5, job="j")) == WORKER_ONLY
    await worker.send(encode(Credit(job="j", batches=1)))
    await batch(worker)
    assert await ok(anyone, Revoke(id=6, key=granted["key"]))
    assert await ok(anyone, Tokens(id=7)) == []
    for ws in (anyone, worker):
        await ws.close()


async def test_worker_tokens_survive_a_restart_and_redis_keeps_no_secret(
    make_server: MakeServer, issues_input: Path, redis_client: redis.asyncio.Redis
) -> None:
    """A new server over the same Redis honours the token; Redis holds its digest only."""
    first, master = await guarded(make_server)
    granted = await ok(master, Grant(id=3, jobs=["j"], label="lab"))
    await master.close()
    await first.stop()
    stored = str(await redis_client.hgetall("planchet:workers"))
    assert granted["token"] not in stored
    assert hashlib.sha256(granted["token"].encode()).hexdigest() in stored

    second = await make_server(token=MASTER)
    worker = await greet(second, token=granted["token"])
    await worker.send(encode(Credit(job="j", batches=1)))
    await batch(worker)
    master = await greet(second, token=MASTER)
    listed = await ok(master, Tokens(id=4))
    assert listed == [{k: granted[k] for k in ("key", "jobs", "label", "created")}]
    for ws in (master, worker):
        await ws.close()


async def test_the_list_never_shows_a_secret(
    make_server: MakeServer, issues_input: Path
) -> None:
    """The raw frame of a tokens reply holds neither the token nor its digest."""
    _, master = await guarded(make_server)
    token = (await ok(master, Grant(id=3, jobs=["j", "k"])))["token"]
    await master.send(encode(Tokens(id=4, job="j")))
    frame = await asyncio.wait_for(master.recv(), 20)
    raw = frame.encode() if isinstance(frame, str) else frame
    secret = token.split("_", 2)[2]  # pw_<key>_<secret>; the secret may hold "_" itself
    assert secret.encode() not in raw
    assert hashlib.sha256(token.encode()).hexdigest().encode() not in raw
    await master.close()


async def test_deleting_a_job_takes_it_out_of_every_grant(
    make_server: MakeServer, issues_input: Path, store: Store
) -> None:
    """clean keeps grants; delete drops the job from each and a grant left empty goes."""
    server, master = await guarded(make_server)
    only_j = await ok(master, Grant(id=3, jobs=["j"]))
    j_and_k = await ok(master, Grant(id=4, jobs=["j", "k"]))
    await ok(master, JobCommand(type="clean", id=5, job="j"))
    assert len(await ok(master, Tokens(id=6, job="j"))) == 2

    await ok(master, JobCommand(type="delete", id=7, job="j"))
    assert [(g["key"], g["jobs"]) for g in await ok(master, Tokens(id=8))] == [
        (j_and_k["key"], ["k"])]
    assert set(await store.worker_tokens()) == {j_and_k["key"]}
    await ok(master, start_job("j", id=9, token=ADMIN_J))  # a new job of the same name
    worker = await greet(server, token=only_j["token"])
    await worker.send(encode(Credit(job="j", batches=1)))
    error = await recv(worker)
    assert isinstance(error, Error) and error.code == "unauthorized"

    await ok(master, ServerCommand(type="purge", id=10))
    assert await ok(master, Tokens(id=11)) == []
    assert await store.worker_tokens() == {}
    for ws in (master, worker):
        await ws.close()


async def test_a_grant_of_a_lost_job_is_pruned_when_the_server_starts(
    make_server: MakeServer, issues_input: Path, store: Store
) -> None:
    """A grant naming a job Redis no longer has (a delete cut short) loses that job on load."""
    record = {"digest": "0" * 64, "created": 1.0, "label": None}
    await store.write_worker_tokens({"aaaaaaaaaaaa": {**record, "jobs": ["gone"]},
                                     "bbbbbbbbbbbb": {**record, "jobs": ["gone", "j"]},
                                     "cccccccccccc": {"not": "a grant"}})
    server = await make_server()
    ws = await greet(server)
    assert await ok(ws, Tokens(id=1)) == []  # j did not exist either when it loaded
    stored = await store.worker_tokens()
    assert set(stored) == {"cccccccccccc"}  # unreadable: logged and left alone
    await ws.close()


async def test_the_python_clients_grant_list_and_revoke(
    make_server: MakeServer, issues_input: Path
) -> None:
    """grant_token, worker_tokens and revoke_token on both clients; the token takes batches."""
    server, master = await guarded(make_server)
    url = url_of(server)
    async with AsyncPlanchetClient(url, MASTER) as admin:
        granted = await admin.grant_token("j", label="async")
        assert [g["label"] for g in await admin.worker_tokens("j")] == ["async"]

    def blocking() -> tuple[list[Any], dict[str, Any], list[dict[str, Any]]]:
        with PlanchetClient(url, granted["token"]) as worker:
            items = worker.get("j", 3)
        with PlanchetClient(url, ADMIN_J) as admin_j:
            sync = admin_j.grant_token(["j"], label="sync")
            revoked = admin_j.revoke_token(granted["key"])
            return items, revoked, [sync, *admin_j.worker_tokens("j")]

    items, revoked, (sync, *listed) = await asyncio.to_thread(blocking)
    assert len(items) == 3 and revoked == {"revoked": granted["key"]}
    assert [g["key"] for g in listed] == [sync["key"]]
    async with AsyncPlanchetClient(url, MASTER) as admin:
        assert await admin.revoke_token(sync["key"]) == {"revoked": sync["key"]}
        assert await admin.worker_tokens() == []
    await master.close()
