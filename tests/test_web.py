"""The server's HTTP side over real sockets: CORS, the JSON routes, static files, TLS.

Requests are written by hand on a raw socket, so a test sees exactly the status, the
headers and the body the server sent, and paths such as ``/pages/../x`` reach the server
unnormalised.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import shutil
import ssl
import subprocess
import sys
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import orjson
import pytest
from websockets.asyncio.client import connect

from planchet.aclient import AsyncPlanchetClient
from planchet.cli import main
from planchet.client import PlanchetClient
from planchet.codec import encode
from planchet.exceptions import ConnectionLost
from planchet.messages import PROTOCOL_VERSION, Hello, Welcome
from planchet.server import PlanchetServer
from planchet.web import CLIENT_ENTRY
from tests.support import clean_env
from tests.test_server import recv, url_of
from tests.test_server_guard import EVIL

WAIT = 20.0  # seconds: a bound on waiting for what must happen, never a threshold
ALLOWED = "https://ops.example"
SECRET = "TOP SECRET: outside the pages directory\n"
META = {"input_file_path": "news.jsonl", "output_file_path": "out.jsonl"}

MakeServer = Callable[..., Awaitable[PlanchetServer]]


@dataclasses.dataclass
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: bytes

    def json(self) -> Any:
        return orjson.loads(self.body)


async def fetch(port: int, path: str, method: str = "GET", **headers: str) -> Answer:
    """One HTTP/1.1 request, written byte for byte; the answer read until the server closes."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    fields = {"Host": f"127.0.0.1:{port}", **headers}
    head = f"{method} {path} HTTP/1.1\r\n" + "".join(f"{k}: {v}\r\n" for k, v in fields.items())
    writer.write((head + "\r\n").encode())
    try:
        raw = await asyncio.wait_for(reader.read(), WAIT)
    finally:
        writer.close()
    top, _, body = raw.partition(b"\r\n\r\n")
    status_line, *lines = top.decode().split("\r\n")
    parsed = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines)}
    return Answer(int(status_line.split()[1]), parsed, body)


@pytest.fixture
def pages(tmp_path: Path) -> Path:
    """A --pages directory with one file of each served type, a subdirectory, a hidden file,
    and symlinks that lead out of it (to ``tmp_path/secret.txt`` and ``tmp_path/outside``)."""
    root = tmp_path / "pages"
    (root / "sub").mkdir(parents=True)
    for name in ("work.js", "lib.mjs", "page.html", "style.css", "data.json", "model.wasm",
                 "logo.png", "logo.svg", "sub/deep.js", ".env"):
        (root / name).write_text(f"content of {name}\n")
    (tmp_path / "secret.txt").write_text(SECRET)
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "secret.txt").write_text(SECRET)
    (root / "out.txt").symlink_to(tmp_path / "secret.txt")
    (root / "link").symlink_to(tmp_path / "outside")
    return root


# --- CORS on the JSON routes ------------------------------------------------------------


@pytest.mark.parametrize("path", ["/health", "/jobs/nope"])
async def test_an_allowed_origin_gets_cors_headers(make_server: MakeServer, path: str) -> None:
    """/health and /jobs/NAME name an allowed or loopback Origin back, with Vary: Origin."""
    server = await make_server(allow_origins=(ALLOWED,))
    for origin in (ALLOWED, "http://localhost:8000"):
        answer = await fetch(server.port, path, Origin=origin)
        assert answer.headers["access-control-allow-origin"] == origin
        assert answer.headers["vary"] == "Origin"
        assert answer.headers["content-type"] == "application/json"


@pytest.mark.parametrize("path", ["/health", "/jobs/nope"])
async def test_no_origin_gets_no_cors_header(server: PlanchetServer, path: str) -> None:
    """A script (no Origin) reads the JSON routes, with no Access-Control header."""
    answer = await fetch(server.port, path)
    assert "access-control-allow-origin" not in answer.headers
    assert answer.json()


@pytest.mark.parametrize("path", ["/health", "/jobs/nope", "/client.js", "/"])
async def test_a_foreign_origin_is_refused(server: PlanchetServer, path: str) -> None:
    """A page on a foreign origin gets 403 with the gate's reason, and no CORS header."""
    answer = await fetch(server.port, path, Origin=EVIL)
    assert answer.status == 403
    assert "access-control-allow-origin" not in answer.headers
    assert EVIL in answer.body.decode() and "--allow-origin" in answer.body.decode()


async def test_a_jobs_report_and_an_unknown_job(
    server: PlanchetServer, headlines: str
) -> None:
    """/jobs/NAME answers the job's report; an unknown name 404 with a JSON error."""
    async with AsyncPlanchetClient(url_of(server)) as client:
        await client.start_job("news-1.headlines", {**META, "input_file_path": headlines},
                               "JsonlReader", "JsonlWriter")
    answer = await fetch(server.port, "/jobs/news%2D1.headlines")
    assert answer.status == 200
    assert answer.json()["job"] == "news-1.headlines" and answer.json()["state"] == "running"
    missing = await fetch(server.port, "/jobs/missing")
    assert missing.status == 404 and "missing" in missing.json()["error"]


