"""Browser tabs as workers: together with a Python worker, closed mid-batch, reloaded."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path

from playwright.async_api import BrowserContext

from planchet.server import PlanchetServer
from tests.browser.conftest import WebServer
from tests.browser.tabs import (
    Tab,
    command,
    error_lines,
    output,
    python_worker,
    report,
    start_job,
    worker_url,
    write_input,
)
from tests.support import eventually

ISSUE_REPEATS = 5  # 830 issue titles, five times: enough batches for every worker


async def test_three_tabs_and_a_python_worker_finish_one_job_exactly(
        browser: BrowserContext, web_server: WebServer, data_dir: Path, issues_input: Path,
        tmp_path: Path) -> None:
    """Three worker tabs and a Python worker share one job: every id written exactly once,
    each tab did some of it, and the page says so."""
    texts = issues_input.read_text().splitlines() * ISSUE_REPEATS
    issues_input.write_text("\n".join(texts) + "\n")
    server = await web_server()
    await start_job(server, "stats", batch_size=10)
    await command(server, "pause", "stats")  # every worker connects before any item is served
    tabs = [await Tab.open(browser, worker_url(server, "stats")) for _ in range(3)]
    for tab in tabs:
        await tab.wait("p.state === 'waiting'")
    python = asyncio.create_task(python_worker(server, "stats"))
    await command(server, "resume", "stats")
    started = time.monotonic()
    by_python = await python
    for tab in tabs:
        await tab.wait("p.state === 'done'")
    seconds = time.monotonic() - started

    results = output(data_dir)
    assert sorted(results) == list(range(len(texts)))
    views = [await tab.view() for tab in tabs]
    assert all(view["done"] > 0 for view in views), [view["done"] for view in views]
    assert sum(view["done"] for view in views) + by_python == len(texts)
    from_tabs = [r for r in results.values() if "by" not in r]
    assert len(from_tabs) == len(texts) - by_python
    assert all(r["words"] >= 1 and r["characters"] >= r["letters"] for r in from_tabs)
    assert [tab.problems for tab in tabs] == [[], [], []]
    assert [view["errors"] for view in views] == [[], [], []]
    await tabs[0].page.screenshot(path=tmp_path / "worker-page.png", full_page=True)
    print(f"\n{len(texts)} items in {seconds:.2f} s: python {by_python / seconds:.0f} items/s, "
          + ", ".join(f"tab {n} {v['done'] / seconds:.0f} items/s" for n, v in enumerate(views)))


async def test_a_tab_closed_mid_batch_has_its_items_requeued(
        browser: BrowserContext, web_server: WebServer, data_dir: Path,
        issues_input: Path) -> None:
    """A tab closed while it holds batches: once the short resume grace is over its items
    go back to the queue (long before their lease times out), and another tab finishes
    the job exactly."""
    server = await web_server(resume_grace=0.5)
    await start_job(server, "stats", batch_size=10, lease_timeout=3600)
    holder = await Tab.open(browser, worker_url(server, "stats", "/pages/hold.js"))
    await holder.wait("p.state === 'working'")
    await eventually(lambda: _in_flight(server, "stats", 20), "both batches held by the tab")
    await holder.page.close()

    finisher = await Tab.open(browser, worker_url(server, "stats"))
    await finisher.wait("p.state === 'done'")
    assert sorted(output(data_dir)) == list(range(830))
    assert (await finisher.view())["done"] == 830
    assert error_lines(data_dir) == []


async def test_a_reloaded_tab_resumes_its_leases_with_no_attempt_charged(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """A tab reloaded while it holds batches resumes its session: the same leases come back
    to it, and with max_attempts=1 not one item fails."""
    write_input(data_dir, [f"item number {i}" for i in range(50)])
    server = await web_server(resume_grace=60)
    await start_job(server, "stats", batch_size=10, max_attempts=1)
    tab = await Tab.open(browser, worker_url(server, "stats", "/pages/gate.js", prefetch=1))
    await tab.wait("p.state === 'working' && p.session !== null")
    before = await tab.view()
    assert not before["resumed"]

    await tab.page.reload()
    await tab.wait("p.resumed && p.state === 'working'")
    after = await tab.view()
    assert after["session"] == before["session"]
    assert after["leases"] == before["leases"]  # the same lease sent again, not requeued
    await tab.run_in_worker("globalThis.openGate()")
    await tab.wait("p.state === 'done'")

    assert output(data_dir) == {i: {"length": len(f"item number {i}")} for i in range(50)}
    assert error_lines(data_dir) == []
    assert (await report(server, "stats"))["failed"] == 0
    assert (await tab.view())["errors"] == []



async def _in_flight(server: PlanchetServer, job: str, items: int) -> bool:
    return (await report(server, job))["in_flight"] == items


async def test_stop_hands_the_leases_back_with_no_attempt_charged(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """The page's Stop button releases the batches the tab holds (they are queued again at
    once, with max_attempts=1 not one fails) and closes; another tab finishes the job."""
    write_input(data_dir, [f"item number {i}" for i in range(50)])
    server = await web_server(resume_grace=3600)  # only the release can free the items
    await start_job(server, "stats", batch_size=10, max_attempts=1, lease_timeout=3600)
    tab = await Tab.open(browser, worker_url(server, "stats", "/pages/hold.js"))
    await tab.wait("p.state === 'working'")
    await eventually(lambda: _in_flight(server, "stats", 20), "both batches held by the tab")
    await tab.page.get_by_role("button", name="Stop").click()
    await tab.wait("p.state === 'stopped'")
    await eventually(lambda: _in_flight(server, "stats", 0), "the batches released")
    assert await tab.page.evaluate("() => sessionStorage.length") == 0

    finisher = await Tab.open(browser, worker_url(server, "stats"))
    await finisher.wait("p.state === 'done'")
    assert sorted(output(data_dir)) == list(range(50))
    assert error_lines(data_dir) == []


async def test_a_duplicated_tab_takes_the_session_and_the_first_starts_a_new_one(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """A tab opened with another tab's session id (a duplicated tab copies sessionStorage)
    resumes that session and its lease; the first tab is told (close 4001) and carries on
    as a new session; nothing is charged and the job ends exact."""
    write_input(data_dir, [f"item number {i}" for i in range(50)])
    server = await web_server(resume_grace=60)
    await start_job(server, "stats", batch_size=10, max_attempts=1)
    url = worker_url(server, "stats", "/pages/gate.js", prefetch=1)
    first = await Tab.open(browser, url)
    await first.wait("p.state === 'working' && p.session !== null")
    before = await first.view()

    twin = Tab(await browser.new_page())
    await twin.page.add_init_script(
        f"sessionStorage.setItem('planchet:session:stats', {json.dumps(before['session'])})")
    await twin.page.goto(url)
    await twin.wait("p.resumed && p.state === 'working'")
    assert (await twin.view())["leases"] == before["leases"]
    await first.run_in_worker("globalThis.openGate()")  # its batch ends: it hears of 4001
    await first.wait(f"p.session !== null && p.session !== {json.dumps(before['session'])}")
    messages = [error["message"] for error in (await first.view())["errors"]]
    assert "another tab took this session over; starting a new one" in messages, messages

    await twin.run_in_worker("globalThis.openGate()")
    for tab in (first, twin):
        await tab.wait("p.state === 'done'")
    assert sorted(output(data_dir)) == list(range(50))
    assert error_lines(data_dir) == []
