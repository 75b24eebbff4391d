"""Broker errors against a real RabbitMQ: each one maps to its exception class, fails only
the call that caused it, and leaves the connection usable (or, for connection errors,
fails every pending and later call with the same exception, without hanging)."""

from __future__ import annotations

import asyncio
import re
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import Any
from urllib.parse import quote

import pytest

import leveret
from leveret import (
    AccessRefused,
    AuthenticationFailed,
    ConnectionClosedByClient,
    ConnectionClosedByServer,
    ConnectionForced,
    ConsumerCancelled,
    MessageReturned,
    NotAllowed,
    NotFound,
    PreconditionFailed,
    Properties,
    PublishNacked,
    ResourceLocked,
)
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

WAIT = 10  # seconds: a bound on every wait, so a bug fails the test instead of hanging it


def _url(rabbitmq_url: str, user: str, password: str, vhost: str = "/") -> str:
    params = leveret.parse_url(rabbitmq_url)
    return (
        f"amqp://{quote(user, safe='')}:{quote(password, safe='')}"
        f"@{params.host}:{params.port}/{quote(vhost, safe='')}"
    )


@pytest.fixture
def queue_name(queue_name: str) -> str:
    # conftest's names carry the test id ("...[durable]..."); pamqp, and so leveret, rejects
    # "[" and "]" in queue names although RabbitMQ accepts them (see test_bad_input.py).
    return re.sub(r"[^A-Za-z0-9._:-]", "-", queue_name)


