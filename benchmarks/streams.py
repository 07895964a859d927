"""Redis Streams: the pipeline users write by hand instead of Planchet, on the same task.

    python benchmarks/streams.py [--items 200000] [--repeat 1]

The throughput benchmark's cell of the issue, batches of 100 with 4 worker processes,
the same work per item and one output file of ``{"id", "item"}`` lines, done by a
Redis Streams consumer group written as its users write one (redis-py, no framework):

* a ``redis-server`` of its own (the binary Planchet runs), in three runs: without
  persistence; with its append-only file fsynced every second (Redis's default for
  AOF); fsynced always;
* a dispatcher process adds each batch of 100 raw lines to the stream ``in`` as one
  entry (50 entries a round trip), and reads the stream ``out`` (``XREAD BLOCK``),
  appending what each entry holds to the output file, flushed and fsynced once, at the
  end; it stops when every item is written;
* each worker reads entries of ``in`` for its consumer group, parses the lines, does
  the work and encodes the output lines itself; then, in one round trip, one
  ``MULTI``/``EXEC`` adds them to ``out``, acknowledges the entry and reads the next
  (a read inside ``MULTI`` does not block: only when nothing was there does the
  worker wait on a read of its own). With an append-only file fsynced always, each
  round trip waits for that fsync; Planchet's workers (``ack_nowait``) do not wait for
  Planchet's.

What the pipeline does not do that Planchet does: check lines before a worker parses
them, take back the entries of a worker that died (they stay pending until code is
added that claims them, and that code writes a batch twice when it claims from a
worker that was only slow), fsync the output before the end.

Timed as Planchet is: from the first batch a worker receives to the dispatcher's last
write. Every run checks that the output holds every id exactly once. Planchet's
figure is the throughput benchmark's (asyncio client); Planchet and each pipeline take
turns, each figure the best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import common
import orjson
import redis
import redis.asyncio
import throughput

from planchet.embedded import find_redis_server

BATCH, WORKERS = 100, 4
GROUP = "workers"
PIPELINE = 50  # XADDs sent in one round trip by the dispatcher


# --- the dispatcher ------------------------------------------------------------------------


async def dispatch(url: str, source: Path, sink: Path, n_items: int, workers: int) -> None:
    """Feed ``source`` to the stream and write what comes back, once ``go`` is read."""
    r = redis.asyncio.Redis.from_url(url)
    await r.xgroup_create("in", GROUP, id="0", mkstream=True)
    print("ready", flush=True)
    await asyncio.to_thread(sys.stdin.readline)
    feeding = asyncio.create_task(feed(r, source, workers))
    written = await collect(r, sink, n_items)
    await feeding
    print(orjson.dumps({"done": common.now(), "written": written}).decode(), flush=True)
    await r.aclose()


async def feed(r: redis.asyncio.Redis, source: Path, workers: int) -> None:
    """One entry per batch of lines, then one ``stop`` entry for each worker."""
    first = 0
    with open(source, "rb") as lines:
        while chunk := list(itertools.islice(lines, BATCH * PIPELINE)):
            pipe = r.pipeline(transaction=False)
            for k in range(0, len(chunk), BATCH):
                batch = chunk[k:k + BATCH]
                pipe.xadd("in", {"first": first, "lines": b"".join(batch)})
                first += len(batch)
            await pipe.execute()
    for _ in range(workers):
        await r.xadd("in", {"stop": 1})


async def collect(r: redis.asyncio.Redis, sink: Path, n_items: int) -> int:
    """Append the lines of every ``out`` entry to ``sink`` until ``n_items`` are in."""
    written, last = 0, "0"
    with open(sink, "wb") as out:
        while written < n_items:
            for _stream, entries in await r.xread({"out": last}, count=100, block=1000):
                for entry, fields in entries:
                    out.write(fields[b"lines"])
                    written += int(fields[b"n"])
                    last = entry
        out.flush()
        os.fsync(out.fileno())
    return written


# --- a worker ------------------------------------------------------------------------------


def work(url: str, name: str) -> None:
    """Consume entries of ``in`` for the group until a ``stop`` entry; report as
    Planchet's benchmark workers do (``first``, ``done``, ``items``)."""
    r = redis.Redis.from_url(url)
    r.ping()
    print("ready", flush=True)
    sys.stdin.readline()
    first, items, entries = 0.0, 0, []
    while True:
        if not entries:  # nothing came with the last round trip: wait for an entry
            entries = _entries(r.xreadgroup(GROUP, name, {"in": ">"}, count=1, block=1000))
            continue
        entry, fields = entries.pop(0)
        if b"stop" in fields:
            r.xack("in", GROUP, entry)
            report = {"first": first, "done": common.now(), "items": items}
            print(orjson.dumps(report).decode(), flush=True)
            return
        first = first or common.now()
        start, lines = int(fields[b"first"]), fields[b"lines"].splitlines()
        out = b"".join(orjson.dumps({"id": start + k, "item": common.work(orjson.loads(line))})
                       + b"\n" for k, line in enumerate(lines))
        pipe = r.pipeline(transaction=True)
        pipe.xadd("out", {"n": len(lines), "lines": out})
        pipe.xack("in", GROUP, entry)
        pipe.xreadgroup(GROUP, name, {"in": ">"}, count=1)
        entries += _entries(pipe.execute()[-1])
        items += len(lines)


