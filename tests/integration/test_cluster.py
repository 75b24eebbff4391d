"""Failover in a three-node cluster, running the numbered pipeline into a quorum queue.

The queue is replicated on all three nodes, and the clients are given all three
URLs. A node is stopped (`rabbitmqctl stop_app`, which closes its client
connections with CONNECTION_FORCED) or killed (SIGKILL: sockets reset, no close)
while messages flow: the clients on it must move to another node, and the queue,
whose leader is on that node, elects a new one. See _pipeline.py for the promises
each run checks.

Not covered: killing the publisher's node. RabbitMQ 3.10 rejects the first
publish of a fresh channel to a quorum queue whose recorded leader is on a node
that is down (rabbit_fifo_client:enqueue/3: `{badrpc, nodedown} ->
{reject_publish, ...}`), so the publisher's new channel gets basic.nack
(PublishNacked) for about a second, until the election is over.
"""

from __future__ import annotations

import asyncio
import json

import pytest

import leveret
from leveret.testing import FaultProxy, RabbitMQCluster

from ._pipeline import FAST, WINDOW, Pipeline, run_pipeline, until

pytestmark = [pytest.mark.integration, pytest.mark.cluster]

QUORUM = {"x-queue-type": "quorum"}
CONSUMER = "pipeline-consumer"
PUBLISHER = "pipeline-publisher (publisher)"  # the connection the publishes go through


async def declare_quorum_queue(cluster: RabbitMQCluster, queue: str) -> int:
    """Declare the queue through a connection given every node; returns its leader's number."""
    async with leveret.connect(cluster.urls, backoff=FAST) as conn:
        info = await conn.declare_queue(queue, durable=True, arguments=QUORUM)
        assert info.message_count == 0
        node = cluster.index(conn.params.port)
    listed = await asyncio.to_thread(
        cluster.ctl, node, "--quiet", "list_queues", "name", "type", "leader", "--formatter", "json"
    )
    (row,) = (row for row in json.loads(listed) if row["name"] == queue)
    assert row["type"] == "quorum"
    return cluster.node_names.index(row["leader"])


async def nodes_of_pipeline(cluster: RabbitMQCluster) -> dict[str, int]:
    """Where the consumer and the publishing connection are, as the brokers list them."""
    rows = await asyncio.to_thread(cluster.list_connections)
    found: dict[str, list[int]] = {CONSUMER: [], PUBLISHER: []}
    for row in rows:
        name = (row["client_properties"] or {}).get("connection_name")
        if name in found:
            found[name].append(row["node"])
    assert all(len(nodes) == 1 for nodes in found.values()), found
    return {name: nodes[0] for name, nodes in found.items()}


async def fail_node_under_load(
    cluster: RabbitMQCluster,
    state: Pipeline,
    victim: leveret.Connection | None,
    moved: dict[str, int],
    *,
    kill: bool = False,
) -> int:
    """While messages flow both ways, stop (or kill) the node `victim` is connected to;
    wait until the connections that were there have reconnected (`moved`: event -> count),
    check with the brokers that the pipeline's connections are on other nodes now, then
    start the node again. Returns the failed node's number."""
    await until(lambda: len(state.received) > 1_000, timeout=60)
    assert victim is not None
    node = cluster.index(victim.params.port)
    assert len(state.confirmed) < state.total  # publishes are in flight too
    await asyncio.to_thread(cluster.kill_node if kill else cluster.stop_node, node)
    await until(lambda: all(state.events[event] >= n for event, n in moved.items()), timeout=30)
    at = await nodes_of_pipeline(cluster)  # a stopped node lists nothing
    assert node not in at.values(), at
    await asyncio.to_thread(cluster.start_node, node)
    return node


async def test_consumer_node_stops_under_load(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str
) -> None:
    """Publisher and consumer share the node that is stopped, the queue leader's."""
    cluster = rabbitmq_cluster
    leader = await declare_quorum_queue(cluster, queue_name)
    stopped: list[int] = []

    async def fault(state: Pipeline) -> None:
        assert state.publisher is not None
        assert state.consumer is not None
        assert state.publisher.params.port == state.consumer.params.port
        both = {"consumer:reconnected": 1, "publisher:publisher reconnected": 1}
        stopped.append(await fail_node_under_load(cluster, state, state.consumer, both))

    state = await run_pipeline(
        cluster.urls, queue_name, 20_000, fault, timeout=120, queue_arguments=QUORUM
    )
    print("\n" + state.report(f"cluster: stop_app the consumer's node {stopped}, leader {leader}"))
    state.check(faults=1)
    assert stopped == [leader]  # the queue had to elect a new leader too
    assert state.events["consumer:disconnected"] == 1
    assert state.events["publisher:publisher disconnected"] == 1


