"""Helpers shared by the tests that run Planchet as real processes.

One copy here, so that the CLI, worker, example and end-to-end tests all start, poll
and stop a ``planchet serve`` subprocess the same way.
"""

from __future__ import annotations

import asyncio
import inspect
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import orjson
import pytest

from planchet.cli import main
from planchet.embedded import free_port

REPO = Path(__file__).resolve().parents[1]
START_TIMEOUT = 30.0  # a cold start imports everything and may spawn a redis-server
STOP_TIMEOUT = 30.0

T = TypeVar("T")


def clean_env() -> dict[str, str]:
    """This environment minus ``PLANCHET_*``, so a developer's settings cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PLANCHET_")}


def wait_until(check: Callable[[], T], what: str, timeout: float = 30.0) -> T:
    """Poll ``check`` until it returns something truthy, and return that; fail after ``timeout`` s.

    Tests wait on conditions, never on fixed sleeps, so they are as fast as the machine.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        time.sleep(0.05)


async def eventually(
    check: Callable[[], T | Awaitable[T]], what: str, timeout: float = 30.0
) -> T:
    """The asyncio twin of :func:`wait_until`: ``check`` may be a plain or an async function.

    It polls on the event loop, so the server under test runs between two checks.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if inspect.isawaitable(value):
            value = await value
        if value:
            return value  # type: ignore[return-value]
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:g}s waiting for {what}", pytrace=False)
        await asyncio.sleep(0.01)


def asleep(task: asyncio.Task[object]) -> bool:
    """Whether ``task`` has ended or sleeps on an ``asyncio.Event`` that nobody has set.

    A server pump that sleeps so has done everything it was woken for, and has handed
    every batch it decided to push to its session. That is the event a test of "nothing
    more is sent" waits for before it looks: a positive proof that the pump has had its
    chance, where waiting a number of loop turns would only be a hope. (Read from the
    coroutine's own frames: ``cr_await`` is what it awaits now, and ``Event.wait``'s
    ``self`` is the event.)
    """
    if task.done():
        return True
    waiting = task.get_coro().cr_await  # type: ignore[union-attr]
    if getattr(waiting, "__qualname__", None) != "Event.wait":
        return False
    event: asyncio.Event = waiting.cr_frame.f_locals["self"]
    return not event.is_set()


def health(port: int) -> dict[str, object] | None:
    """The server's /health body, or None while nothing answers on ``port``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return json.loads(reply.read())
    except OSError:
        return None


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``planchet *argv`` in-process: its exit code and captured stdout and stderr."""
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


class ServeProcess:
    """``python -m planchet serve`` as a child process that a test may kill and restart.

    The port is chosen once, so a restarted server is where its clients expect it. Its
    output goes to ``serve.log`` next to the data dir (not into it, where it could be
    taken for job output), to explain a server that does not come up.
    """

    def __init__(self, data_dir: Path, redis_url: str | None = None) -> None:
        self.data_dir = data_dir
        self.redis_url = redis_url  # None: serve starts and stops its own redis-server
        self.port = free_port()
        self.log = data_dir.parent / "serve.log"
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def start(self) -> None:
        """Start the server (again, after ``kill``) and return once it answers /health."""
        assert self.proc is None or self.proc.poll() is not None, "already running"
        args = [sys.executable, "-m", "planchet", "serve", "--data-dir", str(self.data_dir),
                "--port", str(self.port)]
        if self.redis_url:
            args += ["--redis", self.redis_url]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT,
                                         env=clean_env(), start_new_session=True)
        proc = self.proc
        try:
            wait_until(lambda: proc.poll() is not None or health(self.port),
                       "/health", START_TIMEOUT)
        except pytest.fail.Exception:
            self.stop()  # no teardown will see it; SIGTERM takes its own Redis down too
            self._fail(f"did not answer /health within {START_TIMEOUT:g}s")
        if proc.returncode is not None:
            self._fail(f"exited with code {proc.returncode}")

    def kill(self) -> None:
        """SIGKILL: a crash, with no chance to clean up."""
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> int:
        """SIGTERM, as an operator would; SIGKILL if it is not gone in time. The exit code."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode

    def _fail(self, why: str) -> NoReturn:
        lines = self.log.read_text(errors="replace").splitlines()[-40:] if self.log.exists() else []
        pytest.fail(f"planchet serve on port {self.port} {why}; end of {self.log}:\n"
                    + "\n".join(lines), pytrace=False)


def held(items: dict[int, tuple[Any, int]]) -> dict[int, tuple[Any, int]]:
    """A lease's items (id -> item, attempts) with each item as the value it stands for:
    items read from JSONL are raw JSON text (``orjson.Fragment``), equal to nothing."""
    return {i: (orjson.loads(orjson.dumps(item)), n) for i, (item, n) in items.items()}


def queued_types(session: Any) -> list[str]:
    """The types of the frames a client ``session`` queued, taken from its outbox (the
    session queues them encoded)."""
    return [orjson.loads(frame)["type"] for frame in session.take_outbox()]
