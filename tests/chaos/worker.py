"""The worker programs the chaos harness spawns, one process each.

    python -m tests.chaos.worker MODE URL JOB [ARG]

Modes:
  blocking   the original get/send loop (PlanchetClient); ARG: seconds to sleep per batch
  async      AsyncPlanchetClient.batches with batch.ack; ARG: seconds to sleep per batch
  work       ``planchet work JOB -- python examples/uppercase.py`` (the CLI's own main)
  duplicate  acks each of ARG batches twice (in turn, or both at once), then leaves
  midframe   takes one batch, sends half of its result frame, and drops the socket
  churn      ARG times: connect, hello, credit, close (half of them after a batch came)

midframe and churn take a connection refused or cut as part of the game.

Every worker computes the same result, ``shout`` from examples/uppercase.py, so the
harness can check each output line against its input line. Exit codes: 0 done or
left as planned, 1 an exception (a finding), 3 a duplicate result was written twice.
"""

from __future__ import annotations

import asyncio
import faulthandler
import signal
import sys
import time
from typing import Any
from urllib.parse import urlsplit

from examples.uppercase import shout
from planchet.aclient import AsyncPlanchetClient
from planchet.cli import main as planchet
from planchet.client import PlanchetClient
from planchet.messages import ItemError
from tests.chaos.rawws import RawSocket, hello

RETRIES = 40  # enough backoff to ride out any server restart of the harness
NOT_TEXT = "item has no text"
UPPERCASE = "examples/uppercase.py"


def answer(items: list[Any]) -> tuple[list[tuple[int, Any]], list[ItemError]]:
    """Results for the items ``shout`` takes, final errors for the others."""
    results, errors = [], []
    for i, item in items:
        try:
            results.append((i, shout(item)))
        except ValueError:
            errors.append(ItemError(id=i, message=NOT_TEXT, retry=False))
    return results, errors


def blocking(url: str, job: str, delay: float) -> int:
    client = PlanchetClient(url, retries=RETRIES)
    items = client.get(job, 100)
    while items:
        time.sleep(delay)
        results, errors = answer(items)
        if results:
            client.send(job, results)
        if errors:
            client.mark_errors(job, [e.id for e in errors], message=NOT_TEXT)
        items = client.get(job, 100)
    client.close()
    return 0


async def asynchronous(url: str, job: str, delay: float) -> int:
    async with AsyncPlanchetClient(url, retries=RETRIES) as client:
        async for batch in client.batches(job, prefetch=2):
            await asyncio.sleep(delay)
            await batch.ack(*answer(batch.items))
    return 0


async def duplicate(url: str, job: str, batches: int) -> int:
    """Ack every batch twice; the second ack must write nothing."""
    async with AsyncPlanchetClient(url, retries=RETRIES) as client:
        n = 0
        async for batch in client.batches(job, prefetch=1):
            results, errors = answer(batch.items)
            if n % 2:  # both at once
                acks = list(await asyncio.gather(batch.ack(results, errors),
                                                 batch.ack(results, errors)))
            else:  # the second once the first is acked
                acks = [await batch.ack(results, errors), await batch.ack(results, errors)]
            written = sum(ack.written + ack.failed for ack in acks)
            if written > len(batch.items):
                print(f"lease {batch.lease}: {written} of {len(batch.items)} settled", flush=True)
                return 3
            n += 1
            if n >= batches:
                break
    return 0


def midframe(url: str, job: str) -> int:
    try:
        sock = _raw(url)
        sock.send(hello())
        sock.send({"type": "credit", "job": job, "batches": 1})
        batch = _next_batch(sock, 10.0)
        if batch is not None:
            results, _ = answer(batch["items"])
            sock.send_half({"type": "result", "job": job, "lease": batch["lease"],
                            "items": results})
        sock.close()
    except OSError as exc:  # the server went down under us, or refused us: nothing to break
        print(f"midframe: {exc}", flush=True)
    return 0


def churn(url: str, job: str, times: int) -> int:
    refused = 0
    for n in range(times):
        try:
            _churn_once(url, job, n)
        except OSError:  # a server restart, or a refusal: either way, the next one
            refused += 1
            time.sleep(0.05)
    print(f"churn: {times} connections, {refused} refused or cut", flush=True)
    return 0


def _churn_once(url: str, job: str, n: int) -> None:
    """Connect, hello, credit, close; every other time, after a batch came (or 1 s)."""
    sock = _raw(url)
    try:
        sock.send(hello())
        sock.send({"type": "credit", "job": job, "batches": 1 + n % 3})
        if n % 2:
            _next_batch(sock, 1.0)
    finally:
        sock.close()


def _next_batch(sock: RawSocket, timeout: float) -> dict[str, Any] | None:
    """The next batch; None if the job is done or none comes within ``timeout`` s."""
    sock.sock.settimeout(timeout)
    while True:
        try:
            message = sock.receive()
        except TimeoutError:
            return None
        if message.get("type") == "batch":
            return message
        if message.get("type") == "event" and message.get("event") == "done":
            return None


def _raw(url: str) -> RawSocket:
    parts = urlsplit(url)
    return RawSocket(parts.hostname or "127.0.0.1", parts.port or 5005)


def main(argv: list[str]) -> int:
    faulthandler.register(signal.SIGUSR1, all_threads=True)
    mode, url, job, *rest = argv
    arg = rest[0] if rest else "0"
    if mode == "work":
        return planchet(["work", job, "--url", url, "--", sys.executable, UPPERCASE])
    if mode == "blocking":
        return blocking(url, job, float(arg))
    if mode == "async":
        return asyncio.run(asynchronous(url, job, float(arg)))
    if mode == "duplicate":
        return asyncio.run(duplicate(url, job, int(arg)))
    if mode == "midframe":
        return midframe(url, job)
    if mode == "churn":
        return churn(url, job, int(arg))
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
