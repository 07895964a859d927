"""The ``planchet`` command: serve, and manage jobs from the shell."""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence

from . import __version__
from .config import DEFAULT_PORT, Settings
from .exceptions import PlanchetError


def _serve(args: argparse.Namespace) -> int:
    from .server import run

    settings = Settings.load(
        host=args.host, port=args.port, data_dir=args.data_dir, redis_url=args.redis,
        token=args.token,
    )
    asyncio.run(run(settings))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="planchet",
        description="Dispatch the items of a large JSONL or CSV file to many workers.",
    )
    parser.add_argument("--version", action="version", version=f"planchet {__version__}")
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug messages")
    commands = parser.add_subparsers(dest="command", required=True)

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
    serve.add_argument("--token", help="master token for server-wide operations")
    serve.set_defaults(func=_serve)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    try:
        return args.func(args)
    except PlanchetError as exc:
        print(f"planchet: {exc.code}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
