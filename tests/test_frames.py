"""Frames over a real socket that are cheap to refuse, and values that would change.

The server checks a frame's size, then its envelope and its token, and validates the
whole message only after: a stranger's big frame costs little. A frame whose values
JSON parsers would change on the way (integers beyond 64 bits) is refused whole.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from planchet.codec import decode_server, encode
from planchet.messages import (
    MAX_BATCH_SIZE,
    PROTOCOL_VERSION,
    Error,
    Hello,
    Message,
    Reply,
    StartJob,
    Welcome,
)
from planchet.server import PlanchetServer

WAIT = 20.0


async def recv(ws: ClientConnection) -> Message:
    return decode_server(await asyncio.wait_for(ws.recv(), WAIT))


async def greet(server: PlanchetServer, token: str | None = None) -> ClientConnection:
    ws = await connect(f"ws://127.0.0.1:{server.port}", max_size=None)
    await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, token=token, client="tests")))
    assert isinstance(await recv(ws), Welcome)
    return ws


async def start(ws: ClientConnection, token: str | None = None) -> None:
    await ws.send(encode(StartJob(id=1, job="j", reader="JsonlReader", writer="JsonlWriter",
                                  metadata={"input_file_path": "in.jsonl",
                                            "output_file_path": "out.jsonl"}, token=token)))
    assert isinstance(await recv(ws), Reply)


async def closed_with(ws: ClientConnection) -> int | None:
    with pytest.raises(ConnectionClosed):
        while True:
            await asyncio.wait_for(ws.recv(), WAIT)
    return ws.close_code


async def test_a_stranger_is_refused_before_validation(
    server: PlanchetServer, issues_input: Path
) -> None:
    """A result for a protected job with the wrong token is answered ``unauthorized``
    even though its items are not valid: the token is checked first."""
    owner = await greet(server)
    await start(owner, token="secret")
    stranger = await greet(server)
    junk = [["not an id", {"x": n}] for n in range(5000)]
    await stranger.send(orjson.dumps({"type": "result", "job": "j", "lease": "l",
                                      "items": junk, "token": "wrong"}))
    reply = await recv(stranger)
    assert isinstance(reply, Error) and reply.code == "unauthorized"
    await stranger.send(encode(Hello(protocol=PROTOCOL_VERSION)))  # still open
    assert isinstance(await recv(stranger), Error)


async def test_a_result_longer_than_any_batch_is_refused_unread(
    server: PlanchetServer, issues_input: Path
) -> None:
    """More entries than a batch can hold is refused from the envelope alone."""
    ws = await greet(server)
    items = [[n, None] for n in range(MAX_BATCH_SIZE + 1)]
    await ws.send(orjson.dumps({"type": "result", "job": "j", "lease": "l", "items": items}))
    reply = await recv(ws)
    assert isinstance(reply, Error) and reply.code == "bad_message"
    assert "at most" in reply.message
    assert await closed_with(ws) == 1008


async def test_an_integer_beyond_64_bits_is_refused_not_rounded(
    server: PlanchetServer, issues_input: Path
) -> None:
    """2**70 would silently become a float: the frame is refused and says why."""
    ws = await greet(server)
    await start(ws)
    await ws.send(b'{"type": "result", "job": "j", "lease": "l", "items": [[0, '
                  + str(2**70).encode() + b"]]}")
    reply = await recv(ws)
    assert isinstance(reply, Error) and reply.code == "bad_message"
    assert "64-bit" in reply.message
    assert await closed_with(ws) == 1008


async def test_a_frame_nested_too_deep_to_send_back_is_refused(
    server: PlanchetServer, issues_input: Path
) -> None:
    """A frame orjson could parse but never encode again is refused at the door."""
    ws = await greet(server)
    deep = b"[" * 400 + b"]" * 400
    await ws.send(b'{"type": "result", "job": "j", "lease": "l", "items": [[0, ' + deep + b"]]}")
    reply = await recv(ws)
    assert isinstance(reply, Error) and reply.code == "bad_message"
    assert "nested deeper" in reply.message
