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
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from planchet import PlanchetClient
from planchet.embedded import redis_pids
from tests.support import ServeProcess, wait_until

WORKER = Path(__file__).with_name("worker.py")
REPEAT = 10  # 200 headlines x 10 = 2,000 items
WAIT = 90.0  # a generous bound on a whole job, for slow machines


@pytest.fixture
def job_input(data_dir: Path, shared_data: Path) -> int:
    text = (shared_data / "news_headlines.jsonl").read_text()
    (data_dir / "headlines.jsonl").write_text(text * REPEAT)
    return len(text.splitlines()) * REPEAT


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


def test_several_workers_process_a_job(serve_process, workers, job_input, data_dir):
    client = start_job(serve_process.url)
    finish([workers(serve_process.url) for _ in range(3)])
    report = client.get_job_report("kills")
    assert (report["state"], report["written"], report["failed"]) == ("done", job_input, 0)
    assert_exactly_once(data_dir, job_input)


def test_worker_killed_mid_batch(serve_process, workers, job_input, data_dir):
    client = start_job(serve_process.url)
    victim = workers(serve_process.url, delay=0.1)
    survivor = workers(serve_process.url, delay=0.1)
    wait_until(lambda: written(client) >= 200, "some progress", WAIT)
    held = client.get_job_report("kills")["in_flight"]
    victim.kill()  # SIGKILL while it sleeps on a leased batch
    victim.wait()
    assert held > 0
    wait_until(lambda: client.get_job_report("kills")["state"] == "done", "the job", WAIT)
    finish([survivor])
    assert_exactly_once(data_dir, job_input)


def test_server_killed_and_restarted(serve_process, workers, job_input, data_dir):
    client = start_job(serve_process.url)
    procs = [workers(serve_process.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, "some progress", WAIT)
    serve_process.kill()
    serve_process.start()
    finish(procs)
    report = client.get_job_report("kills")
    assert report["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_server_with_embedded_redis_killed_and_restarted(data_dir, workers, job_input):
    server = ServeProcess(data_dir)  # no --redis: serve runs its own
    server.start()
    try:
        client = start_job(server.url)
        procs = [workers(server.url, delay=0.05) for _ in range(2)]
        wait_until(lambda: written(client) >= 300, "some progress", WAIT)
        server.kill()  # its redis-server lives on as an orphan; the restart replaces it
        server.start()
        assert len(redis_pids(data_dir)) == 1, "two redis-servers on one append-only file"
        finish(procs)
        assert client.get_job_report("kills")["state"] == "done"
    finally:
        assert server.stop() == 0
    assert_exactly_once(data_dir, job_input)
    assert redis_pids(data_dir) == [], "the private redis-server outlived its server"


def test_redis_killed_and_restarted(serve_process, workers, job_input, data_dir, redis_proc):
    client = start_job(serve_process.url)
    procs = [workers(serve_process.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, "some progress", WAIT)
    redis_proc.kill()
    time.sleep(0.5)  # not a threshold: let the server and workers meet a dead Redis
    redis_proc.start()
    finish(procs)
    assert client.get_job_report("kills")["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_hung_worker_lease_expires(serve_process, workers, job_input, data_dir):
    client = start_job(serve_process.url, lease_timeout=1.0)
    hung = workers(serve_process.url, delay=0.05)
    wait_until(lambda: written(client) >= 100, "some progress", WAIT)
    os.kill(hung.pid, signal.SIGSTOP)  # connection open, worker silent: only expiry helps
    try:
        finish([workers(serve_process.url, delay=0.0)])
        assert client.get_job_report("kills")["state"] == "done"
    finally:
        os.kill(hung.pid, signal.SIGCONT)  # its late results are dropped
    finish([hung])
    assert_exactly_once(data_dir, job_input)
