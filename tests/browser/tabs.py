"""Helpers of the browser tests: worker tabs, jobs, a Python worker beside the tabs."""

from __future__ import annotations

import collections
import re
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

import orjson
from playwright.async_api import BrowserContext, Page

from planchet.aclient import AsyncPlanchetClient
from planchet.server import PlanchetServer

WAIT_MS = 60_000  # a page condition a test waits for; generous on a loaded 2-core machine
JOB_FILES = {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"}


def http_url(server: PlanchetServer) -> str:
    return f"http://127.0.0.1:{server.port}"


def ws_url(server: PlanchetServer) -> str:
    return f"ws://127.0.0.1:{server.port}"


def worker_url(server: PlanchetServer, job: str, work: str = "/pages/textstats.js",
               token: str | None = None, **query: object) -> str:
    """The worker page's address for ``job``; the token goes in the fragment."""
    address = f"{http_url(server)}/worker?{urlencode({'job': job, 'work': work, **query})}"
    return address + (f"#token={token}" if token else "")


class Tab:
    """A browser tab on the worker page; ``view()`` is the page's ``window.planchet``."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []  # uncaught errors of the page
        page.on("pageerror", lambda error: self.problems.append(str(error)))

    @classmethod
    async def open(cls, browser: BrowserContext, url: str) -> Tab:
        tab = cls(await browser.new_page())
        await tab.page.goto(url)
        return tab

    async def view(self) -> dict[str, Any]:
        return await self.page.evaluate("() => JSON.parse(JSON.stringify(window.planchet))")

    async def wait(self, condition: str) -> None:
        """Wait until ``condition`` (JavaScript; ``p`` is window.planchet) holds in the page."""
        script = f"() => {{ const p = window.planchet; return {condition}; }}"
        await self.page.wait_for_function(script, timeout=WAIT_MS, polling=50)

    async def run_in_worker(self, script: str) -> Any:
        """Evaluate ``script`` in the tab's Web Worker (the runner, where the work runs)."""
        runners = [w for w in self.page.workers if w.url.endswith("/web/runner.js")]
        assert len(runners) == 1, [w.url for w in self.page.workers]
        return await runners[0].evaluate(script)


async def start_job(server: PlanchetServer, job: str, token: str | None = None,
                    master: str | None = None, **options: Any) -> None:
    """Create ``job`` (in.jsonl to out.jsonl) with admin token ``token``."""
    async with AsyncPlanchetClient(ws_url(server), master) as client:
        await client.start_job(job, JOB_FILES, "JsonlReader", "JsonlWriter", token=token,
                               **options)


async def command(server: PlanchetServer, op: str, job: str,
                  token: str | None = None) -> dict[str, Any]:
    """A job command (``report``, ``pause``, ``resume``...) over a connection of its own."""
    async with AsyncPlanchetClient(ws_url(server), token) as client:
        return await getattr(client, op)(job)


async def report(server: PlanchetServer, job: str, token: str | None = None) -> dict[str, Any]:
    return await command(server, "report", job, token)


def output(data_dir: Path) -> dict[int, Any]:
    """The job's output as {id: result}; fails on an id written twice."""
    results: dict[int, Any] = {}
    for line in (data_dir / "out.jsonl").read_bytes().splitlines():
        record = orjson.loads(line)
        assert record["id"] not in results, f"id {record['id']} written twice"
        results[record["id"]] = record["item"]
    return results


def error_lines(data_dir: Path) -> list[bytes]:
    path = data_dir / "out.jsonl.errors.jsonl"
    return path.read_bytes().splitlines() if path.exists() else []


def write_input(data_dir: Path, texts: list[str]) -> None:
    (data_dir / "in.jsonl").write_bytes(b"".join(orjson.dumps({"text": t}) + b"\n" for t in texts))


def text_stats(text: str) -> dict[str, Any]:
    """The Python worker's work: about what textstats.js does, with regular expressions."""
    words = [w.lower() for w in re.findall(r"\w+(?:['\u2019]\w+)*", text)]
    sentences = [s for s in re.split(r"[.!?]+\s", text) if re.search(r"\w", s)]
    common = collections.Counter(w for w in words if len(w) >= 3).most_common(5)
    return {"by": "python", "words": len(words), "sentences": len(sentences),
            "topWords": [list(pair) for pair in common]}


async def python_worker(server: PlanchetServer, job: str, token: str | None = None) -> int:
    """Work on ``job`` until it is done; the number of results written."""
    written = 0
    async with AsyncPlanchetClient(ws_url(server), token) as client:
        async for batch in client.batches(job, prefetch=2):
            ack = await batch.ack([(i, text_stats(item["text"])) for i, item in batch.items])
            written += ack.written
    return written
