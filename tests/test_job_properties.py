"""Properties of a job's state machine, on operation sequences hypothesis makes up.

``test_job_machine``, over a real Redis: any sequence of lease / settle / release /
expire / reopen / restart keeps every item in exactly one place. More examples for a
longer hunt: ``PLANCHET_PROPERTY_EXAMPLES=2000 pytest --timeout 0 tests/test_job_properties.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from planchet.exceptions import PlanchetError
from planchet.jobs import PAUSED, RUNNING, Job
from planchet.messages import (
    ItemError,
    StartJob,
)
from planchet.spec import build_spec
from planchet.state import Lease
from planchet.store import Store, unpack
from tests.fuzz_support import same

# --- the job state machine ---------------------------------------------------------------

JOB_EXAMPLES = int(os.environ.get("PLANCHET_PROPERTY_EXAMPLES") or 60)  # more: a longer hunt
OWNERS = 3
MAX_ATTEMPTS = 3
PREFIX = "planchet:"  # the store's default key prefix (layout: planchet/store.py)
MUST_FAIL = {5, 9, 13}  # a blank line, a line that is not JSON, one nested past orjson's 254
MAY_FAIL = {*MUST_FAIL, 17}  # an integer beyond 64 bits: refused, or else kept exactly


def input_lines() -> list[bytes]:
    """30 lines: a byte-order mark first, the lines of MUST_FAIL and MAY_FAIL, unicode."""
    lines = [json.dumps({"n": n, "s": "é😀" * (n % 3)}).encode() for n in range(30)]
    lines[0] = b"\xef\xbb\xbf" + lines[0]
    lines[5] = b""
    lines[9] = b'{"n": 9,'
    lines[13] = b"[" * 300 + b"]" * 300
    lines[17] = json.dumps({"n": 2**64 + 1}).encode()
    lines[21] = b"[" * 50 + b"21" + b"]" * 50
    return lines


LINES = input_lines()
TOTAL = len(LINES)
EXPECTED = {n: json.loads(line.removeprefix(b"\xef\xbb\xbf"))
            for n, line in enumerate(LINES) if n not in MUST_FAIL}


class Owner:
    """A stand-in for a subscription: the leases it holds; wake-ups and events ignored."""

    def __init__(self) -> None:
        self.leases: set[str] = set()

    def wake(self) -> None:
        pass

    def tell(self, event: str) -> None:
        pass

    def stall(self) -> None:
        self.stalled = True


picks = st.lists(st.integers(0, 40), max_size=8).map(tuple)  # < 32: an id of the lease
lease_op = st.tuples(st.just("lease"), st.integers(0, OWNERS - 1), st.integers(1, 8),
                     st.one_of(st.none(), st.integers(60, 300)))  # a byte cap: splits batches
settle_op = st.tuples(  # which lease (< 24: a live one), results, errors, a poisoned result
    st.just("settle"), st.integers(0, 30), picks,
    st.lists(st.tuples(st.integers(0, 40), st.booleans()), max_size=2).map(tuple),
    st.integers(0, 9).map(lambda n: n == 0))
other_op = st.one_of(
    st.tuples(st.just("release"), st.integers(0, OWNERS - 1), st.booleans()),
    st.tuples(st.just("give_back"), st.integers(0, 30), st.one_of(st.none(), picks)),
    st.tuples(st.just("extend"), st.integers(0, 30), st.floats(0.5, 1000)),
    st.sampled_from([("expire",), ("reopen",), ("restart",), ("pause",), ("resume",)]),
)
whole_op = st.tuples(st.just("settle_whole"), st.integers(0, 30))  # the usual result
operations = st.lists(st.one_of(lease_op, lease_op, settle_op, settle_op, whole_op, other_op),
                      min_size=15, max_size=60)


def pending(lease: Lease) -> dict[int, Any]:
    """id -> item still pending, read without making a fresh lease build its item map
    (which would keep the machine off the path most results take)."""
    return dict(lease.unsettled)


def deep_value(levels: int) -> Any:
    value: Any = 0
    for _ in range(levels):
        value = [value]
    return value


def file_ids(path: Path) -> tuple[list[int], bytes]:
    """The ids of a JSONL output or error file, in order, and its bytes; no partial line."""
    data = path.read_bytes() if path.exists() else b""
    assert not data or data.endswith(b"\n"), f"{path.name} ends in a partial line"
    return [orjson.loads(line)["id"] for line in data.splitlines()], data


class JobRun:
    """One example: a job over ``LINES`` driven by a list of operations, checked after each."""

    def __init__(self, store: Store, data_dir: Path) -> None:
        self.store = store
        request = StartJob(id=1, job="p", reader="JsonlReader", writer="JsonlWriter",
                           batch_size=4, max_attempts=MAX_ATTEMPTS,
                           metadata={"input_file_path": "in.jsonl",
                                     "output_file_path": "out.jsonl"})
        self.spec = build_spec(request, data_dir)
        self.owners = [Owner() for _ in range(OWNERS)]
        self.issued: list[tuple[str, list[int]]] = []  # every lease: its id, its ids then
        self.blamed: set[int] = set()  # ids a worker failed, or a lease of which was charged
        self.seen: dict[str, list[int]] = {"out": [], "err": []}
        self.job = Job(self.spec, store)

    async def start(self) -> None:
        await self.store.create_job(self.spec.name, {"spec": self.spec.model_dump_json(),
                                                     "token": "", "state": RUNNING},
                                    self.spec.files)
        await self.job.open()
        await self.check()

    async def apply(self, op: tuple[Any, ...]) -> None:
        """Run one operation; a PlanchetError breaks the job and maintenance reopens it."""
        try:
            await getattr(self, f"do_{op[0]}")(*op[1:])
        except PlanchetError:
            await self.job.open()
        await self.check()

    async def do_lease(self, owner: int, size: int, cap: int | None) -> None:
        lease = await self.job.lease(self.owners[owner], size, cap)
        if lease is not None:
            self.issued.append((lease.id, sorted(pending(lease))))

    def _pick(self, pick: int) -> tuple[str, list[int]] | None:
        """A lease issued so far: a live one when ``pick`` < 24 and there is one."""
        live = [(lid, ids) for lid, ids in self.issued if lid in self.job.leases]
        pool = live if live and pick < 24 else self.issued
        return pool[pick % len(pool)] if pool else None

    async def do_give_back(self, pick: int, picks: tuple[int, ...] | None) -> None:
        """A worker releases (some of) a lease: requeued, no attempt charged, never blamed."""
        if (chosen := self._pick(pick)) is None:
            return
        lease_id, ids = chosen
        asked = None if picks is None else [ids[p % len(ids)] if p < 32 else p for p in picks]
        lease = self.job.leases.get(lease_id)
        held = set(pending(lease)) if lease and not self.job.broken else set()
        released, dropped = self.job.release_items(lease_id, asked)
        expected = len(held) if asked is None else len(held & set(asked))
        assert released == expected
        assert released + dropped == (released if asked is None else len(asked))

    async def do_extend(self, pick: int, seconds: float) -> None:
        if (chosen := self._pick(pick)) is None:
            return
        granted = self.job.extend(chosen[0], seconds)
        assert granted is None or granted == min(seconds, self.spec.lease_timeout)

    async def do_settle(self, pick: int, results: tuple[int, ...],
                        errors: tuple[tuple[int, bool], ...], poison: bool) -> None:
        live = [(lid, ids) for lid, ids in self.issued if lid in self.job.leases]
        pool = live if live and pick < 24 else self.issued
        if not pool:
            return
        lease_id, ids = pool[pick % len(pool)]
        lease = self.job.leases.get(lease_id)
        held = pending(lease) if lease else {}

        def item_id(p: int) -> int:
            return ids[p % len(ids)] if p < 32 else (p - 32) * 3

        echoed = [(i, held[i] if i in held else EXPECTED.get(i))
                  for i in map(item_id, results)]
        if poison and echoed:  # a result JSON cannot hold: the writer must fail it
            echoed[0] = (echoed[0][0], deep_value(300))
            self.blamed.add(echoed[0][0])
        failing = [ItemError(id=item_id(p), message="boom", retry=retry) for p, retry in errors]
        self.blamed.update(e.id for e in failing)
        await self.job.settle(lease_id, echoed, failing)

    async def do_settle_whole(self, pick: int) -> None:
        """One result per item the lease was given, in order: whatever is no longer
        pending of it (released, failed, settled) is dropped, never written twice."""
        if (chosen := self._pick(pick)) is None:
            return
        lease_id, ids = chosen
        await self.job.settle(lease_id, [(i, EXPECTED[i]) for i in ids], [])

    async def do_release(self, owner: int, crashed: bool) -> None:
        if crashed:
            self.blamed.update(i for le in self.job.leases.values()
                               if le.owner is self.owners[owner] for i in pending(le))
        await self.job.release(self.owners[owner], crashed)

    async def do_expire(self) -> None:
        self.blamed.update(i for le in self.job.leases.values() for i in pending(le))
        await self.job.expire(time.monotonic() + 10**6)

    async def do_reopen(self) -> None:
        await self.job.open()

    async def do_restart(self) -> None:
        """A new server process: a new Job over the same Redis and files, new workers."""
        await self.job.close()
        self.job = Job(self.spec, self.store)
        self.owners = [Owner() for _ in range(OWNERS)]
        await self.job.open()

    async def do_pause(self) -> None:
        await self.job.set_state(PAUSED)

    async def do_resume(self) -> None:
        await self.job.set_state(RUNNING)

    async def check(self) -> None:
        """Every id in exactly one place; files, Redis, memory and counts agree."""
        job, name = self.job, self.spec.name
        await job.flushed()  # answers come before commits; the state to check is committed
        out, out_bytes = file_ids(Path(self.spec.output_path or ""))
        err, err_bytes = file_ids(Path(self.spec.error_path))
        for key, ids in (("out", out), ("err", err)):  # appended to, never undone
            assert ids[: len(self.seen[key])] == self.seen[key], f"{key} lost lines"
            self.seen[key] = ids
        queue = await self.store.redis.lrange(f"{PREFIX}job:{name}:queue", 0, -1)
        queued = [i for blob in queue for i, _, _ in unpack(blob)]
        stored = await self.store.redis.hgetall(f"{PREFIX}job:{name}:leases")
        leased = {lid: sorted(pending(le)) for lid, le in job.leases.items()}
        stored_items = dict(zip(stored, job.files.reread(list(stored.values())), strict=True))
        assert {k.decode(): sorted(i for i, _, _ in unpack(v))  # spans read from the file
                for k, v in stored_items.items()} == leased, "leases in memory differ from Redis"
        unread = list(range(job.counts["next_id"], TOTAL))
        places = out + err + queued + [i for ids in leased.values() for i in ids] + unread
        assert sorted(places) == list(range(TOTAL)), "an id is lost or in two places"
        counts = job.counts
        assert (counts["written"], counts["failed"], job.queued) == (
            len(out), len(err), len(queued))
        assert (counts["out_offset"], counts["err_offset"]) == (len(out_bytes), len(err_bytes))
        fields = await self.store.read_job(name)
        assert {k: int(fields.get(k, 0)) for k in counts} == counts, "memory differs from Redis"
        r = job.report()
        assert r["written"] + r["failed"] + r["queued"] + r["in_flight"] + TOTAL - r["read"] \
            == TOTAL
        for owner in self.owners:
            assert owner.leases == {lid for lid, le in job.leases.items() if le.owner is owner}
        for line in out_bytes.splitlines():  # echoed items arrive unchanged
            record = json.loads(line)
            assert same(record["item"], EXPECTED[record["id"]]), record["id"]

    async def finish(self) -> None:
        """Settle whatever is leased, then drain: the job must end, every id in its place."""
        job, owner = self.job, Owner()
        await job.set_state(RUNNING)
        for lease in list(job.leases.values()):
            await job.settle(lease.id, [(i, it) for i, (it, _) in lease.items.items()], [])
        for _ in range(TOTAL + 1):
            lease = await job.lease(owner, 5)
            if lease is None:
                break
            await job.settle(lease.id, [(i, it) for i, (it, _) in lease.items.items()], [])
        await self.check()
        assert job.done, job.report()
        failed = set(self.seen["err"])
        assert MUST_FAIL <= failed <= MAY_FAIL | self.blamed, "a healthy item failed"


@pytest.fixture
def job_data(data_dir: Path) -> Path:
    (data_dir / "in.jsonl").write_bytes(b"\n".join(LINES) + b"\n")
    return data_dir


async def run_job(redis_url: str, data_dir: Path, ops: list[tuple[Any, ...]]) -> None:
    store = Store.from_url(redis_url)
    try:
        await store.redis.flushall()
        for leftover in ("out.jsonl", "out.jsonl.errors.jsonl"):
            (data_dir / leftover).unlink(missing_ok=True)
        run = JobRun(store, data_dir)
        await run.start()
        for op in ops:
            await run.apply(op)
        await run.finish()
        await run.job.close()
    finally:
        await store.close()


def test_job_machine(redis_url: str, job_data: Path) -> None:
    """Any sequence of lease (capped or not) / settle / fail / release / give back / extend /
    expiry / reopen / restart / pause keeps every item in exactly one place, never undoes a
    write, and the job then ends."""

    @settings(max_examples=JOB_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck))
    @given(operations)
    def machine(ops: list[tuple[Any, ...]]) -> None:
        asyncio.run(run_job(redis_url, job_data, ops))

    machine()
