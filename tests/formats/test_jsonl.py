"""JsonlReader and JsonlWriter on real, messy data: exact offsets, resume, truncation."""

from __future__ import annotations

import json
import os
import tracemalloc
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from planchet import strictjson
from planchet.codec import decode_server, encode
from planchet.exceptions import FormatError
from planchet.formats import Chunk, JsonlReader, JsonlWriter, Position
from planchet.messages import Batch
from tests.formats import ValueJsonlReader

SHARED = Path(
    os.environ.get(
        "PLANCHET_SHARED_DATA", Path(__file__).resolve().parents[2].parent / "shared" / "data"
    )
)
TITLES = SHARED / "github_issue_titles.jsonl"
START = Position(0, 0)


def read_all(reader: JsonlReader, batch: int) -> list[Chunk]:
    chunks = []
    while True:
        chunk = reader.read(batch)
        if not chunk.items and not chunk.errors:
            return chunks
        chunks.append(chunk)


def open_reader(path: Path, position: Position = START) -> ValueJsonlReader:
    reader = ValueJsonlReader(path, {})
    reader.open(position)
    return reader


def test_round_trip_of_shared_titles(tmp_path: Path) -> None:
    expected = [json.loads(line) for line in TITLES.read_text(encoding="utf-8").splitlines()]
    assert len(expected) == 830
    reader = open_reader(TITLES)
    writer = JsonlWriter(tmp_path / "out.jsonl", {})
    writer.open(0)
    for chunk in read_all(reader, 37):
        assert not chunk.errors
        assert len(chunk.items) <= 37
        offset, failures = writer.write(chunk.items)
        assert failures == []
        assert offset == (tmp_path / "out.jsonl").stat().st_size
    assert reader.read(37) == Chunk([], [], Position(830, TITLES.stat().st_size))
    reader.close()
    writer.close()

    back = [
        item for chunk in read_all(open_reader(tmp_path / "out.jsonl"), 100) for item in chunk.items
    ]
    assert [line_id for line_id, _ in back] == list(range(830))
    assert sorted(result["id"] for _, result in back) == list(range(830))
    assert [result["item"] for _, result in back] == expected


def test_positions_are_exact_byte_offsets() -> None:
    raw = TITLES.read_bytes()
    line_ends = [i + 1 for i, byte in enumerate(raw) if byte == ord("\n")]
    reader = open_reader(TITLES)
    for chunk in read_all(reader, 37):
        assert chunk.position.offset == line_ends[chunk.position.next_id - 1]
    reader.close()


def test_resume_continues_like_a_straight_read() -> None:
    straight = open_reader(TITLES)
    first = straight.read(100)
    rest = read_all(straight, 50)
    straight.close()
    assert first.position.next_id == 100

    resumed = open_reader(TITLES, first.position)
    again = read_all(resumed, 50)
    resumed.close()
    assert again[0].items[0][0] == 100
    assert [c.items for c in again] == [c.items for c in rest]
    assert again[-1].position == rest[-1].position


