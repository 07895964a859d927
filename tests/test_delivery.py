"""The asyncio client's connection hands on whole messages, over real sockets."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import pytest
from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve
from websockets.exceptions import ConnectionClosed

from planchet.delivery import Delivering

Handler = Callable[[ServerConnection], Awaitable[None]]


async def messages_from(handler: Handler, count: int, early: int = 0) -> list[bytes]:
    """Connect to a server running ``handler``; the first ``early`` messages before a
    receiver is set, then ``count`` in all, as delivered."""
    got: list[bytes] = []
    enough = asyncio.Event()

    def receive(message: bytes) -> None:
        got.append(message)
        if len(got) >= count:
            enough.set()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", create_connection=Delivering)
        assert isinstance(ws, Delivering)
        async with ws:
            if early:
                got.append(await ws.first(5))
                async with asyncio.timeout(5):
                    while len(ws.inbox) < early - 1:  # the rest arrive while nobody listens
                        await asyncio.sleep(0.01)
            ws.deliver_to(receive)
            await asyncio.wait_for(enough.wait(), 5)
    return got


async def test_fragmented_and_text_messages_arrive_whole_as_bytes() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.send([b"frag", b"men", b"ted"])  # one message in three frames
        await ws.send("text")
        await ws.send(b"binary")
        await ws.wait_closed()

    assert await messages_from(handler, 3) == [b"fragmented", b"text", b"binary"]


async def test_messages_before_a_receiver_wait_and_come_first_in_order() -> None:
    async def handler(ws: ServerConnection) -> None:
        for n in range(5):
            await ws.send(b"%d" % n)
        await ws.wait_closed()

    assert await messages_from(handler, 5, early=3) == [b"0", b"1", b"2", b"3", b"4"]


async def test_first_says_when_the_connection_ends_before_any_message() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.close(1008, "go away")

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        ws = await connect(f"ws://127.0.0.1:{port}", create_connection=Delivering)
        assert isinstance(ws, Delivering)
        with pytest.raises(ConnectionClosed, match="go away"):
            await ws.first(5)


async def test_first_times_out_when_nothing_comes() -> None:
    async def handler(ws: ServerConnection) -> None:
        await ws.wait_closed()

    async with serve(handler, "127.0.0.1", 0) as server:
        port = server.sockets[0].getsockname()[1]
        async with await connect(f"ws://127.0.0.1:{port}", create_connection=Delivering) as ws:
            assert isinstance(ws, Delivering)
            with pytest.raises(TimeoutError):
                await ws.first(0.2)
