"""What a client knows about its connection, with no I/O: both Python clients wrap one.

``ClientSession`` builds the hello and checks the welcome, queues outgoing messages,
files every incoming frame (replies by request id, acks in the order the results of a
job were sent, batches and events by job), and keeps count of failed connection
attempts for the backoff. The clients only move frames between it and a socket.

The session is resumable: the server names it in the welcome and keeps its leases for
a grace period when the connection drops. The next hello names it again with the leases
the caller holds (handed out, or with results pending); if the welcome says ``resumed``,
they are held again and the pending results are sent again, while the server sends
again the batches not yet handed out, which were thrown away here.

Otherwise a reconnect forgets what the server forgot: the leases of the old connection
were requeued, so a result for one of them (pending, or sent later) is answered here as
dropped, never sent. Requests and results for no lease (write-only jobs) are sent
again, in their order, and so is the credit of every job being consumed: nothing
pending waits for ever. A ``goodbye`` (the server is going away) sets the least delay
before the next connection attempt.
"""

from __future__ import annotations

import collections
import itertools
import operator
from typing import Any, Literal

from .breaker import Breaker
from .codec import decode_server, encode
from .exceptions import (
    BadRequest,
    CircuitOpen,
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
    Goodbye,
    Hello,
    JobCommand,
    Message,
    Reply,
    Result,
    Status,
    Watch,
    Welcome,
)
from .progress import ProgressCallback, Tracker
from .version import __version__

DONE: Literal["done"] = "done"  # what ``take_batch`` returns once a job is done
Answer = Message | PlanchetError
MAX_STALE = 1024  # leases of dropped connections remembered, to answer their results here
MAX_HELD = 4096  # lease ids a hello may list
MAX_STATUSES = 16  # status frames kept for a slow reader of ``watch``: the newest
MAX_FAILING_BATCHES = 3  # batches in a row failed on every item that stop a worker


_ID = operator.itemgetter(0)  # an item's id, in C


def dropped(result: Result) -> Ack:
    """The ack of a result the server cannot take: its items were requeued."""
    return Ack(job=result.job, lease=result.lease, dropped=len(result.items) + len(result.errors))


def _settle(leases: dict[str, set[int]], result: Result) -> None:
    """Strike the ids of ``result`` from its lease in ``leases``; forget a settled lease."""
    ids = leases.get(result.lease or "")
    if ids is None:
        return
    ids.difference_update(map(_ID, result.items), [e.id for e in result.errors])
    if not ids:
        del leases[result.lease or ""]


def _leased(message: Message) -> bool:
    """A result for a lease: meaningless once the server has requeued that lease."""
    return isinstance(message, Result) and message.lease is not None


FINAL_CLOSES = {4001: "this session was resumed on another connection"}


def check_close(code: int | None) -> None:
    """Raise if the server closed with a code that says: do not reconnect."""
    reason = FINAL_CLOSES.get(code or 0)
    if reason is not None:
        raise ConnectionLost(f"connection closed ({code}): {reason}")


def backoff(failures: int, base: float = 0.25, cap: float = 5.0) -> float:
    """Seconds to wait before a connection attempt that follows ``failures`` failed ones."""
    return 0.0 if failures == 0 else min(cap, base * 2 ** (failures - 1))


