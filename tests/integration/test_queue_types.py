"""Quorum queues, streams and the spelled-out queue arguments, on a real broker."""

from __future__ import annotations

import asyncio
import datetime
import re

import pytest

import leveret
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration


async def read(conn: leveret.Connection, queue: str, count: int, **options: object) -> list[bytes]:
    bodies: list[bytes] = []
    async with asyncio.timeout(10), conn.consume(queue, prefetch=50, **options) as messages:  # type: ignore[arg-type]
        async for message in messages:
            bodies.append(message.body)
            message.ack()
            if len(bodies) == count:
                break
    return bodies


async def test_quorum_queue_is_durable_by_default_and_dead_letters_after_the_limit(
    conn: leveret.Connection, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    await conn.declare_queue(dead, exclusive=True)
    await conn.declare_queue(
        queue_name,
        type="quorum",
        delivery_limit=1,
        dead_letter_exchange="",
        dead_letter_routing_key=dead,
    )
    try:
        # Redeclaring with the same settings is fine; a passive check sees it.
        await conn.declare_queue(
            queue_name,
            type="quorum",
            delivery_limit=1,
            dead_letter_exchange="",
            dead_letter_routing_key=dead,
        )
        await conn.publish(b"poison", routing_key=queue_name)
        # Returned twice, it exceeds a limit of 1 and goes to the dead-letter queue.
        counts = []
        async with asyncio.timeout(10), conn.consume(queue_name, prefetch=1) as messages:
            async for message in messages:
                counts.append(message.headers.get("x-delivery-count"))
                message.nack(requeue=True)
                if len(counts) == 2:
                    break
        async with asyncio.timeout(10), conn.consume(dead, no_ack=True) as dead_letters:
            dead_letter = await anext(dead_letters)
        assert counts == [None, 1]  # the first delivery has no count yet
        assert dead_letter.body == b"poison"
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0
    finally:
        await conn.delete_queue(queue_name)


async def test_queue_keywords_reach_the_broker(conn: leveret.Connection, queue_name: str) -> None:
    await conn.declare_queue(queue_name, exclusive=True, max_length=2, overflow="reject-publish")
    await conn.publish(b"1", routing_key=queue_name)
    await conn.publish(b"2", routing_key=queue_name)
    with pytest.raises(leveret.PublishNacked):
        await conn.publish(b"3", routing_key=queue_name)
    # The same arguments spelled by hand are the same queue (no 406 on redeclare).
    await conn.declare_queue(
        queue_name, exclusive=True, arguments={"x-max-length": 2, "x-overflow": "reject-publish"}
    )
    expiring = f"{queue_name}.ttl"
    await conn.declare_queue(expiring, exclusive=True, message_ttl=0)
    await conn.publish(b"gone at once", routing_key=expiring)
    assert await conn.get(expiring) is None


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"type": "lazy"}, ValueError, "type must be one of classic, quorum, stream, got 'lazy'"),
        ({"type": "quorum", "exclusive": True}, ValueError, "a quorum queue cannot be exclusive"),
        ({"type": "stream", "durable": False}, ValueError, "a stream queue cannot be durable"),
        ({"delivery_limit": 3}, ValueError, "delivery_limit=3 needs type='quorum'"),
        ({"message_ttl": -1}, ValueError, "message_ttl must be >= 0 seconds, got -1"),
        ({"message_ttl": "1s"}, TypeError, "message_ttl must be seconds as a number, got '1s'"),
        ({"expires": 0}, ValueError, "expires must be > 0 seconds, got 0"),
        ({"max_length": 1.5}, TypeError, "max_length must be an int, got 1.5"),
        ({"max_priority": 300}, ValueError, "max_priority must be from 1 to 255, got 300"),
        ({"overflow": "drop-tail"}, ValueError, "got 'drop-tail'"),
        (
            {"max_length": 1, "arguments": {"x-max-length": 2}},
            ValueError,
            "x-max-length given both as a keyword and in arguments",
        ),
    ],
)
async def test_bad_queue_keywords_are_refused_before_anything_is_sent(
    conn: leveret.Connection, queue_name: str, options: dict[str, object], error: type, message: str
) -> None:
    with pytest.raises(error) as info:
        await conn.declare_queue(queue_name, **options)  # type: ignore[arg-type]
    assert message in str(info.value)
    with pytest.raises(leveret.NotFound):
        await conn.declare_queue(queue_name, passive=True)


async def test_stream_read_from_first_twice_and_next_sees_only_new(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, type="stream")
    try:
        for n in range(5):
            await conn.publish(b"old %d" % n, routing_key=queue_name)
        first = await read(conn, queue_name, 5, offset="first")
        again = await read(conn, queue_name, 5, offset="first")
        assert first == again == [b"old %d" % n for n in range(5)]

        # From an offset number: the 4th message onwards.
        assert await read(conn, queue_name, 2, offset=3) == [b"old 3", b"old 4"]

        # "next" sees only what is published after the consumer started.
        seen: list[bytes] = []
        async with (
            asyncio.timeout(10),
            conn.consume(queue_name, prefetch=10, offset="next") as messages,
        ):
            await conn.publish(b"new", routing_key=queue_name)
            async for message in messages:
                seen.append(message.body)
                assert message.stream_offset == 5
                message.ack()
                break
        assert seen == [b"new"]

        # A timestamp in the past reads everything; one in the future nothing old.
        past = datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)
        assert (await read(conn, queue_name, 6, offset=past))[-1] == b"new"
    finally:
        await conn.delete_queue(queue_name)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"offset": "begin"}, "offset must be 'first', 'last', 'next'"),
        ({"offset": -1}, "got -1"),
        ({"offset": True}, "got True"),
        ({"offset": "first", "no_ack": True}, "needs acks"),
        ({"offset": "first", "prefetch": 0}, "prefetch above 0"),
    ],
)
def test_bad_stream_offsets_are_refused(
    conn: leveret.Connection, options: dict[str, object], message: str
) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        conn.consume("some-stream", **options)  # type: ignore[arg-type]


async def test_stream_consumer_resumes_after_the_last_message_it_handed_out(
    rabbitmq: RabbitMQNode, conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, type="stream")
    try:
        for n in range(10):
            await conn.publish(b"%d" % n, routing_key=queue_name)
        fast = leveret.Backoff(initial=0.05, maximum=0.2)
        seen: list[bytes] = []
        async with leveret.connect(rabbitmq_url_of(rabbitmq), backoff=fast) as reader:
            reconnected = asyncio.Event()
            reader.add_listener(lambda state, _: state == "reconnected" and reconnected.set())
            consumer = reader.consume(queue_name, prefetch=1, offset="first")
            async with asyncio.timeout(20), consumer as messages:
                async for message in messages:
                    seen.append(message.body)
                    message.ack()
                    if len(seen) == 4:
                        await asyncio.to_thread(rabbitmq.close_all_connections, "resume test")
                        await reconnected.wait()
                    if len(seen) == 10:
                        break
        assert seen == [b"%d" % n for n in range(10)]  # no repeat of 0-3, nothing skipped
    finally:
        await conn.delete_queue(queue_name)


def rabbitmq_url_of(node: RabbitMQNode) -> str:
    return node.url
