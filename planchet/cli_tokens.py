"""``planchet token``: create, list and revoke worker tokens from the shell.

A worker token may only take batches of its jobs and send their results: it is the
token to put in a browser page or hand to a volunteer (see ``auth``). ``create``
prints the token alone on stdout, so ``planchet token create J > token.txt`` or
``TOKEN=$(planchet token create J)`` captures exactly the token; on a terminal a
one-line reminder goes to stderr too. The secret is shown only then: ``list`` shows
keys, jobs and labels, and ``revoke KEY`` ends a token at once.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from .cli_common import client as connect


def add_token_commands(commands: Any, common: argparse.ArgumentParser) -> None:
    """Register ``planchet token create|list|revoke`` (``common``: --url and --token)."""
    token = commands.add_parser(
        "token", help="worker tokens: may only take batches and send results",
        description="Worker tokens may only take batches of their jobs and send results: "
                    "give one to a browser page or a volunteer instead of the job's token.")
    actions = token.add_subparsers(dest="token_command", required=True)
    create = actions.add_parser("create", parents=[common], help="make a worker token")
    create.add_argument("jobs", nargs="+", metavar="JOB", help="the job(s) it may work on")
    create.add_argument("--label", help="a note for you, shown by list (who has it, say)")
    create.add_argument("--json", action="store_true", help="print the raw reply")
    create.set_defaults(func=_create)
    listing = actions.add_parser("list", parents=[common],
                                 help="list worker tokens (never their secrets)")
    listing.add_argument("job", nargs="?", help="only this job's (else every one: master)")
    listing.add_argument("--json", action="store_true", help="print the raw list")
    listing.set_defaults(func=_list)
    revoke = actions.add_parser("revoke", parents=[common], help="end a worker token now")
    revoke.add_argument("key", help="its key (12 hex digits, from create or list)")
    revoke.set_defaults(func=_revoke)


def _create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        reply = client.grant_token(args.jobs, label=args.label)
    if args.json:
        print(json.dumps(reply, indent=2))
        return 0
    print(reply["token"])
    if sys.stdout.isatty():
        print(f"planchet: worker token {reply['key']} for {', '.join(reply['jobs'])}: "
              f"shown only now; revoke it with: planchet token revoke {reply['key']}",
              file=sys.stderr)
    return 0


def _list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        grants = client.worker_tokens(args.job)
    print(json.dumps(grants, indent=2) if args.json else format_tokens(grants))
    return 0


def _revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.revoke_token(args.key)
    print(f"revoked worker token {args.key}")
    return 0


def format_tokens(grants: list[dict[str, Any]]) -> str:
    """A table of worker tokens: key, jobs, creation time, label."""
    if not grants:
        return "no worker tokens"
    rows = [("KEY", "CREATED", "JOBS", "LABEL")]
    rows += [(g["key"], time.strftime("%Y-%m-%d %H:%M", time.localtime(g["created"])),
              ",".join(g["jobs"]), g["label"] or "") for g in grants]
    key, created, jobs = (max(len(row[i]) for row in rows) for i in range(3))
    return "\n".join(f"{k:<{key}}  {c:<{created}}  {j:<{jobs}}  {label}".rstrip()
                     for k, c, j, label in rows)
