"""Progress where people look: the live line of ``planchet work``, ``status --watch``, and
the ``progress`` argument of both Python clients, against a real ``planchet serve``."""

from __future__ import annotations

import io
import logging
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from planchet import AsyncPlanchetClient, PlanchetClient
from planchet.display import LiveLine
from planchet.messages import ItemError
from planchet.progress import Progress
from tests.support import REPO, clean_env

UPPERCASE = str(REPO / "examples" / "uppercase.py")
ITEMS = 830  # lines of the issues_input fixture
POISON = {i for i in range(ITEMS) if i % 100 == 0}  # failed for good by the workers below


def start(url: str, job: str, source: str = "in.jsonl", **options: object) -> None:
    with PlanchetClient(url) as client:
        client.start_job(job, {"input_file_path": source, "output_file_path": f"{job}.jsonl"},
                         "JsonlReader", writer_name="JsonlWriter", **options)


def planchet(*argv: str) -> list[str]:
    return [sys.executable, "-m", "planchet", *argv]


def read_pty(master: int, proc: subprocess.Popen[bytes]) -> str:
    """Everything written to the terminal until the process exits and closes it."""
    out = b""
    while True:
        ready, _, _ = select.select([master], [], [], 1.0)
        try:
            chunk = os.read(master, 65536) if ready else b"?"
        except OSError:  # EIO: every writer closed the terminal
            break
        if not chunk:
            break
        if ready:
            out += chunk
        elif proc.poll() is not None and not select.select([master], [], [], 0)[0]:
            break
    proc.wait()
    return out.decode("utf-8", "replace")


# --- planchet work ---------------------------------------------------------------------------


@pytest.mark.timeout(180)
def test_work_on_a_terminal_redraws_a_live_line_then_prints_the_summary(
    serve_url: str, issues_input: Path
) -> None:
    """On a terminal, ``planchet work`` rewrites one line in place with plausible counts and
    rate, erases it at the end, and prints the summary."""
    start(serve_url, "live", batch_size=50)
    master, slave = pty.openpty()
    proc = subprocess.Popen(planchet("work", "live", "--url", serve_url, "--", sys.executable,
                                     UPPERCASE), stdin=slave, stdout=slave, stderr=slave,
                            env=clean_env())
    os.close(slave)
    try:
        out = read_pty(master, proc)
    finally:
        os.close(master)
    assert proc.returncode == 0, out
    live, _, summary = out.rpartition("\r\x1b[J")  # the live line erased, then the summary
    draws = [d for d in live.split("\r") if d]
    assert draws and all(d.endswith("\x1b[J") for d in draws), out
    counts = [re.match(r"live: ([\d,]+) done \(([\d,]+) items/s\), (\d+) errors?", d)
              for d in draws]
    assert all(counts), draws
    done = [int(m.group(1).replace(",", "")) for m in counts if m]
    assert done == sorted(done) and done[-1] == ITEMS
    assert all(int(m.group(2).replace(",", "")) >= 0 for m in counts if m)
    assert summary.startswith(f"live: done; {ITEMS} results and 0 failed attempts"), out


