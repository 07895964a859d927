"""JSON Lines: one record per line, id = 0-based line number.

Lines are read as bytes with ``readline`` so every offset is an exact byte count, and a
bad line (blank, invalid UTF-8, invalid JSON) is reported with its id instead of
stopping the job.
"""

from __future__ import annotations

from typing import Any

import orjson

from planchet.exceptions import FormatError
from planchet.formats.base import START, Chunk, Position, Reader, Writer


class JsonlReader(Reader):
    """Reads one JSON document per line."""

    def open(self, position: Position = START) -> None:
        self._open_at(position.offset)
        self._next_id, self._offset = position

    def read(self, n: int) -> Chunk:
        file = self._opened()
        items: list[tuple[int, Any]] = []
        errors: list[tuple[int, str]] = []
        while len(items) < n and len(errors) < self.max_errors:
            try:
                line = file.readline()
            except OSError as exc:
                raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
            if not line:
                break
            record_id = self._next_id
            self._next_id += 1
            self._offset += len(line)
            try:
                items.append((record_id, parse_line(line)))
            except ValueError as exc:
                errors.append((record_id, str(exc)))
        return Chunk(items, errors, Position(self._next_id, self._offset))


def parse_line(line: bytes) -> Any:
    """Decode one line; ValueError carries the reason a bad line is reported with."""
    try:
        return orjson.loads(line)  # bytes as they are: orjson checks the UTF-8 itself
    except orjson.JSONDecodeError as exc:
        if not line.strip():
            raise ValueError("blank line") from None
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:  # say so plainly, not as orjson does
            raise ValueError(f"invalid UTF-8: {bad.reason} at byte {bad.start}") from None
        raise ValueError(f"invalid JSON: {exc}") from None


class JsonlWriter(Writer):
    """Writes ``{"id": id, "item": item}`` per line so each result keeps its provenance."""

    def write(self, items: list[tuple[int, Any]]) -> tuple[int, list[tuple[int, str]]]:
        lines: list[bytes] = []
        failures: list[tuple[int, str]] = []
        for item_id, item in items:
            try:
                lines.append(orjson.dumps({"id": item_id, "item": item}))
            except orjson.JSONEncodeError as exc:
                failures.append((item_id, f"cannot encode as JSON: {exc}"))
        data = b"\n".join(lines) + b"\n" if lines else b""
        return self._append(data), failures
