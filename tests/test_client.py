"""The blocking client against a real server (in a thread) and a real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from planchet import AuthError, BadRequest, JobNotFound, PathRefused, PlanchetClient
from planchet.config import Settings
from planchet.connecting import websocket_url
from planchet.embedded import free_port
from planchet.messages import Credit, Result, ServerCommand
from planchet.progress import Progress
from planchet.server import PlanchetServer
from planchet.session import DONE, ClientSession
from planchet.store import Store
from tests.support import queued_types, wait_until

META = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


class ThreadedServer:
    """A PlanchetServer on its own event loop thread, so blocking clients can call it."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.server: PlanchetServer | None = None
        self.url = f"http://127.0.0.1:{settings.port}"

    def _run(self, coro):  # type: ignore[no-untyped-def]
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(30)

    def start(self) -> None:
        async def start() -> PlanchetServer:
            assert self.settings.redis_url
            server = PlanchetServer(self.settings, Store.from_url(self.settings.redis_url))
            await server.start()
            return server

        self.server = self._run(start())

    def stop(self) -> None:
        if self.server is not None:
            server, self.server = self.server, None
            self._run(server.stop())
            self._run(server.store.close())

    def close(self) -> None:
        self.stop()
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join()


@pytest.fixture
def served(data_dir: Path, redis_url: str, shared_data: Path) -> Iterator[ThreadedServer]:
    (data_dir / "in.jsonl").write_bytes((shared_data / "news_headlines.jsonl").read_bytes())
    settings = Settings.load(env={}, data_dir=data_dir, port=free_port(), redis_url=redis_url,
                             tick=0.05)
    srv = ThreadedServer(settings)
    srv.start()
    yield srv
    srv.close()


def output_ids(data_dir: Path) -> list[int]:
    return sorted(orjson.loads(line)["id"] for line in (data_dir / "out.jsonl").read_bytes()
                  .splitlines())


def test_urls_of_the_original_work() -> None:
    """The original's http:// URLs and bare host:port become WebSocket URLs."""
    assert websocket_url("http://localhost:5005") == "ws://localhost:5005"
    assert websocket_url("https://example.org/x") == "wss://example.org/x"
    assert websocket_url("localhost:5005") == "ws://localhost:5005"
    assert websocket_url("ws://h:1") == "ws://h:1"


def test_original_script_shape(served: ThreadedServer, data_dir: Path) -> None:
    """The original get/send loop processes a whole job, and done stays done."""
    client = PlanchetClient(served.url)
    client.start_job("ner", META, "JsonlReader", writer_name="JsonlWriter")
    items = client.get("ner", 30)
    while items:
        client.send("ner", [(i, {**item, "n": len(item["text"])}) for i, item in items])
        items = client.get("ner", 30)
    report = client.get_job_report("ner")
    assert (report["status"], report["received"], report["written"]) == ("COMPLETE", 200, 200)
    assert output_ids(data_dir) == list(range(200))
    assert client.get("ner", 30) == []  # done stays done
    health = client.check()
    assert (health["redis"], health["jobs_done"]) == ("online", 1)
    client.close()


def test_push_batches_acked_without_waiting_write_each_item_once(served: ThreadedServer,
                                                                  data_dir: Path) -> None:
    """The blocking push API: batches acked with ack_nowait get the whole job written,
    each id once, and progress still counts every ack; ack answers what was written."""
    seen: list[Progress] = []
    with PlanchetClient(served.url) as client:
        client.start_job("push", META, "JsonlReader", writer_name="JsonlWriter", batch_size=30)
        for n, batch in enumerate(client.batches("push", prefetch=2, progress=seen.append)):
            if n == 0:
                assert batch.ack(batch.items).written == 30
            else:
                batch.ack_nowait([(i, len(item["text"])) for i, item in batch.items])
        assert client.get_job_report("push")["state"] == "done"
    assert output_ids(data_dir) == list(range(200))
    assert seen[-1].final and seen[-1].done == 200


def test_closing_sends_what_ack_nowait_queued(served: ThreadedServer, data_dir: Path) -> None:
    """Results sent without waiting are written even if the worker closes right after."""
    with PlanchetClient(served.url) as client:
        client.start_job("last", META, "JsonlReader", writer_name="JsonlWriter", batch_size=40)
        batch = next(iter(client.batches("last", prefetch=1)))
        batch.ack_nowait(batch.items)
    wait_until(lambda: (data_dir / "out.jsonl").exists() and len(output_ids(data_dir)) >= 40,
               "the 40 results written")
    assert output_ids(data_dir) == list(range(40))


