"""What both Python clients share about reaching a server: URLs, TLS, which failures
are worth another attempt, and how a ``with`` block's end closes the connection."""

from __future__ import annotations

import ssl
from typing import Any

from websockets.exceptions import InvalidStatus, InvalidURI, WebSocketException

from .exceptions import AuthError, CircuitOpen, ConnectionLost, PlanchetError
from .session import ClientSession

DEFAULT_URL = "ws://127.0.0.1:5005"
FAILURES = (OSError, TimeoutError, WebSocketException)  # what a connection attempt may raise


def websocket_url(url: str) -> str:
    """Accept the original's ``http://host:port`` as well as ``ws://`` URLs."""
    url = url.strip()
    for old, new in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(old):
            return new + url[len(old):]
    return url if "://" in url else "ws://" + url


def refusal(url: str, exc: Exception) -> PlanchetError | None:
    """The error to raise for a failed connection attempt; None if it is worth retrying.

    Network errors, an EOF or garbage during the handshake, a close before the welcome,
    429 and 5xx (the server is restarting or overloaded) are retried; 401 and 403 (a
    refused origin or credentials) and any other status are final.
    """
    if isinstance(exc, InvalidURI):
        return ConnectionLost(f"invalid URL {url!r}: {exc}")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return ConnectionLost(
            f"{url}: the server's TLS certificate is not trusted ({exc.verify_message}); "
            f"pass ssl=ssl.create_default_context(cafile=...) (planchet: --ca-file)")
    if isinstance(exc, ssl.SSLError) and not isinstance(exc, ssl.SSLEOFError):
        return ConnectionLost(f"TLS with {url} failed: {exc.reason or exc}")
    if not isinstance(exc, InvalidStatus):
        return None
    status = exc.response.status_code
    if status == 429 or status >= 500:
        return None
    body = exc.response.body.decode("utf-8", "replace").strip()[:200] if exc.response.body else ""
    text = f"{url} refused the connection: HTTP {status}{': ' + body if body else ''}"
    return AuthError(text) if status in (401, 403) else ConnectionLost(text)


def forget_released(session: ClientSession, job: str, lease: str, ids: list[int] | None) -> None:
    """The released items of ``lease`` are no longer held here (None: all of them)."""
    held = session.held[job]
    if ids is None:
        held.pop(lease, None)
    elif lease in held:
        held[lease].difference_update(ids)
        if not held[lease]:
            del held[lease]


def tls_options(url: str, context: ssl.SSLContext | None) -> dict[str, Any]:
    """``connect``'s ``ssl`` argument: the caller's context, for wss:// URLs only."""
    return {"ssl": context} if context is not None and url.startswith("wss://") else {}


def retry_after(exc: Exception) -> float:
    """The seconds a 429 or 503 response asks the client to wait (0 if it does not say)."""
    if not isinstance(exc, InvalidStatus):
        return 0.0
    try:
        return max(0.0, float(exc.response.headers.get("Retry-After", 0)))
    except ValueError:  # an HTTP date: the backoff will do
        return 0.0


def close_code(exc_type: type[BaseException] | None) -> tuple[int, str]:
    """How a ``with`` block's end closes the connection.

    1000 for a normal end and 1001 for a stop (Ctrl-C, exit, cancel): the server
    requeues the leases without charging an attempt. 1011 when the worker's code
    raised: the server charges the attempt, so a poison item reaches the error file.
    1000 too when the worker's circuit breaker stopped it: it failed what it worked on
    already, and the batches it holds were not its fault.
    """
    if exc_type is None:
        return 1000, ""
    if issubclass(exc_type, CircuitOpen):
        return 1000, "worker stopped: circuit open"
    if not issubclass(exc_type, Exception):
        return 1001, "worker stopped"
    return 1011, f"worker failed: {exc_type.__name__}"[:123]
