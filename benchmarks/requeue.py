"""Requeue latency: from a worker's disconnect to its items pushed to another worker.

    python benchmarks/requeue.py [--trials 50]

Each trial has a job of its own: 200 headlines in two batches of 100. A holder (a
worker process speaking the protocol with ``websockets``) takes both batches with a
credit of 2, so nothing else is left to serve. A standby connection (in this process)
then gives credit 2 on the job and waits; a ``report`` round trip makes sure the server
has its credit first. Then the holder goes, by ``kill -9`` (timed here, just before the
signal) or by a clean close with code 1000 (timed in the holder, just before it sends
the close frame), and the latency runs until the standby has received all 200 items.
The baseline is the lease round trip of a healthy worker with a credit of 1: from
sending a batch's result to receiving the next batch (that result's settle, then the
next lease), on a job with items to spare. Holders start ten at a time, trials run one
by one.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
import time
from collections.abc import Iterator
from typing import Any

import common
import orjson
from websockets.asyncio.client import ClientConnection, connect

from planchet import PlanchetClient

ITEMS, BATCH, GROUP = 200, 100, 10
HELLO = orjson.dumps({"type": "hello", "protocol": 1, "client": "requeue-bench"})


async def open_session(url: str) -> ClientConnection:
    ws = await connect(url, max_size=None)
    await ws.send(HELLO)
    await ws.recv()  # welcome
    return ws


async def send(ws: ClientConnection, **message: Any) -> None:
    await ws.send(orjson.dumps(message))


async def next_of(ws: ClientConnection, kind: str) -> dict[str, Any]:
    """The next frame of type ``kind``; others (acks, events) are passed over."""
    while True:
        message = orjson.loads(await ws.recv())
        if message["type"] == "error":
            raise common.Failed(f"the server refused: {message}")
        if message["type"] == kind:
            return message


async def hold(url: str, job: str) -> None:
    """A holder: take every batch of ``job``, then wait for ``close`` (or a SIGKILL)."""
    ws = await open_session(url)
    await send(ws, type="credit", job=job, batches=2)
    held = 0
    while held < ITEMS:
        held += len((await next_of(ws, "batch"))["items"])
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    began = common.now()
    await ws.close(1000)
    print(orjson.dumps({"t": began}).decode(), flush=True)


async def take_over(url: str, job: str, holder: Any, kind: str) -> float:
    """One trial: seconds from the holder's end to its items all at the standby."""
    ws = await open_session(url)
    await send(ws, type="credit", job=job, batches=2)
    await send(ws, type="report", id=1, job=job)
    await next_of(ws, "reply")  # frames are handled in order: the credit is in
    began = common.now()
    if kind == "kill":
        os.kill(holder.pid, signal.SIGKILL)
    else:
        common.go([holder])
    batches, got = [], 0
    while got < ITEMS:
        batches.append(await next_of(ws, "batch"))
        got += len(batches[-1]["items"])
    arrived = common.now()
    if kind == "close":  # the holder took the time just before its close frame
        began = orjson.loads(common.read_line(holder, time.monotonic() + 30))["t"]
    for batch in batches:  # finish the job, tidily
        await send(ws, type="result", job=job, lease=batch["lease"],
                   items=[[i, common.work(item)] for i, item in batch["items"]])
    await next_of(ws, "event")  # done
    await ws.close()
    common.stop(holder)
    return arrived - began


async def round_trips(url: str, job: str, n: int) -> list[float]:
    """A healthy worker's lease round trips: result sent -> next batch received."""
    ws = await open_session(url)
    await send(ws, type="credit", job=job, batches=1)
    batch, times = await next_of(ws, "batch"), []
    for _ in range(n):
        began = common.now()
        await send(ws, type="result", job=job, lease=batch["lease"],
                   items=[[i, common.work(item)] for i, item in batch["items"]])
        batch = await next_of(ws, "batch")
        times.append(common.now() - began)
    await ws.close()
    return times


def trials(server: common.PlanchetServer, admin: PlanchetClient, kind: str, n: int,
           source: str) -> list[float]:
    """``n`` trials of ``kind`` (kill or close), holders started ``GROUP`` at a time."""
    latencies: list[float] = []
    while len(latencies) < n:
        jobs = [f"{kind}-{len(latencies) + k}" for k in range(min(GROUP, n - len(latencies)))]
        for job in jobs:
            common.start_job(admin, job, source, BATCH)
        holders = common.start_crew([[sys.executable, __file__, "hold", server.url, job]
                                     for job in jobs])
        for job, holder in zip(jobs, holders, strict=True):
            latencies.append(asyncio.run(take_over(server.url, job, holder, kind)))
    return latencies


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n = args.trials or (10 if args.quick else 50)
    small, spare = common.headlines_file(ITEMS), common.headlines_file(BATCH * (n + 1))
    with (common.DataDir("requeue", [small, spare]) as data,
          common.PlanchetServer(data) as server, PlanchetClient(server.url) as admin):
        common.start_job(admin, "healthy", spare.name, BATCH)
        base = asyncio.run(round_trips(server.url, "healthy", n))
        for kind, what in (("kill", "kill -9"), ("close", "clean close")):
            times = trials(server, admin, kind, n, small.name)
            for p in (50, 99):
                yield common.Row("requeue", f"requeue after {what}, p{p} of {n}",
                                 1000 * common.percentile(times, p), "ms",
                                 f"healthy lease round trip p{p}",
                                 1000 * common.percentile(base, p))


def main() -> None:
    if sys.argv[1:2] == ["hold"]:
        asyncio.run(hold(sys.argv[2], sys.argv[3]))
        return
    common.standalone(__doc__, run, add_trials)


def add_trials(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--trials", type=int, help="trials of each kind (50; 10 with --quick)")


if __name__ == "__main__":
    main()
