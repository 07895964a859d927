"""The demo: a real server, a 10,000-headline job, four worker processes, a checked output.

Run it with ``bash scripts/demo.sh`` (which sets up .venv first). It makes a fresh
``.demo/`` data dir, writes the shared news headlines repeated ``--repeat`` times to
``.demo/data/news_headlines.jsonl``, starts ``planchet serve`` (with its own private
redis-server), starts the job, runs ``--workers`` copies of
``examples/headline_entities.py`` (the original README's spaCy example with a
model-free stand-in for NER), and then checks what a user would: every id exactly once
in the output, nothing in the error file, the server's counts agree, and the server
stops on SIGTERM without leaving its redis-server behind. Exits 1 if any check fails.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

from planchet import PlanchetClient, PlanchetError
from planchet.embedded import free_port, redis_pids

REPO = Path(__file__).resolve().parents[1]
DEMO_DIR = REPO / ".demo"  # the default; gitignored
JOB = "headline-entities"
INPUT, OUTPUT = "./data/news_headlines.jsonl", "./data/entities.jsonl"


class DemoFailed(Exception):
    pass


def clean_env() -> dict[str, str]:
    """The environment without PLANCHET_* settings, so a user's exports cannot leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PLANCHET_")}


def make_input(demo: Path, shared: Path, repeat: int) -> int:
    source = shared / "news_headlines.jsonl"
    if not source.is_file():
        raise DemoFailed(f"no {source}: set PLANCHET_SHARED_DATA to the shared data folder")
    headlines = source.read_bytes()
    if not headlines.endswith(b"\n"):
        headlines += b"\n"
    target = demo / INPUT
    target.parent.mkdir(parents=True)
    target.write_bytes(headlines * repeat)
    return headlines.count(b"\n") * repeat


def start_server(demo: Path, port: int) -> subprocess.Popen[bytes]:
    log = open(demo / "server.log", "wb")  # noqa: SIM115 - the child keeps writing it
    command = [sys.executable, "-m", "planchet", "serve", "--data-dir", str(demo),
               "--port", str(port)]
    proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=clean_env(),
                            start_new_session=True)
    log.close()
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise DemoFailed(f"the server exited with code {proc.returncode}; see {log.name}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                if json.loads(r.read())["status"] == "ok":
                    return proc
        except OSError:
            pass
        time.sleep(0.1)
    proc.kill()
    raise DemoFailed("the server did not answer /health within 30 s")


def stop_server(demo: Path, proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, as a service manager would; the server must stop its redis-server too."""
    redis_before = redis_pids(demo)
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise DemoFailed("the server did not stop within 30 s of SIGTERM") from None
    left = redis_pids(demo)
    if code != 0:
        raise DemoFailed(f"the server exited with code {code} on SIGTERM")
    if left:
        raise DemoFailed(f"redis-server still running after the server stopped: pids {left}")
    if not redis_before:
        return "stopped (exit 0)"
    return f"stopped (exit 0); its redis-server (pid {redis_before[0]}) is gone"


def run_workers(demo: Path, url: str, workers: int, batch_size: int, timeout: float) -> float:
    command = [sys.executable, str(REPO / "examples" / "headline_entities.py")]
    env = clean_env()
    began = time.perf_counter()
    procs = []
    for k in range(workers):
        with open(demo / f"worker-{k}.log", "wb") as log:
            procs.append(subprocess.Popen(
                [*command, str(k), "--url", url, "--job", JOB, "--input", INPUT,
                 "--output", OUTPUT, "--batch-size", str(batch_size), "--quiet"],
                stdout=log, stderr=subprocess.STDOUT, env=env))
    deadline = began + timeout
    try:
        codes = [p.wait(timeout=max(deadline - time.perf_counter(), 0.1)) for p in procs]
    except subprocess.TimeoutExpired:
        raise DemoFailed(f"the workers did not finish within {timeout:g} s") from None
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    seconds = time.perf_counter() - began
    if any(codes):
        raise DemoFailed(f"worker exit codes {codes}; see {demo}/worker-*.log")
    return seconds


def verify(demo: Path, expected: int, report: dict[str, Any]) -> str:
    """Every id exactly once, each with its entities; no errors; the server agrees."""
    counts: collections.Counter[int] = collections.Counter()
    with open(demo / OUTPUT, "rb") as out:
        for line in out:
            record = json.loads(line)
            if not isinstance(record["item"].get("ents"), list):
                raise DemoFailed(f"id {record['id']} has no entity list")
            counts[record["id"]] += 1
    missing = expected - len(counts.keys() & set(range(expected)))
    repeated = sum(1 for n in counts.values() if n > 1)
    errors = demo / (OUTPUT + ".errors.jsonl")
    failed = errors.read_bytes().count(b"\n") if errors.exists() else 0
    problems = [f"{missing} ids missing" if missing else "",
                f"{repeated} ids written more than once" if repeated else "",
                f"{failed} items in the error file" if failed else "",
                f"the server says {report['state']}, {report['written']} written"
                if (report["state"], report["written"]) != ("done", expected) else ""]
    if any(problems):
        raise DemoFailed("output check failed: " + "; ".join(p for p in problems if p))
    return f"{sum(counts.values()):,} lines, every id exactly once, 0 errors"


def run(args: argparse.Namespace) -> None:
    shared = Path(os.environ.get("PLANCHET_SHARED_DATA", REPO.parent / "shared" / "data"))
    demo = Path(args.data_dir).resolve()
    if redis_pids(demo):
        raise DemoFailed(f"a redis-server from an earlier demo still runs in {demo}")
    if demo.is_dir() and any(demo.iterdir()) and not (demo / "server.log").exists():
        raise DemoFailed(f"{demo} is not empty and not an old demo dir; not emptying it")
    shutil.rmtree(demo, ignore_errors=True)
    demo.mkdir(parents=True)
    items = make_input(demo, shared, args.repeat)
    port = args.port or free_port()
    url = f"ws://127.0.0.1:{port}"
    print(f"Planchet demo: {items:,} headlines, {args.workers} workers "
          f"(examples/headline_entities.py), batches of {args.batch_size}")
    server = start_server(demo, port)
    try:
        with PlanchetClient(url) as client:
            client.start_job(JOB, {"input_file_path": INPUT, "output_file_path": OUTPUT},
                             "JsonlReader", writer_name="JsonlWriter",
                             batch_size=args.batch_size)
            seconds = run_workers(demo, url, args.workers, args.batch_size, args.timeout)
            report = client.get_job_report(JOB)
        checked = verify(demo, items, report)
    finally:
        stopped = stop_server(demo, server)
    print(f"  items     {items:,}")
    print(f"  seconds   {seconds:.2f}  (from starting the workers to the last one exiting)")
    print(f"  items/s   {items / seconds:,.0f}")
    print(f"  output    {demo.name}/{OUTPUT.removeprefix('./')}: {checked}")
    print(f"  server    {stopped}")
    print("OK")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="copies of the 200 headlines")
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=100)
    parser.add_argument("--port", type=int, help="default: a free port")
    parser.add_argument("--timeout", type=float, default=600, help="seconds for the workers")
    parser.add_argument("--data-dir", default=str(DEMO_DIR),
                        help="made afresh (emptied!) for the run; default .demo in the repo")
    args = parser.parse_args(argv)
    try:
        run(args)
    except (DemoFailed, PlanchetError) as exc:
        print(f"FAILED: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
