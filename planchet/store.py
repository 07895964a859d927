"""All of Planchet's Redis keys, transactions and Lua, in one place.

Layout (``P`` is the key prefix, ``planchet:`` by default)::

    P jobs                set of job names
    P outputs             hash: output or error file path -> job name that writes it
    P job:<name>          hash: spec, token, state, next_id, offset, exhausted,
                          out_offset, err_offset, written, failed; while a retry
                          rotates the error file: rotating (the path it goes to)
                          and rotating_keep (the lines the new one starts with)
    P job:<name>:leases   hash: lease id -> JSON [[id, item, attempts], ...], or, for a
                          fresh lease of a file that can be read again cheaply, JSON
                          {"span": [first id, its offset, next id, its offset, good items]}
    P job:<name>:queue    list of JSON [[id, item, attempts], ...] waiting to be served again
    P job:<name>:ids      set of ids a write-only job has settled (written or failed)
    P job:<name>:retries  list of JSON {time, items, file}: each retry of the job's failures
    P workers             hash: worker token key -> JSON {digest, jobs, label, created}

Every change that moves items between states is one MULTI/EXEC, so Redis always
holds a consistent picture: a crash at any point leaves either the old state or the
new one. Item payloads live in Redis only while queued to be served again, or leased
after a retry or a partial result, or leased fresh from a gzip input (any other fresh
lease names its span of the input, read again on reopen), so memory there is bounded
by what is in flight, never by the size of the file.
"""

from __future__ import annotations

import functools
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, NamedTuple, ParamSpec, TypeVar, cast

import orjson
import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from .exceptions import Unavailable

LeasedItem = tuple[int, Any, int]
P = ParamSpec("P")
T = TypeVar("T")  # id, item, attempts so far

COUNTS = ("next_id", "offset", "exhausted", "out_offset", "err_offset", "written", "failed")


def pack(items: Iterable[LeasedItem]) -> bytes:
    return orjson.dumps(list(items))


def pack_leased(
    items: Iterable[tuple[int, Any]],
) -> tuple[bytes, list[LeasedItem], list[tuple[int, str]]]:
    """Pack fresh items for a lease: an item that cannot be encoded (nested too deep,
    say) is returned with its reason instead of failing the whole batch."""
    leased = [(i, item, 0) for i, item in items]
    try:  # one pass, in C: the readers only yield items that encode
        return orjson.dumps(leased), leased, []
    except TypeError:  # orjson.JSONEncodeError: find the culprits one by one
        pass
    parts: list[bytes] = []
    good: list[LeasedItem] = []
    bad: list[tuple[int, str]] = []
    for i, item, _ in leased:
        try:
            parts.append(orjson.dumps([i, item, 0]))
        except TypeError as exc:  # orjson.JSONEncodeError
            bad.append((i, f"cannot encode item: {exc}"))
        else:
            good.append((i, item, 0))
    return b"[" + b",".join(parts) + b"]", good, bad


def unpack(blob: bytes) -> list[LeasedItem]:
    return [(i, item, attempts) for i, item, attempts in orjson.loads(blob)]


class Span(NamedTuple):
    """A fresh lease as Redis keeps it: where in the input its records are, not the
    items themselves. Its ``good`` items are the records from ``start`` up to
    ``end`` (positions: an id and a byte offset), read again from the file when the job
    reopens. A lease that is partly settled, and one of items served again, keep their
    items instead (``pack``)."""

    start: tuple[int, int]  # (id, byte offset), as ``formats.Position``
    end: tuple[int, int]
    good: int  # items: the records between that are not bad

    def pack(self) -> bytes:
        return orjson.dumps({"span": [*self.start, *self.end, self.good]})

    @staticmethod
    def unpack(blob: bytes) -> Span | None:
        """The span ``blob`` holds; None if it holds items."""
        if not blob.startswith(SPAN):
            return None
        first, start, next_id, end, good = orjson.loads(blob)["span"]
        return Span((first, start), (next_id, end), good)


