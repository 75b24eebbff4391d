"""The `x-` arguments of queues and stream consumers, spelled out as keywords.

RabbitMQ takes these as a field table with millisecond integers and exact
key names; a typo there is silently ignored or a 406 that closes the channel.
Here each one is a checked keyword, in seconds, with errors naming the value.
"""

from __future__ import annotations

import datetime
import re
from typing import Any, Literal

__all__ = ["Overflow", "QueueType", "StreamOffset", "queue_arguments", "stream_arguments"]

QueueType = Literal["classic", "quorum", "stream"]
Overflow = Literal["drop-head", "reject-publish", "reject-publish-dlx"]
StreamOffset = Literal["first", "last", "next"] | int | datetime.datetime | str

_QUEUE_TYPES = ("classic", "quorum", "stream")
_OVERFLOWS = ("drop-head", "reject-publish", "reject-publish-dlx")
_INTERVAL = re.compile(r"^[0-9]+[YMDhms]$")


def queue_arguments(
    arguments: dict[str, Any] | None,
    *,
    queue_type: str | None,
    durable: bool,
    exclusive: bool,
    auto_delete: bool,
    dead_letter_exchange: str | None,
    dead_letter_routing_key: str | None,
    message_ttl: float | None,
    expires: float | None,
    max_length: int | None,
    max_length_bytes: int | None,
    overflow: str | None,
    delivery_limit: int | None,
    max_priority: int | None,
) -> dict[str, Any] | None:
    """The queue.declare arguments for these keywords, merged into `arguments`."""
    extra: dict[str, Any] = {}
    if queue_type is not None:
        if queue_type not in _QUEUE_TYPES:
            raise ValueError(f"type must be one of {', '.join(_QUEUE_TYPES)}, got {queue_type!r}")
        if queue_type != "classic":
            for flag, value in (
                ("durable=False", not durable),
                ("exclusive", exclusive),
                ("auto_delete", auto_delete),
            ):
                if value:
                    raise ValueError(f"a {queue_type} queue cannot be {flag.split('=')[0]}")
        extra["x-queue-type"] = queue_type
    if dead_letter_exchange is not None:
        extra["x-dead-letter-exchange"] = _string(dead_letter_exchange, "dead_letter_exchange")
    if dead_letter_routing_key is not None:
        extra["x-dead-letter-routing-key"] = _string(
            dead_letter_routing_key, "dead_letter_routing_key"
        )
    if message_ttl is not None:
        extra["x-message-ttl"] = milliseconds(message_ttl, "message_ttl", allow_zero=True)
    if expires is not None:
        extra["x-expires"] = milliseconds(expires, "expires", allow_zero=False)
    if max_length is not None:
        extra["x-max-length"] = _count(max_length, "max_length", minimum=0)
    if max_length_bytes is not None:
        extra["x-max-length-bytes"] = _count(max_length_bytes, "max_length_bytes", minimum=0)
    if overflow is not None:
        if overflow not in _OVERFLOWS:
            raise ValueError(f"overflow must be one of {', '.join(_OVERFLOWS)}, got {overflow!r}")
        extra["x-overflow"] = overflow
    if delivery_limit is not None:
        if queue_type != "quorum" and (arguments or {}).get("x-queue-type") != "quorum":
            raise ValueError(
                f"delivery_limit={delivery_limit!r} needs type='quorum' (classic queues have none)"
            )
        extra["x-delivery-limit"] = _count(delivery_limit, "delivery_limit", minimum=0)
    if max_priority is not None:
        extra["x-max-priority"] = _count(max_priority, "max_priority", minimum=1, maximum=255)
    if not extra:
        return arguments
    clashes = sorted(set(extra) & set(arguments or {}))
    if clashes:
        raise ValueError(f"{', '.join(clashes)} given both as a keyword and in arguments")
    return {**(arguments or {}), **extra}


def stream_arguments(
    arguments: dict[str, Any] | None, offset: object, *, prefetch: int, no_ack: bool
) -> dict[str, Any]:
    """basic.consume arguments that start reading a stream at `offset`."""
    if no_ack:
        raise ValueError("a stream consumer needs acks (they grant credit): drop no_ack=True")
    if prefetch == 0:
        raise ValueError("a stream consumer needs a prefetch above 0")
    if isinstance(offset, bool) or not (
        offset in ("first", "last", "next")
        or (isinstance(offset, int) and offset >= 0)
        or isinstance(offset, datetime.datetime)
        or (isinstance(offset, str) and _INTERVAL.match(offset))
    ):
        raise ValueError(
            "offset must be 'first', 'last', 'next', an offset >= 0, a datetime or an interval "
            f"such as '10m' or '1D' (units Y M D h m s), got {offset!r}"
        )
    if arguments and "x-stream-offset" in arguments:
        raise ValueError("x-stream-offset given both as offset= and in arguments")
    return {**(arguments or {}), "x-stream-offset": offset}


def milliseconds(seconds: float, what: str, *, allow_zero: bool) -> int:
    """Seconds (the API's unit everywhere) as the integer milliseconds the broker wants."""
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise TypeError(f"{what} must be seconds as a number, got {seconds!r}")
    value = round(seconds * 1000)
    if value < 0 or (value == 0 and not allow_zero) or seconds != seconds:
        raise ValueError(
            f"{what} must be {'>= 0' if allow_zero else '> 0'} seconds, got {seconds!r}"
        )
    return value


def _count(value: int, what: str, *, minimum: int, maximum: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"{what} must be an int, got {value!r}")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"from {minimum} to {maximum}" if maximum is not None else f">= {minimum}"
        raise ValueError(f"{what} must be {bound}, got {value!r}")
    return value


def _string(value: str, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {value!r}")
    return value
