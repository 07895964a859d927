"""The wire protocol's messages: one pydantic model per frame type, with no I/O.

Every frame is one JSON object with a ``type``; ``codec`` turns bytes into these models
and back. The server, both Python clients and ``docs/protocol.md`` all follow this
module and ``codec``, so they are the one place where the protocol changes.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, Strict, StrictBool

PROTOCOL_VERSION = 1

JobName = Annotated[str, Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")]
Mode = Literal["read", "write", "read-write"]
# Numbers are JSON numbers: no "1" or true for 1, no 2.0 for a count.
Int = Annotated[int, Strict()]
Seconds = Annotated[float, Strict()]
Id = Int
Item = tuple[Id, Any]
MAX_BATCH_SIZE = 10_000
MAX_PREFETCH = 64


class Message(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# --- client to server -------------------------------------------------------------


class Hello(Message):
    """First frame of every connection: the protocol version and a default token."""

    type: Literal["hello"] = "hello"
    protocol: Int
    token: str | None = None
    client: str | None = None
    # keep this session's leases for ``resume_grace`` seconds if the connection drops
    resumable: StrictBool = False
    session: str | None = Field(default=None, max_length=64)  # resume that session
    leases: list[str] = Field(default=[], max_length=MAX_PREFETCH * 64)  # held: not resent


class Credit(Message):
    """How many batches of a job this connection wants in flight at once (0 stops)."""

    type: Literal["credit"] = "credit"
    job: JobName
    batches: Int = Field(ge=0, le=MAX_PREFETCH)
    batch_size: Int | None = Field(default=None, ge=1, le=MAX_BATCH_SIZE)
    # no batch frame pushed for this job is larger than this (bytes), but a lone big item
    max_batch_bytes: Int | None = Field(default=None, ge=1024, le=2**31)
    token: str | None = None


class ItemError(Message):
    """A worker's failure on one item; ``retry=False`` sends it to the error file now."""

    id: Id
    message: str
    retry: StrictBool = True


class Result(Message):
    """Results for (some of) the items of a lease; the rest stay leased."""

    type: Literal["result"] = "result"
    job: JobName
    lease: str | None = None
    items: list[Item] = []
    errors: list[ItemError] = []
    token: str | None = None


class Release(Message):
    """Hand back a lease's pending items (``ids`` None: all of them), no attempt charged."""

    type: Literal["release"] = "release"
    id: Id
    job: JobName
    lease: str
    ids: list[Id] | None = Field(default=None, max_length=MAX_BATCH_SIZE)
    token: str | None = None


class Extend(Message):
    """Push a lease's deadline to ``seconds`` from now (None: the job's lease_timeout)."""

    type: Literal["extend"] = "extend"
    id: Id
    job: JobName
    lease: str
    seconds: Seconds | None = Field(default=None, gt=0)
    token: str | None = None


class StartJob(Message):
    """Create a job, or resume it when the spec is the same."""

    type: Literal["start_job"] = "start_job"
    id: Id
    job: JobName
    reader: str | None = None
    writer: str | None = None
    metadata: dict[str, Any] = {}
    mode: Mode = "read-write"
    batch_size: Int = Field(default=100, ge=1, le=MAX_BATCH_SIZE)
    lease_timeout: Seconds = Field(default=300.0, gt=0)
    # adaptive batching: size each connection's batches to take about this long
    batch_seconds: Seconds | None = Field(default=None, gt=0, le=3600)
    max_attempts: Int = Field(default=5, ge=1, le=100)
    clean_start: StrictBool = False
    token: str | None = None


class JobCommand(Message):
    """An operation on one job, answered by a ``reply``."""

    type: Literal["report", "pause", "resume", "delete", "clean", "retry"]
    id: Id
    job: JobName
    token: str | None = None


class Watch(Message):
    """Push a ``status`` frame now and every ``interval`` seconds (0 stops), for the
    named jobs or, with ``jobs`` null, every job."""

    type: Literal["watch"] = "watch"
    id: Id
    jobs: list[JobName] | None = Field(default=None, max_length=1000)
    interval: Seconds = Field(default=1.0, ge=0, le=60)
    token: str | None = None


class ServerCommand(Message):
    """A server-wide operation: list the jobs, or purge them all (master token)."""

    type: Literal["jobs", "purge"]
    id: Id
    token: str | None = None


class Grant(Message):
    """Create a worker token: it may only take batches and send results for ``jobs``."""

    type: Literal["grant"] = "grant"
    id: Id
    jobs: list[JobName] = Field(min_length=1, max_length=1000)
    label: str | None = Field(default=None, max_length=200)
    token: str | None = None


class Tokens(Message):
    """List the worker tokens of a job (or of every job, with the master token)."""

    type: Literal["tokens"] = "tokens"
    id: Id
    job: JobName | None = None
    token: str | None = None


class Revoke(Message):
    """Revoke the worker token whose key is ``key``."""

    type: Literal["revoke"] = "revoke"
    id: Id
    key: str = Field(max_length=64)
    token: str | None = None


# --- server to client -------------------------------------------------------------


class Welcome(Message):
    type: Literal["welcome"] = "welcome"
    protocol: Int = PROTOCOL_VERSION
    server: str
    max_message_bytes: Int
    session: str | None = None  # present it in a later hello to resume (resumable only)
    resume_grace: float = 0.0
    resumed: bool = False  # the hello's session was found and taken over


class Batch(Message):
    """Items leased to this connection until ``lease_timeout`` seconds have passed."""

    type: Literal["batch"] = "batch"
    job: str
    lease: str
    items: list[Item]
    lease_timeout: float


class Ack(Message):
    """What became of a ``result``: written, queued again, failed for good, or dropped."""

    type: Literal["ack"] = "ack"
    job: str
    lease: str | None
    written: Int = 0
    retried: Int = 0
    failed: Int = 0
    dropped: Int = 0


class Reply(Message):
    type: Literal["reply"] = "reply"
    id: Int
    data: Any = None


class Event(Message):
    type: Literal["event"] = "event"
    job: str
    event: Literal["paused", "resumed", "done", "deleted"]


class Error(Message):
    """``id`` names the request it answers; else ``job`` names the job of the credit or
    result it answers (results are answered in the order they were sent)."""

    type: Literal["error"] = "error"
    code: str
    message: str
    id: Int | None = None
    job: str | None = None
    retry_after: float | None = None  # seconds: worth trying again then (``unavailable``)


class Status(Message):
    """What a ``watch`` pushes: the server, and each watched job with its workers."""

    type: Literal["status"] = "status"
    time: float  # Unix seconds
    server: dict[str, Any]
    jobs: list[dict[str, Any]]


class Goodbye(Message):
    """Sent before the server closes a connection with 1001: come back after a while."""

    type: Literal["goodbye"] = "goodbye"
    reason: str
    retry_after: float | None = None


ClientMessage = Annotated[
    Hello | Credit | Result | Release | Extend | StartJob | JobCommand | ServerCommand | Grant
    | Tokens | Revoke | Watch,
    Field(discriminator="type"),
]
ServerMessage = Annotated[
    Welcome | Batch | Ack | Reply | Event | Error | Goodbye | Status, Field(discriminator="type")
]