SPAN = b'{"span":'  # how a span's blob starts; items' blobs start with "["


Reread = Callable[[list[bytes]], Awaitable[list[bytes]]]  # leases' blobs, spans read again


@dataclass(frozen=True)
class JobRecord:
    """A job's hash in Redis, typed: the spec as stored, its token digest, its state and
    its counters (read position, committed file offsets, items written and failed)."""

    spec: str
    token: str
    state: str
    counts: dict[str, int]
    rotation: tuple[str, bytes] | None = None  # a retry's rotation to finish: (to, keep)


@dataclass(frozen=True)
class Front:
    """A batch put back at the head of the queue: the rest of a batch that was split."""

    blob: bytes


Blob = bytes | Callable[[], bytes]  # a lease's items packed, or what packs them


@dataclass
class Change:
    """What a group of a job's steps changed, committed as one MULTI/EXEC.

    ``leases`` maps a lease id to its items (packed; until ``seal``, possibly a function
    that packs them), or to None to drop it; a lease the group both creates and ends is
    left out (``born``, ``end``). ``queue``
    lists, in the order the steps made them, a batch pushed at the tail (its packed
    items), None for a batch popped from the head, or a ``Front`` pushed at the head.
    """

    fields: dict[str, Any] = field(default_factory=dict)
    leases: dict[str, Blob | None] = field(default_factory=dict)
    queue: list[bytes | Front | None] = field(default_factory=list)
    settled_ids: list[int] = field(default_factory=list)
    born: set[str] = field(default_factory=set)  # leases this group creates

    def hold(self, lease_id: str, blob: Blob, new: bool = False) -> None:
        """A lease's items: a ``new`` lease, or what is left of one; packed, or a
        function that packs them when the group is sealed."""
        self.leases[lease_id] = blob
        if new:
            self.born.add(lease_id)

    def seal(self) -> None:
        """Pack the leases left to pack, as the group's last step left them: call it
        when the group closes, before any later step can change them."""
        for lease_id, blob in self.leases.items():
            if callable(blob):
                self.leases[lease_id] = blob()

    def end(self, lease_id: str) -> None:
        """Drop a lease; one that this group creates never reaches Redis at all."""
        if lease_id in self.born:
            self.born.discard(lease_id)
            del self.leases[lease_id]
        else:
            self.leases[lease_id] = None


