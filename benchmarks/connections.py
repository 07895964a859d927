"""Connections: 1,000 on one server, most idle, a few busy: throughput and memory.

    python benchmarks/connections.py [--items 200000] [--connections 1000] [--busy 4]

Two runs, each on a fresh ``planchet serve`` (``--max-connections 1100``). The
baseline: ``--busy`` asyncio-client worker processes (batches of 100) consume a job of
headlines alone. Then the same, while one more process holds the other connections
(1,000 in all, counting the busy ones) idle: each says ``hello``, subscribes to the
busy job with a credit of 0 (so it gets its events, and no batches) and gives a credit
of 2 on a second, paused job (so it waits for work that does not come). Throughput is
timed as in the throughput benchmark; the server's RSS is read from /proc when the job
is done, before anything disconnects.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterator
from pathlib import Path

import common
import orjson
from websockets.asyncio.client import ClientConnection, connect

from planchet import PlanchetClient

BATCH, OPEN_AT_ONCE = 100, 50  # under the server's cap of connections waiting for hello


async def idle_connection(url: str, busy: str, parked: str,
                          gate: asyncio.Semaphore) -> ClientConnection:
    async with gate:
        ws = await connect(url, max_size=None)
        await ws.send(orjson.dumps({"type": "hello", "protocol": 1, "client": "idle"}))
        await ws.recv()  # welcome
        await ws.send(orjson.dumps({"type": "credit", "job": busy, "batches": 0}))
        await ws.send(orjson.dumps({"type": "credit", "job": parked, "batches": 2}))
        return ws


async def hold_idle(url: str, busy: str, parked: str, count: int) -> None:
    """The idle crowd, in one process: open, print ``ready``, wait for a line, close."""
    gate = asyncio.Semaphore(OPEN_AT_ONCE)
    crowd = await asyncio.gather(*(idle_connection(url, busy, parked, gate)
                                   for _ in range(count)))
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    await asyncio.gather(*(ws.close() for ws in crowd))


def measure(source: Path, n_items: int, busy: int, idle: int) -> tuple[float, float]:
    """Items/s of the busy workers and the server's RSS (MB), with ``idle`` others."""
    with (common.DataDir(f"connections-{idle}", [source]) as data,
          common.PlanchetServer(data, "--max-connections", "1100") as server,
          PlanchetClient(server.url) as admin):
        common.start_job(admin, "busy", source.name, BATCH)
        common.start_job(admin, "parked", source.name, BATCH)
        admin.pause_job("parked")
        crowd = common.start_crew([[sys.executable, __file__, "idle", server.url, "busy",
                                    "parked", str(idle)]] if idle else [], timeout=300)
        crew = common.start_crew([common.worker_command("async", server.url, BATCH, "busy")]
                                 * busy)
        common.go(crew)
        reports = common.finish_crew(crew, timeout=120 + n_items / 200)
        rss = server.rss_mb()
        common.check_done(admin.get_job_report("busy"), n_items)
        for proc in crowd:
            common.stop(proc)
    return n_items / common.elapsed(reports), rss


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = args.items or (20_000 if args.quick else 200_000)
    total, busy = args.connections, args.busy
    source = common.headlines_file(n_items)
    alone = measure(source, n_items, busy, 0)
    crowded = measure(source, n_items, busy, total - busy)
    case = f"{total:,} connections ({total - busy:,} idle), {busy} busy async workers"
    yield common.Row("connections", case, crowded[0], "items/s", f"the {busy} alone", alone[0])
    yield common.Row("connections", f"server RSS with {total:,} connections", crowded[1], "MB",
                     f"with {busy}", alone[1])


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--connections", type=int, default=1000, help="in all (1000)")
    parser.add_argument("--busy", type=int, default=4, help="busy worker processes (4)")


def main() -> None:
    if sys.argv[1:2] == ["idle"]:
        url, busy, parked, count = sys.argv[2:6]
        asyncio.run(hold_idle(url, busy, parked, int(count)))
        return
    common.standalone(__doc__, run, common.add_items, add_options)


if __name__ == "__main__":
    main()
