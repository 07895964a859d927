"""The wire protocol's codec: frames to models and back, with no I/O.

``decode_client`` and ``decode_server`` turn bytes into a model of ``messages`` or raise
``ProtocolError`` saying what is wrong; ``encode`` turns a model into bytes. Batches and
results, sent by the thousand, take a fast lane checked by hand; anything it does not
accept goes through the models, which then say exactly what is wrong.
"""

from __future__ import annotations

import re
from typing import Any

import orjson
from pydantic import TypeAdapter, ValidationError

from . import strictjson
from .exceptions import BadFrame, BadRequest, ProtocolError
from .messages import (
    MAX_BATCH_SIZE,
    Ack,
    Batch,
    ClientMessage,
    Item,
    ItemError,
    Message,
    Result,
    ServerMessage,
    StartJob,
    Status,
)

_client_adapter: TypeAdapter[ClientMessage] = TypeAdapter(ClientMessage)
_server_adapter: TypeAdapter[ServerMessage] = TypeAdapter(ServerMessage)


def encode(message: Message) -> bytes:
    """The frame for ``message``. NaN and infinities become ``null``, as JavaScript's
    ``JSON.stringify`` writes them; a value JSON cannot carry at all raises BadRequest."""
    try:
        fast = _FAST_ENCODE.get(type(message))
        return orjson.dumps(fast(message) if fast else message.model_dump())
    except orjson.JSONEncodeError as exc:
        raise BadRequest(f"{message.__class__.__name__.lower()} cannot be sent as JSON: {exc}"
                         ) from None


def _parse(frame: bytes | str, trusted: bool) -> Any:
    try:
        return orjson.loads(frame) if trusted else strictjson.loads(frame)
    except orjson.JSONDecodeError as exc:
        raise BadFrame(f"frame is not JSON: {exc}") from None
    except ValueError as exc:  # JSON, but with values that would change in transit
        raise ProtocolError(f"frame cannot be carried exactly: {exc}") from None


def envelope(frame: bytes | str, trusted: bool = False) -> dict[str, Any]:
    """Parse a frame and check only what is cheap: an object with a string ``type``, and
    lists no longer than any message allows. Full validation comes after ``admit``.

    The JSON is checked with ``strictjson`` (no integer beyond 64 bits, no nesting
    orjson cannot write), unless ``trusted``: a server's frame (see ``decode_server``).
    """
    data = _parse(frame, trusted)
    if not isinstance(data, dict) or not isinstance(data.get("type"), str):
        raise ProtocolError('a frame must be a JSON object with a string "type"')
    for key in ("items", "errors"):
        value = data.get(key)
        if isinstance(value, list) and len(value) > MAX_BATCH_SIZE:
            raise ProtocolError(f"{key} holds {len(value)} entries; at most {MAX_BATCH_SIZE}")
    return data


def admission(data: dict[str, Any]) -> tuple[str, str | None, str | None, bool]:
    """What an authorisation check needs from an envelope: type, job, token, clean_start.

    Fields of the wrong type are read as absent here; validation refuses them after.
    """
    def text(key: str) -> str | None:
        value = data.get(key)
        return value if isinstance(value, str) else None

    return data["type"], text("job"), text("token"), data.get("clean_start") is True


def admission_of(msg: Message) -> tuple[str, str | None, str | None, bool]:
    """``admission`` of a validated message: the same as its envelope's (a test checks)."""
    return (getattr(msg, "type", "?"), getattr(msg, "job", None), getattr(msg, "token", None),
            isinstance(msg, StartJob) and msg.clean_start)


def _validate(adapter: TypeAdapter[Any], frame: bytes | str | dict[str, Any]) -> Any:
    data = frame if isinstance(frame, dict) else envelope(frame)
    kind = _shorten(data["type"])
    try:
        return adapter.validate_python(data)
    except ValidationError as exc:
        errors = exc.errors(include_url=False)
        if errors[0]["type"] == "union_tag_invalid":  # pydantic would echo the type twice
            known = errors[0]["ctx"]["expected_tags"]
            raise ProtocolError(f"unknown message type {kind!r}; known: {known}") from None
        problems = _problems(errors)
        raise ProtocolError(f"invalid {kind!r} message: {problems}") from None


def _problems(errors: list[Any]) -> str:
    """pydantic's first five complaints, each as ``where: what``."""
    return "; ".join(f"{'.'.join(map(str, e['loc'])) or 'frame'}: {e['msg']}"
                     for e in errors[:5])


def _shorten(text: str, limit: int = 40) -> str:
    """Client text quoted in an error, cut so an error frame stays small."""
    return text if len(text) <= limit else text[:limit] + "..."


def decode_client(frame: bytes | str | dict[str, Any]) -> ClientMessage:
    """Parse a frame a client sent (or validate its ``envelope``); ``ProtocolError`` says
    what is wrong with it."""
    data = frame if isinstance(frame, dict) else envelope(frame)
    return (_quick_result(data) if data["type"] == "result" else None) or _validate(
        _client_adapter, data)


