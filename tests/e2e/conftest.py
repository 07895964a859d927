"""What the end-to-end tests share: worker processes (``worker.py``) started for a test
and killed after it."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("worker.py")


@pytest.fixture
def workers() -> Iterator[Callable[..., subprocess.Popen[bytes]]]:
    started: list[subprocess.Popen[bytes]] = []

    def start(url: str, job: str = "kills", batch: int = 20, delay: float = 0.0):
        proc = subprocess.Popen([sys.executable, str(WORKER), url, job, str(batch), str(delay)],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        started.append(proc)
        return proc

    yield start
    for proc in started:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
