"""The wire protocol: every message survives the codec, every bad frame is named."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from pydantic import TypeAdapter, ValidationError

from planchet.codec import decode_client, decode_server, encode, make_result
from planchet.exceptions import BadFrame, BadRequest, ProtocolError
from planchet.messages import (
    MAX_BATCH_SIZE,
    MAX_PREFETCH,
    PROTOCOL_VERSION,
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
    ServerMessage,
    StartJob,
    Status,
    Welcome,
)

CLIENT_MESSAGES: list[Message] = [
    Hello(protocol=PROTOCOL_VERSION),
    Hello(protocol=PROTOCOL_VERSION, token="s3cret", client="planchet-python 1.0"),
    Credit(job="j", batches=0),
    Credit(job="j", batches=MAX_PREFETCH, batch_size=MAX_BATCH_SIZE, token="t"),
    Result(job="j"),
    Result(
        job="j.v2_x-1",
        lease="abc123",
        items=[(0, {"text": "é", "nested": [1, 2.5, None, True]}), (7, "plain"), (9, None)],
        errors=[ItemError(id=3, message="boom"), ItemError(id=4, message="bad", retry=False)],
        token="t",
    ),
    Result(job="w", items=[(12, [1, 2])]),  # write-only: no lease
    StartJob(id=1, job="j", reader="JsonlReader", writer="JsonlWriter",
             metadata={"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}),
    StartJob(id=2, job="j", reader="CsvReader", mode="read", batch_size=7, lease_timeout=0.5,
             max_attempts=1, clean_start=True, token="t", metadata={"input_file_path": "a.csv"}),
    *(JobCommand(type=kind, id=n, job="j", token="t")  # type: ignore[arg-type]
      for n, kind in enumerate(("report", "pause", "resume", "delete", "clean"))),
    ServerCommand(type="jobs", id=5),
    ServerCommand(type="purge", id=6, token="master"),
]

SERVER_MESSAGES: list[Message] = [
    Welcome(server="planchet 1.0.0", max_message_bytes=1024),
    Batch(job="j", lease="abc", items=[(0, {"a": 1}), (1, "b")], lease_timeout=30.0),
    Ack(job="j", lease="abc", written=3, retried=1, failed=1, dropped=2),
    Ack(job="w", lease=None, written=1),
    Reply(id=4, data={"job": "j", "written": 3}),
    Reply(id=5, data=[{"job": "j"}]),
    *(Event(job="j", event=e) for e in ("paused", "resumed", "done", "deleted")),  # type: ignore[arg-type]
    Error(code="job_not_found", message="no job named 'x'", id=9),
    Error(code="bad_frame", message="frame is not JSON"),
]


@pytest.mark.parametrize("message", CLIENT_MESSAGES, ids=lambda m: m.type)
def test_client_messages_round_trip(message: Message) -> None:
    frame = encode(message)
    assert isinstance(frame, bytes)
    assert decode_client(frame) == message
    assert decode_client(frame.decode()) == message  # text frames too
    assert orjson.loads(frame)["type"] == message.type  # type: ignore[attr-defined]


@pytest.mark.parametrize("message", SERVER_MESSAGES, ids=lambda m: m.type)
def test_server_messages_round_trip(message: Message) -> None:
    assert decode_server(encode(message)) == message


def test_items_come_back_as_id_item_pairs() -> None:
    msg = decode_client(b'{"type":"result","job":"j","lease":"l","items":[[1,{"x":[1]}]]}')
    assert isinstance(msg, Result)
    assert msg.items == [(1, {"x": [1]})]
    assert msg.errors == []


def test_item_errors_retry_unless_told_otherwise() -> None:
    msg = decode_client(b'{"type":"result","job":"j","errors":[{"id":1,"message":"m"}]}')
    assert isinstance(msg, Result)
    assert msg.errors == [ItemError(id=1, message="m", retry=True)]


def test_defaults_of_start_job() -> None:
    msg = decode_client(b'{"type":"start_job","id":1,"job":"j"}')
    assert isinstance(msg, StartJob)
    assert (msg.mode, msg.batch_size, msg.lease_timeout, msg.max_attempts) == (
        "read-write", 100, 300.0, 5)
    assert msg.clean_start is False
    assert msg.metadata == {}


@pytest.mark.parametrize(
    "frame", [b"", b"{", b'{"type": "hello"', b"hello", b"\xff\xfe", b"{'a': 1}"]
)
def test_malformed_json_is_a_bad_frame(frame: bytes) -> None:
    with pytest.raises(BadFrame, match="not JSON"):
        decode_client(frame)
    with pytest.raises(BadFrame):
        decode_server(frame)


@pytest.mark.parametrize(
    "frame", [b"[]", b'["hello", 1]', b'"hello"', b"1", b"null", b"{}", b'{"type": 1}',
              b'{"type": null}', b'{"protocol": 1}']
)
def test_json_that_is_not_a_typed_object_is_a_protocol_error(frame: bytes) -> None:
    with pytest.raises(ProtocolError, match='JSON object with a string "type"') as caught:
        decode_client(frame)
    assert not isinstance(caught.value, BadFrame)
    assert caught.value.code == "bad_message"


def test_unknown_type_names_the_type_and_the_known_ones() -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(b'{"type": "subscribe", "job": "j"}')
    text = str(caught.value)
    assert "'subscribe'" in text
    for known in ("hello", "credit", "result", "start_job", "report", "purge"):
        assert known in text


def test_server_only_types_are_unknown_to_the_server() -> None:
    with pytest.raises(ProtocolError, match="'welcome'"):
        decode_client(encode(Welcome(server="x", max_message_bytes=1)))


def test_a_huge_type_is_not_echoed_in_full() -> None:
    """The error frame must stay small whatever the client sent as its type."""
    with pytest.raises(ProtocolError) as caught:
        decode_client(orjson.dumps({"type": "x" * 100_000}))
    assert len(str(caught.value)) < 500


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "hello"}, "protocol"),
        ({"type": "credit", "batches": 1}, "job"),
        ({"type": "credit", "job": "j"}, "batches"),
        ({"type": "start_job", "job": "j"}, "id"),
        ({"type": "report", "id": 1}, "job"),
        ({"type": "jobs"}, "id"),
        ({"type": "result", "job": "j", "errors": [{"id": 1}]}, "message"),
        ({"type": "result", "job": "j", "items": [[1]]}, "items"),
    ],
)
def test_missing_fields_are_named(frame: dict, field: str) -> None:
    with pytest.raises(ProtocolError, match=f"invalid '{frame['type']}' message") as caught:
        decode_client(orjson.dumps(frame))
    assert field in str(caught.value)
    assert "required" in str(caught.value)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "hello", "protocol": 1, "version": 2}, "version"),
        ({"type": "credit", "job": "j", "batches": 1, "prefetch": 2}, "prefetch"),
        ({"type": "result", "job": "j", "errors": [{"id": 1, "message": "m", "x": 0}]}, "x"),
        ({"type": "start_job", "id": 1, "job": "j", "output": "o.jsonl"}, "output"),
        ({"type": "purge", "id": 1, "force": True}, "force"),
    ],
)
def test_extra_fields_are_refused_by_name(frame: dict, field: str) -> None:
    with pytest.raises(ProtocolError, match="Extra inputs are not permitted") as caught:
        decode_client(orjson.dumps(frame))
    assert field in str(caught.value)


@pytest.mark.parametrize(
    ("frame", "field"),
    [
        ({"type": "hello", "protocol": "one"}, "protocol"),
        ({"type": "hello", "protocol": 1, "token": 5}, "token"),
        ({"type": "credit", "job": "j", "batches": "many"}, "batches"),
        ({"type": "credit", "job": 7, "batches": 1}, "job"),
        ({"type": "result", "job": "j", "items": {"1": "x"}}, "items"),
        ({"type": "result", "job": "j", "items": [["x", 1]]}, "items"),
        ({"type": "result", "job": "j", "items": [[1.5, 1]]}, "items"),
        ({"type": "result", "job": "j", "lease": 3}, "lease"),
        ({"type": "result", "job": "j", "errors": [{"id": 1, "message": "m", "retry": [1]}]},
         "retry"),
        ({"type": "start_job", "id": "1", "job": "j", "metadata": []}, "metadata"),
        ({"type": "start_job", "id": 1, "job": "j", "mode": "append"}, "mode"),
        ({"type": "start_job", "id": 1, "job": "j", "batch_size": 2.5}, "batch_size"),
        ({"type": "report", "id": None, "job": "j"}, "id"),
    ],
)
def test_wrong_types_are_refused_by_name(frame: dict, field: str) -> None:
    with pytest.raises(ProtocolError) as caught:
        decode_client(orjson.dumps(frame))
    assert field in str(caught.value)
    assert not isinstance(caught.value, BadFrame)


@pytest.mark.parametrize(
    "frame",
    [
        {"type": "credit", "job": "j", "batches": -1},
        {"type": "credit", "job": "j", "batches": MAX_PREFETCH + 1},
        {"type": "credit", "job": "j", "batches": 1, "batch_size": 0},
        {"type": "credit", "job": "j", "batches": 1, "batch_size": MAX_BATCH_SIZE + 1},
        {"type": "start_job", "id": 1, "job": "j", "batch_size": 0},
        {"type": "start_job", "id": 1, "job": "j", "lease_timeout": 0},
        {"type": "start_job", "id": 1, "job": "j", "max_attempts": 0},
        {"type": "start_job", "id": 1, "job": "j", "max_attempts": 101},
    ],
)
def test_numbers_out_of_range_are_refused(frame: dict) -> None:
    with pytest.raises(ProtocolError, match="should be"):
        decode_client(orjson.dumps(frame))


@pytest.mark.parametrize(
    "name", ["j", "J0", "0", "job-1", "job_1.v2", "a" * 128, "a.-_"]
)
def test_job_names_that_are_allowed(name: str) -> None:
    for frame in (
        {"type": "credit", "job": name, "batches": 1},
        {"type": "start_job", "id": 1, "job": name},
        {"type": "report", "id": 1, "job": name},
        {"type": "result", "job": name},
    ):
        assert decode_client(orjson.dumps(frame)).job == name  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "name",
    ["", "-j", ".hidden", "_j", "a/b", "../etc", "a b", "a:b", "a*", "é", "a" * 129, "j\n"],
)
def test_job_names_that_are_refused(name: str) -> None:
    for frame in (
        {"type": "credit", "job": name, "batches": 1},
        {"type": "start_job", "id": 1, "job": name},
        {"type": "delete", "id": 1, "job": name},
        {"type": "result", "job": name},
    ):
        with pytest.raises(ProtocolError, match="job"):
            decode_client(orjson.dumps(frame))


def test_messages_are_immutable() -> None:
    msg = Credit(job="j", batches=1)
    with pytest.raises(ValueError, match="frozen"):
        msg.batches = 2  # type: ignore[misc]


@pytest.mark.parametrize("frame", [
    b'{"type": "result", "job": "j", "lease": "l", "items": [["1", {}]]}',
    b'{"type": "result", "job": "j", "lease": "l", "items": [[true, {}]]}',
    b'{"type": "report", "id": "7", "job": "j"}',
    b'{"type": "start_job", "id": 1, "job": "j", "clean_start": "no"}',
    b'{"type": "hello", "protocol": "1"}',
    b'{"type": "credit", "job": "j", "batches": 2.0}',
    b'{"type": "credit", "job": "j", "batches": 1, "batch_size": true}',
    b'{"type": "start_job", "id": 1, "job": "j", "lease_timeout": "30"}',
    b'{"type": "start_job", "id": 1, "job": "j", "max_attempts": 3.0}',
])
def test_ids_numbers_and_flags_are_not_coerced(frame: bytes) -> None:
    with pytest.raises(ProtocolError):
        decode_client(frame)


def test_a_lease_timeout_may_be_a_json_integer() -> None:
    msg = decode_client(b'{"type": "start_job", "id": 1, "job": "j", "lease_timeout": 30}')
    assert msg.lease_timeout == 30.0


def test_the_fast_encoders_write_what_the_models_would() -> None:
    """Batch, Result, Ack and Status skip pydantic on the way out; each must write the
    JSON that ``model_dump`` would, so a field added to a model cannot go missing."""
    samples = [
        Batch(job="j", lease="l", items=[(0, {"a": [1]}), (1, "x")], lease_timeout=5.0),
        Result(job="j", lease="l", items=[(0, 1)], errors=[ItemError(id=1, message="m")],
               token="t"),
        Ack(job="j", lease=None, written=3, retried=1, failed=2, dropped=4),
        Status(time=1.5, server={"version": "1"}, jobs=[{"job": "j"}]),
    ]
    for message in samples:
        assert orjson.loads(encode(message)) == orjson.loads(orjson.dumps(message.model_dump()))


# Not lists of [int id, item] pairs; some unpack as pairs all the same.
MALFORMED_ITEMS = [["ab"], [{"a": 1, "b": 2}], [[1, 2, 3]], [[1]], [[True, 1]], [[1.0, 1]],
                   [1], [None], [[0, 1], "xy"], {"0": 1}]


@pytest.mark.parametrize("items", MALFORMED_ITEMS)
def test_a_result_whose_items_are_no_id_value_pairs_is_refused(items: Any) -> None:
    """The fast lane leaves them to the model, which refuses them."""
    with pytest.raises(ProtocolError):
        decode_client(orjson.dumps({"type": "result", "job": "j", "lease": "l", "items": items}))


@pytest.mark.parametrize("frame", [
    {"type": "ack", "job": "j", "lease": "l", "written": 3, "retried": 1, "failed": 2,
     "dropped": 4},
    {"type": "ack", "job": "j", "lease": None, "written": 3, "retried": 0, "failed": 0,
     "dropped": 0},
    {"type": "ack", "job": "j", "lease": "l", "written": 3},  # defaults: the model's
    {"type": "ack", "job": "j", "lease": "l", "written": True, "retried": 0, "failed": 0,
     "dropped": 0},
    {"type": "ack", "job": "j", "lease": "l", "written": 1.0, "retried": 0, "failed": 0,
     "dropped": 0},
    {"type": "ack", "job": "j", "lease": 7, "written": 1, "retried": 0, "failed": 0,
     "dropped": 0},
    {"type": "ack", "job": "j", "lease": "l", "written": 1, "retried": 0, "failed": 0,
     "dropped": 0, "extra": 1},
    {"type": "batch", "job": "j", "lease": "l", "items": [[0, {"a": 1}]], "lease_timeout": 5.0},
    {"type": "batch", "job": "j", "lease": "l", "items": [[0, 1]], "lease_timeout": 5},
    {"type": "batch", "job": "j", "lease": "l", "items": [["0", 1]], "lease_timeout": 5.0},
    *({"type": "batch", "job": "j", "lease": "l", "items": items, "lease_timeout": 5.0}
      for items in MALFORMED_ITEMS),
])
def test_the_fast_decoders_read_what_the_models_would(frame: dict[str, Any]) -> None:
    """Batches and acks skip pydantic on the way in when their fields are plainly right;
    anything else goes to the model, so both ways give the same message or refuse."""
    try:
        expected = TypeAdapter(ServerMessage).validate_python(frame)
    except ValidationError:
        with pytest.raises(ProtocolError):
            decode_server(orjson.dumps(frame))
        return
    got = decode_server(orjson.dumps(frame))
    assert type(got) is type(expected) and encode(got) == encode(expected)


@pytest.mark.parametrize("items", [
    [(1, "a", "b")], [(1,)], [("1", "a")], [(True, "a")], [(1.0, "a")], [{1: "a", 2: "b"}],
    ["ab"], [None], [(1, "a"), (2,)],
])
def test_a_result_that_is_not_a_list_of_id_value_pairs_is_refused_at_the_call(items: Any) -> None:
    with pytest.raises(BadRequest, match="cannot be sent"):
        make_result("j", "L1", items)


def test_plain_results_are_taken_as_they_are_tuples_or_lists() -> None:
    pairs: list[Any] = [(1, "a"), [2, {"b": 3}]]
    result = make_result("j", "L1", pairs)
    assert result.items == pairs and result.items is not pairs  # the list, not the pairs, copied
    assert result.items[0] is pairs[0]
    assert orjson.loads(encode(result))["items"] == [[1, "a"], [2, {"b": 3}]]