def decode_server(frame: bytes | str) -> ServerMessage:
    """Parse a frame the server sent, without ``strictjson``'s checks (they cost a tenth
    of a batch). A Planchet server writes its frames with orjson, which writes no integer
    beyond 64 bits and no nesting it cannot read back; the items it passes on verbatim
    (``orjson.Fragment``) its readers checked the same way when they read them."""
    data = envelope(frame, trusted=True)
    quick = _QUICK_DECODE.get(data["type"])
    return (quick(data) if quick else None) or _validate(_server_adapter, data)


# --- the fast lane: batches and results, sent by the thousand -----------------------------
# Checked by hand, built without pydantic walking every item; anything the quick check
# does not accept goes through the models, which then say exactly what is wrong.

_JOB_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_RESULT_KEYS = frozenset({"type", "job", "lease", "items", "errors", "token"})
_BATCH_KEYS = frozenset({"type", "job", "lease", "items", "lease_timeout"})
_ERROR_KEYS = frozenset({"id", "message", "retry"})


def _items(value: Any) -> list[Item] | None:
    """``[(id, item), ...]`` if ``value``, decoded JSON, is a list of ``[id, item]`` pairs
    with int ids. (For a worker's own values, which may be any Python object, see
    ``_plain``: a dict with int keys would unpack here as a pair.)"""
    if type(value) is not list:
        return None
    try:  # refuses all but pairs, strings of two characters and objects of two keys...
        items = [(i, item) for i, item in value]
    except (TypeError, ValueError):
        return None
    for i, _ in items:  # ... whose first element is then a string, no id
        if type(i) is not int:
            return None
    return items


def _item_errors(value: Any) -> list[ItemError] | None:
    if type(value) is not list:
        return None
    errors = []
    for e in value:
        if (type(e) is not dict or not e.keys() <= _ERROR_KEYS or type(e.get("id")) is not int
                or type(e.get("message")) is not str or type(e.get("retry", True)) is not bool):
            return None
        errors.append(ItemError.model_construct(**e))
    return errors


def _text(value: Any, optional: bool = True) -> bool:
    return type(value) is str or (optional and value is None)


def _quick_result(data: dict[str, Any]) -> Result | None:
    job = data.get("job")
    if (not data.keys() <= _RESULT_KEYS or type(job) is not str or not _JOB_NAME.fullmatch(job)
            or not _text(data.get("lease")) or not _text(data.get("token"))):
        return None
    items, errors = _items(data.get("items", [])), _item_errors(data.get("errors", []))
    if items is None or errors is None:
        return None
    return Result.model_construct(job=job, lease=data.get("lease"), items=items, errors=errors,
                                  token=data.get("token"))


def _quick_batch(data: dict[str, Any]) -> Batch | None:
    items = _items(data.get("items"))
    if (data.keys() != _BATCH_KEYS or items is None or not _text(data["job"], False)
            or not _text(data["lease"], False) or type(data["lease_timeout"]) is not float):
        return None
    return Batch.model_construct(job=data["job"], lease=data["lease"], items=items,
                                 lease_timeout=data["lease_timeout"])


# An ack, with no list to walk, is validated faster by its model than by hand.
_QUICK_DECODE = {"batch": _quick_batch}


def _plain(items: Any) -> bool:
    """Whether ``items`` is a list of ``(id, value)`` pairs (tuples or lists) with int ids:
    the pairs' types and the ids' checked in C, one pass to unpack; nothing is copied."""
    if type(items) is not list or not set(map(type, items)) <= _PAIR_TYPES:
        return False
    try:
        ids = [i for i, _ in items]
    except ValueError:  # a pair of another length
        return False
    return set(map(type, ids)) <= _INT


_PAIR_TYPES = frozenset({list, tuple})
_INT = frozenset({int})


def make_result(job: str, lease: str | None, items: list[Any],
                errors: list[ItemError] | None = None, token: str | None = None) -> Result:
    """A ``result`` built by a client from its worker's values: checked quickly when the
    values are plain, by the model otherwise; BadRequest says what is wrong."""
    if _plain(items) and all(type(e) is ItemError for e in errors or []):
        return Result.model_construct(job=job, lease=lease, items=list(items),
                                      errors=errors or [], token=token)
    try:
        return Result(job=job, lease=lease, items=items, errors=errors or [], token=token)
    except ValidationError as exc:
        problems = _problems(exc.errors(include_url=False))
        raise BadRequest(f"these results cannot be sent: {problems}") from None


def _batch_dict(m: Any) -> dict[str, Any]:
    return {"type": "batch", "job": m.job, "lease": m.lease, "items": m.items,
            "lease_timeout": m.lease_timeout}


def _result_dict(m: Any) -> dict[str, Any]:
    return {"type": "result", "job": m.job, "lease": m.lease, "items": m.items,
            "errors": [{"id": e.id, "message": e.message, "retry": e.retry} for e in m.errors],
            "token": m.token}


def _ack_dict(m: Any) -> dict[str, Any]:
    return {"type": "ack", "job": m.job, "lease": m.lease, "written": m.written,
            "retried": m.retried, "failed": m.failed, "dropped": m.dropped}


def _status_dict(m: Any) -> dict[str, Any]:
    return {"type": "status", "time": m.time, "server": m.server, "jobs": m.jobs}


_FAST_ENCODE = {Batch: _batch_dict, Result: _result_dict, Ack: _ack_dict, Status: _status_dict}
