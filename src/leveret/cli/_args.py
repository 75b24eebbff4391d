"""argparse value types shared by the subcommands: bad values fail before any socket opens."""

from __future__ import annotations

import argparse
import math
import os
from collections.abc import Callable

import leveret

DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"


def url(value: str) -> str:
    """An AMQP URL, checked by leveret's own parser so the error names what is wrong."""
    try:
        leveret.parse_url(value)
    except (ValueError, TypeError) as exc:
        raise argparse.ArgumentTypeError(f"invalid URL {value!r}: {exc}") from None
    return value


def common() -> argparse.ArgumentParser:
    """The options every broker command takes: --url and -v."""
    parser = argparse.ArgumentParser(add_help=False)
    parser.add_argument(
        "--url",
        type=url,
        default=os.environ.get("LEVERET_URL", DEFAULT_URL),
        help="AMQP URL (default: $LEVERET_URL, else %(default)s)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="on failure, the traceback and the broker's reply before the error line; "
        "also leveret's warnings (reconnections, blocked broker); -vv for debug logs",
    )
    return parser


def int_range(low: int, high: int | None = None) -> Callable[[str], int]:
    """An int type for argparse bounded to [low, high]."""

    def parse(value: str) -> int:
        try:
            number = int(value)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {value!r}") from None
        if number < low or (high is not None and number > high):
            bound = f"from {low} to {high}" if high is not None else f">= {low}"
            raise argparse.ArgumentTypeError(f"must be {bound}, got {value!r}")
        return number

    parse.__name__ = "integer"
    return parse


def seconds(value: str) -> float:
    """Positive, finite seconds."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {value!r}") from None
    if not 0 < number < math.inf:
        raise argparse.ArgumentTypeError(f"must be positive seconds, got {value!r}")
    return number


def non_negative_float(value: str) -> float:
    """A rate: 0 or more, finite."""
    try:
        number = float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {value!r}") from None
    if not 0 <= number < math.inf:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {value!r}")
    return number


def key_value(value: str) -> tuple[str, str]:
    """`key=value`, for message headers."""
    key, sep, text = value.partition("=")
    if not sep or not key:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE, got {value!r}")
    return key, text


QUEUE_TYPES = ("classic", "quorum", "stream")


def queue_arguments(queue_type: str) -> tuple[bool, dict[str, object] | None]:
    """(durable, arguments) for a queue type: quorum and stream queues must be durable."""
    if queue_type == "classic":
        return False, None
    return True, {"x-queue-type": queue_type}
