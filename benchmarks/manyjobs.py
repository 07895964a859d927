"""Many jobs: 100 jobs served at once by one server, against one job of the same size.

    python benchmarks/manyjobs.py [--items 200000] [--jobs 100]

Two runs, each on a fresh ``planchet serve``, with the same 4 worker processes (asyncio
client, batches of 100, a credit of 2 per job). The baseline: one job of ``--items``
headlines that every worker consumes. Then ``--jobs`` jobs of ``items / jobs`` headlines
each (all reading one input file, each writing its own output), all created before the
workers start; each worker consumes its share of them at once (worker k takes jobs k,
k + workers, ...; the baseline's one job, every worker), one connection per worker.
Timed as in the throughput benchmark: from the first batch any worker receives to the
last worker's sight of its last job's end. Every job must be done with every item
written.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from pathlib import Path

import common

from planchet import PlanchetClient

BATCH, WORKERS = 100, 4


def measure(source: Path, n_items: int, n_jobs: int, workers: int) -> float:
    """Items/s of ``workers`` workers on ``n_jobs`` jobs sharing ``n_items`` items."""
    jobs = [f"job-{k}" for k in range(n_jobs)]
    with (common.DataDir(f"manyjobs-{n_jobs}", [source]) as data,
          common.PlanchetServer(data) as server, PlanchetClient(server.url) as admin):
        for job in jobs:
            common.start_job(admin, job, source.name, BATCH)
        crew = common.start_crew([common.worker_command("async", server.url, BATCH, *share)
                                  for share in shares(jobs, workers)])
        common.go(crew)
        reports = common.finish_crew(crew, timeout=120 + n_items / 200)
        for job in jobs:
            common.check_done(admin.get_job_report(job), n_items // n_jobs)
    return n_items / common.elapsed(reports)


def shares(jobs: list[str], workers: int) -> list[list[str]]:
    """The jobs each worker consumes: worker k takes jobs k, k + workers, ...; with fewer
    jobs than workers (the baseline's one job), every worker takes every job."""
    if len(jobs) < workers:
        return [jobs] * workers
    return [jobs[k::workers] for k in range(workers)]


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    n_items = args.items or (20_000 if args.quick else 200_000)
    n_jobs, workers = args.jobs, WORKERS
    one = measure(common.headlines_file(n_items), n_items, 1, workers)
    many = measure(common.headlines_file(n_items // n_jobs), n_items // n_jobs * n_jobs,
                   n_jobs, workers)
    yield common.Row("many jobs", f"{n_jobs} jobs at once, {workers} async workers", many,
                     "items/s", "one job of the same size", one)


def add_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--jobs", type=int, default=100, help="jobs at once (100)")


def main() -> None:
    common.standalone(__doc__, run, common.add_items, add_options)


if __name__ == "__main__":
    main()
