"""Reader and writer names resolve through a whitelist, never through getattr."""

from __future__ import annotations

import pytest

from planchet import formats
from planchet.exceptions import BadRequest
from planchet.formats import (
    READERS,
    WRITERS,
    CsvReader,
    CsvWriter,
    JsonlReader,
    JsonlWriter,
    get_reader,
    get_writer,
)


def test_known_names_resolve() -> None:
    assert get_reader("JsonlReader") is JsonlReader
    assert get_reader("CsvReader") is CsvReader
    assert get_writer("JsonlWriter") is JsonlWriter
    assert get_writer("CsvWriter") is CsvWriter
    assert set(READERS) == {"JsonlReader", "CsvReader"}
    assert set(WRITERS) == {"JsonlWriter", "CsvWriter"}


@pytest.mark.parametrize("name", ["Nope", "Reader", "ErrorLog", "JsonlWriter", "os", "__class__"])
def test_unknown_reader_names_the_known_ones(name: str) -> None:
    with pytest.raises(BadRequest) as info:
        get_reader(name)
    assert "CsvReader" in info.value.message and "JsonlReader" in info.value.message


@pytest.mark.parametrize("name", ["Writer", "JsonlReader", "", None, ["CsvWriter"]])
def test_unknown_writer_names_the_known_ones(name: object) -> None:
    with pytest.raises(BadRequest, match="CsvWriter, JsonlWriter"):
        get_writer(name)  # type: ignore[arg-type]


def test_public_names_are_exported() -> None:
    for name in ("Chunk", "Position", "Reader", "Writer", "ErrorLog"):
        assert name in formats.__all__
        assert getattr(formats, name) is not None
