"""An asyncio consumer: batches are pushed to it, two at a time, and acked as they finish.

``AsyncPlanchetClient.batches(job, prefetch=2)`` keeps two batches in flight, so the
next batch is already here while this one is being worked on; ``batch.ack`` sends the
results and returns what became of them. Here the work is a word count per headline:

    python examples/async_consumer.py --job word-counts

Flags or environment, as in ``headline_entities.py``: ``--url`` ($PLANCHET_URL),
``--job`` ($PLANCHET_JOB), ``--input``/``--output`` ($PLANCHET_INPUT/$PLANCHET_OUTPUT,
relative to the server's data dir), ``--batch-size`` ($PLANCHET_BATCH_SIZE).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from typing import Any

from planchet import AsyncPlanchetClient


def count_words(item: dict[str, Any]) -> dict[str, Any]:
    words = item["text"].split()
    return {**item, "words": len(words), "longest": max(words, key=len, default="")}


async def consume(args: argparse.Namespace) -> int:
    metadata = {"input_file_path": args.input, "output_file_path": args.output}
    done = 0
    async with AsyncPlanchetClient(args.url, args.token) as client:
        await client.start_job(args.job, metadata, "JsonlReader", writer_name="JsonlWriter",
                               batch_size=args.batch_size)
        async for batch in client.batches(args.job, prefetch=2):
            results = [(id_, count_words(item)) for id_, item in batch.items]
            ack = await batch.ack(results)
            done += ack.written
    print(f"{args.job}: wrote {done} results", flush=True)
    return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", default=env("PLANCHET_URL", "ws://localhost:5005"))
    parser.add_argument("--token", default=env("PLANCHET_TOKEN"))
    parser.add_argument("--job", default=env("PLANCHET_JOB", "word-counts"))
    parser.add_argument("--input", default=env("PLANCHET_INPUT", "./data/news_headlines.jsonl"))
    parser.add_argument("--output", default=env("PLANCHET_OUTPUT", "./data/word_counts.jsonl"))
    parser.add_argument("--batch-size", type=int, default=int(env("PLANCHET_BATCH_SIZE", "100")))
    return parser.parse_args(argv)


if __name__ == "__main__":
    sys.exit(asyncio.run(consume(parse_args(None))))
