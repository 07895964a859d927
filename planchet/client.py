"""The blocking client: the original Planchet's API over one persistent WebSocket.

``PlanchetClient`` keeps the shape of the original scripts (``start_job``, then
``get``/``send`` until ``get`` returns ``[]``) but errors raise a ``PlanchetError``
instead of returning ``None``, and a dropped connection is re-opened with backoff.
Items a worker held when its connection dropped were requeued by the server; their
results sent later are dropped there (and counted in the return value), never written
twice.
"""

from __future__ import annotations

import collections
import itertools
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Any, TypeVar

import orjson
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from . import __version__
from .exceptions import (
    ConnectionLost,
    JobNotFound,
    PlanchetError,
    ProtocolError,
    Unavailable,
    error_from_code,
)
from .messages import (
    PROTOCOL_VERSION,
    Ack,
    Batch,
    Credit,
    Error,
    Event,
    Hello,
    ItemError,
    JobCommand,
    Message,
    Reply,
    Result,
    ServerCommand,
    ServerMessage,
    StartJob,
    Welcome,
    decode_server,
    encode,
)

DEFAULT_URL = "ws://127.0.0.1:5005"
T = TypeVar("T")


def websocket_url(url: str) -> str:
    """Accept the original's ``http://host:port`` as well as ``ws://`` URLs."""
    url = url.strip()
    for old, new in (("http://", "ws://"), ("https://", "wss://")):
        if url.startswith(old):
            return new + url[len(old):]
    return url if "://" in url else "ws://" + url


def backoff_delays(retries: int, base: float = 0.25, cap: float = 5.0) -> Iterator[float]:
    """0, base, 2*base, ... capped: how long to wait before each connection attempt."""
    yield 0.0
    for n in range(retries):
        yield min(cap, base * 2**n)


def group_by_lease(
    ids: Iterable[int], leases: dict[int, str]
) -> dict[str | None, list[int]]:
    """Which lease each id came in (``None`` for ids never leased to this client)."""
    groups: dict[str | None, list[int]] = collections.defaultdict(list)
    for i in ids:
        groups[leases.get(i)].append(i)
    return groups


def hello_message(token: str | None) -> Hello:
    return Hello(protocol=PROTOCOL_VERSION, token=token, client=f"planchet-python {__version__}")


