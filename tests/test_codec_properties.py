"""Properties of the codec, on inputs hypothesis makes up: valid messages survive it,
anything else is a ProtocolError, and what it decodes is what was sent."""

from __future__ import annotations

import contextlib
import json
import math
import random
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planchet.codec import admission, admission_of, decode_client, decode_server, encode, envelope
from planchet.exceptions import PlanchetError, ProtocolError
from planchet.messages import (
    MAX_BATCH_SIZE,
    MAX_PREFETCH,
    Ack,
    Batch,
    Credit,
    Error,
    Event,
    Hello,
    ItemError,
    JobCommand,
    Message,
    Reply,
    Result,
    ServerCommand,
    StartJob,
    Welcome,
)
from tests.fuzz_support import (
    BIG_INTS,
    CLIENT_TYPES,
    client_frame,
    dumps,
    mutate,
    nest,
    same,
    template,
)

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --- strategies ------------------------------------------------------------------------

ints64 = st.integers(-(2**63), 2**64 - 1)  # what orjson reads and writes as integers
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | ints64 | finite | st.text(),
    lambda kids: st.lists(kids, max_size=4) | st.dictionaries(st.text(max_size=8), kids,
                                                              max_size=4),
    max_leaves=20,
)
names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}", fullmatch=True)
tokens = st.none() | st.text(max_size=30)
items = st.lists(st.tuples(ints64, json_values), max_size=5)
item_errors = st.builds(ItemError, id=ints64, message=st.text(), retry=st.booleans())

client_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Hello, protocol=ints64, token=tokens, client=tokens),
    st.builds(Credit, job=names, batches=st.integers(0, MAX_PREFETCH),
              batch_size=st.none() | st.integers(1, MAX_BATCH_SIZE), token=tokens),
    st.builds(Result, job=names, lease=tokens, items=items,
              errors=st.lists(item_errors, max_size=3), token=tokens),
    st.builds(StartJob, id=ints64, job=names, reader=tokens, writer=tokens,
              metadata=st.dictionaries(st.text(max_size=10), json_values, max_size=4),
              mode=st.sampled_from(["read", "write", "read-write"]),
              batch_size=st.integers(1, MAX_BATCH_SIZE),
              lease_timeout=st.floats(min_value=0, exclude_min=True, allow_infinity=False),
              max_attempts=st.integers(1, 100), clean_start=st.booleans(), token=tokens),
    st.builds(JobCommand, type=st.sampled_from(["report", "pause", "resume", "delete", "clean"]),
              id=ints64, job=names, token=tokens),
    st.builds(ServerCommand, type=st.sampled_from(["jobs", "purge"]), id=ints64, token=tokens),
)
server_messages: st.SearchStrategy[Message] = st.one_of(
    st.builds(Welcome, protocol=ints64, server=st.text(), max_message_bytes=ints64),
    st.builds(Batch, job=st.text(), lease=st.text(), items=items, lease_timeout=finite),
    st.builds(Ack, job=st.text(), lease=tokens, written=ints64, retried=ints64,
              failed=ints64, dropped=ints64),
    st.builds(Reply, id=ints64, data=json_values),
    st.builds(Event, job=st.text(),
              event=st.sampled_from(["paused", "resumed", "done", "deleted"])),
    st.builds(Error, code=st.text(), message=st.text(), id=st.none() | ints64,
              job=tokens),
)


def decodes_or_refuses(frame: bytes | str) -> None:
    """Each decoder returns a message or raises ProtocolError: nothing else, ever."""
    for decode in (decode_client, decode_server):
        with contextlib.suppress(ProtocolError):
            decode(frame)


# --- valid messages survive the codec --------------------------------------------------


@FAST
@given(client_messages)
def test_every_client_message_round_trips(message: Message) -> None:
    """Any valid client message encodes, as bytes and as text, to a frame that decodes to it."""
    frame = encode(message)
    assert decode_client(frame) == message
    assert decode_client(frame.decode()) == message
    assert same(orjson.loads(encode(decode_client(frame))), orjson.loads(frame))


@FAST
@given(server_messages)
def test_every_server_message_round_trips(message: Message) -> None:
    """Any valid server message encodes to a frame that decodes to an equal message."""
    assert decode_server(encode(message)) == message


# --- anything else is a ProtocolError ----------------------------------------------------


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_decode_or_raise_protocol_error(frame: bytes) -> None:
    """Random bytes never make a decoder raise anything but ProtocolError."""
    decodes_or_refuses(frame)


@FAST
@given(st.text(alphabet=st.characters(codec=None), max_size=100))
def test_random_text_decode_or_raise_protocol_error(frame: str) -> None:
    """Random text, lone surrogates included, never raises anything but ProtocolError."""
    decodes_or_refuses(frame)


@FAST
@given(json_values | st.dictionaries(st.sampled_from(["type", "id", "job", "items", "x"]),
                                     json_values))
def test_random_json_decodes_or_raises_protocol_error(value: Any) -> None:
    """Random JSON, typed objects included, never raises anything but ProtocolError."""
    decodes_or_refuses(orjson.dumps(value))


