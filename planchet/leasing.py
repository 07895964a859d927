"""How much of the work at hand one batch takes: a connection's batch size and byte cap.

A ``batch`` frame is ``encode(Batch(...))``: an envelope fixed by the job's name, the
lease id and the lease timeout, around the items array ``[[id,item],[id,item],...]``.
So its exact size is the envelope's (with ``[]``), plus each ``[id,item]`` pair's JSON,
plus one comma between two pairs: no frame is built to measure one. Only a connection
that set a cap (``credit.max_batch_bytes``) pays for sizing each item.

The first item of a batch is always taken, however large: an item bigger than the
cap alone is sent alone, in a frame over the cap (nothing smaller can carry it).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import orjson

from .codec import encode
from .messages import Batch
from .store import Change, Front, LeasedItem, pack

Queue = collections.deque[tuple[bytes, list[LeasedItem]]]  # a job's queue: blob, items


def pair_size(item_id: int, item: Any) -> int:
    """Bytes of ``[id,item]`` in a frame; 0 for an item that cannot be encoded (it goes
    to the error file instead of into the batch)."""
    try:
        return len(orjson.dumps((item_id, item)))
    except orjson.JSONEncodeError:
        return 0


class Budget:
    """The bytes left in one batch frame under a cap, taken item by item."""

    def __init__(self, job: str, lease_id: str, lease_timeout: float, max_bytes: int) -> None:
        envelope = encode(Batch.model_construct(job=job, lease=lease_id, items=[],
                                                lease_timeout=lease_timeout))
        self.left = max_bytes - len(envelope)
        self.taken = 0

    def fits_bound(self, items_bytes: int) -> bool:
        """Whether an items array of at most ``items_bytes`` bytes (``[]`` included) fits
        what is left, at no cost: the cheap check before sizing item by item."""
        return not self.taken and items_bytes - 2 <= self.left

    def admit(self, item_id: int, item: Any) -> bool:
        """Take this item if it fits (the first always does); False: the batch ends before it."""
        cost = pair_size(item_id, item) + (1 if self.taken else 0)
        if self.taken and cost > self.left:
            return False
        self.left -= cost
        self.taken += 1
        return True


def split_at(items: Sequence[LeasedItem], blob: bytes, batch_size: int,
             budget: Budget | None) -> int:
    """How many of a queued batch's ``items`` (packed as ``blob``) one lease takes.

    A packed entry ``[id,item,attempts]`` is at least two bytes longer than its pair
    in a frame, so ``len(blob) - 2 * len(items)`` bounds the items array from above:
    a batch under the bound is taken whole without sizing an item.
    """
    n = min(batch_size, len(items))
    if budget is None or (n == len(items) and budget.fits_bound(len(blob) - 2 * n)):
        return n
    taken = 0
    for item_id, item, _ in items[:n]:
        if not budget.admit(item_id, item):
            break
        taken += 1
    return taken


def take_queued(queue: Queue, change: Change, batch_size: int,
                budget: Budget | None) -> tuple[bytes, list[LeasedItem]] | None:
    """Pop the batch at the head of ``queue`` for one lease, split to fit: the rest
    goes back to the head, in memory and (through ``change``) in Redis. None: empty."""
    if not queue:
        return None
    blob, items = queue.popleft()
    change.queue.append(None)
    n = split_at(items, blob, batch_size, budget)
    if n < len(items):
        rest = items[n:]
        items, rest_blob = items[:n], pack(rest)
        blob = pack(items)
        queue.appendleft((rest_blob, rest))
        change.queue.append(Front(rest_blob))
    return blob, items
