"""gzip input and output on real files: same records and offsets as plain, exact resume."""

from __future__ import annotations

import csv
import gzip
import io
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import orjson
import pytest

from planchet.exceptions import FormatError
from planchet.formats import (
    Chunk,
    CsvReader,
    CsvWriter,
    JsonlWriter,
    Position,
    Reader,
)
from tests.formats import ValueJsonlReader
from tests.formats.test_jsonl import TITLES

START = Position(0, 0)


def gz(path: Path, data: bytes) -> Path:
    path.write_bytes(gzip.compress(data))
    return path


def read_all(reader: Reader, batch: int) -> list[Chunk]:
    chunks = []
    while (chunk := reader.read(batch)).ends:
        chunks.append(chunk)
    return chunks


def chunks_of(cls: type[Reader], path: Path, batch: int, at: Position = START) -> list[Chunk]:
    reader = cls(path, {})
    reader.open(at)
    try:
        return read_all(reader, batch)
    finally:
        reader.close()


def titles_csv() -> bytes:
    """The issue titles as a CSV, with a quoted newline and non-ASCII text thrown in."""
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(["n", "title"])
    for n, line in enumerate(TITLES.read_text(encoding="utf-8").splitlines()):
        writer.writerow([n, orjson.loads(line)["text"] if n % 7 else f"line\nbreak é {n}"])
    return out.getvalue().encode()


@pytest.mark.parametrize(("cls", "name"), [(ValueJsonlReader, "in.jsonl"), (CsvReader, "in.csv")])
def test_gzip_input_reads_as_the_plain_file_does(tmp_path: Path, cls: type[Reader],
                                                 name: str) -> None:
    """A .gz input gives the same ids, items and (uncompressed) offsets as the plain file."""
    data = TITLES.read_bytes() if cls is ValueJsonlReader else titles_csv()
    plain = tmp_path / name
    plain.write_bytes(data)
    packed = gz(tmp_path / f"{name}.gz", data)
    expected = chunks_of(cls, plain, 37)
    assert [i for c in expected for i, _ in c.items] == list(range(830))
    assert chunks_of(cls, packed, 37) == expected
    assert [c.ends for c in chunks_of(cls, packed, 37)] == [c.ends for c in expected]
    middle = expected[10].position  # resume mid-file: decompress up to it, go on from there
    assert chunks_of(cls, packed, 37, middle) == chunks_of(cls, plain, 37, middle)


def test_gzip_input_resume_refuses_offsets_no_line_starts_at(tmp_path: Path) -> None:
    """A resume offset mid-line or past the uncompressed end is a FormatError, as for plain."""
    packed = gz(tmp_path / "in.jsonl.gz", TITLES.read_bytes())
    size = TITLES.stat().st_size
    with pytest.raises(FormatError, match="not at the start of a line"):
        chunks_of(ValueJsonlReader, packed, 10, Position(1, 5))
    with pytest.raises(FormatError, match="outside"):
        chunks_of(ValueJsonlReader, packed, 10, Position(830, size + 1))
    assert chunks_of(ValueJsonlReader, packed, 10, Position(830, size)) == []


def test_gzip_input_size_is_an_uncompressed_estimate(tmp_path: Path) -> None:
    """A .gz input's size is in the offsets' unit: estimated mid-file, exact at the end."""
    packed = gz(tmp_path / "in.jsonl.gz", TITLES.read_bytes() * 40)
    total = TITLES.stat().st_size * 40
    reader = ValueJsonlReader(packed, {})
    assert reader.size() == packed.stat().st_size  # not open: what the disk says
    reader.open()
    half = reader.read(830 * 20).position.offset
    assert half < reader.size() < 2 * total  # more than read, same order as the truth
    read_all(reader, 1000)
    assert reader.size() == total
    reader.close()


def test_a_small_gzip_input_taken_in_at_once_is_sized_by_its_trailer(tmp_path: Path) -> None:
    """A compressible input small enough to be pulled in whole at the first read is not
    sized by a meaningless ratio but by its gzip trailer: the true size, mid-file."""
    data = b'{"text": "the same line again"}\n' * 20_000
    packed = gz(tmp_path / "small.jsonl.gz", data)
    reader = ValueJsonlReader(packed, {})
    reader.open()
    reader.read(100)
    assert reader.size() == len(data)
    reader.close()


