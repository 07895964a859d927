"""Fixtures of the browser tests: Debian's Chromium, headless, driven by Playwright.

Never a browser that Playwright downloads: ``/usr/bin/chromium`` (the Debian package
that ``scripts/setup.sh`` installs) with a fresh profile per test. Without it the
browser tests skip; with it they run.
"""

from __future__ import annotations

import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest
from playwright.async_api import BrowserContext, async_playwright

from planchet.server import PlanchetServer
from tests.support import REPO

CHROMIUM = Path("/usr/bin/chromium")
FLAGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
TEST_PAGES = Path(__file__).parent / "pages"
EXAMPLE = REPO / "examples" / "browser" / "textstats.js"


@pytest.fixture
async def browser(tmp_path: Path) -> AsyncIterator[BrowserContext]:
    """A headless Chromium with a fresh user data dir; its tabs are ``browser.new_page()``."""
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} is missing: bash scripts/setup.sh installs Debian's chromium")
    async with async_playwright() as playwright:
        context = await playwright.chromium.launch_persistent_context(
            tmp_path / "chromium-profile",
            executable_path=CHROMIUM,
            headless=True,
            args=FLAGS,
            viewport={"width": 900, "height": 780},
        )
        try:
            yield context
        finally:
            await context.close()


@pytest.fixture
def pages_dir(tmp_path: Path) -> Path:
    """What ``--pages`` serves at /pages/: the textstats example and the tests' own modules."""
    path = tmp_path / "pages"
    path.mkdir()
    shutil.copy(EXAMPLE, path)
    for module in TEST_PAGES.glob("*.js"):
        shutil.copy(module, path)
    return path


WebServer = Callable[..., Awaitable[PlanchetServer]]


@pytest.fixture
def web_server(make_server: Callable[..., Awaitable[PlanchetServer]],
               pages_dir: Path) -> WebServer:
    """Start a server that serves ``pages_dir`` at /pages/ (settings overrides as keywords)."""

    async def start(**overrides: object) -> PlanchetServer:
        return await make_server(pages_dir=pages_dir, **overrides)

    return start
