"""leveret.blocking's patterns on a real broker: subscribe with worker threads, retries,
listen and bound queues, queue types, stream offsets and bodies beyond bytes.

Every wait on another thread or on the broker is bounded (`WAIT`), so a bug fails
the test instead of hanging it; nothing asserts on how long something took except
lower bounds that a TTL guarantees.
"""

from __future__ import annotations

import _thread
import dataclasses
import itertools
import re
import signal
import threading
import time
from collections import Counter
from collections.abc import Iterator

import pydantic
import pytest

import leveret
import leveret.blocking
from leveret.blocking import Connection, Message

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on any wait for something another thread or the broker does


@pytest.fixture
def conn(rabbitmq_url: str) -> Iterator[Connection]:
    """A blocking connection to the private broker, closed after the test."""
    with leveret.blocking.connect(rabbitmq_url, name="blocking-patterns") as connection:
        yield connection


def take(conn: Connection, queue: str, count: int) -> list[Message]:
    """The next `count` messages to arrive in `queue` (acked)."""
    got: list[Message] = []
    with conn.consume(queue, prefetch=count) as messages:
        for message in messages.iter(timeout=WAIT):
            message.ack()
            got.append(message)
            if len(got) == count:
                break
    assert len(got) == count, f"{len(got)} of {count} arrived in {queue!r} within {WAIT} s"
    return got


def next_message(conn: Connection, queue: str) -> Message:
    return take(conn, queue, 1)[0]


def drain(conn: Connection, queue: str) -> list[Message]:
    """Every message now in `queue` (taken with no_ack)."""
    messages = []
    while (message := conn.get(queue, no_ack=True)) is not None:
        messages.append(message)
    return messages


def dead_lettered_queue(conn: Connection, queue_name: str) -> str:
    dead = f"{queue_name}.dead"
    conn.declare_queue(dead, exclusive=True)
    conn.declare_queue(
        queue_name, exclusive=True, dead_letter_exchange="", dead_letter_routing_key=dead
    )
    return dead


# -- subscribe: worker threads and acks -------------------------------------------------------


def test_subscribe_runs_concurrency_handlers_at_once_in_worker_threads(
    conn: Connection, queue_name: str
) -> None:
    conn.declare_queue(queue_name, exclusive=True)
    conn.publish_many([b"%d" % n for n in range(8)], routing_key=queue_name)
    barrier = threading.Barrier(4, timeout=WAIT)  # passes only when 4 handlers wait at once
    threads: set[str] = set()
    done: list[bytes] = []
    all_done = threading.Event()

    def handler(message: Message) -> None:
        threads.add(threading.current_thread().name)
        barrier.wait()
        done.append(message.body)
        if len(done) == 8:
            all_done.set()

    with conn.subscribe(queue_name, handler, concurrency=4) as subscription:
        assert all_done.wait(WAIT)
    assert subscription.handled == 8
    assert subscription.failed == 0
    assert sorted(done) == sorted(b"%d" % n for n in range(8))
    assert len(threads) == 4
    assert all(name.startswith("leveret-sub-") for name in threads), threads
    # Each was acked before the consumer closed: nothing went back to the queue.
    assert conn.declare_queue(queue_name, passive=True).message_count == 0


