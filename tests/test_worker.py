"""``planchet work``: whole jobs through real programs, crashes, bad answers, hangs.

The server is a ``planchet serve`` subprocess (the ``serve_url`` fixture of conftest.py);
the programs are small Python scripts written into the test's directory.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from planchet import PlanchetClient
from planchet.worker import Answers
from tests.support import REPO, clean_env, run

UPPERCASE = str(REPO / "examples" / "uppercase.py")


def write_items(data_dir: Path, texts: list[str], name: str = "in.jsonl") -> str:
    with open(data_dir / name, "w", encoding="utf-8") as f:
        for text in texts:
            f.write(json.dumps({"text": text}) + "\n")
    return name


def start(url: str, job: str, source: str, **options: object) -> None:
    with PlanchetClient(url) as client:
        client.start_job(job, {"input_file_path": source, "output_file_path": f"{job}.jsonl"},
                         "JsonlReader", writer_name="JsonlWriter", **options)


def read_jsonl(path: Path) -> list[dict[str, object]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]


def ids_once(records: list[dict[str, object]]) -> set[int]:
    """The ids of ``records``, after checking that none appears twice."""
    counts = collections.Counter(r["id"] for r in records)
    assert [i for i, n in counts.items() if n > 1] == []
    return set(counts)  # type: ignore[arg-type]


def script(tmp_path: Path, body: str) -> str:
    path = tmp_path / "program.py"
    path.write_text(textwrap.dedent(body))
    return str(path)


def test_uppercase_coprocess_does_a_whole_job(
    serve_url: str, headlines: str, data_dir: Path
) -> None:
    start(serve_url, "up", headlines, batch_size=30)
    done = subprocess.run(
        [sys.executable, "-m", "planchet", "work", "up", "--url", serve_url, "--prefetch", "2",
         "--", sys.executable, UPPERCASE],
        capture_output=True, text=True, env=clean_env(), timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("up: done; 200 results and 0 failed attempts from 7 batches")
    records = read_jsonl(data_dir / "up.jsonl")
    assert ids_once(records) == set(range(200))
    source = read_jsonl(data_dir / headlines)
    for r in records:
        assert r["item"] == {**source[r["id"]], "text": source[r["id"]]["text"].upper()}


CRASHER = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        if "poison" in request["item"]["text"]:
            sys.exit(3)  # dies mid-batch, with the rest of the batch unanswered
        print(json.dumps({"id": request["id"], "result": request["item"]["text"]}), flush=True)
"""


