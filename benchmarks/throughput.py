"""Throughput: Planchet against the ceiling, same batch size and worker count, same run.

    python benchmarks/throughput.py [--items 200000] [--batches 10 100 1000] [--workers 1 4 16]
                                    [--repeat 1]

For each batch size and worker count it measures, one after the other: the ceiling
(benchmarks/ceiling.py), then ``planchet serve`` (private Redis, fsync on) with that
many worker processes using the asyncio client, then the blocking client (both with
``batches`` and ``ack_nowait``; ``--clients ... original`` adds the get/send loop). Items are
the shared headlines repeated; the work is counting each item's words. Every figure
is items / (last worker's sight of the job's end - first batch any worker received),
worker start-up excluded: workers connect, then all start together. With ``--repeat
N`` each figure (ceiling and Planchet alike) is the best of N runs: on a busy machine
the fastest run is the least disturbed. The runs take turns (ceiling, each client,
again), so that a busy spell weighs on the ceiling and on Planchet alike.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import ceiling
import common

from planchet import PlanchetClient

CLIENTS = ("async", "blocking", "original")  # see worker.py; the first two by default


def planchet_rate(source: Path, n_items: int, batch: int, workers: int, kind: str) -> float:
    """Items/s of ``planchet serve`` with ``workers`` worker processes of ``kind``."""
    job = f"{kind}-{batch}-{workers}"
    with (common.DataDir(job, [source]) as data, common.PlanchetServer(data) as server,
          PlanchetClient(server.url) as admin):
        common.start_job(admin, job, source.name, batch)
        crew = common.start_crew([common.worker_command(kind, server.url, batch, job)] * workers)
        common.go(crew)
        reports = common.finish_crew(crew, timeout=120 + n_items / 200)
        common.check_done(admin.get_job_report(job), n_items)
    return n_items / common.elapsed(reports)


def cell(source: Path, n_items: int, batch: int, workers: int, repeat: int,
         clients: list[str]) -> Iterator[common.Row]:
    """The ceiling and each client, each the best of ``repeat`` runs taken in turns
    (ceiling, clients, ceiling, clients...), so that a busy spell of the machine falls
    on all of them alike rather than on one."""
    best = dict.fromkeys(["ceiling", *clients], 0.0)
    with common.DataDir(f"ceiling-{batch}-{workers}") as data:
        for _ in range(repeat):
            best["ceiling"] = max(best["ceiling"], ceiling.measure(
                source, data, batch, workers, timeout=120 + n_items / 2000))
            for kind in clients:
                best[kind] = max(best[kind],
                                 planchet_rate(source, n_items, batch, workers, kind))
    plural = "s" if workers > 1 else ""
    for kind in clients:
        yield common.Row("throughput", f"batch {batch}, {workers} worker{plural}, {kind}",
                         best[kind], "items/s", "ceiling", best["ceiling"])


def cells(quick: bool, batches: list[int] | None, workers: list[int] | None
          ) -> list[tuple[int, int]]:
    """The (batch, workers) pairs to measure; --quick: the issue's four."""
    if batches or workers or not quick:
        return [(b, w) for b in batches or [10, 100, 1000] for w in workers or [1, 4, 16]]
    return [(100, 1), (100, 4), (10, 4), (1000, 4)]


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = args.items or (20_000 if args.quick else 200_000)
    source = common.headlines_file(n_items)
    for batch, workers in cells(args.quick, args.batches, args.workers):
        yield from cell(source, n_items, batch, workers, args.repeat, args.clients)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--batches", type=int, nargs="+", help="batch sizes (10 100 1000)")
    parser.add_argument("--workers", type=int, nargs="+", help="worker processes (1 4 16)")
    parser.add_argument("--clients", nargs="+", choices=CLIENTS, default=list(CLIENTS[:2]),
                        help="worker kinds: async and blocking (the push API, ack_nowait), "
                             "original (the get/send loop); default: async blocking")
    parser.add_argument("--repeat", type=int, default=1,
                        help="throughput: runs of each measurement, the best counts (1)")


def main() -> None:
    common.standalone(__doc__, run, common.add_items, add_options)


if __name__ == "__main__":
    main()
