"""strictjson.loads: orjson's parse, minus the values orjson would not give back unchanged."""

from __future__ import annotations

import json
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from planchet import strictjson
from planchet.strictjson import INT_END, INT_MIN, MAX_DEPTH, loads


def nested(levels: int, leaf: Any = 1) -> Any:
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


@pytest.mark.parametrize(
    "text", ["18446744073709551616", "-9223372036854775809", "1" + "0" * 300,
             '{"a": [1, 99999999999999999999999]}', '["x", -123456789012345678901234]']
)
def test_integers_outside_64_bits_are_refused(text: str) -> None:
    """orjson would turn these into floats; strictjson says why it refuses them instead."""
    for data in (text, text.encode()):
        with pytest.raises(ValueError, match="integer outside the 64-bit range"):
            loads(data)


@pytest.mark.parametrize(
    "text", ['"18446744073709551616"', "1.8446744073709551616", "18446744073709551616.0",
             "1844674407370955161e3", '{"18446744073709551616": "x"}']
)
def test_long_digit_runs_that_are_no_integers_are_fine(text: str) -> None:
    """Digits in strings, keys and floats are not integers: no false alarm."""
    assert loads(text) == orjson.loads(text)


def test_the_exact_range_is_kept_to_the_last_value() -> None:
    """Both ends of orjson's exact range parse as the same ints."""
    for number in (INT_MIN, INT_END - 1, 0, -1):
        assert loads(str(number)) == number
        assert type(loads(str(number))) is int


@given(st.integers())
def test_any_integer_is_exact_or_refused(number: int) -> None:
    """An integer either comes back unchanged or is refused: never silently a float."""
    try:
        value = loads(json.dumps([number]))
    except ValueError:
        assert not INT_MIN <= number < INT_END
    else:
        assert value == [number] and type(value[0]) is int


def test_nesting_orjson_can_write_is_fine_one_more_is_refused() -> None:
    """The limit is exactly what orjson.dumps can encode again."""
    ok = orjson.dumps(nested(MAX_DEPTH))
    assert orjson.dumps(loads(ok)) == ok
    too_deep = b"[" * (MAX_DEPTH + 1) + b"]" * (MAX_DEPTH + 1)
    with pytest.raises(orjson.JSONEncodeError):
        orjson.dumps(orjson.loads(too_deep))
    wrapped = b'{"a": ' + ok + b"}"
    for data in (too_deep, too_deep.decode(), wrapped):
        with pytest.raises(ValueError, match=f"nested deeper than {MAX_DEPTH} levels"):
            loads(data)


def test_a_lower_depth_limit() -> None:
    """Callers that wrap the value further pass a lower limit."""
    data = orjson.dumps(nested(strictjson.ITEM_MAX_DEPTH + 1))
    assert loads(data) is not None
    with pytest.raises(ValueError, match=f"deeper than {strictjson.ITEM_MAX_DEPTH}"):
        loads(data, max_depth=strictjson.ITEM_MAX_DEPTH)


def test_brackets_in_strings_are_no_nesting() -> None:
    """Many brackets inside a string trigger the depth walk but not a refusal."""
    text = '{"a": "' + "[{" * 1000 + '"}'
    assert loads(text) == {"a": "[{" * 1000}


def test_invalid_json_is_still_a_value_error() -> None:
    """orjson's own errors stay ValueErrors, so one except clause catches them all."""
    for data in (b"{", b"", "nan", b"\xff", "1" + "0" * 5000):
        with pytest.raises(ValueError):
            loads(data)


@given(st.binary(max_size=40), st.integers(min_value=19, max_value=30), st.binary(max_size=40),
       st.randoms())
def test_the_sampled_scan_misses_no_run_of_19_digits(before: bytes, length: int, after: bytes,
                                                     rng: Any) -> None:
    """Wherever 19 or more digits stand in a row, the look at a sixth of the text that
    comes first does not pass it."""
    digits = bytes(rng.choice(b"0123456789") for _ in range(length))
    assert not strictjson._few_digits(before + digits + after)


@pytest.mark.parametrize("shift", range(6))
def test_a_big_integer_is_suspect_at_every_alignment(shift: int) -> None:
    """Lines of text with a 20-digit integer somewhere: flagged whatever its offset."""
    lines = [b'{"text":"Apple sold 3 million phones"}', b" " * shift + b'{"n":' + b"1" * 20 + b"}"]
    assert strictjson.suspect(lines)


def test_text_with_few_digits_skips_the_whole_scan() -> None:
    """Ordinary text, with digits here and there, is ruled out by the sample alone."""
    lines = [b'{"text":"Apple sold %d million phones in 2017","meta":{"source":"NYT"}}' % k
             for k in range(100)]
    assert strictjson._few_digits(b"\n".join(lines))
    assert not strictjson.suspect(lines)
