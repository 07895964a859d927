"""The ``planchet`` command: serve, and manage jobs from the shell.

Every client command takes ``--url`` (default ``$PLANCHET_URL``, else
ws://127.0.0.1:5005) and ``--token-file`` (else ``$PLANCHET_TOKEN``), so a shell that
exports them can drive a server without repeating itself. ``--token`` works too, with
a warning: any user of the machine can read it in ``ps``. ``--ca-file`` (else
``$PLANCHET_CA_FILE``) trusts a wss:// server's private certificate. Errors the server reports
come out as ``planchet: <code>: <message>`` on stderr with exit status 1.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .cli_common import client as connect
from .cli_common import client_options
from .cli_serve import add_serve
from .cli_tokens import add_token_commands
from .cli_work import add_work
from .display import LiveLine, format_report, format_status_line, format_table
from .exceptions import PlanchetError
from .version import __version__

# --- commands ---------------------------------------------------------------------------


def _start(args: argparse.Namespace) -> int:
    reader, writer = _reader_writer(args)
    metadata = dict(_parse_meta(args.meta))
    if args.input:
        metadata["input_file_path"] = args.input
    if args.output:
        metadata["output_file_path"] = args.output
    if args.bare:
        metadata["output"] = "bare"
    options = {k: v for k, v in (("batch_size", args.batch_size),
                                 ("lease_timeout", args.lease_timeout),
                                 ("batch_seconds", args.batch_seconds),
                                 ("max_attempts", args.max_attempts)) if v is not None}
    with connect(args) as client:
        report = client.start_job(args.job, metadata, reader, writer_name=writer,
                                  clean_start=args.clean_start, token=args.job_token,
                                  mode=args.mode, **options)
    _print_report(report, args.json)
    return 0


def _reader_writer(args: argparse.Namespace) -> tuple[str | None, str | None]:
    """JSONL by default, for whichever side the mode needs."""
    reader = args.reader or ("JsonlReader" if args.mode != "write" else None)
    writer = args.writer or ("JsonlWriter" if args.mode != "read" else None)
    return reader, writer


def _parse_meta(pairs: Sequence[str]) -> list[tuple[str, Any]]:
    """``KEY=VALUE`` pairs; a VALUE that parses as JSON (1, true, [..]) is taken as such."""
    parsed = []
    for pair in pairs:
        key, sep, raw = pair.partition("=")
        if not sep or not key:
            raise PlanchetError(f"--meta wants KEY=VALUE, not {pair!r}")
        try:
            value: Any = json.loads(raw)
        except ValueError:
            value = raw
        parsed.append((key, value))
    return parsed


def _jobs(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reports = client.list_jobs()
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(format_table(reports))
    return 0


def _status(args: argparse.Namespace) -> int:
    if args.watch:
        return _watch(args)
    with connect(args) as client:
        report = client.get_job_report(args.job)
    _print_report(report, args.json)
    return 0


def _watch(args: argparse.Namespace) -> int:
    """``status --watch``: the report again every ``--interval`` seconds, in place on a
    terminal (a line per refresh elsewhere), until the job is done."""
    if not args.interval > 0:
        raise PlanchetError("--interval wants a number of seconds above 0")
    with connect(args) as client, LiveLine(sys.stdout) as live:
        while True:
            report = client.get_job_report(args.job)
            if args.json:
                print(json.dumps(report), flush=True)
            elif live.live:
                live.show(f"{format_report(report)}\n{'updated':<10} "
                          f"{time.strftime('%H:%M:%S')} (Ctrl-C to stop)", force=True)
            else:
                print(format_status_line(report), flush=True)
            if report["state"] == "done":
                return 0
            time.sleep(args.interval)


def _job_command(args: argparse.Namespace) -> int:
    """pause, resume or delete."""
    with connect(args) as client:
        action = {"pause": client.pause_job, "resume": client.resume_job,
                  "delete": client.delete_job}[args.command]
        reply = action(args.job)
    if args.command == "delete" and not args.json:
        print(f"deleted job {args.job} (its output and error files stay on disk)")
    elif args.command == "delete":
        print(json.dumps(reply, indent=2))
    else:
        _print_report(reply, args.json)
    return 0


def _retry(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.retry_job(args.job)
    if args.json:
        print(json.dumps(reply, indent=2))
    elif reply["retried"]:
        print(f"job {args.job}: {reply['retried']} failed items back in the queue; "
              f"the old error file is now {reply['rotated_to']}")
    else:
        print(f"job {args.job}: no failed items to retry")
    return 0


# --- secrets ------------------------------------------------------------------------------


def _resolve_secrets(args: argparse.Namespace) -> None:
    """Fill ``args.token`` (and ``args.job_token``) from a flag, a file or the environment.

    A secret on the command line can be read by every user of the machine (``ps``): it
    still works, with a warning. ``serve`` reads ``$PLANCHET_TOKEN`` itself, in ``Settings``.
    """
    env = None if args.command == "serve" else os.environ.get("PLANCHET_TOKEN")
    args.token = _secret(args.token, args.token_file, "--token", env)
    if hasattr(args, "job_token"):
        args.job_token = _secret(args.job_token, args.job_token_file, "--job-token", None)


def _secret(value: str | None, path: str | None, flag: str, default: str | None) -> str | None:
    if path is not None:
        return read_token_file(path)
    if value is None:
        return default
    instead = f"{flag}-file" + (" or PLANCHET_TOKEN" if flag == "--token" else "")
    print(f"planchet: warning: {flag} on the command line can be read by other users of "
          f"this machine (ps); use {instead} instead", file=sys.stderr)
    return value


def read_token_file(path: str) -> str:
    """The token in ``path``, without its trailing newline."""
    try:
        token = Path(path).read_text(encoding="utf-8").rstrip("\r\n")
    except (OSError, UnicodeDecodeError) as exc:
        raise PlanchetError(f"cannot read the token file {path}: {exc}") from exc
    if not token:
        raise PlanchetError(f"the token file {path} is empty")
    return token


def _print_report(report: dict[str, Any], as_json: bool) -> None:
    print(json.dumps(report, indent=2) if as_json else format_report(report))


# --- parser -----------------------------------------------------------------------------


def _add_start(commands: Any, common: argparse.ArgumentParser) -> None:
    start = commands.add_parser(
        "start", parents=[common], help="start (or resume) a job",
        description="Start a job, or resume it if it exists with the same files; "
                    "paths are relative to the server's data dir. Prints the report.",
    )
    start.add_argument("job")
    start.add_argument("--reader", help="JsonlReader or CsvReader (default JsonlReader)")
    start.add_argument("--writer", help="JsonlWriter or CsvWriter (default JsonlWriter)")
    start.add_argument("--input", help="input file (metadata input_file_path)")
    start.add_argument("--output", help="output file (metadata output_file_path)")
    start.add_argument("--mode", choices=("read", "write", "read-write"), default="read-write")
    start.add_argument("--batch-size", type=int, help="items per batch (server default 100)")
    start.add_argument("--batch-seconds", type=float,
                       help="adaptive batching: size each worker's batches to take about this "
                            "long, starting from --batch-size (workers that name a batch size "
                            "keep theirs)")
    start.add_argument("--lease-timeout", type=float,
                       help="seconds a worker may hold a batch (server default 300)")
    start.add_argument("--max-attempts", type=int,
                       help="tries per item before it goes to the error file (default 5)")
    start.add_argument("--clean-start", action="store_true",
                       help="start from the top, overwriting the output")
    start.add_argument("--meta", action="append", default=[], metavar="KEY=VALUE",
                       help="more metadata for the reader/writer (repeatable)")
    start.add_argument("--bare", action="store_true",
                       help="write each result alone, without its id (the original Planchet's "
                            "output; metadata output=bare)")
    job_token = start.add_mutually_exclusive_group()
    job_token.add_argument("--job-token-file", metavar="PATH",
                           help="a file holding a token the job's workers will need")
    job_token.add_argument("--job-token", help="the job token itself: visible in ps")
    start.add_argument("--json", action="store_true", help="print the raw report")
    start.set_defaults(func=_start)


def _add_job_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    jobs = commands.add_parser("jobs", parents=[common], help="list the jobs")
    jobs.add_argument("--json", action="store_true", help="print the raw reports")
    jobs.set_defaults(func=_jobs)
    status = commands.add_parser("status", parents=[common],
                                 help="a job's counts, rate and ETA")
    status.add_argument("job")
    status.add_argument("--json", action="store_true",
                        help="print the raw report (with --watch: one JSON line per refresh)")
    status.add_argument("--watch", action="store_true",
                        help="refresh until the job is done: in place on a terminal, a line "
                             "per refresh on a pipe (Ctrl-C stops)")
    status.add_argument("--interval", type=float, default=2.0, metavar="SECONDS",
                        help="seconds between refreshes with --watch (default %(default)s)")
    status.set_defaults(func=_status)
    for name, text in (("pause", "stop serving a job's items"),
                       ("resume", "serve a paused job's items again"),
                       ("delete", "forget a job (its files stay on disk)")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("job")
        sub.add_argument("--json", action="store_true", help="print the raw report")
        sub.set_defaults(func=_job_command)
    retry = commands.add_parser(
        "retry", parents=[common], help="put a job's failed items back in the queue",
        description="Once the cause is fixed: every item of the job's error file goes back "
                    "in the queue (once), and the error file is renamed <error file>.<n>.")
    retry.add_argument("job")
    retry.add_argument("--json", action="store_true", help="print the raw reply")
    retry.set_defaults(func=_retry)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planchet",
        description="Dispatch the items of a large JSONL or CSV file to many workers.",
    )
    parser.add_argument("--version", action="version", version=f"planchet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)
    common = client_options()
    add_serve(commands)
    _add_start(commands, common)
    _add_job_commands(commands, common)
    add_work(commands, common)
    add_token_commands(commands, common)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse; everything after the first ``--`` is the command of ``planchet work``."""
    argv = list(sys.argv[1:] if argv is None else argv)
    tail: list[str] = []
    if "--" in argv:
        cut = argv.index("--")
        argv, tail = argv[:cut], argv[cut + 1:]
    parser = build_parser()
    args = parser.parse_args(argv)
    if tail:
        if args.command != "work":
            parser.error("'--' COMMAND is only for planchet work")
        args.program = [*args.program, *tail]
    return args


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    # its DEBUG is every frame, tokens included; -v is for Planchet's own messages
    logging.getLogger("websockets").setLevel(logging.INFO)
    try:
        _resolve_secrets(args)
        return args.func(args)
    except PlanchetError as exc:
        print(f"planchet: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:  # `planchet jobs | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


if __name__ == "__main__":
    sys.exit(main())
