"""The blocking client: the original Planchet's API over one persistent WebSocket.

``PlanchetClient`` keeps the shape of the original scripts (``start_job``, then
``get``/``send`` until ``get`` returns ``[]``) but errors raise a ``PlanchetError``
instead of returning ``None``, and a dropped connection is re-opened with backoff.
Items a worker held when its connection dropped were requeued by the server; their
results sent later are answered as dropped (and counted in the return value), never
written twice. The protocol state lives in a ``ClientSession`` (``session.py``), shared
with the asyncio client; this module moves frames between it and a blocking socket.
Nothing from ``websockets`` or ``OSError`` reaches the caller: connection trouble is
retried with backoff, then raised as ``ConnectionLost`` (or ``AuthError`` for a 401 or
403 refusal).
"""

from __future__ import annotations

import collections
import contextlib
import ssl
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from websockets.sync.client import ClientConnection, connect

from .codec import encode, make_result
from .connecting import (
    DEFAULT_URL,
    FAILURES,
    close_code,
    forget_released,
    refusal,
    retry_after,
    tls_options,
    websocket_url,
)
from .exceptions import (
    ConnectionLost,
    PlanchetError,
    ProtocolError,
    Unavailable,
)
from .messages import (
    Ack,
    Batch,
    Credit,
    Extend,
    Grant,
    Item,
    ItemError,
    JobCommand,
    Message,
    Release,
    Revoke,
    ServerCommand,
    StartJob,
    Tokens,
)
from .progress import ProgressOption, make_callback
from .session import MAX_FAILING_BATCHES, ClientSession, check_close, dropped

T = TypeVar("T")


@dataclass
class WorkBatch:
    """A leased batch from ``PlanchetClient.batches``; ``ack`` sends its results (all at
    once or in parts)."""

    client: PlanchetClient = field(repr=False)
    job: str
    lease: str
    items: list[Item]
    lease_timeout: float

    def ack(self, results: list[Item], errors: list[ItemError] | None = None) -> Ack:
        """Send the results and wait for the server's ack: what became of them."""
        return self.client.send_results(self.job, self.lease, results, errors)

    def ack_nowait(self, results: list[Item], errors: list[ItemError] | None = None) -> None:
        """Send the results and go on at once, without waiting for the server's ack (the
        fastest way to consume a job). The ack still counts for ``progress`` and the
        breaker; an error in its place ends ``batches`` with that error. Results that
        cannot be sent as JSON raise here, as ``ack`` would."""
        self.client.send_results_nowait(self.job, self.lease, results, errors)


