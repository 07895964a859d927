"""The dashboard at /, in Chromium, against a real server: progress, workers, errors, steering."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import sys
from pathlib import Path

from playwright.async_api import BrowserContext, expect

from planchet.aclient import AsyncPlanchetClient
from tests.browser.conftest import WebServer
from tests.browser.dashboard import Dashboard, GatedWorker, report, start_job, write_texts
from tests.browser.tabs import WAIT_MS, Tab, worker_url, ws_url
from tests.support import REPO, clean_env, eventually

ADMIN = "admin-token-of-the-job"
GATE_PROGRAM = """
import json, sys
gate = sys.argv[1]
for line in sys.stdin:
    request = json.loads(line)
    open(gate).read()  # a FIFO: blocks until the test opens it for writing
    print(json.dumps({"id": request["id"], "result": len(request["item"]["text"])}), flush=True)
"""


async def test_progress_moves_and_reaches_100_percent(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """A job's card follows its progress live, batch by batch, to 100 % and done."""
    server = await web_server()
    await start_job(server, "lines", write_texts(data_dir, "lines.jsonl", 50), batch_size=10)
    page = await Dashboard.open(browser, server)
    await page.expect_state("lines", "running")
    await expect(page.card("lines").locator(".percent")).to_have_text("0%", timeout=WAIT_MS)

    worker = GatedWorker(server, "lines").start()
    for written in (10, 20, 30):
        worker.allow()
        await page.expect_count("lines", "written", written)
        percent = page.card("lines").locator(".percent")
        await expect(percent).to_have_text(f"{written * 2}%", timeout=WAIT_MS)
    worker.open()
    await worker.finished()
    await page.expect_state("lines", "done")
    await expect(page.card("lines").locator(".percent")).to_have_text("100%")
    await page.expect_count("lines", "written", 50)
    assert page.problems == []


async def test_a_worker_appears_and_goes_away(
        browser: BrowserContext, web_server: WebServer, data_dir: Path, tmp_path: Path) -> None:
    """A Python worker and a `planchet work` process show up in the job's table with their
    kind while connected, and leave it when they disconnect."""
    server = await web_server()
    await start_job(server, "lines", write_texts(data_dir, "lines.jsonl", 40), batch_size=5)
    page = await Dashboard.open(browser, server)
    await expect(page.card("lines").locator(".workers .empty")).to_have_text(
        "No worker is connected.", timeout=WAIT_MS)

    worker = GatedWorker(server, "lines").start()
    await expect(page.workers("lines")).to_have_count(1, timeout=WAIT_MS)
    await expect(page.workers("lines").first.locator("td").first).to_have_text("asyncio")

    gate = tmp_path / "gate"
    os.mkfifo(gate)
    program = tmp_path / "gated.py"
    program.write_text(GATE_PROGRAM)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "planchet", "work", "lines", "--url", ws_url(server),
        "--prefetch", "1", "--", sys.executable, str(program), str(gate),
        env=clean_env(), cwd=REPO, stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.DEVNULL)
    try:
        kinds = page.workers("lines").locator("td:first-child")
        await expect(kinds).to_have_count(2, timeout=WAIT_MS)
        for kind in ("asyncio", "work"):  # ordered by address: either port may be lower
            await expect(kinds.filter(has_text=re.compile(f"^{kind}$"))).to_have_count(1)
        await worker.stop()
        await expect(kinds).to_have_text(["work"], timeout=WAIT_MS)
    finally:
        process.terminate()
        await process.wait()
    await expect(page.workers("lines")).to_have_count(0, timeout=WAIT_MS)
    await expect(page.card("lines").locator(".workers .empty")).to_be_visible()
    assert page.problems == []


