"""Adaptive batching: size each connection's batches to a target time per batch.

Users should not have to guess a batch size (the original Planchet's caveat): too
small and the per-batch overhead dominates, too big and a slow worker holds items for
minutes and a crash costs a lot. A job started with ``batch_seconds`` lets the server
learn, from each connection's own acks, how many items per second that connection
settles, and size its next batches to take about ``batch_seconds`` each.

The rate is a moving average over the time between acks, so prefetched batches that wait
in the worker do not count as work; a batch size moves by at most a factor of two at a
time, and stays within 1 .. ``MAX_BATCH_SIZE``.
"""

from __future__ import annotations

import time

from .messages import MAX_BATCH_SIZE

SMOOTHING = 0.3  # weight of the newest rate in the moving average


class BatchSizer:
    def __init__(self, initial: int, target_seconds: float) -> None:
        self.size = max(1, min(MAX_BATCH_SIZE, initial))
        self.target = target_seconds
        self.rate: float | None = None  # items per second, smoothed
        self._last: float | None = None  # when the previous ack came

    def settled(self, items: int, now: float | None = None) -> None:
        """A result for ``items`` items was acked: learn from it, resize the batches."""
        now = time.monotonic() if now is None else now
        last, self._last = self._last, now
        if last is None or items <= 0 or now <= last:
            return
        rate = items / (now - last)
        self.rate = rate if self.rate is None else SMOOTHING * rate + (1 - SMOOTHING) * self.rate
        wanted = round(self.rate * self.target)
        self.size = max(1, min(MAX_BATCH_SIZE, self.size * 2, max(self.size // 2, wanted)))

    def idle(self) -> None:
        """The connection had nothing to do: the next ack's gap is not work time."""
        self._last = None
