"""Graceful close against the real broker: leaving `connect()` finishes the work in progress.

A handler halfway through a message when the connection closes gets to finish,
publish and ack (so the broker does not hand the message out again), within
`drain_timeout`; a handler that never finishes does not hold the close longer.
"""

from __future__ import annotations

import asyncio
from urllib.parse import urlsplit

import pytest

import leveret
from leveret.testing import FaultProxy, RabbitMQNode

from ._pipeline import FAST, until

pytestmark = pytest.mark.integration

BOUND = 15


def queue_depth(rabbitmq: RabbitMQNode, queue: str) -> int:
    rows = {row["name"]: row for row in rabbitmq.list_queues()}
    return int(rows[queue]["messages"])


async def test_close_lets_a_running_handler_finish_publish_and_ack(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    results = f"{queue_name}.results"
    started = asyncio.Event()
    release = asyncio.Event()
    finished: list[bytes] = []

    async def handler(message: leveret.Message) -> None:
        started.set()
        await release.wait()  # still working when close() begins
        await conn.publish(b"done:" + message.body, routing_key=results)
        finished.append(message.body)

    async with asyncio.timeout(BOUND):
        conn = await leveret.connect(rabbitmq_url, drain_timeout=10)
        await conn.declare_queue(queue_name, durable=True)
        await conn.declare_queue(results, durable=True)
        subscription = conn.subscribe(queue_name, handler)
        await subscription.start()
        await conn.publish(b"job-1", routing_key=queue_name, persistent=True)
        await started.wait()

        closing = asyncio.ensure_future(conn.close())
        await asyncio.sleep(0.2)
        assert not closing.done()  # waiting for the handler
        assert not conn.is_closed
        release.set()
        await closing
        assert conn.is_closed
        await subscription.close()  # the owner's exit after the connection drained it: a no-op

    assert finished == [b"job-1"]
    assert subscription.handled == 1
    # The ack reached the broker (nothing left to redeliver) and so did the publish.
    assert queue_depth(rabbitmq, queue_name) == 0
    async with leveret.connect(rabbitmq_url) as check:
        reply = await check.get(results, no_ack=True)
        assert reply is not None
        assert reply.body == b"done:job-1"
        assert await check.get(queue_name) is None
        await check.delete_queue(queue_name)
        await check.delete_queue(results)


@pytest.mark.parametrize("stubborn", [False, True], ids=["cancellable", "ignores-cancel"])
async def test_a_handler_that_never_finishes_does_not_hold_close_past_the_bound(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str, stubborn: bool
) -> None:
    drain_timeout, close_timeout = 0.5, 1.0
    started = asyncio.Event()
    forever = asyncio.Event()
    cancelled: list[bool] = []

    async def handler(message: leveret.Message) -> None:
        started.set()
        try:
            await forever.wait()
        except asyncio.CancelledError:
            cancelled.append(True)
            if not stubborn:
                raise
            await forever.wait()  # a handler that swallows the cancellation

    conn = await leveret.connect(
        rabbitmq_url, drain_timeout=drain_timeout, close_timeout=close_timeout
    )
    await conn.declare_queue(queue_name, durable=True)
    await conn.publish(b"endless", routing_key=queue_name, persistent=True)
    subscription = conn.subscribe(queue_name, handler)
    await subscription.start()
    await asyncio.wait_for(started.wait(), BOUND)

    loop = asyncio.get_running_loop()
    began = loop.time()
    # drain, the cancelled handler's grace, the consumer's and the connection's close-ok
    await asyncio.wait_for(conn.close(), drain_timeout + 3 * close_timeout + 1)
    took = loop.time() - began
    assert took >= drain_timeout  # it did wait for the handler first
    assert cancelled == [True]
    assert conn.is_closed
    forever.set()  # let the stubborn handler end before the loop does

    # The unfinished message was not acked: the broker hands it out again.
    async with leveret.connect(rabbitmq_url) as check:
        async with asyncio.timeout(BOUND), check.consume(queue_name) as messages:
            message = await anext(messages)
            message.ack()
        assert message.body == b"endless"
        assert message.redelivered
        await check.delete_queue(queue_name)


async def test_close_without_subscriptions_waits_for_unconfirmed_publishes(
    rabbitmq_url: str, queue_name: str
) -> None:
    conn = await leveret.connect(rabbitmq_url, drain_timeout=10)
    await conn.declare_queue(queue_name, durable=True)
    await conn.publish(b"first", routing_key=queue_name)  # opens the publishing connection
    publishes = [
        asyncio.ensure_future(conn.publish(b"%d" % n, routing_key=queue_name, persistent=True))
        for n in range(500)
    ]
    await asyncio.sleep(0)  # sent, not yet confirmed
    await asyncio.wait_for(conn.close(), BOUND)
    outcomes = await asyncio.gather(*publishes, return_exceptions=True)
    assert outcomes == [None] * 500  # every one confirmed, none failed by the close
    async with leveret.connect(rabbitmq_url) as check:
        info = await check.declare_queue(queue_name, passive=True)
        assert info.message_count == 501
        await check.delete_queue(queue_name)


def test_bad_drain_timeout_is_named() -> None:
    with pytest.raises(ValueError, match="drain_timeout must be seconds"):
        leveret.connect("amqp://localhost/", drain_timeout=-1)


async def test_close_while_blocked_returns_promptly_and_fails_pending_publishes(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    name = f"blocked-close-{queue_name[-8:]}"
    conn = await leveret.connect(rabbitmq_url, name=name, close_timeout=5, drain_timeout=5)
    await conn.declare_queue(queue_name, auto_delete=True)
    await conn.publish(b"opens the publisher", routing_key=queue_name)
    await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0)
    try:
        pending = [
            asyncio.ensure_future(conn.publish(b"%d" % n, routing_key=queue_name, timeout=60))
            for n in range(3)
        ]
        await until(lambda: conn.is_blocked, BOUND)
        # Not after drain_timeout plus close_timeout: the broker reads nothing from a
        # blocked connection, so there is no confirm or close-ok to wait for.
        await asyncio.wait_for(conn.close(), 2.0)
        outcomes = await asyncio.gather(*pending, return_exceptions=True)
    finally:
        await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0.4)
    for outcome in outcomes:
        assert isinstance(outcome, leveret.ConnectionClosedByClient)
        assert "blocked publishing" in str(outcome)
    assert await conn.wait_closed() is None  # a close by the user, not a failure

    def gone() -> bool:
        rows = rabbitmq.list_connections()
        return not any(name in str(row["client_properties"]) for row in rows)

    await until(gone, BOUND)  # the broker let go of both connections


