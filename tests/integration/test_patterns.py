"""Patterns on a real broker: handler-style consumers, retry schedules, exchange helpers."""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections import Counter
from typing import Any

import pytest

import leveret

pytestmark = pytest.mark.integration

BOUND = 15  # seconds any wait below may take before the test fails instead of hanging


async def drain(conn: leveret.Connection, queue: str) -> list[leveret.Message]:
    """Every message now in `queue` (acked away)."""
    messages = []
    while (message := await conn.get(queue, no_ack=True)) is not None:
        messages.append(message)
    return messages


async def next_message(conn: leveret.Connection, queue: str) -> leveret.Message:
    async with asyncio.timeout(BOUND), conn.consume(queue, no_ack=True) as messages:
        return await anext(messages)


# -- subscribe: concurrency and acks ------------------------------------------------------------


async def test_subscribe_runs_up_to_concurrency_handlers_and_acks_each(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    for n in range(40):
        await conn.publish(b"%d" % n, routing_key=queue_name)
    running = 0
    most = 0
    full = asyncio.Event()
    done: list[bytes] = []
    all_done = asyncio.Event()

    async def handler(message: leveret.Message) -> None:
        nonlocal running, most
        running += 1
        most = max(most, running)
        if running == 8:
            full.set()
        await full.wait()  # the first 8 wait until all 8 run at once
        await asyncio.sleep(0)
        running -= 1
        done.append(message.body)
        if len(done) == 40:
            all_done.set()

    async with conn.subscribe(queue_name, handler, concurrency=8) as subscription:
        await asyncio.wait_for(all_done.wait(), BOUND)
    assert subscription.handled == 40
    assert most == 8
    assert sorted(done) == sorted(b"%d" % n for n in range(40))
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


async def test_handlers_that_never_await_run_in_order_as_tasks_without_recursing(
    conn: leveret.Connection, queue_name: str
) -> None:
    # A handler's first step runs as soon as its message arrives; one that never awaits
    # is done in that step, and the next buffered message starts after it, not inside it:
    # thousands of them in one read must not nest (RecursionError) nor reorder.
    count = 3000
    await conn.declare_queue(queue_name, exclusive=True)
    await asyncio.gather(*(conn.publish(b"%d" % n, routing_key=queue_name) for n in range(count)))
    seen: list[bytes] = []
    tasks: set[asyncio.Task[Any] | None] = set()
    all_done = asyncio.Event()

    async def handler(message: leveret.Message) -> None:
        seen.append(message.body)
        tasks.add(asyncio.current_task())
        if len(seen) == count:
            all_done.set()

    async with conn.subscribe(queue_name, handler, concurrency=1, prefetch=count) as subscription:
        await asyncio.wait_for(all_done.wait(), BOUND)
    assert seen == [b"%d" % n for n in range(count)]
    assert None not in tasks
    assert len(tasks) == count
    assert subscription.handled == count
    assert subscription.failed == 0
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


async def test_leaving_the_block_lets_running_handlers_finish_and_ack(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"slow", routing_key=queue_name)
    started = asyncio.Event()
    finished: list[bytes] = []

    async def handler(message: leveret.Message) -> None:
        started.set()
        await asyncio.sleep(0.2)
        finished.append(message.body)

    async with conn.subscribe(queue_name, handler):
        await asyncio.wait_for(started.wait(), BOUND)
    assert finished == [b"slow"]
    # Acked before the consumer closed: nothing comes back.
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


async def dead_lettered_queue(conn: leveret.Connection, queue_name: str) -> str:
    dead = f"{queue_name}.dead"
    await conn.declare_queue(dead, exclusive=True)
    await conn.declare_queue(
        queue_name, exclusive=True, dead_letter_exchange="", dead_letter_routing_key=dead
    )
    return dead


async def test_a_failing_message_is_requeued_once_then_dead_lettered(
    conn: leveret.Connection, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = await dead_lettered_queue(conn, queue_name)
    await conn.publish(b"bad", routing_key=queue_name)
    await conn.publish(b"good", routing_key=queue_name)
    calls: list[tuple[bytes, bool]] = []

    async def handler(message: leveret.Message) -> None:
        calls.append((message.body, message.redelivered))
        if message.body == b"bad":
            raise ValueError("cannot handle bad")

    async with conn.subscribe(queue_name, handler) as subscription:
        parked = await next_message(conn, dead)
    assert parked.body == b"bad"
    assert Counter(body for body, _ in calls) == {b"bad": 2, b"good": 1}
    assert (b"bad", True) in calls  # the second try was the redelivery
    assert subscription.failed == 2
    assert "message requeued" in caplog.text
    assert "message rejected" in caplog.text


@pytest.mark.parametrize(("policy", "calls_expected"), [("reject", 1), ("requeue", 3)])
async def test_other_error_policies(
    conn: leveret.Connection, queue_name: str, policy: str, calls_expected: int
) -> None:
    dead = await dead_lettered_queue(conn, queue_name)
    await conn.publish(b"bad", routing_key=queue_name)
    calls = 0

    async def handler(message: leveret.Message) -> None:
        nonlocal calls
        calls += 1
        if calls == 3:  # "requeue" would loop forever: settle it by hand the third time
            message.reject(requeue=False)
        raise RuntimeError("boom")

    async with conn.subscribe(queue_name, handler, on_error=policy):  # type: ignore[arg-type]
        assert (await next_message(conn, dead)).body == b"bad"
    assert calls == calls_expected


async def test_a_handler_that_settles_the_message_itself_is_left_alone(
    conn: leveret.Connection, queue_name: str
) -> None:
    dead = await dead_lettered_queue(conn, queue_name)
    await conn.publish(b"refuse me", routing_key=queue_name)

    async def handler(message: leveret.Message) -> None:
        assert message.reject(requeue=False)

    async with conn.subscribe(queue_name, handler) as subscription:
        assert (await next_message(conn, dead)).body == b"refuse me"
    assert subscription.handled == 1


async def test_subscribe_raises_when_its_queue_is_deleted(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)

    async def handler(message: leveret.Message) -> None:
        pass

    subscription = conn.subscribe(queue_name, handler)
    await subscription.start()
    await conn.delete_queue(queue_name)
    with pytest.raises(leveret.ConsumerCancelled):
        await asyncio.wait_for(subscription.wait_closed(), BOUND)
    # Leaving the block afterwards raises the same, so the failure is never lost.
    with pytest.raises(leveret.ConsumerCancelled):
        await subscription.__aexit__(None, None, None)


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"handler": lambda m: None}, TypeError, "handler must be an async function"),
        ({"concurrency": 0}, ValueError, "concurrency must be a positive int, got 0"),
        ({"on_error": "ignore"}, ValueError, "on_error must be one of requeue_once, reject"),
        ({"retry": (1, 2)}, TypeError, "retry must be a leveret.Retry, got tuple"),
    ],
)
def test_bad_subscribe_options_are_refused(
    conn: leveret.Connection, options: dict[str, object], error: type, message: str
) -> None:
    async def handler(message: leveret.Message) -> None:
        pass

    arguments: dict[str, object] = {"handler": handler, **options}
    with pytest.raises(error, match=re.escape(message)):
        conn.subscribe("q", **arguments)  # type: ignore[arg-type]


