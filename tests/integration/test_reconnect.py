"""Reconnection against the real broker: nothing confirmed is lost, nothing stalls.

Faults come from rabbitmqctl (the broker closes every connection); the proxy
scenarios live in test_faults.py. Every scenario checks its own invariants:
each confirmed number consumed at least once, every duplicate explained.
"""

from __future__ import annotations

import asyncio

import pytest

import leveret
from leveret.testing import RabbitMQNode

from ._pipeline import FAST, Pipeline, run_pipeline, until

pytestmark = pytest.mark.integration


async def test_pipeline_survives_repeated_forced_closes(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """20,000 numbered persistent messages while the broker kills every connection 3 times."""

    async def fault(state: Pipeline) -> None:
        await until(lambda: len(state.received) > state.total // 20)
        for round_ in range(3):
            await asyncio.to_thread(rabbitmq.close_all_connections, f"fault {round_}")
            # Both connections back before the next fault, so every fault hits live links.
            await until(
                lambda r=round_: (
                    min(state.events["consumer:reconnected"], state.events["publisher:reconnected"])
                    > r
                )
            )

    state = await run_pipeline(rabbitmq_url, queue_name, 20_000, fault, timeout=120)
    print("\n" + state.report("forced closes x3"))
    state.check(faults=3)
    assert state.events["consumer:reconnected"] == 3  # every fault hit mid-stream
    assert state.events["publisher:reconnected"] == 3


async def test_pipeline_survives_close_connection_of_one_side_at_a_time(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """`rabbitmqctl close_connection` on the consumer's connection, then on the publishing
    connection, twice each: the other side never notices, nothing confirmed is lost."""

    def close(connection_name: str, reason: str) -> None:
        # The table output has pids as close_connection takes them (the JSON one does not).
        rows = rabbitmq.ctl(
            "list_connections", "pid", "client_properties", "-q", "--no-table-headers"
        )
        marker = f'{{"connection_name","{connection_name}"}}'
        [pid] = [line.split("\t")[0] for line in rows.splitlines() if marker in line]
        rabbitmq.ctl("close_connection", pid, reason)

    async def fault(state: Pipeline) -> None:
        await until(lambda: len(state.received) > state.total // 20)
        for round_ in range(2):
            await asyncio.to_thread(close, "pipeline-consumer", f"consumer fault {round_}")
            await until(lambda r=round_: state.events["consumer:reconnected"] > r)
        for round_ in range(2):
            await asyncio.to_thread(
                close, "pipeline-publisher (publisher)", f"publisher fault {round_}"
            )
            await until(lambda r=round_: state.events["publisher:publisher reconnected"] > r)

    state = await run_pipeline(rabbitmq_url, queue_name, 20_000, fault, timeout=120)
    print("\n" + state.report("close_connection: consumer x2, publisher x2"))
    state.check(faults=4)
    assert state.events["consumer:reconnected"] == 2
    assert state.events["publisher:publisher reconnected"] == 2
    assert state.events["publisher:reconnected"] == 0  # the main connection only declared
    assert state.events["consumer:publisher reconnected"] == 0  # the consumer never published


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
            await until(lambda: states.count("reconnected") == 1)
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
            await until(lambda: held.stale)
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
            await until(lambda: "reconnected" in states, timeout=60)
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
                await until(lambda: conn.is_blocked)
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