class ClientSession:
    """Sans-I/O client state: pending requests and results, held leases, queued batches."""

    def __init__(self, token: str | None = None, resumable: bool = True,
                 max_failing_batches: int = MAX_FAILING_BATCHES,
                 client: str = f"planchet-python/{__version__} blocking") -> None:
        self.token = token
        self.client = client  # hello.client: who we are, as watch shows it
        self.resumable = resumable
        self.breaker = Breaker(max_failing_batches)
        self.name: str | None = None  # the server's id for this session, while resumable
        self.parked: dict[str, dict[str, set[int]]] = {}  # held when the connection dropped
        self.hint = 0.0  # the last goodbye's retry_after: the least wait before reconnecting
        self.connected = False
        self.failures = 0  # connection attempts since the server last sent anything useful
        # frames to send, in this order, on the current connection: encoded when queued,
        # so what JSON cannot carry raises at the call that queued it
        self.outbox: list[bytes] = []
        self.pending: dict[int, Message] = {}  # requests and results not yet answered
        self.answers: dict[int, Answer] = {}
        self.abandoned: set[int] = set()  # the caller gave up: its answer is thrown away
        self.unwatched: set[int] = set()  # results nobody waits for: answers counted only
        self.credits: dict[str, Credit] = {}  # the jobs being consumed, sent on each connect
        self.stale: dict[str, set[int]] = {}  # unsettled leases of dropped connections
        self.trackers: dict[str, Tracker] = {}  # job -> its progress, for a callback
        self.reporting: dict[int, str] = {}  # report requests of the trackers -> job
        self.watching: Watch | None = None  # sent again on each connection
        self.statuses: collections.deque[Status] = collections.deque(maxlen=MAX_STATUSES)
        self._ids = itertools.count(1)
        self.ended: dict[str, PlanchetError | None] = {}  # job -> None: done; else why it ended
        self._forget_connection()

    def _forget_connection(self) -> None:
        self.acks: dict[str, collections.deque[int]] = collections.defaultdict(collections.deque)
        self.batches: dict[str, collections.deque[Batch]] = collections.defaultdict(
            collections.deque)
        self.held: dict[str, dict[str, set[int]]] = collections.defaultdict(dict)  # job->lease->ids
        # why a job's batches ended outlives the connection until ``take_batch`` raises
        # it; that the job is done is heard again on the next connection
        self.ended = {job: why for job, why in self.ended.items() if why is not None}

    # --- connecting -------------------------------------------------------------------

    def hello(self) -> Hello:
        """The hello; it names the session to resume and the leases the caller holds."""
        held = {lease for leases in self.parked.values() for lease in leases}
        held.update(m.lease for m in self.pending.values()
                    if isinstance(m, Result) and m.lease is not None)
        return Hello(protocol=PROTOCOL_VERSION, token=self.token,
                     client=self.client, resumable=self.resumable,
                     session=self.name, leases=sorted(held)[:MAX_HELD])

    def next_delay(self, retries: int, hint: float = 0.0) -> float | None:
        """Seconds to wait before the next connection attempt; None: give up.

        ``hint`` is the server's Retry-After. The count of failures is reset only by a
        frame after the welcome, so a server that accepts and then drops every
        connection is not retried for ever, nor without pause.
        """
        if self.failures > retries:
            self.failures = 0  # the next call starts a fresh round
            return None
        self.failures += 1
        hint, self.hint = max(hint, self.hint), 0.0
        return max(backoff(self.failures - 1), min(hint, 60.0))

    def next_id(self) -> int:
        return next(self._ids)

    def welcome(self, frame: bytes | str) -> None:
        """Check the server's answer to the hello; then queue what the connection owes."""
        reply = decode_server(frame)
        if isinstance(reply, Error):
            raise error_from_code(reply.code, reply.message)
        if not isinstance(reply, Welcome):
            raise ProtocolError(f"expected welcome, got {reply.type!r}")
        self._resumed(reply.resumed)
        self.name = reply.session
        self.connected = True
        self.outbox = [encode(m) for m in (*self.credits.values(), *self.pending.values())]
        if self.watching is not None and self.watching.id not in self.pending:
            self.outbox.append(encode(self.watching))
        for key, message in self.pending.items():
            if isinstance(message, Result):
                self.acks[message.job].append(key)

    def _resumed(self, resumed: bool) -> None:
        """The leases held when the connection dropped are held again, or they are stale:
        the server requeued them, and pending results for them are answered as dropped."""
        for job, leases in self.parked.items():
            (self.held[job] if resumed else self.stale).update(leases)
        self.parked = {}
        if not resumed:
            self._drop_leased()

    def _drop_leased(self) -> None:
        for key, message in list(self.pending.items()):
            if _leased(message):
                self._answer(key, dropped(message))  # type: ignore[arg-type]

    def disconnected(self) -> None:
        """The connection is gone: the server requeues the leases it held, or, for a
        resumable session, keeps them a while for the next connection to take back."""
        self.connected = False
        self.outbox = []
        queued = {batch.lease for batches in self.batches.values() for batch in batches}
        for job, leases in self.held.items():  # in the caller's hands: their results may come
            in_hand = {lease: ids for lease, ids in leases.items() if lease not in queued}
            (self.parked.setdefault(job, {}) if self.name else self.stale).update(in_hand)
        while len(self.stale) > MAX_STALE:
            del self.stale[next(iter(self.stale))]
        if self.name is None:  # the server requeued them: their results would be dropped
            self._drop_leased()
        for key, message in list(self.pending.items()):
            if key in self.abandoned and not _leased(message):  # nobody waits: not sent again
                self._answer(key, ConnectionLost("abandoned"))
        self._forget_connection()

    def fail(self, error: PlanchetError) -> None:
        """No connection can be had: answer everything pending, end every job's batches."""
        if not self.connected:  # no resume to come: results for leases are dropped
            self._resumed(False)
        for key in list(self.pending):
            self._answer(key, error)
        for job in self.credits:
            self.ended[job] = error
        self.credits.clear()
        self.acks.clear()

    # --- what the caller sends --------------------------------------------------------

    def request(self, message: Any) -> int:
        """Queue a request (it has an ``id`` from ``next_id``); its key is that id."""
        self._queue(message.id, message)
        return message.id

    def result(self, message: Result, wait: bool = True) -> int:
        """Queue results; the key under which their ack will be filed.

        ``wait`` False: nobody will wait for the ack. When it comes it is counted
        (progress, breaker) and thrown away, but an error that is not a mere
        ``unavailable`` (its items come back when the job reloads) ends the job's
        batches. Results for no lease must be waited for: in a write-only job the items
        exist nowhere else, so whether the server took them is the caller's to know.
        """
        if not wait and message.lease is None:
            raise BadRequest("results for no lease (a write-only job) must wait for their "
                             "ack: use send_results")
        frame = encode(message)
        key = self.next_id()
        if message.lease in self.stale:  # the server requeued it when the connection dropped
            _settle(self.stale, message)
            ack = dropped(message)
            self._count(message.job, ack)
            if wait:
                self.answers[key] = ack
            return key
        parked = self.parked.get(message.job, {})  # held when the connection dropped
        # any other lease, or none: the server decides
        leases = parked if message.lease in parked else self.held[message.job]
        held = message.lease in leases
        _settle(leases, message)
        self.breaker.sent(key, message, held and message.lease not in leases)
        self._queue(key, message, frame)
        if not wait:
            self.unwatched.add(key)
        return key

    def credit(self, message: Credit) -> None:
        """Ask for batches of a job, on this connection and on every later one."""
        self.credits[message.job] = message
        if self.ended.get(message.job, False) is None:  # done, but it may have been cleaned
            del self.ended[message.job]
        if self.connected:
            self.outbox.append(encode(message))

    def uncredit(self, job: str) -> None:
        """The job's consumer has stopped: do not ask for more on a new connection."""
        self.credits.pop(job, None)

    def abandon(self, key: int) -> None:
        """The caller stopped waiting for ``key`` (it timed out, was cancelled...)."""
        self.answers.pop(key, None)
        if key not in self.pending:
            return
        if self.connected:  # sent, or about to be: its answer must still be matched
            self.abandoned.add(key)
        else:
            del self.pending[key]

    def take_outbox(self) -> list[bytes]:
        messages, self.outbox = self.outbox, []
        return messages

    def _queue(self, key: int, message: Message, frame: bytes | None = None) -> None:
        frame = encode(message) if frame is None else frame
        self.pending[key] = message
        if self.connected:
            self.outbox.append(frame)
            if isinstance(message, Result):
                self.acks[message.job].append(key)

    # --- what the server sends --------------------------------------------------------

    def receive(self, frame: bytes | str) -> None:
        """File one frame from the server. Never raises: a frame that makes no sense
        fails whatever was waiting."""
        try:
            msg = decode_server(frame)
        except ProtocolError as exc:
            self.fail(exc)
            return
        self.failures = 0
        match msg:
            case Batch():
                self.held[msg.job][msg.lease] = set(map(_ID, msg.items))
                self.batches[msg.job].append(msg)
            case Status():
                self.statuses.append(msg)
            case Goodbye():  # the server is going away; the close follows
                self.hint = msg.retry_after or 0.0
            case Event(event="done"):
                self.ended[msg.job] = None
            case Event(event="deleted"):
                self.ended[msg.job] = JobNotFound(f"job {msg.job} was deleted")
            case Reply():
                self._answer(msg.id, msg)
            case Ack() if self.acks.get(msg.job):
                self._answer(self.acks[msg.job].popleft(), msg)  # the oldest result's answer
            case Error():
                self._error(msg)

    def _error(self, msg: Error) -> None:
        if msg.id is not None:
            self._answer(msg.id, msg)
        elif msg.job is None:  # about the connection itself; the server closes it next
            self.fail(error_from_code(msg.code, msg.message))
        elif msg.code == CircuitOpen.code:  # cut off the job: it answers no result
            self.breaker.open(msg.job, msg.message)
        elif self.acks.get(msg.job):
            self._answer(self.acks[msg.job].popleft(), msg)  # the oldest result's answer
        else:  # a refused credit: the job's consumer hears
            self.ended[msg.job] = error_from_code(msg.code, msg.message)

    def _answer(self, key: int, answer: Answer) -> None:
        message = self.pending.pop(key, None)
        if message is None:
            return
        if key in self.reporting:  # a tracker's: nobody waits for it
            self._reported(key, answer)
            return
        if isinstance(message, Result) and isinstance(answer, Ack):
            self.breaker.acked(key, message, answer)
            self._count(message.job, answer)
        if key in self.abandoned:
            self.abandoned.discard(key)
        elif key in self.unwatched:
            self.unwatched.discard(key)
            self._unwatched(message, answer)
        else:
            self.answers[key] = answer

    def _unwatched(self, message: Message, answer: Answer) -> None:
        if isinstance(answer, Error) and answer.code != Unavailable.code:
            job = getattr(message, "job", None)
            if job is not None and job not in self.ended:
                self.ended[job] = error_from_code(answer.code, answer.message)

    # --- progress ---------------------------------------------------------------------

    def track(self, job: str, callback: ProgressCallback, token: str | None = None) -> None:
        """Report the progress of ``job`` to ``callback`` (see ``progress.py``)."""
        self.trackers[job] = Tracker(job, callback, token or self.token)

    def progress(self, job: str, final: bool = False) -> None:
        """Call the job's progress callback if its counts moved, and queue a request for
        the job's report when one is due. The final call ends the tracking."""
        tracker = self.trackers.pop(job, None) if final else self.trackers.get(job)
        if tracker is None:
            return
        if not final and tracker.report_due():
            tracker.asking = self.request(JobCommand(type="report", id=self.next_id(),
                                                     job=job, token=tracker.token))
            self.reporting[tracker.asking] = job
        tracker.emit(final)

    def _count(self, job: str, ack: Ack) -> None:
        if job in self.trackers:
            self.trackers[job].acked(ack)

    def _reported(self, key: int, answer: Answer) -> None:
        tracker = self.trackers.get(self.reporting.pop(key))
        if tracker is not None:
            tracker.reported(answer.data if isinstance(answer, Reply) else None)

    # --- what the caller waits for ----------------------------------------------------

    def has_answer(self, key: int) -> bool:
        return key in self.answers

    def answer(self, key: int) -> Message | None:
        """The answer to ``key`` once it has come, else None; an error answer raises."""
        got = self.answers.pop(key, None)
        if isinstance(got, PlanchetError):
            raise got
        if isinstance(got, Error):
            raise error_from_code(got.code, got.message)
        return got

    def has_batch(self, job: str) -> bool:
        return bool(self.batches[job]) or job in self.ended or self.breaker.is_open(job)

    def take_batch(self, job: str) -> Batch | Literal["done"] | None:
        """The next batch of ``job``, ``DONE``, or None while neither has come.

        Batches that came before the end are served first. An error that ended the
        job's batches (deleted, a refused credit) is raised once; so is ``CircuitOpen``
        when the worker failed every item of too many batches in a row, at once.
        """
        if self.breaker.is_open(job):
            self.credits.pop(job, None)
            self.breaker.check(job)
        if self.batches[job]:
            return self.batches[job].popleft()
        if job not in self.ended:
            return None
        error = self.ended[job]
        if error is None:
            return DONE
        del self.ended[job]
        self.credits.pop(job, None)
        raise error

    def holds(self, job: str, lease: str, item: int) -> bool:
        """Whether ``item`` of ``lease`` is held, unsettled, on this connection."""
        return item in self.held[job].get(lease, ())

    def held_leases(self, job: str) -> int:
        """How many of ``job``'s leases this connection holds unsettled."""
        return len(self.held[job])