def _storage_step(method: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]:
    """Turn Redis failures into ``Unavailable``: the caller learns nothing was done."""

    @functools.wraps(method)
    async def step(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return await method(*args, **kwargs)
        except (redis.RedisError, OSError) as exc:
            raise Unavailable(f"Redis failed: {exc}") from exc

    return step


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


def _json_or_none(blob: bytes | str) -> Any:
    try:
        return orjson.loads(blob)
    except orjson.JSONDecodeError:
        return None


def _fields(fields: dict[str, Any]) -> dict[Any, Any]:
    """A hash's new fields, typed as redis-py's ``hset`` wants them."""
    return dict(fields)


class Store:
    """Typed access to the keys above; no other module talks to Redis."""

    def __init__(self, client: redis.Redis, prefix: str = "planchet:") -> None:
        self.redis = client
        self.prefix = prefix

    @classmethod
    def from_url(cls, url: str, prefix: str = "planchet:") -> Store:
        # No automatic retries: a transaction retried after its reply was lost would be
        # applied twice (a batch queued twice). A failed step instead marks the job
        # broken, and reopening it reloads the truth from Redis.
        client = redis.Redis.from_url(url, socket_connect_timeout=2, retry=Retry(NoBackoff(), 0))
        return cls(client, prefix)

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        try:
            return bool(await self.redis.ping())
        except redis.RedisError:
            return False

    # --- keys ---------------------------------------------------------------------

    def _job(self, name: str) -> str:
        return f"{self.prefix}job:{name}"

    def _leases(self, name: str) -> str:
        return f"{self.prefix}job:{name}:leases"

    def _queue(self, name: str) -> str:
        return f"{self.prefix}job:{name}:queue"

    def _ids(self, name: str) -> str:
        return f"{self.prefix}job:{name}:ids"

    def _retries(self, name: str) -> str:
        return f"{self.prefix}job:{name}:retries"

    def _job_keys(self, name: str) -> tuple[str, ...]:
        return (self._job(name), self._leases(name), self._queue(name), self._ids(name),
                self._retries(name))

    @property
    def _jobs(self) -> str:
        return f"{self.prefix}jobs"

    @property
    def _outputs(self) -> str:
        return f"{self.prefix}outputs"

    @property
    def _workers(self) -> str:
        return f"{self.prefix}workers"

    # --- jobs -----------------------------------------------------------------------

    @_storage_step
    async def job_names(self) -> list[str]:
        return sorted(_text(n) for n in await self.redis.smembers(self._jobs))

    @_storage_step
    async def read_job(self, name: str) -> dict[str, str]:
        raw = await self.redis.hgetall(self._job(name))
        return {_text(k): _text(v) for k, v in raw.items()}

    @_storage_step
    async def load_job(self, name: str) -> JobRecord | None:
        """The job's record, or None if its state is gone (never created, or lost)."""
        fields = await self.read_job(name)
        if "spec" not in fields:
            return None
        return JobRecord(
            spec=fields["spec"],
            token=fields.get("token", ""),
            state=fields.get("state", "running"),
            counts={k: int(fields.get(k, 0)) for k in COUNTS},
            rotation=((fields["rotating"], fields.get("rotating_keep", "").encode())
                      if fields.get("rotating") else None),
        )

    @_storage_step
    async def owner_of(self, path: str) -> str | None:
        owner = await self.redis.hget(self._outputs, path)
        return _text(owner) if owner else None

    @_storage_step
    async def create_job(self, name: str, fields: dict[str, Any], paths: list[str]) -> None:
        """Write a new job (replacing any old state of that name) and claim its files."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._job_keys(name):
                pipe.delete(key)
            pipe.hset(self._job(name), mapping=_fields(fields))
            pipe.sadd(self._jobs, name)
            for path in paths:
                pipe.hset(self._outputs, path, name)
            await pipe.execute()

    @_storage_step
    async def update_job(self, name: str, fields: dict[str, Any]) -> None:
        await self.redis.hset(self._job(name), mapping=_fields(fields))

    @_storage_step
    async def delete_job(self, name: str, paths: list[str]) -> None:
        async with self.redis.pipeline(transaction=True) as pipe:
            for key in self._job_keys(name):
                pipe.delete(key)
            pipe.srem(self._jobs, name)
            for path in paths:
                pipe.hdel(self._outputs, path)
            await pipe.execute()

    # --- worker tokens --------------------------------------------------------------

    @_storage_step
    async def worker_tokens(self) -> dict[str, Any]:
        """Every worker token's record (key -> decoded JSON; None if it is not JSON)."""
        raw = await self.redis.hgetall(self._workers)
        return {_text(key): _json_or_none(blob) for key, blob in raw.items()}

    @_storage_step
    async def write_worker_tokens(self, changes: dict[str, dict[str, Any] | None]) -> None:
        """Save (a record) or delete (None) worker tokens, all in one transaction."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for key, record in changes.items():
                if record is None:
                    pipe.hdel(self._workers, key)
                else:
                    pipe.hset(self._workers, key, orjson.dumps(record))
            await pipe.execute()

    # --- items ----------------------------------------------------------------------

    @_storage_step
    async def requeue_all_leases(self, name: str, reread: Reread | None = None
                                 ) -> list[list[LeasedItem]]:
        """Move every lease back to the queue; return the queue, for counting.

        Run when a job is (re)opened: leases of a previous server process, or from
        before a Redis restart, have no live owner any more. Leases kept as a ``Span``
        are queued as their items, which ``reread`` reads again from the input.
        """
        leases = await self.redis.hgetall(self._leases(name))
        blobs = cast(list[bytes], list(leases.values()))  # the client decodes nothing
        if any(blob.startswith(SPAN) for blob in blobs):
            if reread is None:
                raise ValueError(f"job {name} has leases kept as spans of its input")
            blobs = await reread(blobs)
        async with self.redis.pipeline(transaction=True) as pipe:
            for blob in blobs:
                pipe.rpush(self._queue(name), blob)
            pipe.delete(self._leases(name))
            pipe.lrange(self._queue(name), 0, -1)
            *_, queue = await pipe.execute()
        return [unpack(blob) for blob in queue]

    @_storage_step
    async def retry_failures(self, name: str, batches: list[bytes], retried: int,
                             fields: dict[str, Any], record: dict[str, Any]) -> None:
        """Commit a retry: ``batches`` queued again, ``failed`` lowered by ``retried``,
        ``fields`` set (the error offset, the rotation to do), ``record`` kept."""
        async with self.redis.pipeline(transaction=True) as pipe:
            if batches:
                pipe.rpush(self._queue(name), *batches)
            pipe.hincrby(self._job(name), "failed", -retried)
            pipe.hset(self._job(name), mapping=_fields(fields))
            pipe.rpush(self._retries(name), orjson.dumps(record))
            await pipe.execute()

    @_storage_step
    async def rotated(self, name: str) -> None:
        """The error file's rotation is done: forget it."""
        await self.redis.hdel(self._job(name), "rotating", "rotating_keep")

    @_storage_step
    async def retries(self, name: str) -> list[Any]:
        """The job's retry records, oldest first."""
        return [_json_or_none(blob) for blob in await self.redis.lrange(self._retries(name), 0, -1)]

    @_storage_step
    async def new_ids(self, name: str, ids: list[int]) -> list[bool]:
        """For a write-only job: which of ``ids`` were never settled."""
        if not ids:
            return []
        seen = await self.redis.smismember(self._ids(name), ids)
        return [not s for s in seen]

    async def commit(self, name: str, change: Change) -> None:
        """Commit a group of a job's steps atomically (see ``Change``)."""
        await self.commit_all([(name, change)])

    @_storage_step
    async def commit_all(self, changes: list[tuple[str, Change]]) -> None:
        """Commit groups of steps of several jobs (name, change) in one MULTI/EXEC."""
        async with self.redis.pipeline(transaction=True) as pipe:
            for name, change in changes:
                self._commit_ops(pipe, name, change)
            await pipe.execute()

    def _commit_ops(self, pipe: Any, name: str, change: Change) -> None:
        if change.fields:
            pipe.hset(self._job(name), mapping=_fields(change.fields))
        held: dict[Any, Any] = {k: v for k, v in change.leases.items() if v is not None}
        if any(callable(blob) for blob in held.values()):  # packed now, it could hold
            raise ValueError("commit of an unsealed change")  # a later group's steps
        if held:
            pipe.hset(self._leases(name), mapping=held)
        if len(held) < len(change.leases):
            pipe.hdel(self._leases(name), *(k for k, v in change.leases.items() if v is None))
        self._queue_ops(pipe, self._queue(name), change.queue)
        if change.settled_ids:
            pipe.sadd(self._ids(name), *change.settled_ids)

    @staticmethod
    def _queue_ops(pipe: Any, key: str, ops: list[bytes | Front | None]) -> None:
        """The queue's pushes and pops, in order; a run of pops is one LTRIM."""
        popped = 0
        for op in ops:
            if op is None:
                popped += 1
                continue
            if popped:
                pipe.ltrim(key, popped, -1)
                popped = 0
            if isinstance(op, Front):
                pipe.lpush(key, op.blob)
            else:
                pipe.rpush(key, op)
        if popped:
            pipe.ltrim(key, popped, -1)
