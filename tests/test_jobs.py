"""One job against a real Redis, no sockets: every item ends up written or failed, once."""

from __future__ import annotations

import gzip
import random
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from planchet.embedded import RedisProcess
from planchet.exceptions import BadRequest, FormatError, ServerError
from planchet.jobs import Job
from planchet.messages import Ack, ItemError, StartJob
from planchet.spec import build_spec
from planchet.state import DONE, PAUSED, RUNNING, Fault, Lease
from planchet.store import Span, Store, unpack
from planchet.writeonly import new_job as make_job
from tests.support import held

LINES = 830  # github_issue_titles.jsonl
OPENED: list[Job] = []  # every Job a test made, closed after it (see ``close_jobs``)


@pytest.fixture(autouse=True)
async def close_jobs() -> AsyncIterator[None]:
    yield
    while OPENED:
        await OPENED.pop().close()


class Owner:
    """A stand-in for a subscription: holds leases, counts wake-ups."""

    def __init__(self) -> None:
        self.leases: set[str] = set()
        self.wakes = 0
        self.events: list[str] = []

    def wake(self) -> None:
        self.wakes += 1

    def tell(self, event: str) -> None:
        self.events.append(event)

    def stall(self) -> None:
        self.stalled = True


async def new_job(store: Store, data_dir: Path, name: str = "j", **overrides: Any) -> Job:
    """Create a job in Redis the way the dispatcher does, and open it."""
    fields: dict[str, Any] = {
        "id": 1,
        "job": name,
        "reader": "JsonlReader",
        "writer": "JsonlWriter",
        "metadata": {"input_file_path": "in.jsonl", "output_file_path": "out.jsonl"},
    }
    fields.update(overrides)
    spec = build_spec(StartJob(**fields), data_dir)
    await store.create_job(
        name, {"spec": spec.model_dump_json(), "token": "", "state": RUNNING}, spec.files
    )
    job = make_job(spec, store)
    OPENED.append(job)
    await job.open()
    return job


async def reopen(job: Job) -> Job:
    """What a restarted server does: a new Job on the same Redis, the old one just dropped."""
    fresh = make_job(job.spec, job.store)
    OPENED.append(fresh)
    await fresh.open()
    return fresh


def write_lines(path: Path, records: list[Any]) -> None:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    return [orjson.loads(line) for line in path.read_bytes().splitlines()] if path.exists() else []


def output_of(job: Job) -> dict[int, Any]:
    """The job's output as id -> item, failing on any id written twice."""
    assert job.spec.output_path
    records = read_jsonl(Path(job.spec.output_path))
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an id was written twice"
    return {r["id"]: r["item"] for r in records}


def errors_of(job: Job) -> dict[int, dict[str, Any]]:
    records = read_jsonl(Path(job.spec.error_path))
    ids = [r["id"] for r in records]
    assert len(ids) == len(set(ids)), "an id was failed twice"
    return {r["id"]: r for r in records}


def items_of(lease: Lease) -> list[tuple[int, Any]]:
    return [(i, item) for i, (item, _) in lease.items.items()]


async def settled(job: Job, lease: str | None, results: list[Any],
                  errors: list[ItemError]) -> Ack:
    """``job.settle``, then wait for its group commit, so files and Redis show it."""
    ack = await job.settle(lease, results, errors)
    await job.flushed()
    return ack


async def drain(job: Job, owner: Owner | None = None) -> None:
    """Lease and settle, echoing every item, until the job is done."""
    owner = owner or Owner()
    for _ in range(10_000):
        if job.done:
            return
        lease = await job.lease(owner, job.spec.batch_size)
        if lease is None and job.done:  # reading the end of the file finished it
            return
        assert lease is not None, f"job stalled: {job.report()}"
        await settled(job, lease.id, items_of(lease), [])
    raise AssertionError("the job never finished")


@pytest.fixture
def small_input(data_dir: Path) -> list[dict[str, int]]:
    records = [{"n": n} for n in range(10)]
    write_lines(data_dir / "in.jsonl", records)
    return records


# --- the whole file -------------------------------------------------------------------


