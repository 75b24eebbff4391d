"""leveret.blocking against the real broker: the asyncio API without await, from any thread.

Every test is a plain (sync) function, as the code using this API is. Waits that
depend on another thread are bounded (`iter(timeout=...)`, `join(timeout)`), so a
bug fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import sys
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import pytest

import leveret
import leveret.blocking
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on any wait for something another thread or the broker does


def io_threads() -> list[str]:
    return [t.name for t in threading.enumerate() if t.name.startswith("leveret-")]


def test_publish_get_consume_and_ack(rabbitmq_url: str, queue_name: str) -> None:
    with leveret.blocking.connect(rabbitmq_url, name="blocking-basics") as conn:
        assert conn.is_connected
        assert conn.declare_queue(queue_name).name == queue_name
        props = leveret.Properties(message_id="m-1", headers={"n": 1})
        conn.publish(b"one", routing_key=queue_name, properties=props, persistent=True)
        conn.publish(b"two", routing_key=queue_name)
        conn.publish(b"three", routing_key=queue_name)

        got = conn.get(queue_name)
        assert got is not None
        assert (got.body, got.properties.message_id, got.headers) == (b"one", "m-1", {"n": 1})
        assert got.properties.delivery_mode == 2
        assert got.message_count == 2
        assert got.ack() is True
        assert got.ack() is False  # already settled: nothing sent twice

        with conn.consume(queue_name, prefetch=10) as messages:
            first = messages.receive(timeout=WAIT)
            assert first is not None
            assert first.text() == "two"
            assert first.nack(requeue=True) is True
            bodies = [msg.body for msg in messages.iter(timeout=0.5) if msg.ack()]
        assert sorted(bodies) == [b"three", b"two"]  # "two" came back after its nack
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
        assert conn.get(queue_name) is None
        assert conn.delete_queue(queue_name) == 0


def test_broker_errors_are_the_asyncio_exceptions(rabbitmq_url: str, queue_name: str) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        with pytest.raises(leveret.NotFound):
            conn.declare_queue(queue_name, passive=True)
        with pytest.raises(leveret.NotFound):
            conn.publish(b"x", exchange=f"{queue_name}.missing")
        with pytest.raises(leveret.MessageReturned) as returned:
            conn.publish(b"lost", routing_key=f"{queue_name}.nobody", mandatory=True)
        assert returned.value.body == b"lost"
        conn.declare_queue(
            queue_name, arguments={"x-max-length": 1, "x-overflow": "reject-publish"}
        )
        conn.publish(b"fits", routing_key=queue_name)
        with pytest.raises(leveret.PublishNacked):
            conn.publish(b"overflows", routing_key=queue_name)
        with pytest.raises(TypeError, match="body must be bytes"):
            conn.publish(None, routing_key=queue_name)
        # None of that broke the connection.
        assert conn.is_connected
        assert conn.declare_queue(queue_name, passive=True).message_count == 1
        conn.delete_queue(queue_name)


def test_publish_many_10000_confirmed_and_faster_than_single_publishes(
    rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        singles = 2_000
        started = time.perf_counter()
        for number in range(singles):
            conn.publish(b"single %d" % number, routing_key=queue_name)
        single_rate = singles / (time.perf_counter() - started)

        batch = 10_000
        started = time.perf_counter()
        confirmed = conn.publish_many(
            (b"batched %d" % number for number in range(batch)), routing_key=queue_name
        )
        batch_rate = batch / (time.perf_counter() - started)
        assert confirmed == batch
        assert conn.declare_queue(queue_name, passive=True).message_count == singles + batch
        print(
            f"\npublish_many: {batch:,} messages at {batch_rate:,.0f} msg/s; "
            f"single publishes: {single_rate:,.0f} msg/s ({batch_rate / single_rate:.1f}x)"
        )
        conn.delete_queue(queue_name)


def test_publish_many_raises_the_first_failure_after_every_outcome(
    rabbitmq_url: str, queue_name: str
) -> None:
    missing = f"{queue_name}.missing"
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        batch: list[bytes | tuple[bytes, dict[str, object]]] = [
            *(b"%d" % n for n in range(1500)),
            (b"to a missing exchange", {"exchange": missing}),
            (b"persistent", {"persistent": True, "properties": leveret.Properties(priority=3)}),
            *(b"%d" % n for n in range(1500, 3000)),
        ]
        with pytest.raises(leveret.NotFound) as failure:
            conn.publish_many(batch, routing_key=queue_name)
        assert failure.value.__notes__ == [
            "publish_many: 3,001 of 3,002 messages confirmed, 1 failed; "
            "this is the first failure, message #1500"
        ]
        # Every other message was confirmed, so it is in the queue, options applied.
        assert conn.declare_queue(queue_name, passive=True).message_count == 3001
        conn.purge_queue(queue_name)

        with pytest.raises(TypeError, match=r"message #2 must be a body .* got set") as bad:
            conn.publish_many([b"a", b"b", {"not", "json"}], routing_key=queue_name)
        assert bad.value.__notes__ == [
            "publish_many: the 2 messages before it were sent; 2 confirmed"
        ]
        with pytest.raises(TypeError, match="unknown options"):
            conn.publish_many([(b"a", {"routing_kye": "typo"})])
        assert conn.publish_many([]) == 0
        assert conn.declare_queue(queue_name, passive=True).message_count == 2
        conn.delete_queue(queue_name)


@pytest.mark.parametrize("batch", [False, True], ids=["default", "batch_scheduling"])
def test_sixteen_threads_publish_on_one_connection(
    rabbitmq_url: str, queue_name: str, batch: bool
) -> None:
    threads, each = 16, 1000
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        switched: list[bool] = []

        def publisher(thread: int) -> int:
            with (
                leveret.blocking.batch_scheduling() if batch else contextlib.nullcontext(False) as s
            ):
                switched.append(s)
                for number in range(each):
                    conn.publish(b"%d.%d" % (thread, number), routing_key=queue_name)
            return each

        started = time.perf_counter()
        with ThreadPoolExecutor(max_workers=threads) as pool:
            confirmed = sum(pool.map(publisher, range(threads)))
        elapsed = time.perf_counter() - started
        assert confirmed == threads * each
        # Pool threads are reused, so each block found the default policy again.
        assert switched == [batch and sys.platform.startswith("linux")] * threads
        print(f"\n16 threads x 1,000 publishes: {confirmed / elapsed:,.0f} msg/s")

        counts: Counter[bytes] = Counter()
        with conn.consume(queue_name, prefetch=500) as messages:
            for message in messages.iter(timeout=WAIT):
                assert message.ack() is True
                counts[message.body] += 1
                if len(counts) == threads * each:
                    break
        expected = {b"%d.%d" % (t, n) for t in range(threads) for n in range(each)}
        assert set(counts) == expected
        assert set(counts.values()) == {1}  # each consumed exactly once
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
        conn.delete_queue(queue_name)


def test_messages_settled_from_other_threads(rabbitmq_url: str, queue_name: str) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        conn.publish_many([b"%d" % n for n in range(200)], routing_key=queue_name)
        with conn.consume(queue_name, prefetch=200) as messages:
            stream = messages.iter(timeout=WAIT)
            held = [message for _, message in zip(range(200), stream, strict=False)]
            assert len(held) == 200
            with ThreadPoolExecutor(max_workers=8) as pool:
                first = list(pool.map(lambda m: m.ack(), held))
                second = list(pool.map(lambda m: m.reject(), held))
        assert first == [True] * 200
        assert second == [False] * 200  # settled once, whichever thread tried
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
        conn.delete_queue(queue_name)


def test_iteration_timeouts_and_close_from_another_thread(
    rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        with conn.consume(queue_name) as messages:
            assert list(messages.iter(timeout=0.2)) == []  # empty queue: ends after 0.2 s
            assert messages.receive(timeout=0.1) is None
            conn.publish(b"late", routing_key=queue_name)
            late = messages.receive(timeout=WAIT)
            assert late is not None
            assert late.ack()

            seen: list[bytes] = []
            ended = threading.Event()

            def iterate() -> None:
                for message in messages:  # blocks: nothing more is published
                    seen.append(message.body)
                ended.set()

            thread = threading.Thread(target=iterate)
            thread.start()
            messages.close()  # ends the blocked iteration in the other thread
            thread.join(WAIT)
            assert ended.is_set()
            assert seen == []
            assert list(messages) == []  # closed: nothing more
        conn.delete_queue(queue_name)


def test_consumer_cancelled_raises_in_the_iterating_thread(
    rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        conn.publish(b"last", routing_key=queue_name)
        with conn.consume(queue_name) as messages:
            first = messages.receive(timeout=WAIT)
            assert first is not None
            assert first.ack()
            conn.delete_queue(queue_name)
            with pytest.raises(leveret.ConsumerCancelled):
                for _ in messages.iter(timeout=WAIT):
                    pass
            with pytest.raises(leveret.ConsumerCancelled):
                next(messages)  # and again, as the asyncio iterator does


def test_rpc_call_and_serve_run_handlers_in_threads(rabbitmq_url: str, queue_name: str) -> None:
    concurrency = 4
    barrier = threading.Barrier(concurrency, timeout=WAIT)
    handler_threads: set[str] = set()

    def handler(request: leveret.blocking.Message) -> bytes:
        if request.body == b"fail":
            raise ValueError("no such thing")
        handler_threads.add(threading.current_thread().name)
        barrier.wait()  # returns only if `concurrency` handlers run at once
        return request.body.upper()

    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        with conn.serve(queue_name, handler, concurrency=concurrency):
            words = [b"alpha", b"beta", b"gamma", b"delta"]
            with ThreadPoolExecutor(max_workers=concurrency) as pool:
                replies = list(pool.map(lambda w: conn.call(queue_name, w, timeout=WAIT), words))
            assert [reply.body for reply in replies] == [w.upper() for w in words]
            assert len(handler_threads) == concurrency
            assert not any(name.startswith("leveret-io") for name in handler_threads)
            with pytest.raises(leveret.RemoteError, match="ValueError: no such thing"):
                conn.call(queue_name, b"fail", timeout=WAIT)
        assert conn.declare_queue(queue_name, passive=True).message_count == 0  # all acked
        conn.delete_queue(queue_name)
        with pytest.raises(leveret.MessageReturned):
            conn.call(queue_name, b"nobody serves this", timeout=WAIT)


def test_server_wait_returns_after_its_timeout_or_a_close(
    rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)
        server = conn.serve(queue_name, lambda request: request.body)
        server.start()
        server.wait(timeout=0.1)  # returns, and the server goes on serving
        assert conn.call(queue_name, b"still", timeout=WAIT).body == b"still"
        waiter = threading.Thread(target=server.wait)
        waiter.start()
        server.close()  # from another thread than the one waiting
        waiter.join(WAIT)
        assert not waiter.is_alive()
        with pytest.raises(leveret.RPCTimeout):
            conn.call(queue_name, b"after the close", timeout=0.3)
        conn.delete_queue(queue_name)


def test_serve_forever_raises_why_it_ended(rabbitmq_url: str, queue_name: str) -> None:
    outcome: list[BaseException] = []
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue(queue_name)

        def serve() -> None:
            try:
                conn.serve_forever(queue_name, lambda request: request.body)
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)

        thread = threading.Thread(target=serve)
        thread.start()
        assert conn.call(queue_name, b"echo", timeout=WAIT).body == b"echo"
        conn.delete_queue(queue_name)
        thread.join(WAIT)
    assert not thread.is_alive()
    assert len(outcome) == 1
    assert isinstance(outcome[0], leveret.ConsumerCancelled)


def test_blocking_call_from_the_io_thread_raises_instead_of_deadlocking(
    rabbitmq_url: str, queue_name: str
) -> None:
    seen: list[object] = []
    conn = leveret.blocking.connect(rabbitmq_url)
    conn.declare_queue(queue_name, exclusive=True)
    conn.publish(b"held", routing_key=queue_name)
    message = conn.get(queue_name)
    assert message is not None

    def listener(state: str, error: BaseException | None) -> None:
        # Runs in the I/O thread, which a blocking call would wait for forever.
        if state != "closed":
            return  # e.g. "publisher closed", from the publishing connection
        seen.append(threading.current_thread().name)
        try:
            conn.declare_queue(f"{queue_name}.never")
        except RuntimeError as exc:
            seen.append(str(exc))
        seen.append(message.ack())  # settling runs in place there: no deadlock either

    conn.add_listener(listener)
    closer = threading.Thread(target=conn.close)
    closer.start()
    closer.join(WAIT)
    assert not closer.is_alive()
    assert str(seen[0]).startswith("leveret-io-")
    assert "called from the connection's own I/O thread" in str(seen[1])
    assert seen[2] is False  # the connection was closing: nothing could be sent
    assert conn.is_closed


def test_close_is_idempotent_and_a_closed_connection_refuses_calls(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    before = set(io_threads())
    conn = leveret.blocking.connect(rabbitmq_url, name="blocking-close-test")
    consumer = conn.consume(queue_name)
    names = [row["client_properties"].get("connection_name") for row in rabbitmq.list_connections()]
    assert "blocking-close-test" in names
    conn.close()
    conn.close()
    assert conn.is_closed
    assert not conn.is_connected
    assert set(io_threads()) == before  # the I/O thread has ended
    for call in (
        lambda: conn.publish(b"late", routing_key=queue_name),
        lambda: conn.publish_many([b"late"], routing_key=queue_name),
        lambda: conn.declare_queue(queue_name),
        lambda: conn.get(queue_name),
        lambda: conn.consume(queue_name),
        lambda: conn.call(queue_name, b"late"),
        consumer.start,
    ):
        with pytest.raises(leveret.ConnectionClosedByClient):
            call()
    consumer.close()  # never raises for stale state
    names = [row["client_properties"].get("connection_name") for row in rabbitmq.list_connections()]
    assert "blocking-close-test" not in names


def test_connect_failures_raise_in_the_caller_and_leave_no_thread(rabbitmq_url: str) -> None:
    before = set(io_threads())
    with pytest.raises(ValueError, match="heartbeat"):
        leveret.blocking.connect(rabbitmq_url, heartbeat=-1)
    with pytest.raises(leveret.AuthenticationFailed):
        leveret.blocking.connect(rabbitmq_url.replace("guest:guest", "guest:wrong"))
    with pytest.raises(leveret.ConnectFailed):
        leveret.blocking.connect("amqp://guest:guest@127.0.0.1:1/", connection_timeout=2)
    assert set(io_threads()) == before


def test_lazy_export_keeps_the_core_free_of_asyncio() -> None:
    import subprocess
    import sys

    code = (
        "import sys, leveret.protocol; assert 'asyncio' not in sys.modules, 'core'; "
        "import leveret; assert leveret.blocking.connect is not None; "
        "assert 'leveret.blocking' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
