"""Options that build an outgoing message, shared by `publish` and `call`.

Headers are strings (`KEY=VALUE`) unless written `KEY:=JSON`, so a shell user
can send the ints, bools and tables that consumers often branch on.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import leveret
from leveret.cli import _args
from leveret.cli._exit import UsageError


def header(value: str) -> tuple[str, Any]:
    """`KEY=VALUE` (a string) or `KEY:=JSON` (any JSON value)."""
    key, sep, text = value.partition("=")
    if not sep or not key or key == ":":
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE or KEY:=JSON, got {value!r}")
    if not key.endswith(":"):
        return key, text
    try:
        return key[:-1], json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON after ':=' ({exc}): {value!r}") from None


def milliseconds(value: str) -> str:
    """A per-message TTL: AMQP carries it as a string of non-negative whole milliseconds."""
    if not value.isdigit():
        raise argparse.ArgumentTypeError(f"must be whole milliseconds >= 0, got {value!r}")
    return str(int(value))


def add_options(parser: argparse.ArgumentParser) -> None:
    """The message's body source and properties."""
    source = parser.add_argument_group("body")
    source.add_argument(
        "--file",
        metavar="PATH",
        help="the body is this file's bytes (- for all of stdin), instead of BODY",
    )
    props = parser.add_argument_group("properties")
    props.add_argument("--persistent", action="store_true", help="delivery mode 2")
    props.add_argument("--content-type", metavar="TYPE", help="e.g. application/json")
    props.add_argument("--content-encoding", metavar="ENCODING", help="e.g. gzip")
    props.add_argument(
        "--header",
        type=header,
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a string header, or KEY:=JSON for a typed one; repeat for more",
    )
    props.add_argument("--priority", type=_args.int_range(0, 255), metavar="0-255")
    props.add_argument("--expiration", type=milliseconds, metavar="MS", help="per-message TTL")
    props.add_argument("--message-id", metavar="ID", help="default: a fresh unique id")
    props.add_argument("--correlation-id", metavar="ID")
    props.add_argument("--reply-to", metavar="QUEUE")
    props.add_argument("--type", dest="message_type", metavar="TYPE", help="the AMQP type field")
    props.add_argument("--app-id", metavar="NAME")
    props.add_argument("--user-id", metavar="USER", help="must be the connection's user")


_FIELDS = (
    "content_type",
    "content_encoding",
    "priority",
    "expiration",
    "message_id",
    "correlation_id",
    "reply_to",
    "message_type",
    "app_id",
    "user_id",
)


def properties(args: argparse.Namespace) -> leveret.Properties | None:
    """The options as Properties; None when none was given (leveret stamps id and time)."""
    values: dict[str, Any] = {name: getattr(args, name) for name in _FIELDS}
    values = {name: value for name, value in values.items() if value is not None}
    if args.header:
        values["headers"] = dict(args.header)
    return leveret.Properties(**values) if values else None


def file_body(args: argparse.Namespace) -> bytes | None:
    """The --file body, or None without --file; a missing file is a usage error naming it."""
    if args.file is None:
        return None
    if args.file == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(args.file).read_bytes()
    except OSError as exc:
        raise UsageError(f"--file {args.file!r}: {exc.strerror or exc}") from exc
