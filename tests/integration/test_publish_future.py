"""`publish()` sends when called and returns the confirm's future: no task per publish."""

from __future__ import annotations

import asyncio

import pytest

import leveret
from leveret.aio._publish_future import PublishFuture
from leveret.testing import FaultProxy

from ._pipeline import until

pytestmark = pytest.mark.integration


def _in_flight(conn: leveret.Connection) -> int:
    """Publishes on the books of the connection that sends them (a separate one by default)."""
    return (conn._publisher or conn)._in_flight


async def _bodies(conn: leveret.Connection, queue: str) -> list[bytes]:
    bodies = []
    while (message := await conn.get(queue, no_ack=True)) is not None:
        bodies.append(message.body)
    return bodies


async def test_publish_returns_a_future_that_tasks_and_gather_take(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)
    future = conn.publish(b"future", routing_key=queue_name)
    assert isinstance(future, PublishFuture)
    assert asyncio.ensure_future(future) is future
    assert await future is None
    await asyncio.create_task(conn.publish(b"task", routing_key=queue_name))
    async with asyncio.TaskGroup() as group:
        group.create_task(conn.publish(b"group", routing_key=queue_name))
    await asyncio.gather(*(conn.publish(b"gather", routing_key=queue_name) for _ in range(3)))
    assert await _bodies(conn, queue_name) == [b"future", b"task", b"group"] + [b"gather"] * 3
    await conn.delete_queue(queue_name)


async def test_bad_input_fails_where_it_is_awaited_and_sends_nothing(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)
    bad_body = conn.publish(object(), routing_key=queue_name)
    bad_timeout = conn.publish(b"x", routing_key=queue_name, timeout=0)
    too_long = conn.publish(b"x", routing_key="k" * 300)
    with pytest.raises(TypeError, match="object"):
        await bad_body
    with pytest.raises(ValueError, match="timeout must be positive seconds, got 0"):
        await bad_timeout
    with pytest.raises(ValueError, match="routing key"):
        await too_long
    await conn.publish(b"good", routing_key=queue_name)
    assert await _bodies(conn, queue_name) == [b"good"]
    await conn.delete_queue(queue_name)


async def test_publishes_started_together_arrive_in_order_through_a_small_window(
    rabbitmq_url: str, queue_name: str
) -> None:
    """With max_in_flight=3 most publishes wait on the slow path; none overtakes another."""
    async with leveret.connect(rabbitmq_url, max_in_flight=3) as conn:
        await conn.declare_queue(queue_name)
        futures = [conn.publish(b"%d" % i, routing_key=queue_name) for i in range(300)]
        assert len(conn._send_queue) > 0  # the slow path really was taken
        await asyncio.gather(*futures)
        assert await _bodies(conn, queue_name) == [b"%d" % i for i in range(300)]
        assert len(conn._send_queue) == 0
        assert _in_flight(conn) == 0
        await until(lambda: conn._send_queue._task is None)
        await conn.delete_queue(queue_name)


async def test_cancelling_a_waiting_publish_sends_nothing_and_frees_its_task(
    rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url, max_in_flight=1) as conn:
        await conn.declare_queue(queue_name)
        sent = conn.publish(b"sent", routing_key=queue_name)
        waiting = conn.publish(b"waiting", routing_key=queue_name)  # the window is full
        await asyncio.sleep(0)  # its task starts waiting for the window
        waiting.cancel()
        await sent
        await until(lambda: conn._send_queue._task is None)
        assert len(conn._send_queue) == 0
        await conn.publish(b"after", routing_key=queue_name)
        assert _in_flight(conn) == 0
        assert await _bodies(conn, queue_name) == [b"sent", b"after"]
        await conn.delete_queue(queue_name)


async def test_a_publish_on_a_closed_connection_fails_where_awaited(rabbitmq_url: str) -> None:
    conn = await leveret.connect(rabbitmq_url)
    await conn.close()
    future = conn.publish(b"late", routing_key="anywhere")
    with pytest.raises(leveret.ConnectionClosedByClient):
        await future


