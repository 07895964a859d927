"""Resume: from starting ``planchet serve`` to the first batch of a big job, part done.

    python benchmarks/resume.py [--quick]     # --quick: a 1M-item file instead of 10M

One job on a generated 10M-item file (batches of 1,000) is created and the server
stopped: 0 % done. At 0 %, 10 % and 50 % done, ``planchet serve`` is started 3 times
on the same data directory (its private Redis and the job's files as the last server
left them), each time timed from the moment the process is spawned to the first batch
received by a probe that keeps trying to connect every 5 ms, sends ``hello`` and a
credit of 1 and waits; the figure is the median. After the last start at a point, 4
asyncio-client workers carry the job on to 10 %, then to 50 % settled; they are killed
and the server is stopped with SIGTERM. The 0 % start is the baseline: resuming must
not cost more the more is done.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
from collections.abc import Iterator
from pathlib import Path

import common
import orjson
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidHandshake

from planchet import PlanchetClient

BATCH, WORKERS, JOB = 1000, 4, "resume"
STARTS = 3  # server starts timed at each point; the figure is their median
HELLO = orjson.dumps({"type": "hello", "protocol": 1, "client": "resume-probe"})
CREDIT = orjson.dumps({"type": "credit", "job": JOB, "batches": 1})


async def first_batch(url: str, timeout: float = 120) -> float:
    """When the first batch of the job reached a probe that tried from the start."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            ws = await connect(url, max_size=None, open_timeout=5)
        except (OSError, InvalidHandshake):
            await asyncio.sleep(0.005)
            continue
        async with ws:
            await ws.send(HELLO)
            await ws.send(CREDIT)
            while (message := orjson.loads(await ws.recv()))["type"] != "batch":
                if message["type"] == "error":  # the job is not loaded yet: ask again
                    await asyncio.sleep(0.005)
                    await ws.send(CREDIT)
            return common.now()
    raise common.Failed(f"no batch within {timeout:g} s of starting the server")


def advance(server: common.PlanchetServer, target: float, n_items: int) -> None:
    """Let workers carry the job to ``target`` settled items, then kill them."""
    with PlanchetClient(server.url) as admin:
        crew = common.start_crew([common.worker_command("async", server.url, BATCH, JOB)]
                                 * WORKERS)
        try:
            common.go(crew)
            common.wait_settled(admin, JOB, target, 120 + n_items / 1000)
        finally:
            for proc in crew:
                common.stop(proc)


def start_to_batch(data: Path, then: float | None, n_items: int) -> float:
    """Spawn a server, time it to the first batch; then advance the job to ``then``."""
    server = common.PlanchetServer(data)
    began = common.now()
    try:
        server.start(wait=False)
        seconds = asyncio.run(first_batch(server.url)) - began
        if then:
            advance(server, then, n_items)
    finally:
        server.stop()
    return seconds


def resumes(data: Path, n_items: int) -> dict[int, float]:
    """Median seconds from spawning the server to the first batch, at 0, 10 and 50 % done."""
    with common.PlanchetServer(data) as server, PlanchetClient(server.url) as admin:
        common.start_job(admin, JOB, f"generated-{n_items}.jsonl", BATCH)
    times = {}
    for done, then in ((0, 10), (10, 50), (50, None)):
        starts = [start_to_batch(data, None, n_items) for _ in range(STARTS - 1)]
        starts.append(start_to_batch(data, then and n_items * then / 100, n_items))
        times[done] = statistics.median(starts)
    return times


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = 1_000_000 if args.quick else 10_000_000
    source = common.generated_file(n_items)
    with common.DataDir("resume", [source]) as data:
        times = resumes(data, n_items)
    for done in (50, 10):
        yield common.Row("resume", f"serve to first batch, {n_items // 1_000_000}M items, "
                         f"{done} % done (median of {STARTS})", 1000 * times[done], "ms",
                         "0 % done",
                         1000 * times[0])


def main() -> None:
    common.standalone(__doc__, run)


if __name__ == "__main__":
    main()
