"""``orjson.loads`` that refuses what orjson cannot give back unchanged.

orjson reads integers exactly only in [-2**63, 2**64) and turns bigger ones into
floats without a word; it reads nesting 1024 deep but writes only 254 deep, so a value
it accepted can crash the server when it is sent on. Both are refused here with a
ValueError saying why. The checks run only when a cheap scan says they could matter.
"""

from __future__ import annotations

import json
from typing import Any

import orjson

MAX_DEPTH = 254  # the deepest orjson.dumps writes: lists and objects, counted from 1
# A batch frame puts each item three levels down ({"items": [[id, item], ...]}).
ITEM_MAX_DEPTH = MAX_DEPTH - 3
INT_MIN, INT_END = -(2**63), 2**64  # orjson's exact range, end excluded

# One translate marks digits as "0" and openers as "[": a run of 19 zeros then means an
# integer that may be out of range (or a harmless float or string), and counting "["
# bounds the depth. Cheaper than a regex: ~0.3 us on a 140-byte line.
_MARKS = bytes.maketrans(b"123456789{", b"000000000[")
_LONG_RUN = b"0" * 19


def loads(data: bytes | str, max_depth: int = MAX_DEPTH) -> Any:
    """Parse JSON like ``orjson.loads``; ValueError (orjson's included) when it is not kept."""
    value = orjson.loads(data)
    _check(data if isinstance(data, bytes) else data.encode("utf-8", "surrogatepass"),
           value, max_depth)
    return value


def suspect(texts: list[bytes], max_depth: int = MAX_DEPTH) -> bool:
    """Whether any of ``texts`` (each valid JSON to orjson) may fail ``loads``: checked
    on all of them at once, so a chunk of ordinary lines costs one scan, and most text
    (few digits) only a sixth of one (``_few_digits``)."""
    if not texts:
        return False
    joined = b"\n".join(texts)
    long_lines = max(map(len, texts)) > 2 * max_depth
    if not long_lines and _few_digits(joined):
        return False
    marks = joined.translate(_MARKS)
    return _LONG_RUN in marks or (long_lines and marks.count(b"[") > max_depth)


def _few_digits(data: bytes) -> bool:
    """Whether ``data`` surely holds no 19 digits in a row. Any 18 bytes in a row hold
    three positions that are multiples of 6, neighbours in ``data[::6]``: no three digits
    in a row there, no such run. Text with few digits passes on a sixth of its bytes;
    text dense in digits (numbers, ids) does not, and is scanned whole."""
    return b"000" not in data[::6].translate(_MARKS)


def _check(raw: bytes, value: Any, max_depth: int) -> None:
    marks = raw.translate(_MARKS)
    if _too_deep(marks, value, max_depth):
        raise ValueError(f"nested deeper than {max_depth} levels")
    if _LONG_RUN in marks:
        json.loads(raw, parse_int=_exact_int)


def _too_deep(marks: bytes, value: Any, max_depth: int) -> bool:
    # Valid JSON nested n deep has n openers and n closers, so short text needs no count.
    return (len(marks) > 2 * max_depth and marks.count(b"[") > max_depth
            and not _encodable(value, max_depth))


def _encodable(value: Any, max_depth: int) -> bool:
    """Whether ``value`` nests at most ``max_depth`` deep: orjson (in C, fast) can write
    it inside ``MAX_DEPTH - max_depth`` more lists only then."""
    for _ in range(MAX_DEPTH - max_depth):
        value = [value]
    try:
        orjson.dumps(value)
    except orjson.JSONEncodeError:
        return False
    return True


def _exact_int(text: str) -> int:
    number = int(text) if len(text) <= 21 else INT_END  # 20 digits and a sign at most
    if not INT_MIN <= number < INT_END:
        raise ValueError(f"integer outside the 64-bit range: {text[:40]}")
    return number
