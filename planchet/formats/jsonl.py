"""JSON Lines: one record per line, id = 0-based line number.

An item is the line's JSON text itself (an ``orjson.Fragment``): checked, never kept as
objects, so the server passes it on to workers and into Redis as it was read. orjson
checks each line; the checks of ``strictjson`` run once per chunk, line by line only
when that says a line may need them.

Lines are read as bytes with ``readline`` so every offset is an exact byte count, and a
bad line (blank, invalid UTF-8, invalid JSON, too long, too deep, an integer orjson
would turn into a float) is reported with its id instead of stopping the job. A UTF-8
byte-order mark at the very start of the file is skipped, though its bytes still count.
"""

from __future__ import annotations

import collections
import io
import itertools
from dataclasses import dataclass, field
from typing import Any

import orjson

from planchet import strictjson
from planchet.exceptions import FormatError
from planchet.formats.base import READ_BUFFER, START, Chunk, Position, Reader, Writer, skip_line

BOM = b"\xef\xbb\xbf"
_PLUS_NEWLINE = (1).__add__  # a line's size with its newline, in C


@dataclass
class _Got:
    """What one ``read`` has gathered so far."""

    items: list[tuple[int, Any]] = field(default_factory=list)
    errors: list[tuple[int, str]] = field(default_factory=list)
    ends: list[int] = field(default_factory=list)
    lines: list[bytes] = field(default_factory=list)  # of ``items``, for ``_recheck``


def _usable(lines: list[bytes], cap: int) -> int:
    """How many of ``lines`` (newlines cut off), from the first, are at most ``cap``
    bytes and JSON to orjson: the fast lane takes those, the slow lane the next one."""
    if lines and max(map(len, lines)) > cap:
        lines = lines[:next(k for k, line in enumerate(lines) if len(line) > cap)]
    try:  # all of them, in one pass of C: the usual case
        collections.deque(map(orjson.loads, lines), maxlen=0)
    except orjson.JSONDecodeError:
        for k, line in enumerate(lines):  # the first bad one, found once
            try:
                orjson.loads(line)
            except orjson.JSONDecodeError:
                return k
    return len(lines)


class JsonlReader(Reader):
    """Reads one JSON document per line."""

    def open(self, position: Position = START) -> None:
        self._open_at(position.offset)
        self._next_id, self._offset = position

    def read(self, n: int) -> Chunk:
        self._opened()
        got = _Got()
        while len(got.items) < n and len(got.errors) < self.max_errors:
            if not (self._read_block(n - len(got.items), got) or self._read_line(got)):
                break
        items, errors = got.items, got.errors
        if strictjson.suspect(got.lines, ITEM_MAX_DEPTH):
            items, errors = _recheck(items, got.lines, errors)
        return Chunk(items, errors, Position(self._next_id, self._offset), got.ends)

    def _read_block(self, n: int, got: _Got) -> bool:
        """The fast lane: the whole lines already in the read buffer (at most ``n``) up
        to the first that needs the slow lane (too long, or not JSON), checked by orjson
        in one pass of C. False when none can be taken so (gzip, the file's first line,
        no whole line buffered, a first line that needs the slow lane)."""
        file = self._file
        if self._gzip is not None or self._offset == 0 or not isinstance(file, io.BufferedReader):
            return False
        try:
            buffered = file.peek(READ_BUFFER)
            lines = buffered.split(b"\n", n)
            lines.pop()  # what follows the n-th newline (or the last), or a part of a line
            del lines[_usable(lines, self.max_line_bytes):]
            if not lines:
                return False
            file.read(sum(map(len, lines)) + len(lines))
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        first, self._next_id = self._next_id, self._next_id + len(lines)
        got.ends += itertools.accumulate(map(_PLUS_NEWLINE, map(len, lines)), initial=self._offset)
        del got.ends[-len(lines) - 1]  # the offset the block starts at
        self._offset = got.ends[-1]
        got.items += zip(range(first, self._next_id), map(orjson.Fragment, map(bytes.strip, lines)),
                         strict=True)
        got.lines += lines
        return True

    def _read_line(self, got: _Got) -> bool:
        """The slow lane: one line, whatever it holds; False at the end of the file."""
        at_start = self._offset == 0
        line, size = self._next_line()
        if not size:
            return False
        record_id = self._next_id
        self._next_id += 1
        self._offset += size
        got.ends.append(self._offset)
        if line is None:
            got.errors.append((record_id, f"line longer than {self.max_line_bytes} bytes"))
            return True
        if at_start and line.startswith(BOM):
            line = line[len(BOM) :]
        try:
            orjson.loads(line)  # bytes as they are: orjson checks the UTF-8 itself
        except orjson.JSONDecodeError as exc:
            got.errors.append((record_id, _why(line, exc)))
        else:
            got.items.append((record_id, orjson.Fragment(line.strip())))
            got.lines.append(line)
        return True

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


# Items travel three levels down in a batch frame ({"items": [[id, item], ...]}), so
# they may nest only that much less deeply than orjson can write.
ITEM_MAX_DEPTH = strictjson.ITEM_MAX_DEPTH


def _why(line: bytes, exc: orjson.JSONDecodeError) -> str:
    """The reason a line orjson refused is reported with."""
    if not line.strip():
        return "blank line"
    try:
        line.decode("utf-8")
    except UnicodeDecodeError as bad:  # say so plainly, not as orjson does
        return f"invalid UTF-8: {bad.reason} at byte {bad.start}"
    return f"invalid JSON: {exc}"


def _recheck(items: list[tuple[int, Any]], lines: list[bytes], errors: list[tuple[int, str]]
             ) -> tuple[list[tuple[int, Any]], list[tuple[int, str]]]:
    """Check each line of a chunk ``strictjson.suspect`` flagged, one by one."""
    good: list[tuple[int, Any]] = []
    for (record_id, item), line in zip(items, lines, strict=True):
        try:
            strictjson.loads(line, ITEM_MAX_DEPTH)
        except ValueError as exc:
            errors.append((record_id, str(exc)))
        else:
            good.append((record_id, item))
    return good, sorted(errors)


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
