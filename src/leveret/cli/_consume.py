"""`leveret consume`: print a queue's messages (one per line) and ack each once printed."""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import sys
from typing import Any

import leveret
from leveret.cli import _args


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "consume",
        parents=[_args.common()],
        help="print messages from a queue, acking each once printed",
        description="Print each message's body on its own line (or a JSON object with --json) "
        "and ack it after printing. Runs until --count messages, --idle-timeout, or Ctrl-C.",
    )
    parser.add_argument("queue", metavar="QUEUE")
    parser.add_argument("--count", type=_args.int_range(1), metavar="N", help="stop after N")
    parser.add_argument(
        "--idle-timeout",
        type=_args.seconds,
        metavar="SECONDS",
        help="stop when no message came for this long",
    )
    parser.add_argument("--prefetch", type=_args.int_range(1, 65535), default=100)
    parser.add_argument(
        "--json", action="store_true", help="one JSON object per message: body and properties"
    )
    parser.add_argument(
        "--stream-offset",
        metavar="OFFSET",
        help="for stream queues: first, last, next or a number (x-stream-offset)",
    )
    parser.set_defaults(run=run)


def as_json(message: leveret.Message) -> str:
    """A message as one JSON line; a body that is not UTF-8 comes as body_base64."""
    data: dict[str, Any] = {
        "exchange": message.exchange,
        "routing_key": message.routing_key,
        "redelivered": message.redelivered,
    }
    try:
        data["body"] = message.body.decode()
    except UnicodeDecodeError:
        data["body_base64"] = base64.b64encode(message.body).decode()
    properties = message.properties
    for name in properties.__slots__:
        value = getattr(properties, name)
        if value is not None:
            data[name] = value
    return json.dumps(data, default=_plain)


def _plain(value: object) -> object:
    if isinstance(value, bytes | bytearray):
        return value.decode(errors="backslashreplace")
    return str(value)  # datetime, Decimal


def _stream_offset(value: str) -> int | str:
    return int(value) if value.lstrip("-").isdigit() else value


async def _next(messages: leveret.Consumer, timeout: float | None) -> leveret.Message | None:
    try:
        return await asyncio.wait_for(anext(messages), timeout)
    except (StopAsyncIteration, TimeoutError):
        return None


async def _consume(args: argparse.Namespace) -> int:
    arguments = None
    if args.stream_offset is not None:
        arguments = {"x-stream-offset": _stream_offset(args.stream_offset)}
    out = sys.stdout.buffer
    received = 0
    # No more in flight than will be printed: the rest would come back flagged redelivered.
    prefetch = args.prefetch if args.count is None else min(args.prefetch, args.count)
    async with (
        leveret.connect(args.url, name="leveret-cli-consume") as conn,
        conn.consume(args.queue, prefetch=prefetch, arguments=arguments) as messages,
    ):
        while args.count is None or received < args.count:
            message = await _next(messages, args.idle_timeout)
            if message is None:
                break
            out.write(as_json(message).encode() if args.json else message.body)
            out.write(b"\n")
            out.flush()
            message.ack()
            received += 1
    return 0


def run(args: argparse.Namespace) -> int:
    return asyncio.run(_consume(args))