def test_resume_by_every_worker_and_several_batches_held(served: ThreadedServer,
                                                          data_dir: Path) -> None:
    """Every worker may call start_job, and one worker may hold several batches at once."""
    first, second = PlanchetClient(served.url), PlanchetClient(served.url)
    first.start_job("j", META, "JsonlReader", writer_name="JsonlWriter")
    second.start_job("j", META, "JsonlReader", writer_name="JsonlWriter")  # resumes
    a, b = first.get("j", 50), first.get("j", 50)  # two batches held at once
    c = second.get("j", 100)
    assert len({i for i, _ in a + b + c}) == 200
    assert first.send("j", a + b)["written"] == 100
    assert second.send("j", c + c[:5])["written"] == 100
    assert first.get("j", 10) == []
    assert output_ids(data_dir) == list(range(200))


def test_errors_raise_clearly(served: ThreadedServer) -> None:
    """Server errors raise their PlanchetError subclass and the connection survives them."""
    client = PlanchetClient(served.url)
    with pytest.raises(JobNotFound):
        client.get("nope", 10)
    with pytest.raises(PathRefused):
        client.start_job("x", {"input_file_path": "../../etc/passwd",
                               "output_file_path": "o.jsonl"}, "JsonlReader",
                         writer_name="JsonlWriter")
    client.start_job("secret", META, "JsonlReader", writer_name="JsonlWriter", token="s3")
    with pytest.raises(AuthError):
        client.get("secret", 10)
    with pytest.raises(AuthError):
        client.get("secret", 10, token="wrong")
    assert len(client.get("secret", 10, token="s3")) == 10
    with pytest.raises(BadRequest):  # ids never leased to this client
        client.send("secret", [(150, {})], token="s3")
    assert client.get_job_report("secret")["in_flight"] == 10  # the connection survived


def test_mark_errors_sends_items_to_the_error_file(served: ThreadedServer,
                                                   data_dir: Path) -> None:
    """mark_errors sends items to the error file, not back to the queue."""
    client = PlanchetClient(served.url)
    client.start_job("e", META, "JsonlReader", writer_name="JsonlWriter")
    items = client.get("e", 200)
    bad = [i for i, _ in items if i % 10 == 0]
    assert client.mark_errors("e", bad)["failed"] == 20
    client.send("e", [(i, item) for i, item in items if i % 10])
    assert client.get("e", 10) == []
    errors = [orjson.loads(x) for x in (data_dir / "out.jsonl.errors.jsonl").read_bytes()
              .splitlines()]
    assert sorted(e["id"] for e in errors) == bad
    assert len(output_ids(data_dir)) == 180


def test_reconnects_after_a_server_restart(served: ThreadedServer, data_dir: Path) -> None:
    """After a graceful restart, held results come back dropped; the job finishes exactly once."""
    client = PlanchetClient(served.url, retries=20)
    client.start_job("r", META, "JsonlReader", writer_name="JsonlWriter")
    held = client.get("r", 40)
    served.stop()  # graceful: the server requeues what the client held
    served.start()
    ack = client.send("r", held)  # that lease is gone: dropped, not written
    assert ack["dropped"] == 40 and ack["written"] == 0
    items = client.get("r", 40)
    while items:
        client.send("r", items)
        items = client.get("r", 40)
    assert output_ids(data_dir) == list(range(200))


def test_delete_and_clean(served: ThreadedServer, data_dir: Path) -> None:
    """clean empties the output and starts over; delete forgets the job."""
    client = PlanchetClient(served.url)
    client.start_job("d", META, "JsonlReader", writer_name="JsonlWriter")
    client.send("d", client.get("d", 100))
    report = client.clean_job("d")
    assert (report["written"], report["read"]) == (0, 0)
    assert (data_dir / "out.jsonl").read_bytes() == b""
    client.delete_job("d")
    with pytest.raises(JobNotFound):
        client.get_job_report("d")
    assert client.list_jobs() == []


def test_a_job_deleted_under_a_worker_raises(served: ThreadedServer) -> None:
    """A worker waiting on a job that gets deleted hears JobNotFound."""
    worker, admin = PlanchetClient(served.url), PlanchetClient(served.url)
    worker.start_job("gone", META, "JsonlReader", writer_name="JsonlWriter")
    worker.get("gone", 100)
    worker.get("gone", 100)  # every item now held: the next get waits for more
    admin.delete_job("gone")
    with pytest.raises(JobNotFound, match="deleted"):
        worker.get("gone", 100)


# --- the sans-I/O session both clients wrap ---------------------------------------------


def frame(**fields: object) -> bytes:
    return orjson.dumps(fields)


WELCOME = frame(type="welcome", server="t", max_message_bytes=1024)