async def test_publisher_node_stops_under_load(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str
) -> None:
    """The publisher's node is stopped; the consumer, on another node, must not notice."""
    cluster = rabbitmq_cluster
    leader = await declare_quorum_queue(cluster, queue_name)
    urls = cluster.urls
    stopped: list[int] = []

    async def fault(state: Pipeline) -> None:
        assert state.publisher is not None
        assert state.consumer is not None
        assert state.publisher.params.port != state.consumer.params.port
        moved = {"publisher:publisher reconnected": 1, "publisher:reconnected": 1}
        stopped.append(await fail_node_under_load(cluster, state, state.publisher, moved))

    state = await run_pipeline(
        urls,
        queue_name,
        20_000,
        fault,
        timeout=120,
        consumer_url=urls[1:] + urls[:1],  # the consumer starts on the second node
        queue_arguments=QUORUM,
    )
    print("\n" + state.report(f"cluster: stop_app the publisher's node {stopped}, leader {leader}"))
    state.check(faults=1)
    assert stopped == [leader]
    assert state.events["publisher:publisher disconnected"] == 1
    assert state.events["consumer:disconnected"] == 0
    # Only re-sent publishes can arrive twice: the consumer's deliveries were never cut.
    assert state.redelivered_duplicates == 0
    assert state.duplicates <= WINDOW


async def test_consumer_node_crashes_under_load(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str
) -> None:
    """The consumer's node, the queue leader's, dies (SIGKILL: no connection.close, sockets
    reset); the publisher, on another node, keeps its channel while a new leader is elected
    (see the module docstring for the publisher's node dying)."""
    cluster = rabbitmq_cluster
    leader = await declare_quorum_queue(cluster, queue_name)
    urls = cluster.urls
    killed: list[int] = []

    async def fault(state: Pipeline) -> None:
        moved = {"consumer:reconnected": 1}
        killed.append(await fail_node_under_load(cluster, state, state.consumer, moved, kill=True))

    state = await run_pipeline(
        urls[1:] + urls[:1],  # the publisher starts on the second node
        queue_name,
        20_000,
        fault,
        timeout=120,
        consumer_url=urls,
        queue_arguments=QUORUM,
    )
    print("\n" + state.report(f"cluster: SIGKILL the consumer's node {killed}, leader {leader}"))
    state.check(faults=1)
    assert killed == [leader]
    assert state.events["consumer:disconnected"] == 1
    assert state.events["publisher:publisher disconnected"] == 0


async def test_resent_publishes_share_one_channel_on_the_next_node(
    rabbitmq_cluster: RabbitMQCluster, queue_name: str
) -> None:
    """Publishes left unconfirmed by a dead link are re-sent on the next node through the
    one publishing channel (it used to open a channel per re-sent message: 500 here, and
    past channel_max, 2047, recovery failed over and over)."""
    cluster = rabbitmq_cluster
    async with FaultProxy("127.0.0.1", cluster.ports[0]) as proxy:
        urls = [proxy.url_for(cluster.urls[0]), *cluster.urls[1:]]
        states: list[str] = []
        async with leveret.connect(urls, backoff=FAST, name="resender") as conn:
            conn.add_listener(lambda state, _error: states.append(state))
            await conn.declare_queue(queue_name, durable=True, arguments=QUORUM)
            await conn.publish(b"first", routing_key=queue_name)  # opens the publishing link
            proxy.blackhole()
            pending = [
                asyncio.ensure_future(conn.publish(b"%d" % i, routing_key=queue_name))
                for i in range(WINDOW)
            ]
            # Every publish went out (at least 50 bytes each) and was dropped on the way.
            await proxy.wait_until(lambda: proxy.bytes_dropped >= WINDOW * 50)
            assert not any(task.done() for task in pending)
            proxy.cut()
            async with asyncio.timeout(30):
                await asyncio.gather(*pending)
            assert "publisher reconnected" in states
            rows = await asyncio.to_thread(cluster.list_connections, "channels")
            (publishing,) = (
                row
                for row in rows
                if row["client_properties"]["connection_name"] == "resender (publisher)"
            )
            assert publishing["node"] == 1
            assert publishing["channels"] == 1
            info = await conn.declare_queue(queue_name, durable=True, arguments=QUORUM)
            assert info.message_count == WINDOW + 1  # the dropped ones were sent once more
            await conn.delete_queue(queue_name)
