"""Job administration: the server's jobs, and creating, resuming, cleaning, deleting them.

``Admin`` owns the registry of jobs and the one lock that orders every change to it.
It decides nothing about tokens (``auth`` does, before a request gets here) and knows
nothing of sessions: a job tells its own watchers about events. It also keeps the jobs
healthy: ``maintain`` expires the leases of hung workers and reopens jobs that a failed
step or a Redis outage left broken.

It also keeps the worker tokens (``grant``, ``tokens``, ``revoke``) in Redis and in
``Keys``. A grant names jobs: deleting a job (``delete``, ``purge``) takes it out of
every grant first, and a grant left with no job is removed, so a new job of the same
name never inherits an old worker token. ``clean`` and ``clean_start`` keep the grants:
the job lives on under its name (and a ``clean_start`` that sets a new admin token
does not cut its workers off; ``revoke`` does).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from .auth import Keys, WorkerGrant, digest
from .commit import Flusher
from .config import Settings
from .exceptions import JobConflict, JobNotFound, PlanchetError
from .formats import check_regular
from .jobs import Job
from .messages import StartJob
from .spec import JobSpec, build_spec
from .state import PAUSED, RUNNING, Fault, JobState
from .store import Store
from .writeonly import new_job

log = logging.getLogger("planchet")

RETRY_CAP = 30.0  # seconds: the longest wait before reopening a job whose step keeps failing


class Admin:
    def __init__(self, store: Store, settings: Settings, keys: Keys) -> None:
        self.store = store
        self.settings = settings
        self.keys = keys
        self.jobs: dict[str, Job] = {}
        self.flusher = Flusher(store)  # shared by every job: flushes waiting together are one
        self._lock = asyncio.Lock()
        self._retry: dict[str, tuple[int, float]] = {}  # job -> (failed reopens, next try)

    # --- life cycle -------------------------------------------------------------------

    async def load(self) -> None:
        """Load every job from Redis (requeueing old leases); one bad job stops no other."""
        for name in await self.store.job_names():
            record = await self.store.load_job(name)
            if record is None:
                continue
            try:
                spec = JobSpec.model_validate_json(record.spec)
            except ValidationError as exc:
                log.error("job %s has a spec this server cannot read, skipped: %s", name, exc)
                continue
            job = self.jobs[name] = self._job(spec)
            self.keys.jobs[name] = record.token
            with contextlib.suppress(PlanchetError):  # it is broken, and says why
                await job.open()
            if job.broken:
                log.error("job %s cannot be opened: %s", name, job.broken)
        await self._load_grants()

    async def _load_grants(self) -> None:
        """Load the worker tokens; drop jobs that are gone (a delete cut short)."""
        names = set(await self.store.job_names())
        changes: dict[str, dict[str, Any] | None] = {}
        for key, record in (await self.store.worker_tokens()).items():
            try:
                grant = WorkerGrant.from_record(key, record)
            except (KeyError, TypeError, ValueError) as exc:
                log.error("worker token %s cannot be read, skipped: %r", key, exc)
                continue
            kept = tuple(job for job in grant.jobs if job in names)
            if kept != grant.jobs:
                grant = dataclasses.replace(grant, jobs=kept)
                changes[key] = grant.record() if kept else None
            if kept:
                self.keys.workers[key] = grant
        if changes:
            await self.store.write_worker_tokens(changes)

    async def close(self) -> None:
        for job in self.jobs.values():
            await job.close()

    def _job(self, spec: JobSpec) -> Job:
        return new_job(spec, self.store, root=self.settings.data_dir, flusher=self.flusher)

    def get(self, name: str) -> Job:
        job = self.jobs.get(name)
        if job is None:
            raise JobNotFound(f"no job named {name!r}")
        return job

    # --- maintenance --------------------------------------------------------------------

    async def maintain(self) -> None:
        """One round: expire hung leases, reopen jobs that can be reopened."""
        for job in list(self.jobs.values()):
            try:
                if job.broken and job.broken.recoverable:
                    await self._reopen(job)
                elif not job.broken:
                    await job.expire()
            except PlanchetError as exc:
                log.warning("maintenance of %s: %s", job.name, exc)

    async def _reopen(self, job: Job) -> None:
        assert job.broken is not None
        failures, next_try = self._retry.get(job.name, (0, 0.0))
        if time.monotonic() < next_try:
            return
        if job.broken.kind is Fault.STORAGE and not await self.store.ping():
            return
        step = job.broken.kind is Fault.STEP
        try:
            await job.open()
        except PlanchetError:
            if step:  # a step that keeps failing (a bug): back off; Redis is waited on by PING
                delay = min(RETRY_CAP, self.settings.tick * 2 ** min(failures, 10))
                self._retry[job.name] = (failures + 1, time.monotonic() + delay)
            raise
        self._retry.pop(job.name, None)
        log.warning("job %s reopened from its last commit", job.name)

    # --- requests -----------------------------------------------------------------------

    async def start(self, msg: StartJob) -> dict[str, Any]:
        """Create a job, resume it (same spec), or replace it (``clean_start``)."""
        spec = build_spec(msg, self.settings.data_dir)  # as it will be read back
        async with self._lock:
            job = self.jobs.get(spec.name)
            if job is not None and not msg.clean_start:
                return await self._resume(job, spec)
            await self._claim_files(spec, fresh=msg.clean_start)
            self._check_input(spec)
            token = digest(msg.token) if msg.token else ""
            if job is not None:  # only now: a refused clean start keeps the old job
                token = token or self.keys.jobs.get(job.name, "")
                await self._remove(job)
            job = await self._create(spec, token)
            return job.report()

    async def command(self, kind: str, name: str) -> dict[str, Any]:
        """``pause``, ``resume``, ``delete``, ``clean`` or ``retry`` one job; its report
        after (for ``retry``, with how many items went back and where the old error
        file went: ``retried``, ``rotated_to``)."""
        job = self.get(name)
        async with self._lock:  # a retry too: no job may claim the name it rotates to
            if kind == "retry":
                retried = await job.retry()
                return {"job": job.name, **retried, **job.report()}
            if kind in ("pause", "resume"):
                await job.set_state(PAUSED if kind == "pause" else RUNNING,
                                    "paused" if kind == "pause" else "resumed")
            elif kind == "delete":
                await self._remove(job, ungrant=True)
                return {"deleted": job.name}
            else:  # clean: start again from the top, with empty output
                self._check_input(job.spec)
                token = self.keys.jobs.get(name, "")
                await self._remove(job)
                job = await self._create(job.spec, token)
        return job.report()

    async def purge(self) -> list[str]:
        async with self._lock:
            names = list(self.jobs)
            for name in names:
                await self._remove(self.jobs[name], ungrant=True)
        return names

    # --- worker tokens --------------------------------------------------------------------

    async def grant(self, jobs: list[str], label: str | None) -> dict[str, Any]:
        """A new worker token for ``jobs`` (which must exist); the reply shows its secret."""
        names = list(dict.fromkeys(jobs))
        async with self._lock:
            for name in names:
                self.get(name)
            grant, token = WorkerGrant.new(names, label, taken=self.keys.workers)
            await self.store.write_worker_tokens({grant.key: grant.record()})
            self.keys.workers[grant.key] = grant
        shown = grant.public()
        return {"key": shown.pop("key"), "token": token, **shown}

    def worker_tokens(self, job: str | None) -> list[dict[str, Any]]:
        """The worker tokens of ``job`` (every one if None), oldest first, no secrets."""
        if job is not None:
            self.get(job)
        grants = sorted(self.keys.workers.values(), key=lambda g: (g.created, g.key))
        return [g.public() for g in grants if job is None or job in g.jobs]

    async def revoke(self, key: str) -> dict[str, Any]:
        async with self._lock:
            self.keys.granted(key)  # it may have gone while we waited for the lock
            await self.store.write_worker_tokens({key: None})
            del self.keys.workers[key]
        return {"revoked": key}

    async def _ungrant(self, name: str) -> None:
        """Take job ``name`` out of every worker token; drop tokens left with no job."""
        changed = {key: dataclasses.replace(g, jobs=tuple(j for j in g.jobs if j != name))
                   for key, g in self.keys.workers.items() if name in g.jobs}
        if not changed:
            return
        await self.store.write_worker_tokens(
            {key: g.record() if g.jobs else None for key, g in changed.items()})
        for key, grant in changed.items():
            if grant.jobs:
                self.keys.workers[key] = grant
            else:
                del self.keys.workers[key]

    # --- helpers --------------------------------------------------------------------------

    async def _resume(self, job: Job, spec: JobSpec) -> dict[str, Any]:
        if job.spec.identity() != spec.identity():
            old, new = job.spec.identity(), spec.identity()
            differ = sorted(k for k in new if old[k] != new[k])
            raise JobConflict(
                f"job {spec.name} exists with another {', '.join(differ)}; "
                "start it with clean_start to replace it"
            )
        if spec != job.spec:  # only tunables changed: batch size, lease timeout, attempts
            await self.store.update_job(spec.name, {"spec": spec.model_dump_json()})
            job.spec = spec
        if job.broken and job.broken.kind is Fault.UNUSABLE:
            await job.open()  # e.g. the input file was missing and is back
        return job.report()

    async def _claim_files(self, spec: JobSpec, fresh: bool) -> None:
        """Refuse files another job writes or reads, and existing data unless fresh."""
        for path in [*spec.files, spec.input_path]:
            owner = await self.store.owner_of(path) if path else None
            if owner and owner != spec.name:
                raise JobConflict(f"{path} is written by job {owner}")
        for other in self.jobs.values():
            if other.name != spec.name and other.spec.input_path in spec.files:
                raise JobConflict(f"{other.spec.input_path} is the input of job {other.name}")
        for path in spec.files:
            if not fresh and self._size(path):
                raise JobConflict(
                    f"{path} already has data; remove it or use clean_start to overwrite"
                )

    def _size(self, path: str) -> int:
        """Bytes in a file the job will write; 0 if it does not exist yet."""
        if not os.path.lexists(path):
            return 0
        return check_regular(Path(path), self.settings.data_dir)

    def _check_input(self, spec: JobSpec) -> None:
        if spec.input_path:
            check_regular(Path(spec.input_path), self.settings.data_dir)

    async def _create(self, spec: JobSpec, token_digest: str) -> Job:
        fields = {"spec": spec.model_dump_json(), "token": token_digest, "state": RUNNING}
        await self.store.create_job(spec.name, fields, spec.files)
        job = self._job(spec)
        try:
            await job.open()
        except PlanchetError:
            await self.store.delete_job(spec.name, spec.files)
            raise
        self.jobs[spec.name] = job
        self.keys.jobs[spec.name] = token_digest
        return job

    async def _remove(self, job: Job, ungrant: bool = False) -> None:
        """Forget a job (and, if ``ungrant``, its worker tokens: before the job, so a
        failure between the two leaves fewer rights, never more). If Redis fails, the
        job stays: reopened now, or by maintenance."""
        await job.close()  # no step of the job can commit after this
        try:
            if ungrant:
                await self._ungrant(job.name)
            await self.store.delete_job(job.name, job.spec.files)
        except PlanchetError:
            with contextlib.suppress(PlanchetError):
                await job.open()
            raise
        self.jobs.pop(job.name, None)
        self.keys.jobs.pop(job.name, None)
        self._retry.pop(job.name, None)
        job.end("deleted")


__all__ = ["Admin", "JobState"]