def test_session_matches_acks_in_order_per_job_and_forgets_leases_on_reconnect() -> None:
    """Acks go to the results of their job in send order; after a reconnect a result for
    an old lease is answered as dropped at once, and requests are queued again."""
    session = ClientSession("t")
    session.welcome(WELCOME)
    session.receive(frame(type="batch", job="a", lease="L", items=[[0, 1], [1, 2], [2, 3]],
                          lease_timeout=9.0))
    assert session.take_batch("a").lease == "L"  # type: ignore[union-attr]
    first = session.result(Result(job="a", lease="L", items=[(0, "x")]))
    second = session.result(Result(job="a", lease="L", items=[(1, "y")]))
    other = session.result(Result(job="b", lease=None, items=[(7, "z")]))
    session.receive(frame(type="ack", job="a", lease="L", written=1))
    session.receive(frame(type="ack", job="b", lease=None, dropped=1))
    assert session.answer(first).written == 1  # type: ignore[union-attr]
    assert session.answer(other).dropped == 1  # type: ignore[union-attr]
    request = session.request(ServerCommand(type="jobs", id=session.next_id()))
    session.disconnected()
    assert session.answer(second).dropped == 1  # type: ignore[union-attr]
    stale = session.result(Result(job="a", lease="L", items=[(2, "w")]))
    assert session.answer(stale).dropped == 1  # type: ignore[union-attr]
    session.welcome(WELCOME)
    assert queued_types(session) == ["jobs"]
    session.receive(frame(type="reply", id=request, data=[]))
    assert session.answer(request).data == []  # type: ignore[union-attr]


def test_session_counts_unwatched_results_and_ends_the_job_on_their_errors() -> None:
    """A result nobody waits for keeps no answer: its ack is only counted, it is sent
    again after a reconnect like any other, an 'unavailable' answer is shrugged off
    (its items come back), and any other error ends the job's batches, even after the
    connection it came on is gone."""
    session = ClientSession("t")
    session.welcome(frame(type="welcome", server="t", max_message_bytes=1024, session="s1"))
    session.credit(Credit(job="a", batches=2))
    session.take_outbox()
    session.receive(frame(type="batch", job="a", lease="L", items=[[0, 1], [1, 2], [2, 3]],
                          lease_timeout=9.0))
    written = session.result(Result(job="a", lease="L", items=[(0, "x")]), wait=False)
    session.receive(frame(type="ack", job="a", lease="L", written=1))
    assert not session.has_answer(written) and written not in session.pending
    session.result(Result(job="a", lease="L", items=[(1, "y")]), wait=False)
    session.receive(frame(type="error", job="a", code="unavailable", message="reloading"))
    assert session.take_batch("a") is not None  # the batch; the job goes on
    assert session.take_batch("a") is None
    with pytest.raises(BadRequest, match="no lease"):  # a write-only job's: must be waited for
        session.result(Result(job="b", lease=None, items=[(7, "z")]), wait=False)
    lost = session.result(Result(job="b", lease="M", items=[(7, "z")]), wait=False)
    session.disconnected()
    session.welcome(frame(type="welcome", server="t", max_message_bytes=1024, session="s1",
                          resumed=True))
    assert queued_types(session) == ["credit", "result"]  # sent again
    session.receive(frame(type="error", job="b", code="job_not_found", message="no job b"))
    assert not session.has_answer(lost)
    session.disconnected()  # the error outlives the connection it came on
    with pytest.raises(JobNotFound, match="no job b"):
        session.take_batch("b")


def test_session_ends_a_job_once_and_backs_off() -> None:
    """A deleted job raises once; 'done' stays until the job is asked for again; failed
    attempts back off, and only a frame after the welcome resets the count."""
    session = ClientSession()
    session.welcome(WELCOME)
    session.credit(Credit(job="a", batches=1))
    session.receive(frame(type="event", job="a", event="deleted"))
    with pytest.raises(JobNotFound):
        session.take_batch("a")
    assert session.take_batch("a") is None and "a" not in session.credits
    session.receive(frame(type="event", job="a", event="done"))
    assert session.take_batch("a") == DONE
    session.credit(Credit(job="a", batches=1))  # the job may have been cleaned since
    assert session.take_batch("a") is None
    delays = [session.next_delay(3) for _ in range(5)]
    assert delays == [0.0, 0.25, 0.5, 1.0, None]
    assert session.next_delay(3, hint=2.0) == 2.0  # Retry-After wins over a shorter wait
    session.receive(frame(type="event", job="a", event="paused"))
    assert session.next_delay(3) == 0.0


def test_blocking_worker_survives_kill_and_restart(serve_process, issues_input,
                                                   data_dir: Path) -> None:
    """Results of batches held across a kill -9 and restart are written or dropped, never
    an error, even when the same items come back in a new batch first; every id is
    written once."""
    with PlanchetClient(serve_process.url, retries=20) as client:
        client.start_job("k", META, "JsonlReader", writer_name="JsonlWriter")
        first, second = client.get("k", 25), client.get("k", 25)
        serve_process.kill()
        serve_process.start()
        third = client.get("k", 25)  # reconnects; the requeued items come back first
        answers = [client.send("k", first + second), client.send("k", third)]
        assert [a["written"] + a["dropped"] for a in answers] == [50, 25]
        items = client.get("k", 25)
        while items:
            client.send("k", items)
            items = client.get("k", 25)
    assert output_ids(data_dir) == list(range(830))
