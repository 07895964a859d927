"""A worker process for the end-to-end tests: the original script's get/send loop.

Usage: worker.py URL JOB BATCH_SIZE DELAY. It sleeps DELAY seconds per batch so a test
can kill it, or the server, while it holds a lease; it says ``leased N`` on stdout as
each batch comes, so a test knows when it holds one. It retries the connection long
enough to ride out a server restart.
"""

import sys
import time

from planchet import PlanchetClient

url, job, batch_size, delay = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
client = PlanchetClient(url, retries=40)
items = client.get(job, batch_size)
while items:
    print(f"leased {len(items)}", flush=True)
    time.sleep(delay)
    client.send(job, [(i, {"text": item["text"], "words": len(item["text"].split())})
                      for i, item in items])
    items = client.get(job, batch_size)
print("worker done", flush=True)
