"""The ``planchet`` command against a real server: a ``planchet serve`` subprocess.

Client commands run in-process through ``planchet.cli.main`` (their output captured),
and once as ``python -m planchet`` to see the real exit status. ``serve`` itself runs
as a subprocess with no ``--redis``, to prove it starts and stops its own redis-server.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from planchet.cli import parse_args
from planchet.config import Settings
from planchet.display import format_table, human_duration
from planchet.embedded import free_port, redis_pids
from tests.support import REPO, ServeProcess, clean_env, health, run, wait_until

TOKEN = "s3cret-master-4711"  # a string no log line holds by chance
SHOWN = TOKEN[:6]  # what a log would show: websockets cuts the middle out of long frames


def test_start_status_pause_resume_jobs_delete(
    serve_url: str, headlines: str, data_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    u = ("--url", serve_url)
    code, out, _ = run(capsys, "start", "news", *u, "--input", headlines,
                       "--output", "out.jsonl", "--batch-size", "20", "--max-attempts", "2")
    assert code == 0
    assert "news (running, read-write)" in out
    assert "written    0" in out

    code, out, _ = run(capsys, "status", "news", "--json", *u)
    report = json.loads(out)
    assert (report["state"], report["written"], report["bytes_total"]) == (
        "running", 0, (data_dir / headlines).stat().st_size)

    code, out, _ = run(capsys, "pause", "news", *u)
    assert code == 0 and "news (paused" in out and "eta        paused" in out
    assert json.loads(run(capsys, "status", "news", "--json", *u)[1])["state"] == "paused"
    code, out, _ = run(capsys, "resume", "news", *u)
    assert code == 0 and "news (running" in out

    code, out, _ = run(capsys, "jobs", *u)
    header, row = out.splitlines()
    assert header.split() == ["NAME", "STATE", "WRITTEN", "FAILED", "IN", "FLIGHT", "QUEUED",
                              "RATE/S"]
    assert row.split() == ["news", "running", "0", "0", "0", "0", "0.0"]
    assert [r["job"] for r in json.loads(run(capsys, "jobs", "--json", *u)[1])] == ["news"]

    code, out, _ = run(capsys, "delete", "news", *u)
    assert code == 0 and "deleted job news" in out
    assert run(capsys, "jobs", *u)[1].strip() == "no jobs"


def test_status_of_a_finished_job(
    serve_url: str, headlines: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(capsys, "start", "up", "--url", serve_url, "--input", headlines,
               "--output", "up.jsonl")[0] == 0
    code, out, _ = run(capsys, "work", "up", "--url", serve_url, "--",
                       sys.executable, str(REPO / "examples" / "uppercase.py"))
    assert code == 0 and out.startswith("up: done; 200 results and 0 failed attempts")
    code, out, _ = run(capsys, "status", "up", "--url", serve_url)
    lines = dict(line.split(None, 1) for line in out.splitlines() if " " in line)
    assert lines["job"] == "up (done, read-write)"
    assert lines["progress"] == "200 items read (the whole input)"
    assert lines["written"] == "200"
    assert lines["eta"] == "done"
    assert lines["rate"].endswith("items/s")


def test_url_and_token_come_from_the_environment(
    serve_url: str, headlines: str, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PLANCHET_URL", serve_url)
    code, _, _ = run(capsys, "start", "tok", "--input", headlines, "--output", "t.jsonl",
                     "--job-token", "s3cret", "--meta", "note=hello", "--meta", "n=3")
    assert code == 0
    code, _, err = run(capsys, "pause", "tok")
    assert code == 1 and err.startswith("planchet: unauthorized: ")
    monkeypatch.setenv("PLANCHET_TOKEN", "s3cret")
    code, out, _ = run(capsys, "pause", "tok")
    assert code == 0 and "tok (paused" in out


@pytest.mark.parametrize("command", ["status", "pause", "resume", "delete"])
def test_unknown_job_is_a_clear_error(
    serve_url: str, command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run(capsys, command, "nope", "--url", serve_url)
    assert code == 1
    assert out == ""
    assert err == "planchet: job_not_found: no job named 'nope'\n"


def test_path_outside_the_data_dir_is_refused(
    serve_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, _, err = run(capsys, "start", "evil", "--url", serve_url,
                       "--input", "../../etc/passwd", "--output", "out.jsonl")
    assert code == 1
    assert err == ("planchet: path_refused: input_file_path '../../etc/passwd' "
                   "is outside the data directory\n")


def test_exit_status_of_the_real_command(serve_url: str) -> None:
    done = subprocess.run([sys.executable, "-m", "planchet", "status", "nope", "--url", serve_url],
                          capture_output=True, text=True, env=clean_env(), timeout=60)
    assert done.returncode == 1
    assert done.stderr.strip() == "planchet: job_not_found: no job named 'nope'"


def test_unreachable_server_is_a_clear_error(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "jobs", "--url", f"ws://127.0.0.1:{free_port()}")
    assert code == 1
    assert err.startswith("planchet: connection_lost: cannot reach ws://127.0.0.1:")


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="needs Linux /proc")
def test_serve_runs_its_own_redis_and_stops_it_on_sigterm(data_dir: Path) -> None:
    serve = ServeProcess(data_dir)
    serve.start()
    try:
        body = health(serve.port)
        assert body is not None and (body["status"], body["redis"]) == ("ok", "online")
        pids = redis_pids(data_dir)
        assert len(pids) == 1, pids
        assert (data_dir / ".planchet" / "redis").is_dir()
    finally:
        code = serve.stop()
    assert code == 0
    assert redis_pids(data_dir) == []
    with pytest.raises(ProcessLookupError):
        os.kill(pids[0], 0)


def test_work_command_parsing() -> None:
    args = parse_args(["work", "j", "--prefetch", "3", "--per-batch", "--",
                       "python", "x.py", "--flag", "--", "y"])
    assert (args.job, args.prefetch, args.per_batch) == ("j", 3, True)
    assert args.program == ["python", "x.py", "--flag", "--", "y"]
    assert parse_args(["work", "j", "cat"]).program == ["cat"]
    with pytest.raises(SystemExit):
        parse_args(["status", "j", "--", "x"])


def test_human_formats() -> None:
    assert [human_duration(s) for s in (None, 0.4, 59, 75, 3600, 7300, 90000)] == [
        "unknown", "0s", "59s", "1m 15s", "1h 00m", "2h 01m", "1d 01h"]
    assert format_table([]) == "no jobs"


# --- tokens and what the command line shows of them --------------------------------------


class Guarded:
    """``planchet -v serve --token-file``, as a subprocess with its output in ``log``."""

    def __init__(self, proc: subprocess.Popen[bytes], port: int, token_file: Path,
                 log: Path) -> None:
        self.proc, self.port, self.token_file, self.log = proc, port, token_file, log
        self.url = f"ws://127.0.0.1:{port}"


@pytest.fixture
def guarded(data_dir: Path, redis_url: str, tmp_path: Path) -> Iterator[Guarded]:
    """A verbose server whose master token comes from a file (with a trailing newline)."""
    token_file = tmp_path / "token"
    token_file.write_text(TOKEN + "\n")
    port, log = free_port(), tmp_path / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "planchet", "-v", "serve", "--data-dir", str(data_dir),
             "--port", str(port), "--redis", redis_url, "--token-file", str(token_file)],
            stdout=out, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)
    try:
        wait_until(lambda: proc.poll() is not None or health(port), "/health")
        assert proc.poll() is None, log.read_text()
        yield Guarded(proc, port, token_file, log)
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_verbose_logs_and_ps_never_show_the_token(guarded: Guarded) -> None:
    """With -v on both sides and tokens from a file, neither the logs nor ps show the token."""
    cmdline = Path(f"/proc/{guarded.proc.pid}/cmdline")
    if cmdline.exists():
        assert SHOWN not in cmdline.read_text()
    client = subprocess.run(
        [sys.executable, "-m", "planchet", "-v", "jobs", "--url", guarded.url,
         "--token-file", str(guarded.token_file)],
        capture_output=True, text=True, env=clean_env(), timeout=60)
    assert (client.returncode, client.stdout.strip()) == (0, "no jobs"), client.stderr
    assert SHOWN not in client.stderr
    guarded.proc.terminate()
    assert guarded.proc.wait(timeout=30) == 0
    log = guarded.log.read_text()
    assert " DEBUG " in log  # -v took effect
    assert SHOWN not in log


def test_serve_reads_the_master_token_from_a_file(
    guarded: Guarded, capsys: pytest.CaptureFixture[str]
) -> None:
    """``serve --token-file`` sets the master token, trailing newline stripped."""
    code, _, err = run(capsys, "jobs", "--url", guarded.url)
    assert code == 1 and err.startswith("planchet: unauthorized: ")
    code, out, err = run(capsys, "jobs", "--url", guarded.url,
                         "--token-file", str(guarded.token_file))
    assert (code, out.strip(), err) == (0, "no jobs", "")


def test_a_token_on_the_command_line_works_with_a_warning(
    guarded: Guarded, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``--token`` still works but warns that ps shows it; ``PLANCHET_TOKEN`` does not warn."""
    code, out, err = run(capsys, "jobs", "--url", guarded.url, "--token", TOKEN)
    assert (code, out.strip()) == (0, "no jobs")
    assert "ps" in err and "--token-file" in err and "PLANCHET_TOKEN" in err
    monkeypatch.setenv("PLANCHET_TOKEN", TOKEN)
    assert run(capsys, "jobs", "--url", guarded.url) == (0, "no jobs\n", "")


