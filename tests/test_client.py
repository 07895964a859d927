"""The blocking client against a real server (in a thread) and a real Redis."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from planchet import AuthError, BadRequest, JobNotFound, PathRefused, PlanchetClient
from planchet.client import websocket_url
from planchet.config import Settings
from planchet.embedded import free_port
from planchet.server import PlanchetServer
from planchet.store import Store

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
    assert websocket_url("http://localhost:5005") == "ws://localhost:5005"
    assert websocket_url("https://example.org/x") == "wss://example.org/x"
    assert websocket_url("localhost:5005") == "ws://localhost:5005"
    assert websocket_url("ws://h:1") == "ws://h:1"


def test_original_script_shape(served: ThreadedServer, data_dir: Path) -> None:
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


def test_resume_by_every_worker_and_several_batches_held(served: ThreadedServer,
                                                          data_dir: Path) -> None:
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
    worker, admin = PlanchetClient(served.url), PlanchetClient(served.url)
    worker.start_job("gone", META, "JsonlReader", writer_name="JsonlWriter")
    worker.get("gone", 100)
    worker.get("gone", 100)  # every item now held: the next get waits for more
    admin.delete_job("gone")
    with pytest.raises(JobNotFound, match="deleted"):
        worker.get("gone", 100)
