"""What every client command shares: --url, the token options, --ca-file, a client."""

from __future__ import annotations

import argparse
import os
import ssl

from .client import PlanchetClient
from .connecting import DEFAULT_URL
from .exceptions import PlanchetError


def client(args: argparse.Namespace) -> PlanchetClient:
    return PlanchetClient(args.url, args.token, retries=2, timeout=60, ssl=tls(args))


def tls(args: argparse.Namespace) -> ssl.SSLContext | None:
    """A TLS context trusting ``--ca-file`` as well as the system's CAs; None without one."""
    if not args.ca_file:
        return None
    try:
        return ssl.create_default_context(cafile=args.ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise PlanchetError(f"cannot read the CA file {args.ca_file}: {exc}") from exc


def client_options() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--url", default=os.environ.get("PLANCHET_URL", DEFAULT_URL),
                        help="server URL (default $PLANCHET_URL or %(default)s)")
    add_token_options(common, "master or job token (else $PLANCHET_TOKEN)")
    common.add_argument("--ca-file", metavar="PATH", default=os.environ.get("PLANCHET_CA_FILE"),
                        help="PEM certificates to trust for a wss:// server, such as a "
                             "self-signed one (default $PLANCHET_CA_FILE)")
    return common


def add_token_options(parser: argparse.ArgumentParser, text: str) -> None:
    tokens = parser.add_mutually_exclusive_group()
    tokens.add_argument("--token-file", metavar="PATH",
                        help=f"a file holding the {text}")
    tokens.add_argument("--token", help="the token itself: visible to other users in ps")
