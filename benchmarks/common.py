"""What every benchmark shares: input files, child processes, a Planchet server, the table.

Every child process goes through :func:`spawn` and every working directory through
:class:`DataDir`, so :func:`cleanup` (run at exit, on Ctrl-C and on SIGTERM) can stop
them all: servers with SIGTERM (they stop their private redis-server), anything else
with SIGKILL, then any redis-server still running under a working directory.
Children also get SIGTERM from the kernel if this process dies without cleaning up.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import ctypes
import json
import os
import select
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from planchet.embedded import free_port, redis_pids

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
CACHE = HERE / ".cache"  # generated inputs (kept) and working directories (removed)
SHARED = Path(os.environ.get("PLANCHET_SHARED_DATA", REPO.parent / "shared" / "data"))
HEADLINES = SHARED / "news_headlines.jsonl"

class Failed(Exception):
    """A measurement that could not be made: a process failed, a check did not hold."""


_children: list[subprocess.Popen[bytes]] = []
_servers: set[int] = set()  # pids of planchet servers: stopped with SIGTERM
_dirs: list[Path] = []


def now() -> float:
    """CLOCK_MONOTONIC: one clock for every process of the machine, so times compare."""
    return time.clock_gettime(time.CLOCK_MONOTONIC)


def work(item: Any) -> dict[str, int]:
    """The trivial work per item of every benchmark: count the words of the text."""
    return {"words": len(str(item.get("text", "")).split()) if isinstance(item, dict) else 0}


# --- input files --------------------------------------------------------------------------


def headlines_file(n_items: int) -> Path:
    """The shared headlines repeated to ``n_items`` lines, written once into the cache."""
    path = CACHE / f"headlines-{n_items}.jsonl"
    if not path.exists():
        if not HEADLINES.is_file():
            raise Failed(f"no {HEADLINES}: set PLANCHET_SHARED_DATA to the shared data dir")
        lines = HEADLINES.read_bytes().splitlines(keepends=True)
        repeats = -(-n_items // len(lines))
        _write_atomic(path, [b"".join((lines * repeats)[:n_items])])
    return path


def generated_file(n_items: int) -> Path:
    """``n_items`` small generated JSONL records (with a ``text``), written once."""
    path = CACHE / f"generated-{n_items}.jsonl"
    if not path.exists():
        chunk = 1_000_000
        _write_atomic(path, (
            b"".join(b'{"n":%d,"text":"generated item number %d of the file"}\n' % (i, i)
                     for i in range(start, min(start + chunk, n_items)))
            for start in range(0, n_items, chunk)))
    return path


def _write_atomic(path: Path, chunks: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_suffix(f".partial-{os.getpid()}")
    with open(partial, "wb") as out:
        for chunk in chunks:
            out.write(chunk)
    partial.rename(path)


class DataDir:
    """A fresh working directory in the cache, holding hard links to the inputs."""

    count = 0

    def __init__(self, name: str, inputs: Sequence[Path] = ()) -> None:
        DataDir.count += 1
        self.path = CACHE / f"run-{os.getpid()}-{DataDir.count}-{name}"
        self.inputs = inputs

    def __enter__(self) -> Path:
        shutil.rmtree(self.path, ignore_errors=True)
        self.path.mkdir(parents=True)
        _dirs.append(self.path)
        for source in self.inputs:
            try:
                os.link(source, self.path / source.name)
            except OSError:
                shutil.copyfile(source, self.path / source.name)
        return self.path

    def __exit__(self, *_: object) -> None:
        _remove_dir(self.path)


def _remove_dir(path: Path) -> None:
    for pid in redis_pids(path):  # a server that was killed leaves its redis-server
        _kill(pid, signal.SIGKILL)
    shutil.rmtree(path, ignore_errors=True)
    if path in _dirs:
        _dirs.remove(path)


# --- child processes ----------------------------------------------------------------------


def _die_with_parent() -> None:
    """In the child: SIGTERM when the benchmark dies, even by SIGKILL (Linux prctl)."""
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL(None).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def clean_env() -> dict[str, str]:
    """The environment without PLANCHET_* settings, so a user's exports cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PLANCHET_")}