def test_work_on_a_pipe_prints_only_the_summary(serve_url: str, issues_input: Path) -> None:
    """Through pipes, ``planchet work`` writes no live line: only the one-line summary."""
    start(serve_url, "piped", batch_size=50)
    done = subprocess.run(planchet("work", "piped", "--url", serve_url, "--", sys.executable,
                                   UPPERCASE), capture_output=True, text=True, env=clean_env(),
                          timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert len(done.stdout.splitlines()) == 1
    assert done.stdout.startswith(f"piped: done; {ITEMS} results and 0 failed attempts")


# --- planchet status --watch -----------------------------------------------------------------


def test_status_watch_on_a_pipe_prints_a_line_per_refresh_until_done(
    serve_url: str, issues_input: Path
) -> None:
    """``status --watch`` on a pipe prints one line per refresh, the last one for the done
    job, and exits 0 by itself."""
    start(serve_url, "watched", batch_size=50)
    proc = subprocess.Popen(planchet("status", "watched", "--watch", "--interval", "0.25",
                                     "--url", serve_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout is not None
    first = proc.stdout.readline()  # the job as it was before any work
    with PlanchetClient(serve_url) as client:
        while batch := client.get("watched", 50):
            client.send("watched", batch)
    rest, err = proc.communicate(timeout=60)
    lines = [first, *rest.splitlines()]
    assert proc.returncode == 0, err
    assert "watched running: " in first
    assert re.match(r"\d\d:\d\d:\d\d watched done: 100% \(830 of ~830\), .*ETA done", lines[-1])
    assert all(re.match(r"\d\d:\d\d:\d\d watched (running|done): ", line) for line in lines)


def test_status_watch_stops_quietly_on_ctrl_c(serve_url: str, issues_input: Path) -> None:
    """Ctrl-C ends ``status --watch`` of a job that is not moving with status 130 and no
    traceback."""
    start(serve_url, "idle")
    proc = subprocess.Popen(planchet("status", "idle", "--watch", "--interval", "0.25",
                                     "--url", serve_url), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=clean_env())
    assert proc.stdout is not None
    assert "idle running: " in proc.stdout.readline()
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert (proc.returncode, err) == (130, "")


# --- the Python clients ----------------------------------------------------------------------


def check_calls(calls: list[Progress]) -> None:
    """Counts that only grow, and a final call with every item this worker processed."""
    done = [p.done for p in calls]
    assert done == sorted(done) and len(set(done)) > 1, done
    assert [p.final for p in calls] == [False] * (len(calls) - 1) + [True]
    last = calls[-1]
    assert (last.done, last.failed, last.retried, last.dropped) == (
        ITEMS - len(POISON), len(POISON), 0, 0)
    assert last.job_done is not None and last.rate >= 0


def test_blocking_client_calls_progress_with_growing_counts(
    serve_url: str, issues_input: Path
) -> None:
    """``get(..., progress=f)`` calls f with growing counts; the last call has them all."""
    start(serve_url, "cb", batch_size=50)
    calls: list[Progress] = []
    with PlanchetClient(serve_url) as client:
        while batch := client.get("cb", 50, progress=calls.append):
            client.send("cb", [(i, item) for i, item in batch if i not in POISON])
            client.mark_errors("cb", [i for i, _ in batch if i in POISON])
    check_calls(calls)


async def test_async_client_calls_progress_with_growing_counts(
    serve_url: str, issues_input: Path
) -> None:
    """``batches(..., progress=f)`` calls f with growing counts; the last call has them all."""
    start(serve_url, "acb", batch_size=50)
    calls: list[Progress] = []
    async with AsyncPlanchetClient(serve_url) as client:
        async for batch in client.batches("acb", progress=calls.append):
            await batch.ack([(i, x) for i, x in batch.items if i not in POISON],
                            [ItemError(id=i, message="poison", retry=False)
                             for i, _ in batch.items if i in POISON])
    check_calls(calls)


def test_progress_true_draws_a_tqdm_bar(
    serve_url: str, issues_input: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``progress=True`` draws a tqdm bar of the job, on stderr, up to its last item."""
    start(serve_url, "bar", batch_size=50)
    screen = io.StringIO()
    monkeypatch.setattr(sys, "stderr", screen)
    with PlanchetClient(serve_url) as client:
        while batch := client.get("bar", 50, progress=True):
            client.send("bar", batch)
    drawn = screen.getvalue()
    assert re.search(rf"bar: (100%.*{ITEMS}/{ITEMS}|{ITEMS}item)", drawn), drawn
    assert "errors=0" in drawn


async def test_progress_true_without_tqdm_says_what_to_install(
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """Without tqdm, ``progress=True`` raises an ImportError that says how to get it."""
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with PlanchetClient("ws://127.0.0.1:1") as client, pytest.raises(
            ImportError, match="pip install tqdm"):
        client.get("any", progress=True)
    aclient = AsyncPlanchetClient("ws://127.0.0.1:1", retries=0)  # never connects
    with pytest.raises(ImportError, match="pip install tqdm"):
        async for _ in aclient.batches("any", progress=True):
            pass


# --- LiveLine --------------------------------------------------------------------------------


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_live_line_redraws_in_place_at_most_every_interval() -> None:
    """On a terminal a LiveLine rewrites its text in place (several lines too), skips
    redraws closer than its interval unless forced, and shows nothing on a pipe."""
    now = [100.0]
    screen = Terminal()
    line = LiveLine(screen, interval=0.25, clock=lambda: now[0])
    line.show("one")
    line.show("two")  # too soon
    now[0] += 0.3
    line.show("three\nfour")
    line.show("five", force=True)
    line.clear()
    assert screen.getvalue() == ("\rone\x1b[J" "\rthree\x1b[K\nfour\x1b[J"
                                 "\r\x1b[1Afive\x1b[J" "\r\x1b[J")
    pipe = io.StringIO()
    quiet = LiveLine(pipe)
    quiet.show("one", force=True)
    quiet.clear()
    assert pipe.getvalue() == ""


def test_live_line_gets_out_of_the_way_of_log_records() -> None:
    """A log record erases the live line first, so it does not land in the middle of it."""
    screen = Terminal()
    handler = logging.StreamHandler(screen)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        with LiveLine(screen, clock=time.monotonic) as line:
            line.show("42 done")
            logging.getLogger("planchet.test").warning("restarting it")
            line.show("43 done")
    finally:
        root.removeHandler(handler)
    assert screen.getvalue() == "\r42 done\x1b[J\r\x1b[Jrestarting it\n\r43 done\x1b[J\n"