def test_a_bad_token_file_is_a_clear_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A missing or empty token file stops the command with a message naming the file."""
    missing = tmp_path / "nope"
    code, _, err = run(capsys, "jobs", "--token-file", str(missing))
    assert code == 1 and err.startswith(f"planchet: error: cannot read the token file {missing}")
    empty = tmp_path / "empty"
    empty.write_text("\n")
    code, _, err = run(capsys, "serve", "--token-file", str(empty))
    assert (code, err) == (1, f"planchet: error: the token file {empty} is empty\n")
    with pytest.raises(SystemExit):
        parse_args(["jobs", "--token", "x", "--token-file", str(empty)])


def test_origins_and_connection_caps_from_flags_and_environment() -> None:
    """``--allow-origin`` repeats; PLANCHET_ALLOW_ORIGIN is comma-separated; caps are ints."""
    args = parse_args(["serve", "--allow-origin", "https://a.example", "--allow-origin", "*",
                       "--max-connections", "50", "--max-pending-connections", "5"])
    settings = Settings.load(env={}, allow_origins=args.allow_origin,
                             max_connections=args.max_connections,
                             max_pending_connections=args.max_pending_connections)
    assert settings.allow_origins == ("https://a.example", "*")
    assert (settings.max_connections, settings.max_pending_connections) == (50, 5)
    settings = Settings.load(env={"PLANCHET_ALLOW_ORIGIN": "https://a.example, https://b.example",
                                  "PLANCHET_MAX_CONNECTIONS": "7"})
    assert settings.allow_origins == ("https://a.example", "https://b.example")
    assert (settings.max_connections, settings.max_pending_connections) == (7, 100)
