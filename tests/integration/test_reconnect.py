"""Reconnection against the real broker: nothing confirmed is lost, nothing stalls.

Faults come from rabbitmqctl (the broker closes every connection); the proxy
scenarios live in test_faults.py. Every scenario checks its own invariants:
each confirmed number consumed at least once, every duplicate explained.
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter

import pytest

import leveret
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

FAST = leveret.Backoff(initial=0.05, maximum=0.5)


async def _until(predicate: object, timeout: float = 20.0) -> None:
    """Wait for a condition driven by other tasks, failing the test instead of hanging."""
    assert callable(predicate)
    async with asyncio.timeout(timeout):
        while True:  # polling: the conditions are plain counters in other tasks
            if predicate():
                return
            await asyncio.sleep(0.01)


async def test_pipeline_survives_repeated_forced_closes(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """20,000 numbered persistent messages while the broker kills every connection 3 times."""
    total = 20_000
    confirmed: set[int] = set()
    received: Counter[int] = Counter()
    redelivered_dupes = 0
    failures: list[BaseException] = []
    async with (
        leveret.connect(rabbitmq_url, backoff=FAST, name="pipeline-pub") as publisher,
        leveret.connect(rabbitmq_url, backoff=FAST, name="pipeline-con") as consumer_conn,
    ):
        await publisher.declare_queue(queue_name, durable=True)
        reconnects: Counter[str] = Counter()
        publisher.add_listener(lambda state, _e: reconnects.update([f"pub-{state}"]))
        consumer_conn.add_listener(lambda state, _e: reconnects.update([f"con-{state}"]))

        async def publish_all() -> None:
            window = asyncio.Semaphore(500)

            async def one(number: int) -> None:
                try:
                    await publisher.publish(
                        struct.pack(">I", number), routing_key=queue_name, persistent=True
                    )
                    confirmed.add(number)
                except leveret.LeveretError as exc:
                    failures.append(exc)
                finally:
                    window.release()

            tasks = []
            for number in range(total):
                await window.acquire()
                tasks.append(asyncio.ensure_future(one(number)))
            await asyncio.gather(*tasks)

        loop = asyncio.get_running_loop()
        last_progress = loop.time()
        longest_gap = 0.0

        async def consume_all() -> None:
            nonlocal redelivered_dupes, last_progress, longest_gap
            async with consumer_conn.consume(queue_name, prefetch=200) as messages:
                async for message in messages:
                    now = loop.time()
                    longest_gap = max(longest_gap, now - last_progress)
                    last_progress = now
                    (number,) = struct.unpack(">I", message.body)
                    if received[number] and message.redelivered:
                        redelivered_dupes += 1
                    received[number] += 1
                    message.ack()
                    if len(received) == total:
                        return

        async def faults() -> None:
            await _until(lambda: len(received) > total // 20)
            for round_ in range(3):
                await asyncio.to_thread(rabbitmq.close_all_connections, f"fault {round_}")
                await _until(
                    lambda r=round_: (
                        min(reconnects["con-reconnected"], reconnects["pub-reconnected"]) > r
                    )
                )

        async with asyncio.timeout(120):
            await asyncio.gather(publish_all(), consume_all(), faults())
        assert failures == []
        assert reconnects["con-reconnected"] == 3  # every fault hit mid-stream
        assert reconnects["pub-reconnected"] == 3
        assert len(confirmed) == total
        missing = set(range(total)) - set(received)
        assert missing == set()
        duplicates = sum(count - 1 for count in received.values())
        print(
            f"\npipeline: published={total} confirmed={len(confirmed)} consumed={len(received)} "
            f"lost=0 duplicates={duplicates} (redelivered={redelivered_dupes}) "
            f"longest gap={longest_gap:.2f}s reconnects={dict(reconnects)}"
        )
        # A duplicate is either a redelivery or a re-sent unconfirmed publish; both are
        # bounded by what was in flight at the three faults.
        assert duplicates <= 3 * (500 + 200)
        await publisher.delete_queue(queue_name)


async def test_server_named_queue_gets_a_new_name_and_keeps_its_binding(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    exchange = f"{queue_name}.fanout"
    states: list[str] = []
    async with leveret.connect(rabbitmq_url, backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        await conn.declare_exchange(exchange, "fanout", auto_delete=True)
        temporary = await conn.declare_queue("", exclusive=True)
        await conn.bind_queue(temporary.name, exchange)
        async with conn.consume(temporary.name) as messages:
            await conn.publish(b"before", exchange=exchange)
            first = await anext(messages)
            assert first.body == b"before"
            assert first.ack() is True

            await asyncio.to_thread(rabbitmq.close_all_connections, "rename test")
            await _until(lambda: states.count("reconnected") == 1)
            await conn.publish(b"after", exchange=exchange)
            async with asyncio.timeout(10):
                second = await anext(messages)
            assert second.body == b"after"
            assert second.ack() is True
            assert messages.queue != temporary.name  # the broker named the new queue
        main_states = [state for state in states if not state.startswith("publisher ")]
        assert main_states == ["disconnected", "reconnected"]
        assert "publisher reconnected" in states  # the publishing connection came back too


async def test_held_delivery_goes_stale_and_comes_back_redelivered(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url, backoff=FAST) as conn:
        await conn.declare_queue(queue_name, durable=True)
        await conn.publish(b"work", routing_key=queue_name, persistent=True)
        async with conn.consume(queue_name, prefetch=10) as messages:
            held = await anext(messages)
            assert held.redelivered is False
            await asyncio.to_thread(rabbitmq.close_all_connections, "mid-message")
            await _until(lambda: held.stale)
            assert held.ack() is False  # sends nothing: the tag belongs to a dead channel
            async with asyncio.timeout(10):
                again = await anext(messages)
            assert again.body == b"work"
            assert again.redelivered is True
            assert again.ack() is True
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0
        await conn.delete_queue(queue_name)


async def test_broker_restart_recreates_the_lost_topology(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """stop_app/start_app drops every non-durable exchange, queue and binding; all come back."""
    source, destination = f"{queue_name}.src", f"{queue_name}.dst"
    states: list[str] = []
    async with leveret.connect(rabbitmq_url, backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        await conn.declare_exchange(source, "topic")
        await conn.declare_exchange(destination, "fanout")
        await conn.bind_exchange(destination, source, "orders.*")
        queue = await conn.declare_queue("", exclusive=True)
        await conn.bind_queue(queue.name, destination)
        async with conn.consume(queue.name) as messages:
            await asyncio.to_thread(rabbitmq.ctl, "stop_app")
            await asyncio.to_thread(rabbitmq.ctl, "start_app")
            await conn.wait_connected(timeout=60)
            await _until(lambda: "reconnected" in states, timeout=60)
            await conn.publish(b"routed", exchange=source, routing_key="orders.created")
            async with asyncio.timeout(10):
                message = await anext(messages)
            assert message.body == b"routed"
            assert message.ack() is True
        await conn.delete_exchange(source)
        await conn.delete_exchange(destination)


async def test_close_never_reconnects(rabbitmq: RabbitMQNode, rabbitmq_url: str) -> None:
    conn = await leveret.connect(rabbitmq_url, backoff=FAST, name="closing-test")
    await conn.close()
    assert conn.is_closed
    assert not conn.is_connected
    names = [row.get("name", "") for row in rabbitmq.list_connections()]
    assert all("closing-test" not in str(name) for name in names)
    with pytest.raises(leveret.ConnectionClosedByClient):
        await conn.publish(b"late", routing_key="x")


async def test_reconnect_false_fails_fast(rabbitmq: RabbitMQNode, rabbitmq_url: str) -> None:
    async with leveret.connect(rabbitmq_url, reconnect=False) as conn:
        await asyncio.to_thread(rabbitmq.close_all_connections, "no reconnect")
        async with asyncio.timeout(10):
            error = await conn.wait_closed()
        assert isinstance(error, leveret.ConnectionForced)
        with pytest.raises(leveret.ConnectionForced):
            await conn.declare_queue("", exclusive=True)


async def test_memory_alarm_blocks_publishers_while_consumers_keep_acking(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name)
        for number in range(10):
            await conn.publish(str(number).encode(), routing_key=queue_name)
        async with conn.consume(queue_name, prefetch=2) as messages:
            await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0)
            try:
                during = asyncio.ensure_future(
                    conn.publish(b"during the alarm", routing_key=queue_name, timeout=60)
                )
                await _until(lambda: conn.is_blocked)
                with pytest.raises(leveret.PublishTimeout, match="blocked publishing"):
                    await conn.publish(b"gives up", routing_key=queue_name, timeout=0.5)
                # The consuming connection is not blocked: all ten arrive and are acked.
                for number in range(10):
                    async with asyncio.timeout(10):
                        message = await anext(messages)
                    assert message.body == str(number).encode()
                    assert message.ack() is True
                assert not during.done()
            finally:
                await asyncio.to_thread(rabbitmq.set_vm_memory_high_watermark, 0.4)
            async with asyncio.timeout(30):
                await during  # confirmed once the alarm cleared
                message = await anext(messages)
            assert message.body == b"during the alarm"
            assert message.ack() is True
        assert not conn.is_blocked
