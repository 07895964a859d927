"""The chaos run: a server, a job, a pool of workers and a seeded schedule of faults.

The run lasts as long as the schedule (``duration``); a job that finishes early is
followed by another over the same input (a *round*), so faults always strike a live
job. Dead workers are replaced, so every job finishes; then each job's files and
report are checked (:mod:`tests.chaos.files`).
"""

from __future__ import annotations

import collections
import contextlib
import os
import shutil
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from planchet.client import PlanchetClient
from tests.chaos.faults import Injector, schedule
from tests.chaos.files import ChaosInput, check_job, write_input
from tests.chaos.processes import ChaosError, Pool, Server, poll
from tests.support import REPO

SHARED = Path(os.environ.get("PLANCHET_SHARED_DATA", REPO.parent / "shared" / "data"))
TICK = 0.2  # seconds between turns of the harness's loop
EXIT_GRACE = 30.0  # seconds workers get to leave once the last job is done
TOLERATED = "planchet.exceptions.ConnectionLost"  # a worker's last words that are no finding


@dataclass
class Config:
    seed: int = 1
    duration: float = 30.0  # seconds of faults
    items: int = 20_000  # lines of each job's input, poisoned ones included
    workers: dict[str, int] = field(
        default_factory=lambda: {"blocking": 2, "async": 2, "work": 2})
    interval: float = 2.5  # mean seconds between faults
    delay: float = 0.02  # seconds a blocking or async worker spends on each batch
    lease_timeout: float = 3.0  # so the items of hung workers come back soon
    stall: float = 90.0  # seconds without progress before the run is declared stuck
    workdir: Path | None = None  # None: a fresh temporary directory, removed on PASS
    headlines: Path = field(default_factory=lambda: SHARED / "news_headlines.jsonl")


@dataclass
class Round:
    job: str
    output: Path
    report: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    checked: bool = False  # by a background thread
    forgotten: bool = False  # deleted from the server, files and all

    @property
    def errors(self) -> Path:
        return self.output.with_name(self.output.name + ".errors.jsonl")


@dataclass
class Outcome:
    config: Config
    workdir: Path
    injected: collections.Counter[str] = field(default_factory=collections.Counter)
    skipped: collections.Counter[str] = field(default_factory=collections.Counter)
    findings: list[str] = field(default_factory=list)
    tolerated: collections.Counter[str] = field(default_factory=collections.Counter)
    rounds: list[Round] = field(default_factory=list)
    workers: collections.Counter[str] = field(default_factory=collections.Counter)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return bool(self.rounds) and not self.findings and not any(
            r.problems for r in self.rounds)


class Monitor:
    """The harness's own client, for starting jobs and reading reports; never raises."""

    def __init__(self, url: str) -> None:
        self.url = url
        self.client: PlanchetClient | None = None

    def call(self, method: str, *args: Any, **kwargs: Any) -> Any:
        try:
            if self.client is None:
                self.client = PlanchetClient(self.url, retries=1, timeout=10)
            return getattr(self.client, method)(*args, **kwargs)
        except Exception:  # any failure here is the system's to show, not the harness's
            self.close()
            return None

    def close(self) -> None:
        client, self.client = self.client, None
        if client is not None:
            with contextlib.suppress(Exception):  # a broken connection is already gone
                client.close()


