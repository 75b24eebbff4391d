"""Connection-level behaviour against the private broker: handshake, heartbeats,
connect failures, several URLs, many concurrent operations on one connection."""

from __future__ import annotations

import asyncio
import json
import socket
from collections.abc import AsyncIterator

import pytest

import leveret
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
async def silent_server() -> AsyncIterator[int]:
    """A TCP server that accepts connections and never says a word."""
    held: list[asyncio.StreamWriter] = []

    async def hold(_reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        held.append(writer)

    server = await asyncio.start_server(hold, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    yield port
    for writer in held:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_client_properties_and_name_reach_the_broker(
    rabbitmq_url: str, rabbitmq: RabbitMQNode
) -> None:
    async with leveret.connect(rabbitmq_url, name="orders-service"):
        listing = rabbitmq.ctl("list_connections", "client_properties", "--formatter", "json")
    rows = json.loads(listing)
    props = [row["client_properties"] for row in rows]
    flat = json.dumps(props)
    assert "orders-service" in flat
    for capability in (
        "publisher_confirms",
        "consumer_cancel_notify",
        "connection.blocked",
        "authentication_failure_close",
        "basic.nack",
        "exchange_exchange_bindings",
    ):
        assert capability in flat


async def test_heartbeat_is_negotiated_from_url_and_argument(rabbitmq_url: str) -> None:
    async with leveret.connect(rabbitmq_url + "?heartbeat=7") as conn:
        assert conn.heartbeat == 7
    async with leveret.connect(rabbitmq_url + "?heartbeat=7", heartbeat=3) as conn:
        assert conn.heartbeat == 3
    async with leveret.connect(rabbitmq_url, heartbeat=0) as conn:
        assert conn.heartbeat == 0


async def test_idle_connection_survives_many_heartbeat_intervals(
    rabbitmq_url: str, queue_name: str
) -> None:
    """The broker drops a client that sends nothing for two intervals; ours keeps talking."""
    async with leveret.connect(rabbitmq_url, heartbeat=1) as conn:
        await conn.declare_queue(queue_name, auto_delete=True)
        await asyncio.sleep(4.5)  # idle: only heartbeats flow
        await conn.publish(b"still here", routing_key=queue_name)
        message = await conn.get(queue_name)
        assert message is not None
        assert message.body == b"still here"


async def test_connection_refused_raises_connect_failed() -> None:
    port = _free_port()
    with pytest.raises(leveret.ConnectFailed, match=str(port)):
        await leveret.connect(f"amqp://guest:guest@127.0.0.1:{port}/", connection_timeout=5)


async def test_silent_server_hits_the_connection_timeout(silent_server: int) -> None:
    with pytest.raises(leveret.ConnectFailed, match=r"no AMQP handshake within 0\.5s"):
        await leveret.connect(
            f"amqp://guest:guest@127.0.0.1:{silent_server}/", connection_timeout=0.5
        )


async def test_first_reachable_url_wins(rabbitmq_url: str) -> None:
    dead = f"amqp://guest:guest@127.0.0.1:{_free_port()}/"
    async with leveret.connect([dead, rabbitmq_url]) as conn:
        info = await conn.declare_queue("", exclusive=True)
        assert info.name.startswith("amq.gen-")


async def test_no_reachable_url_names_every_attempt() -> None:
    ports = [_free_port(), _free_port()]
    urls = [f"amqp://guest:guest@127.0.0.1:{p}/" for p in ports]
    with pytest.raises(leveret.ConnectFailed) as caught:
        await leveret.connect(urls, connection_timeout=5)
    for port in ports:
        assert str(port) in str(caught.value)


async def test_thousands_of_concurrent_publishes_then_consume(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, auto_delete=False)
    count = 5000
    await asyncio.gather(
        *(conn.publish(str(i).encode(), routing_key=queue_name) for i in range(count))
    )
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == count
    seen: list[int] = []
    async with conn.consume(queue_name, prefetch=500) as messages:
        async for message in messages:
            seen.append(int(message.body))
            assert message.ack() is True
            if len(seen) == count:
                break
    assert sorted(seen) == list(range(count))
    assert seen == list(range(count))  # one queue, one publisher channel: order is kept
    assert await conn.delete_queue(queue_name) == 0


async def test_closing_the_connection_ends_a_waiting_consumer(
    rabbitmq_url: str, queue_name: str
) -> None:
    conn = await leveret.connect(rabbitmq_url)
    await conn.declare_queue(queue_name, auto_delete=True)

    async def consume() -> None:
        async with conn.consume(queue_name) as messages:
            async for _ in messages:
                pass

    consumer = asyncio.ensure_future(consume())
    await asyncio.sleep(0)  # let it start waiting
    await conn.close()
    async with asyncio.timeout(10):
        with pytest.raises(leveret.ConnectionClosedByClient):
            await consumer
    with pytest.raises(leveret.ConnectionClosedByClient):
        await conn.declare_queue(queue_name, passive=True)


async def test_update_secret_is_answered_and_the_connection_carries_on(
    conn: leveret.Connection, queue_name: str
) -> None:
    """connection.update-secret (OAuth 2 token refresh) waits for the broker's update-secret-ok."""
    await conn.update_secret("guest", reason="rotation test")
    await conn.declare_queue(queue_name, auto_delete=True)
    await conn.publish(b"after rotation", routing_key=queue_name)
    message = await conn.get(queue_name)
    assert message is not None
    assert message.body == b"after rotation"
    with pytest.raises(TypeError, match="new_secret must be a str"):
        await conn.update_secret(b"bytes")  # type: ignore[arg-type]


async def test_publishes_in_flight_are_bounded_by_max_in_flight(
    rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url, max_in_flight=5) as conn:
        await conn.declare_queue(queue_name, auto_delete=False)
        highest = 0
        done = False

        async def sample() -> None:
            nonlocal highest
            while not done:
                publisher = conn._publisher
                if publisher is not None:
                    highest = max(highest, publisher._in_flight)
                await asyncio.sleep(0)

        sampler = asyncio.ensure_future(sample())
        await asyncio.gather(
            *(conn.publish(str(i).encode(), routing_key=queue_name) for i in range(200))
        )
        done = True
        await sampler
        assert 1 <= highest <= 5
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 200
        await conn.delete_queue(queue_name)
