"""How the command line shows reports: durations, sizes, progress, the jobs table."""

from __future__ import annotations

from typing import Any


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
