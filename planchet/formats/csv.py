"""CSV with a header row: items are ``{column: value}`` dicts, id = 0-based data-row number.

The stdlib ``csv`` module parses and quotes, but it works on text; the file is read as
bytes through a line iterator that counts what it hands over, so a row's end offset is
exact even when quoted fields hold newlines or non-ASCII text. The iterator also caps a
row's length: past ``max_line_bytes`` it reads on to the end of the physical line in
bounded pieces, the row is reported as too long and parsing starts afresh after it.
"""

from __future__ import annotations

import csv
import io
import os
import pathlib
from collections.abc import Iterator
from typing import IO, Any, cast

import orjson

from planchet.exceptions import BadRequest, FormatError
from planchet.formats.base import (
    MAX_LINE_BYTES,
    START,
    Chunk,
    Position,
    Reader,
    Writer,
    skip_line,
)
from planchet.formats.gz import GzipInput


class RowTooLong(Exception):
    """Raised through ``csv.reader`` when a row outgrows the cap; its bytes are read past."""


class _Lines:
    """Binary lines decoded for ``csv.reader``, with a byte count and a bad-UTF-8 flag."""

    def __init__(self, file: IO[bytes], consumed: int = 0, cap: int = MAX_LINE_BYTES) -> None:
        self.file = file
        self.consumed = consumed
        self.cap = cap
        self.bad_utf8 = False
        self.row_bytes = 0

    def start_row(self) -> None:
        self.bad_utf8 = False
        self.row_bytes = 0

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        line = self.file.readline(max(1, self.cap + 1 - self.row_bytes))
        if not line:
            raise StopIteration
        self.consumed += len(line)
        self.row_bytes += len(line)
        if self.row_bytes - line.endswith(b"\n") > self.cap:  # the newline is not counted
            if not line.endswith(b"\n"):
                self.consumed += skip_line(self.file)
            raise RowTooLong(f"row longer than {self.cap} bytes")
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError:
            # Keep parsing so the row ends where it should; the row is reported as bad.
            self.bad_utf8 = True
            return line.decode("utf-8", "surrogateescape")


def _delimiter(metadata: dict) -> str:
    delimiter = metadata.get("delimiter", ",")
    if not isinstance(delimiter, str) or len(delimiter) != 1 or delimiter in '\r\n"':
        raise BadRequest(f"CSV delimiter must be one character, got {delimiter!r}")
    return delimiter


def _read_header(lines: _Lines, delimiter: str, path: pathlib.Path) -> list[str]:
    """The first row names the columns; without a sane one nothing can be read."""
    try:
        header = next(csv.reader(lines, delimiter=delimiter), None)
    except (csv.Error, OSError, RowTooLong) as exc:
        raise FormatError(f"cannot read the header of {path}: {exc}") from exc
    if not header or lines.bad_utf8:
        raise FormatError(f"{path} has no valid header row")
    header[0] = header[0].removeprefix("\ufeff")
    if len(set(header)) != len(header):
        raise FormatError(f"{path} has duplicate column names: {header!r}")
    return header


class CsvReader(Reader):
    """Reads rows as dicts; ``Position(0, 0)`` means the first row after the header."""

    def __init__(
        self,
        path: pathlib.Path,
        metadata: dict,
        *,
        root: pathlib.Path | None = None,
        max_line_bytes: int = MAX_LINE_BYTES,
    ) -> None:
        super().__init__(path, metadata, root=root, max_line_bytes=max_line_bytes)
        self._delimiter = _delimiter(self.metadata)
        self._header: list[str] = []
        self._lines: _Lines | None = None
        self._rows: Iterator[list[str]] = iter(())

    def open(self, position: Position = START) -> None:
        file = self._open_at(0)
        try:
            lines = _Lines(file, cap=self.max_line_bytes)
            self._header = _read_header(lines, self._delimiter, self.path)
            offset = position.offset or lines.consumed
            if offset < lines.consumed:
                raise FormatError(f"offset {offset} is inside the header of {self.path}")
            self._move(file, offset)
        except BaseException:
            self.close()
            raise
        self._lines = _Lines(file, offset, self.max_line_bytes)
        self._rows = csv.reader(self._lines, delimiter=self._delimiter)
        self._next_id, self._offset = position.next_id, offset

    @property
    def header(self) -> list[str]:
        return list(self._header)

    def read(self, n: int) -> Chunk:
        self._opened()
        assert self._lines is not None
        items: list[tuple[int, Any]] = []
        errors: list[tuple[int, str]] = []
        ends: list[int] = []
        while len(items) < n and len(errors) < self.max_errors:
            before = self._lines.consumed
            self._lines.start_row()
            try:
                row: list[str] | str = next(self._rows)
            except StopIteration:
                break
            except csv.Error as exc:
                row = f"malformed CSV: {exc}"
            except RowTooLong as exc:
                row = str(exc)
                self._rows = csv.reader(self._lines, delimiter=self._delimiter)
            except OSError as exc:
                raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
            if self._lines.consumed == before:
                break
            record_id, self._next_id = self._next_id, self._next_id + 1
            ends.append(self._lines.consumed)
            reason = row if isinstance(row, str) else self._problem(row)
            if reason:
                errors.append((record_id, reason))
            else:
                items.append((record_id, dict(zip(self._header, row, strict=True))))
        self._offset = self._lines.consumed
        return Chunk(items, errors, Position(self._next_id, self._offset), ends)

    def _problem(self, row: list[str]) -> str | None:
        assert self._lines is not None
        if self._lines.bad_utf8:
            return "invalid UTF-8"
        if not row:
            return "blank line"
        if len(row) != len(self._header):
            return f"expected {len(self._header)} fields, got {len(row)}"
        return None


