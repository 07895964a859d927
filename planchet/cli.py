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
import asyncio
import json
import logging
import os
import ssl
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from .cli_tokens import add_token_commands
from .client import DEFAULT_URL, PlanchetClient
from .config import DEFAULT_PORT, Settings
from .display import format_report, format_table
from .exceptions import PlanchetError
from .version import __version__

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


# --- commands ---------------------------------------------------------------------------


def _serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = Settings.load(
        host=args.host, port=args.port, data_dir=args.data_dir, redis_url=args.redis,
        token=args.token, allow_origins=args.allow_origin,
        max_connections=args.max_connections,
        max_pending_connections=args.max_pending_connections, crash_grace=args.crash_grace,
        compression=args.compression or None, resume_grace=args.resume_grace,
        tls_cert=args.tls_cert, tls_key=args.tls_key, pages_dir=args.pages,
    )
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        runner.run(run(settings))
    return 0


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (faster sockets), unless
    ``PLANCHET_LOOP=asyncio`` asks for the standard one."""
    if os.environ.get("PLANCHET_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def _client(args: argparse.Namespace) -> PlanchetClient:
    return PlanchetClient(args.url, args.token, retries=2, timeout=60, ssl=_tls(args))


def _tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A TLS context trusting ``--ca-file`` as well as the system's CAs; None without one."""
    if not args.ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PlanchetError(f"cannot read the CA file {args.ca_file}: {exc}") from exc


def _start(args: argparse.Namespace) -> int:
    reader, writer = _reader_writer(args)
    metadata = dict(_parse_meta(args.meta))
    if args.input:
        metadata["input_file_path"] = args.input
    if args.output:
        metadata["output_file_path"] = args.output
    options = {k: v for k, v in (("batch_size", args.batch_size),
                                 ("lease_timeout", args.lease_timeout),
                                 ("batch_seconds", args.batch_seconds),
                                 ("max_attempts", args.max_attempts)) if v is not None}
    with _client(args) as client:
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
    with _client(args) as client:
        reports = client.list_jobs()
    if args.json:
        print(json.dumps(reports, indent=2))
    else:
        print(format_table(reports))
    return 0


def _status(args: argparse.Namespace) -> int:
    with _client(args) as client:
        report = client.get_job_report(args.job)
    _print_report(report, args.json)
    return 0


def _job_command(args: argparse.Namespace) -> int:
    """pause, resume or delete."""
    with _client(args) as client:
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


def _work(args: argparse.Namespace) -> int:
    from .worker import work

    if not args.program:
        raise PlanchetError("planchet work needs a command to run, after --")
    tally = asyncio.run(work(args.job, args.program, url=args.url, token=args.token,
                             prefetch=args.prefetch, batch_size=args.batch_size,
                             per_batch=args.per_batch, ssl=_tls(args)))
    print(f"{args.job}: done; {tally.summary()}")
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


def _client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("PLANCHET_URL", DEFAULT_URL),
                        help="server URL (default $PLANCHET_URL or %(default)s)")
    _add_token_options(common, "master or job token (else $PLANCHET_TOKEN)")
    common.add_argument("--ca-file", metavar="PATH", default=os.environ.get("PLANCHET_CA_FILE"),
                        help="PEM certificates to trust for a wss:// server, such as a "
                             "self-signed one (default $PLANCHET_CA_FILE)")
    return common


def _add_token_options(parser: argparse.ArgumentParser, text: str) -> None:
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH",
                        help=f"a file holding the {text}")
    tokens.add_argument("--token", help="the token itself: visible to other users in ps")


def _add_serve(commands: Any) -> None:
    serve = commands.add_parser(
        "serve", help="run the server",
        description="Run the server. Every option can also be set as PLANCHET_<OPTION>.",
    )
    serve.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    serve.add_argument("--port", type=int, help=f"port (default {DEFAULT_PORT})")
    serve.add_argument("--data-dir", help="job files must be inside it (default: .)")
    serve.add_argument(
        "--redis", help="Redis URL; without one a private redis-server runs under the data dir"
    )
    _add_token_options(serve, "master token, for server-wide operations "
                              "(else $PLANCHET_TOKEN)")
    serve.add_argument("--allow-origin", action="append", metavar="ORIGIN",
                       help="a web origin (https://host[:port]) whose pages may connect, "
                            "besides loopback and the server's own; repeatable; '*' for any "
                            "(default $PLANCHET_ALLOW_ORIGIN, comma-separated)")
    serve.add_argument("--max-connections", type=int,
                       help="open WebSocket connections at most; past it an upgrade gets "
                            "503 (default 1000)")
    serve.add_argument("--max-pending-connections", type=int,
                       help="connections that have not said hello yet, at most; the oldest "
                            "is dropped for a new one (default 100)")
    serve.add_argument("--compression", action="store_true",
                       help="compress WebSocket frames (permessage-deflate): for slow links; "
                            "costs CPU on both ends (default off, $PLANCHET_COMPRESSION)")
    serve.add_argument("--crash-grace", type=float, metavar="SECONDS",
                       help="a worker that vanishes sooner than this after getting a batch "
                            "is not charged an attempt for it (default 1)")
    serve.add_argument("--resume-grace", type=float, metavar="SECONDS",
                       help="how long a resumable worker that dropped (a browser tab "
                            "reloading, a Wi-Fi blip) keeps its batches (default 10)")
    serve.add_argument("--tls-cert", metavar="PATH",
                       help="certificate chain (PEM): serve wss:// and https://")
    serve.add_argument("--tls-key", metavar="PATH", help="private key (PEM) of --tls-cert")
    serve.add_argument("--pages", metavar="DIR",
                       help="serve the files of DIR at /pages/ (your browser work modules)")
    serve.set_defaults(func=_serve)


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
    status.add_argument("--json", action="store_true", help="print the raw report")
    status.set_defaults(func=_status)
    for name, text in (("pause", "stop serving a job's items"),
                       ("resume", "serve a paused job's items again"),
                       ("delete", "forget a job (its files stay on disk)")):
        sub = commands.add_parser(name, parents=[common], help=text)
        sub.add_argument("job")
        sub.add_argument("--json", action="store_true", help="print the raw report")
        sub.set_defaults(func=_job_command)


def _add_work(commands: Any, common: argparse.ArgumentParser) -> None:
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
    work.add_argument("program", nargs="*", metavar="COMMAND",
                      help="the program and its arguments, after --")
    work.set_defaults(func=_work)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planchet",
        description="Dispatch the items of a large JSONL or CSV file to many workers.",
    )
    parser.add_argument("--version", action="version", version=f"planchet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)
    common = _client_options()
    _add_serve(commands)
    _add_start(commands, common)
    _add_job_commands(commands, common)
    _add_work(commands, common)
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


if __name__ == "__main__":
    sys.exit(main())
