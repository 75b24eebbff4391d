"""`leveret declare|delete queue|exchange|bind`, `leveret purge`, and the older
`declare-queue`/`delete-queue` spellings (kept as aliases with the same options).

Each command is one broker operation on a connection of its own, so its exit
code is that operation's outcome: `declare queue --passive` exits 7 when the
queue does not exist, a redeclare with other arguments exits 9.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import leveret
from leveret.cli import _args
from leveret.cli._message import header

Operation = Callable[[leveret.Connection, argparse.Namespace], Awaitable[None]]


def _runner(operation: Operation) -> Callable[[argparse.Namespace], int]:
    async def main(args: argparse.Namespace) -> int:
        async with leveret.connect(args.url, name="leveret-cli", reconnect=False) as conn:
            await operation(conn, args)
        return 0

    return lambda args: leveret.run(main(args))


def _arguments(args: argparse.Namespace) -> dict[str, Any] | None:
    return dict(args.argument) or None


def _add_arguments_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--argument",
        type=header,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an x- argument, KEY:=JSON for a number or table; repeat for more",
    )


# -- queues -------------------------------------------------------------------------------------


def _queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help="queue name ('' for a server-named one)")
    parser.add_argument("--type", choices=_args.QUEUE_TYPES, dest="queue_type")
    parser.add_argument(
        "--durable", action="store_true", help="survives a restart (quorum, stream: always)"
    )
    parser.add_argument("--auto-delete", action="store_true", help="deleted after last consumer")
    parser.add_argument("--passive", action="store_true", help="only check that it exists")
    parser.add_argument("--dead-letter-exchange", metavar="EXCHANGE")
    parser.add_argument("--dead-letter-routing-key", metavar="KEY")
    parser.add_argument("--message-ttl", type=_args.seconds, metavar="SECONDS")
    parser.add_argument("--expires", type=_args.seconds, metavar="SECONDS", help="when unused")
    parser.add_argument("--max-length", type=_args.int_range(0), metavar="N")
    parser.add_argument("--max-length-bytes", type=_args.int_range(0), metavar="BYTES")
    parser.add_argument("--overflow", choices=("drop-head", "reject-publish", "reject-publish-dlx"))
    parser.add_argument("--delivery-limit", type=_args.int_range(0), metavar="N", help="quorum")
    parser.add_argument("--max-priority", type=_args.int_range(1, 255), metavar="N")
    _add_arguments_option(parser)


async def _declare_queue(conn: leveret.Connection, args: argparse.Namespace) -> None:
    info = await conn.declare_queue(
        args.name,
        durable=True if args.durable else None,
        auto_delete=args.auto_delete,
        passive=args.passive,
        type=args.queue_type,
        arguments=_arguments(args),
        dead_letter_exchange=args.dead_letter_exchange,
        dead_letter_routing_key=args.dead_letter_routing_key,
        message_ttl=args.message_ttl,
        expires=args.expires,
        max_length=args.max_length,
        max_length_bytes=args.max_length_bytes,
        overflow=args.overflow,
        delivery_limit=args.delivery_limit,
        max_priority=args.max_priority,
    )
    print(f"{info.name}\t{info.message_count} messages\t{info.consumer_count} consumers")


def _delete_queue_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument("--if-unused", action="store_true", help="only without consumers")
    parser.add_argument("--if-empty", action="store_true", help="only without messages")


async def _delete_queue(conn: leveret.Connection, args: argparse.Namespace) -> None:
    held = await conn.delete_queue(args.name, if_unused=args.if_unused, if_empty=args.if_empty)
    print(f"deleted {args.name} ({held} messages)", file=sys.stderr)


async def _purge_queue(conn: leveret.Connection, args: argparse.Namespace) -> None:
    removed = await conn.purge_queue(args.name)
    print(f"purged {args.name} ({removed} messages)", file=sys.stderr)


# -- exchanges ----------------------------------------------------------------------------------


def _exchange_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")
    parser.add_argument(
        "--type",
        default="direct",
        dest="exchange_type",
        help="direct (default), fanout, topic, headers or a plugin's x- type",
    )
    parser.add_argument("--durable", action="store_true", help="survives a broker restart")
    parser.add_argument("--auto-delete", action="store_true", help="deleted after last binding")
    parser.add_argument("--internal", action="store_true", help="only exchanges publish to it")
    parser.add_argument("--passive", action="store_true", help="only check that it exists")
    _add_arguments_option(parser)


async def _declare_exchange(conn: leveret.Connection, args: argparse.Namespace) -> None:
    await conn.declare_exchange(
        args.name,
        args.exchange_type,
        durable=args.durable,
        auto_delete=args.auto_delete,
        internal=args.internal,
        passive=args.passive,
        arguments=_arguments(args),
    )
    print(f"{args.name}\t{args.exchange_type}")


async def _delete_exchange(conn: leveret.Connection, args: argparse.Namespace) -> None:
    await conn.delete_exchange(args.name, if_unused=args.if_unused)
    print(f"deleted exchange {args.name}", file=sys.stderr)


# -- bindings -----------------------------------------------------------------------------------


def _binding_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", metavar="EXCHANGE", help="where messages come from")
    parser.add_argument("destination", metavar="QUEUE", help="the queue (or --to-exchange)")
    parser.add_argument(
        "--routing-key",
        "-k",
        action="append",
        default=[],
        metavar="KEY",
        help="binding key (a topic pattern for topic exchanges); repeat for several",
    )
    parser.add_argument(
        "--to-exchange", action="store_true", help="DESTINATION is an exchange, not a queue"
    )
    _add_arguments_option(parser)


async def _change_bindings(conn: leveret.Connection, args: argparse.Namespace, bind: bool) -> None:
    change: Callable[[str, str, str, dict[str, Any] | None], Awaitable[None]]
    if args.to_exchange:
        change = conn.bind_exchange if bind else conn.unbind_exchange
    else:
        change = conn.bind_queue if bind else conn.unbind_queue
    for key in args.routing_key or [""]:
        await change(args.destination, args.source, key, _arguments(args))
        verb = "bound" if bind else "unbound"
        print(f"{verb} {args.source} -> {args.destination} (key {key!r})", file=sys.stderr)


async def _bind(conn: leveret.Connection, args: argparse.Namespace) -> None:
    await _change_bindings(conn, args, bind=True)


async def _unbind(conn: leveret.Connection, args: argparse.Namespace) -> None:
    await _change_bindings(conn, args, bind=False)


# -- the parsers ----------------------------------------------------------------------------------


def _add(
    parent: Any,
    name: str,
    options: Callable[[argparse.ArgumentParser], None],
    operation: Operation,
    help_text: str,
    aliases: tuple[str, ...] = (),
) -> argparse.ArgumentParser:
    parser: argparse.ArgumentParser = parent.add_parser(
        name, aliases=list(aliases), parents=[_args.common()], help=help_text
    )
    options(parser)
    parser.set_defaults(run=_runner(operation))
    return parser


def register(subparsers: Any) -> None:
    declare = subparsers.add_parser("declare", help="declare a queue, an exchange or a binding")
    kinds = declare.add_subparsers(dest="kind", required=True, metavar="KIND")
    _add(kinds, "queue", _queue_options, _declare_queue, "declare a queue, print its depth")
    _add(kinds, "exchange", _exchange_options, _declare_exchange, "declare an exchange")
    _add(
        kinds,
        "bind",
        _binding_options,
        _bind,
        "bind a queue (or an exchange) to an exchange",
        aliases=("binding",),
    )

    delete = subparsers.add_parser("delete", help="delete a queue, an exchange or a binding")
    kinds = delete.add_subparsers(dest="kind", required=True, metavar="KIND")
    _add(kinds, "queue", _delete_queue_options, _delete_queue, "delete a queue")
    exchange = _add(kinds, "exchange", _exchange_name, _delete_exchange, "delete an exchange")
    exchange.add_argument("--if-unused", action="store_true", help="only without bindings")
    _add(kinds, "bind", _binding_options, _unbind, "remove a binding", aliases=("binding",))

    _add(subparsers, "unbind", _binding_options, _unbind, "remove a binding (= delete bind)")
    _add(subparsers, "purge", _queue_name, _purge_queue, "remove every ready message of a queue")
    _add(subparsers, "declare-queue", _queue_options, _declare_queue, "= declare queue")
    _add(subparsers, "delete-queue", _delete_queue_options, _delete_queue, "= delete queue")


def _exchange_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME")


def _queue_name(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="QUEUE")
