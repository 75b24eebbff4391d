"""Move a received message elsewhere without a window for loss: publish a copy, then ack.

Retry queues, parking lots and dead letters with a reason all need a copy
with extra headers, which the broker's own dead-lettering cannot add. The
copy is persistent, drops any per-message expiration (a parked message must
stay parked) and is confirmed before the original is acked, so a crash in
between duplicates the message but never loses it.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

from leveret.exceptions import LeveretError

if TYPE_CHECKING:
    from leveret.aio._connection import Connection
    from leveret.aio._message import Message

__all__ = ["forward_and_ack"]


async def forward_and_ack(
    connection: Connection,
    message: Message,
    *,
    exchange: str = "",
    routing_key: str = "",
    headers: Mapping[str, Any],
) -> LeveretError | None:
    """Publish a copy with `headers` added and ack the original; the publish error, if any.

    On an error the original is left unsettled: the caller chooses between
    requeueing and rejecting it.
    """
    properties = message.properties.replace(
        headers={**message.headers, **headers}, expiration=None, delivery_mode=2
    )
    try:
        await connection.publish(
            message.body, exchange=exchange, routing_key=routing_key, properties=properties
        )
    except LeveretError as exc:
        return exc
    message.ack()
    return None
