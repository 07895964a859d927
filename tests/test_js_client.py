"""The JavaScript client's own tests (``node --test``), against a real server.

The node tests read the server under test from the environment: ``PLANCHET_URL``, and
``PLANCHET_DATA_DIR`` where they write their inputs and read the outputs (see
``client/test/support.js``). They run twice: over Node's built-in WebSocket (undici,
``--experimental-websocket`` on Node 20) and over the ``ws`` package (``npm ci`` in
``client/``).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path

import pytest

from planchet.server import PlanchetServer
from tests.support import REPO, clean_env

CLIENT = REPO / "client"
NODE = shutil.which("node")
pytestmark = pytest.mark.skipif(NODE is None, reason="node is not installed")


def node_major() -> int:
    assert NODE is not None
    out = subprocess.run([NODE, "--version"], capture_output=True, text=True, check=True).stdout
    return int(out.strip().lstrip("v").split(".")[0])


def socket_args(socket: str) -> list[str]:
    """Node's flags that pick the WebSocket the client finds: the global one, or ``ws``."""
    if socket == "ws":
        if not (CLIENT / "node_modules" / "ws").is_dir():
            pytest.fail("the ws package is missing: run `npm ci` in client/", pytrace=False)
        # Node 22+ has a global WebSocket, which the client would take instead
        return ["--no-experimental-websocket"] if node_major() >= 22 else []
    return ["--experimental-websocket"] if node_major() < 22 else []


async def run_node(args: list[str], env: dict[str, str]) -> tuple[int, str]:
    """Run node in ``client/`` while this event loop serves the server; code and output."""
    assert NODE is not None
    proc = await asyncio.create_subprocess_exec(
        NODE, *args, cwd=CLIENT, env=env, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT)
    out, _ = await proc.communicate()
    return proc.returncode or 0, out.decode(errors="replace")


@pytest.mark.timeout(300)
@pytest.mark.parametrize("socket", ["undici", "ws"])
async def test_js_client(socket: str, make_server: Callable[..., Awaitable[PlanchetServer]],
                         data_dir: Path) -> None:
    """The JS client's unit and integration tests pass against a real server, both sockets."""
    server = await make_server()
    env = clean_env() | {"PLANCHET_URL": f"ws://127.0.0.1:{server.port}/",
                         "PLANCHET_DATA_DIR": str(data_dir)}
    tests = sorted(str(p.relative_to(CLIENT)) for p in (CLIENT / "test").glob("*.test.js"))
    code, out = await run_node([*socket_args(socket), "--test", *tests], env)
    if code != 0 or "# fail 0" not in out or "# skipped 0" not in out:
        pytest.fail(f"node --test failed ({socket}, exit {code}):\n{out}", pytrace=False)
