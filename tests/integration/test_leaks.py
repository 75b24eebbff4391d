"""Nothing grows with use: 10,000 channels and 1,000 consumers opened and closed on one
connection leave the driver's tables, the broker's channel count and the event loop's
tasks as they were, and channel numbers are reused."""

from __future__ import annotations

import asyncio

import pytest

import leveret
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

CHANNELS = 10_000
CONSUMERS = 1_000
AT_ONCE = 50


def sizes(conn: leveret.Connection) -> dict[str, int]:
    """Every per-channel and per-consumer table of the connection and its core."""
    return {
        "channels": len(conn._channels),
        "core channels": len(conn._core._channels),
        "idle pool": len(conn._idle_pool),
        "consumers": len(conn._consumers),
        "active consumers": len(conn._active_consumers),
        "subscriptions": len(conn._subscriptions),
        "publish channels": len(conn._publish_channels),
        "channel openings": len(conn._publish_channel_opening),
        "write waiters": len(conn._write_waiters),
        "state streams": len(conn._state_streams),
    }


def broker_channels(rabbitmq: RabbitMQNode, name: str) -> int:
    rows = rabbitmq.list_connections("channels")
    return sum(
        int(row["channels"])
        for row in rows
        if row["client_properties"].get("connection_name") == name
    )


async def test_channels_and_consumers_opened_and_closed_leave_nothing_behind(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    name = f"leak-test-{queue_name[-8:]}"
    async with asyncio.timeout(120), leveret.connect(rabbitmq_url, name=name) as conn:
        await conn.declare_queue(queue_name, auto_delete=False)
        # Warm up whatever is opened once and kept (the pool's first channel).
        await conn.declare_queue(queue_name, passive=True)
        before = sizes(conn)
        tasks_before = len(asyncio.all_tasks())
        channels_before = await asyncio.to_thread(broker_channels, rabbitmq, name)

        used: set[int] = set()

        async def churn_channels(count: int) -> None:
            for _ in range(count):
                channel = await conn._open_channel()
                used.add(channel.id)
                await conn._close_channel(channel)

        await asyncio.gather(*(churn_channels(CHANNELS // AT_ONCE) for _ in range(AT_ONCE)))
        assert len(used) <= conn._core.channel_max
        assert len(used) < CHANNELS  # numbers were handed out again after their close

        async def churn_consumers(count: int) -> None:
            for _ in range(count):
                async with conn.consume(queue_name, prefetch=1) as messages:
                    assert messages._channel is not None
                    used.add(messages._channel.id)

        await asyncio.gather(*(churn_consumers(CONSUMERS // AT_ONCE) for _ in range(AT_ONCE)))

        # The same, through the public paths that open channels behind the scenes:
        # a refused declare costs its pool channel, a subscription has its own.
        for _ in range(100):
            with pytest.raises(leveret.NotFound):
                await conn.declare_queue(f"{queue_name}.missing", passive=True)

        async def handler(message: leveret.Message) -> None:
            return None

        for _ in range(100):
            async with conn.subscribe(queue_name, handler):
                pass

        await conn.declare_queue(queue_name, passive=True)  # the pool has its channel back
        assert sizes(conn) == before
        assert len(asyncio.all_tasks()) == tasks_before
        assert await asyncio.to_thread(broker_channels, rabbitmq, name) == channels_before
        await conn.delete_queue(queue_name)
