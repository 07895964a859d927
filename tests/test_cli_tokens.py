"""``planchet token`` against a served process: create, list, revoke, and what is shown."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from planchet.client import PlanchetClient
from planchet.embedded import free_port
from tests.support import ServeProcess, clean_env, health, run, wait_until

ADMIN = "admin-of-news-5521"
MASTER = "master-of-all-9034"


@pytest.fixture
def admin_file(tmp_path: Path) -> Path:
    path = tmp_path / "admin-token"
    path.write_text(ADMIN + "\n")
    return path


def start_news(capsys: pytest.CaptureFixture[str], url: str, headlines: str,
               admin_file: Path, *extra: str) -> None:
    code, _, err = run(capsys, "start", "news", "--url", url, "--input", headlines,
                       "--output", "out.jsonl", "--job-token-file", str(admin_file), *extra)
    assert code == 0, err


def command(url: str, *argv: str, **options: Any) -> subprocess.CompletedProcess[Any]:
    """``python -m planchet *argv --url url`` as a real process."""
    return subprocess.run([sys.executable, "-m", "planchet", *argv, "--url", url],
                          env=clean_env(), timeout=60, check=False, **options)


def test_create_list_revoke_end_to_end(
    serve_process: ServeProcess, headlines: str, admin_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The token printed by create takes batches, cannot pause, is listed without its
    secret, and stops working once revoked."""
    url, admin = serve_process.url, ("--url", serve_process.url, "--token-file", str(admin_file))
    start_news(capsys, url, headlines, admin_file)
    code, out, err = run(capsys, "token", "create", "news", "--label", "lab laptops", *admin)
    token = out.strip()
    assert (code, err, out) == (0, "", token + "\n")
    assert token.startswith("pw_")
    key = token.split("_")[1]

    with PlanchetClient(url, token) as worker:
        assert len(worker.get("news", 5)) == 5
    code, _, err = run(capsys, "pause", "news", "--url", url, "--token", token)
    assert code == 1 and "unauthorized: a worker token may only take batches" in err

    code, out, _ = run(capsys, "token", "list", "news", *admin)
    header, row = out.splitlines()
    assert header.split() == ["KEY", "CREATED", "JOBS", "LABEL"]
    assert row.startswith(key) and row.endswith("news  lab laptops")
    listed = json.loads(run(capsys, "token", "list", "news", "--json", *admin)[1])
    assert [(g["key"], g["jobs"], g["label"]) for g in listed] == [(key, ["news"], "lab laptops")]
    assert token.split("_", 2)[2] not in json.dumps(listed)  # pw_<key>_<secret>

    assert run(capsys, "token", "revoke", key, *admin) == (
        0, f"revoked worker token {key}\n", "")
    assert run(capsys, "token", "list", "news", *admin)[1] == "no worker tokens\n"
    code, _, err = run(capsys, "status", "news", "--url", url, "--token", token)
    assert code == 0  # report stays open to anyone
    code, _, err = run(capsys, "token", "revoke", key, *admin)
    assert code == 1 and err.startswith("planchet: bad_request: no worker token has the key")


def test_create_piped_prints_the_token_alone(
    serve_process: ServeProcess, headlines: str, admin_file: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Piped, create writes the token and a newline and nothing else; on a terminal it
    also writes a one-line reminder to stderr; --json gives the whole reply."""
    url = serve_process.url
    start_news(capsys, url, headlines, admin_file)
    piped = command(url, "token", "create", "news", "--token-file", str(admin_file),
                    capture_output=True)
    assert (piped.returncode, piped.stderr) == (0, b""), piped.stderr
    assert piped.stdout.count(b"\n") == 1 and piped.stdout.startswith(b"pw_")

    leader, follower = pty.openpty()
    try:
        shown = command(url, "token", "create", "news", "--token-file", str(admin_file),
                        stdout=follower, stderr=subprocess.PIPE)
        screen = os.read(leader, 4096).decode()
    finally:
        os.close(leader)
        os.close(follower)
    note = shown.stderr.decode()
    assert shown.returncode == 0 and screen.strip().startswith("pw_")
    assert note.count("\n") == 1 and "shown only now" in note and "token revoke" in note

    as_json = command(url, "token", "create", "news", "--json", "--token-file",
                      str(admin_file), capture_output=True)
    reply = json.loads(as_json.stdout)
    assert set(reply) == {"key", "token", "jobs", "label", "created"}


class Verbose:
    """``planchet -v serve`` with a master token from a file; its output in ``log``."""

    def __init__(self, tmp_path: Path, data_dir: Path, redis_url: str) -> None:
        self.token_file = tmp_path / "master"
        self.token_file.write_text(MASTER + "\n")
        self.port, self.log = free_port(), tmp_path / "verbose.log"
        self.url = f"ws://127.0.0.1:{self.port}"
        with open(self.log, "wb") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "planchet", "-v", "serve", "--data-dir", str(data_dir),
                 "--port", str(self.port), "--redis", redis_url,
                 "--token-file", str(self.token_file)],
                stdout=out, stderr=subprocess.STDOUT, env=clean_env(), start_new_session=True)


@pytest.fixture
def verbose(tmp_path: Path, data_dir: Path, redis_url: str) -> Iterator[Verbose]:
    server = Verbose(tmp_path, data_dir, redis_url)
    try:
        wait_until(lambda: server.proc.poll() is not None or health(server.port), "/health")
        assert server.proc.poll() is None, server.log.read_text()
        yield server
    finally:
        server.proc.terminate()
        server.proc.wait(timeout=30)


def test_no_log_line_shows_a_worker_token(
    verbose: Verbose, headlines: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """With -v on the server and the client, a worker token is in no log line, whether
    it is created, used, refused, listed or revoked."""
    master = ("--url", verbose.url, "--token-file", str(verbose.token_file))
    assert run(capsys, "start", "news", "--input", headlines, "--output", "o.jsonl",
               *master)[0] == 0
    created = command(verbose.url, "-v", "token", "create", "news", "--token-file",
                      str(verbose.token_file), capture_output=True, text=True)
    token = created.stdout.strip()
    secret = token.split("_", 2)[2]  # pw_<key>_<secret>; the secret may hold "_"
    assert created.returncode == 0 and secret not in created.stderr
    with PlanchetClient(verbose.url, token) as worker:
        items = worker.get("news", 4)
        assert worker.send("news", items)["written"] == 4
    refused = command(verbose.url, "-v", "jobs", "--token", token, capture_output=True,
                      text=True)
    assert refused.returncode == 1 and secret not in refused.stderr
    assert run(capsys, "token", "list", *master)[0] == 0
    assert run(capsys, "token", "revoke", token.split("_")[1], *master)[0] == 0
    verbose.proc.terminate()
    assert verbose.proc.wait(timeout=30) == 0
    log = verbose.log.read_text()
    assert " DEBUG " in log  # -v took effect
    assert secret not in log and secret[:8] not in log