class Chaos:
    def __init__(self, config: Config, source: ChaosInput, server: Server,
                 outcome: Outcome) -> None:
        self.config, self.source, self.server, self.outcome = config, source, server, outcome
        self.pool = Pool(server.url, outcome.workdir / "logs", config.workers, config.delay)
        self.injector = Injector(server, self.pool)
        self.monitor = Monitor(server.url)
        self.progress = (-1, time.monotonic())  # settled items, when that last changed
        self.checks = ThreadPoolExecutor(max_workers=1)  # one job's files at a time

    def run(self) -> None:
        faults = collections.deque(schedule(self.config.seed, self.config.duration,
                                            self.config.interval))
        start = time.monotonic()
        current = self._start_round()
        while True:
            while faults and faults[0].at <= time.monotonic() - start:
                self.injector.inject(faults.popleft(), current.job)
            self._tend(current.job)
            current.report = self._report(current.job)
            if current.report and current.report.get("state") == "done":
                self.checks.submit(self._check, current)
                if not faults:
                    break
                current = self._start_round()
            time.sleep(TICK)
        self._finish()

    def _check(self, current: Round) -> None:
        """Judge a finished job, in the background: the run goes on."""
        try:
            current.problems = check_job(self.source, current.output, current.errors,
                                         current.report)
        except Exception as exc:  # a bug of the harness: say so, do not lose it in a thread
            current.problems = [f"the check itself failed: {exc!r}"]
        current.checked = True

    def _forget(self) -> None:
        """Delete the jobs found right that no worker (a hung one, say) still works on,
        and their files, so that a long run does not fill the disk."""
        busy = {worker.job for worker in self.pool.workers}
        done = [r for r in self.outcome.rounds
                if r.checked and not r.problems and not r.forgotten and r.job not in busy]
        for r in done:
            if self.monitor.call("delete_job", r.job) is not None:
                r.output.unlink(missing_ok=True)
                r.errors.unlink(missing_ok=True)
                r.forgotten = True

    def _start_round(self) -> Round:
        n = len(self.outcome.rounds) + 1
        current = Round(f"chaos-{n}", self.server.data_dir / f"out-{n}.jsonl")
        metadata = {"input_file_path": self.source.path.name,
                    "output_file_path": current.output.name}
        started = poll(lambda: self.monitor.call(
            "start_job", current.job, metadata, "JsonlReader", writer_name="JsonlWriter",
            lease_timeout=self.config.lease_timeout, batch_size=100), 60.0, 0.5)
        if not started:
            raise ChaosError(f"could not start job {current.job}")
        self.outcome.rounds.append(current)
        self.progress = (-1, time.monotonic())
        return current

    def _tend(self, job: str) -> None:
        """Release hung workers whose time is up, note failed ones, forget old jobs,
        refill the pool."""
        self.pool.release(time.monotonic())
        self._reap()
        self._forget()
        self.pool.fill(job)

    def _reap(self) -> None:
        """Note the workers that died on their own: a finding, unless the client said
        clearly that it gave up on a connection (ConnectionLost, a documented error)."""
        for worker in self.pool.reap():
            if worker.tail(1).startswith(TOLERATED):
                self.outcome.tolerated[f"{worker.kind}: {worker.tail(1)[:120]}"] += 1
            else:
                self.outcome.findings.append(f"{worker.kind} worker exited with code "
                                             f"{worker.proc.returncode}: {worker.tail()}")

    def _report(self, job: str) -> dict[str, Any] | None:
        """The job's report (None while the server does not answer); raise if it is stuck."""
        report = self.monitor.call("get_job_report", job)
        settled = report and report.get("written", 0) + report.get("failed", 0)
        if report and settled != self.progress[0]:
            self.progress = (settled, time.monotonic())
        elif time.monotonic() - self.progress[1] > self.config.stall:
            raise ChaosError(f"job {job} made no progress in {self.config.stall:g} s; "
                             f"last report: {report}")
        return report

    def _finish(self) -> None:
        """Let every worker go, and note those that do not."""
        self.pool.release(time.monotonic(), everyone=True)
        for worker in self.pool.wait_all(EXIT_GRACE):
            self.outcome.findings.append(
                f"{worker.kind} worker still running {EXIT_GRACE:g} s after the last job "
                f"was done, {worker.cpu_seconds():.1f} s of CPU used, at {worker.where()}")
        self._reap()  # the workers that failed on their way out

    def close(self) -> None:
        self.outcome.injected, self.outcome.skipped = (self.injector.injected,
                                                       self.injector.skipped)
        self.outcome.findings[:0] = self.injector.findings
        self.outcome.workers = self.pool.started
        self.monitor.close()
        self.pool.shutdown()
        self.checks.shutdown()


def run(config: Config) -> Outcome:
    """One chaos run, from an empty directory to the verdict."""
    workdir = config.workdir or Path(tempfile.mkdtemp(prefix="planchet-chaos-"))
    (workdir / "data").mkdir(parents=True)
    (workdir / "logs").mkdir()
    outcome = Outcome(config, workdir)
    began = time.monotonic()
    source = write_input(workdir / "data" / "input.jsonl", config.headlines, config.items,
                         config.seed)
    server = Server(workdir / "data", workdir / "serve.log")
    try:
        server.start()
        chaos = Chaos(config, source, server, outcome)
        try:
            chaos.run()
        finally:
            chaos.close()
    except ChaosError as exc:
        outcome.findings.append(str(exc))
    finally:
        code = server.stop() if server.proc else 0
        if code != 0:
            outcome.findings.append(f"planchet serve exited with code {code} on SIGTERM")
    for current in outcome.rounds:
        if not current.checked:  # the job that was running when the run broke off
            current.problems = check_job(source, current.output, current.errors,
                                         current.report)
    outcome.seconds = time.monotonic() - began
    if outcome.passed and config.workdir is None:
        shutil.rmtree(workdir, ignore_errors=True)
    return outcome
