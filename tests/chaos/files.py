"""The chaos job's files: the input it reads, and the verdict on what it wrote.

The input is the shared headlines, repeated, with poisoned lines at seeded positions.
Ids are 0-based line numbers, so the input is also the answer key: every id exactly
once across the output and error files; only poisoned ids in the error file; every
output line ``shout`` of its input line; no partial or unreadable line; a report that
says done with counts that match the files.
"""

from __future__ import annotations

import json
import random
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from examples.uppercase import shout

BOM = b"\xef\xbb\xbf"  # before line 0, which is a healthy headline and must stay one
HUGE_BYTES = 20 * 2**20  # above the server's 16 MiB frame and line limits
COPIES = 3  # of each cheap poison; the huge one comes once


def poisons() -> dict[str, bytes]:
    """A line of each kind the server must survive, by name."""
    return {
        "deep": b"[" * 300 + b"]" * 300,  # parses (depth < 1024), orjson cannot encode it
        "invalid_json": b'{"text": "unterminated',
        "invalid_utf8": b'{"text": "bad \xff\xfe bytes"}',
        "int_2_70": b'{"text": "a big number", "n": %d}' % 2**70,
        "blank": b"",
    }


@dataclass(frozen=True)
class ChaosInput:
    path: Path
    total: int
    poisoned: dict[int, str]  # id -> kind

    def lines(self) -> list[bytes]:
        """The file's lines, by id (the BOM left on line 0)."""
        return self.path.read_bytes().split(b"\n")[: self.total]


def write_input(path: Path, headlines: Path, items: int, seed: int) -> ChaosInput:
    """Write ``items`` lines to ``path``: headlines, and poisons at seeded positions."""
    rng = random.Random(seed)
    kinds = [kind for kind in poisons() for _ in range(COPIES)] + ["huge"]
    positions = rng.sample(range(1, items), len(kinds))
    poisoned = dict(zip(positions, kinds, strict=True))
    with open(path, "wb") as out:
        out.write(BOM)
        for line in _lines(headlines, items, poisoned):
            out.write(line + b"\n")
    return ChaosInput(path, items, poisoned)


def _lines(headlines: Path, items: int, poisoned: dict[int, str]) -> Iterator[bytes]:
    healthy = [line for line in headlines.read_bytes().splitlines() if line.strip()]
    table = poisons()
    for i in range(items):
        kind = poisoned.get(i)
        if kind == "huge":
            yield b'{"text": "' + b"x" * HUGE_BYTES + b'"}'
        elif kind:
            yield table[kind]
        else:
            yield healthy[i % len(healthy)]


NO_RESULT = object()  # what a line that may have no output line "expects"


def expected(line: bytes) -> Any:
    """The result this line must have in the output; NO_RESULT if it may have none."""
    try:
        return shout(json.loads(line.removeprefix(BOM).decode()))
    except ValueError:  # not UTF-8, not JSON, or no text to shout
        return NO_RESULT


def same(result: Any, line: bytes, exact: bool) -> bool:
    """Is ``result`` what ``line`` must give? ``exact`` tells 1 from 1.0 and 2**70 from
    its float too (slower: for the poisoned lines; healthy headlines hold only text)."""
    want = expected(line)
    if exact and want is not NO_RESULT:
        return canonical(result) == canonical(want)
    return result == want


def canonical(value: Any) -> str:
    return json.dumps(value, sort_keys=True, ensure_ascii=False)


SHOW = 5  # ids or reasons quoted per problem


def read_lines(path: Path, problems: list[str]) -> list[dict[str, Any]]:
    """The file's JSON lines; a partial last line or an unreadable one is a problem."""
    data = path.read_bytes() if path.exists() else b""
    if data and not data.endswith(b"\n"):
        partial = len(data) - data.rfind(b"\n") - 1
        problems.append(f"{path.name}: partial last line ({partial} bytes, no newline)")
    records = []
    for n, line in enumerate(data.splitlines()):
        try:
            record = json.loads(line)
        except ValueError:
            record = None
        if isinstance(record, dict) and "id" in record:
            records.append(record)
        else:
            problems.append(f"{path.name}: line {n + 1} is not a record: {line[:80]!r}")
    return records


def check_job(source: ChaosInput, output: Path, errors: Path,
              report: dict[str, Any] | None) -> list[str]:
    """Everything wrong with one finished job; empty when it is right."""
    problems: list[str] = []
    written = read_lines(output, problems)
    failed = read_lines(errors, problems)
    problems += _check_ids(source, [r["id"] for r in written], [r["id"] for r in failed])
    problems += _check_failures(source, failed)
    problems += _check_values(source, written)
    problems += _check_report(source, report, len(written), len(failed))
    return problems


def _check_ids(source: ChaosInput, written: list[int], failed: list[int]) -> list[str]:
    seen = Counter(written) + Counter(failed)
    twice = sorted(i for i, n in seen.items() if n > 1)
    lost = sorted(set(range(source.total)) - seen.keys())
    alien = sorted(i for i in seen if not (isinstance(i, int) and 0 <= i < source.total))
    problems = []
    if lost:
        problems.append(f"{len(lost)} ids lost (in neither file): {_some(lost, source)}")
    if twice:
        problems.append(f"{len(twice)} ids settled more than once: {_some(twice, source)}")
    if alien:
        problems.append(f"{len(alien)} ids that are no input line: {alien[:SHOW]}")
    return problems


def _check_failures(source: ChaosInput, failed: list[dict[str, Any]]) -> list[str]:
    healthy = [r for r in failed if r["id"] not in source.poisoned]
    if not healthy:
        return []
    reasons = Counter(str(r.get("error"))[:70] for r in healthy).most_common(SHOW)
    return [f"{len(healthy)} healthy ids in the error file: "
            f"{_some(sorted(r['id'] for r in healthy), source)}; reasons: "
            + "; ".join(f"{n} x {reason!r}" for reason, n in reasons)]


def _check_values(source: ChaosInput, written: list[dict[str, Any]]) -> list[str]:
    lines = source.lines()
    wrong = [i for i, item in ((r["id"], r.get("item")) for r in written)
             if isinstance(i, int) and 0 <= i < source.total
             and not same(item, lines[i], exact=i in source.poisoned)]
    if not wrong:
        return []
    first = next(r for r in written if r["id"] == wrong[0])
    return [f"{len(wrong)} output values differ from their input: {_some(wrong, source)}; "
            f"id {wrong[0]} holds {canonical(first.get('item'))[:80]}"]


def _check_report(source: ChaosInput, report: dict[str, Any] | None,
                  written: int, failed: int) -> list[str]:
    if report is None:
        return ["no final report from the server"]
    want = {"state": "done", "read": source.total, "written": written, "failed": failed,
            "in_flight": 0, "queued": 0}
    wrong = {k: report.get(k) for k, v in want.items() if report.get(k) != v}
    if not wrong:
        return []
    return [f"report says {wrong} where the input and files say "
            + str({k: want[k] for k in wrong})]


def _some(ids: list[int], source: ChaosInput) -> str:
    """A few of ``ids``, each with its poison kind if it has one."""
    quoted = [f"{i}({source.poisoned[i]})" if i in source.poisoned else str(i)
              for i in ids[:SHOW]]
    return ", ".join(quoted) + (", ..." if len(ids) > SHOW else "")
