"""Large messages against the real broker: refused locally over the limit, and a 10 MiB
body through a slow link does not starve heartbeats on either side."""

from __future__ import annotations

import asyncio
import os
import re
from collections.abc import Iterator
from urllib.parse import urlsplit

import pytest

import leveret
import leveret.blocking
from leveret.testing import FaultProxy, RabbitMQNode

pytestmark = pytest.mark.integration

BOUND = 30
MiB = 1024 * 1024


async def test_a_body_over_max_message_size_is_refused_before_sending(
    rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url, max_message_size=MiB) as conn:
        await conn.declare_queue(queue_name, auto_delete=True)
        with pytest.raises(leveret.MessageTooLarge, match=f"{MiB + 1} bytes") as info:
            await conn.publish(b"x" * (MiB + 1), routing_key=queue_name)
        assert (info.value.size, info.value.limit) == (MiB + 1, MiB)
        assert isinstance(info.value, ValueError)
        assert conn._publisher is None  # nothing was sent: not even the publisher opened
        exact = os.urandom(MiB)  # the limit itself is allowed, and arrives intact
        await conn.publish(exact, routing_key=queue_name)
        message = await conn.get(queue_name, no_ack=True)
        assert message is not None
        assert message.body == exact
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


def test_bad_max_message_size_is_named() -> None:
    with pytest.raises(ValueError, match="max_message_size must be a positive int, got 0"):
        leveret.connect("amqp://localhost/", max_message_size=0)


@pytest.fixture
def broker_limit_1mib(rabbitmq: RabbitMQNode) -> Iterator[None]:
    """The broker's max_message_size at 1 MiB for channels opened meanwhile."""
    saved = rabbitmq.ctl(
        "--quiet",
        "eval",
        f"Old = application:get_env(rabbit, max_message_size), "
        f"application:set_env(rabbit, max_message_size, {MiB}), Old.",
    )
    found = re.search(r"\{ok,(\d+)\}", saved)
    try:
        yield
    finally:
        restore = (
            f"application:set_env(rabbit, max_message_size, {found.group(1)})."
            if found
            else "application:unset_env(rabbit, max_message_size)."
        )
        rabbitmq.ctl("eval", restore)


@pytest.mark.usefixtures("broker_limit_1mib")
async def test_without_a_matching_client_limit_the_broker_refuses_it(
    rabbitmq_url: str, queue_name: str
) -> None:
    """Why the client limit should match the broker's: the broker only says no after the
    whole body crossed the network, and closes the publishing channel."""
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name, auto_delete=True)
        with pytest.raises(leveret.PreconditionFailed, match="larger than configured max size"):
            await conn.publish(b"x" * (2 * MiB), routing_key=queue_name)
        await conn.publish(b"small", routing_key=queue_name)  # only that channel was closed


async def test_ten_mib_through_a_slow_link_keeps_heartbeats_flowing(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    url = urlsplit(rabbitmq_url)
    assert url.hostname is not None
    assert url.port is not None
    body = os.urandom(10 * MiB)
    states: list[str] = []
    async with FaultProxy(url.hostname, url.port) as proxy:
        # 2 MiB/s each way: the body takes about five 1-second heartbeat intervals.
        proxy.slow(0, bytes_per_second=2 * MiB)
        async with leveret.connect(
            proxy.url_for(rabbitmq_url), heartbeat=1, name="large-body"
        ) as conn:
            conn.add_listener(lambda state, _error: states.append(state))
            assert conn.heartbeat == 1
            await conn.declare_queue(queue_name, durable=True)
            await conn.publish(b"opens the publisher", routing_key=queue_name)
            before = proxy.bytes_upstream
            async with asyncio.timeout(BOUND):
                await conn.publish(body, routing_key=queue_name)  # confirmed
            assert proxy.bytes_upstream - before > len(body)  # it did cross the slow link
            assert states == []  # neither side gave up on the other's heartbeats
            assert conn.is_connected
            names = [
                row["client_properties"].get("connection_name")
                for row in await asyncio.to_thread(rabbitmq.list_connections)
            ]
            assert names.count("large-body") == 1
            assert names.count("large-body (publisher)") == 1
    async with leveret.connect(rabbitmq_url) as direct:
        first = await direct.get(queue_name, no_ack=True)
        received = await direct.get(queue_name, no_ack=True)
        assert first is not None
        assert received is not None
        assert received.body == body
        await direct.delete_queue(queue_name)


def test_the_blocking_facade_refuses_it_too(rabbitmq_url: str, queue_name: str) -> None:
    with leveret.blocking.connect(rabbitmq_url, max_message_size=1024) as conn:
        conn.declare_queue(queue_name, auto_delete=True)
        with pytest.raises(leveret.MessageTooLarge, match="over max_message_size=1024"):
            conn.publish(b"x" * 1025, routing_key=queue_name)
        conn.publish(b"x" * 1024, routing_key=queue_name)
        assert conn.declare_queue(queue_name, passive=True).message_count == 1
