"""The outbox: frames sent in one turn of the event loop leave together, in order."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.asyncio.server import ServerConnection, serve

from planchet.codec import decode_server
from planchet.exceptions import ConnectionLost
from planchet.messages import Ack, Event
from planchet.outbox import JoinedWrites, Outbox

WAIT = 10.0


@pytest.fixture
async def pair() -> AsyncIterator[tuple[Outbox, ClientConnection]]:
    """An outbox on a real server connection, and the client at the other end."""
    accepted: asyncio.Queue[ServerConnection] = asyncio.Queue()

    async def handler(ws: ServerConnection) -> None:
        await accepted.put(ws)
        await ws.wait_closed()

    async with (serve(handler, "127.0.0.1", 0, create_connection=JoinedWrites) as server,
                connect(f"ws://127.0.0.1:{server.sockets[0].getsockname()[1]}") as client):
        ws = await asyncio.wait_for(accepted.get(), WAIT)
        yield Outbox(ws), client


def ack(n: int) -> Ack:
    return Ack(job="j", lease=f"l{n}", written=n)


async def received(client: ClientConnection, n: int) -> list[str | None]:
    frames = [await asyncio.wait_for(client.recv(), WAIT) for _ in range(n)]
    return [getattr(decode_server(f), "lease", None) for f in frames]


async def test_frames_sent_in_one_turn_arrive_in_the_order_they_were_sent(
    pair: tuple[Outbox, ClientConnection],
) -> None:
    """Ten sends started together: one writes them all, every one of them returns."""
    outbox, client = pair
    await asyncio.wait_for(asyncio.gather(*(outbox.send(ack(n)) for n in range(10))), WAIT)
    assert await received(client, 10) == [f"l{n}" for n in range(10)]
    await outbox.send(ack(10))  # a later turn: written on its own
    assert await received(client, 1) == ["l10"]


async def test_a_send_cancelled_while_gathering_still_writes_the_frames_that_joined_it(
    pair: tuple[Outbox, ClientConnection],
) -> None:
    """Cancelling the send that was to write a turn's frames loses none of them: the one
    that joined it (an ack, say) goes out at once, not with some later send."""
    outbox, client = pair
    first = asyncio.ensure_future(outbox.send(ack(1)))
    joined = asyncio.ensure_future(outbox.send(ack(2)))
    await asyncio.sleep(0)  # both queued; the first is gathering
    first.cancel()
    await asyncio.gather(first, joined, return_exceptions=True)
    assert await received(client, 2) == ["l1", "l2"]
    await outbox.send(Event(job="j", event="done"))  # and the outbox goes on
    assert await received(client, 1) == [None]


async def test_a_send_on_a_closed_connection_says_connection_lost(
    pair: tuple[Outbox, ClientConnection],
) -> None:
    """The dispatcher hears ConnectionLost, never a websockets exception."""
    outbox, client = pair
    await client.close()
    await asyncio.wait_for(outbox.ws.wait_closed(), WAIT)
    with pytest.raises(ConnectionLost):
        await outbox.send(ack(1))