def test_a_failing_message_is_requeued_once_then_dead_lettered(
    conn: Connection, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    dead = dead_lettered_queue(conn, queue_name)
    conn.publish(b"bad", routing_key=queue_name)
    conn.publish(b"good", routing_key=queue_name)
    calls: list[tuple[bytes, bool]] = []

    def handler(message: Message) -> None:
        calls.append((message.body, message.redelivered))
        if message.body == b"bad":
            raise ValueError("cannot handle bad")

    with conn.subscribe(queue_name, handler) as subscription:
        parked = next_message(conn, dead)
    assert parked.body == b"bad"
    assert Counter(body for body, _ in calls) == {b"bad": 2, b"good": 1}
    assert (b"bad", True) in calls  # the second try was the redelivery
    assert subscription.failed == 2
    assert "message requeued" in caplog.text
    assert "message rejected" in caplog.text
    assert "ValueError: cannot handle bad" in caplog.text  # with the worker's traceback


def test_reject_policy_and_a_handler_that_settles_itself(conn: Connection, queue_name: str) -> None:
    dead = dead_lettered_queue(conn, queue_name)
    conn.publish(b"fails", routing_key=queue_name)
    conn.publish(b"settles", routing_key=queue_name)
    calls: list[bytes] = []

    def handler(message: Message) -> None:
        calls.append(message.body)
        if message.body == b"settles":
            assert message.reject(requeue=False)  # left alone: no ack on top
            return
        raise RuntimeError("boom")

    with conn.subscribe(queue_name, handler, on_error="reject"):
        got = sorted(message.body for message in take(conn, dead, 2))
    assert got == [b"fails", b"settles"]
    assert sorted(calls) == [b"fails", b"settles"]  # each called once: nothing requeued


def test_leaving_the_block_lets_a_running_handler_finish_and_ack(
    conn: Connection, queue_name: str
) -> None:
    conn.declare_queue(queue_name, exclusive=True)
    conn.publish(b"slow", routing_key=queue_name)
    started = threading.Event()
    finished: list[bytes] = []

    def handler(message: Message) -> None:
        started.set()
        time.sleep(0.2)  # still running when the block is left
        finished.append(message.body)

    with conn.subscribe(queue_name, handler):
        assert started.wait(WAIT)
    assert finished == [b"slow"]
    assert conn.declare_queue(queue_name, passive=True).message_count == 0


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="Ctrl-C is not Python's KeyboardInterrupt here",
)
def test_subscribe_forever_stops_on_ctrl_c_after_the_running_handler(
    conn: Connection, queue_name: str
) -> None:
    conn.declare_queue(queue_name, exclusive=True)
    conn.publish(b"working", routing_key=queue_name)
    finished: list[bytes] = []

    def handler(message: Message) -> None:
        _thread.interrupt_main()  # Ctrl-C while this handler runs
        time.sleep(0.2)
        finished.append(message.body)

    with pytest.raises(KeyboardInterrupt):
        conn.subscribe_forever(queue_name, handler)
    assert finished == [b"working"]
    assert conn.declare_queue(queue_name, passive=True).message_count == 0  # acked
    assert conn.is_connected  # and the connection is still usable


def test_errors_that_end_a_subscription_are_raised_in_the_caller(
    conn: Connection, queue_name: str
) -> None:
    conn.declare_queue(queue_name)
    subscription = conn.subscribe(queue_name, lambda message: None)
    subscription.start()
    subscription.wait(timeout=0.05)  # returns after its timeout; the subscription runs on
    conn.delete_queue(queue_name)
    with pytest.raises(leveret.ConsumerCancelled):
        subscription.wait(timeout=WAIT)
    # Closing afterwards raises the same, so an error nobody waited for is never lost.
    with pytest.raises(leveret.ConsumerCancelled):
        subscription.close()
    subscription.close()  # idempotent

    # subscribe_forever in another thread: the handler deletes its own queue.
    conn.declare_queue(queue_name)
    outcome: list[BaseException] = []

    def run() -> None:
        try:
            conn.subscribe_forever(queue_name, lambda message: conn.delete_queue(queue_name))
        except BaseException as exc:  # noqa: BLE001 - the test looks at it
            outcome.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    conn.publish(b"delete my queue", routing_key=queue_name)
    thread.join(WAIT)
    assert not thread.is_alive()
    assert [type(exc) for exc in outcome] == [leveret.ConsumerCancelled]


