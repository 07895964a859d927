"""Random frames for the codec properties and the wire fuzzer, from one ``random.Random``.

Everything here is a pure function of the generator it is given, so a seed (or a
hypothesis-drawn ``Random``) reproduces the same frames. Frames come in four kinds:
valid client messages, mutations of them (wrong types, huge numbers, deep nesting,
unknown fields, oversize strings), random JSON and random bytes. ``ws_frame`` and
``raw_garbage`` build WebSocket frames by hand, for what no WebSocket client would send.
"""

from __future__ import annotations

import base64
import math
import os
import random
import struct
from typing import Any

import orjson

FUZZ_JOB = "fz"  # every fuzz job name starts so: never a job a test really runs
CLIENT_TYPES = ("hello", "credit", "result", "start_job", "report", "pause", "resume",
                "delete", "clean", "jobs", "purge")
EDGE_INTS = (0, -1, 1, 2**31, 2**53 + 1, 2**63 - 1, 2**63, 2**64 - 1, -(2**63))
BIG_INTS = (2**64, 2**70, -(2**63) - 1, 10**30)  # legal JSON, beyond 64 bits


def json_value(rng: random.Random, depth: int = 0) -> Any:
    """A random JSON value, within what orjson can encode."""
    roll = rng.random() if depth < 3 else rng.random() * 0.7
    if roll < 0.1:
        return None
    if roll < 0.2:
        return rng.random() < 0.5
    if roll < 0.35:
        return rng.choice(EDGE_INTS) if rng.random() < 0.3 else rng.randint(-1000, 1000)
    if roll < 0.45:
        return rng.choice((0.5, -0.0, 1e300, 5e-324, rng.uniform(-1e6, 1e6)))
    if roll < 0.7:
        return text(rng)
    if roll < 0.85:
        return [json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))]
    return {text(rng, 8): json_value(rng, depth + 1) for _ in range(rng.randint(0, 4))}


def text(rng: random.Random, limit: int = 20) -> str:
    alphabet = rng.choice(("abcXYZ019._-", "é€😀\x00\n\"\\ \u2028", "ab"))
    return "".join(rng.choice(alphabet) for _ in range(rng.randint(0, limit)))


def nest(value: Any, levels: int, rng: random.Random) -> orjson.Fragment:
    """``value`` wrapped in ``levels`` lists and objects, as JSON text (no recursion)."""
    opened = [rng.choice((b"[", b'{"k":')) for _ in range(levels)]
    closed = [b"]" if o == b"[" else b"}" for o in reversed(opened)]
    return orjson.Fragment(b"".join(opened) + dumps(value) + b"".join(closed))


def template(rng: random.Random, kind: str | None = None) -> dict[str, Any]:
    """A valid client message (of type ``kind``, else any), as the dict its frame holds."""
    job = f"{FUZZ_JOB}-{rng.randrange(40)}"
    n = rng.randint(1, 10**6)
    kind = kind or rng.choice(CLIENT_TYPES)
    if kind == "hello":
        return {"type": "hello", "protocol": 1, "token": None, "client": "fuzz"}
    if kind == "credit":
        return {"type": "credit", "job": job, "batches": rng.randint(0, 64),
                "batch_size": rng.randint(1, 10_000)}
    if kind == "result":
        items = [[rng.randint(0, 900), json_value(rng)] for _ in range(rng.randint(0, 3))]
        errors = [{"id": rng.randint(0, 900), "message": text(rng), "retry": rng.random() < 0.5}]
        return {"type": "result", "job": job, "lease": rng.choice((None, "0123abcd")),
                "items": items, "errors": errors[: rng.randint(0, 1)]}
    if kind == "start_job":
        good = rng.random() < 0.7
        meta = {"input_file_path": "in.jsonl" if good else rng.choice(("no", "../x", "/etc")),
                "output_file_path": f"{job}.out" if good else rng.choice(("in.jsonl", ".planchet"))}
        if rng.random() < 0.1:  # legal, but deeper than some JSON parsers go
            meta["extra"] = nest(0, rng.choice((150, 199, 200, 240, 250)), rng)
        return {"type": "start_job", "id": n, "job": job, "reader": "JsonlReader",
                "writer": "JsonlWriter", "metadata": meta, "batch_size": rng.randint(1, 50),
                "clean_start": rng.random() < 0.5}
    if kind in ("jobs", "purge"):
        return {"type": kind, "id": n}
    return {"type": kind, "id": n, "job": job}