# --- static files -------------------------------------------------------------------------


async def test_the_landing_page_and_the_client_entry(server: PlanchetServer) -> None:
    """GET / is the landing page; /client.js re-exports client/planchet.js as JavaScript."""
    page = await fetch(server.port, "/")
    assert page.status == 200 and page.headers["content-type"] == "text/html; charset=utf-8"
    assert b"<title>Planchet</title>" in page.body and b"/worker?job=" in page.body
    assert page.headers["cache-control"] == "no-cache"
    entry = await fetch(server.port, "/client.js")
    assert entry.headers["content-type"] == "text/javascript; charset=utf-8"
    assert entry.body == CLIENT_ENTRY and b"./client/planchet.js" in entry.body
    client = await fetch(server.port, "/client/package.json")
    assert client.status == 200 and client.headers["content-type"] == "application/json"


LOADS = rb'(?:href|src)="(/[^"?#]+)"|from "(/[^"]+)"|Worker\("(/[^"]+)"|URL\("(/[^"]+)"'


async def test_every_file_the_pages_name_is_served(server: PlanchetServer) -> None:
    """Each /web/ file the dashboard and the worker page load (styles, scripts, modules
    they import) is served: a page never ships pointing at a file left out of the tree."""
    seen: set[str] = set()
    todo = ["/", "/worker"]
    while todo:
        path = todo.pop()
        answer = await fetch(server.port, path)
        assert answer.status == 200, path
        if path == "/client.js":
            continue  # the client's own modules are client/'s (tests/test_js_client.py)
        for found in re.findall(LOADS, answer.body):
            name = next(group for group in found if group).decode()
            if name not in seen:
                seen.add(name)
                todo.append(name)
    assert {"/web/theme.css", "/web/dashboard.css", "/web/dashboard.js", "/web/chart.js",
            "/web/worker.css", "/web/worker.js", "/web/runner.js", "/client.js"} <= seen


@pytest.mark.parametrize(("name", "kind"), [
    ("work.js", "text/javascript; charset=utf-8"), ("lib.mjs", "text/javascript; charset=utf-8"),
    ("page.html", "text/html; charset=utf-8"), ("style.css", "text/css; charset=utf-8"),
    ("data.json", "application/json"), ("model.wasm", "application/wasm"),
    ("logo.png", "image/png"), ("logo.svg", "image/svg+xml"), ("sub/deep.js",
                                                               "text/javascript; charset=utf-8"),
])
async def test_pages_are_served_with_their_type(
    make_server: MakeServer, pages: Path, name: str, kind: str
) -> None:
    """--pages files come back whole, with their content type and Cache-Control: no-cache."""
    server = await make_server(pages_dir=pages)
    answer = await fetch(server.port, f"/pages/{name}")
    assert answer.status == 200
    assert answer.headers["content-type"] == kind
    assert answer.headers["cache-control"] == "no-cache"
    assert answer.body == (pages / name).read_bytes()


@pytest.mark.parametrize("path", [
    "/pages/../secret.txt", "/pages/%2e%2e/secret.txt", "/pages/%2E%2E%2Fsecret.txt",
    "/pages/sub/../../secret.txt", "/pages/sub/%2e%2e/%2e%2e/secret.txt",
    "/pages//etc/passwd", "/pages/%2Fetc%2Fpasswd", "/pages/..%5Csecret.txt",
    "/pages/out.txt", "/pages/link/secret.txt", "/pages/.env", "/pages/", "/pages/sub",
    "/pages/sub/", "/pages/nothing.js", "/web/client/package.json", "/web/../web.py",
    "/client/node_modules/ws/index.js", "/client/../pyproject.toml", "/client/README.md",
    "/nothing", "/favicon.ico",
])
async def test_no_path_leads_out_of_a_served_directory(
    make_server: MakeServer, pages: Path, path: str
) -> None:
    """Climbing (plain or encoded), absolute paths, symlinks out, hidden files, directories
    and unknown paths all get 404, and never a byte of the file."""
    server = await make_server(pages_dir=pages)
    answer = await fetch(server.port, path)
    assert answer.status == 404
    assert answer.body == b"not found\n"


async def test_pages_need_the_pages_flag(server: PlanchetServer) -> None:
    """Without --pages, /pages/ serves nothing."""
    assert (await fetch(server.port, "/pages/work.js")).status == 404


async def test_head_and_other_methods(make_server: MakeServer, pages: Path) -> None:
    """HEAD gets the GET's headers and no body; POST gets 405 naming GET and HEAD."""
    server = await make_server(pages_dir=pages)
    head = await fetch(server.port, "/pages/work.js", method="HEAD")
    assert head.status == 200 and head.body == b""
    assert head.headers["content-length"] == str(len((pages / "work.js").read_bytes()))
    post = await fetch(server.port, "/health", method="POST", **{"Content-Length": "0"})
    assert post.status == 405 and post.headers["allow"] == "GET, HEAD"