def test_a_crashing_coprocess_costs_only_the_items_that_crash_it(
    serve_url: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = [f"item {i}" + (" poison" if i in (0, 13, 14, 39) else "") for i in range(50)]
    start(serve_url, "crash", write_items(data_dir, texts), batch_size=10, max_attempts=3)
    code, out, _ = run(capsys, "work", "crash", "--url", serve_url, "--",
                       sys.executable, script(tmp_path, CRASHER))
    assert code == 0
    assert "46 results and 12 failed attempts" in out  # 4 poisonous items, 3 attempts each
    errors = read_jsonl(data_dir / "crash.jsonl.errors.jsonl")
    assert ids_once(errors) == {0, 13, 14, 39}
    assert {(e["attempts"], e["error"]) for e in errors} == {
        (3, f"{sys.executable} {tmp_path}/program.py exited with code 3 on this item")}
    written = read_jsonl(data_dir / "crash.jsonl")
    assert ids_once(written) == set(range(50)) - {0, 13, 14, 39}
    assert all(r["item"] == texts[r["id"]] for r in written)  # type: ignore[index]


def test_per_batch_mode_runs_a_filter_per_batch(
    serve_url: str, headlines: str, data_dir: Path, tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    counter = tmp_path / "runs"
    one_liner = (
        "import json, sys; open(sys.argv[1], 'a').write('x');"
        "[print(json.dumps({'id': r['id'], 'result': len(r['item']['text'])}))"
        " for r in map(json.loads, sys.stdin)]"
    )
    start(serve_url, "lengths", headlines, batch_size=50)
    code, out, _ = run(capsys, "work", "lengths", "--url", serve_url, "--per-batch", "--",
                       sys.executable, "-c", one_liner, str(counter))
    assert code == 0, out
    assert counter.read_text() == "xxxx"  # one process per batch of 50
    source = read_jsonl(data_dir / headlines)
    records = read_jsonl(data_dir / "lengths.jsonl")
    assert ids_once(records) == set(range(200))
    assert all(r["item"] == len(source[r["id"]]["text"]) for r in records)  # type: ignore[index]


SLOPPY = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        i, text = request["id"], request["item"]["text"]
        if "garbage" in text:
            print("this is not json", flush=True)
        elif "stranger" in text:
            print(json.dumps({"id": i + 1000, "result": text}), flush=True)
        elif "refuse" in text:
            print(json.dumps({"id": i, "error": "refused", "retry": False}), flush=True)
        else:
            print(json.dumps({"id": i, "result": text}), flush=True)
"""


def test_bad_answers_fail_their_items_and_the_program_goes_on(
    serve_url: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["ok", "garbage", "ok", "stranger", "refuse", "ok", "ok", "garbage", "ok", "ok"]
    start(serve_url, "sloppy", write_items(data_dir, texts), batch_size=4, max_attempts=2)
    code, _, _ = run(capsys, "work", "sloppy", "--url", serve_url, "--",
                     sys.executable, script(tmp_path, SLOPPY))
    assert code == 0
    errors = {e["id"]: e for e in read_jsonl(data_dir / "sloppy.jsonl.errors.jsonl")}
    assert sorted(errors) == [1, 3, 4, 7]
    assert errors[4]["error"] == "refused" and errors[4]["attempts"] == 1  # no retry asked
    assert "not JSON: this is not json" in errors[1]["error"]  # type: ignore[operator]
    assert "no such id waiting" in errors[3]["error"]  # type: ignore[operator]
    assert errors[1]["attempts"] == 2
    assert ids_once(read_jsonl(data_dir / "sloppy.jsonl")) == {0, 2, 5, 6, 8, 9}


CHATTY = """
    import json, sys
    for line in sys.stdin:
        request = json.loads(line)
        if "chatty" in request["item"]["text"]:
            print("a stray debug line on stdout", flush=True)
        print(json.dumps({"id": request["id"], "result": "fine"}), flush=True)
"""


def test_a_stray_line_costs_one_retry_not_the_batches_after_it(
    serve_url: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["chatty" if i == 7 else f"item {i}" for i in range(20)]
    start(serve_url, "chatty", write_items(data_dir, texts), batch_size=5, max_attempts=2)
    code, out, _ = run(capsys, "work", "chatty", "--url", serve_url, "--prefetch", "1", "--",
                       sys.executable, script(tmp_path, CHATTY))
    assert code == 0
    assert "20 results and 1 failed attempt" in out  # id 9's answer was left unread, once
    assert ids_once(read_jsonl(data_dir / "chatty.jsonl")) == set(range(20))
    assert read_jsonl(data_dir / "chatty.jsonl.errors.jsonl") == []


HANGER = """
    import json, sys, time
    for line in sys.stdin:
        request = json.loads(line)
        if "hang" in request["item"]["text"]:
            time.sleep(120)
        print(json.dumps({"id": request["id"], "result": "fine"}), flush=True)
"""


def test_a_hung_program_is_killed_at_the_lease_timeout(
    serve_url: str, data_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    texts = ["a", "b", "hang", "c", "d"]
    start(serve_url, "hung", write_items(data_dir, texts), batch_size=1, max_attempts=1,
          lease_timeout=1.0)
    code, _, _ = run(capsys, "work", "hung", "--url", serve_url, "--prefetch", "1", "--",
                     sys.executable, script(tmp_path, HANGER))
    assert code == 0
    assert ids_once(read_jsonl(data_dir / "hung.jsonl.errors.jsonl")) == {2}
    assert ids_once(read_jsonl(data_dir / "hung.jsonl")) == {0, 1, 3, 4}


def test_a_command_that_never_runs_stops_the_worker_not_the_job(
    serve_url: str, headlines: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    start(serve_url, "typo", headlines)
    missing = str(tmp_path / "no_such_script.py")
    code, _, err = run(capsys, "work", "typo", "--url", serve_url, "--", sys.executable, missing)
    assert code == 1
    assert "planchet: program_failed: " in err and "is the command right?" in err
    code, _, err = run(capsys, "work", "typo", "--url", serve_url, "--", str(tmp_path / "nope"))
    assert code == 1 and "planchet: program_failed: cannot run " in err
    with PlanchetClient(serve_url) as client:
        report = client.get_job_report("typo")
    assert (report["failed"], report["written"]) == (0, 0)  # every item is still to do


def test_work_on_an_unknown_job(serve_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run(capsys, "work", "nope", "--url", serve_url, "--", "cat")
    assert code == 1
    assert err == "planchet: job_not_found: no job named 'nope'\n"


def test_answers_sort_lines_into_results_errors_and_bad_lines() -> None:
    answers = Answers([(1, "a"), (2, "b"), (3, "c"), (4, "d")])
    for line in (b'{"id": 2, "result": "B"}', b"nonsense", b'{"id": 2, "result": "again"}',
                 b'{"id": 3, "error": "no", "retry": false}', b'{"id": 1}', b'[1, 2]'):
        answers.take(line)
    assert answers.results == [(2, "B")]
    assert [(e.id, e.message, e.retry) for e in answers.errors] == [(3, "no", False)]
    assert len(answers.bad) == 4
    answers.blame_first("it crashed")
    answers.fail_rest("no answer")
    assert [(e.id, e.message.split(";")[0]) for e in answers.errors[1:]] == [
        (1, "it crashed on this item"), (4, "no answer")]
    assert "not JSON: nonsense" in answers.errors[-1].message
