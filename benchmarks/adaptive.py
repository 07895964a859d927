"""Adaptive batching: does the server find a good batch size by itself?

A job started with ``batch_seconds`` lets the server size each connection's batches to
take about that long, learned from the connection's acks (``planchet/batching.py``);
a worker whose credit names no batch size gets them. Two workers, each alone on such a
job, starting from batches of 10: a fast one (counting words) and a slow one (2 ms per
item, as a model call would take). For each, the size its last batches settled on and
the time those batches took from arrival to ack, against the target; then the slow
worker's throughput against the same worker with the batch size the target implies
(what a user who had measured it would pick), same run.
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator

import common

from planchet import AsyncPlanchetClient, PlanchetClient

TARGET = 0.5  # seconds per batch
SLOW = 0.002  # seconds of work per item for the slow worker


async def consume(url: str, job: str, delay: float, batch_size: int | None
                  ) -> tuple[list[int], list[float], float]:
    """Batch sizes received, seconds from arrival to ack, and items/s over the job."""
    sizes, seconds, items = [], [], 0
    start = time.monotonic()
    async with AsyncPlanchetClient(url) as client:
        async for batch in client.batches(job, prefetch=2, batch_size=batch_size):
            got = time.monotonic()
            if delay:
                await asyncio.sleep(delay * len(batch.items))
            await batch.ack([(i, common.work(item)) for i, item in batch.items])
            sizes.append(len(batch.items))
            seconds.append(time.monotonic() - got)
            items += len(batch.items)
    return sizes, seconds, items / (time.monotonic() - start)


def trial(n_items: int, delay: float, batch_size: int | None) -> tuple[list[int], list[float],
                                                                        float]:
    source = common.headlines_file(n_items)
    job = f"adaptive-{'slow' if delay else 'fast'}-{batch_size or 'auto'}"
    with (common.DataDir(job, [source]) as data, common.PlanchetServer(data) as server,
          PlanchetClient(server.url) as admin):
        common.start_job(admin, job, source.name, 10, batch_seconds=TARGET)
        return asyncio.run(consume(server.url, job, delay, batch_size))


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    quick = getattr(args, "quick", False)
    for name, delay, n_items in (("fast", 0.0, 200_000 if quick else 1_000_000),
                                 ("slow", SLOW, 2_000 if quick else 6_000)):
        sizes, seconds, rate = trial(n_items, delay, None)
        tail = max(1, len(sizes) // 4)  # the last quarter: after it has learned
        size, took = sum(sizes[-tail:]) / tail, sum(seconds[-tail:]) / tail
        yield common.Row("adaptive", f"{name} worker: batch settled on {size:,.0f} items, "
                         "seconds per batch", took, "s", "target", TARGET)
        if delay:
            fixed = round(TARGET / delay)
            *_, fixed_rate = trial(n_items, delay, fixed)
            yield common.Row("adaptive", f"{name} worker, adaptive from 10", rate, "items/s",
                             f"fixed {fixed}", fixed_rate)
