"""A Planchet benchmark worker: count the words of each item, as the ceiling's worker does.

    worker.py async URL BATCH JOB [JOB...]   # AsyncPlanchetClient.batches, prefetch 2 per job
    worker.py blocking URL BATCH JOB         # PlanchetClient.batches, prefetch 2
    worker.py original URL BATCH JOB         # PlanchetClient's get/send loop (the original API)

Both push workers ack with ``ack_nowait``: results go out and the worker goes on at once,
as the ceiling's worker does; the original loop waits for each ``send``'s answer.

It connects, prints ``ready``, waits for a line on stdin (``go``), then consumes until
every job it was given is done, and prints one JSON line: ``first`` (when the first
batch arrived), ``done`` (when the last job's end was seen; CLOCK_MONOTONIC, comparable
across processes) and ``items``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any

import common
import orjson

from planchet import AsyncPlanchetClient, PlanchetClient


class Tally:
    def __init__(self) -> None:
        self.first = 0.0
        self.items = 0

    def got(self, n_items: int) -> None:
        self.first = self.first or common.now()
        self.items += n_items

    def report(self) -> None:
        print(orjson.dumps({"first": self.first, "done": common.now(), "items": self.items})
              .decode(), flush=True)


async def consume(client: AsyncPlanchetClient, job: str, batch: int, tally: Tally) -> None:
    async for work in client.batches(job, prefetch=2, batch_size=batch):
        tally.got(len(work.items))
        work.ack_nowait([(i, common.work(item)) for i, item in work.items])


async def run_async(url: str, batch: int, jobs: list[str]) -> None:
    tally = Tally()
    async with AsyncPlanchetClient(url) as client:
        print("ready", flush=True)
        await asyncio.to_thread(sys.stdin.readline)
        await asyncio.gather(*(consume(client, job, batch, tally) for job in jobs))
        tally.report()


def run_blocking(url: str, batch: int, job: str, original: bool) -> None:
    tally = Tally()
    with PlanchetClient(url) as client:
        client.get_job_report(job)  # connected
        print("ready", flush=True)
        sys.stdin.readline()
        if original:
            items: list[Any] = client.get(job, batch)
            while items:
                tally.got(len(items))
                client.send(job, [(i, common.work(item)) for i, item in items])
                items = client.get(job, batch)
        else:
            for work in client.batches(job, prefetch=2, batch_size=batch):
                tally.got(len(work.items))
                work.ack_nowait([(i, common.work(item)) for i, item in work.items])
        tally.report()


def main() -> None:
    kind, url, batch, jobs = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4:]
    if kind == "async":
        asyncio.run(run_async(url, batch, jobs))
    else:
        run_blocking(url, batch, jobs[0], original=kind == "original")


if __name__ == "__main__":
    main()