@FAST
@given(st.randoms(use_true_random=False))
def test_fuzzer_frames_decode_or_raise_protocol_error(rng: random.Random) -> None:
    """Frames of the wire fuzzer (mutated messages, cut JSON, garbage): ProtocolError or a
    message that encodes back to the same JSON."""
    frame = client_frame(rng)
    decodes_or_refuses(frame)
    decodes_or_refuses(frame.decode("utf-8", "replace"))


# What admission reads, with values of every JSON kind, over a valid message of any type.
loose = (st.none() | st.booleans() | st.integers(-3, 3) | st.floats(allow_nan=False)
         | st.sampled_from(["j", "x", "true", "1", "", "start_job"])
         | st.lists(st.just("j"), max_size=1) | st.dictionaries(st.just("a"), st.just(1)))
admitted_fields = st.dictionaries(st.sampled_from(["job", "token", "clean_start"]), loose)


@settings(FAST, max_examples=1000)
@given(st.randoms(use_true_random=False), st.sampled_from(CLIENT_TYPES), admitted_fields)
def test_a_frame_is_admitted_on_its_envelope_as_on_its_message(
    rng: random.Random, kind: str, fields: dict[str, Any]
) -> None:
    """The server checks a frame's right to run on its envelope alone, before validating
    it, and not again: so whatever validates must say the same there as the message."""
    frame = orjson.dumps({**template(rng, kind), **fields})
    try:
        message = decode_client(frame)
    except ProtocolError:
        return
    assert admission(envelope(frame)) == admission_of(message)


@FAST
@given(st.randoms(use_true_random=False))
def test_what_decodes_encodes_back_the_same(rng: random.Random) -> None:
    """A frame that decodes (here: mutated messages within 64 bits and orjson's depth)
    re-encodes to the same JSON, so what the server stores is what the client sent."""
    sent = mutate(rng, template(rng))
    frame = dumps(sent)
    try:
        message = decode_client(frame)
    except ProtocolError:
        return
    assert decode_client(encode(message)) == message
    sent, kept = json.loads(frame), orjson.loads(encode(message))
    for key, value in sent.items():  # fields left out come back as their defaults
        if key == "lease_timeout":  # a JSON integer is a number of seconds too
            assert kept[key] == value
        else:
            assert same(kept[key], value), key


# --- values JSON carries but orjson would change ------------------------------------------


@FAST
@given(st.sampled_from(BIG_INTS), st.sampled_from(["items", "metadata"]))
def test_big_integers_are_refused_or_kept(big: int, where: str) -> None:
    """An integer beyond 64 bits in a client's payload is either refused or decoded
    exactly. (A server's frames are not checked: orjson wrote them, and it cannot write
    such an integer; see test_encode_raises_only_planchet_errors.)"""
    frame = json.dumps({
        "items": {"type": "result", "job": "j", "lease": "l", "items": [[1, {"n": big}]]},
        "metadata": {"type": "start_job", "id": 1, "job": "j", "metadata": {"n": big}},
    }[where])
    try:
        message = decode_client(frame)
    except ProtocolError:
        return
    assert same(orjson.loads(encode(message)), json.loads(frame))


@settings(FAST, max_examples=50)
@given(st.integers(255, 1020), st.sampled_from(["items", "metadata"]), st.randoms())
def test_deep_nesting_is_refused_or_kept(depth: int, where: str, rng: random.Random) -> None:
    """A payload nested deeper than orjson can write is refused when it is decoded."""
    deep = nest(1, depth, rng)
    message = {
        "items": {"type": "result", "job": "j", "lease": "l", "items": [[1, deep]]},
        "metadata": {"type": "start_job", "id": 1, "job": "j", "metadata": {"n": deep}},
    }[where]
    try:
        decoded = decode_client(orjson.dumps(message))
    except ProtocolError:
        return
    assert decode_client(encode(decoded)) == decoded


@FAST
@given(st.sampled_from([2**64, -(2**63) - 1, 2**100, "deep"]))
def test_encode_raises_only_planchet_errors(value: Any) -> None:
    """Encoding a message the models accept raises, if at all, a PlanchetError."""
    if value == "deep":
        value = orjson.loads(b"[" * 300 + b"]" * 300)
    with contextlib.suppress(PlanchetError):
        encode(Result(job="j", lease="l", items=[(1, value)]))


@FAST
@given(st.sampled_from(BIG_INTS), st.sampled_from(["batch", "reply"]))
def test_no_frame_holds_an_integer_beyond_64_bits(big: int, where: str) -> None:
    """What a server builds is refused at encoding rather than sent with such an
    integer, which is why clients need not check for them. (Items from files go out as
    read; the readers refuse such lines: test_integers_outside_64_bits_are_errors_not_floats
    in tests/formats/test_jsonl.py.)"""
    message = (Batch(job="j", lease="l", items=[(1, {"n": big})], lease_timeout=1.0)
               if where == "batch" else Reply(id=1, data={"n": big}))
    with pytest.raises(PlanchetError):
        encode(message)


@FAST
@given(st.sampled_from([math.nan, math.inf, -math.inf]))
def test_non_finite_floats_are_sent_as_null(value: float) -> None:
    """NaN and infinities are not JSON: they travel as null, as JSON.stringify sends them
    from a browser worker (documented in docs/protocol.md)."""
    message = Result(job="j", lease="l", items=[(1, {"score": value})])
    assert decode_client(encode(message)).items[0][1] == {"score": None}  # type: ignore[union-attr]
