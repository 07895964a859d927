"""The examples run as a user would run them: several processes against a real server.

``spacy_ner.py`` runs for real with spaCy (a test dependency): without the downloaded
model it uses a blank pipeline with an EntityRuler, which finds real entities in the
headlines. ``headline_entities.py`` is the same script with a model-free stand-in for
NER. The demo script runs too, on a small input in the test's directory.
"""

from __future__ import annotations

import collections
import json
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import REPO, clean_env

EXAMPLES = REPO / "examples"
REPEAT = 5  # 200 headlines x 5


@pytest.fixture
def many_headlines(data_dir: Path, shared_data: Path) -> int:
    """The shared headlines repeated, where the examples look: ./data/news_headlines.jsonl."""
    lines = (shared_data / "news_headlines.jsonl").read_bytes()
    (data_dir / "data").mkdir()
    (data_dir / "data" / "news_headlines.jsonl").write_bytes(lines * REPEAT)
    return lines.count(b"\n") * REPEAT


def run_processes(commands: list[list[str]], timeout: float = 60,
                  env: dict[str, str] | None = None) -> list[str]:
    """Run the commands at once; the output of each (stdout and stderr), all exit codes 0."""
    procs = [subprocess.Popen(c, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                              env={**clean_env(), **(env or {})}) for c in commands]
    outputs = []
    try:
        for proc in procs:
            out, _ = proc.communicate(timeout=timeout)
            assert proc.returncode == 0, out
            outputs.append(out)
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return outputs


def records_by_id(path: Path, expected: int) -> dict[int, dict[str, object]]:
    """Every id in ``range(expected)`` exactly once: no more, no fewer."""
    records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    counts = collections.Counter(r["id"] for r in records)
    assert [i for i, n in counts.items() if n > 1] == []
    assert set(counts) == set(range(expected))
    return {r["id"]: r["item"] for r in records}


def test_headline_entities_with_three_workers(
    serve_url: str, many_headlines: int, data_dir: Path
) -> None:
    """Three copies of the model-free entity example tag every headline exactly once."""
    script = str(EXAMPLES / "headline_entities.py")
    outputs = run_processes([[sys.executable, script, str(k), "--url", serve_url,
                              "--batch-size", "40"] for k in range(3)])
    assert all(out.rstrip().splitlines()[-1].startswith(f"worker {k}: ")
               for k, out in enumerate(outputs))
    items = records_by_id(data_dir / "data" / "entities.jsonl", many_headlines)
    assert not (data_dir / "data" / "entities.jsonl.errors.jsonl").read_bytes()
    assert items[1]["ents"] == ["Pearl Automation", "Founded", "Apple Veterans", "Shuts Down"]
    assert all(isinstance(item["ents"], list) for item in items.values())


def test_async_consumer_with_three_processes(
    serve_url: str, many_headlines: int, data_dir: Path
) -> None:
    """Three asyncio consumers share a job and count the words of every headline exactly once."""
    script = str(EXAMPLES / "async_consumer.py")
    run_processes([[sys.executable, script, "--url", serve_url, "--job", "counts",
                    "--batch-size", "25"] for _ in range(3)])
    items = records_by_id(data_dir / "data" / "word_counts.jsonl", many_headlines)
    for item in items.values():
        words = str(item["text"]).split()
        assert item["words"] == len(words)
        assert item["longest"] == max(words, key=len)


@pytest.mark.timeout(300)  # beyond its bounds: a start and two workers of 120 s each
def test_spacy_example_with_two_workers(
    serve_url: str, many_headlines: int, data_dir: Path
) -> None:
    """The original README's spaCy example, two copies at once, tags every headline once."""
    script = str(EXAMPLES / "spacy_ner.py")
    outputs = run_processes([[sys.executable, script, str(k)] for k in range(2)],
                            timeout=120, env={"PLANCHET_URL": serve_url})
    assert "Processing headlines batch..." in "".join(outputs)
    items = records_by_id(data_dir / "data" / "entities.jsonl", many_headlines)
    assert not (data_dir / "data" / "entities.jsonl.errors.jsonl").read_bytes()
    for item in items.values():
        assert all(isinstance(e, str) and e in str(item["text"]) for e in item["ents"])
    tagged = sum(bool(item["ents"]) for item in items.values())
    assert tagged >= many_headlines // 4, f"entities in only {tagged} of {many_headlines}"


def test_uppercase_speaks_the_worker_protocol() -> None:
    """The co-process example answers JSON lines as `planchet work` expects, errors included."""
    lines = "\n".join(json.dumps(r) for r in (
        {"id": 7, "item": {"text": "Hi there"}}, {"id": 8, "item": "plain"},
        {"id": 9, "item": 42})) + "\n"
    done = subprocess.run([sys.executable, str(EXAMPLES / "uppercase.py")], input=lines,
                          capture_output=True, text=True, timeout=30)
    assert [json.loads(line) for line in done.stdout.splitlines()] == [
        {"id": 7, "result": {"text": "HI THERE"}}, {"id": 8, "result": "PLAIN"},
        {"id": 9, "error": "item has no text", "retry": False}]


@pytest.mark.skipif(not Path("/proc/self/cwd").exists(), reason="the demo checks /proc")
@pytest.mark.timeout(300)  # beyond the demo's own bound of 120 s
def test_demo_script(tmp_path: Path, shared_data: Path) -> None:
    """The demo script runs a whole job with its own server and cleans up after itself."""
    env = {**clean_env(), "PLANCHET_SHARED_DATA": str(shared_data)}
    done = subprocess.run(
        [sys.executable, str(REPO / "scripts" / "demo.py"), "--repeat", "2", "--workers", "2",
         "--data-dir", str(tmp_path / "demo")],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].startswith("Planchet demo: 400 headlines, 2 workers")
    assert "400 lines, every id exactly once, 0 errors" in done.stdout
    assert "redis-server (pid " in done.stdout and ") is gone" in done.stdout
    assert lines[-1] == "OK"
