"""Bare output (``metadata["output"] == "bare"``): results alone, as the original Planchet."""

from __future__ import annotations

import gzip
import sys
from pathlib import Path

import orjson
import pytest

from planchet.exceptions import BadRequest
from planchet.formats import CsvWriter, JsonlWriter, is_bare
from planchet.messages import StartJob
from planchet.spec import build_spec
from tests.support import REPO, run

BARE = {"output": "bare"}


def start_job(**metadata: object) -> StartJob:
    files = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}
    return StartJob(id=1, job="j", reader="JsonlReader", writer="JsonlWriter",
                    metadata={**files, **metadata})


def test_bare_jsonl_writes_each_result_as_its_own_line(tmp_path: Path) -> None:
    """Bare JSONL is ``orjson.dumps(result)`` per line: no id, any JSON value."""
    writer = JsonlWriter(tmp_path / "out.jsonl", BARE)
    writer.open(0)
    offset, failures = writer.write([(4, {"len": 5}), (2, [1, "é"]), (7, None), (9, "x")])
    writer.close()
    assert failures == []
    assert (tmp_path / "out.jsonl").read_bytes() == b'{"len":5}\n[1,"\xc3\xa9"]\nnull\n"x"\n'
    assert offset == (tmp_path / "out.jsonl").stat().st_size


def test_bare_csv_writes_the_row_alone_and_keeps_its_header_on_restart(tmp_path: Path) -> None:
    """Bare CSV: the first result's keys (``id`` allowed) head the file; rows carry no id."""
    path = tmp_path / "out.csv"
    writer = CsvWriter(path, BARE)
    writer.open(0)
    offset, failures = writer.write([(3, {"id": "a", "n": 1}), (1, ["b", 2]), (0, "no")])
    assert [i for i, _ in failures] == [0]
    writer.close()
    assert path.read_bytes() == b"id,n\na,1\nb,2\n"
    writer.open(offset)  # a restart: the header on disk is kept, not written again
    assert writer.fields == ["id", "n"]
    writer.write([(5, {"n": 3})])
    writer.close()
    assert path.read_bytes() == b"id,n\na,1\nb,2\n,3\n"


def test_bare_gzip_csv_restarts_from_its_first_member(tmp_path: Path) -> None:
    """A bare .csv.gz output reads its header back through gzip on a restart."""
    path = tmp_path / "out.csv.gz"
    writer = CsvWriter(path, BARE)
    writer.open(0)
    offset, _ = writer.write([(0, {"x": "1"})])
    writer.open(offset)
    writer.write([(1, {"x": "2"})])
    writer.close()
    assert gzip.decompress(path.read_bytes()) == b"x\n1\n2\n"


def test_a_gzip_error_file_is_refused(data_dir: Path) -> None:
    """Error files stay plain JSONL, so a .gz name for one is a bad_request."""
    with pytest.raises(BadRequest, match="plain JSONL"):
        build_spec(start_job(error_file_path="errors.jsonl.gz"), data_dir)
    assert build_spec(start_job(output_file_path="o.jsonl.gz"), data_dir).error_path.endswith(
        "o.jsonl.gz.errors.jsonl")


def test_a_bare_csv_needs_a_field_to_make_its_header(tmp_path: Path) -> None:
    """An empty first dict cannot head a bare CSV: it fails for good, nothing is written."""
    writer = CsvWriter(tmp_path / "out.csv", BARE)
    writer.open(0)
    offset, failures = writer.write([(0, {})])
    writer.close()
    assert offset == 0 and "needs a field" in failures[0][1]


@pytest.mark.parametrize("style", ["Bare", "", 1, None, ["bare"], {"bare": 1}])
def test_output_must_be_envelope_or_bare(tmp_path: Path, data_dir: Path, style: object) -> None:
    """Any other ``output`` is a bad_request: for the spec and for a writer built by hand."""
    with pytest.raises(BadRequest, match='"output" must be "envelope" or "bare"'):
        build_spec(start_job(output=style), data_dir)
    with pytest.raises(BadRequest):
        JsonlWriter(tmp_path / "o.jsonl", {"output": style})
    assert is_bare({}) is False and is_bare({"output": "envelope"}) is False
    assert build_spec(start_job(output="bare"), data_dir).metadata["output"] == "bare"


def test_planchet_start_bare_gives_bare_output(
    serve_url: str, headlines: str, data_dir: Path, shared_data: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """``planchet start --bare`` then ``planchet work``: the output holds the results alone."""
    code, _, _ = run(capsys, "start", "shout", "--url", serve_url, "--input", headlines,
                     "--output", "shout.jsonl.gz", "--bare")
    assert code == 0
    code, out, _ = run(capsys, "work", "shout", "--url", serve_url, "--",
                       sys.executable, str(REPO / "examples" / "uppercase.py"))
    assert code == 0, out
    results = [orjson.loads(line) for line in
               gzip.decompress((data_dir / "shout.jsonl.gz").read_bytes()).splitlines()]
    inputs = [orjson.loads(line) for line in (shared_data / "news_headlines.jsonl").open("rb")]
    assert sorted(r["text"] for r in results) == sorted(i["text"].upper() for i in inputs)
