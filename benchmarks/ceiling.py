"""The ceiling: a bare dispatcher and its bare worker, what the wire allows on this machine.

    python benchmarks/ceiling.py [--items 200000] [--batch 100] [--workers 4]

One asyncio ``websockets`` server reads the JSONL file in batches of ``--batch`` lines,
orjson-parses each line, pushes batches to each worker two at a time (a credit window
of 2: a new batch for each result that comes back) and appends the results to a file.
No Redis, no fsync, no validation, no compression, no acks, no leases. Its worker is a
minimal ``websockets`` client: it does the benchmarks' work on each item (count the
words) and sends the batch back. When every result is in, the server flushes the file
and tells every worker ``done``.

Timed like Planchet: from the first batch a worker receives to the last worker's
receipt of ``done``. The server and each worker are processes of their own:
``ceiling.py serve INPUT OUTPUT BATCH PORT`` and ``ceiling.py work URL``.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
from pathlib import Path
from typing import IO, Any

import common
import orjson
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

WINDOW = 2


class Dispatcher:
    """Batches out, results in, one file each way; ``finished`` once all are back."""

    def __init__(self, source: IO[bytes], sink: IO[bytes], batch: int) -> None:
        self.source, self.sink, self.batch = source, sink, batch
        self.next_id = 0
        self.out = 0  # batches pushed and not yet answered
        self.results = 0
        self.workers: set[ServerConnection] = set()
        self.finished = asyncio.Event()

    def read(self) -> list[list[Any]]:
        items = [[i, orjson.loads(line)] for i, line in
                 enumerate(itertools.islice(self.source, self.batch), self.next_id)]
        self.next_id += len(items)
        return items

    async def push(self, ws: ServerConnection) -> None:
        if items := self.read():
            self.out += 1
            await ws.send(orjson.dumps({"type": "batch", "items": items}))
        elif self.out == 0 and not self.finished.is_set():
            self.sink.flush()
            self.finished.set()
            for worker in list(self.workers):
                await worker.send(b'{"type":"done"}')

    async def handle(self, ws: ServerConnection) -> None:
        self.workers.add(ws)
        try:
            async for frame in ws:
                message = orjson.loads(frame)
                if message["type"] == "credit":
                    for _ in range(message["batches"]):
                        await self.push(ws)
                else:
                    self.settle(message["items"])
                    await self.push(ws)
        except ConnectionClosed:
            pass
        finally:
            self.workers.discard(ws)

    def settle(self, items: list[list[Any]]) -> None:
        self.sink.write(b"".join(orjson.dumps({"id": i, "item": r}) + b"\n" for i, r in items))
        self.results += len(items)
        self.out -= 1


async def serve_file(source: Path, sink: Path, batch: int, port: int) -> None:
    """Serve ``source`` until every result is in; print the count as JSON."""
    with open(source, "rb") as inp, open(sink, "wb") as out:
        dispatcher = Dispatcher(inp, out, batch)
        async with serve(dispatcher.handle, "127.0.0.1", port, compression=None,
                         max_size=None):
            print("ready", flush=True)
            await dispatcher.finished.wait()
            await asyncio.sleep(0.5)  # let the done frames reach the workers
    print(orjson.dumps({"results": dispatcher.results}).decode(), flush=True)


async def work(url: str) -> None:
    """The bare worker: connect, wait for ``go``, echo each batch's results back."""
    first, items = 0.0, 0
    async with connect(url, compression=None, max_size=None) as ws:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await ws.send(orjson.dumps({"type": "credit", "batches": WINDOW}))
        async for frame in ws:
            message = orjson.loads(frame)
            if message["type"] == "done":
                break
            first = first or common.now()
            batch = message["items"]
            items += len(batch)
            await ws.send(orjson.dumps(
                {"type": "result", "items": [[i, common.work(item)] for i, item in batch]}))
    report = {"first": first, "done": common.now(), "items": items}
    print(orjson.dumps(report).decode(), flush=True)


def measure(source: Path, data: Path, batch: int, workers: int, timeout: float = 600) -> float:
    """Items/s of the ceiling on ``source``: its server and ``workers`` worker processes."""
    port = common.free_port()
    server = common.spawn([sys.executable, __file__, "serve", str(source),
                           str(data / f"ceiling-{batch}-{workers}.jsonl"), str(batch),
                           str(port)], pipes=True)
    try:
        if common.read_line(server, time.monotonic() + 60).strip() != "ready":
            raise common.Failed("the ceiling server did not start")
        url = f"ws://127.0.0.1:{port}"
        crew = common.start_crew([[sys.executable, __file__, "work", url]] * workers)
        common.go(crew)
        reports = common.finish_crew(crew, timeout)
        results = orjson.loads(common.read_line(server, time.monotonic() + 30))["results"]
    finally:
        common.stop(server)
        (data / f"ceiling-{batch}-{workers}.jsonl").unlink(missing_ok=True)
    lines = source.read_bytes().count(b"\n")
    if results != lines or sum(r["items"] for r in reports) != lines:
        raise common.Failed(f"the ceiling lost items: {results} results of {lines}")
    return results / common.elapsed(reports)


def main() -> None:
    if sys.argv[1:2] == ["serve"]:
        inp, out, batch, port = sys.argv[2:6]
        asyncio.run(serve_file(Path(inp), Path(out), int(batch), int(port)))
        return
    if sys.argv[1:2] == ["work"]:
        asyncio.run(work(sys.argv[2]))
        return
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--items", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--workers", type=int, default=4)
    args = parser.parse_args()
    common.install_cleanup()
    source = common.headlines_file(args.items)
    with common.DataDir("ceiling") as data:
        rate = measure(source, data, args.batch, args.workers)
    print(f"ceiling, {args.items:,} items, batch {args.batch}, {args.workers} workers: "
          f"{rate:,.0f} items/s")


if __name__ == "__main__":
    main()
