"""The asyncio client's connection: each message is handed on as its last frame is parsed.

websockets' asyncio connection queues incoming messages for a reader to ``recv``; a
client that reads every frame at once pays for that queue and for a task switch per
frame. ``Delivering`` hands each whole message to a callback from inside the protocol
callback instead, so a frame costs a call into the ``ClientSession``, and the tasks that
wait are woken with no reader task in between. Control frames (ping, pong, close) and
the opening handshake are websockets' as usual. Nothing piles up: the session keeps
what it is sent, and the server sends batches only against credit.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable
from typing import Any

from websockets.asyncio.client import ClientConnection
from websockets.frames import DATA_OPCODES, Frame
from websockets.protocol import State


class Delivering(ClientConnection):
    """A client connection (``connect(create_connection=Delivering)``) that hands each
    message, as bytes, to the receiver set by ``deliver_to``; until then messages wait."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.inbox: collections.deque[bytes] = collections.deque()  # before a receiver
        self._receiver: Callable[[bytes], None] | None = None
        self._arrived: asyncio.Future[None] | None = None
        self._parts: list[bytes] = []  # the frames of a fragmented message so far

    def process_event(self, event: Any) -> None:
        if not isinstance(event, Frame) or event.opcode not in DATA_OPCODES:
            super().process_event(event)  # the handshake's response, control frames
            return
        self._parts.append(bytes(event.data))
        if not event.fin:
            return
        parts, self._parts = self._parts, []
        message = parts[0] if len(parts) == 1 else b"".join(parts)
        if self._receiver is not None:
            self._receiver(message)
            return
        self.inbox.append(message)
        if self._arrived is not None and not self._arrived.done():
            self._arrived.set_result(None)

    async def first(self, timeout: float) -> bytes:
        """The first message (the answer to the hello): ConnectionClosed if the
        connection ends first, TimeoutError after ``timeout`` seconds."""
        if not self.inbox:
            self._arrived = self.loop.create_future()
            await asyncio.wait([self._arrived, self.connection_lost_waiter], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
        if self.inbox:
            return self.inbox.popleft()
        if self.connection_lost_waiter.done():
            raise self.close_exc
        raise TimeoutError(f"no answer within {timeout:g} s")

    def write_now(self, frames: list[bytes]) -> bool:
        """Write ``frames`` at once, from plain code (no task step, no wait for the
        socket to drain): False, and nothing written, unless the connection is open."""
        if self.protocol.state is not State.OPEN:
            return False
        for frame in frames:
            self.protocol.send_binary(frame)
        self.send_data()
        return True

    def deliver_to(self, receiver: Callable[[bytes], None]) -> None:
        """From now on hand each message to ``receiver``, those that wait first."""
        self._receiver = receiver
        while self.inbox:
            receiver(self.inbox.popleft())
