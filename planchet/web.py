"""The server's plain HTTP side, on the WebSocket port: JSON routes, files, TLS.

Every request without a WebSocket upgrade is answered here (``/health`` always is):

* ``/health``, ``/jobs/<name>`` (a job's report, open like the ``report`` message) and
  ``/metrics`` (Prometheus' text format, see ``metrics.py``);
* ``/`` (the dashboard), ``/worker`` (the worker page), ``/client.js`` (the JavaScript
  client's entry module), ``/client/<file>`` (the client's files), ``/web/<file>`` (the
  pages' own files) and ``/pages/<path>`` (``planchet serve --pages DIR``).

GET and HEAD only; anything else gets 405. The gate's origin policy decides who may read:
no ``Origin`` (a script), an allowed one (the answer then carries CORS headers), or a
foreign one (403 with the gate's reason). Files are served from their directory only: no
listing, no ``..``, no hidden names, no symlink that leads out. Every answer says
``Cache-Control: no-cache`` (a page and the client must change together) and closes the
connection.
"""

from __future__ import annotations

import asyncio
import email.utils
import http
import ssl
from pathlib import Path
from urllib.parse import unquote

import orjson
from websockets.asyncio.server import ServerConnection
from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from .config import Settings
from .dispatcher import Dispatcher
from .exceptions import PlanchetError
from .gate import Gate
from .metrics import CONTENT_TYPE as METRICS
from .metrics import registry, render
from .store import Store
from .version import __version__

ROOT = Path(__file__).parent / "web"  # package data: the dashboard, the worker page
CLIENT_DIR = ROOT / "client"  # a symlink to the top-level client/ in a checkout; a copy in wheels
CLIENT_ENTRY = b'export * from "./client/planchet.js";\n'  # /client.js: its imports resolve
PAGES = {"/": "index.html", "/worker": "worker.html"}
CLIENT_FILES = (".js", ".mjs", ".d.ts", "package.json")  # /client/ serves these, no subdirs
JS = "text/javascript; charset=utf-8"
JSON = "application/json"
TEXT = "text/plain; charset=utf-8"
CONTENT_TYPES = {
    ".js": JS, ".mjs": JS,
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".json": JSON,
    ".wasm": "application/wasm",
    ".png": "image/png",
    ".svg": "image/svg+xml",
    ".ico": "image/x-icon",
    ".jpg": "image/jpeg",
    ".webp": "image/webp",
    ".txt": TEXT,
    ".ts": TEXT,
    ".map": JSON,
}
BINARY = "application/octet-stream"

Answer = tuple[http.HTTPStatus, str, bytes]  # status, Content-Type, body
NOT_FOUND: Answer = (http.HTTPStatus.NOT_FOUND, TEXT, b"not found\n")  # never echoes the path


