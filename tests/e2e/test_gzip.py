"""gzip jobs with real processes: a .jsonl.gz job survives kill -9, a broken .gz is refused.

The kill test is the issue's "done when": a server killed mid-file resumes its gzip input
from the committed (uncompressed) offset, and the gzip output holds every id once.
"""

from __future__ import annotations

import gzip
import shutil
import subprocess
from pathlib import Path

import orjson
import pytest

from planchet import PlanchetClient
from planchet.exceptions import FormatError
from tests.e2e.test_kills import WAIT, finish
from tests.support import wait_until

REPEAT = 25  # 200 headlines x 25 = 5,000 items: far from done when the server is killed

pytestmark = pytest.mark.timeout(300)


@pytest.fixture
def gz_input(data_dir: Path, shared_data: Path) -> int:
    text = (shared_data / "news_headlines.jsonl").read_bytes()
    (data_dir / "news.jsonl.gz").write_bytes(gzip.compress(text * REPEAT))
    return len(text.splitlines()) * REPEAT


def start_job(url: str, source: str = "news.jsonl.gz") -> PlanchetClient:
    client = PlanchetClient(url, retries=40)
    client.start_job("gz", {"input_file_path": source, "output_file_path": "out.jsonl.gz"},
                     "JsonlReader", writer_name="JsonlWriter")
    return client


def test_gzip_job_resumes_mid_file_after_kill_9(serve_process, workers, gz_input, data_dir):
    """A server SIGKILLed mid-way through a .jsonl.gz job resumes it: every id once, gzip out."""
    client = start_job(serve_process.url)
    procs = [workers(serve_process.url, "gz", 20, 0.05) for _ in range(2)]
    wait_until(lambda: client.get_job_report("gz")["written"] >= 300, "some progress", WAIT)
    before = client.get_job_report("gz")
    serve_process.kill()
    assert not before["exhausted"] and before["bytes_read"] > 0  # the kill lands mid-file
    assert before["bytes_read"] < before["bytes_total"]  # both count uncompressed bytes
    serve_process.start()
    finish(procs)
    report = client.get_job_report("gz")
    assert (report["state"], report["written"], report["failed"]) == ("done", gz_input, 0)
    packed = (data_dir / "out.jsonl.gz").read_bytes()
    ids = sorted(orjson.loads(line)["id"] for line in gzip.decompress(packed).splitlines())
    assert ids == list(range(gz_input))
    if shutil.which("gzip"):  # the command-line tool reads every member too
        subprocess.run(["gzip", "-t", str(data_dir / "out.jsonl.gz")], check=True)
    assert (data_dir / "out.jsonl.gz.errors.jsonl").read_bytes() == b""  # plain, empty


def test_a_file_that_is_not_gzip_is_refused_at_start(serve_process, data_dir):
    """start_job on a .jsonl.gz that is no gzip file fails with format_error: no job."""
    (data_dir / "plain.jsonl.gz").write_bytes(b'{"text": "not compressed"}\n')
    client = PlanchetClient(serve_process.url)
    with pytest.raises(FormatError, match=r"plain\.jsonl\.gz is not a valid gzip file"):
        start_job(serve_process.url, "plain.jsonl.gz")
    assert client.list_jobs() == []


def test_corruption_mid_file_breaks_the_job_with_a_clear_error(serve_process, data_dir):
    """A .gz input corrupt past its first member stops the job for good (no reopening
    and re-reading it again and again), and its report says why."""
    good = gzip.compress(b'{"text": "fine"}\n' * 100)
    bad = bytearray(gzip.compress(b'{"text": "lost"}\n' * 100))
    bad[len(bad) // 2] ^= 0xFF
    (data_dir / "half.jsonl.gz").write_bytes(good + bytes(bad))
    client = start_job(serve_process.url, "half.jsonl.gz")

    def broken() -> bool:  # between reloads the error reads "reopening": wait for the reason
        error = client.get_job_report("gz")["error"] or ""
        return "half.jsonl.gz is not a valid gzip file" in error

    wait_until(broken, "the job to break on the corrupt member", WAIT)
    assert "a step failed" not in client.get_job_report("gz")["error"]  # unusable: stays
