"""How the command line shows reports: durations, sizes, progress, the jobs table.

``LiveLine`` is the live display of ``planchet work`` and ``planchet status --watch``: on
a terminal it rewrites its text in place, a few times a second at most; on a pipe or in
a log it shows nothing, so they get only the final summary (or one line per refresh).
"""

from __future__ import annotations

import logging
import math
import os
import time
from collections.abc import Callable
from typing import Any, TextIO

from .progress import Progress, job_total


def human_duration(seconds: float | None) -> str:
    """``None`` -> "unknown"; 75 -> "1m 15s"; 7300 -> "2h 01m"."""
    if seconds is None:
        return "unknown"
    s = round(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m {s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h {s % 3600 // 60:02d}m"
    return f"{s // 86400}d {s % 86400 // 3600:02d}h"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")


def _progress(report: dict[str, Any]) -> str:
    read, done_bytes, total = report["read"], report["bytes_read"], report["bytes_total"]
    if report.get("exhausted"):
        return f"{read:,} items read (the whole input)"
    if not total:
        return f"{read:,} items read"
    estimate = f" of ~{round(read * total / done_bytes):,}" if done_bytes else ""
    share = 100 * done_bytes / total
    return f"{read:,}{estimate} items read ({share:.0f}% of {human_bytes(total)})"


def format_report(report: dict[str, Any]) -> str:
    """A job report as aligned ``label  value`` lines, for people."""
    state = report["state"]
    eta = "done" if state == "done" else human_duration(report.get("eta_seconds"))
    if state == "paused":
        eta = "paused"
    rows = [
        ("job", f"{report['job']} ({state}, {report.get('mode', 'read-write')})"),
        ("progress", _progress(report)),
        ("written", f"{report['written']:,}"),
        ("failed", f"{report['failed']:,}"),
        ("in flight", f"{report['in_flight']:,}"),
        ("queued", f"{report['queued']:,}"),
        ("rate", f"{report.get('rate') or 0:,.1f} items/s"),
        ("eta", eta),
    ]
    if report.get("error"):
        rows.append(("error", str(report["error"])))
    return "\n".join(f"{label:<10} {value}" for label, value in rows)


TABLE_COLUMNS = (("NAME", "job"), ("STATE", "state"), ("WRITTEN", "written"),
                 ("FAILED", "failed"), ("IN FLIGHT", "in_flight"), ("QUEUED", "queued"),
                 ("RATE/S", "rate"))


def format_table(reports: list[dict[str, Any]]) -> str:
    """``planchet jobs``: one row per job, numbers right-aligned."""
    if not reports:
        return "no jobs"
    rows = [[h for h, _ in TABLE_COLUMNS]]
    for r in sorted(reports, key=lambda r: r["job"]):
        rows.append([_cell(r.get(key)) for _, key in TABLE_COLUMNS])
    widths = [max(len(row[c]) for row in rows) for c in range(len(TABLE_COLUMNS))]
    lines = []
    for row in rows:
        cells = [row[0].ljust(widths[0]), row[1].ljust(widths[1])]
        cells += [v.rjust(w) for v, w in zip(row[2:], widths[2:], strict=True)]
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:,.1f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


# --- live display ---------------------------------------------------------------------------


def format_progress(p: Progress) -> str:
    """``planchet work``'s live line: this worker's counts, then the job's."""
    text = (f"{p.job}: {p.done:,} done ({p.rate:,.0f} items/s), {p.errors:,} "
            f"error{'' if p.errors == 1 else 's'}")
    if p.dropped:
        text += f", {p.dropped:,} dropped"
    if p.total and p.job_done is not None:
        text += f" | job {100 * p.job_done / p.total:.0f}% of ~{p.total:,}"
    if p.eta is not None:
        text += f", ETA {human_duration(p.eta)}"
    return text


def format_status_line(report: dict[str, Any]) -> str:
    """``planchet status --watch`` on a pipe: one line per refresh, time first."""
    settled = report["written"] + report["failed"]
    total = job_total(report)
    share = f"{100 * settled / total:.0f}% ({settled:,} of ~{total:,})" if total else (
        f"{settled:,} settled")
    eta = "done" if report["state"] == "done" else human_duration(report.get("eta_seconds"))
    return (f"{time.strftime('%H:%M:%S')} {report['job']} {report['state']}: {share}, "
            f"{report.get('rate') or 0:,.1f} items/s, ETA {eta}; {report['failed']:,} "
            f"failed, {report['in_flight']:,} in flight, {report['queued']:,} queued")


class LiveLine:
    """Text kept up to date in place on a terminal; nothing at all anywhere else.

    As a context manager it clears itself before each log record (the next ``show``
    draws it again under the record) and, at the end, leaves what it shows on screen.
    """

    def __init__(self, stream: TextIO, interval: float = 0.25,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.stream = stream
        self.live = _is_terminal(stream)
        self.interval = interval  # seconds between two redraws, at least
        self.clock = clock
        self.lines = 0  # lines of text on screen
        self.last = -math.inf

    def show(self, text: str, force: bool = False) -> None:
        """Draw ``text`` over what is shown, unless the last draw is too recent."""
        now = self.clock()
        if not self.live or (not force and now - self.last < self.interval):
            return
        self.last = now
        width = _width(self.stream) - 1  # a full-width line would wrap the cursor
        lines = [line[:width] for line in text.splitlines()] or [""]
        self.stream.write(self._home() + "\x1b[K\n".join(lines) + "\x1b[J")
        self.stream.flush()
        self.lines = len(lines)

    def clear(self) -> None:
        """Erase what is shown."""
        if self.lines:
            self.stream.write(self._home() + "\x1b[J")
            self.stream.flush()
            self.lines = 0

    def keep(self) -> None:
        """Leave what is shown, and go to the next line."""
        if self.lines:
            self.stream.write("\n")
            self.stream.flush()
            self.lines = 0

    def _home(self) -> str:
        return "\r" + (f"\x1b[{self.lines - 1}A" if self.lines > 1 else "")

    def _before_log(self, record: logging.LogRecord) -> bool:
        self.clear()
        self.last = -math.inf  # drawn again at the next show
        return True

    def __enter__(self) -> LiveLine:
        for handler in logging.getLogger().handlers:
            handler.addFilter(self._before_log)
        return self

    def __exit__(self, *_: object) -> None:
        for handler in logging.getLogger().handlers:
            handler.removeFilter(self._before_log)
        self.keep()


def _is_terminal(stream: TextIO) -> bool:
    try:
        return stream.isatty() and os.environ.get("TERM") != "dumb"
    except (AttributeError, ValueError):  # a stream without isatty, or closed
        return False


def _width(stream: TextIO) -> int:
    try:
        return os.get_terminal_size(stream.fileno()).columns or 80
    except (AttributeError, ValueError, OSError):
        return 80