def test_wait_returns_after_a_close_from_another_thread(rabbitmq_url: str, queue_name: str) -> None:
    def workers() -> set[str]:
        return {t.name for t in threading.enumerate() if t.name.startswith("leveret-sub-")}

    before = workers()
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name, exclusive=True)
        subscription = conn.subscribe(queue_name, lambda message: None, concurrency=3)
        subscription.start()
        waiter = threading.Thread(target=subscription.wait)
        waiter.start()
        subscription.close()
        waiter.join(WAIT)
        assert not waiter.is_alive()
        assert workers() == before  # the worker threads ended with it

        # A subscription still running when its connection closes loses its workers too.
        conn.subscribe(queue_name, lambda message: None, concurrency=3).start()
        assert len(workers() - before) == 3
    deadline = time.monotonic() + WAIT
    while workers() != before and time.monotonic() < deadline:
        time.sleep(0.01)
    assert workers() == before


# -- delayed retry and the parking lot --------------------------------------------------------


def delete_retry_queues(conn: Connection, retry: leveret.Retry, queue: str) -> None:
    for name in [queue, retry.parking_queue(queue)] + [
        retry.retry_queue(queue, delay) for delay in retry.delays
    ]:
        conn.delete_queue(name)


def test_retry_after_each_delay_then_success(conn: Connection, queue_name: str) -> None:
    retry = leveret.Retry(delays=(0.2, 0.4))
    conn.declare_queue(queue_name, durable=True)
    calls: list[tuple[int, float, object]] = []
    succeeded = threading.Event()

    def flaky(message: Message) -> None:
        calls.append((message.attempt, time.monotonic(), message.json()))
        if len(calls) < 3:
            raise ConnectionError(f"try {len(calls)} failed")
        succeeded.set()

    try:
        with conn.subscribe(queue_name, flaky, retry=retry) as subscription:
            conn.publish({"order": 1}, routing_key=queue_name)
            assert succeeded.wait(WAIT)
        assert [attempt for attempt, _, _ in calls] == [1, 2, 3]
        assert all(body == {"order": 1} for _, _, body in calls)
        gaps = [later - earlier for (_, earlier, _), (_, later, _) in itertools.pairwise(calls)]
        assert gaps[0] >= 0.2  # a TTL never fires early
        assert gaps[1] >= 0.4
        assert (subscription.failed, subscription.handled) == (2, 1)
        assert drain(conn, retry.parking_queue(queue_name)) == []
    finally:
        delete_retry_queues(conn, retry, queue_name)


def test_retry_parks_a_message_after_its_last_attempt(conn: Connection, queue_name: str) -> None:
    retry = leveret.Retry(delays=(0.1, 0.1))
    conn.declare_queue(queue_name, durable=True)
    attempts: list[int] = []

    def always_fails(message: Message) -> None:
        attempts.append(message.attempt)
        raise KeyError("no such customer")

    try:
        with conn.subscribe(queue_name, always_fails, retry=retry, concurrency=2):
            given = leveret.Properties(message_id="order-7")
            conn.publish(b"order 7", routing_key=queue_name, properties=given)
            parked = next_message(conn, retry.parking_queue(queue_name))
        assert attempts == [1, 2, 3]
        assert (parked.body, parked.message_id) == (b"order 7", "order-7")
        assert parked.headers["x-leveret-attempt"] == 3
        assert parked.headers["x-leveret-error"] == "KeyError: 'no such customer'"
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
    finally:
        delete_retry_queues(conn, retry, queue_name)


# -- exchanges made easy ------------------------------------------------------------------------


def test_listen_fanout_gives_every_listener_every_message(
    conn: Connection, queue_name: str
) -> None:
    exchange = f"{queue_name}.logs"
    with conn.listen(exchange) as first, conn.listen(exchange) as second:
        private = first.queue
        assert private.startswith("amq.gen-")
        assert second.queue != private
        for n in range(3):
            conn.publish(f"line {n}", exchange=exchange)
        for messages in (first, second):
            got = list(itertools.islice(messages.iter(timeout=WAIT), 3))
            assert [message.text() for message in got] == ["line 0", "line 1", "line 2"]
            assert all(message.ack() for message in got)
    with pytest.raises(leveret.NotFound):  # the private queue went with the block
        conn.declare_queue(private, passive=True)
    conn.delete_exchange(exchange)