def _cell(name: str, value: Any) -> str:
    """Strings go in as they are; anything else as JSON, so lists and dicts stay readable."""
    if isinstance(value, str):
        return value
    if value is None:
        return ""
    try:
        return orjson.dumps(value).decode()
    except orjson.JSONEncodeError as exc:
        raise ValueError(f"cannot encode field {name!r}: {exc}") from exc


class CsvWriter(Writer):
    """Writes ``id`` plus the first dict's keys as the header, once per file.

    Bare (``metadata["output"] == "bare"``), a row is the result alone: no ``id`` column,
    the header is the first dict's keys, and ``id`` is a field name like any other.
    """

    def __init__(
        self, path: pathlib.Path, metadata: dict, *, root: pathlib.Path | None = None
    ) -> None:
        super().__init__(path, metadata, root=root)
        self._delimiter = _delimiter(self.metadata)
        self._fields: list[str] | None = None
        self._header_written = False
        self._buffer = io.StringIO()
        self._minimal = csv.writer(self._buffer, delimiter=self._delimiter, lineterminator="\n")
        # Python 3.11 leaves a lone "\r" unquoted, which no reader parses back; quote those.
        self._quote_all = csv.writer(
            self._buffer, delimiter=self._delimiter, lineterminator="\n", quoting=csv.QUOTE_ALL
        )

    @property
    def fields(self) -> list[str] | None:
        """Item keys in column order, after the ``id`` column; None until known."""
        return None if self._fields is None else list(self._fields)

    def open(self, offset: int) -> None:
        super().open(offset)
        self._fields, self._header_written = None, False
        if offset > 0:  # restart: keep the order already on disk, never a second header
            try:
                self._fields = self._header_on_disk()
            except BaseException:
                self.close()
                raise
            self._header_written = True

    def _header_on_disk(self) -> list[str]:
        assert self._file is not None
        try:  # through the open file: the path may have changed since
            with os.fdopen(os.dup(self._file.fileno()), "rb") as file:
                file.seek(0)
                source: IO[bytes] = file
                if self.compressed:  # the header is in the first member
                    source = cast(IO[bytes], GzipInput(file, self.path))
                lines = _Lines(source)
                header = _read_header(lines, self._delimiter, self.path)
        except OSError as exc:
            raise FormatError(f"cannot read {self.path}: {exc.strerror or exc}") from exc
        inside = self.compressed or lines.consumed <= self.offset  # gzip: cut back already
        if self.bare and inside:
            return header
        if header[0] != "id" or not inside:
            raise FormatError(f"{self.path} does not start with a Planchet CSV header")
        return header[1:]

    def encode(self, items: list[tuple[int, Any]]) -> tuple[bytes, list[tuple[int, str]]]:
        encoded: list[bytes] = []
        failures: list[tuple[int, str]] = []
        for item_id, item in items:
            try:
                values = self._values(item)
                encoded.append(self._encode(values if self.bare else [str(item_id), *values]))
            except ValueError as exc:
                failures.append((item_id, str(exc)))
        if encoded and not self._header_written:
            assert self._fields is not None
            encoded.insert(0, self._encode(self._fields if self.bare else ["id", *self._fields]))
        self._header_written = self._header_written or bool(encoded)
        return b"".join(encoded), failures

    def _values(self, item: Any) -> list[str]:
        if isinstance(item, dict):
            fields = self._fields if self._fields is not None else self._first_fields(item)
            extra = [key for key in item if key not in fields]
            if extra:
                raise ValueError(f"fields not in header: {extra!r}")
            self._fields = fields
            return [_cell(name, item.get(name)) for name in fields]
        if isinstance(item, list | tuple):
            if self._fields is None:
                raise ValueError("the first item must be a dict: its keys make the header")
            if len(item) != len(self._fields):
                raise ValueError(f"expected {len(self._fields)} fields, got {len(item)}")
            return [_cell(name, value) for name, value in zip(self._fields, item, strict=True)]
        raise ValueError(f"cannot write {type(item).__name__} as a CSV row: need a dict or a list")

    def _first_fields(self, item: dict) -> list[str]:
        if not all(isinstance(key, str) and key.isprintable() for key in item):
            raise ValueError(f"field names must be printable strings: {list(item)!r}")
        if self.bare and not item:
            raise ValueError("the first result of a bare CSV needs a field: it makes the header")
        if "id" in item and not self.bare:
            raise ValueError("field name 'id' is reserved for the record id")
        return list(item)

    def _encode(self, cells: list[str]) -> bytes:
        self._buffer.seek(0)
        self._buffer.truncate()
        writer = self._quote_all if any("\r" in cell for cell in cells) else self._minimal
        writer.writerow(cells)
        try:
            return self._buffer.getvalue().encode("utf-8")
        except UnicodeEncodeError as exc:
            raise ValueError(f"cannot encode as UTF-8: {exc.reason}") from exc
