"""Dashboard: does a watcher slow dispatch? 100 jobs, ~1,000 connections, one server.

    python benchmarks/dashboard.py [--items 200000] [--connections 1000] [--busy 4]

One ``planchet serve`` (``--max-connections 1100``) holds 100 jobs: three "busy" jobs of
``--items`` headlines and 97 paused ones. One process holds the idle crowd (``connections
- busy`` connections, each with a credit of 2 on one of the paused jobs, spread evenly:
every one of them is a worker a status lists). Then three phases, each timed as in the
throughput benchmark by a fresh crew of ``--busy`` asyncio workers on its own busy job:
no watcher; a dashboard-like watcher (``watch`` on every job, each status decoded) at
1 s; the same at 0.25 s. The figure: items/s with the watcher against without it.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import common
import orjson
from websockets.asyncio.client import ClientConnection, connect

from planchet import PlanchetClient

BATCH, JOBS, OPEN_AT_ONCE = 100, 100, 50
BUSY_JOBS = ("busy-none", "busy-1s", "busy-250ms")


async def idle_connection(url: str, job: str, gate: asyncio.Semaphore) -> ClientConnection:
    async with gate:
        ws = await connect(url, max_size=None)
        await ws.send(orjson.dumps({"type": "hello", "protocol": 1,
                                    "client": "planchet-python/bench asyncio"}))
        await ws.recv()  # welcome
        await ws.send(orjson.dumps({"type": "credit", "job": job, "batches": 2}))
        return ws


async def hold_idle(url: str, count: int, jobs: list[str]) -> None:
    """The idle crowd, in one process: open, print ``ready``, wait for a line, close."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    crowd = await asyncio.gather(*(idle_connection(url, jobs[k % len(jobs)], gate)
                                   for k in range(count)))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in crowd))


async def dashboard(url: str, interval: float) -> None:
    """A watcher as the dashboard is one: every job, every status decoded. Prints
    ``ready`` at the first status; at a line on stdin, the statuses and their mean size."""
    async with connect(url, max_size=None) as ws:
        await ws.send(orjson.dumps({"type": "hello", "protocol": 1, "client": "dashboard"}))
        await ws.recv()
        await ws.send(orjson.dumps({"type": "watch", "id": 1, "jobs": None,
                                    "interval": interval}))
        frames = sizes = 0
        stop = asyncio.ensure_future(asyncio.to_thread(sys.stdin.readline))
        while not stop.done():
            recv = asyncio.ensure_future(ws.recv(decode=False))
            await asyncio.wait([recv, stop], return_when=asyncio.FIRST_COMPLETED)
            if not recv.done():
                recv.cancel()
                break
            frame = recv.result()
            if orjson.loads(frame)["type"] == "status":
                frames, sizes = frames + 1, sizes + len(frame)
                if frames == 1:
                    print("ready", flush=True)
        print(orjson.dumps({"statuses": frames, "bytes": sizes // max(frames, 1)}).decode(),
              flush=True)


def phase(server: common.PlanchetServer, admin: PlanchetClient, job: str, n_items: int,
          busy: int, interval: float | None) -> tuple[float, str]:
    """Items/s of ``busy`` workers on ``job``, with a watcher at ``interval`` (None: none)."""
    watcher = common.start_crew([[sys.executable, __file__, "watch", server.url,
                                  str(interval)]]) if interval else []
    crew = common.start_crew([common.worker_command("async", server.url, BATCH, job)] * busy)
    common.go(crew)
    reports = common.finish_crew(crew, timeout=120 + n_items / 200)
    common.check_done(admin.get_job_report(job), n_items)
    seen = ""
    for proc in watcher:
        common.go([proc])
        stats = orjson.loads(common.read_line(proc, time.monotonic() + 60))
        seen = f" ({stats['statuses']} statuses of {stats['bytes'] / 1e3:.0f} kB)"
        common.stop(proc)
    return n_items / common.elapsed(reports), seen


def measure(source: Path, n_items: int, busy: int, idle: int) -> list[tuple[float, str]]:
    parked = [f"parked-{k}" for k in range(JOBS - len(BUSY_JOBS))]
    with (common.DataDir("dashboard", [source]) as data,
          common.PlanchetServer(data, "--max-connections", str(idle + busy + 100)) as server,
          PlanchetClient(server.url) as admin):
        for job in (*BUSY_JOBS, *parked):
            common.start_job(admin, job, source.name, BATCH)
        for job in parked:
            admin.pause_job(job)
        crowd = common.start_crew([[sys.executable, __file__, "idle", server.url, str(idle),
                                    *parked]] if idle else [], timeout=300)
        try:
            return [phase(server, admin, job, n_items, busy, interval)
                    for job, interval in zip(BUSY_JOBS, (None, 1.0, 0.25), strict=True)]
        finally:
            for proc in crowd:
                common.stop(proc)


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = args.items or (20_000 if args.quick else 200_000)
    total, busy = args.connections, args.busy
    (alone, _), *watched = measure(common.headlines_file(n_items), n_items, busy, total - busy)
    for (rate, seen), interval in zip(watched, ("1 s", "0.25 s"), strict=True):
        case = (f"{busy} busy of {total:,} connections, {JOBS} jobs, a dashboard watching "
                f"every {interval}{seen}")
        yield common.Row("dashboard", case, rate, "items/s", "no dashboard", alone)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=1000, help="in all (1000)")
    parser.add_argument("--busy", type=int, default=4, help="busy worker processes (4)")


def main() -> None:
    if sys.argv[1:2] == ["idle"]:
        asyncio.run(hold_idle(sys.argv[2], int(sys.argv[3]), sys.argv[4:]))
        return
    if sys.argv[1:2] == ["watch"]:
        asyncio.run(dashboard(sys.argv[2], float(sys.argv[3])))
        return
    common.standalone(__doc__, run, common.add_items, add_options)


if __name__ == "__main__":
    main()
