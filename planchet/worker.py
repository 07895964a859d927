"""``planchet work``: a worker that pipes batches through any program, as JSON lines.

So a worker can be written in any language. The program reads ``{"id": ID, "item":
ITEM}`` lines on stdin and answers each with ``{"id": ID, "result": RESULT}`` or
``{"id": ID, "error": "why"}`` (plus ``"retry": false`` to skip the retries) on
stdout, in any order.

The program runs in one of two ways:

* co-process (the default): started once and kept running, because real work (a
  model, a database connection) is costly to set up. For each batch the worker writes
  the batch's lines and reads exactly as many non-blank lines back.
* per batch (``--per-batch``): started afresh for every batch; stdin is closed after
  the batch and every line is read until the program exits. Suits filters (``jq -c``).

Failures cost items, never the worker or the job. A line that is not JSON, or names an
id that is not waiting for an answer, leaves its item unanswered, and a co-process that
wrote one is restarted (its answers would be out of step from then on). A crash mid-batch
is blamed on the first unanswered item in the order sent (the one a program that
answers in order was working on); the program is restarted and the rest of the batch
sent again, so an innocent item after a poisonous one is not failed with it. A
program silent past the lease timeout is killed. Unanswered items are reported as
errors, which the server retries up to the job's ``max_attempts``. A program that
dies repeatedly before ever answering (a typo in the command) stops the worker with
an error instead of sending the whole job to the error file.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shlex
import ssl
import time
from asyncio.subprocess import PIPE, Process
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from .aclient import AsyncPlanchetClient
from .connecting import DEFAULT_URL
from .exceptions import PlanchetError
from .messages import Ack, Item, ItemError
from .progress import ProgressCallback
from .session import MAX_FAILING_BATCHES
from .version import __version__

log = logging.getLogger("planchet.worker")

LINE_LIMIT = 64 * 2**20  # the longest answer line read from a co-process
SILENT_DEATHS = 5  # deaths before any answer at all that stop the worker
STOP_GRACE = 5.0  # seconds a co-process gets to exit after its stdin closes


class ProgramFailed(PlanchetError):
    """The worker's program cannot be run, or dies before it ever answers."""

    code = "program_failed"


def encode_items(items: Sequence[Item]) -> bytes:
    return b"".join(orjson.dumps({"id": i, "item": item}) + b"\n" for i, item in items)


def _clip(line: bytes, limit: int = 80) -> str:
    text = line.decode("utf-8", "replace").strip()
    return text if len(text) <= limit else text[:limit] + "..."


class Answers:
    """What a program said about one batch, checked against the ids it was given."""

    def __init__(self, items: Sequence[Item]) -> None:
        self.pending: dict[int, Any] = {i: item for i, item in items}  # in the order sent
        self.results: list[Item] = []
        self.errors: list[ItemError] = []
        self.bad: list[str] = []  # lines that answered nothing

    @property
    def answered(self) -> int:
        return len(self.results) + len(self.errors)

    def take(self, line: bytes) -> None:
        """File one output line as a result or an error, or note why it is neither."""
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError:
            self.bad.append(f"not JSON: {_clip(line)}")
            return
        item_id = msg.get("id") if isinstance(msg, dict) else None
        if type(item_id) is not int or item_id not in self.pending:
            self.bad.append(f"no such id waiting: {_clip(line)}")
            return
        if "error" in msg:
            retry = msg.get("retry") is not False
            self.errors.append(ItemError(id=item_id, message=str(msg["error"]), retry=retry))
        elif "result" in msg:
            self.results.append((item_id, msg["result"]))
        else:
            self.bad.append(f"neither result nor error: {_clip(line)}")
            return
        del self.pending[item_id]

    def blame_first(self, reason: str) -> None:
        """The program died: fail the item it was most likely working on."""
        item_id = next(iter(self.pending))
        del self.pending[item_id]
        self.errors.append(ItemError(id=item_id, message=f"{reason} on this item"))

    def fail_rest(self, reason: str) -> None:
        if self.bad:
            reason += f"; lines that were not answers: {' | '.join(self.bad[:3])}"
        self.errors += [ItemError(id=i, message=reason) for i in self.pending]
        self.pending.clear()


class Program:
    """The user's command; subclasses decide how long one process of it lives."""

    def __init__(self, command: Sequence[str]) -> None:
        if not command:
            raise ProgramFailed("no command to run")
        self.command = list(command)
        self.name = shlex.join(self.command)
        self.proc: Process | None = None
        self.ever_answered = False
        self.silent_deaths = 0

    async def _spawn(self) -> Process:
        try:
            return await asyncio.create_subprocess_exec(
                *self.command, stdin=PIPE, stdout=PIPE, limit=LINE_LIMIT)
        except OSError as exc:
            raise ProgramFailed(f"cannot run {self.name}: {exc}") from exc

    async def answer(self, answers: Answers) -> str | None:
        """Send the pending items; None if the program answered all it was asked, else why not."""
        raise NotImplementedError

    async def stop(self, kill: bool = False) -> None:
        """End the running process: close its stdin and wait, or kill it now."""
        proc, self.proc = self.proc, None
        if proc is None or proc.returncode is not None:
            return
        if not kill and proc.stdin is not None:
            proc.stdin.close()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(proc.wait(), STOP_GRACE)
        if proc.returncode is None:
            proc.kill()
            await proc.wait()

    def check(self, answered: bool, died: str | None) -> None:
        """Stop the worker if the program never answers anything before dying."""
        if answered:
            self.ever_answered = True
        elif died and not self.ever_answered:
            self.silent_deaths += 1
            if self.silent_deaths >= SILENT_DEATHS:
                raise ProgramFailed(f"{died}, {self.silent_deaths} times in a row without "
                                    "answering anything; is the command right?")