@pytest.mark.parametrize(("cls", "suffix"), [(JsonlWriter, "jsonl"), (CsvWriter, "csv")])
def test_gzip_output_is_the_plain_output_compressed(tmp_path: Path, cls: type, suffix: str) -> None:
    """A .gz writer's file decompresses to the plain writer's bytes; offsets are its size."""
    batches = [[(i, {"n": i, "text": f"é {i}"}) for i in range(k, k + 50)] for k in (0, 50, 100)]
    plain, packed = cls(tmp_path / f"o.{suffix}", {}), cls(tmp_path / f"o.{suffix}.gz", {})
    plain.open(0)
    packed.open(0)
    for batch in batches:
        plain.write(batch)
        offset, failures = packed.write(batch)
        assert failures == [] and offset == packed.path.stat().st_size
    plain.close()
    packed.close()
    assert gzip.decompress(packed.path.read_bytes()) == plain.path.read_bytes()
    if shutil.which("gzip"):
        out = subprocess.run(["gzip", "-dc", str(packed.path)], capture_output=True, check=True)
        assert out.stdout == plain.path.read_bytes()


def test_gzip_output_cut_back_to_a_commit_stays_valid(tmp_path: Path) -> None:
    """Reopening a .gz output at a committed offset drops later members and torn bytes."""
    path = tmp_path / "out.csv.gz"
    writer = CsvWriter(path, {})
    writer.open(0)
    committed, _ = writer.write([(0, {"a": 1}), (1, {"a": 2})])
    writer.write([(2, {"a": 3})])  # appended, never committed
    writer.close()
    with path.open("ab") as file:  # and a member torn by a crash mid-append
        file.write(gzip.compress(b"3,4\n")[:9])
    writer.open(committed)  # the restart: cut back, header read from the first member
    assert path.stat().st_size == committed
    assert gzip.decompress(path.read_bytes()) == b"id,a\n0,1\n1,2\n"
    writer.write([(5, {"a": 6})])
    writer.close()
    assert gzip.decompress(path.read_bytes()) == b"id,a\n0,1\n1,2\n5,6\n"  # no second header


def corruptions(data: bytes) -> dict[str, bytes]:
    packed = gzip.compress(data)
    flipped = bytearray(packed)
    flipped[len(packed) // 2] ^= 0xFF
    bad_crc = bytearray(packed)
    bad_crc[-8] ^= 0xFF
    return {
        "not gzip": data,
        "truncated": packed[: len(packed) // 2],
        "flipped byte": bytes(flipped),
        "bad CRC": bytes(bad_crc),
        "trailing garbage": packed + b"garbage!",
    }


@pytest.mark.parametrize("kind", list(corruptions(b"")))
def test_a_corrupt_gzip_input_is_a_format_error(tmp_path: Path, kind: str) -> None:
    """Every kind of broken .gz input fails as a FormatError naming the file, never another."""
    data = TITLES.read_bytes() * 4
    path = tmp_path / "in.jsonl.gz"
    path.write_bytes(corruptions(data)[kind])
    with pytest.raises(FormatError, match=r"in\.jsonl\.gz is not a valid gzip file"):
        chunks_of(ValueJsonlReader, path, 1000)


def test_resume_deep_in_a_million_line_gzip_in_bounded_memory(tmp_path: Path) -> None:
    """Opening a 1M-line .gz input near its end decompresses in pieces, holding little."""
    lines = [b'{"n":%d,"pad":"%s"}\n' % (n, b"x" * (n % 17)) for n in range(1_000_000)]
    near_end = Position(999_990, sum(len(line) for line in lines[:999_990]))
    path = gz(tmp_path / "big.jsonl.gz", b"".join(lines))
    del lines
    reader = ValueJsonlReader(path, {})
    tracemalloc.start()
    try:
        reader.open(near_end)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    chunk = reader.read(100)
    reader.close()
    assert [i for i, _ in chunk.items] == list(range(999_990, 1_000_000))
    assert chunk.items[-1][1] == {"n": 999_999, "pad": "x" * (999_999 % 17)}
    assert peak < 4 * 2**20, f"{peak} bytes held to skip {near_end.offset} bytes"
