"""``planchet work``: a worker that pipes batches through any program as JSON lines."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

from .cli_common import tls
from .display import LiveLine, format_progress
from .exceptions import PlanchetError
from .progress import Progress

WORK_HELP = """\
Run a worker that pipes each batch through COMMAND as JSON lines, so a worker can
be written in any language.

COMMAND reads one line per item, {"id": ID, "item": ITEM}, on stdin and writes one
line per item on stdout: {"id": ID, "result": RESULT} or {"id": ID, "error": "why"}
(add "retry": false to send the item to the error file at once). Answers may come in
any order; flush stdout after each line, and write anything else to stderr.

By default COMMAND is started once and kept running as a co-process (so it loads
its model or opens its connections once): for each batch the worker writes the
batch's lines and reads exactly as many lines back. If it crashes mid-batch, the
first unanswered item is reported as an error (the one it was working on, for a
program that answers in order), it is restarted and the rest of the batch goes to
it again. With --per-batch, COMMAND is started afresh for each batch, its stdin is
closed after the batch, and every line it writes until it exits is read: handy
for filters such as `jq -c`. A program that has not answered a batch within its
lease timeout is killed (and restarted for the next batch).

Items without a valid answer are reported as errors; the server retries them up to
the job's max_attempts, then writes them to the job's error file. Exits 0 once the
job is done.

Example:  planchet work my-job -- python examples/uppercase.py
"""


def work_command(args: argparse.Namespace) -> int:
    from .worker import work

    if not args.program:
        raise PlanchetError("planchet work needs a command to run, after --")
    with LiveLine(sys.stderr) as live:  # a live line on a terminal; nothing in a log
        def show(progress: Progress) -> None:
            live.show(format_progress(progress), force=progress.final)

        tally = asyncio.run(work(args.job, args.program, url=args.url, token=args.token,
                                 prefetch=args.prefetch, batch_size=args.batch_size,
                                 per_batch=args.per_batch, ssl=tls(args),
                                 progress=show if live.live else None,
                                 max_failing_batches=args.max_failing_batches))
        live.clear()
    print(f"{args.job}: done; {tally.summary()}")
    return 0


def add_work(commands: Any, common: argparse.ArgumentParser) -> None:
    work = commands.add_parser(
        "work", parents=[common], help="process a job with any program (JSON lines)",
        description=WORK_HELP, formatter_class=argparse.RawDescriptionHelpFormatter,
        usage="planchet work JOB [options] -- COMMAND [ARGS...]",
    )
    work.add_argument("job", help="the job's name")
    work.add_argument("--prefetch", type=int, default=2,
                      help="batches to hold at once (default %(default)s)")
    work.add_argument("--batch-size", type=int, help="items per batch (default: the job's)")
    work.add_argument("--per-batch", action="store_true",
                      help="start COMMAND afresh for each batch instead of keeping it running")
    work.add_argument("--max-failing-batches", type=int, default=3, metavar="N",
                      help="stop once N batches in a row failed on every item: the program "
                           "is broken (0: never; default %(default)s)")
    work.add_argument("program", nargs="*", metavar="COMMAND",
                      help="the program and its arguments, after --")
    work.set_defaults(func=work_command)
