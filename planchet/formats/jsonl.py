"""JSON Lines: one record per line, id = 0-based line number.

Lines are read as bytes with ``readline`` so every offset is an exact byte count, and a
bad line (blank, invalid UTF-8, invalid JSON, too long, too deep, an integer orjson
would turn into a float) is reported with its id instead of stopping the job. A UTF-8
byte-order mark at the very start of the file is skipped, though its bytes still count.
"""

from __future__ import annotations

from typing import Any

import orjson

from planchet import strictjson
from planchet.exceptions import FormatError
from planchet.formats.base import START, Chunk, Position, Reader, Writer, skip_line

BOM = b"\xef\xbb\xbf"


class JsonlReader(Reader):
    """Reads one JSON document per line."""

    def open(self, position: Position = START) -> None:
        self._open_at(position.offset)
        self._next_id, self._offset = position

    def read(self, n: int) -> Chunk:
        self._opened()
        items: list[tuple[int, Any]] = []
        errors: list[tuple[int, str]] = []
        ends: list[int] = []
        while len(items) < n and len(errors) < self.max_errors:
            at_start = self._offset == 0
            line, size = self._next_line()
            if not size:
                break
            record_id = self._next_id
            self._next_id += 1
            self._offset += size
            ends.append(self._offset)
            if line is None:
                errors.append((record_id, f"line longer than {self.max_line_bytes} bytes"))
                continue
            if at_start and line.startswith(BOM):
                line = line[len(BOM) :]
            try:
                items.append((record_id, parse_line(line)))
            except ValueError as exc:
                errors.append((record_id, str(exc)))
        return Chunk(items, errors, Position(self._next_id, self._offset), ends)

    def _next_line(self) -> tuple[bytes | None, int]:
        """The next line and its size in bytes; a line over the cap is read past in
        bounded pieces and comes back as None, with its full size."""
        file = self._opened()
        try:
            line = file.readline(self.max_line_bytes + 1)
            if len(line) <= self.max_line_bytes or line.endswith(b"\n"):
                return line, len(line)
            return None, len(line) + skip_line(file)
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc


def parse_line(line: bytes) -> Any:
    """Decode one line; ValueError carries the reason a bad line is reported with.

    Items travel three levels down in a batch frame, so they may nest only that much
    less deeply than orjson can write.
    """
    try:  # bytes as they are: orjson checks the UTF-8 itself
        return strictjson.loads(line, max_depth=strictjson.ITEM_MAX_DEPTH)
    except orjson.JSONDecodeError as exc:
        if not line.strip():
            raise ValueError("blank line") from None
        try:
            line.decode("utf-8")
        except UnicodeDecodeError as bad:  # say so plainly, not as orjson does
            raise ValueError(f"invalid UTF-8: {bad.reason} at byte {bad.start}") from None
        raise ValueError(f"invalid JSON: {exc}") from None


class JsonlWriter(Writer):
    """Writes ``{"id": id, "item": item}`` per line so each result keeps its provenance;
    bare (``metadata["output"] == "bare"``), the result alone, as the original Planchet did."""

    def encode(self, items: list[tuple[int, Any]]) -> tuple[bytes, list[tuple[int, str]]]:
        lines: list[bytes] = []
        failures: list[tuple[int, str]] = []
        for item_id, item in items:
            try:
                lines.append(orjson.dumps(item if self.bare else {"id": item_id, "item": item}))
            except orjson.JSONEncodeError as exc:
                failures.append((item_id, f"cannot encode as JSON: {exc}"))
        return (b"\n".join(lines) + b"\n" if lines else b""), failures
