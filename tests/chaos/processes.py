"""The processes under fire: one ``planchet serve`` and a pool of workers of every kind.

Every process runs in a session of its own, so a signal to its process group reaches a
``planchet work`` worker's co-process too, and nothing the harness sends leaks to the
terminal. Logs go to files under the run's directory.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planchet.config import PRIVATE_DIR
from planchet.embedded import free_port, redis_pids
from tests.support import REPO, clean_env

START_TIMEOUT = 30.0
STOP_TIMEOUT = 30.0


class ChaosError(Exception):
    """The harness cannot go on (a server that does not start); the run fails."""


def health(port: int) -> dict[str, Any] | None:
    """The /health body, degraded (503) included; None while nothing answers."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as reply:
            return json.loads(reply.read())
    except urllib.error.HTTPError as exc:
        return json.loads(exc.read())
    except (OSError, ValueError):
        return None


def poll(check: Any, timeout: float, step: float = 0.1) -> Any:
    """``check()`` until it is truthy (returned) or ``timeout`` s pass (None)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = check()
        if value:
            return value
        time.sleep(step)
    return None


def signal_group(proc: subprocess.Popen[bytes], sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, sig)


class Server:
    """``planchet serve`` with its embedded Redis, on one port for its whole life."""

    def __init__(self, data_dir: Path, log: Path) -> None:
        self.data_dir = data_dir
        self.log = log
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def redis_pids(self) -> list[int]:
        return redis_pids(self.data_dir / PRIVATE_DIR)

    def healthy(self) -> bool:
        body = health(self.port)
        return bool(body and body.get("status") == "ok")

    def start(self) -> None:
        args = [sys.executable, "-m", "planchet", "serve", "--data-dir", str(self.data_dir),
                "--port", str(self.port)]
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(args, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                                         env=clean_env(), start_new_session=True)
        proc = self.proc
        if not poll(lambda: proc.poll() is not None or self.healthy(), START_TIMEOUT):
            self.kill()
            raise ChaosError(f"planchet serve did not come up in {START_TIMEOUT:g} s; "
                             f"see {self.log}")
        if proc.returncode is not None:
            raise ChaosError(f"planchet serve exited with code {proc.returncode}; "
                             f"see {self.log}")

    def kill(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def stop(self) -> int:
        """SIGTERM, as an operator would; the exit code (-9 if it had to be killed)."""
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.kill()
        return self.proc.returncode


@dataclass
class Worker:
    kind: str
    job: str
    proc: subprocess.Popen[bytes]
    log: Path
    doomed: bool = False  # the harness killed it: its exit is no finding
    stopped_until: float | None = None  # SIGSTOPped until then (monotonic)
    resume: bool = True  # on release: SIGCONT, else kill -9

    @property
    def long_lived(self) -> bool:
        return self.kind in ("blocking", "async", "work")

    def tail(self, lines: int = 3) -> str:
        text = self.log.read_text(errors="replace").strip().splitlines()
        return " | ".join(text[-lines:]) or "(no output)"

    def cpu_seconds(self) -> float:
        """User and system CPU time the worker's main process has used so far."""
        try:
            fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def where(self) -> str:
        """Where a worker that will not leave is stuck: the innermost frames of each thread."""
        size = self.log.stat().st_size
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.proc.pid, signal.SIGUSR1)  # its faulthandler dumps the stacks
        poll(lambda: self.log.stat().st_size > size, 2.0)
        dump = self.log.read_text(errors="replace")[size:].splitlines()
        frames = [dump[n + 1].strip() for n, line in enumerate(dump[:-1])
                  if line.endswith("(most recent call first):")]
        return " / ".join(frames) or "(no stack dump)"


@dataclass
class Pool:
    """Workers by kind; ``fill`` keeps the long-lived ones at strength."""

    url: str
    log_dir: Path
    strength: dict[str, int]  # blocking / async / work -> how many
    delay: float  # seconds each blocking or async worker sleeps per batch
    workers: list[Worker] = field(default_factory=list)
    started: Counter[str] = field(default_factory=Counter)

    def spawn(self, kind: str, job: str, arg: str = "") -> Worker:
        self.started[kind] += 1
        log = self.log_dir / f"{kind}-{self.started[kind]}.log"
        args = [sys.executable, "-m", "tests.chaos.worker", kind, self.url, job,
                arg or str(self.delay)]
        with open(log, "wb") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, cwd=REPO,
                                    env=clean_env(), start_new_session=True)
        worker = Worker(kind, job, proc, log)
        self.workers.append(worker)
        return worker

    def fill(self, job: str) -> None:
        for kind, wanted in self.strength.items():
            alive = [w for w in self.workers if w.kind == kind and w.job == job and not w.doomed]
            for _ in range(wanted - len(alive)):
                self.spawn(kind, job)

    def reap(self) -> list[Worker]:
        """Forget the workers that exited; those that failed on their own are returned."""
        failed = []
        for worker in [w for w in self.workers if w.proc.poll() is not None]:
            self.workers.remove(worker)
            if not worker.doomed and worker.proc.returncode != 0:
                failed.append(worker)
        return failed

    def victim(self, pick: int) -> Worker | None:
        """A long-lived, running worker, chosen by ``pick``."""
        able = [w for w in self.workers if w.long_lived and not w.doomed
                and w.stopped_until is None and w.proc.poll() is None]
        return able[pick % len(able)] if able else None

    def kill(self, worker: Worker) -> None:
        worker.doomed = True
        signal_group(worker.proc, signal.SIGKILL)

    def hang(self, worker: Worker, until: float, resume: bool) -> None:
        worker.stopped_until, worker.resume = until, resume
        signal_group(worker.proc, signal.SIGSTOP)

    def release(self, now: float, everyone: bool = False) -> int:
        """SIGCONT or kill the hung workers whose time is up; how many."""
        due = [w for w in self.workers if w.stopped_until is not None
               and (everyone or w.stopped_until <= now)]
        for worker in due:
            worker.stopped_until = None
            if worker.resume:
                signal_group(worker.proc, signal.SIGCONT)
            else:
                self.kill(worker)
                signal_group(worker.proc, signal.SIGCONT)  # a stopped process dies on CONT
        return len(due)

    def wait_all(self, timeout: float) -> list[Worker]:
        """Wait for every worker to exit; those still running after ``timeout`` s."""
        poll(lambda: all(w.proc.poll() is not None for w in self.workers), timeout, 0.2)
        return [w for w in self.workers if w.proc.poll() is None]

    def shutdown(self) -> None:
        for worker in self.workers:
            self.kill(worker)
            signal_group(worker.proc, signal.SIGCONT)
        for worker in self.workers:
            worker.proc.wait()