def _unique(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


@pytest.fixture
def make_user(rabbitmq: RabbitMQNode) -> Iterator[Callable[..., tuple[str, str]]]:
    """Create broker users for one test (deleted afterwards); returns (name, password)."""
    created: list[str] = []

    def make(**permissions: str) -> tuple[str, str]:
        name, password = _unique("leveret-test-"), uuid.uuid4().hex
        rabbitmq.add_user(name, password, **permissions)
        created.append(name)
        return name, password

    yield make
    for name in created:
        rabbitmq.delete_user(name)


@pytest.fixture
async def delete_after(rabbitmq_url: str) -> AsyncIterator[Callable[[str], None]]:
    """Register non-exclusive queues to delete after the test, on a fresh connection."""
    names: list[str] = []
    yield names.append
    async with leveret.connect(rabbitmq_url) as connection:
        for name in names:
            await connection.delete_queue(name)


async def _next(messages: leveret.Consumer) -> leveret.Message:
    async with asyncio.timeout(WAIT):
        return await anext(messages)


async def _expect_nothing(messages: leveret.Consumer) -> None:
    """Iterate until the consumer raises (bounded); any message is a failure."""
    async with asyncio.timeout(WAIT):
        async for message in messages:
            pytest.fail(f"no message was expected: {message!r}")


# -- channel errors: the failing call raises, the connection carries on ---------------------


async def test_passive_declare_of_missing_queue_raises_not_found(
    conn: leveret.Connection, queue_name: str
) -> None:
    with pytest.raises(NotFound) as info:
        await conn.declare_queue(queue_name, passive=True)
    assert info.value.reply_code == 404
    assert f"no queue '{queue_name}'" in info.value.reply_text
    assert queue_name in str(info.value)

    # The same connection declares, publishes and consumes as if nothing happened.
    declared = await conn.declare_queue(queue_name, exclusive=True)
    assert declared == leveret.QueueInfo(queue_name, 0, 0)
    await conn.publish(b"after the 404", routing_key=queue_name)
    async with conn.consume(queue_name) as messages:
        message = await _next(messages)
        assert message.body == b"after the 404"
        assert message.ack() is True
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


async def test_passive_declare_of_missing_exchange_raises_not_found(
    conn: leveret.Connection, queue_name: str
) -> None:
    with pytest.raises(NotFound) as info:
        await conn.declare_exchange(queue_name, "direct", passive=True)
    assert f"no exchange '{queue_name}'" in info.value.reply_text
    await conn.declare_exchange("amq.direct", "direct", durable=True, passive=True)


@pytest.mark.parametrize(
    ("first", "second", "named"),
    [
        pytest.param(
            {"arguments": {"x-max-length": 10}},
            {"arguments": {"x-max-length": 20}},
            "x-max-length",
            id="x-max-length",
        ),
        pytest.param(
            {"arguments": {"x-max-length": 10}}, {}, "x-max-length", id="argument-dropped"
        ),
        pytest.param({"durable": False}, {"durable": True}, "durable", id="durable"),
        pytest.param(
            {"auto_delete": False}, {"auto_delete": True}, "auto_delete", id="auto-delete"
        ),
    ],
)
async def test_redeclare_with_other_properties_raises_precondition_failed(
    conn: leveret.Connection,
    queue_name: str,
    delete_after: Callable[[str], None],
    first: dict[str, Any],
    second: dict[str, Any],
    named: str,
) -> None:
    delete_after(queue_name)
    await conn.declare_queue(queue_name, **first)
    with pytest.raises(PreconditionFailed) as info:
        await conn.declare_queue(queue_name, **second)
    assert info.value.reply_code == 406
    assert f"inequivalent arg '{named}' for queue '{queue_name}'" in info.value.reply_text

    # Only that call failed: the original declaration still holds and the connection works.
    assert (await conn.declare_queue(queue_name, **first)).name == queue_name
    await conn.publish(b"still fine", routing_key=queue_name)
    message = await conn.get(queue_name)
    assert message is not None
    assert message.body == b"still fine"
    assert message.ack() is True


async def test_redeclare_exchange_with_other_type_raises_precondition_failed(
    conn: leveret.Connection, queue_name: str
) -> None:
    exchange = f"{queue_name}.x"
    await conn.declare_exchange(exchange, "direct", auto_delete=False)
    try:
        with pytest.raises(PreconditionFailed) as info:
            await conn.declare_exchange(exchange, "fanout")
        assert f"inequivalent arg 'type' for exchange '{exchange}'" in info.value.reply_text
        await conn.declare_exchange(exchange, "direct")
    finally:
        await conn.delete_exchange(exchange)


async def test_exclusive_queue_of_another_connection_raises_resource_locked(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    async with leveret.connect(rabbitmq_url) as other:
        with pytest.raises(ResourceLocked) as info:
            await other.declare_queue(queue_name, exclusive=True)
        assert info.value.reply_code == 405
        assert f"exclusive access to locked queue '{queue_name}'" in info.value.reply_text

        with pytest.raises(ResourceLocked):
            async with other.consume(queue_name):
                pytest.fail("consuming another connection's exclusive queue must fail")
        with pytest.raises(ResourceLocked):
            await other.get(queue_name)

        # The other connection is still usable, and the owner's queue is untouched.
        own = await other.declare_queue("", exclusive=True)
        await other.publish(b"mine", routing_key=own.name)
        got = await other.get(own.name, no_ack=True)
        assert got is not None
        assert got.body == b"mine"
    assert (await conn.declare_queue(queue_name, exclusive=True)).consumer_count == 0


# -- permissions, credentials and virtual hosts -------------------------------------------


async def test_user_without_permission_gets_access_refused_then_carries_on(
    rabbitmq_url: str, queue_name: str, make_user: Callable[..., tuple[str, str]]
) -> None:
    user, password = make_user(configure=r"^ok\..*", write=r"^ok\..*", read=r"^ok\..*")
    denied, allowed = _unique("other.q."), _unique("ok.q.")
    async with leveret.connect(_url(rabbitmq_url, user, password)) as limited:
        with pytest.raises(AccessRefused) as info:
            await limited.declare_queue(denied, exclusive=True)
        assert info.value.reply_code == 403
        assert f"access to queue '{denied}'" in info.value.reply_text
        assert user in info.value.reply_text

        # Same connection, a permitted name: works.
        assert (await limited.declare_queue(allowed, exclusive=True)).name == allowed

        # Reading a queue the user may not read is refused as well (403 on basic.get).
        async with leveret.connect(rabbitmq_url) as admin:
            await admin.declare_queue(queue_name, exclusive=True)
            with pytest.raises(AccessRefused) as read_info:
                await limited.get(queue_name)
            assert f"access to queue '{queue_name}'" in read_info.value.reply_text
        assert (await limited.declare_queue(allowed, passive=True)).name == allowed


async def test_wrong_password_raises_authentication_failed_naming_the_user(
    rabbitmq_url: str, make_user: Callable[..., tuple[str, str]]
) -> None:
    user, password = make_user()
    with pytest.raises(AuthenticationFailed) as info:
        await leveret.connect(_url(rabbitmq_url, user, password + "-wrong"))
    assert f"user {user!r}" in str(info.value)
    assert "ACCESS_REFUSED" in str(info.value)
    assert password not in str(info.value)
    # The right password works.
    async with leveret.connect(_url(rabbitmq_url, user, password)) as good:
        assert not good.is_closed


async def test_unknown_vhost_raises_not_allowed_naming_it(rabbitmq_url: str) -> None:
    vhost = _unique("leveret-no-such-vhost-")
    with pytest.raises(ConnectionClosedByServer) as info:
        await leveret.connect(_url(rabbitmq_url, "guest", "guest", vhost))
    assert type(info.value) is NotAllowed
    assert info.value.reply_code == 530
    assert vhost in info.value.reply_text
    assert vhost in str(info.value)


async def test_user_without_access_to_an_existing_vhost_raises_not_allowed(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, make_user: Callable[..., tuple[str, str]]
) -> None:
    vhost = _unique("leveret-test-vhost-")
    rabbitmq.add_vhost(vhost, grant=None)
    try:
        user, password = make_user()  # permissions on "/" only
        with pytest.raises(NotAllowed) as info:
            await leveret.connect(_url(rabbitmq_url, user, password, vhost))
        assert info.value.reply_code == 530
        assert f"access to vhost '{vhost}' refused for user '{user}'" in info.value.reply_text
        # guest (an administrator with access everywhere via the default vhost only) is not
        # the point here; the user itself can still use "/".
        async with leveret.connect(_url(rabbitmq_url, user, password)) as ok:
            await ok.declare_queue("", exclusive=True)
    finally:
        rabbitmq.delete_vhost(vhost)


# -- publishing: returns, nacks and missing exchanges ---------------------------------------


@pytest.mark.parametrize("exchange", ["", "amq.direct"])
async def test_unroutable_mandatory_publish_raises_message_returned(
    conn: leveret.Connection, queue_name: str, exchange: str
) -> None:
    nowhere = f"{queue_name}.nowhere"
    properties = Properties(message_id="m-1", headers={"k": "v"})
    with pytest.raises(MessageReturned) as info:
        await conn.publish(
            b"lost", routing_key=nowhere, exchange=exchange, mandatory=True, properties=properties
        )
    returned = info.value
    assert returned.reply_code == 312
    assert returned.reply_text == "NO_ROUTE"
    assert returned.exchange == exchange
    assert returned.routing_key == nowhere
    assert returned.body == b"lost"
    assert returned.properties.message_id == "m-1"
    assert returned.properties.headers == {"k": "v"}

    # Without mandatory the broker drops it silently, and the channel is still fine.
    await conn.publish(b"dropped", routing_key=nowhere, exchange=exchange)
    await conn.declare_queue(queue_name, exclusive=True)
    if exchange:
        await conn.bind_queue(queue_name, exchange, routing_key=queue_name)
    await conn.publish(b"routed", routing_key=queue_name, exchange=exchange, mandatory=True)
    got = await conn.get(queue_name, no_ack=True)
    assert got is not None
    assert got.body == b"routed"


@pytest.mark.parametrize("message_id", ["the-same-id", None])
async def test_concurrent_mandatory_publishes_return_exactly_the_unroutable_ones(
    conn: leveret.Connection, queue_name: str, message_id: str | None
) -> None:
    # aio-pika#689: returns matched by message_id fail the wrong publish when ids repeat.
    await conn.declare_queue(queue_name, exclusive=True)
    properties = Properties(message_id=message_id)
    unroutable_keys = (f"{queue_name}.nowhere-a", f"{queue_name}.nowhere-b")

    def route(i: int) -> str:
        return queue_name if i % 2 == 0 else unroutable_keys[(i // 2) % 2]

    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                conn.publish(
                    f"body-{i}".encode(),
                    routing_key=route(i),
                    mandatory=True,
                    properties=properties,
                )
                for i in range(200)
            ),
            return_exceptions=True,
        ),
        WAIT,
    )
    for i, result in enumerate(results):
        if route(i) == queue_name:
            assert result is None, f"publish {i} was routable but got {result!r}"
        else:
            assert isinstance(result, MessageReturned), f"publish {i}: {result!r}"
            assert result.body == f"body-{i}".encode()
            assert result.routing_key == route(i)
            assert result.reply_code == 312
            if message_id is not None:
                assert result.properties.message_id == message_id
            else:  # leveret stamped a unique id of its own
                assert result.properties.message_id

    received: set[bytes] = set()
    async with conn.consume(queue_name, prefetch=200, no_ack=True) as messages:
        while len(received) < 100:
            received.add((await _next(messages)).body)
    assert received == {f"body-{i}".encode() for i in range(0, 200, 2)}
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0


async def test_mandatory_returns_through_a_headers_exchange_with_one_routing_key(
    conn: leveret.Connection, queue_name: str
) -> None:
    # Routability depends on the headers, not the routing key: every publish has the same
    # (exchange, routing key), and the routed ones are confirmed later (after the queue),
    # so returns must not be pinned on an earlier routed publish.
    exchange = f"{queue_name}.headers"
    await conn.declare_exchange(exchange, "headers", auto_delete=True)
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.bind_queue(queue_name, exchange, arguments={"x-match": "all", "route": "yes"})
    results = await asyncio.wait_for(
        asyncio.gather(
            *(
                conn.publish(
                    f"body-{i}".encode(),
                    exchange=exchange,
                    mandatory=True,
                    properties=Properties(
                        message_id="same", headers={"route": "yes" if i % 2 == 0 else "no"}
                    ),
                )
                for i in range(200)
            ),
            return_exceptions=True,
        ),
        WAIT,
    )
    wrong = [
        (i, result)
        for i, result in enumerate(results)
        if (result is not None if i % 2 == 0 else not isinstance(result, MessageReturned))
        or (isinstance(result, MessageReturned) and result.body != f"body-{i}".encode())
    ]
    assert not wrong, wrong[:5]
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 100


async def test_reject_publish_overflow_raises_publish_nacked(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(
        queue_name,
        exclusive=True,
        arguments={"x-max-length": 1, "x-overflow": "reject-publish"},
    )
    await conn.publish(b"first", routing_key=queue_name)
    with pytest.raises(PublishNacked):
        await conn.publish(b"second", routing_key=queue_name)
    # A nack does not close the channel: the next publish on it is confirmed once there is room.
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 1
    first = await conn.get(queue_name)
    assert first is not None
    assert first.body == b"first"
    assert first.ack() is True
    await conn.publish(b"third", routing_key=queue_name)
    third = await conn.get(queue_name, no_ack=True)
    assert third is not None
    assert third.body == b"third"


async def test_publish_to_missing_exchange_fails_alone(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    missing = f"{queue_name}.no-such-exchange"
    results = await asyncio.wait_for(
        asyncio.gather(
            conn.publish(b"lost", routing_key=queue_name, exchange=missing),
            *(conn.publish(f"{i}".encode(), routing_key=queue_name) for i in range(50)),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert isinstance(results[0], NotFound), results[0]
    assert results[0].reply_code == 404
    assert f"no exchange '{missing}'" in results[0].reply_text
    assert results[1:] == [None] * 50
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 50

    # Again, several at once: every one fails, on a fresh channel each round.
    again = await asyncio.wait_for(
        asyncio.gather(
            *(conn.publish(b"lost", routing_key=queue_name, exchange=missing) for _ in range(5)),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert all(isinstance(result, NotFound) for result in again), again

    # Once the exchange exists, publishing to it works (no dead channel is reused).
    await conn.declare_exchange(missing, "direct", auto_delete=True)
    await conn.bind_queue(queue_name, missing, routing_key=queue_name)
    await conn.publish(b"found", routing_key=queue_name, exchange=missing, mandatory=True)
    assert (await conn.purge_queue(queue_name)) == 51


# -- consumers cancelled by the broker --------------------------------------------------------


@pytest.mark.parametrize("deleter", ["rabbitmqctl", "other-connection"])
async def test_deleting_a_consumed_queue_ends_that_consumer_with_consumer_cancelled(
    conn: leveret.Connection,
    rabbitmq: RabbitMQNode,
    rabbitmq_url: str,
    queue_name: str,
    delete_after: Callable[[str], None],
    deleter: str,
) -> None:
    doomed, kept = f"{queue_name}.doomed", f"{queue_name}.kept"
    delete_after(doomed)
    delete_after(kept)
    await conn.declare_queue(doomed)
    await conn.declare_queue(kept)
    async with conn.consume(doomed) as doomed_messages, conn.consume(kept) as kept_messages:
        await conn.publish(b"before", routing_key=doomed)
        before = await _next(doomed_messages)
        assert before.body == b"before"
        assert before.ack() is True

        if deleter == "rabbitmqctl":
            await asyncio.to_thread(rabbitmq.ctl, "delete_queue", doomed)
        else:
            async with leveret.connect(rabbitmq_url) as other:
                assert await other.delete_queue(doomed) == 0

        with pytest.raises(ConsumerCancelled) as info:
            await _expect_nothing(doomed_messages)
        assert info.value.queue == doomed
        assert info.value.consumer_tag == before.consumer_tag
        assert doomed in str(info.value)
        with pytest.raises(ConsumerCancelled):  # and it stays ended
            await _next(doomed_messages)

        # The other consumer on the same connection keeps receiving.
        for body in (b"after-1", b"after-2"):
            await conn.publish(body, routing_key=kept)
            message = await _next(kept_messages)
            assert message.body == body
            assert message.ack() is True

    with pytest.raises(NotFound):
        await conn.declare_queue(doomed, passive=True)
    assert (await conn.declare_queue(kept, passive=True)).message_count == 0


# -- connection errors: every pending and later call fails the same way --------------------


async def test_close_all_connections_fails_every_pending_and_later_call(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    # Without reconnection: with it (the default), the connection recovers instead.
    async with leveret.connect(rabbitmq_url, reconnect=False) as conn:
        idle = await conn.declare_queue(f"{queue_name}.idle", exclusive=True)
        busy = await conn.declare_queue(f"{queue_name}.busy", exclusive=True)
        started = [asyncio.Event() for _ in range(5)]
        unacked: list[leveret.Message] = []

        async def idle_consumer() -> None:
            async with conn.consume(idle.name) as messages:
                started[0].set()
                await _expect_nothing(messages)

        async def busy_consumer() -> None:
            async with conn.consume(busy.name, prefetch=10) as messages:
                async for message in messages:
                    started[1].set()
                    if unacked:
                        unacked.pop().ack()
                    unacked.append(message)

        async def loop(index: int, call: Callable[[], Awaitable[object]]) -> None:
            while True:  # ends only when a call raises
                await call()
                started[index].set()

        # Five callers busy at the moment the broker closes the connection: two consumers
        # waiting in `async for`, and loops of publish (waiting for confirms), declare, get.
        workers = [
            asyncio.ensure_future(idle_consumer()),
            asyncio.ensure_future(busy_consumer()),
            asyncio.ensure_future(loop(2, lambda: conn.publish(b"x", routing_key=busy.name))),
            asyncio.ensure_future(loop(3, lambda: conn.declare_queue(idle.name, passive=True))),
            asyncio.ensure_future(loop(4, lambda: conn.get(idle.name))),
        ]
        try:
            async with asyncio.timeout(WAIT):
                for event in started:
                    await event.wait()
            await asyncio.to_thread(rabbitmq.close_all_connections, "bye from test")
            async with asyncio.timeout(WAIT):
                results = await asyncio.gather(*workers, return_exceptions=True)
        finally:
            for worker in workers:
                worker.cancel()
        for result in results:
            assert isinstance(result, ConnectionForced), repr(result)
            assert result.reply_code == 320
            assert "bye from test" in result.reply_text
        assert conn.is_closed
        assert isinstance(await conn.wait_closed(), ConnectionForced)
        assert unacked
        assert unacked[0].ack() is False  # its channel is gone: nothing is sent

        later: list[Callable[[], Awaitable[object]]] = [
            lambda: conn.declare_queue(queue_name, exclusive=True),
            lambda: conn.publish(b"late", routing_key=queue_name),
            lambda: conn.get(queue_name),
            lambda: conn.consume(queue_name).start(),
            lambda: conn.delete_queue(queue_name),
        ]
        for call in later:
            with pytest.raises(ConnectionForced) as info:
                await asyncio.wait_for(call(), WAIT)
            assert "bye from test" in info.value.reply_text
        await conn.close()  # closing a connection the broker closed is fine, twice too
        await conn.close()


# -- acknowledgements that cannot be sent -----------------------------------------------------


async def test_second_ack_returns_false_and_channel_stays_open(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"one", routing_key=queue_name)
    async with conn.consume(queue_name) as messages:
        first = await _next(messages)
        assert first.ack() is True
        assert first.ack() is False
        assert first.nack() is False
        assert first.reject() is False
        assert first.settled is True
        # Had the second ack been sent, the broker would close the channel (406 unknown
        # delivery tag) and this consumer would fail instead of receiving the next message.
        await conn.publish(b"two", routing_key=queue_name)
        second = await _next(messages)
        assert second.body == b"two"
        assert second.redelivered is False
        assert second.ack() is True
        assert not second.stale
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0

    # The same for a message fetched with get.
    await conn.publish(b"three", routing_key=queue_name)
    got = await conn.get(queue_name)
    assert got is not None
    assert got.ack() is True
    assert got.ack() is False
    await conn.publish(b"four", routing_key=queue_name)
    got = await conn.get(queue_name)
    assert got is not None
    assert got.body == b"four"
    assert got.redelivered is False
    assert got.ack() is True


async def test_ack_after_the_consumer_channel_closed_returns_false(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"held", routing_key=queue_name)
    async with conn.consume(queue_name) as messages:
        held = await _next(messages)
        assert not held.stale
    assert held.stale
    assert held.ack() is False
    assert held.settled is False  # nothing was sent: the broker requeued it
    again = await conn.get(queue_name)
    assert again is not None
    assert again.body == b"held"
    assert again.redelivered is True
    assert again.ack() is True
    assert await conn.get(queue_name) is None


async def test_ack_on_a_no_ack_consumer_returns_false(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"one", routing_key=queue_name)
    await conn.publish(b"two", routing_key=queue_name)
    async with conn.consume(queue_name, no_ack=True) as messages:
        first = await _next(messages)
        assert first.ack() is False
        assert first.nack() is False
        assert first.reject() is False
        second = await _next(messages)  # had an ack gone out, the channel would be closed (406)
        assert second.body == b"two"
        assert second.ack() is False
    assert (await conn.declare_queue(queue_name, passive=True)).message_count == 0

    await conn.publish(b"three", routing_key=queue_name)
    got = await conn.get(queue_name, no_ack=True)
    assert got is not None
    assert got.ack() is False
    assert await conn.get(queue_name) is None


# -- a connection closed by the client --------------------------------------------------------


async def test_calls_after_close_raise_connection_closed_by_client(
    rabbitmq_url: str, queue_name: str
) -> None:
    conn = await leveret.connect(rabbitmq_url)
    await conn.declare_queue(queue_name, exclusive=True)
    consuming = asyncio.Event()
    waiting = asyncio.ensure_future(_consume_one(conn, queue_name, consuming))
    async with asyncio.timeout(WAIT):
        await consuming.wait()
    await conn.close()
    assert conn.is_closed
    assert await conn.wait_closed() is None
    await conn.close()  # twice is fine

    with pytest.raises(ConnectionClosedByClient):
        async with asyncio.timeout(WAIT):
            await waiting
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: conn.declare_queue(queue_name, exclusive=True),
        lambda: conn.declare_exchange("amq.direct", passive=True),
        lambda: conn.publish(b"late", routing_key=queue_name),
        lambda: conn.get(queue_name),
        lambda: conn.purge_queue(queue_name),
        lambda: conn.consume(queue_name).start(),
    ]
    for call in calls:
        with pytest.raises(ConnectionClosedByClient):
            await call()
    with pytest.raises(ConnectionClosedByClient):
        await conn.update_secret("new-secret")

    async with leveret.connect(rabbitmq_url) as scoped:
        await scoped.close()
    assert scoped.is_closed  # leaving the block after an explicit close is fine too


async def test_close_waits_for_sent_publishes_and_fails_unsent_ones(
    rabbitmq_url: str, queue_name: str, delete_after: Callable[[str], None]
) -> None:
    delete_after(queue_name)
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name)
        await conn.publish(b"warm-up", routing_key=queue_name)  # the publish channel is open
        sent = [
            asyncio.ensure_future(conn.publish(f"{i}".encode(), routing_key=queue_name))
            for i in range(20)
        ]
        await asyncio.sleep(0)  # each publish has queued its frames and awaits its confirm
        await asyncio.wait_for(conn.close(), WAIT)
        # close() waited for their confirms: every one succeeded.
        assert [await publish for publish in sent] == [None] * 20

    async with leveret.connect(rabbitmq_url) as conn:
        assert (await conn.declare_queue(queue_name, passive=True)).message_count == 21
        cold = [
            asyncio.ensure_future(conn.publish(b"late", routing_key=queue_name)) for _ in range(5)
        ]
        await asyncio.sleep(0)  # still waiting for their publish channel to open
        await asyncio.wait_for(conn.close(), WAIT)
        results = await asyncio.gather(*cold, return_exceptions=True)
        assert all(
            result is None or isinstance(result, ConnectionClosedByClient) for result in results
        ), results

    async with leveret.connect(rabbitmq_url) as conn:
        count = (await conn.declare_queue(queue_name, passive=True)).message_count
        assert count == 21 + results.count(None)


async def _consume_one(
    conn: leveret.Connection, queue: str, consuming: asyncio.Event
) -> leveret.Message:
    async with conn.consume(queue) as messages:
        consuming.set()
        return await anext(messages)