class Web:
    """Answers the HTTP requests of one server; ``respond`` is its ``process_request``."""

    def __init__(self, settings: Settings, gate: Gate, dispatcher: Dispatcher,
                 store: Store) -> None:
        self.gate = gate
        self.dispatcher = dispatcher
        self.store = store
        self.metrics = registry(dispatcher)  # GET /metrics, collected at scrape time
        self.roots: dict[str, tuple[Path, tuple[str, ...] | None]] = {
            "/web/": (ROOT, None), "/client/": (CLIENT_DIR, CLIENT_FILES)}
        if settings.pages_dir is not None:
            self.roots["/pages/"] = (settings.pages_dir, None)

    async def respond(self, connection: ServerConnection, request: Request) -> Response | None:
        """An upgrade goes to the gate (None lets it on); anything else is answered here."""
        path = request.path.split("?", 1)[0]
        if path != "/health" and _upgrade(request):
            return self.gate.admit(connection, request)
        if (refusal := self.gate.origin_refusal(request)) is not None:
            return _response(request, (http.HTTPStatus.FORBIDDEN, TEXT, refusal.encode()))
        if request.method not in ("GET", "HEAD"):
            response = _response(request, _text(http.HTTPStatus.METHOD_NOT_ALLOWED,
                                                f"{request.method} is not served here"))
            response.headers["Allow"] = "GET, HEAD"
            return response
        return _response(request, await self._answer(path))

    async def _answer(self, path: str) -> Answer:
        if path == "/health":
            return await self._health()
        if path.startswith("/jobs/"):
            return self._report(unquote(path[len("/jobs/"):]))
        if path == "/client.js":
            return http.HTTPStatus.OK, JS, CLIENT_ENTRY
        if path == "/metrics":
            return http.HTTPStatus.OK, METRICS, render(self.metrics)
        file = self._file(path)
        if file is None:
            return NOT_FOUND
        try:
            body = await asyncio.to_thread(file.read_bytes)
        except OSError:
            return NOT_FOUND
        return http.HTTPStatus.OK, content_type(file.name), body

    def _file(self, path: str) -> Path | None:
        """The file a static path names, or None (not a route, missing, or refused)."""
        if path in PAGES:
            return inside(ROOT, PAGES[path])
        for prefix, (root, suffixes) in self.roots.items():
            if path.startswith(prefix):
                name = unquote(path[len(prefix):])
                if suffixes is None or ("/" not in name and name.endswith(suffixes)):
                    return inside(root, name)
        return None

    async def _health(self) -> Answer:
        redis_ok = await self.store.ping()
        body = {
            "status": "ok" if redis_ok else "degraded",
            "redis": "online" if redis_ok else "offline",
            "version": __version__,
            "jobs": len(self.dispatcher.jobs),
            "jobs_done": sum(job.done for job in self.dispatcher.jobs.values()),
            "connections": len(self.dispatcher.sessions),
        }
        status = http.HTTPStatus.OK if redis_ok else http.HTTPStatus.SERVICE_UNAVAILABLE
        return status, JSON, orjson.dumps(body) + b"\n"

    def _report(self, name: str) -> Answer:
        job = self.dispatcher.jobs.get(name)
        if job is None:
            body = {"error": f"no job named {name!r}"}
            return http.HTTPStatus.NOT_FOUND, JSON, orjson.dumps(body) + b"\n"
        return http.HTTPStatus.OK, JSON, orjson.dumps(job.report()) + b"\n"


def inside(root: Path, name: str) -> Path | None:
    """``root/name`` if it is a file that really lies under ``root``, else None.

    Refused: an empty, ``.`` or ``..`` segment, any hidden name, a backslash or NUL (so an
    absolute or climbing path never reaches the file system), and a symlink leading out.
    """
    parts = name.split("/")
    if any(not part or part.startswith(".") or "\\" in part or "\0" in part
           for part in parts):
        return None
    try:
        base = root.resolve()
        file = base.joinpath(*parts).resolve()
    except (OSError, RuntimeError):  # a symlink loop
        return None
    return file if file.is_relative_to(base) and file.is_file() else None


def content_type(name: str) -> str:
    return CONTENT_TYPES.get(Path(name).suffix.lower(), BINARY)


def _upgrade(request: Request) -> bool:
    return any("websocket" in value.lower() for value in request.headers.get_all("Upgrade"))


def _text(status: http.HTTPStatus, text: str) -> Answer:
    return status, TEXT, (text + "\n").encode()


def _response(request: Request, answer: Answer) -> Response:
    """The full response (a HEAD gets the headers alone), CORS for an allowed Origin."""
    status, kind, body = answer
    headers = Headers([
        ("Date", email.utils.formatdate(usegmt=True)),
        ("Connection", "close"),
        ("Content-Type", kind),
        ("Content-Length", str(len(body))),
        ("Cache-Control", "no-cache"),
        ("X-Content-Type-Options", "nosniff"),
        ("Vary", "Origin"),
    ])
    origins = request.headers.get_all("Origin")  # past the gate's policy unless a 403
    if len(origins) == 1 and status != http.HTTPStatus.FORBIDDEN:
        headers["Access-Control-Allow-Origin"] = origins[0]
    return Response(status.value, status.phrase, headers,
                    b"" if request.method == "HEAD" else body)


def tls_context(settings: Settings) -> ssl.SSLContext | None:
    """The server's TLS context from ``tls_cert`` and ``tls_key``; None when TLS is off."""
    cert, key = settings.tls_cert, settings.tls_key
    if cert is None and key is None:
        return None
    if cert is None or key is None:
        given, missing = ("--tls-cert", "--tls-key") if key is None else ("--tls-key",
                                                                        "--tls-cert")
        raise PlanchetError(f"{given} needs {missing} too (or PLANCHET_TLS_CERT and "
                            f"PLANCHET_TLS_KEY): give both to serve wss://, or neither")
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    try:
        context.load_cert_chain(cert, key)
    except (OSError, ssl.SSLError) as exc:
        raise PlanchetError(f"cannot load the TLS certificate {cert} with the key {key}: "
                            f"{exc.strerror or exc}") from exc
    return context
