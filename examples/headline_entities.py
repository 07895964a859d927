"""``spacy_ner.py`` with a model-free stand-in for NER, for the demo and the tests.

The same script shape as the original README's spaCy example (``start_job``, then
``get``/``send`` until ``get`` returns ``[]``), but entities are runs of capitalised
words that are not common title-case words, so it runs anywhere without a model.
Run several at once; the first creates the job, the others resume it:

    seq 0 3 | parallel python examples/headline_entities.py {}

Settings come from flags or the environment: ``--url`` ($PLANCHET_URL, default
http://localhost:5005), ``--job`` ($PLANCHET_JOB), ``--input``/``--output``
($PLANCHET_INPUT/$PLANCHET_OUTPUT, relative to the server's data dir, default
./data/news_headlines.jsonl and ./data/entities.jsonl as in the original) and
``--batch-size`` ($PLANCHET_BATCH_SIZE, default 100).
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import time

from planchet import PlanchetClient

try:
    from tqdm import tqdm
except ImportError:  # tqdm only draws progress bars

    def tqdm(x):
        return x


WORD = re.compile(r"[A-Z][\w'.&-]*|\S+")
COMMON = frozenset({
    "A", "An", "And", "As", "At", "But", "By", "For", "From", "How", "If", "In", "Into", "Is",
    "It", "Its", "Nor", "Not", "Of", "Off", "On", "Or", "Our", "Out", "Over", "So", "The",
    "Their", "They", "This", "To", "Up", "Was", "We", "Were", "What", "When", "Where", "Which",
    "Who", "Why", "Will", "With", "You", "Your", "Are", "Be", "Can", "Do", "Does", "Has",
    "Have", "He", "Her", "His", "New", "No", "Now", "One", "She", "Than", "That", "Them",
    "There", "These", "Those", "Under", "After", "Before", "About", "More", "Most", "Can't",
    "Don't", "It's",
})


def entities(text: str) -> list[str]:
    """Runs of capitalised words, split at punctuation and common title-case words."""
    found: list[str] = []
    run: list[str] = []
    for word in WORD.findall(text.replace("\u2019", "'")):
        bare = word.rstrip(",:;!?'\"")
        if bare[:1].isupper() and bare not in COMMON:
            run.append(bare.removesuffix("'s"))
            if bare == word:
                continue
        if run:
            found.append(" ".join(run))
            run = []
    if run:
        found.append(" ".join(run))
    return found


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    env = os.environ.get
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("worker", nargs="?", default="0", help="a label for the output")
    parser.add_argument("--url", default=env("PLANCHET_URL", "http://localhost:5005"))
    parser.add_argument("--token", default=env("PLANCHET_TOKEN"))
    parser.add_argument("--job", default=env("PLANCHET_JOB", "headline-entities"))
    parser.add_argument("--input", default=env("PLANCHET_INPUT", "./data/news_headlines.jsonl"))
    parser.add_argument("--output", default=env("PLANCHET_OUTPUT", "./data/entities.jsonl"))
    parser.add_argument("--batch-size", type=int, default=int(env("PLANCHET_BATCH_SIZE", "100")))
    parser.add_argument("-q", "--quiet", action="store_true", help="no line per batch")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    client = PlanchetClient(args.url, args.token)
    job_name = args.job
    metadata = {"input_file_path": args.input, "output_file_path": args.output}
    # the first worker creates the job, the others resume it: no clean_start here
    client.start_job(job_name, metadata, "JsonlReader", writer_name="JsonlWriter")

    started, done = time.monotonic(), 0
    n_items = args.batch_size
    headlines = client.get(job_name, n_items)
    while headlines:
        ents = []
        if not args.quiet:
            print(f"worker {args.worker}: processing headlines batch...", flush=True)
        for id_, item in tqdm(headlines):
            item["ents"] = entities(item["text"])
            ents.append((id_, item))
        client.send(job_name, ents)
        done += len(ents)
        headlines = client.get(job_name, n_items)
    client.close()
    seconds = time.monotonic() - started
    print(f"worker {args.worker}: {done} headlines in {seconds:.1f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