def _entries(reply: Any) -> list[tuple[bytes, dict[bytes, bytes]]]:
    """The entries of an ``XREADGROUP`` reply (nothing read: ``None`` or ``[]``)."""
    return [entry for _stream, entries in reply or [] for entry in entries]


# --- one run -------------------------------------------------------------------------------


def measure(source: Path, data: Path, n_items: int, fsync: str | None, timeout: float) -> float:
    """Items/s of the pipeline: its Redis, its dispatcher and ``WORKERS`` workers."""
    port = common.free_port()
    url = f"redis://127.0.0.1:{port}"
    home = data / f"redis-{port}"  # a fresh one: an old append-only file would be loaded
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir()
    store = common.spawn([find_redis_server(), "--port", str(port), "--bind", "127.0.0.1",
                          "--save", "", "--dir", str(home), "--appendonly",
                          "no" if fsync is None else "yes", "--appendfsync", fsync or "no"])
    sink = data / "streams.out.jsonl"
    dispatcher = None
    try:
        wait_for(url)
        dispatcher = common.spawn([sys.executable, __file__, "dispatch", url, str(source),
                                   str(sink), str(n_items), str(WORKERS)], pipes=True)
        if common.read_line(dispatcher, time.monotonic() + 60).strip() != "ready":
            raise common.Failed("the streams dispatcher did not start")
        crew = common.start_crew([[sys.executable, __file__, "work", url, f"w{k}"]
                                  for k in range(WORKERS)])
        common.go([dispatcher, *crew])
        reports = common.finish_crew(crew, timeout)
        done = orjson.loads(common.read_line(dispatcher, time.monotonic() + timeout))
        ids = sorted(orjson.loads(line)["id"] for line in sink.read_bytes().splitlines())
    finally:
        if dispatcher is not None:
            common.stop(dispatcher)
        common.stop(store)
        sink.unlink(missing_ok=True)
        shutil.rmtree(home, ignore_errors=True)
    if ids != list(range(n_items)) or sum(r["items"] for r in reports) != n_items:
        raise common.Failed(f"the streams pipeline wrote {len(ids)} lines for {n_items} "
                            "items, not each id once")
    return n_items / (done["done"] - min(r["first"] for r in reports if r["first"]))


def wait_for(url: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            with redis.Redis.from_url(url) as client:
                client.ping()
            return
        except redis.ConnectionError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.02)


# Each variant: its appendfsync (None: no append-only file), what the table calls it.
VARIANTS = {None: "no persistence", "everysec": "AOF fsync every second",
            "always": "AOF fsync always"}


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = args.items or (20_000 if args.quick else 200_000)
    source = common.headlines_file(n_items)
    timeout = 120 + n_items / 200
    planchet, best = 0.0, dict.fromkeys(VARIANTS, 0.0)
    with common.DataDir("streams") as data:
        for _ in range(args.repeat):
            for fsync in VARIANTS:
                best[fsync] = max(best[fsync], measure(source, data, n_items, fsync, timeout))
            planchet = max(planchet, throughput.planchet_rate(source, n_items, BATCH, WORKERS,
                                                              "async"))
    for fsync, name in VARIANTS.items():
        yield common.Row("streams", f"batch {BATCH}, {WORKERS} workers, asyncio client",
                         planchet, "items/s", f"Redis Streams, {name}", best[fsync])


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--repeat", type=int, default=1,
                        help="runs of each, taken in turns; the best counts (1)")


def main() -> None:
    if sys.argv[1:2] == ["dispatch"]:
        url, source, sink, n_items, workers = sys.argv[2:7]
        asyncio.run(dispatch(url, Path(source), Path(sink), int(n_items), int(workers)))
    elif sys.argv[1:2] == ["work"]:
        work(sys.argv[2], sys.argv[3])
    else:
        common.standalone(__doc__, run, common.add_items, add_options)


if __name__ == "__main__":
    main()