# -- delayed retry and the parking lot ----------------------------------------------------------


async def cleanup(conn: leveret.Connection, retry: leveret.Retry, queue: str) -> None:
    for name in [queue, retry.parking_queue(queue)] + [
        retry.retry_queue(queue, d) for d in retry.delays
    ]:
        await conn.delete_queue(name)


async def test_retry_calls_again_after_each_delay_with_the_attempt_number(
    conn: leveret.Connection, queue_name: str
) -> None:
    retry = leveret.Retry(delays=(0.3, 0.6))
    await conn.declare_queue(queue_name, durable=True)
    calls: list[tuple[int, float]] = []
    succeeded = asyncio.Event()

    async def flaky(message: leveret.Message) -> None:
        calls.append((message.attempt, time.monotonic()))
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)} failed")
        succeeded.set()

    try:
        async with conn.subscribe(queue_name, flaky, retry=retry):
            await conn.publish({"order": 1}, routing_key=queue_name)
            await asyncio.wait_for(succeeded.wait(), BOUND)
        assert [attempt for attempt, _ in calls] == [1, 2, 3]
        gaps = [later - earlier for (_, earlier), (_, later) in itertools.pairwise(calls)]
        # A TTL never fires early; the upper bound only guards against a stall.
        assert 0.3 <= gaps[0] < 0.3 + 5
        assert 0.6 <= gaps[1] < 0.6 + 5
        assert await drain(conn, retry.parking_queue(queue_name)) == []
    finally:
        await cleanup(conn, retry, queue_name)


