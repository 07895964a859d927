"""A co-process for ``planchet work``: upper-cases each item's text, one JSON line at a time.

Run it as a worker of a job whose items are ``{"text": ...}`` objects or strings:

    planchet start shout --input data/news_headlines.jsonl --output data/shout.jsonl
    planchet work shout -- python examples/uppercase.py

It reads ``{"id": ID, "item": ITEM}`` lines on stdin and writes ``{"id": ID, "result":
ITEM}`` lines on stdout, flushing each one: ``planchet work`` waits for the answers of
a batch before it sends the next, so an answer left in a buffer would stall it. Any
language works the same way; this one needs nothing but Python's standard library.
"""

import json
import sys


def shout(item):
    """The item with its text upper-cased; a ValueError for items that have none."""
    if isinstance(item, str):
        return item.upper()
    if isinstance(item, dict) and isinstance(item.get("text"), str):
        return {**item, "text": item["text"].upper()}
    raise ValueError("item has no text")


def main() -> None:
    for line in sys.stdin:
        if not line.strip():
            continue
        request = json.loads(line)
        try:
            answer = {"id": request["id"], "result": shout(request["item"])}
        except ValueError as exc:
            answer = {"id": request["id"], "error": str(exc), "retry": False}
        print(json.dumps(answer, ensure_ascii=False), flush=True)


if __name__ == "__main__":
    main()
