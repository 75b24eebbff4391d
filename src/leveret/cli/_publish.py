"""`leveret publish`: send one message, or one per stdin line, each confirmed by the broker."""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections.abc import Iterable
from typing import Any

import leveret
from leveret.cli import _args


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        parents=[_args.common()],
        help="publish a message (or one per stdin line) and wait for the confirm",
        description="Publish BODY, or with BODY '-' every line of stdin as its own message, "
        "in order; returns once the broker confirmed them all.",
    )
    parser.add_argument("--exchange", default="", help="default: the default exchange")
    parser.add_argument("--routing-key", "-k", default="", help="e.g. a queue name")
    parser.add_argument("--persistent", action="store_true", help="delivery mode 2")
    parser.add_argument("--content-type", help="e.g. application/json")
    parser.add_argument(
        "--header",
        type=_args.key_value,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a string header; repeat for more",
    )
    parser.add_argument("body", metavar="BODY", help="message body, or - for stdin lines")
    parser.set_defaults(run=run)


def _bodies(body: str) -> Iterable[bytes]:
    if body != "-":
        yield body.encode()
        return
    for line in sys.stdin.buffer:
        yield line.rstrip(b"\r\n")


async def _publish(args: argparse.Namespace) -> int:
    properties = None
    if args.header or args.content_type:
        properties = leveret.Properties(
            headers=dict(args.header) or None, content_type=args.content_type
        )
    published = 0
    async with leveret.connect(args.url, name="leveret-cli-publish") as conn:
        # One at a time, so stdin lines arrive in their order.
        for body in _bodies(args.body):
            await conn.publish(
                body,
                exchange=args.exchange,
                routing_key=args.routing_key,
                persistent=args.persistent,
                properties=properties,
            )
            published += 1
    print(f"published {published} message(s)", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_publish(args))
