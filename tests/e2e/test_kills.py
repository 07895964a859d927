"""Whole jobs with real processes: a server, worker processes, redis-server; kill any.

Each test ends by reading the output file: every input id exactly once, nothing in
the error file. Waits are bounded polls, never timing assertions.
"""

from __future__ import annotations

import os
import signal
import subprocess
from pathlib import Path

import orjson
import pytest

from planchet import PlanchetClient
from planchet.embedded import redis_pids
from tests.support import ServeProcess, wait_until

REPEAT = 10  # 200 headlines x 10 = 2,000 items
WAIT = 90.0  # a generous bound on a whole job, for slow machines

# whole jobs with restarts: the bounds inside a test (WAIT, a 30 s start, 120 s per
# worker) add up to more than the suite's default timeout
pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def job_input(data_dir: Path, shared_data: Path) -> int:
    text = (shared_data / "news_headlines.jsonl").read_text()
    (data_dir / "headlines.jsonl").write_text(text * REPEAT)
    return len(text.splitlines()) * REPEAT


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
    """Three worker processes share a job and write every id exactly once."""
    client = start_job(serve_process.url)
    finish([workers(serve_process.url) for _ in range(3)])
    report = client.get_job_report("kills")
    assert (report["state"], report["written"], report["failed"]) == ("done", job_input, 0)
    assert_exactly_once(data_dir, job_input)


def test_worker_killed_mid_batch(serve_process, workers, job_input, data_dir):
    """A worker SIGKILLed while it holds a lease loses nothing: its batch is served again."""
    client = start_job(serve_process.url)
    victim = workers(serve_process.url, delay=3600)  # it would sit on its first batch
    assert victim.stdout is not None
    assert victim.stdout.readline() == b"leased 20\n"  # it holds a lease now
    survivor = workers(serve_process.url, delay=0.02)  # blocks in get for the last batch
    wait_until(lambda: written(client) >= 200, "some progress", WAIT)
    victim.kill()  # SIGKILL while it sleeps on its leased batch
    victim.wait()
    # only the kill gives that batch back: its lease would run for minutes
    wait_until(lambda: client.get_job_report("kills")["state"] == "done", "the job", WAIT)
    finish([survivor])
    assert_exactly_once(data_dir, job_input)


def test_server_killed_and_restarted(serve_process, workers, job_input, data_dir):
    """A server SIGKILLed and restarted resumes the job; its workers reconnect and finish."""
    client = start_job(serve_process.url)
    procs = [workers(serve_process.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, "some progress", WAIT)
    serve_process.kill()
    serve_process.start()
    finish(procs)
    report = client.get_job_report("kills")
    assert report["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_server_killed_while_two_jobs_share_their_commits(
        serve_process, workers, job_input, data_dir):
    """Two jobs served at once share their group commits (one transaction for both);
    a server SIGKILLed mid-way and restarted finishes each with every id exactly once."""
    client = PlanchetClient(serve_process.url, retries=40)
    for job in ("one", "two"):
        client.start_job(job, {"input_file_path": "headlines.jsonl",
                               "output_file_path": f"{job}.jsonl"},
                         "JsonlReader", writer_name="JsonlWriter")
    procs = [workers(serve_process.url, job=job, delay=0.05) for job in ("one", "two")]
    wait_until(lambda: min(client.get_job_report(job)["written"] for job in ("one", "two"))
               >= 200, "progress on both jobs", WAIT)
    serve_process.kill()
    serve_process.start()
    finish(procs)
    for job in ("one", "two"):
        assert client.get_job_report(job)["state"] == "done"
        ids = sorted(orjson.loads(line)["id"]
                     for line in (data_dir / f"{job}.jsonl").read_bytes().splitlines())
        assert ids == list(range(job_input))
        assert (data_dir / f"{job}.jsonl.errors.jsonl").read_bytes() == b""


def test_server_with_embedded_redis_killed_and_restarted(data_dir, workers, job_input):
    """A SIGKILLed server whose own redis-server lives on restarts on that one Redis."""
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
    """Redis killed under a running job and started again: the job breaks, mends and ends."""
    client = start_job(serve_process.url)
    procs = [workers(serve_process.url, delay=0.05) for _ in range(2)]
    wait_until(lambda: written(client) >= 300, "some progress", WAIT)
    redis_proc.kill()
    # the server has met the dead Redis once the job says so (reports come from memory)
    wait_until(lambda: client.get_job_report("kills")["error"], "the job to break", WAIT)
    redis_proc.start()
    finish(procs)
    assert client.get_job_report("kills")["state"] == "done"
    assert_exactly_once(data_dir, job_input)


def test_hung_worker_lease_expires(serve_process, workers, job_input, data_dir):
    """A worker stopped (SIGSTOP) with its connection open loses its lease to expiry."""
    client = start_job(serve_process.url, lease_timeout=1.0)
    hung = workers(serve_process.url, delay=0.05)
    wait_until(lambda: written(client) >= 100, "some progress", WAIT)
    os.kill(hung.pid, signal.SIGSTOP)  # connection open, worker silent: only expiry helps
    # the only worker holds a lease (its credit gets it the next batch if it had none)
    wait_until(lambda: client.get_job_report("kills")["in_flight"], "a lease to hang", WAIT)
    try:
        finish([workers(serve_process.url, delay=0.0)])
        assert client.get_job_report("kills")["state"] == "done"
    finally:
        os.kill(hung.pid, signal.SIGCONT)  # its late results are dropped
    finish([hung])
    assert_exactly_once(data_dir, job_input)
