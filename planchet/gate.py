"""Who may open a WebSocket on the server: the origin policy and the connection caps.

Checked in ``process_request``, before the upgrade, so a refused client never gets a
session: a page from a foreign origin gets 403, an upgrade past the connection cap 503
with ``Retry-After``. Both bodies are plain text that says why and which flag changes it.
The same origin policy decides which pages may read the HTTP routes (CORS, in ``web.py``).
"""

from __future__ import annotations

import contextlib
import http
import ipaddress
import logging
from urllib.parse import urlsplit

from websockets.asyncio.server import ServerConnection
from websockets.http11 import Request, Response
from websockets.protocol import State

from .config import Settings

log = logging.getLogger("planchet")

RETRY_AFTER = 5  # seconds, in the Retry-After of a 503 past the connection cap
LOOPBACK_HOSTS = frozenset({"localhost", "127.0.0.1", "::1"})
FD_RESERVE = 256  # descriptors beyond the connections: Redis, job files, /health, refusals
FD_CEILING = 65536  # how far the soft RLIMIT_NOFILE is raised, unless more is needed


def peer(ws: ServerConnection) -> str:
    address = ws.remote_address
    return f"{address[0]}:{address[1]}" if address else "?"


class Gate:
    """Who may open a WebSocket: the origin policy first, then the connection caps.

    Every admitted connection counts until it closes; one that has not said hello yet
    is *pending*. When the pending cap is reached, or the total one while some are
    pending, the oldest pending connection is dropped to make room: a flood of idle
    sockets churns among itself and cannot lock out a client that says hello at once.
    Past ``max_connections`` greeted connections, an upgrade gets 503.
    """

    def __init__(self, settings: Settings) -> None:
        self.allowed = frozenset(_normal_origin(o) for o in settings.allow_origins)
        self.max_connections = max(1, settings.max_connections)
        self.max_pending = max(1, min(settings.max_pending_connections, self.max_connections))
        self.open: set[ServerConnection] = set()
        self.pending: dict[ServerConnection, None] = {}  # oldest first

    def admit(self, connection: ServerConnection, request: Request) -> Response | None:
        """None to let the upgrade go on, else the HTTP response that refuses it."""
        if (refusal := self.origin_refusal(request)) is not None:
            log.info("refused a WebSocket: %s", refusal.strip())
            return connection.respond(http.HTTPStatus.FORBIDDEN, refusal)
        if len(self.pending) >= self.max_pending or len(self.open) >= self.max_connections:
            self._prune()
            if self.pending and (len(self.pending) >= self.max_pending
                                 or len(self.open) >= self.max_connections):
                self._evict(next(iter(self.pending)))
            if len(self.open) >= self.max_connections:
                return self._full(connection)
        self.open.add(connection)
        self.pending[connection] = None
        return None

    def origin_refusal(self, request: Request) -> str | None:
        """None if the request's page may use this server (or it names none), else why not.

        One decision for the WebSocket upgrade and for the CORS of the HTTP routes.
        """
        origins = request.headers.get_all("Origin")
        if not origins or (len(origins) == 1 and origin_allowed(
                origins[0], request.headers.get_all("Host"), self.allowed)):
            return None
        return _forbidden(origins)

    def greeted(self, connection: ServerConnection) -> None:
        self.pending.pop(connection, None)

    def closed(self, connection: ServerConnection) -> None:
        self.open.discard(connection)
        self.pending.pop(connection, None)

    def _prune(self) -> None:
        """Forget connections that closed without reaching the handler (a failed handshake)."""
        for connection in [c for c in self.open if c.state is State.CLOSED]:
            self.closed(connection)

    def _evict(self, connection: ServerConnection) -> None:
        log.info("dropped %s: no hello yet and %d connections wait for one",
                 peer(connection), len(self.pending))
        self.closed(connection)
        connection.transport.abort()

    def _full(self, connection: ServerConnection) -> Response:
        log.info("refused %s: %d connections open", peer(connection), len(self.open))
        response = connection.respond(
            http.HTTPStatus.SERVICE_UNAVAILABLE,
            f"This server already has {len(self.open)} open connections, its limit; try again "
            f"later. The operator can raise it with --max-connections.\n")
        response.headers["Retry-After"] = str(RETRY_AFTER)
        return response


def origin_allowed(origin: str | None, hosts: list[str], allowed: frozenset[str]) -> bool:
    """No Origin (a script), a loopback page, the server's own origin, or one allowed."""
    if origin is None or "*" in allowed:
        return True
    origin = _normal_origin(origin)
    if origin in allowed:
        return True
    try:
        parts = urlsplit(origin)
        hostname = parts.hostname
    except ValueError:
        return False
    if parts.scheme not in ("http", "https"):
        return False
    return hostname in LOOPBACK_HOSTS or (len(hosts) == 1 and _own_origin(parts.netloc, hosts[0]))


def _own_origin(netloc: str, host: str) -> bool:
    """The page was served from the address this request came to, named by IP.

    A name is not enough: a page on a foreign name that resolves to this server (DNS
    rebinding) would send a matching Host; names go in ``--allow-origin``.
    """
    if netloc != host.lower():
        return False
    try:
        ipaddress.ip_address(urlsplit(f"//{host}").hostname or "")
    except ValueError:
        return False
    return True


def _normal_origin(origin: str) -> str:
    return origin.strip().lower().rstrip("/")


def _forbidden(origins: list[str]) -> str:
    """Why a request with these Origin headers is refused (the 403's body)."""
    shown = ", ".join(repr(o) for o in origins)
    if len(origins) > 1:
        return f"A request may carry one Origin header, not {len(origins)} ({shown}).\n"
    return (f"Web pages from origin {shown} may not use this server (open a WebSocket or "
            f"read its HTTP routes). To allow them, start it with --allow-origin "
            f"{origins[0]} (or PLANCHET_ALLOW_ORIGIN).\n")


def raise_descriptor_limit(max_connections: int) -> None:
    """Raise the soft RLIMIT_NOFILE towards the hard one; warn if the connections won't fit."""
    try:
        import resource
    except ImportError:  # not on this platform
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = max(FD_CEILING, max_connections + FD_RESERVE)
    target = wanted if hard == resource.RLIM_INFINITY else min(hard, wanted)
    if target > soft:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
    if max_connections + FD_RESERVE > soft:
        log.warning("max_connections %d does not fit under the limit of %d open files with "
                    "%d to spare; lower --max-connections or raise `ulimit -n`",
                    max_connections, soft, FD_RESERVE)