async def test_close_mid_recovery_returns_promptly_and_fails_pending_publishes(
    rabbitmq_url: str, queue_name: str
) -> None:
    url = urlsplit(rabbitmq_url)
    assert url.hostname is not None
    assert url.port is not None
    async with FaultProxy(url.hostname, url.port) as proxy:
        conn = await leveret.connect(
            proxy.url_for(rabbitmq_url), close_timeout=5, drain_timeout=5, backoff=FAST
        )
        await conn.declare_queue(queue_name, auto_delete=True)
        await conn.publish(b"opens the publisher", routing_key=queue_name)
        proxy.blackhole()  # sent, never confirmed
        unconfirmed = asyncio.ensure_future(conn.publish(b"in flight", routing_key=queue_name))
        await proxy.wait_until(lambda: proxy.bytes_dropped > 0)
        proxy.refuse()  # the broker is "down": every reconnect attempt fails
        proxy.cut()
        await until(lambda: not conn.is_connected, BOUND)
        await proxy.wait_until(lambda: proxy.connections_refused > 0)  # really reconnecting
        waiting = asyncio.ensure_future(conn.publish(b"not sent", routing_key=queue_name))
        await asyncio.wait_for(conn.close(), 2.0)
        for outcome in await asyncio.gather(unconfirmed, waiting, return_exceptions=True):
            assert isinstance(outcome, leveret.ConnectionClosedByClient)
            assert "while reconnecting" in str(outcome)


async def test_a_handler_may_close_the_connection_itself(
    rabbitmq_url: str, queue_name: str
) -> None:
    """A "shut down" message: the handler closes the connection; the close neither waits
    for nor cancels the handler that asked for it."""
    closed: list[bool] = []

    async def handler(message: leveret.Message) -> None:
        message.ack()
        await conn.close()
        closed.append(conn.is_closed)

    conn = await leveret.connect(rabbitmq_url, drain_timeout=30)
    await conn.declare_queue(queue_name, durable=True)
    subscription = conn.subscribe(queue_name, handler)
    await subscription.start()
    await conn.publish(b"shut down", routing_key=queue_name)
    async with asyncio.timeout(BOUND):  # far below drain_timeout: it did not wait for itself
        await conn.wait_closed()
        await until(lambda: closed == [True])
    async with leveret.connect(rabbitmq_url) as check:
        assert (await check.declare_queue(queue_name, passive=True)).message_count == 0
        await check.delete_queue(queue_name)
