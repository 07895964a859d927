"""Progress of a worker, with no I/O: what both Python clients report to a callback.

A ``Tracker`` counts what the server answered to one job's results (written, failed for
good, queued again, dropped) as ``ClientSession`` files the acks, and asks for the job's
report every few seconds (never per batch) for the job's own totals and ETA. The clients
call ``emit`` at each batch and at the end; the callback gets a ``Progress`` each time the
counts moved, and a last one with ``final`` set.

``progress=True`` on a client means ``TqdmBar()``: a ``tqdm`` bar of the whole job.
"""

from __future__ import annotations

import collections
import math
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .messages import Ack

REPORT_EVERY = 5.0  # seconds between two reports asked for the job's totals and ETA
REPORT_SOON = 1.0  # ... while the report has no total or no ETA yet (a job starting)
RATE_WINDOW = 10.0  # seconds of acks the rate is measured over


@dataclass(frozen=True)
class Progress:
    """One job, as seen by one client. Counts are this client's items since it began."""

    job: str
    done: int  # results the server wrote
    failed: int  # items that went to the error file
    retried: int  # errors the server queued again, for another attempt
    dropped: int  # results that came too late (their items were served again)
    rate: float  # items per second this client settled, over the last seconds
    elapsed: float  # seconds since this client began on the job
    total: int | None = None  # the job's items (an estimate until its input is read)
    job_done: int | None = None  # the job's items written or failed, every worker's
    eta: float | None = None  # seconds until the job is done, at the job's rate
    final: bool = False  # the last call: the job is done, or the caller stopped

    @property
    def errors(self) -> int:
        """Items this client's worker failed: for good or to be tried again."""
        return self.failed + self.retried


ProgressCallback = Callable[[Progress], object]
ProgressOption = ProgressCallback | bool | None


def job_total(report: dict[str, Any]) -> int | None:
    """The job's items: exact once its input is read, else estimated from the bytes read."""
    read = int(report.get("read") or 0)
    if report.get("exhausted"):
        return read
    done_bytes, size = report.get("bytes_read") or 0, report.get("bytes_total") or 0
    return round(read * size / done_bytes) if done_bytes and size else None


class Tracker:
    """The counts behind the ``Progress`` of one job; ``emit`` hands them to the callback."""

    def __init__(self, job: str, callback: ProgressCallback, token: str | None = None,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.job = job
        self.callback = callback
        self.token = token  # for the report requests
        self.clock = clock
        self.started = clock()
        self.counts: collections.Counter[str] = collections.Counter()
        self.samples: collections.deque[tuple[float, int]] = collections.deque()
        self.report: dict[str, Any] | None = None
        self.report_at = -math.inf
        self.settled_at_report = 0  # this client's settled items when the report came
        self.asking: int | None = None  # the key of the report request in flight
        self.answered = False  # the first report request was answered (or refused)
        self.shown: tuple[int, ...] | None = None

    def acked(self, ack: Ack) -> None:
        self.counts.update(written=ack.written, failed=ack.failed, retried=ack.retried,
                           dropped=ack.dropped)
        handled = self.counts["written"] + self.counts["failed"] + self.counts["retried"]
        now = self.clock()
        self.samples.append((now, handled))
        while len(self.samples) > 2 and self.samples[1][0] < now - RATE_WINDOW:
            self.samples.popleft()

    def report_due(self) -> bool:
        report = self.report
        known = report is not None and report.get("eta_seconds") is not None and (
            job_total(report) is not None)
        every = REPORT_EVERY if known else REPORT_SOON
        return self.asking is None and self.clock() - self.report_at >= every

    def reported(self, report: dict[str, Any] | None) -> None:
        """The job's report came (None: it was refused; the counts go on without it)."""
        self.asking = None
        self.answered = True
        self.report_at = self.clock()
        if report is not None:
            self.report = report
            self.settled_at_report = self.counts["written"] + self.counts["failed"]

    def rate(self) -> float:
        if len(self.samples) < 2:
            return 0.0
        (t0, n0), (t1, n1) = self.samples[0], self.samples[-1]
        return (n1 - n0) / (t1 - t0) if t1 > t0 else 0.0

    def snapshot(self, final: bool = False) -> Progress:
        c, now = self.counts, self.clock()
        total = job_done = eta = None
        if self.report is not None:
            total = job_total(self.report)
            since = c["written"] + c["failed"] - self.settled_at_report
            job_done = self.report["written"] + self.report["failed"] + since
            total = None if total is None else max(total, job_done)  # it was an estimate
            if self.report.get("eta_seconds") is not None:
                eta = max(0.0, self.report["eta_seconds"] - (now - self.report_at))
        return Progress(job=self.job, done=c["written"], failed=c["failed"],
                        retried=c["retried"], dropped=c["dropped"], rate=self.rate(),
                        elapsed=now - self.started, total=total, job_done=job_done,
                        eta=eta, final=final)

    def emit(self, final: bool = False) -> None:
        """Call back if anything moved since the last call (always when ``final``). Not
        before the first report is answered, so the job's totals come with the first call."""
        if not final and self.asking is not None and not self.answered:
            return
        progress = self.snapshot(final)
        key = (progress.done, progress.failed, progress.retried, progress.dropped,
               progress.total or 0, progress.job_done or 0)
        if final or key != self.shown:
            self.shown = key
            self.callback(progress)


class TqdmBar:
    """A ``tqdm`` bar of the whole job (its items written or failed, of its total);
    what ``progress=True`` means. Keyword arguments go to ``tqdm`` (``file=``, ``desc=``)."""

    def __init__(self, **options: Any) -> None:
        try:
            from tqdm.auto import tqdm  # type: ignore[import-untyped, unused-ignore]
        except ImportError as exc:
            raise ImportError("progress=True draws a tqdm bar, and tqdm is not installed: "
                              "pip install tqdm, or pass progress=<a function> that "
                              "takes a planchet Progress") from exc
        self.tqdm = tqdm
        self.options = {"unit": "item", "dynamic_ncols": True, **options}
        self.bar: Any = None

    def __call__(self, progress: Progress) -> None:
        n = progress.job_done if progress.job_done is not None else (
            progress.done + progress.failed)
        if self.bar is None:
            self.bar = self.tqdm(desc=self.options.pop("desc", progress.job),
                                 total=progress.total, initial=n, **self.options)
        bar = self.bar
        if progress.total is not None and progress.total != bar.total:
            bar.total = progress.total
        bar.set_postfix(errors=progress.errors, refresh=False)
        bar.update(max(0, n - bar.n))
        if progress.final:
            bar.close()


def make_callback(option: ProgressOption) -> ProgressCallback | None:
    """What a client's ``progress`` argument means: None/False none, True a tqdm bar."""
    if option is None or option is False:
        return None
    if option is True:
        return TqdmBar()
    if not callable(option):
        raise TypeError(f"progress must be a function of a Progress, True or None, "
                        f"not {option!r}")
    return option
