"""A WebSocket client on a bare socket, for the faults no well-behaved library commits.

It speaks just enough RFC 6455 to hand-shake, send masked frames and read the server's
unfragmented, uncompressed frames, and it can do what a library never does: send half
a frame and close the socket under it.
"""

from __future__ import annotations

import base64
import os
import socket
import struct
from typing import Any

import orjson

OP_BINARY = 0x2
OP_CLOSE = 0x8


class RawSocket:
    """One connection to ``ws://host:port/``; every method may raise OSError."""

    def __init__(self, host: str, port: int, timeout: float = 10.0) -> None:
        self.sock = socket.create_connection((host, port), timeout=timeout)
        self._buffer = bytearray()
        self._handshake(host, port)

    def _handshake(self, host: str, port: int) -> None:
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            f"GET / HTTP/1.1\r\nHost: {host}:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        status = self._read_until(b"\r\n\r\n").split(b"\r\n", 1)[0]
        if b" 101 " not in status:
            raise OSError(f"upgrade refused: {status!r}")

    def _read_until(self, marker: bytes) -> bytes:
        while marker not in self._buffer:
            self._fill()
        end = self._buffer.index(marker)
        head = bytes(self._buffer[:end])
        del self._buffer[: end + len(marker)]
        return head

    def _read_exactly(self, n: int) -> bytes:
        while len(self._buffer) < n:
            self._fill()
        data = bytes(self._buffer[:n])
        del self._buffer[:n]
        return data

    def _fill(self) -> None:
        chunk = self.sock.recv(1 << 16)
        if not chunk:
            raise OSError("connection closed by the server")
        self._buffer += chunk  # a bytearray: amortised, not quadratic

    def send(self, message: dict[str, Any]) -> None:
        self.sock.sendall(frame(orjson.dumps(message)))

    def send_half(self, message: dict[str, Any]) -> None:
        """Send the first half of the message's frame, and nothing more."""
        data = frame(orjson.dumps(message))
        self.sock.sendall(data[: len(data) // 2])

    def receive(self) -> dict[str, Any]:
        """The next data frame, decoded; OSError once the server closes."""
        while True:
            first, second = self._read_exactly(2)
            length = second & 0x7F
            if length == 126:
                length = struct.unpack("!H", self._read_exactly(2))[0]
            elif length == 127:
                length = struct.unpack("!Q", self._read_exactly(8))[0]
            payload = self._read_exactly(length)
            opcode = first & 0x0F
            if opcode == OP_CLOSE:
                raise OSError(f"server closed: {payload[2:].decode(errors='replace')}")
            if opcode in (0x1, OP_BINARY):
                return orjson.loads(payload)

    def close(self) -> None:
        """Drop the TCP connection with no closing handshake, as a crash would."""
        self.sock.close()


def frame(payload: bytes, opcode: int = OP_BINARY) -> bytes:
    """One final, masked client frame carrying ``payload``."""
    mask = os.urandom(4)
    n = len(payload)
    if n < 126:
        head = struct.pack("!BB", 0x80 | opcode, 0x80 | n)
    elif n < 1 << 16:
        head = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, n)
    else:
        head = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, n)
    return head + mask + _xor(payload, mask)


def _xor(payload: bytes, mask: bytes) -> bytes:
    repeated = (mask * (len(payload) // 4 + 1))[: len(payload)]
    return (int.from_bytes(payload, "big") ^ int.from_bytes(repeated, "big")).to_bytes(
        len(payload), "big")


def hello() -> dict[str, Any]:
    return {"type": "hello", "protocol": 1, "client": "chaos"}
