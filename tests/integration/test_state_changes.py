"""conn.state_changes() against the real broker: forced closes, memory alarms, the end."""

from __future__ import annotations

import asyncio

import pytest

import leveret
from leveret.testing import RabbitMQNode

from ._pipeline import FAST, until

pytestmark = pytest.mark.integration

BOUND = 15


async def next_change(changes: leveret.StateChanges) -> leveret.StateChange:
    async with asyncio.timeout(BOUND):
        return await anext(changes)


async def test_forced_close_yields_disconnected_with_its_cause_then_reconnected(
    rabbitmq: RabbitMQNode, rabbitmq_url: str
) -> None:
    async with leveret.connect(rabbitmq_url, backoff=FAST, separate_publisher=False) as conn:
        changes = conn.state_changes()
        await asyncio.to_thread(rabbitmq.close_all_connections, "state-change test")
        lost = await next_change(changes)
        assert lost.state == "disconnected"
        assert isinstance(lost.error, leveret.ConnectionForced)
        assert "state-change test" in str(lost.error)
        assert not lost.publisher
        back = await next_change(changes)
        assert back == leveret.StateChange("reconnected")
        assert conn.is_connected
    end = await next_change(changes)
    assert end == leveret.StateChange("closed")  # error None: closed by this program
    with pytest.raises(StopAsyncIteration):
        await anext(changes)


async def test_memory_alarm_yields_blocked_and_unblocked_for_the_publisher(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name, auto_delete=True)
        await conn.publish(b"opens the publishing connection", routing_key=queue_name)
        async with conn.state_changes() as changes:
            await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0)
            try:
                # The broker blocks a connection when it next publishes during the alarm.
                during = asyncio.ensure_future(
                    conn.publish(b"during", routing_key=queue_name, timeout=BOUND)
                )
                blocked = await next_change(changes)
            finally:
                await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0.4)
            assert blocked.state == "blocked"
            assert blocked.publisher  # the publishing connection: consumers are never blocked
            assert blocked.reason is not None
            assert "memory" in blocked.reason
            unblocked = await next_change(changes)
            assert unblocked == leveret.StateChange("unblocked", publisher=True)
            await during  # confirmed once the alarm cleared
        assert len(changes) == 0


async def test_a_slow_reader_loses_the_oldest_changes_not_memory(
    rabbitmq: RabbitMQNode, rabbitmq_url: str
) -> None:
    async with leveret.connect(rabbitmq_url, backoff=FAST, separate_publisher=False) as conn:
        seen: list[str] = []
        conn.add_listener(lambda state, _error: seen.append(state))
        changes = conn.state_changes(maxsize=2)
        for round_ in range(3):  # six changes into a buffer of two
            await asyncio.to_thread(rabbitmq.close_all_connections, f"slow reader {round_}")
            await until(lambda r=round_: seen.count("reconnected") > r, BOUND)
        assert len(changes) == 2
        first = await next_change(changes)
        assert first.state == "disconnected"
        assert first.missed == 4
        second = await next_change(changes)
        assert (second.state, second.missed) == ("reconnected", 0)


async def test_state_changes_of_a_closed_connection_end_at_once(rabbitmq_url: str) -> None:
    conn = await leveret.connect(rabbitmq_url)
    await conn.close()
    with pytest.raises(StopAsyncIteration):
        await anext(conn.state_changes())
    with pytest.raises(ValueError, match="maxsize must be a positive int, got 0"):
        conn.state_changes(maxsize=0)
