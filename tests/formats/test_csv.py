"""CsvReader and CsvWriter: header handling, quoted newlines, exact offsets, restarts."""

from __future__ import annotations

import csv
import io
import json
import os
import tracemalloc
from pathlib import Path

import pytest

from planchet.exceptions import BadRequest, FormatError
from planchet.formats import Chunk, CsvReader, CsvWriter, Position

SHARED = Path(
    os.environ.get(
        "PLANCHET_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"
    )
)
TITLES = SHARED / "github_issue_titles.jsonl"
START = Position(0, 0)


def read_all(reader: CsvReader, batch: int) -> list[Chunk]:
    chunks = []
    while (chunk := reader.read(batch)).items or chunk.errors:
        chunks.append(chunk)
    return chunks


def open_reader(path: Path, position: Position = START, **meta: str) -> CsvReader:
    reader = CsvReader(path, meta)
    reader.open(position)
    return reader


def titles_csv(path: Path) -> list[dict[str, str]]:
    """A CSV made from the shared titles, with quotes, commas, tabs and newlines in it."""
    rows = []
    for line in TITLES.read_text(encoding="utf-8").splitlines():
        record = json.loads(line)
        rows.append(
            {
                "text": record["text"],
                "multiline": record["text"].replace(" ", "\n", 2) + ', "quoted"',
                "url": record["meta"]["url"],
            }
        )
    with path.open("w", encoding="utf-8", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=["text", "multiline", "url"])
        writer.writeheader()
        writer.writerows(rows)
    return rows


