"""Who may do what: the master token, each job's token, and the rule for each request.

* The **master token** (server configuration) allows everything. Without one, the
  server is open to whoever can reach it (and whose page's origin it accepts).
* A **job token** (set by the ``start_job`` that created the job; only its SHA-256 is
  kept) is needed for everything on that job but ``report``.
* Creating a job, or replacing one (``clean_start``, which can name new files and
  truncate them), needs the master token, like ``jobs`` and ``purge``.

A job check reads the message's own token if it has one, else the connection's
``hello`` token: a wrong per-message token never falls back to the ``hello`` one. A
master check passes if either is the master token, so a connection can prove the master
token once in ``hello`` while ``start_job.token`` sets the new job's own token.
"""

from __future__ import annotations

import hashlib
import hmac

from .exceptions import AuthError

OPEN = {"hello", "report"}
MASTER_ONLY = {"jobs", "purge"}


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Keys:
    def __init__(self, master: str | None) -> None:
        self.master = master
        self.jobs: dict[str, str] = {}  # job name -> digest of its token ("" for none)

    def is_master(self, token: str | None) -> bool:
        return bool(self.master and token and hmac.compare_digest(self.master, token))

    def check(self, kind: str, job: str | None, token: str | None, hello: str | None,
              replace: bool = False) -> None:
        """Raise ``AuthError`` unless this request may run (see the module's rules).

        ``job`` is None for server-wide requests; ``replace`` marks a ``clean_start``.
        """
        if kind in OPEN:
            return
        exists = job is not None and job in self.jobs
        if kind in MASTER_ONLY or (kind == "start_job" and (replace or not exists)):
            self.check_master(token, hello, to=_purpose(kind, exists))
            if self.master:
                return  # the master token passes every job check too
        if exists:
            assert job is not None
            self.check_job(job, token if token is not None else hello)

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
            raise AuthError(f"wrong token for job {name}")


def _purpose(kind: str, exists: bool) -> str:
    if kind == "start_job":
        return "replace a job (clean_start)" if exists else "create a job"
    return f"use {kind!r}"
