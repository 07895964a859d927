"""``planchet serve``: run the server, with every setting as a flag."""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
from collections.abc import Callable
from typing import Any

from .cli_common import add_token_options
from .config import DEFAULT_PORT, Settings

GC_THRESHOLD = 20_000  # allocations between two young-generation collections


def serve_command(args: argparse.Namespace) -> int:
    from .server import run

    settings = Settings.load(
        host=args.host, port=args.port, data_dir=args.data_dir, redis_url=args.redis,
        token=args.token, allow_origins=args.allow_origin,
        max_connections=args.max_connections,
        max_pending_connections=args.max_pending_connections, crash_grace=args.crash_grace,
        compression=args.compression or None, resume_grace=args.resume_grace,
        tls_cert=args.tls_cert, tls_key=args.tls_key, pages_dir=args.pages,
        max_failing_batches=args.max_failing_batches,
    )
    quiet_gc()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        runner.run(run(settings))
    return 0


def quiet_gc() -> None:
    """Collect cycles less often: the hot path makes many short-lived containers and
    almost no cycles, and the default threshold (700) had the collector take a tenth of
    the server's time. What is loaded by now (modules, classes) is never scanned again."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_THRESHOLD, 20, 20)


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """uvloop's event loop when it is installed (faster sockets), unless
    ``PLANCHET_LOOP=asyncio`` asks for the standard one."""
    if os.environ.get("PLANCHET_LOOP", "uvloop") == "asyncio":
        return None
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop


def add_serve(commands: Any) -> None:
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
    add_token_options(serve, "master token, for server-wide operations "
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
    serve.add_argument("--max-failing-batches", type=int, metavar="N",
                       help="cut a connection off a job once its last N batches of it each "
                            "failed on every item (the circuit breaker; 0: off; default 5)")
    serve.set_defaults(func=serve_command)