TOPIC_TABLE = {
    # routing key: which of the tutorial's queues get it
    "quick.orange.rabbit": {"Q1", "Q2"},
    "quick.orange.fox": {"Q1"},
    "lazy.brown.fox": {"Q2"},
    "lazy.pink.rabbit": {"Q2"},  # matches both of Q2's bindings, delivered once
    "quick.brown.fox": set(),
    "quick.orange.new.rabbit": set(),
    "lazy": {"Q2"},
}


def test_topic_declare_bound_queue(conn: Connection, queue_name: str) -> None:
    exchange = f"{queue_name}.topic"
    q1 = conn.declare_bound_queue(exchange, "topic", routing_keys=["*.orange.*"])
    q2 = conn.declare_bound_queue(
        exchange, "topic", routing_keys=["*.*.rabbit", "lazy.#"], queue=queue_name
    )
    assert q2.name == queue_name  # named: durable, outliving the connection
    for key in TOPIC_TABLE:
        conn.publish(key, exchange=exchange, routing_key=key)
    for name, info in (("Q1", q1), ("Q2", q2)):
        expected = [key for key, queues in TOPIC_TABLE.items() if name in queues]
        assert [message.text() for message in drain(conn, info.name)] == expected
    conn.delete_queue(queue_name)
    conn.delete_exchange(exchange)


# -- queue types and stream offsets -------------------------------------------------------------


def test_stream_consume_from_first_twice_gives_the_same_messages(
    conn: Connection, queue_name: str
) -> None:
    conn.declare_queue(queue_name, type="stream")

    def read(count: int, offset: int | str) -> list[tuple[bytes, int | None]]:
        got: list[tuple[bytes, int | None]] = []
        with conn.consume(queue_name, prefetch=50, offset=offset) as messages:
            for message in messages.iter(timeout=WAIT):
                got.append((message.body, message.stream_offset))
                message.ack()  # grants the stream consumer credit
                if len(got) == count:
                    break
        return got

    try:
        conn.publish_many([b"old %d" % n for n in range(5)], routing_key=queue_name)
        expected = [(b"old %d" % n, n) for n in range(5)]
        assert read(5, "first") == expected
        assert read(5, "first") == expected
        assert read(2, 3) == expected[3:]

        # subscribe reads a stream too, from its offset.
        seen: list[bytes] = []
        all_seen = threading.Event()

        def handler(message: Message) -> None:
            seen.append(message.body)
            if len(seen) == 5:
                all_seen.set()

        with conn.subscribe(queue_name, handler, offset="first"):
            assert all_seen.wait(WAIT)
        assert seen == [body for body, _ in expected]
    finally:
        conn.delete_queue(queue_name)


def test_quorum_queue_with_a_delivery_limit_stops_a_requeue_loop(
    conn: Connection, queue_name: str
) -> None:
    dead = f"{queue_name}.dead"
    conn.declare_queue(dead, exclusive=True)
    options: dict[str, object] = {
        "type": "quorum",
        "delivery_limit": 1,
        "dead_letter_exchange": "",
        "dead_letter_routing_key": dead,
    }
    conn.declare_queue(queue_name, **options)  # type: ignore[arg-type]
    try:
        # Durable by default: redeclaring it as durable is the same queue (no 406).
        conn.declare_queue(queue_name, durable=True, **options)  # type: ignore[arg-type]
        conn.publish(b"poison", routing_key=queue_name)
        counts: list[object] = []

        def handler(message: Message) -> None:
            counts.append(message.headers.get("x-delivery-count"))
            raise ValueError("poison")

        # "requeue" alone would loop forever; the queue's delivery limit dead-letters it.
        with conn.subscribe(queue_name, handler, on_error="requeue"):
            assert next_message(conn, dead).body == b"poison"
        assert counts == [None, 1]
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
    finally:
        conn.delete_queue(queue_name)


# -- bodies beyond bytes ------------------------------------------------------------------------