async def test_the_window_frees_the_slots_of_failed_and_abandoned_publishes(
    rabbitmq_url: str, queue_name: str
) -> None:
    """Slots are counted per message on the books: none may leak, or publishing would stall."""
    async with leveret.connect(rabbitmq_url, max_in_flight=4) as conn:
        await conn.declare_queue(queue_name)
        missing = conn.publish(b"x", exchange=f"{queue_name}.missing")
        with pytest.raises(leveret.NotFound):
            await missing
        await conn.publish(b"first", routing_key=queue_name)  # opens the publish channel
        abandoned = [conn.publish(b"abandoned", routing_key=queue_name) for _ in range(4)]
        for future in abandoned:
            future.cancel()  # the callers stop waiting; the messages were sent
        await asyncio.gather(*(conn.publish(b"%d" % i, routing_key=queue_name) for i in range(40)))
        assert _in_flight(conn) == 0
        assert await _bodies(conn, queue_name) == [b"first"] + [b"abandoned"] * 4 + [
            b"%d" % i for i in range(40)
        ]
        await conn.delete_queue(queue_name)


async def test_an_abandoned_unconfirmed_publish_frees_its_slot_at_recovery(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """Sent, unconfirmed, given up by its caller, then the link drops: not re-sent, slot freed."""
    backoff = leveret.Backoff(initial=0.05, maximum=0.2)
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url), backoff=backoff) as conn:
        await conn.declare_queue(queue_name, durable=True)
        await conn.publish(b"first", routing_key=queue_name)
        broker_proxy.blackhole()
        abandoned = conn.publish(b"abandoned", routing_key=queue_name)
        assert _in_flight(conn) == 1  # sent (into the black hole), not confirmed
        abandoned.cancel()
        assert _in_flight(conn) == 1  # still on the books until the link says otherwise
        broker_proxy.cut()
        broker_proxy.pass_through()
        await conn.publish(b"last", routing_key=queue_name)  # confirmed after recovery
        assert _in_flight(conn) == 0
        assert await _bodies(conn, queue_name) == [b"first", b"last"]
        await conn.delete_queue(queue_name)


async def test_a_sent_publish_without_a_confirm_times_out_at_its_deadline(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """Sent into a black hole: the deadline sweep fails it, the longer one waits on."""
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url), heartbeat=60) as conn:
        await conn.declare_queue(queue_name)
        await conn.publish(b"first", routing_key=queue_name)
        broker_proxy.blackhole()
        patient = conn.publish(b"patient", routing_key=queue_name, timeout=30)
        hasty = conn.publish(b"hasty", routing_key=queue_name, timeout=0.2)  # out of order
        in_order = conn.publish(b"in order", routing_key=queue_name, timeout=40)
        with pytest.raises(leveret.PublishTimeout, match=r"no confirm .* before its deadline"):
            await hasty
        assert not patient.done()
        assert not in_order.done()
        broker_proxy.pass_through()
        broker_proxy.cut()
        await asyncio.gather(patient, in_order)  # re-sent after the reconnect
        await conn.delete_queue(queue_name)


async def test_a_waiting_publish_with_a_shorter_timeout_expires_at_its_own_deadline(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    """Queued behind one with a longer timeout, it still fails at its own deadline, unsent."""
    async with leveret.connect(
        broker_proxy.url_for(rabbitmq_url), heartbeat=60, max_in_flight=1
    ) as conn:
        await conn.declare_queue(queue_name)
        await conn.publish(b"first", routing_key=queue_name)
        broker_proxy.blackhole()
        unconfirmed = conn.publish(b"unconfirmed", routing_key=queue_name, timeout=30)
        patient = conn.publish(b"patient", routing_key=queue_name, timeout=30)  # waits
        hasty = conn.publish(b"hasty", routing_key=queue_name, timeout=0.2)  # waits behind
        with pytest.raises(leveret.PublishTimeout, match=r"not sent within 0\.2s"):
            await hasty
        assert not patient.done()
        assert [r.body for r in conn._send_queue.records() if not r.done()] == [b"patient"]
        broker_proxy.pass_through()
        broker_proxy.cut()
        await asyncio.gather(unconfirmed, patient)
        assert await _bodies(conn, queue_name) == [b"first", b"unconfirmed", b"patient"]
        await conn.delete_queue(queue_name)


async def test_a_confirmed_future_no_longer_holds_its_message_body(
    conn: leveret.Connection, queue_name: str
) -> None:
    # The future is also the publish's record (what a reconnect sends again): once the
    # broker has answered, a caller keeping its futures must not keep every body too.
    await conn.declare_queue(queue_name)
    body = b"b" * 100_000
    futures = [conn.publish(body, routing_key=queue_name) for _ in range(3)]
    assert [getattr(future, "body", None) for future in futures] == [body] * 3
    await asyncio.gather(*futures)
    assert [getattr(future, "body", None) for future in futures] == [b""] * 3
    assert await _bodies(conn, queue_name) == [body] * 3
