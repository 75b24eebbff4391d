"""Logging and conn.stats() against the real broker, faults driven with rabbitmqctl.

Each event a user must hear about (connection loss and recovery, blocked and
unblocked, a consumer cancelled by the broker, deliveries dropped with a dead
channel) is logged exactly once per connection, by a logger under
"leveret", with the connection's name in the message.
"""

from __future__ import annotations

import asyncio
import logging

import pytest

import leveret
import leveret.blocking
from leveret.testing import RabbitMQNode

from ._pipeline import FAST, until

pytestmark = pytest.mark.integration


def _records(
    caplog: pytest.LogCaptureFixture, text: str, name: str, level: int | None = None
) -> list[logging.LogRecord]:
    """Records mentioning `text` and the connection `name` (as "[name]")."""
    return [
        record
        for record in caplog.records
        if text in record.getMessage()
        and f"[{name}]" in record.getMessage()
        and (level is None or record.levelno == level)
    ]


async def test_loss_and_recovery_are_logged_once_per_connection(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    states: list[str] = []
    async with leveret.connect(rabbitmq_url, name="obs-loss", backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        await conn.declare_queue(queue_name, exclusive=True)
        await conn.publish(b"opens the publishing connection", routing_key=queue_name)
        await asyncio.to_thread(rabbitmq.close_all_connections, "observability test")
        await until(lambda: {"reconnected", "publisher reconnected"} <= set(states))
        assert conn.stats().reconnects == 1
        assert conn.stats().publisher_reconnects == 1

    for name in ("obs-loss", "obs-loss (publisher)"):
        lost = _records(caplog, "lost the connection", name)
        back = _records(caplog, "reconnected to", name)
        assert len(lost) == 1, [r.getMessage() for r in lost]
        assert len(back) == 1, [r.getMessage() for r in back]
        for record in lost + back:
            assert record.name == "leveret.connection"
            assert record.levelno == logging.WARNING
        assert "observability test" in lost[0].getMessage()  # the broker's reason
    # The broker's close is not reported a second time in other words.
    assert _records(caplog, "closed the connection", "obs-loss") == []


async def test_loss_without_reconnect_is_logged_once(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    async with leveret.connect(rabbitmq_url, name="obs-final", reconnect=False) as conn:
        await asyncio.to_thread(rabbitmq.close_all_connections, "no way back")
        async with asyncio.timeout(10):
            await conn.wait_closed()
    records = [r for r in caplog.records if "[obs-final]" in r.getMessage()]
    warnings = [r for r in records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1, [r.getMessage() for r in warnings]
    assert "for good" in warnings[0].getMessage()
    assert "no way back" in warnings[0].getMessage()


async def test_blocked_and_unblocked_are_logged_once(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    async with leveret.connect(rabbitmq_url, name="obs-alarm") as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        await conn.publish(b"before", routing_key=queue_name)
        await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0)
        try:
            during = asyncio.ensure_future(conn.publish(b"during", routing_key=queue_name))
            await until(lambda: conn.is_blocked)
        finally:
            await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0.4)
        async with asyncio.timeout(30):
            await during
        await until(lambda: not conn.is_blocked)

    publisher = "obs-alarm (publisher)"
    blocked = _records(caplog, "the broker blocked publishing", publisher)
    unblocked = _records(caplog, "the broker unblocked publishing", publisher)
    assert [r.levelno for r in blocked] == [logging.WARNING]
    assert [r.levelno for r in unblocked] == [logging.INFO]
    assert blocked[0].name == "leveret.connection"
    # The main connection does not publish: it says nothing above DEBUG about the alarm.
    main = _records(caplog, "blocked publishing", "obs-alarm")  # blocked or unblocked
    assert all(r.levelno == logging.DEBUG for r in main)


async def test_consumer_cancelled_by_the_broker_is_logged_once(
    conn: leveret.Connection, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    await conn.declare_queue(queue_name)
    async with conn.consume(queue_name) as messages:
        await conn.delete_queue(queue_name)
        with pytest.raises(leveret.ConsumerCancelled):
            async with asyncio.timeout(10):
                await anext(messages)
    records = _records(caplog, "cancelled consumer", conn.name)
    assert len(records) == 1
    assert records[0].name == "leveret.consumer"
    assert records[0].levelno == logging.WARNING
    assert repr(queue_name) in records[0].getMessage()


async def test_stale_deliveries_are_dropped_counted_and_logged_once(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    states: list[str] = []
    async with leveret.connect(rabbitmq_url, name="obs-stale", backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        await conn.declare_queue(queue_name, durable=True)
        for number in range(5):
            await conn.publish(str(number).encode(), routing_key=queue_name, persistent=True)
        async with conn.consume(queue_name, prefetch=10) as messages:
            await until(lambda: len(messages) == 5)  # buffered, none handed out
            await asyncio.to_thread(rabbitmq.close_all_connections, "stale test")
            await until(lambda: "reconnected" in states)
            bodies = []
            for _ in range(5):
                async with asyncio.timeout(10):
                    message = await anext(messages)
                assert message.redelivered is True
                assert message.ack() is True
                bodies.append(message.body)
            assert sorted(bodies) == [b"0", b"1", b"2", b"3", b"4"]
        stats = conn.stats()
        await conn.delete_queue(queue_name)
    assert stats.dropped == 5
    assert stats.delivered == 10
    assert stats.redelivered == 5
    assert stats.acked == 5
    records = _records(caplog, "dropped 5 buffered deliveries", "obs-stale")
    assert len(records) == 1
    assert records[0].name == "leveret.consumer"
    assert records[0].levelno == logging.INFO


async def test_stats_count_publishes_confirms_and_settlements(
    conn: leveret.Connection, queue_name: str
) -> None:
    before = conn.stats()
    assert before.published == before.confirmed == before.delivered == 0
    await conn.declare_queue(queue_name, exclusive=True)
    await asyncio.gather(*(conn.publish(b"m", routing_key=queue_name) for _ in range(20)))
    async with conn.consume(queue_name, prefetch=20) as messages:
        for number in range(20):
            message = await anext(messages)
            if number == 0:
                assert message.nack(requeue=False) is True
            elif number == 1:
                assert message.reject() is True
            else:
                assert message.ack() is True
            assert message.ack() is False  # already settled: not counted again
    with pytest.raises(leveret.MessageReturned):
        await conn.publish(b"lost", routing_key=f"{queue_name}.nobody", mandatory=True)
    stats = conn.stats()
    assert stats.published == 21
    assert stats.confirmed == 20  # the returned one is not
    assert stats.returned == 1
    assert stats.nacked == 0
    assert stats.delivered == 20
    assert stats.redelivered == 0
    assert stats.acked == 18
    assert stats.rejected == 2
    assert stats.in_flight == 0
    assert stats.as_dict()["published"] == 21


async def test_stats_count_broker_nacks(conn: leveret.Connection, queue_name: str) -> None:
    await conn.declare_queue(queue_name, exclusive=True, max_length=1, overflow="reject-publish")
    await conn.publish(b"fits", routing_key=queue_name)
    with pytest.raises(leveret.PublishNacked):
        await conn.publish(b"refused", routing_key=queue_name)
    stats = conn.stats()
    assert (stats.published, stats.confirmed, stats.nacked) == (2, 1, 1)


def test_blocking_connection_stats(rabbitmq_url: str, queue_name: str) -> None:
    with leveret.blocking.connect(rabbitmq_url, name="obs-blocking") as conn:
        assert conn.name == "obs-blocking"
        conn.declare_queue(queue_name, exclusive=True)
        conn.publish_many([b"a", b"b", b"c"], routing_key=queue_name)
        with conn.consume(queue_name) as messages:
            for message in messages.iter(timeout=5.0):
                assert message.ack() is True
                if conn.stats().acked == 3:
                    break
        stats = conn.stats()
    assert (stats.published, stats.confirmed, stats.delivered, stats.acked) == (3, 3, 3, 3)