def test_resume_never_reads_the_bytes_before_the_position(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    garbage = b"\xff\xfe not json\n{broken\n\n"
    path.write_bytes(garbage + b'{"a": 1}\n{"a": 2}\n')
    assert len(open_reader(path).read(10).errors) == 3

    reader = open_reader(path, Position(3, len(garbage)))
    chunk = reader.read(10)
    assert chunk.errors == []
    assert chunk.items == [(3, {"a": 1}), (4, {"a": 2})]
    assert chunk.position == Position(5, path.stat().st_size)


def test_malformed_lines_are_errors_with_line_ids(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    lines = [b'{"ok": 0}', b"{not json", b"\xc3\x28 bad utf-8", b"", b"   \t", b'"ok"', b"[1]"]
    path.write_bytes(b"\n".join(lines))  # no newline after the last line: still a line
    chunk = open_reader(path).read(100)
    assert chunk.items == [(0, {"ok": 0}), (5, "ok"), (6, [1])]
    reasons = dict(chunk.errors)
    assert list(reasons) == [1, 2, 3, 4]
    assert reasons[1].startswith("invalid JSON: ")
    assert reasons[2].startswith("invalid UTF-8")
    assert reasons[3] == reasons[4] == "blank line"
    assert chunk.position == Position(7, path.stat().st_size)


def test_trailing_newline_is_not_a_line_and_crlf_is_fine(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\r\n{"a": 2}\n')
    reader = open_reader(path)
    assert reader.read(10).items == [(0, {"a": 1}), (1, {"a": 2})]
    assert reader.read(10) == Chunk([], [], Position(2, 19))
    assert reader.read(10) == Chunk([], [], Position(2, 19))


def test_read_stops_at_n_good_items_past_errors(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"1\nx\n2\ny\n3\n4\n")
    reader = open_reader(path)
    first = reader.read(2)
    assert first.items == [(0, 1), (2, 2)]
    assert first.errors == [(1, first.errors[0][1])]
    assert first.position == Position(3, 6)
    second = reader.read(2)
    assert second.items == [(4, 3), (5, 4)]
    assert [e for e, _ in second.errors] == [3]


def test_a_garbage_file_yields_bounded_chunks(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"{\n" * 2500 + b"7\n")
    reader = open_reader(path)
    sizes = [(len(c.items), len(c.errors)) for c in read_all(reader, 10)]
    assert sizes == [(0, 1000), (0, 1000), (1, 500)]


def test_open_refuses_missing_files_and_impossible_offsets(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FormatError, match=r"nope\.jsonl"):
        ValueJsonlReader(missing, {}).open()
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"1\n22\n")
    with pytest.raises(FormatError, match="outside"):
        ValueJsonlReader(path, {}).open(Position(9, 6))
    with pytest.raises(FormatError, match="start of a line"):
        ValueJsonlReader(path, {}).open(Position(1, 3))
    at_end = open_reader(path, Position(2, 5))
    assert at_end.read(5) == Chunk([], [], Position(2, 5))


def test_size_and_read_before_open(tmp_path: Path) -> None:
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"1\n2\n")
    reader = ValueJsonlReader(path, {})
    assert reader.size() == 4
    with pytest.raises(FormatError, match="not open"):
        reader.read(1)
    reader.open()
    with path.open("ab") as grow:
        grow.write(b"3\n")
    assert reader.size() == 6
    reader.close()


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1)
    | st.floats(allow_nan=False, allow_infinity=False) | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids),
    max_leaves=20,
)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 2**63 - 1), json_values), max_size=20), st.booleans())
def test_the_writer_writes_what_orjson_writes_line_by_line(
    items: list[tuple[int, Any]], bare: bool
) -> None:
    """The writer's fast encoding is byte for byte orjson's, one line per result."""
    writer = JsonlWriter(Path("unused.jsonl"), {"output": "bare"} if bare else {})
    data, failures = writer.encode(items)
    assert failures == []
    assert data == b"".join(orjson.dumps(item if bare else {"id": i, "item": item}) + b"\n"
                            for i, item in items)


def test_a_bare_writer_fails_single_items_too() -> None:
    data, failures = JsonlWriter(Path("unused.jsonl"), {"output": "bare"}).encode(
        [(1, "a"), (2, {1, 2}), (3, [3])])
    assert data == b'"a"\n[3]\n'
    assert [(i, why.split(":")[0]) for i, why in failures] == [(2, "cannot encode as JSON")]


def test_writer_truncates_to_the_committed_offset(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, {})
    writer.open(0)
    committed, _ = writer.write([(0, "a"), (1, {"b": [1, 2]})])
    crashed, _ = writer.write([(2, "lost")])
    assert crashed == path.stat().st_size > committed
    writer.close()

    writer.open(committed)
    assert path.stat().st_size == committed
    offset, _ = writer.write([(2, "again")])
    writer.close()
    assert offset == path.stat().st_size
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == [
        {"id": 0, "item": "a"},
        {"id": 1, "item": {"b": [1, 2]}},
        {"id": 2, "item": "again"},
    ]

    with pytest.raises(FormatError, match="committed"):
        writer.open(offset + 1)
    assert path.stat().st_size == offset


def test_writer_never_writes_a_blank_line(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, {})
    writer.open(0)
    assert writer.write([]) == (0, [])
    offset, failures = writer.write([(4, {1: "non-string key"})])
    assert offset == 0
    assert failures[0][0] == 4 and "str" in failures[0][1]
    assert path.read_bytes() == b""


def test_writer_fails_single_items_not_the_batch(tmp_path: Path) -> None:
    path = tmp_path / "out.jsonl"
    writer = JsonlWriter(path, {})
    writer.open(0)
    offset, failures = writer.write([(0, 1), (1, {2: 3}), (2, object()), (3, "ok")])
    writer.close()
    assert [f for f, _ in failures] == [1, 2]
    assert offset == path.stat().st_size
    assert path.read_bytes() == b'{"id":0,"item":1}\n{"id":3,"item":"ok"}\n'


def test_writer_creates_the_file_but_not_its_directory(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match="missing"):
        JsonlWriter(tmp_path / "missing" / "out.jsonl", {}).open(0)
    assert not (tmp_path / "missing").exists()
    writer = JsonlWriter(tmp_path / "new.jsonl", {})
    writer.open(0)
    writer.close()
    assert (tmp_path / "new.jsonl").read_bytes() == b""
    with pytest.raises(FormatError, match="not open"):
        writer.write([(0, 1)])


