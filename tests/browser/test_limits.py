"""What a browser may not do: connect from a foreign origin, run admin commands with a
worker token, or get a batch over its byte cap."""

from __future__ import annotations

import functools
import http.server
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from playwright.async_api import BrowserContext, WebSocket

from planchet.aclient import AsyncPlanchetClient
from tests.browser.conftest import WebServer
from tests.browser.tabs import (
    Tab,
    error_lines,
    http_url,
    output,
    report,
    start_job,
    worker_url,
    write_input,
    ws_url,
)

FOREIGN_HOST = "127.0.0.2"  # loopback, but not an origin the server allows by default

# the page a foreign site serves: it tries the planchet server's WebSocket and /health
PROBE = """<!doctype html><title>probe</title><script type="module">
const server = new URLSearchParams(location.search).get("server");
window.probe = {};
const ws = new WebSocket(server.replace("http", "ws") + "/");
ws.onopen = () => { window.probe.socket = "open"; ws.close(); };
ws.onerror = () => { window.probe.socket ??= "error"; };
ws.onclose = (e) => { window.probe.closed = e.code; };
fetch(server + "/health").then(
  async (reply) => { window.probe.health = (await reply.json()).status; },
  (err) => { window.probe.health = err.name; });
</script>"""


@pytest.fixture
def foreign_site(tmp_path: Path) -> Iterator[str]:
    """A web site of its own on 127.0.0.2 serving the probe page; its origin."""
    root = tmp_path / "foreign"
    root.mkdir()
    (root / "probe.html").write_text(PROBE)
    handler = functools.partial(_QuietHandler, directory=str(root))
    site = http.server.ThreadingHTTPServer((FOREIGN_HOST, 0), handler)
    thread = threading.Thread(target=site.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{FOREIGN_HOST}:{site.server_port}"
    finally:
        site.shutdown()
        site.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


async def _probe(browser: BrowserContext, page_url: str) -> tuple[dict[str, Any], list[str]]:
    """Load the probe page; what it saw, and the socket errors the browser reported."""
    page = await browser.new_page()
    socket_errors: list[str] = []

    def watch(ws: WebSocket) -> None:
        ws.on("socketerror", lambda error: socket_errors.append(error))

    page.on("websocket", watch)
    await page.goto(page_url)
    await page.wait_for_function("() => window.probe.health && window.probe.closed",
                                 timeout=60_000, polling=50)
    return await page.evaluate("() => window.probe"), socket_errors


async def test_a_page_on_a_foreign_origin_is_refused(
        browser: BrowserContext, web_server: WebServer, foreign_site: str) -> None:
    """A page from an origin the server does not allow can neither open a WebSocket (the
    upgrade gets 403) nor read /health (no CORS)."""
    server = await web_server()
    seen, socket_errors = await _probe(browser, f"{foreign_site}/probe.html?server="
                                                f"{http_url(server)}")
    assert seen == {"socket": "error", "closed": 1006, "health": "TypeError"}
    assert any("403" in error for error in socket_errors), socket_errors


async def test_the_same_page_on_an_allowed_origin_may_connect(
        browser: BrowserContext, web_server: WebServer, foreign_site: str) -> None:
    """The same page, once its origin is allowed (--allow-origin), opens the WebSocket and
    reads /health: the refusal above is the origin policy, not the page."""
    server = await web_server(allow_origins=(foreign_site,))
    seen, socket_errors = await _probe(browser, f"{foreign_site}/probe.html?server="
                                                f"{http_url(server)}")
    assert seen == {"socket": "open", "closed": 1005, "health": "ok"}
    assert socket_errors == []


# a page's own client, with the page's token, trying what a worker token may not do
ADMIN_ATTEMPTS = """async ([url, job, token]) => {
  const { PlanchetClient } = await import("/client.js");
  const client = new PlanchetClient(url, { token });
  const codes = {};
  for (const op of ["pause", "delete"]) {
    try { await client[op](job); codes[op] = "allowed"; } catch (err) { codes[op] = err.code; }
  }
  await client.close();
  return codes;
}"""


async def test_a_worker_token_in_a_page_cannot_pause_or_delete(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """A page holding a worker token does the job's work, but its client gets
    `unauthorized` for pause and delete, and the job carries on."""
    write_input(data_dir, [f"line {i}" for i in range(100)])
    server = await web_server(token="master-secret")
    await start_job(server, "stats", token="admin-secret", master="master-secret",
                    batch_size=10)
    async with AsyncPlanchetClient(ws_url(server), "admin-secret") as admin:
        grant = await admin.grant_token(["stats"], label="volunteers")
    worker_token = grant["token"]

    tab = await Tab.open(browser, worker_url(server, "stats", token=worker_token))
    assert worker_token not in tab.page.url  # the page takes it out of the address
    codes = await tab.page.evaluate(ADMIN_ATTEMPTS, [ws_url(server), "stats", worker_token])
    assert codes == {"pause": "unauthorized", "delete": "unauthorized"}
    await tab.wait("p.state === 'done'")
    assert sorted(output(data_dir)) == list(range(100))
    assert (await report(server, "stats", "admin-secret"))["state"] == "done"


BIG_ITEM_WORDS = 35_000  # about 300 KB of text per item
CAP = 2**20


async def test_batches_over_the_byte_cap_are_split(
        browser: BrowserContext, web_server: WebServer, data_dir: Path) -> None:
    """Items of ~300 KB with a cap of 1 MiB per batch: every batch frame the page receives
    is under the cap (so a batch of 8 comes in several), and the output is exact."""
    texts = [" ".join(f"w{n}x{i}" for i in range(BIG_ITEM_WORDS)) for n in range(8)]
    write_input(data_dir, texts)
    server = await web_server()
    await start_job(server, "big", batch_size=8)
    page = await browser.new_page()
    frames: list[bytes] = []

    def watch(ws: WebSocket) -> None:
        ws.on("framereceived", lambda payload: frames.append(
            payload if isinstance(payload, bytes) else payload.encode()))

    page.on("websocket", watch)
    tab = Tab(page)
    await page.goto(worker_url(server, "big", max_batch_bytes=CAP))
    await tab.wait("p.state === 'done'")

    batches = [frame for frame in frames if orjson.loads(frame)["type"] == "batch"]
    assert all(len(frame) <= CAP for frame in batches), [len(f) for f in batches]
    assert sum(len(orjson.loads(frame)["items"]) for frame in batches) == 8
    assert len(batches) >= 3  # 8 items of ~300 KB: at most three fit under 1 MiB
    results = output(data_dir)
    assert sorted(results) == list(range(8))
    assert all(result["words"] == BIG_ITEM_WORDS for result in results.values())
    assert error_lines(data_dir) == []
