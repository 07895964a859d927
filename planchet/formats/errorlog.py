"""Append-only JSONL log of records that failed for good.

It follows the writers' contract (open at the committed offset, one fsynced write per
batch, the new offset returned) so failures survive a restart exactly like results.
"""

from __future__ import annotations

import orjson

from planchet.formats.base import AppendOnlyFile


def _line(record_id: int, error: str, attempts: int | None) -> bytes:
    record: dict[str, object] = {"id": record_id, "error": error}
    if attempts is not None:
        record["attempts"] = attempts
    try:
        return orjson.dumps(record)
    except orjson.JSONEncodeError:
        # A reason with lone surrogates still gets logged, escaped, rather than lost.
        record["error"] = error.encode("utf-8", "backslashreplace").decode("utf-8")
        return orjson.dumps(record)


class ErrorLog(AppendOnlyFile):
    """One line per failure: ``{"id": ..., "error": ..., "attempts": ...}``."""

    def write(self, records: list[tuple[int, str, int | None]]) -> int:
        """Append the failures in one fsynced write; return the new offset."""
        return self.append(encode_errors(records))


def encode_errors(records: list[tuple[int, str, int | None]]) -> bytes:
    """The error-file lines for ``records``, ready to append."""
    lines = [_line(record_id, str(error), attempts) for record_id, error, attempts in records]
    return b"\n".join(lines) + b"\n" if lines else b""
