"""Memory: the server's and its Redis's RSS while a 1M- and a 10M-item job run.

    python benchmarks/memory.py [--quick]      # --quick: the 1M-item file only

A generated JSONL file (written once into benchmarks/.cache) is served by a fresh
``planchet serve`` to 4 asyncio-client workers in batches of 1,000. When 10 %, 50 % and
90 % of the items are settled, it samples the RSS of the server process and of its
private redis-server, both read from /proc (the private Redis's port and password are
not exposed, so its ``used_memory`` cannot be asked; the redis-server process is found
by its directory, ``planchet.embedded.redis_pids(data dir/.planchet)``). Flat means:
the 10M file's figures equal the 1M file's at the same fraction, and 90 % equals 10 %.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import common

from planchet import PlanchetClient

POINTS = (10, 50, 90)
BATCH, WORKERS = 1000, 4
Samples = dict[int, tuple[float, float]]  # percent settled -> (server MB, redis MB)


def sample_job(n_items: int) -> Samples:
    """Run a job on ``n_items`` generated items to 90 %, sampling at each point."""
    source = common.generated_file(n_items)
    job, samples = "memory", {}
    with (common.DataDir(f"memory-{n_items}", [source]) as data,
          common.PlanchetServer(data) as server, PlanchetClient(server.url) as admin):
        common.start_job(admin, job, source.name, BATCH)
        crew = common.start_crew([common.worker_command("async", server.url, BATCH, job)]
                                 * WORKERS)
        try:
            common.go(crew)
            for point in POINTS:
                common.wait_settled(admin, job, n_items * point / 100, 120 + n_items / 1000)
                samples[point] = (server.rss_mb(), server.redis_rss_mb())
        finally:
            for proc in crew:
                common.stop(proc)
    return samples


def label(n_items: int) -> str:
    return f"{n_items // 1_000_000}M items"


def growth(n_items: int, samples: Samples) -> Iterator[common.Row]:
    for k, what in enumerate(("server RSS", "redis-server RSS")):
        yield common.Row("memory", f"{what} at 90 %, {label(n_items)}", samples[90][k], "MB",
                         "at 10 %", samples[10][k])


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    sizes = [1_000_000] if args.quick else [1_000_000, 10_000_000]
    runs: dict[int, Samples] = {}
    for n_items in sizes:
        runs[n_items] = sample_job(n_items)
        yield from growth(n_items, runs[n_items])
    if len(runs) == 2:
        small, big = runs[sizes[0]], runs[sizes[1]]
        for point in POINTS:
            for k, what in enumerate(("server RSS", "redis-server RSS")):
                yield common.Row("memory", f"{what} at {point} %, {label(sizes[1])}",
                                 big[point][k], "MB", label(sizes[0]), small[point][k])


def main() -> None:
    common.standalone(__doc__, run)


if __name__ == "__main__":
    main()