def test_a_byte_order_mark_at_the_start_is_skipped(tmp_path: Path) -> None:
    """A UTF-8 BOM costs no line; offsets still count its three bytes."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\xef\xbb\xbf{"b": 2}\n{"c": 3}\n')
    chunk = open_reader(path).read(10)
    assert chunk.items == [(0, {"a": 1}), (2, {"c": 3})]
    assert [e for e, _ in chunk.errors] == [1]  # a BOM later on is no BOM but bad JSON
    assert chunk.position == Position(3, path.stat().st_size)
    resumed = open_reader(path, Position(1, 12)).read(10)
    assert resumed.items == [(2, {"c": 3})] and [e for e, _ in resumed.errors] == [1]


def test_integers_outside_64_bits_are_errors_not_floats(tmp_path: Path) -> None:
    """An integer orjson would turn into a float goes to the error file, with the reason."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'18446744073709551616\n{"n": -9223372036854775809}\n18446744073709551615\n'
                     b'"18446744073709551616"\n')
    chunk = open_reader(path).read(10)
    assert chunk.items == [(2, 2**64 - 1), (3, "18446744073709551616")]
    assert [e for e, _ in chunk.errors] == [0, 1]
    assert all("integer outside the 64-bit range" in reason for _, reason in chunk.errors)


def test_items_nested_too_deep_to_send_are_errors(tmp_path: Path) -> None:
    """A line that could not be encoded into a batch frame is an error, not a later crash."""
    deepest = strictjson.ITEM_MAX_DEPTH
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"[" * deepest + b"]" * deepest + b"\n"
                     + b"[" * (deepest + 1) + b"]" * (deepest + 1) + b"\n"
                     + b"[" * 1024 + b"]" * 1024 + b"\n")
    chunk = open_reader(path).read(10)
    assert [i for i, _ in chunk.items] == [0]
    assert chunk.errors == [(1, f"nested deeper than {deepest} levels"),
                            (2, f"nested deeper than {deepest} levels")]
    batch = Batch(job="j", lease="l", items=chunk.items, lease_timeout=1.0)
    assert decode_server(encode(batch)) == batch
    writer = JsonlWriter(tmp_path / "out.jsonl", {})
    writer.open(0)
    assert writer.write(chunk.items)[1] == []
    writer.close()


def line_ends(raw: bytes) -> list[int]:
    return [i + 1 for i, byte in enumerate(raw) if byte == ord("\n")]


def test_a_line_over_the_cap_is_an_error_and_read_past(tmp_path: Path) -> None:
    """A line longer than max_line_bytes is an error for its id; the next line reads fine."""
    path = tmp_path / "in.jsonl"
    lines = [b'"' + b"x" * 8 + b'"', b'"' + b"x" * 9 + b'"', b"1" * 500_000, b"[2]", b"3" * 11]
    raw = b"\n".join(lines)  # the last line has no newline
    path.write_bytes(raw)
    reader = ValueJsonlReader(path, {}, max_line_bytes=10)
    reader.open()
    first = reader.read(1)
    assert first.items == [(0, "x" * 8)] and first.errors == []
    second = reader.read(1)
    assert second.items == [(3, [2])]
    assert second.errors == [(1, "line longer than 10 bytes"), (2, "line longer than 10 bytes")]
    assert second.position == Position(4, line_ends(raw)[3])
    last = reader.read(1)
    assert last == Chunk([], [(4, "line longer than 10 bytes")], Position(5, len(raw)))
    reader.close()

    resumed = ValueJsonlReader(path, {}, max_line_bytes=10)
    resumed.open(Position(2, line_ends(raw)[1]))
    chunk = resumed.read(1)
    assert chunk.items == [(3, [2])] and [e for e, _ in chunk.errors] == [2]
    resumed.close()


def test_an_endless_line_is_read_past_in_bounded_memory(tmp_path: Path) -> None:
    """A 64 MB file without a newline never makes the reader hold more than its cap."""
    path = tmp_path / "in.jsonl"
    with path.open("wb") as file:
        file.truncate(64 * 2**20)  # sparse: zeros, no newline
        file.seek(0, os.SEEK_END)
        file.write(b"\n7\n")
    reader = ValueJsonlReader(path, {}, max_line_bytes=2**16)
    reader.open()
    tracemalloc.start()
    try:
        chunk = reader.read(10)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
        reader.close()
    assert chunk == Chunk([(1, 7)], [(0, "line longer than 65536 bytes")],
                          Position(2, path.stat().st_size))
    assert peak < 4 * 2**20


