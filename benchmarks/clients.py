"""Clients: the CPU a Python client spends per batch, beside the bare worker's.

    python benchmarks/clients.py [--batches-sent 5000]

A replay server (this file, ``serve``, in its own process) speaks just enough of the
protocol to keep one worker busy, at no cost of its own worth measuring: it answers the
hello, sends the batches the credit asks for, and answers each result with an ``ack``
and the next batch in one write, until it has sent them all and says ``done``. Its
frames are made once, in advance: 100 headlines each, as ``planchet serve`` sends them.
Each worker (``work KIND``, in its own process) counts the words of every item, as the
throughput workers do, and reports the CPU time of its process from its first batch to
``done``, per batch. The baseline is the bare worker of ``ceiling.py`` adapted to the
protocol: one task, no client library, results sent without waiting for anything. The
clients use ``batches`` and ``ack_nowait``, so what differs is the library's own work:
its codec, its session, and its I/O layer (a reader task, or a reader thread).
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from collections.abc import Iterator
from typing import Any

import common
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

from planchet import AsyncPlanchetClient, PlanchetClient

BATCH = 100
WELCOME = orjson.dumps({"type": "welcome", "server": "replay", "max_message_bytes": 2**26,
                        "session": None, "resume_grace": 0.0, "resumed": False})
DONE = b'{"type":"event","job":"j","event":"done"}'
KINDS = {"async": "asyncio client", "blocking": "blocking client"}


def frames(n: int) -> list[bytes]:
    """``n`` batch frames of ``BATCH`` headlines each, leases L000000 onwards."""
    lines = common.headlines_file(BATCH).read_bytes().splitlines()
    items = b",".join(b"[%d,%s]" % (i, line) for i, line in enumerate(lines))
    return [b'{"type":"batch","job":"j","lease":"L%06d","items":[%s],"lease_timeout":60.0}'
            % (k, items) for k in range(n)]


async def replay(port: int, n: int) -> None:
    batches = frames(n)

    async def session(ws: ServerConnection) -> None:
        sent = answered = 0
        async for frame in ws:
            message = orjson.loads(frame)
            if message["type"] == "hello":
                await ws.send(WELCOME)
            elif message["type"] == "credit":
                for _ in range(message["batches"]):
                    await ws.send(batches[sent])
                    sent += 1
            elif message["type"] == "result":
                answered += 1
                ack = orjson.dumps({"type": "ack", "job": "j", "lease": message["lease"],
                                    "written": len(message["items"]), "retried": 0,
                                    "failed": 0, "dropped": 0})
                ws.protocol.send_binary(ack)
                if sent < n:
                    ws.protocol.send_binary(batches[sent])
                    sent += 1
                if answered == n:
                    ws.protocol.send_binary(DONE)
                ws.send_data()

    async with serve(session, "127.0.0.1", port, compression=None, max_size=None):
        print("ready", flush=True)
        await asyncio.Future()


class Clock:
    """CPU time of this process from the first batch on."""

    def __init__(self) -> None:
        self.start = 0.0
        self.batches = 0

    def tick(self) -> None:
        self.start = self.start or time.process_time()
        self.batches += 1

    def report(self) -> None:
        cpu = time.process_time() - self.start
        print(orjson.dumps({"batches": self.batches, "cpu": cpu}).decode(), flush=True)


async def bare(url: str, clock: Clock) -> None:
    async with connect(url, compression=None, max_size=None) as ws:
        await ws.send(b'{"type":"hello","protocol":1}')
        await ws.recv()
        await ws.send(b'{"type":"credit","job":"j","batches":2,"batch_size":100}')
        async for frame in ws:
            message = orjson.loads(frame)
            if message["type"] == "batch":
                clock.tick()
                await ws.send(orjson.dumps({
                    "type": "result", "job": "j", "lease": message["lease"],
                    "items": [[i, common.work(item)] for i, item in message["items"]]}))
            elif message["type"] == "event":
                return


async def with_asyncio_client(url: str, clock: Clock) -> None:
    async with AsyncPlanchetClient(url) as client:
        async for batch in client.batches("j", prefetch=2, batch_size=BATCH):
            clock.tick()
            batch.ack_nowait([(i, common.work(item)) for i, item in batch.items])


def with_blocking_client(url: str, clock: Clock) -> None:
    with PlanchetClient(url) as client:
        for batch in client.batches("j", prefetch=2, batch_size=BATCH):
            clock.tick()
            batch.ack_nowait([(i, common.work(item)) for i, item in batch.items])


def work(kind: str, url: str) -> None:
    clock = Clock()
    if kind == "blocking":
        with_blocking_client(url, clock)
    else:
        asyncio.run(bare(url, clock) if kind == "bare" else with_asyncio_client(url, clock))
    clock.report()


def cpu_per_batch(kind: str, n: int) -> float:
    """Seconds of CPU per batch of a ``kind`` worker against a fresh replay server."""
    port = common.free_port()
    server = common.spawn([sys.executable, __file__, "serve", str(port), str(n)], pipes=True)
    try:
        if common.read_line(server, time.monotonic() + 60).strip() != "ready":
            raise common.Failed("the replay server did not start")
        worker = common.spawn([sys.executable, __file__, "work", kind,
                               f"ws://127.0.0.1:{port}"], pipes=True)
        try:
            report: dict[str, Any] = orjson.loads(
                common.read_line(worker, time.monotonic() + 60 + n / 100))
        finally:
            common.stop(worker)
    finally:
        common.stop(server)
    if report["batches"] != n:
        raise common.Failed(f"the {kind} worker saw {report['batches']} of {n} batches")
    return float(report["cpu"]) / n


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n = args.batches_sent or (1000 if args.quick else 5000)
    base = cpu_per_batch("bare", n)
    for kind, name in KINDS.items():
        yield common.Row("clients", f"{name}, CPU per batch of {BATCH} (ack_nowait)",
                         cpu_per_batch(kind, n) * 1e6, "us", "bare worker", base * 1e6)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches-sent", type=int,
                        help="clients: batches each worker consumes (5,000; 1,000 quick)")


def main() -> None:
    common.standalone(__doc__, run, add_options)


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        asyncio.run(replay(int(sys.argv[2]), int(sys.argv[3])))
    elif sys.argv[1:2] == ["work"]:
        work(sys.argv[2], sys.argv[3])
    else:
        main()
