"""Thousands of random frames against a live server, while a real worker finishes a job.

Seeded: ``PLANCHET_FUZZ_SEED`` replays a run (the seed is printed, and named in every
failure), ``PLANCHET_FUZZ_FRAMES`` sets how many frames (3,000 by default). Each fuzz
connection sends frames one at a time, each followed by a probe (a ``report`` of a job
that does not exist): the server must answer the probe or close the connection within
``DEADLINE``, and everything it sends must be a valid server message. The worker holds
the master token the fuzzers never have, so no frame they send can touch its job.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import os
import random
import threading
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from planchet.client import PlanchetClient
from planchet.codec import decode_server, encode
from planchet.config import Settings
from planchet.exceptions import ProtocolError
from planchet.messages import Error, Hello, JobCommand, Reply
from planchet.server import PlanchetServer
from planchet.store import Store
from tests.fuzz_support import client_frame, handshake, raw_garbage
from tests.support import health

SEED = int(os.environ.get("PLANCHET_FUZZ_SEED") or random.randrange(2**32))
FRAMES = int(os.environ.get("PLANCHET_FUZZ_FRAMES") or 3000)
LANES = 6  # fuzz connections open at once
DEADLINE = 10.0  # for any one answer: generous, a hang is forever
MASTER = "fuzz-master-" + os.urandom(8).hex()
JOB, LINES, BATCH = "issues", 830, 10
PROBE_IDS = itertools.count(10**15)


class Fuzzer:
    """One lane of connections; counts what the server did with the frames it got."""

    def __init__(self, port: int, rng: random.Random, frames: int, progress: Any,
                 kind: str | None = None) -> None:
        self.port = port
        self.kind = kind  # the message type most frames are made from; None: any
        self.url = f"ws://127.0.0.1:{port}"
        self.rng = rng
        self.left = frames
        self.progress = progress  # called after every frame
        self.seen: collections.Counter[str] = collections.Counter()
        self.watch_health = False  # check /health after each connection

    async def run(self) -> None:
        while self.left > 0:
            roll = self.rng.random()
            if roll < 0.08:
                await self.raw_frames()
            elif roll < 0.1:
                await self.http_garbage()
            else:
                await self.websocket()
            if self.watch_health:
                status = await asyncio.to_thread(health, self.port)
                assert status and status["status"] == "ok", f"seed {SEED}: /health: {status}"

    def spend(self, kind: str) -> None:
        self.left -= 1
        self.seen[kind] += 1
        self.progress()

    async def websocket(self) -> None:
        """Frames over a real WebSocket client: binary, text or fragments, each probed."""
        async with connect(self.url, max_size=None, open_timeout=DEADLINE,
                           close_timeout=DEADLINE) as ws:
            if self.rng.random() < 0.8:
                await ws.send(encode(Hello(protocol=1)))
            for _ in range(self.rng.randint(1, 20)):
                if self.left <= 0:
                    return
                frame = client_frame(self.rng, self.kind)
                try:
                    await self.send(ws, frame)
                    answered = await self.probe(ws, frame)
                except ConnectionClosed:
                    answered = False
                self.spend("answered" if answered else "closed")
                if not answered:
                    return

    async def send(self, ws: ClientConnection, frame: bytes) -> None:
        how = self.rng.randrange(4)
        if how == 0:
            await ws.send(frame)
        elif how == 1:
            await ws.send(frame, text=True)  # not always UTF-8: the server must say so
        else:
            cuts = sorted(self.rng.sample(range(len(frame) + 1), min(len(frame) + 1, 3)))
            parts = [frame[a:b] for a, b in itertools.pairwise([0, *cuts, len(frame)])]
            await ws.send(parts, text=how == 3 and _is_utf8(frame))

    async def probe(self, ws: ClientConnection, frame: bytes) -> bool:
        """True once the server answers a probe sent after ``frame``; False if it closed."""
        probe_id = next(PROBE_IDS)
        await ws.send(encode(JobCommand(type="report", id=probe_id, job="zz-probe")))
        try:
            async with asyncio.timeout(DEADLINE):
                async for raw in ws:
                    message = _server_message(raw, frame)
                    if isinstance(message, Reply | Error) and message.id == probe_id:
                        return True
        except TimeoutError:
            pytest.fail(f"seed {SEED}: no answer and no close within {DEADLINE}s after "
                        f"{frame[:200]!r}", pytrace=False)
        return False

    async def raw_frames(self) -> None:
        """A hand-made frame after a real handshake: the server must close on a whole one."""
        data, whole = raw_garbage(self.rng)
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(handshake(self.port))
            async with asyncio.timeout(DEADLINE):
                assert b" 101 " in await reader.readuntil(b"\r\n\r\n")
            writer.write(data)
            if whole:
                async with asyncio.timeout(DEADLINE):
                    assert await _close_frame_or_eof(reader), f"seed {SEED}: {data[:80]!r}"
        except TimeoutError:
            pytest.fail(f"seed {SEED}: the server neither closed nor answered raw frame "
                        f"{data[:200]!r}", pytrace=False)
        finally:
            writer.transport.abort()
        self.spend("raw")

    async def http_garbage(self) -> None:
        """Bytes that are not a WebSocket handshake: an HTTP error or a closed socket."""
        reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
        try:
            writer.write(self.rng.randbytes(self.rng.randint(1, 300)) + b"\r\n\r\n")
            async with asyncio.timeout(DEADLINE):
                answer = await reader.read(12)
            assert not answer or answer.startswith(b"HTTP/1.1 "), answer
        except TimeoutError:
            pytest.fail(f"seed {SEED}: no answer to HTTP garbage", pytrace=False)
        except ConnectionResetError:
            pass
        finally:
            writer.transport.abort()
        self.spend("http")


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def _server_message(raw: str | bytes, after: bytes) -> Any:
    """Whatever the server sends must be a valid server message."""
    try:
        return decode_server(raw)
    except ProtocolError as exc:
        pytest.fail(f"seed {SEED}: the server sent {raw[:200]!r} after {after[:200]!r}: {exc}",
                    pytrace=False)


async def _close_frame_or_eof(reader: asyncio.StreamReader) -> bool:
    """Read server frames (unmasked) until a close frame or the end of the stream."""
    while True:
        head = await reader.read(2)
        if len(head) < 2:
            return True
        if head[0] & 0x0F == 8:
            return True
        length = head[1] & 0x7F
        if length >= 126:
            extra = await reader.readexactly(2 if length == 126 else 8)
            length = int.from_bytes(extra, "big")
        await reader.readexactly(length)


def work(url: str, gate: threading.Semaphore, written: list[int], failed: list[str]) -> None:
    """The real worker: start the job, then settle one batch each time the gate opens."""
    try:
        with PlanchetClient(url, token=MASTER, timeout=60) as client:
            client.start_job(JOB, {"input_file_path": "in.jsonl",
                                   "output_file_path": "out.jsonl"},
                             "JsonlReader", "JsonlWriter", batch_size=BATCH)
            items = client.get(JOB, BATCH)
            while items:
                if not gate.acquire(timeout=120):
                    raise TimeoutError("the fuzzer stopped opening the gate")
                ack = client.send(JOB, [(i, {"echo": item}) for i, item in items])
                written.append(ack["written"])
                items = client.get(JOB, BATCH)
    except Exception as exc:  # a thread's exception would vanish: hand it to the test
        failed.append(repr(exc))


async def test_random_frames_never_hurt_a_running_job(
    make_server: Any, issues_input: Path, data_dir: Path
) -> None:
    """The server answers, refuses or closes every random frame, /health keeps answering,
    and a job worked through meanwhile ends with every id exactly once, none failed."""
    print(f"wire fuzz: PLANCHET_FUZZ_SEED={SEED} PLANCHET_FUZZ_FRAMES={FRAMES}")
    server: PlanchetServer = await make_server(token=MASTER)
    url, port = f"ws://127.0.0.1:{server.port}", server.port
    gate, written, failed = threading.Semaphore(0), [], []
    worker = threading.Thread(target=work, args=(url, gate, written, failed), daemon=True)
    worker.start()
    sent = 0

    def progress() -> None:  # pace the worker: one batch per few frames, all run long
        nonlocal sent
        sent += 1
        if sent % max(FRAMES * BATCH // LINES, 1) == 0:
            gate.release()

    lanes = [Fuzzer(port, random.Random(f"{SEED}-{n}"), FRAMES // LANES, progress)
             for n in range(LANES)]
    lanes[0].watch_health = True
    await asyncio.gather(*(lane.run() for lane in lanes))
    gate.release(LINES)
    await asyncio.to_thread(worker.join, 120)
    assert not worker.is_alive(), "the worker never finished"
    assert not failed, f"seed {SEED}: the worker failed: {failed}"
    totals = sum((lane.seen for lane in lanes), collections.Counter())
    print(f"wire fuzz: {sent} frames, by what the server did: {dict(totals)}")

    assert sum(written) == LINES
    out = [orjson.loads(line)["id"] for line in (data_dir / "out.jsonl").read_bytes().splitlines()]
    assert sorted(out) == list(range(LINES)), "an id is missing or written twice"
    errors = data_dir / "out.jsonl.errors.jsonl"
    assert not errors.exists() or errors.read_bytes() == b"", "a healthy item failed"
    status = await asyncio.to_thread(health, port)
    assert status and status["status"] == "ok" and status["jobs"] == 1, status


async def test_what_random_frames_create_a_restarted_server_loads(
    settings: Settings, redis_url: str, make_server: Any, issues_input: Path
) -> None:
    """On an open server (no master token) random start_job frames create what jobs they
    can; a server restarted over the same Redis and files loads every one of them."""
    store = Store.from_url(redis_url)
    first = PlanchetServer(settings, store)
    await first.start()
    try:
        lane = Fuzzer(first.port, random.Random(f"{SEED}-start"), FRAMES // 3, lambda: None,
                      kind="start_job")
        await lane.run()
        before = await asyncio.to_thread(health, first.port)
    finally:
        await first.stop()
        await store.close()
    print(f"wire fuzz: {before and before['jobs']} jobs created, seed {SEED}")
    second: PlanchetServer = await make_server()
    after = await asyncio.to_thread(health, second.port)
    assert before and after and after["status"] == "ok", after
    assert after["jobs"] == before["jobs"]
    with PlanchetClient(f"ws://127.0.0.1:{second.port}", timeout=DEADLINE) as client:
        reports = await asyncio.to_thread(client.list_jobs)
    assert [r for r in reports if r["error"]] == [], f"seed {SEED}: jobs that cannot load"


def test_fuzz_frames_are_reproducible() -> None:
    """The same seed makes the same frames, so a printed seed replays a failing run."""
    one, two = random.Random("s"), random.Random("s")
    assert [client_frame(one) for _ in range(200)] == [client_frame(two) for _ in range(200)]
