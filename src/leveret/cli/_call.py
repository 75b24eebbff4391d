"""`leveret call QUEUE BODY`: one RPC request over direct reply-to; prints the reply's body.

Exit codes tell a script what happened: 13 when no reply came within
`--timeout`, 14 when the server's handler raised (RemoteError), 12 when no
queue took the request.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

import leveret
from leveret.cli import _args, _message
from leveret.cli._consume import as_json
from leveret.cli._exit import UsageError


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "call",
        parents=[_args.common()],
        help="send a request to an RPC server and print its reply",
        description="Publish BODY (or --file) to QUEUE with a reply-to address, wait for the "
        "reply and print its body (or a JSON line with --json).",
    )
    parser.add_argument("queue", metavar="QUEUE", help="the routing key the server consumes")
    parser.add_argument("body", metavar="BODY", nargs="?", help="the request body")
    parser.add_argument("--exchange", "-e", default="", help="default: the default exchange")
    parser.add_argument(
        "--timeout",
        type=_args.seconds,
        default=30.0,
        metavar="SECONDS",
        help="wait this long for the reply (default: %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="the reply as one JSON object")
    _message.add_options(parser)
    parser.set_defaults(run=run)


async def _call(args: argparse.Namespace) -> int:
    if args.body is not None and args.file is not None:
        raise UsageError("give either BODY or --file, not both")
    for option in ("reply_to", "correlation_id"):
        if getattr(args, option) is not None:
            flag = "--" + option.replace("_", "-")
            raise UsageError(f"{flag} {getattr(args, option)!r}: call sets it itself")
    body = _message.file_body(args)
    if body is None:
        body = (args.body or "").encode()
    props = _message.properties(args)
    if args.persistent:
        props = (props or leveret.Properties()).replace(delivery_mode=2)
    # One call: direct reply-to answers it without declaring a reply queue first.
    async with leveret.connect(args.url, name="leveret-cli-call", rpc_replies="direct") as conn:
        reply = await conn.call(
            args.queue, body, exchange=args.exchange, timeout=args.timeout, properties=props
        )
    out = sys.stdout.buffer
    out.write(as_json(reply).encode() if args.json else reply.body)
    out.write(b"\n")
    out.flush()
    return 0


def run(args: argparse.Namespace) -> int:
    return leveret.run(_call(args))
