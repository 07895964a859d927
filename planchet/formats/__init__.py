"""Streaming readers and writers that know their byte offsets, picked by name.

Job specs name a reader and a writer; the names are looked up in these registries, a
whitelist, so a request can never reach an arbitrary class.
"""

from __future__ import annotations

from typing import TypeVar

from planchet.exceptions import BadRequest
from planchet.formats.base import AppendOnlyFile, Chunk, Position, Reader, Writer, is_bare
from planchet.formats.csv import CsvReader, CsvWriter
from planchet.formats.errorlog import ErrorLog
from planchet.formats.files import check_regular
from planchet.formats.gz import is_gzip
from planchet.formats.jsonl import JsonlReader, JsonlWriter

READERS: dict[str, type[Reader]] = {"JsonlReader": JsonlReader, "CsvReader": CsvReader}
WRITERS: dict[str, type[Writer]] = {"JsonlWriter": JsonlWriter, "CsvWriter": CsvWriter}

T = TypeVar("T")


def get_reader(name: str) -> type[Reader]:
    """The reader class registered as ``name``; BadRequest names the known ones."""
    return _lookup(READERS, name, "reader")


def get_writer(name: str) -> type[Writer]:
    """The writer class registered as ``name``; BadRequest names the known ones."""
    return _lookup(WRITERS, name, "writer")


def _lookup(registry: dict[str, T], name: str, kind: str) -> T:
    try:
        return registry[name]
    except (KeyError, TypeError):
        known = ", ".join(sorted(registry))
        raise BadRequest(f"unknown {kind} {name!r}; known: {known}") from None


__all__ = [
    "READERS",
    "WRITERS",
    "AppendOnlyFile",
    "Chunk",
    "CsvReader",
    "CsvWriter",
    "ErrorLog",
    "JsonlReader",
    "JsonlWriter",
    "Position",
    "Reader",
    "Writer",
    "check_regular",
    "get_reader",
    "get_writer",
    "is_bare",
    "is_gzip",
]
