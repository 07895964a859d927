"""Frames sent in the same turn of the event loop leave in one write.

A result is answered by an ``ack``, and the lease it ended frees the credit for the
next ``batch``: the two are sent a moment apart, by the connection's reader and by the
job's pump. Written one by one, each is a system call on the server and a wake-up of
the worker; written together, one of each (at batches of 10 items, a quarter more
throughput on the 2-core reference machine). ``Outbox.send`` queues a frame; the first
send of a turn lets the loop run the others of that turn, then hands them all to
websockets at once, and ``JoinedWrites`` puts a connection's pending frames into one
``transport.write``. Order is kept, and the first sender waits for the write (and for
flow control) as ``ServerConnection.send`` does; a send that joins it returns at once.
If the first is cancelled while it gathers, the frames of the others are written anyway.
"""

from __future__ import annotations

import asyncio
import contextlib

from websockets.asyncio.server import ServerConnection
from websockets.exceptions import ConnectionClosed

from .codec import encode
from .exceptions import ConnectionLost
from .messages import Message
from .sessions import spawn


class JoinedWrites(ServerConnection):
    """A connection that writes every frame it has pending in one ``transport.write``
    (``serve(create_connection=...)``); the end-of-stream marker is handled as
    websockets handles it."""

    def send_data(self) -> None:
        chunks = self.protocol.data_to_send()
        if len(chunks) > 1 and all(chunks):
            self.transport.write(b"".join(chunks))
            return
        for data in chunks:  # as ServerConnection.send_data: b"" means end of stream
            if data:
                self.transport.write(data)
            elif self.transport.can_write_eof():
                with contextlib.suppress(Exception):  # uvloop may raise RuntimeError
                    self.transport.write_eof()
            else:
                self.transport.close()


class Outbox:
    """One connection's frames on their way out; ``send`` is the dispatcher's sender."""

    def __init__(self, ws: ServerConnection) -> None:
        self.ws = ws
        self.frames: list[bytes] = []
        self.gathering = False  # a send waits for the rest of this turn's frames

    async def send(self, message: Message) -> None:
        """Send ``message``; ConnectionLost if the connection is closed."""
        self.frames.append(encode(message))
        if self.gathering:
            return  # written with the frames of the send that came first this turn
        self.gathering = True
        try:
            await asyncio.sleep(0)  # the other sends of this turn add their frames
        except asyncio.CancelledError:  # the frames of the others must still go
            spawn(self._write(self._take()))
            raise
        await self._write(self._take())

    def _take(self) -> list[bytes]:
        frames, self.frames, self.gathering = self.frames, [], False
        return frames

    async def _write(self, frames: list[bytes]) -> None:
        try:
            async with self.ws.send_context():
                for frame in frames:
                    self.ws.protocol.send_binary(frame)
        except ConnectionClosed as exc:  # the dispatcher knows no sockets: say it in our terms
            raise ConnectionLost(f"connection closed: {exc}") from exc
