"""Helpers of the dashboard's tests: the page, its job cards, workers paced by a gate."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import orjson
from playwright.async_api import BrowserContext, Locator, Page, expect

from planchet.aclient import AsyncPlanchetClient
from planchet.messages import ItemError
from planchet.server import PlanchetServer
from tests.browser.tabs import WAIT_MS, http_url, ws_url


class Dashboard:
    """The page at /; ``card(job)`` is a job's card, ``view()`` the page's window.planchet."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []  # uncaught errors of the page
        page.on("pageerror", lambda error: self.problems.append(str(error)))
        page.on("dialog", lambda dialog: asyncio.ensure_future(dialog.accept()))  # Delete's confirm

    @classmethod
    async def open(cls, browser: BrowserContext, server: PlanchetServer) -> Dashboard:
        dashboard = cls(await browser.new_page())
        await dashboard.page.goto(http_url(server) + "/")
        await dashboard.wait("p.drawn > 0")
        return dashboard

    def card(self, job: str) -> Locator:
        return self.page.locator(f'.job[data-job="{job}"]')

    def count(self, job: str, name: str) -> Locator:
        """A count of the job's card: read, queued, in_flight, written or failed."""
        return self.card(job).locator(f'[data-count="{name}"]')

    def workers(self, job: str) -> Locator:
        return self.card(job).locator(".workers tbody tr")

    def errors(self, job: str) -> Locator:
        return self.card(job).locator(".errors li")

    def button(self, job: str, op: str) -> Locator:
        return self.card(job).locator(f'button[data-op="{op}"]')

    async def expect_count(self, job: str, name: str, value: int) -> None:
        await expect(self.count(job, name)).to_have_text(f"{value:,}", timeout=WAIT_MS)

    async def expect_state(self, job: str, state: str) -> None:
        await expect(self.card(job)).to_have_attribute("data-state", state, timeout=WAIT_MS)

    async def use_token(self, token: str) -> None:
        await self.page.fill("#token", token)
        await self.page.click("#use-token")

    async def view(self) -> dict[str, Any]:
        return await self.page.evaluate("() => JSON.parse(JSON.stringify(window.planchet))")

    async def wait(self, condition: str) -> None:
        """Wait until ``condition`` (JavaScript; ``p`` is window.planchet) holds in the page."""
        script = f"() => {{ const p = window.planchet; return {condition}; }}"
        await self.page.wait_for_function(script, timeout=WAIT_MS, polling=50)


class GatedWorker:
    """A Python worker that settles one batch per permit (``allow``), or all once ``open``.

    The ids in ``fail`` fail for good (``retry=False``) with ``message`` (``{id}`` becomes
    the item's id): they go to the error file at once.
    """

    def __init__(self, server: PlanchetServer, job: str, *, token: str | None = None,
                 prefetch: int = 1, fail: Iterable[int] = (), message: str = "bad item",
                 blocking: bool = False) -> None:
        self.server, self.job, self.token, self.prefetch = server, job, token, prefetch
        self.fail, self.message = set(fail), message
        self.permits = asyncio.Semaphore(0)
        self.batches = 0  # batches received
        self.written = 0
        self.failed = 0
        self.task: asyncio.Task[None] | None = None

    def allow(self, batches: int = 1) -> None:
        for _ in range(batches):
            self.permits.release()

    def open(self) -> None:
        self.allow(1_000_000)

    def start(self) -> GatedWorker:
        self.task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Disconnect now (what it holds goes back to the queue)."""
        if self.task is not None:
            self.task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self.task

    async def finished(self) -> None:
        assert self.task is not None
        await asyncio.wait_for(self.task, WAIT_MS / 1000)

    async def _run(self) -> None:
        async with AsyncPlanchetClient(ws_url(self.server), self.token) as client:
            async for batch in client.batches(self.job, prefetch=self.prefetch):
                self.batches += 1
                await self.permits.acquire()
                good = [(i, {"length": len(item["text"])}) for i, item in batch.items
                        if i not in self.fail]
                bad = [ItemError(id=i, message=self.message.format(id=i), retry=False)
                       for i, _ in batch.items if i in self.fail]
                ack = await batch.ack(good, bad)
                self.written += ack.written
                self.failed += ack.failed


def write_texts(data_dir: Path, name: str, count: int, words: str = "a short line") -> str:
    """Write ``count`` records ``{"text": ...}`` of one length as ``data_dir/name``; the name."""
    lines = (orjson.dumps({"text": f"{words} {n:07d}"}) + b"\n" for n in range(count))
    (data_dir / name).write_bytes(b"".join(lines))
    return name


async def start_job(server: PlanchetServer, job: str, input_file: str, *,
                    token: str | None = None, **options: Any) -> None:
    """Create ``job`` reading ``input_file`` into ``<job>.out.jsonl``."""
    files = {"input_file_path": input_file, "output_file_path": f"{job}.out.jsonl"}
    async with AsyncPlanchetClient(ws_url(server)) as client:
        await client.start_job(job, files, "JsonlReader", "JsonlWriter", token=token, **options)


async def report(server: PlanchetServer, job: str) -> dict[str, Any]:
    async with AsyncPlanchetClient(ws_url(server)) as client:
        return await client.report(job)
