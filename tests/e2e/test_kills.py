"""Whole jobs with real processes: a server, worker processes, redis-server; kill any.

Each test ends by reading the output file: every input id exactly once, nothing in
the error file. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from planchet import PlanchetClient
from planchet.embedded import free_port

WORKER = Path(__file__).with_name("worker.py")
REPEAT = 10  # 200 headlines x 10 = 2,000 items


def wait_until(condition: Callable[[], object], timeout: float = 90, what: str = "") -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"gave up waiting for {what or condition}")
        time.sleep(0.05)


class ServerProcess:
    """``python -m planchet serve`` as a child process that a test can kill."""

    def __init__(self, data_dir: Path, redis_url: str | None) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        args = [sys.executable, "-m", "planchet", "serve", "--port", str(self.port),
                "--data-dir", str(self.data_dir)]
        if self.redis_url:
            args += ["--redis", self.redis_url]
        log = open(self.data_dir.parent / "server.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(args, stdout=log, stderr=log)
        log.close()
        wait_until(self.healthy, 30, "the server to answer /health")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                return True
        except OSError:
            return False

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=30)


@pytest.fixture
def job_input(data_dir: Path, shared_data: Path) -> int:
    text = (shared_data / "news_headlines.jsonl").read_text()
    (data_dir / "headlines.jsonl").write_text(text * REPEAT)
    return len(text.splitlines()) * REPEAT


@pytest.fixture
def server(data_dir: Path, redis_url: str) -> Iterator[ServerProcess]:
    srv = ServerProcess(data_dir, redis_url)
    srv.start()
    yield srv
    if srv.proc and srv.proc.poll() is None:
        srv.kill()


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, job: str = "kills", batch: int = 20, delay: float = 0.0):
        proc = subprocess.Popen([sys.executable, str(WORKER), url, job, str(batch), str(delay)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()


def start_job(url: str, **options: object) -> PlanchetClient:
    client = PlanchetClient(url, retries=40)
    client.start_job("kills", {"input_file_path": "headlines.jsonl",
                               "output_file_path": "out.jsonl"},
                     "JsonlReader", writer_name="JsonlWriter", **options)
    return client


def written(client: PlanchetClient) -> int:
    return client.get_job_report("kills")["written"]


def finish(procs: list[subprocess.Popen[bytes]]) -> None:
    for proc in procs:
        out, _ = proc.communicate(timeout=120)
        assert proc.returncode == 0, out.decode()


def assert_exactly_once(data_dir: Path, total: int) -> None:
    lines = (data_dir / "out.jsonl").read_bytes().splitlines()
    ids = sorted(orjson.loads(line)["id"] for line in lines)
    assert ids == list(range(total))
    assert (data_dir / "out.jsonl.errors.jsonl").read_bytes() == b""


def test_several_workers_process_a_job(server, workers, job_input, data_dir):
    client = start_job(server.url)
    finish([workers(server.url) for _ in range(3)])
    report = client.get_job_report("kills")
    assert (report["state"], report["written"], report["failed"]) == ("done", job_input, 0)
    assert_exactly_once(data_dir, job_input)


def test_worker_killed_mid_batch(server, workers, job_input, data_dir):
    client = start_job(server.url)
    victim = workers(server.url, delay=0.1)
    survivor = workers(server.url, delay=0.1)
    wait_until(lambda: written(client) >= 200, what="some progress")
    held = client.get_job_report("kills")["in_flight"]
    victim.kill()  # SIGKILL while it sleeps on a leased batch
    victim.wait()
    assert held > 0
    wait_until(lambda: client.get_job_report("kills")["state"] == "done", what="the job")
    finish([survivor])
    assert_exactly_once(data_dir, job_input)


def test_server_killed_and_restarted(server, workers, job_input, data_dir):
    client = start_job(server.url)
    procs = [workers(server.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, what="some progress")
    server.kill()
    server.start()
    finish(procs)
    report = client.get_job_report("kills")
    assert report["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_server_with_embedded_redis_killed_and_restarted(data_dir, workers, job_input):
    server = ServerProcess(data_dir, redis_url=None)
    server.start()
    try:
        client = start_job(server.url)
        procs = [workers(server.url, delay=0.05) for _ in range(2)]
        wait_until(lambda: written(client) >= 300, what="some progress")
        server.kill()  # its redis-server lives on as an orphan; the restart replaces it
        server.start()
        finish(procs)
        assert client.get_job_report("kills")["state"] == "done"
    finally:
        assert server.stop() == 0
    assert_exactly_once(data_dir, job_input)
    pid_file = data_dir / ".planchet" / "redis" / "redis.pid"
    assert not pid_file.exists(), "the private redis-server outlived its server"


def test_redis_killed_and_restarted(server, workers, job_input, data_dir, redis_proc):
    client = start_job(server.url)
    procs = [workers(server.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, what="some progress")
    redis_proc.kill()
    time.sleep(0.5)  # not a threshold: let the server and workers meet a dead Redis
    redis_proc.start()
    finish(procs)
    assert client.get_job_report("kills")["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_hung_worker_lease_expires(server, workers, job_input, data_dir):
    client = start_job(server.url, lease_timeout=1.0)
    hung = workers(server.url, delay=0.05)
    wait_until(lambda: written(client) >= 100, what="some progress")
    os.kill(hung.pid, signal.SIGSTOP)  # connection open, worker silent: only expiry helps
    try:
        finish([workers(server.url, delay=0.0)])
        assert client.get_job_report("kills")["state"] == "done"
    finally:
        os.kill(hung.pid, signal.SIGCONT)  # its late results are dropped
    finish([hung])
    assert_exactly_once(data_dir, job_input)
