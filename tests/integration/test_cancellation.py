"""Cancelling a task at any await leaves the connection usable and its state consistent.

Each operation is started under a random deadline of a few milliseconds, so
cancellations land before, during and after the broker's reply. Afterwards
the connection must work normally and agree with the broker.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Awaitable, Callable

import pytest

import leveret

from ._pipeline import until

pytestmark = pytest.mark.integration


async def _healthy(conn: leveret.Connection, queue: str) -> None:
    await conn.purge_queue(queue)
    await conn.publish(b"healthy", routing_key=queue)
    message = await conn.get(queue)
    assert message is not None
    assert message.body == b"healthy"
    assert message.ack() is True
    async with conn.consume(queue, prefetch=1) as messages:
        await conn.publish(b"consumed", routing_key=queue)
        async with asyncio.timeout(10):
            received = await anext(messages)
        assert received.body == b"consumed"
        assert received.ack() is True


async def test_random_cancellations_of_every_operation(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)
    exchange = f"{queue_name}.x"
    await conn.declare_exchange(exchange, "direct")
    rng = random.Random(20261123)

    async def consume_briefly() -> None:
        async with conn.consume(queue_name, prefetch=5) as messages:
            await anext(messages)

    operations: list[Callable[[], Awaitable[object]]] = [
        lambda: conn.declare_queue(queue_name),
        lambda: conn.declare_exchange(exchange, "direct"),
        lambda: conn.bind_queue(queue_name, exchange, "k"),
        lambda: conn.unbind_queue(queue_name, exchange, "k"),
        lambda: conn.publish(b"x", routing_key=queue_name),
        lambda: conn.publish(b"y", exchange=exchange, routing_key="k"),
        lambda: conn.get(queue_name),
        lambda: conn.purge_queue(queue_name),
        consume_briefly,
    ]
    outcomes: dict[str, int] = {"done": 0, "cancelled": 0}
    for _ in range(1500):
        operation = rng.choice(operations)
        try:
            await asyncio.wait_for(operation(), timeout=rng.uniform(0, 0.004))
            outcomes["done"] += 1
        except TimeoutError:
            outcomes["cancelled"] += 1
    # Both kinds happened, so cancellation really landed mid-operation.
    assert outcomes["done"] > 50
    assert outcomes["cancelled"] > 50
    assert conn.is_connected
    await _healthy(conn, queue_name)
    await conn.delete_exchange(exchange)
    await conn.delete_queue(queue_name)


async def test_cancelled_close_still_closes(rabbitmq_url: str) -> None:
    conn = await leveret.connect(rabbitmq_url)
    await conn.declare_queue("", exclusive=True)
    closing = asyncio.ensure_future(conn.close())
    await asyncio.sleep(0)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing
    async with asyncio.timeout(10):
        await conn.close()  # idempotent: finishes what the cancelled call started
    assert conn.is_closed


async def test_cancelled_publishes_are_not_sent_again_after_a_reconnect(
    rabbitmq_url: str, queue_name: str
) -> None:
    """A publish whose caller gave up while disconnected is dropped, not re-sent later."""
    from urllib.parse import urlsplit

    from leveret.testing import FaultProxy

    url = urlsplit(rabbitmq_url)
    assert url.hostname is not None
    assert url.port is not None
    async with FaultProxy(url.hostname, url.port) as proxy:
        backoff = leveret.Backoff(initial=0.05, maximum=0.2)
        async with leveret.connect(proxy.url_for(rabbitmq_url), backoff=backoff) as conn:
            await conn.declare_queue(queue_name, durable=True)
            await conn.publish(b"first", routing_key=queue_name)
            proxy.refuse()
            proxy.cut()
            await until(lambda: not conn.is_connected)
            abandoned = asyncio.ensure_future(conn.publish(b"abandoned", routing_key=queue_name))
            await asyncio.sleep(0.05)
            abandoned.cancel()
            proxy.accept()
            await conn.wait_connected(timeout=30)
            await conn.publish(b"last", routing_key=queue_name)
            bodies = []
            while (message := await conn.get(queue_name, no_ack=True)) is not None:
                bodies.append(message.body)
            assert bodies == [b"first", b"last"]
            await conn.delete_queue(queue_name)