def spawn(args: Sequence[str], *, log: Path | None = None, pipes: bool = False,
          server: bool = False) -> subprocess.Popen[bytes]:
    """Start a child of this benchmark: its output to ``log`` if given, its errors to ours;
    with ``pipes``, its stdin and stdout are pipes (unbuffered) to talk to it."""
    out: IO[bytes] | None = open(log, "ab") if log else None  # noqa: SIM115
    proc = subprocess.Popen(
        list(args), stdin=subprocess.PIPE if pipes else subprocess.DEVNULL,
        stdout=subprocess.PIPE if pipes else (out or subprocess.DEVNULL), stderr=out,
        env=clean_env(), bufsize=0,
        start_new_session=True, preexec_fn=_die_with_parent)  # Ctrl-C is ours to handle
    if out:
        out.close()
    _children.append(proc)
    if server:
        _servers.add(proc.pid)
    return proc


def stop(proc: subprocess.Popen[bytes], grace: float = 30.0) -> int:
    """End a child: SIGTERM for a server (it stops its Redis), SIGKILL for the rest."""
    if proc.poll() is None:
        _kill(proc.pid, signal.SIGTERM if proc.pid in _servers else signal.SIGKILL)
        try:
            proc.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    for stream in (proc.stdin, proc.stdout):
        if stream:
            stream.close()
    if proc in _children:
        _children.remove(proc)
    _servers.discard(proc.pid)
    return proc.returncode


def _kill(pid: int, sig: signal.Signals) -> None:
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, sig)


def cleanup() -> None:
    """Stop every child still running and remove every working directory."""
    for proc in reversed(list(_children)):  # workers before the servers they talk to
        if proc.pid not in _servers:
            stop(proc)
    for proc in list(_children):
        stop(proc, grace=15)
    for path in list(_dirs):
        _remove_dir(path)


def sweep_stale() -> None:
    """Remove working directories left by a benchmark that was killed (its pid is gone)."""
    for path in CACHE.glob("run-*"):
        pid = int(path.name.split("-")[1])
        if pid != os.getpid() and not Path(f"/proc/{pid}").exists():
            _remove_dir(path)


def install_cleanup() -> None:
    sweep_stale()
    atexit.register(cleanup)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # finally blocks, then atexit


# --- workers started together --------------------------------------------------------------


def start_crew(commands: Sequence[Sequence[str]], timeout: float = 120
               ) -> list[subprocess.Popen[bytes]]:
    """Start workers that each print ``ready`` once connected; return when all have."""
    crew = [spawn(command, pipes=True) for command in commands]
    deadline = time.monotonic() + timeout
    for proc in crew:
        line = read_line(proc, deadline)
        if line.strip() != "ready":
            raise Failed(f"a worker did not get ready: {line!r}")
    return crew


def go(crew: Sequence[subprocess.Popen[bytes]]) -> None:
    """Let the crew start consuming, all at once."""
    for proc in crew:
        assert proc.stdin is not None
        proc.stdin.write(b"go\n")
        proc.stdin.flush()


def finish_crew(crew: Sequence[subprocess.Popen[bytes]], timeout: float) -> list[dict[str, Any]]:
    """Each worker's last line (JSON: first, done, items), once they have all exited."""
    deadline = time.monotonic() + timeout
    reports = [json.loads(read_line(proc, deadline)) for proc in crew]
    for proc in crew:
        code = proc.wait(timeout=max(deadline - time.monotonic(), 1))
        stop(proc)
        if code:
            raise Failed(f"a worker exited with code {code}")
    return reports


def read_line(proc: subprocess.Popen[bytes], deadline: float) -> str:
    """The next line the child prints; Failed if it exits or the deadline passes."""
    assert proc.stdout is not None
    if not select.select([proc.stdout], [], [], max(deadline - time.monotonic(), 0))[0]:
        raise Failed(f"no answer from worker {proc.pid} in time")
    line = proc.stdout.readline().decode()
    if not line:
        raise Failed(f"worker {proc.pid} exited with code {proc.wait()} before answering")
    return line


def elapsed(reports: Sequence[dict[str, Any]]) -> float:
    """From the first batch any worker received to the last worker's sight of done."""
    return max(r["done"] for r in reports) - min(r["first"] for r in reports if r["first"])


# --- a Planchet server --------------------------------------------------------------------


