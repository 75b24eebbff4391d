"""Fault scenarios through leveret's TCP fault proxy, each running the numbered pipeline.

The proxy sits between the client and the private broker: it cuts every
connection, blackholes traffic (a dead peer), or refuses new connections (a
broker that is down), while 20,000 messages flow. See _pipeline.py for the
promises each run checks.
"""

from __future__ import annotations

import asyncio

import pytest

import leveret
from leveret.testing import FaultProxy, RabbitMQNode

from ._pipeline import FAST, Pipeline, run_pipeline, until

pytestmark = pytest.mark.integration


async def test_pipeline_survives_cuts_every_second(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    cuts = 10

    async def fault(state: Pipeline) -> None:
        await until(lambda: len(state.received) > 100)
        for _ in range(cuts):
            broker_proxy.cut()
            await asyncio.sleep(1.0)  # the scenario's rhythm, not a timing assertion

    state = await run_pipeline(broker_proxy.url_for(rabbitmq_url), queue_name, 20_000, fault)
    print("\n" + state.report("proxy cuts every second"))
    state.check(faults=cuts)
    # A cut that lands while a connection is still reconnecting finds nothing to cut.
    assert state.events["consumer:disconnected"] >= cuts // 2


async def test_blackhole_is_detected_by_heartbeats_then_recovered(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """A silent peer: HeartbeatTimeout after at most two intervals, then a new connection."""
    errors: list[BaseException | None] = []

    async def fault(state: Pipeline) -> None:
        await until(lambda: len(state.received) > 2_000)
        broker_proxy.blackhole()
        # Every connection notices the silence on its own (heartbeat 1 s): wait for all,
        # the watcher included (cut first, it would see a reset instead).
        await until(
            lambda: (
                state.events["consumer:disconnected"] >= 1
                and state.events["publisher:publisher disconnected"] >= 1
                and len(errors) >= 1
            ),
            timeout=10,
        )
        broker_proxy.cut()  # what a partition leaves behind: dead sockets
        broker_proxy.pass_through()

    async with leveret.connect(
        broker_proxy.url_for(rabbitmq_url), heartbeat=1, backoff=FAST
    ) as watcher:
        watcher.add_listener(lambda state, error: errors.append(error))
        state = await run_pipeline(
            broker_proxy.url_for(rabbitmq_url),
            queue_name,
            20_000,
            fault,
            heartbeat=1,
            connection_timeout=2,  # attempts made during the blackhole give up sooner
        )
        await watcher.wait_connected(timeout=30)
    print("\n" + state.report("blackhole"))
    state.check(faults=1)
    assert state.events["consumer:reconnected"] >= 1
    assert any(isinstance(error, leveret.HeartbeatTimeout) for error in errors)


async def test_publishes_wait_while_the_broker_is_unreachable(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """Down for a while: publishes wait for the reconnect (bounded), then are confirmed."""
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url), backoff=FAST) as conn:
        await conn.declare_queue(queue_name, durable=True)
        await conn.publish(b"before", routing_key=queue_name)
        broker_proxy.refuse()
        broker_proxy.cut()
        await until(lambda: not conn.is_connected)
        waiting = [
            asyncio.ensure_future(conn.publish(b"during %d" % i, routing_key=queue_name))
            for i in range(50)
        ]
        with pytest.raises(leveret.PublishTimeout, match="reconnecting"):
            await conn.publish(b"impatient", routing_key=queue_name, timeout=0.3)
        await until(lambda: broker_proxy.connections_refused >= 2)  # it kept trying
        assert not any(task.done() for task in waiting)
        broker_proxy.accept()
        async with asyncio.timeout(30):
            await asyncio.gather(*waiting)
        info = await conn.declare_queue(queue_name, durable=True)
        assert info.message_count == 51  # before + 50 during; the impatient one never left
        await conn.delete_queue(queue_name)


async def test_stop_app_three_times_under_load(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """The broker application stops and starts three times while the pipeline runs."""

    async def fault(state: Pipeline) -> None:
        for round_ in range(3):
            await until(lambda r=round_: len(state.received) > (r + 1) * 2_000, timeout=60)
            await asyncio.to_thread(rabbitmq.ctl, "stop_app")
            await asyncio.to_thread(rabbitmq.ctl, "start_app")
            await until(
                lambda r=round_: (
                    state.events["consumer:reconnected"] > r
                    and state.events["publisher:reconnected"] > r
                ),
                timeout=60,
            )

    state = await run_pipeline(rabbitmq_url, queue_name, 20_000, fault, timeout=240)
    print("\n" + state.report("stop_app/start_app x3"))
    state.check(faults=3)
    assert state.events["consumer:reconnected"] == 3


async def test_exclusive_queue_recovers_on_the_next_url_despite_resource_locked(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """A silent link: the client moves to the next URL while the broker may still hold
    the old connection's exclusive queue (405 RESOURCE_LOCKED); recovery waits it out."""
    states: list[str] = []
    urls = [broker_proxy.url_for(rabbitmq_url), rabbitmq_url]
    async with leveret.connect(urls, heartbeat=2, backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        await conn.declare_queue(queue_name, exclusive=True)
        async with conn.consume(queue_name) as messages:
            broker_proxy.blackhole()
            await until(lambda: "reconnected" in states, timeout=60)
            assert conn.params.port != broker_proxy.port  # it moved on to the second URL
            await conn.publish(b"after", routing_key=queue_name)
            async with asyncio.timeout(10):
                message = await anext(messages)
            assert message.body == b"after"
            assert message.ack() is True
        broker_proxy.cut()