class PlanchetClient:
    """A blocking client. One instance holds one connection; use one per thread."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        retries: int = 8,
        timeout: float | None = None,
    ) -> None:
        self.url = websocket_url(url)
        self.token = token
        self.retries = retries
        self.timeout = timeout  # seconds to wait for any one reply; None waits for ever
        self._ws: ClientConnection | None = None
        self._ids = itertools.count(1)
        self._reset()

    def _reset(self) -> None:
        """Forget per-connection state: the server requeued this connection's leases."""
        self._batches: dict[str, collections.deque[Batch]] = collections.defaultdict(
            collections.deque)
        self._leases: dict[str, dict[int, str]] = collections.defaultdict(dict)  # job->id->lease
        self._credit: dict[str, tuple[int, int]] = {}
        self._done: set[str] = set()
        self._deleted: set[str] = set()
        self._inbox: dict[Any, Message] = {}

    # --- connection ---------------------------------------------------------------------

    def _connection(self) -> ClientConnection:
        if self._ws is not None:
            return self._ws
        last: Exception | None = None
        for delay in backoff_delays(self.retries):
            time.sleep(delay)
            try:
                ws = connect(self.url, max_size=None, open_timeout=10, close_timeout=2,
                             legacy=True)
            except (OSError, TimeoutError, ConnectionClosed) as exc:
                last = exc
                continue
            ws.send(encode(hello_message(self.token)))
            reply = decode_server(ws.recv(timeout=30))
            if isinstance(reply, Error):
                ws.close()
                raise error_from_code(reply.code, reply.message)
            if not isinstance(reply, Welcome):
                raise ProtocolError(f"expected welcome, got {reply.type!r}")
            self._ws = ws
            return ws
        raise ConnectionLost(f"cannot reach {self.url}: {last}")

    def close(self) -> None:
        if self._ws is not None:
            self._ws.close()
            self._ws = None
        self._reset()

    def __enter__(self) -> PlanchetClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _send(self, message: Message) -> None:
        self._connection().send(encode(message))

    def _receive(self) -> None:
        """Read one frame and file it: batches and events by job, replies and acks by key."""
        assert self._ws is not None
        msg: ServerMessage = decode_server(self._ws.recv(timeout=self.timeout))
        match msg:
            case Batch():
                self._batches[msg.job].append(msg)
            case Event(event="done"):
                self._done.add(msg.job)
            case Event(event="deleted"):
                self._deleted.add(msg.job)
            case Reply() | Error() if msg.id is not None:
                self._inbox[msg.id] = msg
            case Ack():
                self._inbox[("ack", msg.job, msg.lease)] = msg
            case Error():
                raise error_from_code(msg.code, msg.message)

    def _await(self, key: Any) -> Message:
        while key not in self._inbox:
            self._receive()
        return self._inbox.pop(key)

    def _retrying(self, action: Callable[[], T]) -> T:
        """Run ``action`` on a live connection, re-opening it once if it drops.

        A dropped connection's leases were requeued by the server, so its state here
        is forgotten before the second try.
        """
        try:
            return action()
        except (ConnectionClosed, OSError):
            self._drop()
        try:
            return action()
        except (ConnectionClosed, OSError) as exc:
            self._drop()
            raise ConnectionLost(f"connection to {self.url} lost: {exc}") from exc

    def _drop(self) -> None:
        self._ws = None
        self._reset()

    def _request(self, message: Message) -> Any:
        def call() -> Any:
            self._send(message)
            reply = self._await(message.id)  # type: ignore[attr-defined]
            if isinstance(reply, Error):
                raise error_from_code(reply.code, reply.message)
            return reply.data  # type: ignore[attr-defined]

        return self._retrying(call)

    # --- the original API ---------------------------------------------------------------

    def start_job(
        self,
        job_name: str,
        metadata: dict[str, Any],
        reader_name: str | None = None,
        writer_name: str | None = None,
        clean_start: bool = False,
        token: str | None = None,
        mode: str = "read-write",
        **options: Any,
    ) -> dict[str, Any]:
        """Start a job, or resume it if it exists with the same spec; returns its report.

        ``options``: ``batch_size``, ``lease_timeout``, ``max_attempts``.
        """
        options.pop("retries", None)  # the original's HTTP retry count; not needed now
        message = StartJob(
            id=next(self._ids), job=job_name, reader=reader_name, writer=writer_name,
            metadata=metadata, mode=mode, clean_start=clean_start,  # type: ignore[arg-type]
            token=token or self.token, **options,
        )
        return self._request(message)

    def get(self, job_name: str, n_items: int = 100, token: str | None = None) -> list[Any]:
        """The next batch of ``(id, item)`` pairs; ``[]`` once the job is done.

        Blocks while every remaining item is leased to other workers: if one of them
        dies, its items come here instead of being lost.
        """
        return self._retrying(lambda: self._get(job_name, n_items, token))

    def _get(self, job: str, n_items: int, token: str | None) -> list[Any]:
        queue = self._batches[job]
        while not queue and job not in self._done:
            if job in self._deleted:
                self._deleted.discard(job)
                self._credit.pop(job, None)
                raise JobNotFound(f"job {job} was deleted")
            held = len(set(self._leases[job].values()))
            wanted = (held + 1, n_items)
            if self._credit.get(job) != wanted:
                self._send(Credit(job=job, batches=wanted[0], batch_size=n_items,
                                  token=token or self.token))
                self._credit[job] = wanted
            try:
                self._receive()
            except PlanchetError:  # e.g. a refused credit: send it again next time
                self._credit.pop(job, None)
                raise
        if not queue:
            return []
        batch = queue.popleft()
        self._leases[job].update((i, batch.lease) for i, _ in batch.items)
        return [tuple(pair) for pair in batch.items]

    def send(
        self, job_name: str, items: list[Any], token: str | None = None, overwrite: bool = False
    ) -> dict[str, int]:
        """Send results ``[(id, result), ...]``; returns what became of them."""
        results = {int(i): item for i, item in items}
        return self._settle(job_name, results, {}, token)

    def mark_errors(
        self, job_name: str, ids: list[int], token: str | None = None, message: str = ""
    ) -> dict[str, int]:
        """Give up on these items: they go to the job's error file, not back to the queue."""
        errors = {int(i): message or "marked as an error by the worker" for i in ids}
        return self._settle(job_name, {}, errors, token, retry=False)

    def _settle(self, job: str, results: dict[int, Any], errors: dict[int, str],
                token: str | None, retry: bool = True) -> dict[str, int]:
        leases = self._leases[job]
        groups = group_by_lease([*results, *errors], leases)
        total = collections.Counter({"written": 0, "retried": 0, "failed": 0, "dropped": 0})
        for lease, ids in groups.items():
            message = Result(
                job=job, lease=lease, token=token or self.token,
                items=[(i, results[i]) for i in ids if i in results],
                errors=[ItemError(id=i, message=errors[i], retry=retry)
                        for i in ids if i in errors],
            )
            try:
                ack = self._retrying(lambda m=message: self._ack(m))
            except Unavailable:  # not taken: the items are requeued when the job reloads
                ack = Ack(job=job, lease=lease, dropped=len(ids))
            for i in ids:
                leases.pop(i, None)
            total.update(ack.model_dump(include={"written", "retried", "failed", "dropped"}))
        return dict(total)

    def _ack(self, message: Result) -> Ack:
        self._send(message)
        key = ("ack", message.job, message.lease)
        while key not in self._inbox:
            self._receive()  # an error frame for this result raises here
        return self._inbox.pop(key)  # type: ignore[return-value]

    def get_job_report(self, job_name: str, token: str | None = None) -> dict[str, Any]:
        return self._command("report", job_name, token)

    def pause_job(self, job_name: str, token: str | None = None) -> dict[str, Any]:
        return self._command("pause", job_name, token)

    def resume_job(self, job_name: str, token: str | None = None) -> dict[str, Any]:
        return self._command("resume", job_name, token)

    def delete_job(self, job_name: str, token: str | None = None, **_: Any) -> dict[str, Any]:
        """Forget the job; its output and error files stay on disk."""
        return self._command("delete", job_name, token)

    def clean_job(self, job_name: str, token: str | None = None, **_: Any) -> dict[str, Any]:
        """Start the job again from the top, with its output file emptied."""
        return self._command("clean", job_name, token)

    def list_jobs(self, token: str | None = None) -> list[dict[str, Any]]:
        return self._request(ServerCommand(type="jobs", id=next(self._ids),
                                           token=token or self.token))

    def purge_server(self, master_token: str | None = None, **_: Any) -> dict[str, Any]:
        """Delete every job (files stay on disk)."""
        return self._request(ServerCommand(type="purge", id=next(self._ids),
                                           token=master_token or self.token))

    def check(self) -> dict[str, Any]:
        """The server's ``GET /health``: Redis status and job counts."""
        scheme, rest = self.url.split("://", 1)
        host = rest.split("/", 1)[0]
        url = f"{'https' if scheme == 'wss' else 'http'}://{host}/health"
        try:
            with urllib.request.urlopen(url, timeout=10) as response:
                return orjson.loads(response.read())
        except urllib.error.HTTPError as exc:  # 503: Redis is down; the body says so
            return orjson.loads(exc.read())
        except OSError as exc:
            raise ConnectionLost(f"cannot reach {self.url}: {exc}") from exc

    def _command(self, op: str, job: str, token: str | None) -> Any:
        return self._request(JobCommand(type=op, id=next(self._ids), job=job,  # type: ignore[arg-type]
                                        token=token or self.token))


__all__ = ["DEFAULT_URL", "PlanchetClient", "PlanchetError"]
