"""The short seeded chaos run, as part of the suite; ``scripts/chaos.sh`` runs a long one."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.chaos.__main__ import table
from tests.chaos.faults import KINDS, schedule
from tests.chaos.harness import Config, run

SEED = 5
DURATION = 30.0


def test_schedule_is_the_seeds_alone():
    """The same seed gives the same faults and every kind strikes; another seed differs."""
    first = schedule(SEED, DURATION, 2.5)
    assert first == schedule(SEED, DURATION, 2.5)
    assert first != schedule(SEED + 1, DURATION, 2.5)
    assert {fault.kind for fault in first} == set(KINDS)
    assert [f.at for f in first] == sorted(f.at for f in first)


@pytest.mark.timeout(300)
def test_short_chaos_run_loses_nothing_and_writes_nothing_twice(tmp_path: Path,
                                                                 shared_data: Path):
    """Under a dozen faults of every kind, each id ends up once, poisoned ids alone fail."""
    config = Config(seed=SEED, duration=DURATION, items=60_000, workdir=tmp_path / "chaos",
                    headlines=shared_data / "news_headlines.jsonl")
    outcome = run(config)
    assert outcome.injected.total() >= len(KINDS)
    if not outcome.passed:
        pytest.fail("\n" + table(outcome), pytrace=False)