class PlanchetClient:
    """A blocking client. One instance holds one connection; use one per thread."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        token: str | None = None,
        *,
        retries: int = 8,
        timeout: float | None = None,
        ssl: ssl.SSLContext | None = None,
        max_failing_batches: int = MAX_FAILING_BATCHES,
    ) -> None:
        self.url = websocket_url(url)
        self.token = token
        self.ssl = ssl  # for wss:// URLs: the TLS context (say, trusting a private CA)
        self.retries = retries  # failed connection attempts in a row before ConnectionLost
        self.timeout = timeout  # seconds to wait for any one reply; None waits for ever
        self._ws: ClientConnection | None = None
        # max_failing_batches: batches of a job in a row failed on every item (errors, nothing
        # written) after which ``get`` raises CircuitOpen; 0: never
        self._session = ClientSession(token, max_failing_batches=max_failing_batches)
        # which lease each item came in, across reconnects: a result for the lease of
        # an old connection is then answered as dropped, not sent as never leased
        self._leases: dict[str, dict[int, list[str]]] = collections.defaultdict(dict)

    # --- connection ---------------------------------------------------------------------

    def _connection(self) -> ClientConnection:
        if self._ws is None:
            self._ws = self._open()
        return self._ws

    def _open(self) -> ClientConnection:
        last: Exception | None = None
        hint = 0.0
        while (delay := self._session.next_delay(self.retries, hint)) is not None:
            time.sleep(delay)
            try:
                return self._handshake()
            except FAILURES as exc:
                if (final := refusal(self.url, exc)) is not None:
                    raise final from exc
                last, hint = exc, retry_after(exc)
        raise ConnectionLost(f"cannot reach {self.url}: {last}") from last

    def _handshake(self) -> ClientConnection:
        ws = connect(self.url, max_size=None, open_timeout=10, close_timeout=2, legacy=True,
                     **tls_options(self.url, self.ssl))
        try:
            ws.send(encode(self._session.hello()))
            self._session.welcome(ws.recv(timeout=30))
        except BaseException:
            ws.close()
            raise
        return ws

    def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection (1000: the server requeues what it held, uncharged)."""
        ws, self._ws = self._ws, None
        if ws is not None:
            with contextlib.suppress(*FAILURES):
                ws.close(code, reason)
        self._session.disconnected()

    def __enter__(self) -> PlanchetClient:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, *_: object) -> None:
        self.close(*close_code(exc_type))

    def _until(self, ready: Callable[[], T | None]) -> T:
        """Send what is queued and file frames until ``ready`` returns something.

        A dropped connection is re-opened with backoff; the session then sends again
        what is still pending, and answers results for old leases as dropped.
        """
        self._send_queued()
        while (value := ready()) is None:
            ws = self._connection()
            self._send_queued()  # what the welcome queued, or what ``ready`` asked for
            if self._ws is not ws:
                continue  # the connection dropped meanwhile
            try:
                frame = ws.recv(timeout=self.timeout)
            except TimeoutError as exc:
                self.close()
                raise ConnectionLost(f"no answer from {self.url} within {self.timeout} s") from exc
            except FAILURES:
                self._dropped(ws)
                continue
            self._session.receive(frame)
        return value

    def _send_queued(self) -> None:
        """Send what the session queued, if connected; a failure is left for the next
        wait to see (the session sends again what is pending on the next connection)."""
        ws = self._ws
        if ws is None or not self._session.outbox:
            return
        try:
            for frame in self._session.take_outbox():
                ws.send(frame)
        except FAILURES:
            self._dropped(ws)

    def _dropped(self, ws: ClientConnection) -> None:
        self._ws = None
        self._session.disconnected()
        check_close(ws.close_code)

    def _wait(self, key: int) -> Any:
        """The answer filed under ``key``; error answers raise."""
        try:
            return self._until(lambda: self._session.answer(key))
        except BaseException:
            self._session.abandon(key)
            raise

    def _request(self, message: Message) -> Any:
        reply = self._wait(self._session.request(message))
        return reply.data

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
            id=self._session.next_id(), job=job_name, reader=reader_name, writer=writer_name,
            metadata=metadata, mode=mode, clean_start=clean_start,  # type: ignore[arg-type]
            token=token or self.token, **options,
        )
        return self._request(message)

    def get(self, job_name: str, n_items: int = 100, token: str | None = None,
            progress: ProgressOption = None) -> list[Any]:
        """The next batch of ``(id, item)`` pairs; ``[]`` once the job is done.

        Blocks while every remaining item is leased to other workers: if one of them
        dies, its items come here instead of being lost. ``progress`` (pass it to every
        ``get`` of the loop): a function called with a ``Progress`` (this worker's
        counts, the job's total and ETA) when they moved, and once more when the job is
        done; True draws a ``tqdm`` bar.
        """
        session = self._session
        callback = make_callback(progress) if job_name not in session.trackers else None
        if callback is not None:
            session.track(job_name, callback, token or self.token)

        def ready() -> Batch | str | None:
            got = session.take_batch(job_name)  # a deleted job or a refused credit raises
            wanted = Credit(job=job_name, batches=session.held_leases(job_name) + 1,
                            batch_size=n_items, token=token or self.token)
            if got is None and session.credits.get(job_name) != wanted:
                session.credit(wanted)
            return got

        got = self._until(ready)
        session.progress(job_name, final=not isinstance(got, Batch))
        if not isinstance(got, Batch):
            return []
        leases = self._leases[job_name]
        for i, _ in got.items:
            leases.setdefault(i, []).append(got.lease)
        return [tuple(pair) for pair in got.items]

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
        groups = self._by_lease(job, [*results, *errors])
        total = collections.Counter({"written": 0, "retried": 0, "failed": 0, "dropped": 0})
        for lease, ids in groups.items():
            ack = self.send_results(
                job, lease, [(i, results[i]) for i in ids if i in results],
                [ItemError(id=i, message=errors[i], retry=retry) for i in ids if i in errors],
                token)
            total.update(ack.model_dump(include={"written", "retried", "failed", "dropped"}))
        return dict(total)

    def _by_lease(self, job: str, ids: Iterable[int]) -> dict[str | None, list[int]]:
        """Group ids by the lease each came in, and forget them (None: never leased here).

        An id can be held twice: in a lease of a dropped connection and again, served
        anew, in one of this connection. Its result goes to the live lease first.
        """
        leases = self._leases[job]
        groups: dict[str | None, list[int]] = collections.defaultdict(list)
        for i in ids:
            held = leases.get(i, [])
            live = [lease for lease in held if self._session.holds(job, lease, i)]
            lease = live[0] if live else held[0] if held else None
            if lease is not None:
                held.remove(lease)
                if not held:
                    del leases[i]
            groups[lease].append(i)
        return groups

    # --- the push API, name for name as ``AsyncPlanchetClient``'s -------------------------

    def batches(self, job: str, prefetch: int = 2, batch_size: int | None = None,
                token: str | None = None, max_batch_bytes: int | None = None,
                progress: ProgressOption = None) -> Iterator[WorkBatch]:
        """Batches of ``job`` as the server pushes them, until the job is done.

        ``prefetch`` batches are leased to this worker at a time, so the server sends the
        next while this one is worked on; acked with ``ack_nowait``, the worker never
        waits for the server. ``max_batch_bytes`` and ``progress``: as
        ``AsyncPlanchetClient.batches``.
        """
        session = self._session
        callback = make_callback(progress)
        if callback is not None:
            session.track(job, callback, token or self.token)
        session.credit(Credit(job=job, batches=prefetch, batch_size=batch_size,
                              max_batch_bytes=max_batch_bytes, token=token or self.token))
        try:
            while isinstance(got := self._until(lambda: session.take_batch(job)), Batch):
                session.progress(job)
                yield WorkBatch(self, got.job, got.lease, got.items, got.lease_timeout)
        finally:
            session.uncredit(job)
            session.progress(job, final=True)

    def send_results(self, job: str, lease: str | None, results: list[Item],
                     errors: list[ItemError] | None = None, token: str | None = None) -> Ack:
        """Send results (and errors) for ``lease``; the server's ack says what became of
        them."""
        message = make_result(job, lease, results, errors, token or self.token)
        try:
            return self._wait(self._session.result(message))
        except Unavailable:  # not taken: the items are requeued when the job reloads
            return dropped(message)

    def send_results_nowait(self, job: str, lease: str | None, results: list[Item],
                            errors: list[ItemError] | None = None,
                            token: str | None = None) -> None:
        """``send_results`` without waiting for the ack (see ``WorkBatch.ack_nowait``)."""
        message = make_result(job, lease, results, errors, token or self.token)
        self._session.result(message, wait=False)
        self._send_queued()

    # --- leases -------------------------------------------------------------------------

    def release(self, job: str, lease: str, ids: list[int] | None = None,
                token: str | None = None) -> dict[str, Any]:
        """Hand back items of ``lease`` (``ids``, or every pending one) to be served again,
        with no attempt charged; the reply: ``{"lease", "released", "dropped"}``."""
        data = self._request(Release(id=self._session.next_id(), job=job, lease=lease,
                                     ids=ids, token=token or self.token))
        forget_released(self._session, job, lease, ids)
        return data

    def extend(self, job: str, lease: str, seconds: float | None = None,
               token: str | None = None) -> dict[str, Any]:
        """Push ``lease``'s deadline to ``seconds`` from now (None, and at most: the job's
        lease_timeout); the reply: ``{"lease", "held", "lease_timeout"}``."""
        return self._request(Extend(id=self._session.next_id(), job=job, lease=lease,
                                    seconds=None if seconds is None else float(seconds),
                                    token=token or self.token))

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

    def retry_job(self, job_name: str, token: str | None = None) -> dict[str, Any]:
        """Put the items of the job's error file back in the queue, once the cause is
        fixed; the error file is renamed ``<error file>.<n>``. The report, with
        ``retried`` (how many items) and ``rotated_to`` (None if there were none)."""
        return self._command("retry", job_name, token)

    def list_jobs(self, token: str | None = None) -> list[dict[str, Any]]:
        return self._request(ServerCommand(type="jobs", id=self._session.next_id(),
                                           token=token or self.token))

    def purge_server(self, master_token: str | None = None, **_: Any) -> dict[str, Any]:
        """Delete every job (files stay on disk)."""
        return self._request(ServerCommand(type="purge", id=self._session.next_id(),
                                           token=master_token or self.token))

    # --- worker tokens -------------------------------------------------------------------

    def grant_token(self, jobs: str | Sequence[str], label: str | None = None,
                    token: str | None = None) -> dict[str, Any]:
        """A new worker token for ``jobs``: it may only take batches and send results.

        The reply's ``token`` is the secret, shown this once; ``key`` names it later.
        """
        names = [jobs] if isinstance(jobs, str) else list(jobs)
        return self._request(Grant(id=self._session.next_id(), jobs=names, label=label,
                                   token=token or self.token))

    def worker_tokens(self, job: str | None = None,
                      token: str | None = None) -> list[dict[str, Any]]:
        """The worker tokens of ``job`` (every one, with the master token): no secrets."""
        return self._request(Tokens(id=self._session.next_id(), job=job,
                                    token=token or self.token))

    def revoke_token(self, key: str, token: str | None = None) -> dict[str, Any]:
        """Revoke the worker token named ``key``: it stops working at once."""
        return self._request(Revoke(id=self._session.next_id(), key=key,
                                    token=token or self.token))

    def check(self) -> dict[str, Any]:
        """The server's ``GET /health``: Redis status and job counts."""
        scheme, rest = self.url.split("://", 1)
        host = rest.split("/", 1)[0]
        url = f"{'https' if scheme == 'wss' else 'http'}://{host}/health"
        try:
            with urllib.request.urlopen(url, timeout=10,
                                        context=self.ssl if scheme == "wss" else None
                                        ) as response:
                body = response.read()
        except urllib.error.HTTPError as exc:  # 503: Redis is down; the body says so
            body = exc.read()
        except OSError as exc:
            raise ConnectionLost(f"cannot reach {self.url}: {exc}") from exc
        try:
            return orjson.loads(body)
        except orjson.JSONDecodeError as exc:  # not a Planchet server, or a proxy's page
            raise ProtocolError(f"{url} did not answer with JSON") from exc

    def _command(self, op: str, job: str, token: str | None) -> Any:
        return self._request(JobCommand(type=op, id=self._session.next_id(), job=job,  # type: ignore[arg-type]
                                        token=token or self.token))


__all__ = ["DEFAULT_URL", "PlanchetClient", "PlanchetError"]
