"""Benchmark worker: the original script's get/send loop, ``work_ms`` of waiting per item.

Usage: worker.py URL JOB BATCH_SIZE WORK_MS
"""

import sys
import time

from planchet import PlanchetClient


def work(item: dict, work_ms: float) -> dict:
    if work_ms:
        time.sleep(work_ms / 1000)  # stands in for a model or an API call
    return {"words": len(item["text"].split())}


def main() -> None:
    url, job, batch_size, work_ms = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    client = PlanchetClient(url)
    items = client.get(job, batch_size)
    while items:
        client.send(job, [(i, work(item, work_ms)) for i, item in items])
        items = client.get(job, batch_size)


if __name__ == "__main__":
    main()
