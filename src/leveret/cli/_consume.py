"""`leveret consume`: print a queue's messages (one per line, or JSON lines) and settle them.

By default each message is acked once printed, so nothing is lost if the
command dies mid-line. `--requeue` holds the printed messages and puts them
back when the command ends (nacking each at once would only have the broker
deliver it to us again), so it shows at most `--prefetch` messages;
`--reject` drops them, or dead-letters them if the queue has a dead-letter
exchange.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import datetime
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
        "and ack it after printing (or --requeue, --reject). Runs until --count messages, "
        "--idle-timeout, or Ctrl-C.",
    )
    settle = parser.add_mutually_exclusive_group()
    settle.add_argument(
        "--ack",
        action="store_const",
        const="ack",
        dest="settle",
        default="ack",
        help="ack each message once printed (the default)",
    )
    settle.add_argument(
        "--requeue",
        action="store_const",
        const="requeue",
        dest="settle",
        help="leave the messages in the queue: put back when the command ends "
        "(at most --prefetch are shown)",
    )
    settle.add_argument(
        "--reject",
        action="store_const",
        const="reject",
        dest="settle",
        help="reject each once printed: dropped, or dead-lettered if the queue has a DLX",
    )
    parser.add_argument("queue", metavar="QUEUE", help="the queue to read (it must exist)")
    parser.add_argument("--count", type=_args.int_range(1), metavar="N", help="stop after N")
    parser.add_argument(
        "--idle-timeout",
        type=_args.seconds,
        metavar="SECONDS",
        help="stop when no message came for this long",
    )
    parser.add_argument(
        "--prefetch",
        type=_args.int_range(1, 65535),
        default=100,
        metavar="N",
        help="unacked messages the broker sends ahead (default: %(default)s)",
    )
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
    if isinstance(value, datetime.datetime):
        return value.isoformat()
    return str(value)  # Decimal


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
    limit = args.count
    if args.settle == "requeue":
        limit = prefetch  # held messages use up the prefetch: no more will come
    held: list[leveret.Message] = []
    async with (
        leveret.connect(args.url, name="leveret-cli-consume") as conn,
        conn.consume(args.queue, prefetch=prefetch, arguments=arguments) as messages,
    ):
        while limit is None or received < limit:
            message = await _next(messages, args.idle_timeout)
            if message is None:
                break
            out.write(as_json(message).encode() if args.json else message.body)
            out.write(b"\n")
            out.flush()
            if args.settle == "ack":
                message.ack()
            elif args.settle == "reject":
                message.reject(requeue=False)
            else:
                held.append(message)
            received += 1
        for message in held:
            message.nack(requeue=True)
    return 0


def run(args: argparse.Namespace) -> int:
    return leveret.run(_consume(args))