async def test_retry_parks_a_message_after_its_last_attempt(
    conn: leveret.Connection, queue_name: str
) -> None:
    retry = leveret.Retry(delays=(0.1, 0.1, 0.2))
    await conn.declare_queue(queue_name, durable=True)
    attempts: list[int] = []

    async def always_fails(message: leveret.Message) -> None:
        attempts.append(message.attempt)
        raise KeyError("no such customer")

    try:
        async with conn.subscribe(queue_name, always_fails, retry=retry):
            given = leveret.Properties(message_id="order-7", headers={"tenant": "acme"})
            await conn.publish(b"order 7", routing_key=queue_name, properties=given)
            parked = await next_message(conn, retry.parking_queue(queue_name))
        assert attempts == [1, 2, 3, 4]
        assert parked.body == b"order 7"
        assert parked.properties.message_id == "order-7"
        assert parked.headers["tenant"] == "acme"
        assert parked.headers["x-leveret-attempt"] == 4
        assert parked.headers["x-leveret-error"] == "KeyError: 'no such customer'"
        assert parked.properties.delivery_mode == 2
        # Nothing left anywhere else, nothing looping.
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0
        for delay in retry.delays:
            name = retry.retry_queue(queue_name, delay)
            assert (await conn.declare_queue(name, passive=True)).message_count == 0
    finally:
        await cleanup(conn, retry, queue_name)


def test_bad_retry_schedules_are_refused() -> None:
    with pytest.raises(ValueError, match="at least one delay"):
        leveret.Retry(delays=())
    with pytest.raises(ValueError, match="positive seconds, got -1"):
        leveret.Retry(delays=(1, -1))
    with pytest.raises(ValueError, match=r"at least 1 ms, got 0\.0001"):
        leveret.Retry(delays=(0.0001,))


async def test_retry_needs_a_named_queue(conn: leveret.Connection) -> None:
    info = await conn.declare_queue("", exclusive=True)

    async def handler(message: leveret.Message) -> None:
        pass

    with pytest.raises(ValueError, match="retry needs a named queue"):
        async with conn.subscribe(info.name, handler, retry=leveret.Retry()):
            pass


# -- exchanges made easy ------------------------------------------------------------------------

TOPIC_TABLE = {
    # routing key: which of the tutorial's queues get it
    "quick.orange.rabbit": {"Q1", "Q2"},
    "lazy.orange.elephant": {"Q1", "Q2"},
    "quick.orange.fox": {"Q1"},
    "lazy.brown.fox": {"Q2"},
    "lazy.pink.rabbit": {"Q2"},  # matches both of Q2's bindings, delivered once
    "quick.brown.fox": set(),
    "orange": set(),
    "quick.orange.new.rabbit": set(),
    "lazy.orange.new.rabbit": {"Q2"},
    "lazy": {"Q2"},
}


async def test_topics_deliver_exactly_where_the_tutorial_says(
    conn: leveret.Connection, queue_name: str
) -> None:
    exchange = f"{queue_name}.topic"
    q1 = await conn.declare_bound_queue(exchange, "topic", routing_keys=["*.orange.*"])
    q2 = await conn.declare_bound_queue(exchange, "topic", routing_keys=["*.*.rabbit", "lazy.#"])
    for key in TOPIC_TABLE:
        await conn.publish(key, exchange=exchange, routing_key=key)
    got = {
        "Q1": [m.text() for m in await drain(conn, q1.name)],
        "Q2": [m.text() for m in await drain(conn, q2.name)],
    }
    for queue in ("Q1", "Q2"):
        expected = [key for key, queues in TOPIC_TABLE.items() if queue in queues]
        assert got[queue] == expected
    await conn.delete_exchange(exchange)