class PlanchetServer:
    """``planchet serve`` on a free port with its private Redis, in ``data``."""

    def __init__(self, data: Path, *options: str) -> None:
        self.data, self.options = data, options
        self.port = free_port()
        self.url = f"ws://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> PlanchetServer:
        command = [sys.executable, "-m", "planchet", "serve", "--port", str(self.port),
                   "--data-dir", str(self.data), *self.options]
        self.proc = spawn(command, log=self.data / "server.log", server=True)
        if wait:
            self.wait_healthy()
        return self

    def wait_healthy(self, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc is None or self.proc.poll() is not None:
                raise Failed(f"the server exited with code {self.proc and self.proc.returncode}"
                             f"; its log ends:\n{self.log_tail()}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return
            except OSError:
                time.sleep(0.02)
        raise Failed(f"the server did not answer /health within {timeout:g} s; its log ends:"
                     f"\n{self.log_tail()}")

    def log_tail(self) -> str:
        with contextlib.suppress(OSError):
            return (self.data / "server.log").read_text(errors="replace")[-2000:]
        return ""

    def stop(self) -> None:
        if self.proc is not None:
            stop(self.proc)
            self.proc = None
        for pid in redis_pids(self.data):
            print(f"  warning: redis-server {pid} outlived its server; killed", file=sys.stderr)
            _kill(pid, signal.SIGKILL)

    def rss_mb(self) -> float:
        assert self.proc is not None
        return rss_mb(self.proc.pid)

    def redis_rss_mb(self) -> float:
        """RSS of the private redis-server, found by its directory (its port is private)."""
        return sum(rss_mb(pid) for pid in redis_pids(self.data / ".planchet"))

    def __enter__(self) -> PlanchetServer:
        return self.start()

    def __exit__(self, *_: object) -> None:
        self.stop()


def rss_mb(pid: int) -> float:
    """Resident set size of a process, from /proc, in MB (10^6 bytes)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024 / 1e6
    return 0.0


def job_metadata(input_name: str, output_name: str) -> dict[str, str]:
    return {"input_file_path": input_name, "output_file_path": output_name}


# --- the table ----------------------------------------------------------------------------


@dataclass
class Row:
    """One figure of Planchet beside its baseline from the same run."""

    part: str
    case: str
    value: float
    unit: str
    baseline: str
    base: float

    @property
    def ratio(self) -> float:
        return self.value / self.base if self.base else float("nan")

    def line(self) -> str:
        return (f"{self.case}: {fmt(self.value)} {self.unit} vs {self.baseline} "
                f"{fmt(self.base)} ({self.ratio * 100:.0f} %)")


def fmt(value: float) -> str:
    if value >= 100:
        return f"{value:,.0f}"
    return f"{value:.3g}" if value >= 1 else f"{value:.2g}"


def percentile(values: Sequence[float], p: float) -> float:
    """Nearest-rank percentile: the smallest value with ``p`` % of them at or below it."""
    ordered = sorted(values)
    return ordered[max(int(-(-p * len(ordered) // 100)) - 1, 0)]


WORKER = str(HERE / "worker.py")


def worker_command(kind: str, url: str, batch: int, *jobs: str) -> list[str]:
    """A Planchet benchmark worker (worker.py): ``async`` or ``blocking``."""
    return [sys.executable, WORKER, kind, url, str(batch), *jobs]


def start_job(admin: Any, job: str, source: str, batch: int, **options: Any) -> None:
    admin.start_job(job, job_metadata(source, f"{job}.out.jsonl"), "JsonlReader",
                    writer_name="JsonlWriter", batch_size=batch, **options)


def wait_settled(admin: Any, job: str, target: float, timeout: float) -> dict[str, Any]:
    """Poll the job's report until ``target`` items are settled (written or failed)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        report = admin.get_job_report(job)
        if report["written"] + report["failed"] >= target:
            return report
        time.sleep(0.05)
    raise Failed(f"job {job} did not reach {target:,.0f} settled items in {timeout:g} s")


def check_done(report: dict[str, Any], n_items: int) -> None:
    if (report["state"], report["written"], report["failed"]) != ("done", n_items, 0):
        raise Failed(f"job {report['job']} is not done with {n_items} written: {report}")


def standalone(doc: str, run: Callable[[argparse.Namespace], Iterator[Row]],
               *configure: Callable[[argparse.ArgumentParser], None]) -> None:
    """Run one part alone: parse ``--quick`` and what ``configure`` adds, print each figure."""
    parser = argparse.ArgumentParser(description=doc.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="small")
    for add in configure:
        add(parser)
    args = parser.parse_args()
    install_cleanup()
    for row in run(args):
        print(row.line(), flush=True)


def add_items(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--items", type=int, help="default 200,000; 20,000 with --quick")
