"""ErrorLog: one JSON line per failure, same offset contract as the writers."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest

from planchet.exceptions import FormatError
from planchet.formats import ErrorLog


def test_lines_offsets_and_truncation(tmp_path: Path) -> None:
    path = tmp_path / "errors.jsonl"
    log = ErrorLog(path)
    log.open(0)
    assert log.write([]) == 0
    committed = log.write([(3, "invalid JSON: x", None), (7, 'worker said no\n\t"', 5)])
    assert committed == path.stat().st_size
    assert log.write([(9, "after the commit", 1)]) == path.stat().st_size
    log.close()

    log.open(committed)
    assert path.stat().st_size == committed
    offset = log.write([(9, "é \udc80", 2)])
    log.close()
    assert offset == path.stat().st_size
    lines = [orjson.loads(line) for line in path.read_bytes().splitlines()]
    assert lines == [
        {"id": 3, "error": "invalid JSON: x"},
        {"id": 7, "error": 'worker said no\n\t"', "attempts": 5},
        {"id": 9, "error": "é \\udc80", "attempts": 2},
    ]
    with pytest.raises(FormatError, match="committed"):
        log.open(offset + 1)


def test_missing_directory_is_a_format_error(tmp_path: Path) -> None:
    with pytest.raises(FormatError, match=r"errors\.jsonl"):
        ErrorLog(tmp_path / "no" / "errors.jsonl").open(0)