async def test_listen_fanout_gives_every_listener_every_message(
    conn: leveret.Connection, queue_name: str
) -> None:
    exchange = f"{queue_name}.logs"
    async with conn.listen(exchange) as first, conn.listen(exchange) as second:
        private = first.queue
        assert private.startswith("amq.gen-")
        for n in range(3):
            await conn.publish(f"line {n}", exchange=exchange)
        async with asyncio.timeout(BOUND):
            for messages in (first, second):
                assert [(await anext(messages)).text() for _ in range(3)] == [
                    "line 0",
                    "line 1",
                    "line 2",
                ]
    with pytest.raises(leveret.NotFound):  # the private queue went with the block
        await conn.declare_queue(private, passive=True)
    await conn.delete_exchange(exchange)


async def test_direct_routing_by_severity_with_a_named_durable_queue(
    conn: leveret.Connection, queue_name: str
) -> None:
    exchange = f"{queue_name}.direct"
    info = await conn.declare_bound_queue(
        exchange, "direct", routing_keys=["error", "warning"], queue=queue_name
    )
    assert info.name == queue_name
    for severity in ("info", "warning", "error", "debug"):
        await conn.publish(severity, exchange=exchange, routing_key=severity)
    assert [m.text() for m in await drain(conn, queue_name)] == ["warning", "error"]
    await conn.delete_queue(queue_name)
    await conn.delete_exchange(exchange)


async def test_headers_exchange_all_and_any(conn: leveret.Connection, queue_name: str) -> None:
    exchange = f"{queue_name}.headers"
    both = await conn.declare_bound_queue(
        exchange, "headers", match={"format": "pdf", "type": "report"}
    )
    either = await conn.declare_bound_queue(
        exchange, "headers", match={"format": "pdf", "type": "report"}, match_all=False
    )
    for name, headers in [
        ("pdf report", {"format": "pdf", "type": "report"}),
        ("pdf log", {"format": "pdf", "type": "log"}),
        ("zip", {"format": "zip"}),
    ]:
        props = leveret.Properties(headers=headers)
        await conn.publish(name, exchange=exchange, properties=props)
    assert [m.text() for m in await drain(conn, both.name)] == ["pdf report"]
    assert [m.text() for m in await drain(conn, either.name)] == ["pdf report", "pdf log"]
    await conn.delete_exchange(exchange)


async def test_exchange_to_exchange_binding(conn: leveret.Connection, queue_name: str) -> None:
    source, destination = f"{queue_name}.all", f"{queue_name}.eu"
    await conn.declare_exchange(source, "topic")
    info = await conn.declare_bound_queue(destination, "fanout")
    await conn.bind_exchange(destination, source, "eu.#")
    await conn.publish("to eu", exchange=source, routing_key="eu.orders")
    await conn.publish("to us", exchange=source, routing_key="us.orders")
    assert [m.text() for m in await drain(conn, info.name)] == ["to eu"]
    await conn.unbind_exchange(destination, source, "eu.#")
    await conn.publish("after unbind", exchange=source, routing_key="eu.orders")
    assert await drain(conn, info.name) == []
    await conn.delete_exchange(source)
    await conn.delete_exchange(destination)


@pytest.mark.parametrize(
    ("args", "options", "error", "message"),
    [
        (("x", "topic"), {"routing_keys": "a.b"}, TypeError, "routing_keys=['a.b']"),
        (("x", "fanout"), {"routing_keys": ["a"]}, ValueError, "fanout exchange ignores"),
        (("x", "headers"), {}, ValueError, "needs match="),
        (("x", "topic"), {"match": {"a": 1}}, ValueError, "match= is for headers exchanges"),
    ],
)
async def test_bad_bound_queue_options_are_refused(
    conn: leveret.Connection,
    args: tuple[str, str],
    options: dict[str, object],
    error: type,
    message: str,
) -> None:
    with pytest.raises(error, match=re.escape(message)):
        await conn.declare_bound_queue(*args, **options)  # type: ignore[arg-type]