def test_items_are_passed_on_as_the_json_text_they_were_read_as(tmp_path: Path) -> None:
    """A line's JSON goes into a batch frame byte for byte (only the whitespace around it
    dropped): the server never turns it into objects and back, so nothing is rewritten."""
    lines = [b'{"b": 1.0E2,  "a": -0, "a": "\\u00e9t\\u00e9"}', b'  [1, 2.50]\t', b'"\\/"']
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\r\n".join(lines) + b"\n")
    reader = JsonlReader(path, {})
    reader.open()
    items = reader.read(10).items
    frame = encode(Batch.model_construct(job="j", lease="l", items=items, lease_timeout=1.0))
    pairs = b",".join(b"[%d,%s]" % (i, line.strip()) for i, line in enumerate(lines))
    assert frame == b'{"type":"batch","job":"j","lease":"l","items":[%s],"lease_timeout":1.0}' % (
        pairs)
    assert decode_server(frame).items == [(0, {"b": 100.0, "a": "été"}), (1, [1, 2.5]),
                                          (2, "/")]


def test_any_chunk_size_reads_what_a_line_by_line_check_finds(tmp_path: Path) -> None:
    """The reader's fast lane (whole lines of its buffer checked at once) and its slow
    lane (one line at a time) agree with a plain line-by-line check: the same good ids
    and values, the same bad ids, the same end offsets, whatever the chunk size."""
    odd = [b"0", b"false", b"null", b"[]", b"{}", b'""', b"nope", b"", b"  ", b"[1,",
           b"18446744073709551616", b"[" * 300 + b"]" * 300, b'{"a": [1, {"b": null}]}',
           b"\xff\xfe", b"-0.0e-0", b'"\\ud83d\\ude00"']
    lines = [odd[i % len(odd)] if i % 5 == 0 else b'{"n": %d, "t": "%s"}' % (i, b"x" * (i % 40))
             for i in range(3000)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    expected_good, expected_bad, expected_ends, end = {}, [], [], 0
    for i, line in enumerate(lines):
        end += len(line) + 1
        expected_ends.append(end)
        try:
            expected_good[i] = strictjson.loads(line, strictjson.ITEM_MAX_DEPTH)
        except ValueError:
            expected_bad.append(i)
    for size in (1, 7, 100, 1000, 5000):
        chunks = read_all(open_reader(path), size)
        assert all(len(c.items) <= size for c in chunks)
        assert dict(i for c in chunks for i in c.items) == expected_good
        assert [i for c in chunks for i, _ in c.errors] == expected_bad
        assert [e for c in chunks for e in c.ends] == expected_ends


class CountingReader(JsonlReader):
    """Counts the lines the slow lane (one line at a time) reads."""

    slow = 0

    def _read_line(self, got: Any) -> bool:
        self.slow += 1
        return super()._read_line(got)


@pytest.mark.parametrize("bad", [b"", b"not json", b'"' + b"x" * 300 + b'"'])
def test_a_line_the_fast_lane_cannot_take_costs_it_one_line_not_the_rest(
    tmp_path: Path, bad: bytes
) -> None:
    """Lines before a bad or too long one are still taken in bulk: the slow lane reads
    the first line of the file, the odd ones and a line cut by the end of a buffer,
    never the good lines around them (it once re-read a block per bad line)."""
    lines = [bad if i % 1000 == 999 else b'{"n": %d}' % i for i in range(20_000)]
    path = tmp_path / "in.jsonl"
    path.write_bytes(b"\n".join(lines) + b"\n")
    reader = CountingReader(path, {}, max_line_bytes=200)
    reader.open()
    chunks = read_all(reader, 1000)
    assert sum(len(c.ends) for c in chunks) == 20_000
    buffers = path.stat().st_size // 65536 + 1
    assert reader.slow <= 1 + 20 + buffers + len(chunks)


def test_reread_gives_a_span_of_lines_back_as_it_was_first_read(tmp_path: Path) -> None:
    """A span read again from its positions alone: the same items, bad lines skipped;
    one whose lines no longer hold as many good items is refused."""
    path = tmp_path / "in.jsonl"
    path.write_bytes(b'{"a": 1}\nnot json\n\n[2]\n"three"\n')
    first = JsonlReader(path, {})
    first.open()
    chunk = first.read(3)
    assert [i for i, _ in chunk.items] == [0, 3, 4]
    again = JsonlReader(path, {}).reread(Position(0, 0), chunk.position, 3)
    assert orjson.loads(orjson.dumps(again)) == [[0, {"a": 1}], [3, [2]], [4, "three"]]
    with pytest.raises(FormatError, match="records 0 to 4 are no longer where"):
        JsonlReader(path, {}).reread(Position(0, 0), chunk.position, 4)
    moved = Position(chunk.position.next_id, chunk.position.offset - 1)  # same count
    with pytest.raises(FormatError, match="records 0 to 4 are no longer where"):
        JsonlReader(path, {}).reread(Position(0, 0), moved, 3)