async def test_an_upgrade_on_any_path_still_opens_a_session(server: PlanchetServer) -> None:
    """A WebSocket upgrade on a static path (/worker, /pages/x, /client.js) is a session."""
    for path in ("/worker", "/pages/x.js", "/client.js"):
        ws = await connect(f"{url_of(server)}{path}", max_size=None)
        await ws.send(encode(Hello(protocol=PROTOCOL_VERSION, client="tests")))
        assert isinstance(await recv(ws), Welcome)
        await ws.close()


# --- TLS ----------------------------------------------------------------------------------


@pytest.fixture
def certificate(tmp_path: Path) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 and localhost, made with the openssl command."""
    if shutil.which("openssl") is None:
        pytest.fail("the openssl command is needed to make a test certificate", pytrace=False)
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
         "-nodes", "-days", "2", "-subj", "/CN=localhost", "-keyout", str(key), "-out",
         str(cert), "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost"],
        check=True, capture_output=True, timeout=WAIT)
    return cert, key


def run_sync_job(url: str, context: ssl.SSLContext) -> int:
    """Start the news job with the blocking client and echo it to the end; items written."""
    with PlanchetClient(url, ssl=context, retries=2) as client:
        client.start_job("news", META, "JsonlReader", "JsonlWriter", batch_size=50)
        assert client.check()["status"] == "ok"  # GET /health over https
        written = 0
        while batch := client.get("news", 50):
            written += client.send("news", batch)["written"]
    return written


async def test_python_clients_work_over_wss(
    make_server: MakeServer, certificate: tuple[Path, Path], headlines: str, data_dir: Path
) -> None:
    """With --tls-cert/--tls-key both Python clients finish jobs over wss:// trusting the cert."""
    cert, key = certificate
    server = await make_server(tls_cert=cert, tls_key=key)
    url = f"wss://127.0.0.1:{server.port}"
    context = ssl.create_default_context(cafile=str(cert))
    assert await asyncio.to_thread(run_sync_job, url, context) == 200
    async with AsyncPlanchetClient(url, ssl=context, retries=2) as client:
        await client.start_job("news-again", {**META, "output_file_path": "again.jsonl"},
                               "JsonlReader", "JsonlWriter", batch_size=50)
        written = 0
        async for batch in client.batches("news-again"):
            written += (await batch.ack(batch.items)).written
    assert written == 200
    assert len((data_dir / "again.jsonl").read_bytes().splitlines()) == 200


async def test_an_untrusted_certificate_is_a_clear_error(
    make_server: MakeServer, certificate: tuple[Path, Path]
) -> None:
    """A client that does not trust the certificate gets ConnectionLost saying so, at once."""
    cert, key = certificate
    server = await make_server(tls_cert=cert, tls_key=key)
    url = f"wss://127.0.0.1:{server.port}"
    with pytest.raises(ConnectionLost, match="certificate is not trusted") as caught:
        await AsyncPlanchetClient(url, retries=8).connect()
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)

    def sync() -> None:
        PlanchetClient(url, retries=8).list_jobs()

    with pytest.raises(ConnectionLost, match="certificate is not trusted"):
        await asyncio.to_thread(sync)


@pytest.mark.parametrize("flags", [["--tls-cert", "cert.pem"], ["--tls-key", "key.pem"],
                                   ["--tls-cert", "missing.pem", "--tls-key", "key.pem"]])
def test_serve_refuses_half_a_tls_setup(
    certificate: tuple[Path, Path], redis_url: str, data_dir: Path, flags: list[str]
) -> None:
    """planchet serve with one TLS flag, or a file it cannot read, exits 1 saying why."""
    folder = certificate[0].parent
    args = [flag if flag.startswith("--") else str(folder / flag) for flag in flags]
    proc = subprocess.run(
        [sys.executable, "-m", "planchet", "serve", "--port", "0", "--redis", redis_url,
         "--data-dir", str(data_dir), *args],
        capture_output=True, text=True, env=clean_env(), timeout=60)
    assert proc.returncode == 1
    assert proc.stderr.startswith("planchet: error: ")
    assert ("needs --tls-key" in proc.stderr or "needs --tls-cert" in proc.stderr
            or "cannot load the TLS certificate" in proc.stderr)
    assert "Traceback" not in proc.stderr


async def test_client_commands_take_a_ca_file(
    make_server: MakeServer, certificate: tuple[Path, Path], capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch
) -> None:
    """planchet jobs trusts --ca-file (or $PLANCHET_CA_FILE); without it, a clear error."""
    cert, key = certificate
    server = await make_server(tls_cert=cert, tls_key=key)
    url = f"wss://127.0.0.1:{server.port}"
    assert await asyncio.to_thread(main, ["jobs", "--url", url, "--ca-file", str(cert)]) == 0
    monkeypatch.setenv("PLANCHET_CA_FILE", str(cert))
    assert await asyncio.to_thread(main, ["jobs", "--url", url, "--json"]) == 0
    assert capsys.readouterr().out.strip().endswith("[]")
    monkeypatch.delenv("PLANCHET_CA_FILE")
    assert await asyncio.to_thread(main, ["jobs", "--url", url]) == 1
    assert "certificate is not trusted" in capsys.readouterr().err
