"""The benchmark command runs: every part, at small sizes, to its table of ratios.

No figure is judged here (speed is the benchmark's to measure, never a test's); what is
checked is what the benchmark checks itself (each run ends with every item written once,
or the part prints ``FAILED``) and that every part prints its figures beside a baseline.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, clean_env

PARTS = ["throughput", "clients", "streams", "memory", "requeue", "resume", "connections",
         "many jobs", "adaptive", "dashboard"]
SMALL = ["--quick", "--items", "2000", "--batches", "100", "--workers", "2", "--clients", "async",
         "--batches-sent", "100", "--trials", "2", "--connections", "40", "--busy", "2",
         "--jobs", "5", "--markdown"]


@pytest.mark.timeout(600)
def test_every_benchmark_part_runs_and_prints_its_ratios(shared_data: Path) -> None:
    """``benchmarks/run.py`` runs every part to the end (exit 0, no part FAILED) and its
    table has, for each part, rows with a figure, a baseline and their ratio."""
    done = subprocess.run([sys.executable, str(REPO / "benchmarks" / "run.py"), *SMALL],
                          capture_output=True, text=True, timeout=540, cwd=REPO,
                          env={**clean_env(), "PLANCHET_SHARED_DATA": str(shared_data)})
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "FAILED" not in done.stdout
    rows = [[cell.strip() for cell in line.strip("|").split("|")]
            for line in done.stdout.splitlines() if line.startswith("| ")]
    assert rows[:2] == [["part", "case", "Planchet", "baseline", "ratio"], ["---"] * 5]
    del rows[1]
    by_part = {part: [row for row in rows[1:] if row[0] == part] for part in PARTS}
    assert all(by_part.values()), [part for part, found in by_part.items() if not found]
    for row in rows[1:]:
        assert row[2] and row[3] and row[4].endswith("%"), row
