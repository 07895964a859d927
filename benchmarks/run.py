"""Planchet's benchmarks, each figure beside a baseline measured in the same run.

    python benchmarks/run.py [--quick] [--parts throughput memory ...] [--markdown]

Parts, in order: throughput (against the bare dispatcher of ceiling.py), clients (the
CPU of each Python client per batch, against a bare worker), streams (against a Redis
Streams pipeline written by hand, at three levels of persistence), memory (1M and 10M
items), requeue latency, resume, connections (1,000), many jobs (100), adaptive
batching, and a dashboard watching 100 jobs and 1,000 connections. --quick runs every
part small: 20,000 items, the four throughput cells of the issue, 1,000 batches per
client, the 1M-item file only, 10 requeue trials.
Figures print as they are measured; a table of all of them, and how long each part
took, comes at the end. docs/performance.md says what each figure means.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from collections.abc import Callable, Iterator

import adaptive
import clients
import common
import connections
import dashboard
import manyjobs
import memory
import requeue
import resume
import streams
import throughput

from planchet import __version__

Part = Callable[[argparse.Namespace], Iterator[common.Row]]
PARTS: dict[str, Part] = {
    "throughput": throughput.run,
    "clients": clients.run,
    "streams": streams.run,  # uses --repeat of throughput
    "memory": memory.run,
    "requeue": requeue.run,
    "resume": resume.run,
    "connections": connections.run,
    "manyjobs": manyjobs.run,
    "adaptive": adaptive.run,
    "dashboard": dashboard.run,  # uses --connections and --busy of connections
}


def options() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="every part, small")
    parser.add_argument("--parts", nargs="+", choices=PARTS, default=list(PARTS))
    parser.add_argument("--items", type=int,
                        help="items for throughput, streams, connections and many jobs "
                             "(default 200,000; 20,000 with --quick)")
    parser.add_argument("--trials", type=int, help="requeue trials of each kind (50; 10 quick)")
    parser.add_argument("--markdown", action="store_true", help="the final table in Markdown")
    throughput.add_options(parser)
    clients.add_options(parser)
    connections.add_options(parser)
    manyjobs.add_options(parser)
    return parser.parse_args()


def machine() -> str:
    try:
        commit = subprocess.run(["git", "describe", "--always", "--dirty"], cwd=common.REPO,
                                capture_output=True, text=True, check=False).stdout.strip()
    except OSError:
        commit = ""
    return (f"planchet {__version__} {commit}, Python {platform.python_version()}, "
            f"{os.cpu_count()} CPUs, {platform.machine()}, {time.strftime('%Y-%m-%d %H:%M %Z')}")


def table(rows: list[common.Row], markdown: bool) -> str:
    cells = [(r.part, r.case, f"{common.fmt(r.value)} {r.unit}",
              f"{r.baseline}: {common.fmt(r.base)}", f"{r.ratio * 100:.0f} %") for r in rows]
    head = ("part", "case", "Planchet", "baseline", "ratio")
    if markdown:
        lines = [head, ("---",) * 5, *cells]
        return "\n".join("| " + " | ".join(line) + " |" for line in lines)
    widths = [max(len(c[k]) for c in [head, *cells]) for k in range(5)]
    return "\n".join("  ".join(c[k].ljust(widths[k]) if k in (0, 1, 3) else c[k].rjust(widths[k])
                               for k in range(5)).rstrip() for c in [head, *cells])


def main() -> int:
    args = options()
    common.install_cleanup()
    print(machine(), flush=True)
    rows: list[common.Row] = []
    took: dict[str, float] = {}
    try:
        failed = measure(args, rows, took)
    except KeyboardInterrupt:
        print("\ninterrupted: stopping every process the benchmark started", file=sys.stderr)
        return 130
    print("\n" + table(rows, args.markdown))
    print("\ntime per part: " + ", ".join(f"{k} {v:.0f} s" for k, v in took.items()))
    if failed:
        print("FAILED: " + ", ".join(failed))
    return 1 if failed else 0


def measure(args: argparse.Namespace, rows: list[common.Row], took: dict[str, float]
            ) -> list[str]:
    """Run the parts, printing each figure as it comes; the names of those that failed."""
    failed: list[str] = []
    for name in args.parts:
        print(f"\n== {name} ==", flush=True)
        began = time.monotonic()
        try:
            for row in PARTS[name](args):
                rows.append(row)
                print(row.line(), flush=True)
        except common.Failed as exc:
            print(f"FAILED: {exc}", flush=True)
            failed.append(name)
            common.cleanup()  # nothing of this part may run on into the next
        took[name] = time.monotonic() - began
        print(f"({name}: {took[name]:.0f} s)", flush=True)
    return failed


if __name__ == "__main__":
    sys.exit(main())