def mutate(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    """``message`` with one thing wrong with it, or one thing odd but legal."""
    out = dict(message)
    key = rng.choice(sorted(out))
    how = rng.randrange(8)
    if how == 0:
        out[key] = json_value(rng)  # a wrong type, most likely
    elif how == 1:
        del out[key]
    elif how == 2:
        out[text(rng, 8) or "x"] = json_value(rng)  # an unknown field
    elif how == 3:
        big = rng.choice(BIG_INTS)  # as JSON text: orjson cannot write it
        out[key] = rng.choice(EDGE_INTS) if rng.random() < 0.5 else orjson.Fragment(str(big))
    elif how == 4:  # deep, also inside an object that is otherwise right (metadata)
        deep = nest(json_value(rng), rng.choice((10, 150, 199, 200, 254, 255, 600, 1100)), rng)
        out[key] = {**out[key], "deep": deep} if isinstance(out[key], dict) else deep
    elif how == 5:
        out[key] = rng.choice("x€😀") * rng.choice((1000, 100_000))
    elif how == 6:
        out["type"] = rng.choice((*CLIENT_TYPES, "welcome", "batch", "", "HELLO"))
    else:
        return {"k": [out]}  # the message, but not at the top
    return out


def dumps(value: Any) -> bytes:
    """JSON text of a value made here (integers past 64 bits and deep nesting come as
    ``orjson.Fragment``, written as they are)."""
    return orjson.dumps(value)


def client_frame(rng: random.Random, kind: str | None = None) -> bytes:
    """The bytes of one random frame a client might send (mostly of type ``kind``)."""
    roll = rng.random()
    if roll < 0.15:
        return dumps(template(rng, kind))
    if roll < 0.7:
        return dumps(mutate(rng, template(rng, kind)))
    if roll < 0.8:
        return dumps(json_value(rng))
    if roll < 0.9:
        frame = dumps(template(rng))
        return frame[: rng.randrange(len(frame))]  # cut short
    return rng.randbytes(rng.randint(0, 64))


# --- WebSocket frames by hand ------------------------------------------------------------

def handshake(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (f"GET / HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
            f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n").encode()


def ws_frame(opcode: int, payload: bytes, *, fin: bool = True, masked: bool = True,
             rsv: int = 0, claimed: int | None = None) -> bytes:
    """One WebSocket frame; ``claimed`` lies about the payload length."""
    length = len(payload) if claimed is None else claimed
    head = bytes([(0x80 if fin else 0) | (rsv & 7) << 4 | (opcode & 0xF)])
    mask_bit = 0x80 if masked else 0
    if length < 126:
        head += bytes([mask_bit | length])
    elif length < 2**16:
        head += bytes([mask_bit | 126]) + struct.pack("!H", length)
    else:
        head += bytes([mask_bit | 127]) + struct.pack("!Q", length)
    if not masked:
        return head + payload
    mask = os.urandom(4)
    return head + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def raw_garbage(rng: random.Random) -> tuple[bytes, bool]:
    """What a broken or hostile client writes after the handshake, and whether it is a
    whole frame (which the server must refuse by closing; a part may be waited for)."""
    payload = client_frame(rng)
    choice = rng.randrange(7)
    if choice == 0:
        return rng.randbytes(rng.randint(1, 200)), False
    if choice == 1:
        return ws_frame(rng.choice((3, 4, 5, 11, 12, 15)), payload), True  # reserved opcodes
    if choice == 2:
        return ws_frame(1, payload, rsv=rng.randint(1, 7)), True  # reserved bits
    if choice == 3:
        return ws_frame(2, payload, masked=False), True  # clients must mask
    if choice == 4:
        return ws_frame(1, b"\xff\xfe" + payload), True  # text that is not UTF-8
    if choice == 5:  # a length past the server's limit: refused before it is read
        return ws_frame(2, payload, claimed=rng.choice((2**40, 2**63 - 1, 10**8))), True
    return ws_frame(0, payload) + ws_frame(9, b"x" * 200), True  # continuation of nothing


def same(a: Any, b: Any) -> bool:
    """Equal, and of the same JSON kinds all the way down (1 is not 1.0 on the wire)."""
    if isinstance(a, float) or isinstance(b, float):
        return type(a) is type(b) and (a == b or (math.isnan(a) and math.isnan(b)))
    if isinstance(a, list | tuple) and isinstance(b, list | tuple):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b