async def test_an_error_appears(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """An item a worker fails for good shows in the card's last errors, with the worker's
    message, and in its failed count."""
    server = await web_server()
    await start_job(server, "lines", write_texts(data_dir, "lines.jsonl", 20), batch_size=10)
    page = await Dashboard.open(browser, server)
    await expect(page.errors("lines")).to_have_count(0)
    await expect(page.card("lines").locator(".errors .empty")).to_have_text("None.")

    worker = GatedWorker(server, "lines", fail=[13], message="ValueError: no date in line 13")
    worker.start().open()
    await worker.finished()
    await expect(page.errors("lines")).to_have_count(1, timeout=WAIT_MS)
    error = page.errors("lines").first
    await expect(error.locator(".id")).to_have_text("#13")
    await expect(error.locator(".message")).to_contain_text("ValueError: no date in line 13")
    await page.expect_count("lines", "failed", 1)
    await page.expect_count("lines", "written", 19)
    assert page.problems == []


async def test_pause_and_resume_from_the_page(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """Without a token the buttons are absent; with the job's admin token typed in, Pause
    stops dispatch (the server says paused, the worker gets no batch though it asks) and
    Resume restarts it."""
    server = await web_server()
    texts = write_texts(data_dir, "lines.jsonl", 30)
    await start_job(server, "lines", texts, token=ADMIN, batch_size=10)
    page = await Dashboard.open(browser, server)
    await page.expect_state("lines", "running")
    await expect(page.card("lines").locator(".actions")).to_be_hidden()
    await expect(page.card("lines").locator(".workers .empty")).to_contain_text("token")

    worker = GatedWorker(server, "lines", token=ADMIN).start()
    await eventually(lambda: worker.batches == 1, "the worker's first batch")
    await page.use_token(ADMIN)
    await expect(page.button("lines", "pause")).to_be_visible(timeout=WAIT_MS)
    await expect(page.button("lines", "resume")).to_be_hidden()
    assert await page.page.evaluate("sessionStorage.getItem('planchet:dashboard:token')") == ADMIN
    assert ADMIN not in page.page.url
    await page.button("lines", "pause").click()
    await page.expect_state("lines", "paused")
    assert (await report(server, "lines"))["state"] == "paused"

    worker.open()  # it settles the batch it holds and asks for the next one
    await page.expect_count("lines", "written", 10)
    await page.expect_count("lines", "in_flight", 0)
    paused = await report(server, "lines")
    assert (paused["state"], paused["written"], paused["in_flight"]) == ("paused", 10, 0)
    assert worker.batches == 1

    await expect(page.button("lines", "resume")).to_be_visible()
    await page.button("lines", "resume").click()
    await worker.finished()
    await page.expect_state("lines", "done")
    assert worker.batches == 3
    assert (await report(server, "lines"))["written"] == 30
    assert page.problems == []


async def test_retry_failed_and_delete_from_the_page(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """Retry failed puts the failed item back through a fixed worker (the card says how
    many went back), and Delete, once confirmed, removes the job and its card."""
    server = await web_server()
    await start_job(server, "lines", write_texts(data_dir, "lines.jsonl", 20), token=ADMIN,
                    batch_size=10)
    broken = GatedWorker(server, "lines", token=ADMIN, fail=[13])
    broken.start().open()
    await broken.finished()
    page = await Dashboard.open(browser, server)
    await page.use_token(ADMIN)
    await page.expect_count("lines", "failed", 1)
    await page.button("lines", "retry").click()
    await expect(page.card("lines").locator(".note")).to_contain_text(
        "1 failed item went back to the queue", timeout=WAIT_MS)
    fixed = GatedWorker(server, "lines", token=ADMIN).start()
    fixed.open()
    await fixed.finished()
    await page.expect_count("lines", "written", 20)
    await page.expect_count("lines", "failed", 0)
    await page.expect_state("lines", "done")

    await page.card("lines").locator("h2").click()  # a done job's card is folded
    await page.button("lines", "delete").click()  # the confirm is accepted
    await expect(page.card("lines")).to_have_count(0, timeout=WAIT_MS)
    async with AsyncPlanchetClient(ws_url(server)) as client:
        assert [job["job"] for job in await client.jobs()] == []
    assert page.problems == []


async def test_screenshot_of_a_busy_server(
        browser: BrowserContext, web_server: WebServer, data_dir: Path,
        tmp_path: Path) -> None:
    """Several jobs at once (running with workers and errors, paused, done) draw cleanly;
    the screenshot is this test's artefact (and docs/dashboard.png with
    PLANCHET_DOCS_SCREENSHOTS=1)."""
    server = await web_server()
    await start_job(server, "headlines", write_texts(data_dir, "h.jsonl", 60_000, "news"),
                    token=ADMIN, batch_size=20)
    await start_job(server, "issue-titles", write_texts(data_dir, "i.jsonl", 6000, "bug"),
                    token=ADMIN, batch_size=10)
    await start_job(server, "thumbnails", write_texts(data_dir, "t.jsonl", 500), token=ADMIN)
    done = GatedWorker(server, "thumbnails", token=ADMIN).start()
    done.open()
    await done.finished()
    workers = [GatedWorker(server, "headlines", token=ADMIN, prefetch=2).start(),
               GatedWorker(server, "headlines", token=ADMIN, prefetch=2).start(),
               GatedWorker(server, "issue-titles", token=ADMIN, fail=range(3, 6000, 97),
                           message="ValueError: issue {id} has an empty title").start()]
    tab = await Tab.open(browser, worker_url(server, "headlines", "/pages/gate.js", ADMIN))
    await tab.wait("p.state === 'working'")  # it holds its batches: the gate stays shut
    page = await Dashboard.open(browser, server)
    await page.use_token(ADMIN)
    await expect(page.button("headlines", "pause")).to_be_visible(timeout=WAIT_MS)

    frames = 0

    async def paced_until_history() -> bool:
        """Let a few batches through per status frame (the rate wanders), until the server
        has sampled a few points of the rate's history."""
        nonlocal frames
        view = await page.view()
        for tick in range(frames, view["frames"]):
            workers[0].allow(12 if tick // 6 % 2 else 4)
            workers[1].allow(4 + 3 * (tick // 9 % 3))
            workers[2].allow(2 + tick // 5 % 2)
        frames = view["frames"]
        headlines = [j for j in view["status"]["jobs"] if j["job"] == "headlines"]
        return len(headlines[0]["history"]) >= 6

    await eventually(paced_until_history, "six points of rate history", timeout=180)
    await page.button("issue-titles", "pause").click()
    await page.expect_state("issue-titles", "paused")
    await expect(page.errors("issue-titles")).not_to_have_count(0, timeout=WAIT_MS)
    for worker in workers:
        worker.allow(2)
    await page.page.set_viewport_size({"width": 1280, "height": 900})
    await page.wait("p.drawn === p.frames")
    shot = tmp_path / "dashboard.png"
    await page.page.screenshot(path=shot, full_page=True)
    if os.environ.get("PLANCHET_DOCS_SCREENSHOTS"):
        shutil.copy(shot, REPO / "docs" / "dashboard.png")
    print(f"\nscreenshot: {shot}")
    for worker in workers:
        await worker.stop()
    assert page.problems == []
