"""Helpers shared by the format tests."""

from __future__ import annotations

import dataclasses

import orjson

from planchet.formats import Chunk, JsonlReader


def plain(chunk: Chunk) -> Chunk:
    """``chunk`` with each item as the value its JSON stands for: JSONL items are the
    lines' raw JSON text (``orjson.Fragment``), which compares equal to nothing."""
    return dataclasses.replace(
        chunk, items=[(i, orjson.loads(orjson.dumps(item))) for i, item in chunk.items])


class ValueJsonlReader(JsonlReader):
    """A ``JsonlReader`` whose chunks hold values (``plain``), for tests that compare them."""

    def read(self, n: int) -> Chunk:
        return plain(super().read(n))
