"""``planchet serve`` supervises its private redis-server: real processes, real kill -9."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from planchet.client import PlanchetClient
from planchet.config import PRIVATE_DIR
from planchet.embedded import redis_pids
from tests.support import ServeProcess, wait_until
from tests.test_embedded import unauthenticated_ping

pytestmark = pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")

WORKER = Path(__file__).parent / "e2e" / "worker.py"
REPEAT = 10  # 200 headlines x 10 = 2,000 items
WAIT = 90.0  # a generous bound on a whole job, for slow machines


@pytest.fixture
def private_serve(data_dir: Path) -> Iterator[ServeProcess]:
    """``planchet serve`` with its own redis-server (no ``--redis``), stopped after."""
    serve = ServeProcess(data_dir)
    serve.start()
    try:
        yield serve
    finally:
        serve.stop()


def private_redis(data_dir: Path) -> int:
    """The pid of the one redis-server running in the server's private directory."""
    pids = redis_pids(data_dir / PRIVATE_DIR)
    assert len(pids) == 1, pids
    return pids[0]


def health_status(port: int) -> int | None:
    """The HTTP status of /health (200 or 503), or None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return reply.status
    except urllib.error.HTTPError as exc:
        return exc.code
    except OSError:
        return None


def serve_log(serve: ServeProcess) -> str:
    return serve.log.read_text(errors="replace")


def new_redis(data_dir: Path, old: int) -> int | None:
    """The pid of a redis-server that replaced ``old``, once exactly one runs."""
    pids = redis_pids(data_dir / PRIVATE_DIR)
    return pids[0] if len(pids) == 1 and pids[0] != old else None


def test_killed_private_redis_is_restarted_and_the_job_finishes(
    private_serve: ServeProcess, data_dir: Path, shared_data: Path
) -> None:
    """kill -9 of the private redis-server: it comes back, and the job ends exactly once."""
    text = (shared_data / "news_headlines.jsonl").read_text()
    (data_dir / "in.jsonl").write_text(text * REPEAT)
    total = len(text.splitlines()) * REPEAT
    client = PlanchetClient(private_serve.url, retries=40)
    client.start_job("sup", {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"},
                     "JsonlReader", writer_name="JsonlWriter")
    workers = [subprocess.Popen([sys.executable, str(WORKER), private_serve.url, "sup", "20",
                                 "0.05"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
               for _ in range(2)]
    try:
        wait_until(lambda: client.get_job_report("sup")["written"] >= 300, "progress", WAIT)
        victim = private_redis(data_dir)
        os.kill(victim, signal.SIGKILL)
        wait_until(lambda: new_redis(data_dir, victim), "a new redis-server", WAIT)
        for worker in workers:
            out, _ = worker.communicate(timeout=WAIT)
            assert worker.returncode == 0, out.decode()
    finally:
        for worker in workers:
            worker.kill()
            worker.wait()
    wait_until(lambda: health_status(private_serve.port) == 200, "/health 200", WAIT)
    report = client.get_job_report("sup")
    assert (report["state"], report["written"], report["failed"]) == ("done", total, 0)
    ids = sorted(orjson.loads(line)["id"] for line in (data_dir / "out.jsonl").read_bytes()
                 .splitlines())
    assert ids == list(range(total))
    assert (data_dir / "out.jsonl.errors.jsonl").read_bytes() == b""
    assert "restarted the private redis-server" in serve_log(private_serve)


def test_restarts_keep_trying_while_redis_cannot_start(
    private_serve: ServeProcess, data_dir: Path
) -> None:
    """A Redis that cannot start is retried with backoff, the reason logged, /health 503."""
    aof = data_dir / PRIVATE_DIR / "redis" / "appendonly.aof"
    size = aof.stat().st_size
    with open(aof, "ab") as file:
        file.write(b"not a redis command\r\n")  # Redis refuses to load this AOF
    victim = private_redis(data_dir)
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: "restart 2 of the private redis-server failed" in serve_log(private_serve),
               "two failed restarts", WAIT)
    assert "Bad file format reading the append only file" in serve_log(private_serve)
    assert health_status(private_serve.port) == 503
    os.truncate(aof, size)  # the operator repairs the file; the next try succeeds
    wait_until(lambda: health_status(private_serve.port) == 200, "/health 200", WAIT)
    assert new_redis(data_dir, victim)


def test_private_redis_needs_its_password_and_the_log_hides_it(
    private_serve: ServeProcess, data_dir: Path
) -> None:
    """The private Redis refuses a client without the password; no URL with it is logged."""
    pid = private_redis(data_dir)
    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
    assert b"requirepass" not in cmdline
    port = int(next(line for line in serve_log(private_serve).splitlines()
                    if "private redis-server on 127.0.0.1:" in line)
               .split("127.0.0.1:")[1].split()[0])
    assert unauthenticated_ping(port).startswith(b"-NOAUTH")
    assert "redis://" not in serve_log(private_serve)
    assert (data_dir / PRIVATE_DIR / "redis").stat().st_mode & 0o777 == 0o700