class Order(pydantic.BaseModel):
    id: int
    item: str


@dataclasses.dataclass
class Point:
    x: int
    y: int


def test_json_text_and_model_bodies_round_trip(conn: Connection, queue_name: str) -> None:
    conn.declare_queue(queue_name, exclusive=True)
    conn.publish({"order": 7, "items": ["tea", None]}, routing_key=queue_name)
    conn.publish("grüße", routing_key=queue_name)
    conn.publish_many([Point(1, 2), (Order(id=3, item="cake"), {"persistent": True})],
                      routing_key=queue_name)  # fmt: skip
    data, text, point, model = drain(conn, queue_name)
    assert data.properties.content_type == "application/json"
    assert data.json() == data.decode() == {"order": 7, "items": ["tea", None]}
    assert data.message_id is not None  # stamped by default
    assert data.attempt == 1
    assert data.stream_offset is None
    assert (text.properties.content_type, text.text(), text.decode()) == (
        "text/plain",
        "grüße",
        "grüße",
    )
    assert point.json() == {"x": 1, "y": 2}
    assert model.model(Order) == Order(id=3, item="cake")
    assert model.properties.delivery_mode == 2
    with pytest.raises(leveret.PayloadError, match="body is not valid JSON"):
        text.json()

    # call() sends the same kinds of bodies; the reply decodes the same way.
    with conn.serve(queue_name, lambda request: request.body):
        reply = conn.call(queue_name, {"n": 1}, timeout=WAIT)
    assert reply.json() == {"n": 1}


# -- bad input ----------------------------------------------------------------------------------


async def async_handler(message: leveret.Message) -> None:
    pass


@pytest.mark.parametrize(
    ("options", "error", "message"),
    [
        ({"handler": async_handler}, TypeError, "handler async_handler is an async function"),
        ({"handler": "not callable"}, TypeError, "handler must be a function"),
        ({"concurrency": 0}, ValueError, "concurrency must be a positive int, got 0"),
        ({"on_error": "ignore"}, ValueError, "on_error must be one of requeue_once, reject"),
        ({"retry": (1, 2)}, TypeError, "retry must be a leveret.Retry, got tuple"),
        ({"offset": "begin"}, ValueError, "offset must be 'first', 'last', 'next'"),
    ],
)
def test_bad_subscribe_options_are_refused_before_anything_starts(
    conn: Connection, options: dict[str, object], error: type, message: str
) -> None:
    arguments: dict[str, object] = {"handler": lambda message: None, **options}
    before = {thread.name for thread in threading.enumerate()}
    with pytest.raises(error, match=re.escape(message)):
        conn.subscribe("q", **arguments)  # type: ignore[arg-type]
    assert {thread.name for thread in threading.enumerate()} <= before  # no workers started


def test_other_bad_input_is_refused(conn: Connection, queue_name: str) -> None:
    with pytest.raises(ValueError, match=re.escape("delivery_limit=3 needs type='quorum'")):
        conn.declare_queue(queue_name, delivery_limit=3)
    with pytest.raises(ValueError, match="a stream queue cannot be durable"):
        conn.declare_queue(queue_name, type="stream", durable=False)
    with pytest.raises(leveret.NotFound):  # nothing was declared by those
        conn.declare_queue(queue_name, passive=True)
    with pytest.raises(TypeError, match=re.escape("routing_keys=['a.b']")):
        conn.declare_bound_queue(f"{queue_name}.x", "topic", routing_keys="a.b")
    with (
        pytest.raises(ValueError, match="fanout exchange ignores"),
        conn.listen(f"{queue_name}.x", routing_keys=["a"]),
    ):
        pass
    with pytest.raises(TypeError, match="body must be bytes"):
        conn.publish(object(), routing_key=queue_name)
    private = conn.declare_queue("", exclusive=True).name
    subscription = conn.subscribe(private, lambda message: None, retry=leveret.Retry())
    with pytest.raises(ValueError, match="retry needs a named queue"):
        subscription.start()
    assert conn.is_connected