def test_round_trip_of_a_csv_made_from_shared_titles(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    expected = titles_csv(source)
    assert any("\n" in row["multiline"] for row in expected)
    reader = open_reader(source)
    writer = CsvWriter(tmp_path / "out.csv", {})
    writer.open(0)
    for chunk in read_all(reader, 37):
        assert chunk.errors == []
        offset, failures = writer.write(chunk.items)
        assert failures == []
        assert offset == (tmp_path / "out.csv").stat().st_size
    assert reader.read(37).position == Position(830, source.stat().st_size)
    writer.close()

    back = [item for c in read_all(open_reader(tmp_path / "out.csv"), 100) for item in c.items]
    assert [row_id for row_id, _ in back] == list(range(830))
    assert [row.pop("id") for _, row in back] == [str(i) for i in range(830)]
    assert [row for _, row in back] == expected


def test_positions_are_exact_and_resume_matches_a_straight_read(tmp_path: Path) -> None:
    source = tmp_path / "in.csv"
    titles_csv(source)
    raw = source.read_bytes()
    straight = open_reader(source)
    first = straight.read(100)
    rest = read_all(straight, 64)
    # The bytes before the position parse as exactly the header plus 100 rows.
    assert (
        len(list(csv.reader(io.StringIO(raw[: first.position.offset].decode(), newline="")))) == 101
    )

    resumed = open_reader(source, first.position)
    again = read_all(resumed, 64)
    assert again[0].items[0][0] == 100
    assert [c.items for c in again] == [c.items for c in rest]
    assert [c.position for c in again] == [c.position for c in rest]


def test_quoted_newlines_keep_offsets_exact(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    head = b"name,note\n"
    row0 = b'a,"two\nlines"\n'
    row1 = '"é, ü","say ""hi""\r\nthere"\n'.encode()
    path.write_bytes(head + row0 + row1 + b"c,last")
    reader = open_reader(path)
    one = reader.read(1)
    assert one == Chunk(
        [(0, {"name": "a", "note": "two\nlines"})], [], Position(1, len(head + row0))
    )
    two = reader.read(5)
    assert two.items == [
        (1, {"name": "é, ü", "note": 'say "hi"\r\nthere'}),
        (2, {"name": "c", "note": "last"}),
    ]
    assert two.position == Position(3, path.stat().st_size)
    resumed = open_reader(path, one.position)
    assert resumed.read(5) == two


def test_bad_rows_are_errors_and_the_job_goes_on(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b,c\n1,2,3\n1,2\n\n1,2,3,4\n\xff,2,3\n7,8,9\n")
    chunk = open_reader(path).read(10)
    assert chunk.items == [(0, {"a": "1", "b": "2", "c": "3"}), (5, {"a": "7", "b": "8", "c": "9"})]
    assert chunk.errors == [
        (1, "expected 3 fields, got 2"),
        (2, "blank line"),
        (3, "expected 3 fields, got 4"),
        (4, "invalid UTF-8"),
    ]
    assert chunk.position == Position(6, path.stat().st_size)


def test_resume_never_parses_the_rows_before_the_position(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    bad = b"only-one\n\xff\xfe\n"
    path.write_bytes(b"x,y\n" + bad + b"1,2\n")
    assert len(open_reader(path).read(5).errors) == 2
    chunk = open_reader(path, Position(2, 4 + len(bad))).read(5)
    assert chunk == Chunk([(2, {"x": "1", "y": "2"})], [], Position(3, path.stat().st_size))


def test_header_only_bom_and_delimiter(tmp_path: Path) -> None:
    path = tmp_path / "in.tsv"
    path.write_bytes("\ufeffk\tv\n1\t,\n".encode())
    reader = open_reader(path, delimiter="\t")
    assert reader.header == ["k", "v"]
    assert reader.read(5).items == [(0, {"k": "1", "v": ","})]
    only_header = tmp_path / "h.csv"
    only_header.write_bytes(b"a,b")
    assert open_reader(only_header).read(5) == Chunk([], [], Position(0, 3))
    with pytest.raises(BadRequest, match="delimiter"):
        CsvReader(path, {"delimiter": "::"})


def test_missing_or_headerless_files_are_format_errors(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"nope\.csv"):
        open_reader(tmp_path / "nope.csv")
    empty = tmp_path / "empty.csv"
    empty.write_bytes(b"")
    with pytest.raises(FormatError, match="header"):
        open_reader(empty)
    dup = tmp_path / "dup.csv"
    dup.write_bytes(b"a,a\n1,2\n")
    with pytest.raises(FormatError, match="duplicate"):
        open_reader(dup)
    ok = tmp_path / "ok.csv"
    ok.write_bytes(b"a,b\n1,2\n")
    with pytest.raises(FormatError, match="header"):
        open_reader(ok, Position(0, 2))
    with pytest.raises(FormatError, match="outside"):
        open_reader(ok, Position(1, 99))


def test_writer_writes_the_header_once_across_reopens(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, {})
    writer.open(0)
    assert writer.write([]) == (0, [])
    first, _ = writer.write([(0, {"b": "x", "a": 1})])
    assert path.read_bytes() == b"id,b,a\n0,x,1\n" and first == path.stat().st_size
    writer.write([(1, {"a": "lost"})])
    writer.close()

    again = CsvWriter(path, {})
    again.open(first)
    assert again.fields == ["b", "a"]
    offset, failures = again.write([(1, {"a": "2", "b": "y"}), (2, {"c": "?"}), (3, ["z", "3"])])
    again.close()
    assert failures == [(2, "fields not in header: ['c']")]
    assert offset == path.stat().st_size
    assert path.read_bytes() == b"id,b,a\n0,x,1\n1,y,2\n3,z,3\n"
    with pytest.raises(FormatError, match="committed"):
        again.open(offset + 1)


def test_writer_restarts_from_zero_with_a_fresh_header(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    path.write_bytes(b"id,old\n0,crashed before commit\n")
    writer = CsvWriter(path, {})
    writer.open(0)
    writer.write([(0, {"new": None})])
    writer.close()
    assert path.read_bytes() == b"id,new\n0,\n"
    foreign = tmp_path / "foreign.csv"
    foreign.write_bytes(b"name\nx\n")
    with pytest.raises(FormatError, match="Planchet CSV header"):
        CsvWriter(foreign, {}).open(7)


def test_writer_item_failures_and_cell_encoding(tmp_path: Path) -> None:
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, {"delimiter": ";"})
    writer.open(0)
    offset, failures = writer.write(
        [(0, ["list first"]), (1, {"id": 1}), (2, "text"), (3, {"t": "a\rb;c", "n": [1, True]})]
    )
    assert [f for f, _ in failures] == [0, 1, 2]
    offset, failures = writer.write([(4, {"t": "\udc80"}), (5, {"t": "ok"}), (6, ["1"])])
    writer.close()
    assert failures[0][0] == 4 and "UTF-8" in failures[0][1]
    assert failures[1] == (6, "expected 2 fields, got 1")
    assert offset == path.stat().st_size
    rows = open_reader(path, delimiter=";").read(10).items
    assert rows == [
        (0, {"id": "3", "t": "a\rb;c", "n": "[1,true]"}),
        (1, {"id": "5", "t": "ok", "n": ""}),
    ]


def test_rows_the_csv_parser_rejects_are_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.csv"
    path.write_bytes(b"a,b\nx\ry,1\n2,3\n")
    chunk = open_reader(path).read(5)
    assert chunk.items == [(1, {"a": "2", "b": "3"})]
    assert chunk.errors[0][0] == 0 and chunk.errors[0][1].startswith("malformed CSV: ")
    assert chunk.position == Position(2, path.stat().st_size)


def test_a_row_over_the_cap_is_an_error_and_read_past(tmp_path: Path) -> None:
    """A row longer than max_line_bytes is an error for its id; parsing restarts after it."""
    path = tmp_path / "in.csv"
    rows = [b"a,b\n", b"1,2\n", b"x" * 300_000 + b",y\n", b'"multi\nline' + b"z" * 30 + b'",q\n',
            b"3,4\n", b"5" * 30]
    path.write_bytes(b"".join(rows))
    reader = CsvReader(path, {}, max_line_bytes=20)
    reader.open()
    chunk = reader.read(100)
    reason = "row longer than 20 bytes"
    assert chunk.items == [(0, {"a": "1", "b": "2"}), (3, {"a": "3", "b": "4"})]
    assert chunk.errors == [(1, reason), (2, reason), (4, reason)]
    assert chunk.position.offset == path.stat().st_size
    reader.close()

    after = len(b"".join(rows[:3]))  # resume right after the long row
    resumed = CsvReader(path, {}, max_line_bytes=20)
    resumed.open(Position(2, after))
    assert resumed.read(100).errors[0] == (2, reason)
    resumed.close()


def test_a_row_exactly_at_the_cap_is_fine(tmp_path: Path) -> None:
    """The cap counts a row's bytes without its final newline, quoted newlines included."""
    path = tmp_path / "in.csv"
    path.write_bytes(b'a,b\n' + b"1" * 8 + b"," + b"2" * 11 + b'\n"x\n' + b"y" * 14 + b'",z\n')
    reader = CsvReader(path, {}, max_line_bytes=20)
    reader.open()
    chunk = reader.read(10)
    assert chunk.items == [(0, {"a": "1" * 8, "b": "2" * 11}), (1, {"a": "x\n" + "y" * 14,
                                                                    "b": "z"})]
    assert chunk.errors == []
    reader.close()
    one_less = CsvReader(path, {}, max_line_bytes=19)
    one_less.open()
    assert one_less.read(10).errors == [(0, "row longer than 19 bytes"),
                                        (1, "row longer than 19 bytes")]
    one_less.close()


def test_a_header_over_the_cap_is_a_format_error(tmp_path: Path) -> None:
    """Without a header nothing can be read, so a huge one stops the job plainly."""
    path = tmp_path / "in.csv"
    path.write_bytes(b"a" * 100 + b",b\n1,2\n")
    with pytest.raises(FormatError, match=r"header.*longer than 20 bytes"):
        CsvReader(path, {}, max_line_bytes=20).open()


def test_an_endless_row_is_read_past_in_bounded_memory(tmp_path: Path) -> None:
    """A 64 MB row without a newline never makes the reader hold more than its cap."""
    path = tmp_path / "in.csv"
    with path.open("wb") as file:
        file.write(b"a\n")
        file.truncate(64 * 2**20)
        file.seek(0, os.SEEK_END)
        file.write(b"\n7\n")
    reader = CsvReader(path, {}, max_line_bytes=2**16)
    reader.open()
    tracemalloc.start()
    try:
        chunk = reader.read(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        reader.close()
    assert chunk == Chunk([(1, {"a": "7"})], [(0, "row longer than 65536 bytes")],
                          Position(2, path.stat().st_size))
    assert peak < 4 * 2**20


@pytest.mark.parametrize("batch", [1, 7, 50])
def test_reread_gives_a_span_of_records_back_as_it_was_first_read(
    tmp_path: Path, batch: int
) -> None:
    """Every span a reader read (rows with quoted newlines, bad rows among them) is read
    again from its positions alone, to the same items; a span that no longer ends where
    it did is refused."""
    path = tmp_path / "in.csv"
    titles_csv(path)
    with path.open("ab") as f:
        f.write(b"1,2\n\n")  # two bad rows at the end
    start = START
    for chunk in read_all(open_reader(path), batch):
        again = CsvReader(path, {}).reread(start, chunk.position, len(chunk.items))
        assert again == chunk.items
        start = chunk.position
    end = Position(start.next_id, start.offset - 1)
    with pytest.raises(FormatError, match="has changed under the job"):
        CsvReader(path, {}).reread(START, end, 10**6)
