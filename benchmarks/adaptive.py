"""Adaptive batching: NOT MEASURED YET. The server cannot size batches by itself today.

When it can (a ``credit`` with ``"batch_size": null`` on a job started with
``batch_seconds``, the server sizing each connection's batches to that target time per
batch, learned from its acks), fill :func:`run` in. What it should show, in one run:

* convergence, for a fast worker (trivial work per item) and a slow one (e.g. 1 ms of
  sleep per item), each alone on a job with ``batch_seconds`` set: the batch sizes the
  worker receives over time, and the time per batch (batch received -> ack) against
  the target, e.g. "slow worker: batches settle at 480 items, 0.49 s per batch vs target
  0.5 s (98 %) after 6 batches";
* both kinds of worker at once on one job: each connection converges to its own size;
* throughput with adaptive batches against the best fixed batch size for that work
  (from a sweep, same run), e.g. "fast worker, adaptive: 61,000 items/s vs best fixed
  (1000) 64,000 (95 %)".

Use :class:`common.Row` for every figure, with its baseline from the same run, and
yield the rows as the other benchmarks do; ``run.py`` prints them.
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator

import common

NOT_YET = ("adaptive batching is not in the server yet: nothing measured "
           "(see benchmarks/adaptive.py)")


def run(args: argparse.Namespace) -> Iterator[common.Row]:
    """Nothing until the feature lands: the placeholder yields no figure."""
    del args
    yield from ()