class CoProcess(Program):
    """Started once, fed batch after batch; restarted only when it dies."""

    async def answer(self, answers: Answers) -> str | None:
        if self.proc is None or self.proc.returncode is not None:
            self.proc = await self._spawn()
        proc = self.proc
        items = list(answers.pending.items())
        feeder = asyncio.create_task(_feed(proc, encode_items(items)))
        bad_before = len(answers.bad)
        try:
            died = await self._read(proc, answers, len(items))
            if died is None:
                await feeder  # the program read every line: nothing is left half-written
        finally:
            feeder.cancel()
        if died is None and len(answers.bad) > bad_before:
            # a stray line took an answer's place: that answer would be read as the first
            # of the next batch, and so on. A fresh process is in step again.
            log.warning("%s wrote lines that are not answers; restarting it", self.name)
            await self.stop()
        return died

    async def _read(self, proc: Process, answers: Answers, expected: int) -> str | None:
        assert proc.stdout is not None
        while expected:
            try:
                line = await proc.stdout.readline()
            except ValueError:  # a line longer than LINE_LIMIT
                await self.stop(kill=True)
                return f"{self.name} wrote a line over {LINE_LIMIT} bytes"
            if not line:
                code = await proc.wait()
                self.proc = None
                return f"{self.name} exited with code {code}"
            if line.strip():
                answers.take(line)
                expected -= 1
        return None


class PerBatch(Program):
    """A fresh process for every batch: stdin closed after the batch, stdout read to EOF."""

    async def answer(self, answers: Answers) -> str | None:
        self.proc = proc = await self._spawn()
        out, _ = await proc.communicate(encode_items(list(answers.pending.items())))
        self.proc = None
        for line in out.splitlines():
            if line.strip():
                answers.take(line)
        return f"{self.name} exited with code {proc.returncode}" if proc.returncode else None


async def _feed(proc: Process, data: bytes) -> None:
    assert proc.stdin is not None
    with contextlib.suppress(BrokenPipeError, ConnectionResetError):
        proc.stdin.write(data)
        await proc.stdin.drain()


async def run_batch(program: Program, items: Sequence[Item], timeout: float) -> Answers:
    """Get an answer for every item: a result, the program's error, or ours."""
    answers = Answers(items)
    try:
        async with asyncio.timeout(timeout):
            await _settle(program, answers)
    except TimeoutError:
        await program.stop(kill=True)
        answers.fail_rest(f"{program.name} gave no answer within {timeout:g} s; killed it")
    answers.fail_rest(f"no answer from {program.name}")
    return answers


async def _settle(program: Program, answers: Answers) -> None:
    while answers.pending:
        before = answers.answered
        died = await program.answer(answers)
        program.check(answers.answered > before, died)
        if died is None:
            return
        if answers.pending:
            log.warning("%s mid-batch (%d items unanswered); restarting it", died,
                        len(answers.pending))
            answers.blame_first(died)


@dataclass
class Tally:
    """What a worker did, for its closing line."""

    batches: int = 0
    results: int = 0
    errors: int = 0
    written: int = 0
    dropped: int = 0
    started: float = field(default_factory=time.monotonic)

    def add(self, answers: Answers, ack: Ack) -> None:
        self.batches += 1
        self.results += len(answers.results)
        self.errors += len(answers.errors)
        self.written += ack.written
        self.dropped += ack.dropped

    def summary(self) -> str:
        seconds = time.monotonic() - self.started
        rate = (self.results + self.errors) / seconds if seconds > 0 else 0.0
        attempts = "failed attempt" if self.errors == 1 else "failed attempts"
        text = (f"{self.results:,} results and {self.errors:,} {attempts} from "
                f"{self.batches:,} batches in {seconds:.1f} s ({rate:,.0f} items/s)")
        if self.dropped:
            text += f"; {self.dropped:,} came too late and were dropped"
        return text


class WorkClient(AsyncPlanchetClient):
    """The asyncio client as ``planchet work`` uses it: it says so in its hello."""

    client_name = f"planchet-work/{__version__}"


async def work(job: str, command: Sequence[str], *, url: str = DEFAULT_URL,
               token: str | None = None, prefetch: int = 2, batch_size: int | None = None,
               per_batch: bool = False, ssl: ssl.SSLContext | None = None,
               progress: ProgressCallback | None = None,
               max_failing_batches: int = MAX_FAILING_BATCHES) -> Tally:
    """Process ``job``'s batches with ``command`` until the job is done; ``progress`` is
    called as the batches go (see ``AsyncPlanchetClient.batches``)."""
    program = PerBatch(command) if per_batch else CoProcess(command)
    tally = Tally()
    try:
        async with WorkClient(url, token, ssl=ssl,
                              max_failing_batches=max_failing_batches) as client:
            async for batch in client.batches(job, prefetch=prefetch, batch_size=batch_size,
                                              progress=progress):
                answers = await run_batch(program, batch.items, batch.lease_timeout)
                ack = await batch.ack(answers.results, answers.errors)
                tally.add(answers, ack)
                log.debug("batch %s: %d results, %d errors", batch.lease,
                          len(answers.results), len(answers.errors))
    finally:
        await program.stop()
    return tally
