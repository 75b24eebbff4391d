"""`leveret declare-queue` and `leveret delete-queue`."""

from __future__ import annotations

import argparse
import asyncio
import sys
from typing import Any

import leveret
from leveret.cli import _args


def register(subparsers: Any) -> None:
    declare: argparse.ArgumentParser = subparsers.add_parser(
        "declare-queue",
        parents=[_args.common()],
        help="declare a queue (idempotent) and print its depth",
        description="Declare a queue; quorum and stream queues are always durable. "
        "Prints the queue's name, ready messages and consumers.",
    )
    declare.add_argument("name", metavar="NAME")
    declare.add_argument("--durable", action="store_true", help="survives a broker restart")
    declare.add_argument("--type", choices=_args.QUEUE_TYPES, default="classic", dest="queue_type")
    declare.set_defaults(run=run_declare)

    delete: argparse.ArgumentParser = subparsers.add_parser(
        "delete-queue",
        parents=[_args.common()],
        help="delete a queue and print how many messages it held",
    )
    delete.add_argument("name", metavar="NAME")
    delete.set_defaults(run=run_delete)


async def _declare(args: argparse.Namespace) -> int:
    durable, arguments = _args.queue_arguments(args.queue_type)
    async with leveret.connect(args.url, name="leveret-cli") as conn:
        info = await conn.declare_queue(
            args.name, durable=durable or args.durable, arguments=arguments
        )
    print(f"{info.name}\t{info.message_count} messages\t{info.consumer_count} consumers")
    return 0


async def _delete(args: argparse.Namespace) -> int:
    async with leveret.connect(args.url, name="leveret-cli") as conn:
        held = await conn.delete_queue(args.name)
    print(f"deleted {args.name} ({held} messages)", file=sys.stderr)
    return 0


def run_declare(args: argparse.Namespace) -> int:
    return asyncio.run(_declare(args))


def run_delete(args: argparse.Namespace) -> int:
    return asyncio.run(_delete(args))
