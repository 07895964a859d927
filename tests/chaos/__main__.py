"""``python -m tests.chaos``: one chaos run, its table of faults, and the verdict.

    python -m tests.chaos --seed 7 --duration 600 --items 300000
    python -m tests.chaos --seed 7 --workers blocking=3,async=2,work=2

Exit status 0 only on PASS. On FAIL the run's directory (server log, worker logs,
input and output files) is kept, and its path printed.
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from tests.chaos.faults import KINDS
from tests.chaos.harness import Config, Outcome, run


def parse_workers(text: str) -> dict[str, int]:
    """``blocking=2,async=2,work=2`` as a dict; every kind must be one the pool knows."""
    pool = {}
    for part in text.split(","):
        kind, _, count = part.partition("=")
        if kind not in ("blocking", "async", "work") or not count.isdigit():
            raise argparse.ArgumentTypeError(f"not KIND=COUNT with a known kind: {part!r}")
        pool[kind] = int(count)
    return pool


def parse_args(argv: list[str]) -> Config:
    defaults = Config()
    parser = argparse.ArgumentParser(prog="python -m tests.chaos", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--duration", type=float, default=defaults.duration,
                        help="seconds of faults (default %(default)s)")
    parser.add_argument("--items", type=int, default=defaults.items,
                        help="lines per job, poisoned ones included (default %(default)s)")
    parser.add_argument("--workers", type=parse_workers,
                        default=",".join(f"{k}={n}" for k, n in defaults.workers.items()),
                        help="the pool, e.g. blocking=2,async=2,work=2 (the default)")
    parser.add_argument("--interval", type=float, default=defaults.interval,
                        help="mean seconds between faults (default %(default)s)")
    parser.add_argument("--delay", type=float, default=defaults.delay,
                        help="seconds a worker spends per batch (default %(default)s)")
    parser.add_argument("--lease-timeout", type=float, default=defaults.lease_timeout)
    parser.add_argument("--workdir", type=Path,
                        help="where to run (must not exist; kept); default: a temporary directory, "
                             "removed on PASS")
    args = parser.parse_args(argv)
    return Config(seed=args.seed, duration=args.duration, items=args.items,
                  workers=args.workers, interval=args.interval, delay=args.delay,
                  lease_timeout=args.lease_timeout, workdir=args.workdir)


def table(outcome: Outcome) -> str:
    """The faults injected by kind, the jobs, the findings and the verdict, as text."""
    c = outcome.config
    lines = [f"chaos run: seed {c.seed}, {c.duration:g} s of faults, {c.items:,} items per job, "
             f"{outcome.seconds:.0f} s in all",
             f"{'fault':<14}{'injected':>10}{'skipped':>9}"]
    for kind in KINDS:
        lines.append(f"{kind:<14}{outcome.injected[kind]:>10}{outcome.skipped[kind]:>9}")
    lines.append(f"{'total':<14}{outcome.injected.total():>10}{outcome.skipped.total():>9}")
    lines.append("workers started: " + ", ".join(
        f"{kind} {n}" for kind, n in sorted(outcome.workers.items())))
    right = [r for r in outcome.rounds if not r.problems]
    lines.append(f"jobs: {len(outcome.rounds)} run, {len(right)} right"
                 + (f" ({len(right) * c.items:,} ids, each exactly once)" if right else ""))
    for r in outcome.rounds:
        if r.problems:
            rep = r.report or {}
            lines.append(f"job {r.job} WRONG (report: {rep.get('state')}, "
                         f"{rep.get('written')} written, {rep.get('failed')} failed):")
            lines += [f"  - {problem}" for problem in r.problems]
    if outcome.tolerated:
        lines.append("worker exits tolerated (the client gave up on a connection, and said so):")
        lines += [f"  - {what} (x{n})" for what, n in outcome.tolerated.items()]
    if outcome.findings:
        lines.append("findings:")
        counted = collections.Counter(outcome.findings)  # in order of first appearance
        lines += [f"  - {finding}" + (f" (x{n})" if n > 1 else "")
                  for finding, n in counted.items()]
    lines.append(f"verdict: {'PASS' if outcome.passed else 'FAIL'}")
    if not outcome.passed:
        lines.append(f"logs and files kept in {outcome.workdir}")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    outcome = run(parse_args(sys.argv[1:] if argv is None else argv))
    print(table(outcome), flush=True)
    return 0 if outcome.passed else 1


if __name__ == "__main__":
    sys.exit(main())
