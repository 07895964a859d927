"""Who may do what: the master token, each job's admin token, worker tokens, and the
rule for each request.

* The **master token** (server configuration) allows everything. Without one, the
  server is open to whoever can reach it (and whose page's origin it accepts).
* A job's **admin token** (set by the ``start_job`` that created the job; only its
  SHA-256 is kept) is needed for everything on that job but ``report`` and ``watch``
  (whose ``status`` shows a job's workers and errors only to it: ``may_administer``). A job without
  one is open, as is a server without a master token.
* Creating a job, or replacing one (``clean_start``, which can name new files and
  truncate them), needs the master token, like ``jobs``, ``purge`` and ``tokens``
  without a job.
* A **worker token** (``pw_<key>_<secret>``, made by ``grant``) may only ``credit``,
  ``result``, ``release`` and ``extend`` on the jobs it was granted for (and ``report``,
  which is open). Anything else with it is refused, even where no token is needed: a
  worker token is never more than a worker. It is looked up by its 12-hex ``key``; only
  its SHA-256 is kept, so the secret is shown once, in the ``grant`` reply. One that
  does not match (unknown, revoked) counts as a wrong token.
* ``grant`` needs, for every job it names, that job's admin token or the master token;
  so does ``tokens`` for its job, and ``revoke`` for every job of the key it revokes.

A job check reads the message's own token if it has one, else the connection's
``hello`` token: a wrong per-message token never falls back to the ``hello`` one. The
same token decides whether the request comes from a worker token. A master check
passes if either is the master token, so a connection can prove the master token once
in ``hello`` while ``start_job.token`` sets the new job's own token.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from .exceptions import AuthError, BadRequest

OPEN = {"hello", "report", "watch"}
MASTER_ONLY = {"jobs", "purge"}
WORKER_KINDS = {"credit", "result", "release", "extend"}
WORKER_ONLY = "a worker token may only take batches and send results"
WORKER_TOKEN = re.compile(r"^pw_([0-9a-f]{12})_[A-Za-z0-9_-]+$")


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


@dataclass(frozen=True)
class WorkerGrant:
    """A worker token as the server keeps it: its key, digest, jobs, label, birth."""

    key: str
    digest: str
    jobs: tuple[str, ...]
    label: str | None
    created: float

    @classmethod
    def new(cls, jobs: Iterable[str], label: str | None, taken: Iterable[str] = ()
            ) -> tuple[WorkerGrant, str]:
        """A fresh grant and its token (the only time the token exists in clear)."""
        taken = set(taken)
        key = secrets.token_hex(6)
        while key in taken:
            key = secrets.token_hex(6)
        token = f"pw_{key}_{secrets.token_urlsafe(32)}"
        return cls(key, digest(token), tuple(jobs), label, round(time.time(), 3)), token

    @classmethod
    def from_record(cls, key: str, record: dict[str, Any]) -> WorkerGrant:
        """Read a grant as the store keeps it; KeyError/TypeError/ValueError if malformed."""
        jobs = record["jobs"]
        if not isinstance(jobs, list) or not all(isinstance(j, str) for j in jobs):
            raise TypeError("jobs must be a list of names")
        return cls(key, str(record["digest"]), tuple(jobs), record.get("label"),
                   float(record["created"]))

    def record(self) -> dict[str, Any]:
        """What the store keeps: everything but the key (its field name)."""
        return {"digest": self.digest, "jobs": list(self.jobs), "label": self.label,
                "created": self.created}

    def public(self) -> dict[str, Any]:
        """What ``tokens`` shows: never the secret nor its digest."""
        return {"key": self.key, "jobs": list(self.jobs), "label": self.label,
                "created": self.created}


class Keys:
    def __init__(self, master: str | None) -> None:
        self.master = master
        self.jobs: dict[str, str] = {}  # job name -> digest of its admin token ("" for none)
        self.workers: dict[str, WorkerGrant] = {}  # key -> worker token

    def is_master(self, token: str | None) -> bool:
        return bool(self.master and token and hmac.compare_digest(self.master, token))

    def worker(self, token: str | None) -> WorkerGrant | None:
        """The grant ``token`` proves, if it is a live worker token."""
        match = WORKER_TOKEN.match(token) if token else None
        grant = self.workers.get(match.group(1)) if match else None
        if grant is None or not hmac.compare_digest(grant.digest, digest(token or "")):
            return None
        return grant

    def check(self, kind: str, job: str | None, token: str | None, hello: str | None,
              replace: bool = False) -> None:
        """Raise ``AuthError`` unless this request may run (see the module's rules).

        ``job`` is None for server-wide requests; ``replace`` marks a ``clean_start``.
        ``grant`` and ``revoke`` name their jobs elsewhere: ``check_jobs`` checks them.
        """
        if kind in OPEN:
            return
        presented = token if token is not None else hello
        grant = self.worker(presented)
        if grant is not None:
            if kind not in WORKER_KINDS:
                raise AuthError(WORKER_ONLY)
            if job not in grant.jobs:
                raise AuthError(f"this worker token is not for job {job}")
            return
        exists = job is not None and job in self.jobs
        server_wide = kind in MASTER_ONLY or (kind == "tokens" and job is None)
        if server_wide or (kind == "start_job" and (replace or not exists)):
            self.check_master(token, hello, to=_purpose(kind, exists))
            if self.master:
                return  # the master token passes every job check too
        if exists:
            assert job is not None
            self.check_job(job, presented)

    def check_master(self, *tokens: str | None, to: str = "do this") -> None:
        """Pass if any of ``tokens`` (a message's, its session's) is the master token."""
        if self.master and not any(self.is_master(t) for t in tokens):
            raise AuthError(f"the server's master token is needed to {to}")

    def check_job(self, name: str, token: str | None) -> None:
        """Pass if the job has no token, or ``token`` is its token or the master token."""
        expected = self.jobs.get(name)
        if not expected or self.is_master(token):
            return
        if not token:
            raise AuthError(f"job {name} needs its token")
        if not hmac.compare_digest(expected, digest(token)):
            worker = WORKER_TOKEN.match(token)
            raise AuthError(f"wrong token for job {name}"
                            + (" (an unknown or revoked worker token)" if worker else ""))

    def may_administer(self, job: str, token: str | None, hello: str | None) -> bool:
        """Whether a request may see what only a job's admin sees (its workers and
        errors in ``watch``): the job's token, the master token, or a job without a
        token; never a worker token. Like ``check_job``, without raising."""
        presented = token if token is not None else hello
        if self.worker(presented) is not None:
            return False
        if self.is_master(token) or self.is_master(hello):
            return True
        try:
            self.check_job(job, presented)
        except AuthError:
            return False
        return True

    def check_jobs(self, jobs: Iterable[str], token: str | None, hello: str | None) -> None:
        """For ``grant`` and ``revoke``: pass if the request may administer every job."""
        if self.is_master(token) or self.is_master(hello):
            return
        presented = token if token is not None else hello
        if self.worker(presented) is not None:
            raise AuthError(WORKER_ONLY)
        for name in jobs:
            self.check_job(name, presented)

    def granted(self, key: str) -> WorkerGrant:
        """The worker token whose key is ``key``; ``BadRequest`` if there is none."""
        grant = self.workers.get(key)
        if grant is None:
            raise BadRequest(f"no worker token has the key {key!r}")
        return grant


def _purpose(kind: str, exists: bool) -> str:
    if kind == "start_job":
        return "replace a job (clean_start)" if exists else "create a job"
    if kind == "tokens":
        return "list every worker token"
    return f"use {kind!r}"
