"""Throughput of Planchet against doing the same work in one process, in the same run.

    python benchmarks/throughput.py [--repeat 50] [--work-ms 0 1] [--workers 1 4]

For each per-item cost (``--work-ms``; 0 measures Planchet's own overhead) it times
the baseline, one process that reads the file, works each item and writes the output
with Planchet's own reader and writer, then a Planchet server with an embedded Redis
and N worker processes on the same file. Figures are items/s and the ratio to the
baseline: on this machine's noise only ratios from one run mean much.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from planchet import PlanchetClient
from planchet.embedded import free_port
from planchet.formats import JsonlReader, JsonlWriter

HERE = Path(__file__).resolve().parent
SHARED = Path(os.environ.get("PLANCHET_SHARED_DATA", HERE.parent.parent / "shared" / "data"))
sys.path.insert(0, str(HERE))
from worker import work  # noqa: E402


def baseline(data: Path, work_ms: float, batch: int) -> float:
    reader = JsonlReader(data / "in.jsonl", {})
    writer = JsonlWriter(data / "direct.jsonl", {})
    reader.open()
    writer.open(0)
    start = time.perf_counter()
    n = 0
    while chunk := reader.read(batch):
        if not chunk.items:
            break
        writer.write([(i, work(item, work_ms)) for i, item in chunk.items])
        n += len(chunk.items)
    elapsed = time.perf_counter() - start
    reader.close()
    writer.close()
    return n / elapsed


def wait_healthy(port: int) -> None:
    for _ in range(300):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit("the server did not start")


def planchet(data: Path, workers: int, work_ms: float, batch: int, n_items: int) -> float:
    port = free_port()
    server = subprocess.Popen(
        [sys.executable, "-m", "planchet", "serve", "--port", str(port), "--data-dir", str(data)],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_healthy(port)
        url = f"ws://127.0.0.1:{port}"
        job = f"bench-{workers}-{work_ms}"
        client = PlanchetClient(url)
        client.start_job(job, {"input_file_path": "in.jsonl", "output_file_path": f"{job}.jsonl"},
                         "JsonlReader", writer_name="JsonlWriter", clean_start=True)
        start = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, str(HERE / "worker.py"), url, job, str(batch),
                                   str(work_ms)]) for _ in range(workers)]
        for proc in procs:
            proc.wait()
        elapsed = time.perf_counter() - start
        report = client.get_job_report(job)
        assert report["written"] == n_items and report["state"] == "done", report
        client.close()
        return n_items / elapsed
    finally:
        server.terminate()
        server.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--repeat", type=int, default=50, help="copies of the 200 headlines")
    parser.add_argument("--work-ms", type=float, nargs="+", default=[0.0, 1.0])
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--batch", type=int, default=100)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp)
        text = (SHARED / "news_headlines.jsonl").read_text()
        (data / "in.jsonl").write_text(text * args.repeat)
        n_items = len(text.splitlines()) * args.repeat
        print(f"{n_items} items, batch {args.batch}, {os.cpu_count()} CPUs")
        print(f"{'work/item':>10} {'setup':>22} {'items/s':>10} {'vs baseline':>12}")
        for work_ms in args.work_ms:
            base = baseline(data, work_ms, args.batch)
            print(f"{work_ms:>8g}ms {'baseline: one process':>22} {base:>10,.0f} {1:>11.2f}x")
            for workers in args.workers:
                rate = planchet(data, workers, work_ms, args.batch, n_items)
                label = f"planchet, {workers} worker{'s' * (workers > 1)}"
                print(f"{work_ms:>8g}ms {label:>22} {rate:>10,.0f} {rate / base:>11.2f}x")


if __name__ == "__main__":
    main()