async def test_a_full_run_writes_or_fails_every_id_exactly_once(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    """Random partial results, retried and final errors, three workers, one lease table."""
    source = [orjson.loads(line) for line in issues_input.read_bytes().splitlines()]
    assert len(source) == LINES
    job = await new_job(store, data_dir, batch_size=37, max_attempts=3)
    rng = random.Random(20240601)
    keeps_failing = {i for i in range(LINES) if i % 13 == 0}  # retried until max_attempts
    refused = {i for i in range(LINES) if i % 17 == 0} - keeps_failing  # retry=False
    owners = [Owner() for _ in range(3)]
    held: list[Lease] = []
    totals = {"written": 0, "failed": 0, "retried": 0}
    for _ in range(20_000):
        if job.done:
            break
        for owner in owners:
            while len(owner.leases) < 2:
                lease = await job.lease(owner, rng.randint(1, 50))
                if lease is None:
                    break
                held.append(lease)
        assert held, f"nothing in flight but the job is not done: {job.report()}"
        lease = rng.choice(held)
        chosen = rng.sample(sorted(lease.items), rng.randint(1, len(lease.items)))
        bad = keeps_failing | refused
        results = [(i, {"n": i, "source": lease.items[i][0]}) for i in chosen if i not in bad]
        errors = [ItemError(id=i, message=f"cannot do {i}", retry=i not in refused)
                  for i in chosen if i in bad]
        ack = await settled(job, lease.id, results, errors)
        assert ack.dropped == 0
        assert ack.written + ack.retried + ack.failed == len(chosen)
        for key in totals:
            totals[key] += getattr(ack, key)
        if not lease.items:
            held.remove(lease)
            assert lease.id not in job.leases
    assert job.done

    output, errors = output_of(job), errors_of(job)
    assert set(output) == set(range(LINES)) - keeps_failing - refused
    assert all(item == {"n": i, "source": source[i]} for i, item in output.items())
    assert set(errors) == keeps_failing | refused
    assert all(errors[i]["attempts"] == 3 for i in keeps_failing)
    assert all(errors[i]["attempts"] == 1 and errors[i]["error"] == f"cannot do {i}"
               for i in refused)
    assert totals["written"] == len(output) and totals["failed"] == len(errors)
    assert totals["retried"] == 2 * len(keeps_failing)

    report = job.report()
    assert report["written"] + report["failed"] == LINES
    assert (report["written"], report["failed"]) == (len(output), len(errors))
    assert (report["state"], report["status"], report["in_flight"], report["queued"]) == (
        DONE, "COMPLETE", 0, 0)
    fields = await store.read_job("j")
    assert fields["state"] == DONE
    assert int(fields["out_offset"]) == Path(job.spec.output_path or "").stat().st_size
    assert int(fields["err_offset"]) == Path(job.spec.error_path).stat().st_size


# --- results that arrive twice or too late ------------------------------------------------


async def test_the_first_result_wins(store: Store, data_dir: Path, small_input: list) -> None:
    job = await new_job(store, data_dir, batch_size=4)
    lease = await job.lease(Owner(), 4)
    assert lease is not None
    assert sorted(lease.items) == [0, 1, 2, 3]

    ack = await settled(job, lease.id, [(0, "first"), (0, "again"), (1, "first")], [])
    assert (ack.written, ack.dropped) == (2, 1)
    ack = await settled(job, lease.id, [(0, "late"), (2, "first")],
                           [ItemError(id=1, message="late error")])
    assert (ack.written, ack.failed, ack.dropped) == (1, 0, 2)
    assert sorted(lease.items) == [3]  # the rest stays leased
    ack = await settled(job, lease.id, [(3, "first"), (9, "never leased")], [])
    assert (ack.written, ack.dropped) == (1, 1)
    assert lease.id not in job.leases

    ack = await settled(job, lease.id, [(i, "duplicate") for i in range(4)], [])
    assert (ack.written, ack.dropped, ack.lease) == (0, 4, lease.id)
    assert output_of(job) == {i: "first" for i in range(4)}
    assert errors_of(job) == {}


async def test_a_result_for_an_unknown_lease_is_dropped(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir)
    ack = await settled(job, "no-such-lease", [(0, "x")], [ItemError(id=1, message="m")])
    assert (ack.written, ack.failed, ack.dropped) == (0, 0, 2)
    assert output_of(job) == {}


async def test_a_result_needs_a_lease_unless_the_job_is_write_only(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir)
    with pytest.raises(BadRequest, match="lease"):
        await settled(job, None, [(0, "x")], [])


async def test_a_late_result_after_expiry_is_dropped_and_the_items_served_again(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=3, lease_timeout=0.2)
    slow, other = Owner(), Owner()
    lease = await job.lease(slow, 3)
    assert lease is not None
    assert len(await job.expire(now=lease.deadline - 0.01)) == 0
    assert len(await job.expire(now=lease.deadline)) == 1
    assert job.leases == {} and slow.leases == set()
    assert slow.wakes == 1  # its credit is free again

    ack = await settled(job, lease.id, [(0, "late"), (1, "late"), (2, "late")], [])
    assert (ack.written, ack.dropped) == (0, 3)

    again = await job.lease(other, 3)
    assert again is not None and again.id != lease.id
    assert held(again.items) == {i: ({"n": i}, 1) for i in range(3)}  # one attempt used up
    ack = await settled(job, again.id, [(i, "on time") for i in range(3)], [])
    assert ack.written == 3
    assert output_of(job) == {i: "on time" for i in range(3)}


async def test_expiry_counts_as_an_attempt(store: Store, data_dir: Path, small_input: list) -> None:
    job = await new_job(store, data_dir, batch_size=2, lease_timeout=0.2, max_attempts=2)
    owner = Owner()
    for _ in range(2):
        lease = await job.lease(owner, 2)
        assert lease is not None and sorted(lease.items) == [0, 1]
        assert len(await job.expire(now=lease.deadline)) == 1
    errors = errors_of(job)
    assert sorted(errors) == [0, 1]
    assert errors[0]["attempts"] == 2
    assert "lease expired" in errors[0]["error"]
    lease = await job.lease(owner, 2)
    assert lease is not None and sorted(lease.items) == [2, 3]


async def test_release_requeues_an_owners_leases_at_once(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=3)
    gone, stays, newcomer, watcher = Owner(), Owner(), Owner(), Owner()
    job.watchers.add(watcher)
    first = await job.lease(gone, 3)
    second = await job.lease(gone, 3)
    kept = await job.lease(stays, 3)
    assert first and second and kept
    await settled(job, second.id, [(3, "done")], [])  # 4 and 5 still leased

    await job.release(gone)
    assert gone.leases == set()
    assert set(job.leases) == {kept.id}
    assert job.queued == 5
    assert watcher.wakes >= 1  # idle subscriptions hear about the requeued work

    taken = [await job.lease(newcomer, 3) for _ in range(2)]
    assert [sorted(t.items) for t in taken if t] == [[0, 1, 2], [4, 5]]
    assert job.queued == 0
    await job.release(newcomer)
    await job.release(stays)
    assert job.queued == 8
    await drain(job)
    assert output_of(job)[3] == "done"
    assert set(output_of(job)) == set(range(10))


# --- crashes -----------------------------------------------------------------------------


async def test_reopening_after_a_crash_cuts_files_back_and_requeues_leases(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    crashed = await new_job(store, data_dir, batch_size=10)
    owner = Owner()
    leases = [await crashed.lease(owner, 10) for _ in range(5)]
    assert all(leases)
    for lease in leases[:2]:
        await settled(crashed, lease.id, items_of(lease), [])
    assert sorted(leases[2].items) == list(range(20, 30))
    await settled(crashed, leases[2].id, items_of(leases[2])[:5],
                         [ItemError(id=25, message="gone", retry=False)])
    out, err = Path(crashed.spec.output_path or ""), Path(crashed.spec.error_path)
    committed = crashed.counts["out_offset"], crashed.counts["err_offset"]
    assert committed == (out.stat().st_size, err.stat().st_size)
    # a write that reached the files but whose commit never happened
    with out.open("ab") as f:
        f.write(b'{"id":30,"item":"written but never committed"}\n{"id":31,"ite')
    with err.open("ab") as f:
        f.write(b'{"id":32,"error":"uncommitted"}\n')

    job = await reopen(crashed)  # the old object is simply abandoned, as in a crash
    assert (out.stat().st_size, err.stat().st_size) == committed
    assert job.leases == {}
    assert job.queued == 4 + 10 + 10  # rest of the partial lease, two untouched ones
    assert (job.counts["next_id"], job.counts["written"], job.counts["failed"]) == (50, 25, 1)

    ack = await settled(job, leases[3].id, items_of(leases[3]), [])  # from before the crash
    assert (ack.written, ack.dropped) == (0, 10)
    await drain(job)
    assert set(output_of(job)) == set(range(LINES)) - {25}
    assert set(errors_of(job)) == {25}


async def test_resume_seeks_instead_of_reading_again(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    """Scribble over what was already read and settled: a reopened job must never look
    at it (a lease still out is read again, from its span of the file)."""
    source = issues_input.read_bytes()
    crashed = await new_job(store, data_dir, batch_size=50)
    owner = Owner()
    leases = [await crashed.lease(owner, 50) for _ in range(3)]
    consumed = crashed.counts["offset"]
    leases.append(await crashed.lease(owner, 50))
    assert all(leases)
    for lease in leases[:3]:
        await settled(crashed, lease.id, items_of(lease), [])
    assert crashed.counts["next_id"] == 200
    assert 0 < consumed < crashed.counts["offset"] < len(source)

    garbage = bytes(b if b == ord("\n") else ord("#") for b in source[:consumed])
    with issues_input.open("r+b") as f:
        f.write(garbage)  # same length, same line breaks, not one valid JSON line
    assert issues_input.stat().st_size == len(source)

    job = await reopen(crashed)
    await drain(job)
    assert errors_of(job) == {}
    originals = [orjson.loads(line) for line in source.splitlines()]
    assert output_of(job) == dict(enumerate(originals))


async def test_reopen_refuses_an_input_that_changed_under_the_cursor(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=3)
    lease = await job.lease(Owner(), 3)
    assert lease is not None
    await settled(job, lease.id, items_of(lease), [])
    (data_dir / "in.jsonl").write_bytes(b'{"x": 1}\n')  # shorter than the committed offset
    with pytest.raises(FormatError, match="offset"):
        await reopen(job)


async def test_a_lease_that_outlives_its_commit_keeps_its_span_of_the_file_not_its_items(
    store: Store, data_dir: Path
) -> None:
    """Redis holds where a fresh lease's records are; a reopen reads them again, skips
    the bad record among them without failing it twice, and loses nothing."""
    records = [{"n": k, "text": "x" * 200} for k in range(6)]
    lines = [orjson.dumps(r) for r in records]
    lines[2] = b"not json"
    (data_dir / "in.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    crashed = await new_job(store, data_dir, batch_size=3)
    lease = await crashed.lease(Owner(), 3)
    assert lease is not None and sorted(lease.items) == [0, 1, 3]
    await crashed.flushed()
    stored = await store.redis.hget("planchet:job:j:leases", lease.id)
    assert stored is not None and Span.unpack(stored) is not None
    assert len(stored) < 100  # no item in it

    job = await reopen(crashed)
    assert job.queued == 3
    await drain(job)
    assert output_of(job) == {k: records[k] for k in (0, 1, 3, 4, 5)}
    assert set(errors_of(job)) == {2}


async def test_a_span_of_the_file_that_changed_breaks_the_job_with_a_clear_error(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    crashed = await new_job(store, data_dir, batch_size=10)
    lease = await crashed.lease(Owner(), 10)
    assert lease is not None
    await crashed.flushed()
    source = issues_input.read_bytes()
    issues_input.write_bytes(b"\n" + source)  # every record moved by one byte
    with pytest.raises(FormatError, match="has changed under the job: records 0 to 9"):
        await reopen(crashed)
    issues_input.write_bytes(source)  # put back, the job reopens with nothing lost
    job = await reopen(crashed)
    await drain(job)
    assert len(output_of(job)) == LINES


async def test_a_gzip_lease_keeps_its_items_since_its_span_would_cost_a_full_inflate(
    store: Store, data_dir: Path, issues_input: Path
) -> None:
    (data_dir / "in.jsonl.gz").write_bytes(gzip.compress(issues_input.read_bytes()))
    crashed = await new_job(store, data_dir, batch_size=10, metadata={
        "input_file_path": "in.jsonl.gz", "output_file_path": "out.jsonl"})
    lease = await crashed.lease(Owner(), 10)
    assert lease is not None
    await crashed.flushed()
    stored = await store.redis.hget("planchet:job:j:leases", lease.id)
    assert stored is not None and Span.unpack(stored) is None
    assert [i for i, _, _ in unpack(stored)] == list(range(10))
    job = await reopen(crashed)
    await drain(job)
    assert len(output_of(job)) == LINES


async def test_a_missing_input_file_cannot_be_opened_until_it_is_back(
    store: Store, data_dir: Path
) -> None:
    with pytest.raises(FormatError, match="cannot open"):
        await new_job(store, data_dir)
    job = Job(build_spec(StartJob(id=1, job="j", reader="JsonlReader", writer="JsonlWriter",
                                  metadata={"input_file_path": "in.jsonl",
                                            "output_file_path": "out.jsonl"}), data_dir), store)
    OPENED.append(job)
    assert job.broken.kind is Fault.NOT_OPENED
    assert await job.lease(Owner(), 5) is None
    write_lines(data_dir / "in.jsonl", [{"n": 0}])
    await job.open()
    assert job.broken is None
    await drain(job)
    assert output_of(job) == {0: {"n": 0}}


# --- input and output formats ------------------------------------------------------------


async def test_malformed_lines_go_to_the_error_file_by_line_number(
    store: Store, data_dir: Path
) -> None:
    (data_dir / "in.jsonl").write_bytes(
        b'{"a": 0}\n'  # 0
        b"\n"  # 1 blank
        b'{"a": \n'  # 2 truncated
        b"\xff\xfe\n"  # 3 not UTF-8
        b'{"a": 4}\n'  # 4
        b"   \n"  # 5 blank
        b"[1, 2]\n"  # 6 any JSON document is an item
        b"not json\n"  # 7
        b'{"a": 8}'  # 8, no final newline
    )
    job = await new_job(store, data_dir, batch_size=2)
    await drain(job)
    assert output_of(job) == {0: {"a": 0}, 4: {"a": 4}, 6: [1, 2], 8: {"a": 8}}
    errors = errors_of(job)
    assert sorted(errors) == [1, 2, 3, 5, 7]
    assert "blank" in errors[1]["error"]
    assert "JSON" in errors[2]["error"]
    assert "UTF-8" in errors[3]["error"]
    assert (job.counts["written"], job.counts["failed"]) == (4, 5)


async def test_a_file_of_nothing_but_bad_lines_completes(store: Store, data_dir: Path) -> None:
    (data_dir / "in.jsonl").write_bytes(b"nope\n" * 7)
    job = await new_job(store, data_dir, batch_size=3)
    assert await job.lease(Owner(), 3) is None
    assert job.done
    assert sorted(errors_of(job)) == list(range(7))


async def test_an_empty_input_completes_at_once(store: Store, data_dir: Path) -> None:
    (data_dir / "in.jsonl").write_bytes(b"")
    job = await new_job(store, data_dir)
    assert await job.lease(Owner(), 3) is None
    assert job.done
    assert output_of(job) == {}


async def test_a_whole_batch_in_order_settles_without_an_item_map(
    store: Store, data_dir: Path, small_input: list, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The usual result, one per item in the batch's order, is taken as it is; in any
    other order it takes the general way, through the lease's item map, to the same end."""
    mapped: list[str] = []
    items = Lease.items
    assert items.fget is not None
    monkeypatch.setattr(Lease, "items", property(
        lambda lease: mapped.append(lease.id) or items.fget(lease), items.fset))
    job = await new_job(store, data_dir, batch_size=3)
    first, second = await job.lease(Owner(), 3), await job.lease(Owner(), 3)
    assert first is not None and second is not None
    assert first.outstanding == 3 and first.untried()
    ack = await settled(job, first.id, [(i, f"r{i}") for i, _ in first.batch], [])
    shuffled = [(i, f"r{i}") for i, _ in reversed(second.batch)]
    assert (await settled(job, second.id, shuffled, [])).written == ack.written == 3
    assert first.id not in mapped and second.id in mapped
    assert output_of(job) == {i: f"r{i}" for i in range(6)}
    assert not job.leases


@pytest.mark.parametrize("first", ["release", "error"])
async def test_a_whole_batch_after_part_went_back_writes_only_what_is_still_leased(
    store: Store, data_dir: Path, small_input: list, first: str
) -> None:
    """A result listing the whole batch in order, after one item was released or failed,
    takes the general way: that item is dropped, never written twice."""
    job = await new_job(store, data_dir, batch_size=3)
    lease = await job.lease(Owner(), 3)
    assert lease is not None
    ids = [i for i, _ in lease.batch]
    if first == "release":
        assert job.release_items(lease.id, [ids[1]]) == (1, 0)
    else:
        await settled(job, lease.id, [], [ItemError(id=ids[1], message="x")])
    ack = await settled(job, lease.id, [(i, f"r{i}") for i in ids], [])
    assert (ack.written, ack.dropped) == (2, 1)


async def test_a_result_the_writer_cannot_encode_is_failed(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=3)
    lease = await job.lease(Owner(), 3)
    assert lease is not None
    ack = await settled(job, lease.id, [(0, "ok"), (1, {1, 2}), (2, "ok")], [])
    assert (ack.written, ack.failed) == (2, 1)
    assert output_of(job) == {0: "ok", 2: "ok"}
    assert "cannot write result" in errors_of(job)[1]["error"]


async def test_a_csv_job(store: Store, data_dir: Path) -> None:
    (data_dir / "in.csv").write_text("name,size\na,1\nb,2\nc,3\n")
    job = await new_job(store, data_dir, reader="CsvReader", writer="CsvWriter",
                        metadata={"input_file_path": "in.csv", "output_file_path": "out.csv"},
                        batch_size=2)
    await drain(job)
    assert job.counts["written"] == 3
    assert (data_dir / "out.csv").read_text().count("\n") == 4  # a header and 3 rows


# --- modes -------------------------------------------------------------------------------


async def test_write_only_jobs_write_each_id_once(store: Store, data_dir: Path) -> None:
    job = await new_job(store, data_dir, mode="write", reader=None,
                        metadata={"output_file_path": "w.jsonl"})
    ack = await settled(job, None, [(1, "a"), (2, "b"), (1, "second")], [])
    assert (ack.lease, ack.written, ack.dropped) == (None, 2, 1)
    ack = await settled(job, None, [(2, "again"), (3, "c")], [ItemError(id=4, message="bad")])
    assert (ack.written, ack.dropped, ack.failed) == (1, 1, 1)
    assert await job.lease(Owner(), 10) is None  # nothing to hand out
    assert not job.done  # a write-only job ends when its producers say so

    job = await reopen(job)  # the ids survive a restart
    ack = await settled(job, None, [(1, "after restart"), (5, "e")], [])
    assert (ack.written, ack.dropped) == (1, 1)
    assert output_of(job) == {1: "a", 2: "b", 3: "c", 5: "e"}
    assert set(errors_of(job)) == {4}


async def test_write_only_an_id_both_written_and_failed_is_still_written(
    store: Store, data_dir: Path
) -> None:
    """An error next to a result for the same id must not unblock a second result."""
    job = await new_job(store, data_dir, mode="write", reader=None,
                        metadata={"output_file_path": "w.jsonl"})
    await settled(job, None, [(7, "written")], [ItemError(id=7, message="and failed")])
    ack = await settled(job, None, [(7, "written twice?")], [])
    assert (ack.written, ack.dropped) == (0, 1)
    assert output_of(job) == {7: "written"}


async def test_write_only_a_result_the_writer_refused_is_settled_as_failed(
    store: Store, data_dir: Path
) -> None:
    """Each id ends once, in the output or in the error file: never in both."""
    job = await new_job(store, data_dir, mode="write", reader=None,
                        metadata={"output_file_path": "w.jsonl"})
    ack = await settled(job, None, [(1, {1, 2})], [])  # a set: not JSON
    assert (ack.written, ack.failed) == (0, 1)
    ack = await settled(job, None, [(1, [1, 2])], [ItemError(id=1, message="again")])
    assert (ack.written, ack.failed, ack.dropped) == (0, 0, 2)
    assert output_of(job) == {}
    assert job.counts["failed"] == 1


async def test_read_only_jobs_ack_without_output(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, mode="read", writer=None, batch_size=4,
                        metadata={"input_file_path": "in.jsonl"})
    owner = Owner()
    lease = await job.lease(owner, 4)
    assert lease is not None
    ack = await settled(job, lease.id, items_of(lease)[:3], [ItemError(id=3, message="x",
                                                                     retry=False)])
    assert (ack.written, ack.failed) == (3, 1)
    await drain(job, owner)
    assert (job.counts["written"], job.counts["failed"]) == (9, 1)
    assert sorted(p.name for p in data_dir.iterdir()) == ["in.jsonl", "in.jsonl.errors.jsonl"]
    assert set(errors_of(job)) == {3}


# --- state -------------------------------------------------------------------------------


async def test_pause_stops_leasing_and_resume_continues(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=2)
    watcher = Owner()
    job.watchers.add(watcher)
    before = await job.lease(watcher, 2)
    assert before is not None

    await job.set_state(PAUSED)
    assert watcher.wakes == 1  # subscriptions stop asking
    assert await job.lease(watcher, 2) is None
    ack = await settled(job, before.id, items_of(before), [])  # work in flight still lands
    assert ack.written == 2
    assert (await store.read_job("j"))["state"] == PAUSED

    job = await reopen(job)  # the pause survives a restart
    assert job.state == PAUSED
    assert await job.lease(watcher, 2) is None

    job.watchers.add(watcher)
    wakes = watcher.wakes
    await job.set_state(RUNNING)
    assert watcher.wakes == wakes + 1  # and start again
    after = await job.lease(watcher, 2)
    assert after is not None and sorted(after.items) == [2, 3]


async def test_done_exactly_when_everything_is_written_or_failed(
    store: Store, data_dir: Path
) -> None:
    write_lines(data_dir / "in.jsonl", [{"n": n} for n in range(5)])
    job = await new_job(store, data_dir, batch_size=2, max_attempts=2)
    watcher = Owner()
    job.watchers.add(watcher)
    a, b, c = [await job.lease(watcher, 2) for _ in range(3)]
    assert a and b and c and sorted(c.items) == [4]
    assert await job.lease(watcher, 2) is None  # the end of the file, all in flight
    assert job.counts["exhausted"] and not job.done

    await settled(job, a.id, items_of(a), [])
    await settled(job, b.id, items_of(b)[:1], [])
    assert not job.done
    await settled(job, b.id, items_of(b), [])
    await settled(job, c.id, [], [ItemError(id=4, message="flaky")])  # retried
    assert not job.done and job.queued == 1
    retry = await job.lease(watcher, 2)
    assert retry is not None and held(retry.items) == {4: ({"n": 4}, 1)}
    assert not job.done
    wakes = watcher.wakes
    await settled(job, retry.id, [], [ItemError(id=4, message="flaky")])  # out of attempts
    assert job.done
    assert watcher.wakes > wakes
    assert (await store.read_job("j"))["state"] == DONE
    assert job.report()["status"] == "COMPLETE"
    assert await job.lease(watcher, 2) is None
    await job.set_state(RUNNING)  # a done job stays done
    assert job.done

    (data_dir / "in.jsonl").unlink()  # nothing is read again: a done job opens no files
    job = await reopen(job)
    assert job.done and job.broken is None
    assert set(output_of(job)) == {0, 1, 2, 3} and set(errors_of(job)) == {4}


async def test_a_crash_between_the_last_commit_and_done_still_ends_the_job(
    store: Store, data_dir: Path, small_input: list
) -> None:
    job = await new_job(store, data_dir, batch_size=5)
    await drain(job)
    await store.update_job("j", {"state": RUNNING})  # the "done" write never happened
    job = await reopen(job)
    assert job.done
    assert (await store.read_job("j"))["state"] == DONE


async def test_report_tracks_progress(store: Store, data_dir: Path, issues_input: Path) -> None:
    job = await new_job(store, data_dir, batch_size=100)
    report = job.report()
    assert (report["read"], report["written"], report["in_flight"], report["exhausted"]) == (
        0, 0, 0, False)
    assert report["bytes_total"] == issues_input.stat().st_size
    assert report["eta_seconds"] is None
    lease = await job.lease(Owner(), 100)
    assert lease is not None
    await settled(job, lease.id, items_of(lease)[:60], [])
    report = job.report()
    assert (report["read"], report["written"], report["in_flight"], report["queued"]) == (
        100, 60, 40, 0)
    assert 0 < report["bytes_read"] < report["bytes_total"]
    assert (report["status"], report["served"], report["received"]) == ("IN_PROGRESS", 40, 60)


# --- storage failures --------------------------------------------------------------------


async def test_a_redis_failure_breaks_the_job_until_it_is_reopened(
    store: Store, data_dir: Path, small_input: list, redis_proc: RedisProcess
) -> None:
    job = await new_job(store, data_dir, batch_size=3)
    owner = Owner()
    lease = await job.lease(owner, 3)
    assert lease is not None
    await settled(job, lease.id, items_of(lease)[:1], [])
    committed = job.counts["out_offset"]

    rest = items_of(lease)
    assert len(rest) == 2

    redis_proc.kill()
    await settled(job, lease.id, rest, [])  # answered; its commit fails, the job breaks
    assert job.broken and job.broken.kind is Fault.STORAGE
    assert await job.lease(owner, 3) is None
    ack = await settled(job, lease.id, rest, [])
    assert ack.dropped == 2  # nothing is taken while the state cannot be committed
    with pytest.raises(ServerError, match="storage failed"):
        await job.open()  # Redis still down: a ServerError, not a raw Redis error

    redis_proc.start()
    for _ in range(5):  # pooled sockets from before the restart fail once each
        try:
            await job.open()
            break
        except ServerError:
            continue
    assert job.broken is None
    assert Path(job.spec.output_path or "").stat().st_size == committed
    assert job.queued == 2
    await drain(job, owner)
    assert output_of(job) == {n: {"n": n} for n in range(10)}


async def test_a_job_whose_state_redis_lost_is_not_reopened(
    store: Store, data_dir: Path, small_input: list, redis_client: Any
) -> None:
    """Reopening from nothing would cut the output back to zero bytes: refuse instead."""
    job = await new_job(store, data_dir, batch_size=4)
    lease = await job.lease(Owner(), 4)
    assert lease is not None
    await settled(job, lease.id, items_of(lease), [])
    size = Path(job.spec.output_path or "").stat().st_size
    await redis_client.flushall()
    with pytest.raises(ServerError, match="gone from Redis"):
        await reopen(job)
    assert Path(job.spec.output_path or "").stat().st_size == size


# --- file failures -----------------------------------------------------------------------


async def test_a_failed_error_log_write_cannot_make_a_result_count_twice(
    store: Store, data_dir: Path, small_input: list
) -> None:
    """The output was appended, the error log was not: that step must vanish as a whole."""
    job = await new_job(store, data_dir, batch_size=4)
    lease = await job.lease(Owner(), 4)
    assert lease is not None
    assert job.files.errors is not None
    job.files.errors.close()  # the error log cannot be written (a full disk, say)
    items = items_of(lease)
    # answered at once; its group commit fails after, and with it the job
    await settled(job, lease.id, items[:2], [ItemError(id=2, message="no", retry=False)])
    assert job.broken and job.broken.kind is Fault.STEP  # maintenance will reopen it
    assert "not open for writing" in job.broken.reason
    ack = await settled(job, lease.id, items, [])
    assert ack.dropped == 4  # nothing more lands on top of the uncommitted bytes

    await job.open()
    await drain(job)
    assert output_of(job) == {n: {"n": n} for n in range(10)}


async def test_a_failed_error_log_write_does_not_skip_what_was_read(
    store: Store, data_dir: Path
) -> None:
    (data_dir / "in.jsonl").write_bytes(b'{"n": 0}\nbad\n{"n": 2}\n{"n": 3}\n')
    job = await new_job(store, data_dir, batch_size=2)
    assert job.files.errors is not None
    job.files.errors.close()
    await job.lease(Owner(), 2)  # read 0, 1 (bad), 2; logging 1 fails when committed
    await job.flushed()
    assert job.broken and job.broken.kind is Fault.STEP
    assert "not open for writing" in job.broken.reason
    await job.open()
    await drain(job)
    assert output_of(job) == {0: {"n": 0}, 2: {"n": 2}, 3: {"n": 3}}
    assert set(errors_of(job)) == {1}


async def test_report_survives_an_input_removed_after_reading(
    store: Store, data_dir: Path, small_input: list
) -> None:
    """Once the whole file is read the job no longer needs it, nor should its report."""
    job = await new_job(store, data_dir, batch_size=10)
    lease = await job.lease(Owner(), 10)
    assert lease is not None
    assert await job.lease(Owner(), 10) is None  # the end of the file
    (data_dir / "in.jsonl").unlink()
    report = job.report()
    assert report["bytes_total"] == report["bytes_read"] == job.counts["offset"]
    await settled(job, lease.id, items_of(lease), [])
    assert job.done
