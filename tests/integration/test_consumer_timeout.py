"""The broker's consumer_timeout against the real broker: reported, redelivered, survived.

RabbitMQ 3.10 checks for overdue acks on each channel's tick, once a minute by
default; the test shortens both the timeout and the tick at runtime
(`application:set_env`, read by channels when they open) and restores them.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Iterator

import pytest

import leveret
from leveret.testing import RabbitMQNode

from ._pipeline import until

pytestmark = pytest.mark.integration

BOUND = 15
TIMEOUT_MS = 1000


@pytest.fixture(scope="module")
def short_consumer_timeout(rabbitmq: RabbitMQNode) -> Iterator[None]:
    """consumer_timeout 1 s, checked every 100 ms, for channels opened in this module."""
    keys = ("consumer_timeout", "channel_tick_interval")
    saved = rabbitmq.ctl(
        "--quiet",
        "eval",
        "Old = [application:get_env(rabbit, K) || K <- [consumer_timeout, channel_tick_interval]], "
        f"application:set_env(rabbit, consumer_timeout, {TIMEOUT_MS}), "
        "application:set_env(rabbit, channel_tick_interval, 100), Old.",
    )
    old = re.findall(r"\{ok,(\d+)\}|undefined", saved)  # e.g. [{ok,1800000},undefined]
    assert len(old) == len(keys), saved
    try:
        yield
    finally:
        restore = [
            f"application:set_env(rabbit, {key}, {value})"
            if value
            else f"application:unset_env(rabbit, {key})"
            for key, value in zip(keys, old, strict=True)
        ]
        rabbitmq.ctl("eval", ", ".join(restore) + ".")


@pytest.mark.usefixtures("short_consumer_timeout")
@pytest.mark.parametrize("queue_type", ["classic", "quorum"])
async def test_consume_raises_consumer_timeout_and_the_message_comes_back(
    rabbitmq_url: str, queue_name: str, queue_type: leveret.QueueType
) -> None:
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name, type=queue_type, durable=True)
        await conn.publish(b"slow work", routing_key=queue_name, persistent=True)
        async with asyncio.timeout(BOUND), conn.consume(queue_name, prefetch=1) as messages:
            held = await anext(messages)
            assert not held.redelivered
            # Hold it: the broker closes the channel, and the iterator says why.
            with pytest.raises(leveret.ConsumerTimeout, match="timed out") as info:
                await anext(messages)
            assert isinstance(info.value, leveret.PreconditionFailed)
            assert info.value.reply_code == 406
            assert held.ack() is False  # stale: not sent, it would be an unknown tag
            await messages.restart()  # consume again
            again = await anext(messages)
            assert again.body == b"slow work"
            assert again.redelivered
            assert again.ack() is True
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0
        await conn.delete_queue(queue_name)


@pytest.mark.usefixtures("short_consumer_timeout")
async def test_a_subscription_survives_a_consumer_timeout(
    rabbitmq_url: str, queue_name: str
) -> None:
    attempts: list[bool] = []
    acked: list[bool] = []
    done = asyncio.Event()

    async def handler(message: leveret.Message) -> None:
        attempts.append(message.redelivered)
        if len(attempts) == 1:
            await until(lambda: subscription.timed_out == 1, BOUND)  # far too slow
            acked.append(message.ack())
            return
        acked.append(message.ack())
        done.set()

    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name, type="quorum")
        async with conn.subscribe(queue_name, handler, concurrency=2) as subscription:
            await conn.publish(b"job", routing_key=queue_name)
            async with asyncio.timeout(BOUND):
                await done.wait()
            await until(lambda: len(acked) == 2, BOUND)
        assert attempts == [False, True]  # the redelivery reached the restarted consumer
        assert sorted(acked) == [False, True]  # the late ack was not sent, the second was
        assert subscription.timed_out == 1
        assert subscription.handled == 2
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0
        await conn.delete_queue(queue_name)
