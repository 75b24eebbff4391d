"""RPC (`conn.call` with a reply queue or direct reply-to, `conn.serve`) against the real broker.

Every wait is bounded (WAIT), so a bug fails a test instead of hanging it; no
assertion depends on how long something took. Conditions the broker reaches
on its own (a TTL passing, a dead-lettered message arriving) are polled with
`until(...)`, which fails after WAIT seconds.
"""

from __future__ import annotations

import asyncio
import logging
import re
import threading
import uuid
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest

import leveret
import leveret.blocking
from leveret.aio._rpc import _ReplySink
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on any wait for the broker, a server or another task
DROPPED = "dropped a late or unknown RPC reply"


@pytest.fixture
def queue_name(queue_name: str) -> str:
    # pamqp, and so leveret, refuses "[" and "]" in queue names (see test_errors.py).
    return re.sub(r"[^A-Za-z0-9._:-]", "-", queue_name)


def pending(conn: leveret.Connection) -> dict[str, Any]:
    """The calls the connection's RPC client still waits for (by correlation id)."""
    client = conn._rpc_client
    assert client is not None, "no call was made on this connection"
    return dict(client._pending)


async def until(condition: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll `condition` until it holds; fail the test after WAIT seconds."""
    try:
        async with asyncio.timeout(WAIT):
            while not await condition():  # noqa: ASYNC110 - the broker's state: no Event
                await asyncio.sleep(0.05)
    except TimeoutError:
        pytest.fail(f"not within {WAIT}s: {what}")


async def message_count(conn: leveret.Connection, queue: str) -> int:
    return (await conn.declare_queue(queue, passive=True)).message_count


async def echo(request: leveret.Message) -> bytes:
    return b"echo:" + request.body


def echo_noting_reply_to(
    addresses: list[str | None],
) -> Callable[[leveret.Message], Awaitable[bytes]]:
    """`echo`, noting each request's reply_to address in `addresses`."""

    async def handler(request: leveret.Message) -> bytes:
        addresses.append(request.properties.reply_to)
        return await echo(request)

    return handler


async def close_connection_named(rabbitmq: RabbitMQNode, name: str, reason: str) -> None:
    """Close, from the broker, the one connection whose client-provided name is `name`."""
    listing = await asyncio.to_thread(
        rabbitmq.ctl,
        "--quiet",
        "--no-table-headers",
        "list_connections",
        "pid",
        "client_properties",
    )
    # One line per connection: "<pid>\t[client properties]"; `name` is unique to the test.
    pids = [line.split()[0] for line in listing.splitlines() if name in line]
    assert len(pids) == 1, listing
    await asyncio.to_thread(rabbitmq.ctl, "close_connection", pids[0], reason)


# -- 1. many concurrent calls --------------------------------------------------------------------


async def test_a_thousand_concurrent_calls_each_get_their_own_reply(
    conn: leveret.Connection, queue_name: str
) -> None:
    running = peak = 0
    correlation_ids: set[str | None] = set()

    async def handler(request: leveret.Message) -> bytes:
        nonlocal running, peak
        correlation_ids.add(request.properties.correlation_id)
        running += 1
        peak = max(peak, running)
        try:
            await asyncio.sleep(0.002)  # lets handlers overlap; nothing asserts on time
        finally:
            running -= 1
        return b"reply to " + request.body

    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, handler, concurrency=50):
        bodies = [f"call {i} {uuid.uuid4().hex}".encode() for i in range(1000)]
        async with asyncio.timeout(3 * WAIT):
            replies = await asyncio.gather(
                *(conn.call(queue_name, body, timeout=WAIT) for body in bodies)
            )
    assert [reply.body for reply in replies] == [b"reply to " + body for body in bodies]
    assert len(correlation_ids) == 1000
    assert None not in correlation_ids
    assert {reply.properties.correlation_id for reply in replies} == correlation_ids
    assert 1 < peak <= 50  # the handlers overlapped, and never beyond `concurrency`
    assert pending(conn) == {}
    assert await message_count(conn, queue_name) == 0  # every request was acked
    await conn.delete_queue(queue_name)


# -- 2. timeouts ---------------------------------------------------------------------------------


async def test_a_late_reply_after_a_timeout_is_dropped_and_the_next_call_works(
    conn: leveret.Connection, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: leveret.Message) -> bytes:
        if request.body == b"slow":
            started.set()
            await release.wait()
        return b"reply to " + request.body

    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, handler, concurrency=2):
        call = asyncio.ensure_future(conn.call(queue_name, b"slow", timeout=1.0))
        await asyncio.wait_for(started.wait(), WAIT)  # the server holds the request
        with pytest.raises(leveret.RPCTimeout) as timed_out:
            await asyncio.wait_for(call, WAIT)
        assert isinstance(timed_out.value, TimeoutError)
        assert pending(conn) == {}
        match = re.search(r"correlation id (\S+)\)", str(timed_out.value))
        assert match is not None, str(timed_out.value)
        correlation_id = match.group(1)

        release.set()  # now the server answers, too late

        async def dropped() -> bool:
            return any(
                DROPPED in record.getMessage() and correlation_id in record.getMessage()
                for record in caplog.records
                if record.name == "leveret.rpc" and record.levelno == logging.DEBUG
            )

        await until(dropped, "the late reply was logged as dropped")
        assert pending(conn) == {}
        reply = await conn.call(queue_name, b"next", timeout=WAIT)
        assert reply.body == b"reply to next"
        assert pending(conn) == {}
    await until(lambda: _is_zero(message_count(conn, queue_name)), "both requests were acked")
    await conn.delete_queue(queue_name)


async def _is_zero(count: Awaitable[int]) -> bool:
    return await count == 0


async def test_many_timed_out_calls_leak_nothing_and_their_requests_expire(
    conn: leveret.Connection, queue_name: str
) -> None:
    # A queue nobody serves; expired requests are dead-lettered to `dlq`, which proves
    # they did reach the queue and left it by expiring (not by being consumed).
    dlq = f"{queue_name}.dlq"
    await conn.declare_queue(dlq)
    await conn.declare_queue(
        queue_name,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    )
    calls = 500
    outcomes = await asyncio.wait_for(
        asyncio.gather(
            *(conn.call(queue_name, b"%d" % i, timeout=0.3) for i in range(calls)),
            return_exceptions=True,
        ),
        WAIT,
    )
    assert all(isinstance(outcome, leveret.RPCTimeout) for outcome in outcomes), {
        type(outcome).__name__ for outcome in outcomes
    }
    assert pending(conn) == {}  # bounded: a timed-out call leaves the table at once

    await until(lambda: _is_zero(message_count(conn, queue_name)), "the requests expired")

    async def all_dead_lettered() -> bool:
        return await message_count(conn, dlq) == calls

    await until(all_dead_lettered, f"{calls} expired requests in the dead-letter queue")
    expired = await conn.get(dlq)
    assert expired is not None
    deaths = expired.headers["x-death"]
    assert isinstance(deaths, list)
    assert deaths[0]["reason"] == "expired"
    assert deaths[0]["original-expiration"] == "300"  # the call's timeout, in ms
    assert expired.properties.reply_to is not None
    assert expired.properties.reply_to.startswith("amq.gen-")  # the client's reply queue
    expired.ack()
    await conn.delete_queue(queue_name)
    await conn.delete_queue(dlq)


# -- 3. handler errors ---------------------------------------------------------------------------


async def failing_or_echo(request: leveret.Message) -> bytes:
    if request.body == b"boom":
        raise ValueError("bad input: boom")
    return b"echo:" + request.body


async def test_a_handler_exception_is_a_remote_error_and_the_server_lives_on(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, failing_or_echo):
        for _ in range(2):  # twice: the first error did not end the server
            with pytest.raises(leveret.RemoteError) as raised:
                await conn.call(queue_name, b"boom", timeout=WAIT)
            error = raised.value
            assert error.type_name == "ValueError"
            assert error.remote_message == "bad input: boom"
            assert error.remote_traceback is None  # off by default
            assert str(error) == "ValueError: bad input: boom"
            assert (await conn.call(queue_name, b"ok", timeout=WAIT)).body == b"echo:ok"

    async with conn.serve(queue_name, failing_or_echo, include_traceback=True):
        with pytest.raises(leveret.RemoteError) as raised:
            await conn.call(queue_name, b"boom", timeout=WAIT)
        remote_traceback = raised.value.remote_traceback
        assert remote_traceback is not None
        assert remote_traceback.startswith("Traceback (most recent call last):")
        assert "in failing_or_echo" in remote_traceback
        assert remote_traceback.rstrip().endswith("ValueError: bad input: boom")
        assert (await conn.call(queue_name, b"ok", timeout=WAIT)).body == b"echo:ok"
    assert pending(conn) == {}
    assert await message_count(conn, queue_name) == 0  # failed requests were acked too
    await conn.delete_queue(queue_name)


# -- 4. cancellation -----------------------------------------------------------------------------


async def test_cancelling_a_waiting_call_leaves_nothing_behind(
    conn: leveret.Connection, queue_name: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="leveret")
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: leveret.Message) -> bytes:
        if request.body == b"held":
            started.set()
            await release.wait()
        return b"echo:" + request.body

    await conn.declare_queue(queue_name)
    # Cancelled before the RPC channel is even open: the next call still opens it.
    early = asyncio.ensure_future(conn.call(queue_name, b"never sent", timeout=WAIT))
    await asyncio.sleep(0)
    early.cancel()
    with pytest.raises(asyncio.CancelledError):
        await early

    async with conn.serve(queue_name, handler, concurrency=2):
        call = asyncio.ensure_future(conn.call(queue_name, b"held", timeout=WAIT))
        await asyncio.wait_for(started.wait(), WAIT)
        assert len(pending(conn)) == 1
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert pending(conn) == {}
        assert conn.is_connected
        assert (await conn.call(queue_name, b"after", timeout=WAIT)).body == b"echo:after"
        release.set()  # the cancelled call's reply arrives and is dropped

        async def dropped() -> bool:
            return any(DROPPED in record.getMessage() for record in caplog.records)

        await until(dropped, "the cancelled call's reply was dropped")
        assert pending(conn) == {}
        assert (await conn.call(queue_name, b"again", timeout=WAIT)).body == b"echo:again"
    await conn.delete_queue(queue_name)


# -- 5. a server dies mid-call -------------------------------------------------------------------


async def test_a_request_held_by_a_killed_server_is_answered_by_another(
    conn: leveret.Connection, rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    name_a = f"rpc-server-a-{uuid.uuid4().hex[:8]}"
    a_started = asyncio.Event()
    a_release = asyncio.Event()
    a_seen: list[bytes] = []
    b_seen: list[tuple[bytes, bool]] = []

    async def handler_a(request: leveret.Message) -> bytes:
        a_seen.append(request.body)
        a_started.set()
        await a_release.wait()  # holds the request, unacked, until its connection is gone
        return b"A:" + request.body

    async def handler_b(request: leveret.Message) -> bytes:
        b_seen.append((request.body, request.redelivered))
        return b"B:" + request.body

    await conn.declare_queue(queue_name)
    server_a = await leveret.connect(rabbitmq_url, name=name_a, reconnect=False)
    server_b = await leveret.connect(rabbitmq_url, name="rpc-server-b")
    try:
        serving_a = server_a.serve(queue_name, handler_a, concurrency=1)
        async with serving_a:
            call = asyncio.ensure_future(conn.call(queue_name, b"job", timeout=3 * WAIT))
            await asyncio.wait_for(a_started.wait(), WAIT)
            async with server_b.serve(queue_name, handler_b, concurrency=1):
                await close_connection_named(rabbitmq, name_a, "server A killed by the test")
                reply = await asyncio.wait_for(call, 2 * WAIT)
                assert reply.body == b"B:job"
                assert b_seen == [(b"job", True)]  # B got A's request, flagged redelivered
                ended = await asyncio.wait_for(server_a.wait_closed(), WAIT)
                assert isinstance(ended, leveret.ConnectionForced), ended
                a_release.set()  # A's handler ends; its reply cannot go out any more
        assert a_seen == [b"job"]
        assert pending(conn) == {}
        assert await message_count(conn, queue_name) == 0
    finally:
        a_release.set()
        await server_a.close()
        await server_b.close()
    await conn.delete_queue(queue_name)
    # Server A's consuming task ended with the connection's error; closing the server must
    # have retrieved it, or asyncio logs "Task exception was never retrieved" at finalization
    # (the flag asyncio checks then is Future._log_traceback).
    runner = serving_a._subscription._runner
    assert runner is not None
    assert runner.done()
    assert not runner._log_traceback  # checked before .exception(), which clears it
    assert isinstance(runner.exception(), leveret.ConnectionForced)


async def test_a_call_in_flight_when_the_client_reconnects_fails_at_once(
    conn: leveret.Connection, rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    # The reply-to address of a call names a queue exclusive to the connection: once that
    # connection is gone the reply can never arrive, so the call must fail with the connection's
    # error instead of waiting for its timeout; and calls after the reconnect work.
    client_name = f"rpc-client-{uuid.uuid4().hex[:8]}"
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: leveret.Message) -> bytes:
        if request.body == b"held":
            started.set()
            await release.wait()
        return b"echo:" + request.body

    await conn.declare_queue(queue_name)
    client = await leveret.connect(rabbitmq_url, name=client_name)
    try:
        async with conn.serve(queue_name, handler, concurrency=2):
            assert (await client.call(queue_name, b"warm", timeout=WAIT)).body == b"echo:warm"
            for round in range(2):  # twice: the second reconnect finds one reply consumer
                started.clear()
                release.clear()
                call = asyncio.ensure_future(client.call(queue_name, b"held", timeout=60))
                await asyncio.wait_for(started.wait(), WAIT)
                await close_connection_named(rabbitmq, client_name, f"reconnect {round}")
                with pytest.raises(leveret.ConnectionForced):
                    await asyncio.wait_for(call, WAIT)  # far below the call's timeout
                assert pending(client) == {}
                release.set()  # its reply goes to the dead channel's address
                await client.wait_connected(WAIT)
                reply = await client.call(queue_name, b"after", timeout=WAIT)
                assert reply.body == b"echo:after"
            sinks = [c for c in client._active_consumers if isinstance(c, _ReplySink)]
            assert len(sinks) == 1  # one reply consumer, not one more per reconnect
    finally:
        await client.close()
    await conn.delete_queue(queue_name)


# -- 6. requests without reply_to ----------------------------------------------------------------


async def test_a_request_without_reply_to_is_rejected_and_dead_lettered(
    conn: leveret.Connection, queue_name: str
) -> None:
    dlq = f"{queue_name}.dlq"
    handled: list[bytes] = []

    async def handler(request: leveret.Message) -> bytes:
        handled.append(request.body)
        return b"echo:" + request.body

    await conn.declare_queue(dlq)
    await conn.declare_queue(
        queue_name,
        arguments={"x-dead-letter-exchange": "", "x-dead-letter-routing-key": dlq},
    )
    async with conn.serve(queue_name, handler):
        await conn.publish(b"no reply_to", routing_key=queue_name)
        assert (await conn.call(queue_name, b"ok", timeout=WAIT)).body == b"echo:ok"

        async def dead_lettered() -> bool:
            return await message_count(conn, dlq) == 1

        await until(dead_lettered, "the request without reply_to was dead-lettered")
        assert (await conn.call(queue_name, b"still", timeout=WAIT)).body == b"echo:still"
    bad = await conn.get(dlq)
    assert bad is not None
    assert bad.body == b"no reply_to"
    deaths = bad.headers["x-death"]
    assert isinstance(deaths, list)
    assert deaths[0]["reason"] == "rejected"
    assert deaths[0]["count"] == 1  # rejected once, never requeued
    bad.ack()
    assert handled == [b"ok", b"still"]  # the handler never saw it
    assert await message_count(conn, queue_name) == 0
    await conn.delete_queue(queue_name)
    await conn.delete_queue(dlq)


async def test_a_request_without_reply_to_is_dropped_without_a_dead_letter_exchange(
    conn: leveret.Connection, queue_name: str
) -> None:
    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, echo):
        await conn.publish(b"no reply_to", routing_key=queue_name)
        assert (await conn.call(queue_name, b"ok", timeout=WAIT)).body == b"echo:ok"
        await until(lambda: _is_zero(message_count(conn, queue_name)), "the request was rejected")
        assert (await conn.call(queue_name, b"still", timeout=WAIT)).body == b"echo:still"
    assert await conn.get(queue_name) is None  # not requeued
    await conn.delete_queue(queue_name)


# -- 7. unroutable requests ----------------------------------------------------------------------


async def test_a_call_no_queue_takes_raises_message_returned_not_a_timeout(
    conn: leveret.Connection, queue_name: str
) -> None:
    nowhere = f"{queue_name}.nobody"
    async with asyncio.timeout(WAIT):  # far below the call's own timeout
        with pytest.raises(leveret.MessageReturned) as returned:
            await conn.call(nowhere, b"lost", timeout=60)
    assert returned.value.routing_key == nowhere
    assert returned.value.body == b"lost"
    assert pending(conn) == {}
    # The RPC channel is still good: a served queue answers.
    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, echo):
        assert (await conn.call(queue_name, b"found", timeout=WAIT)).body == b"echo:found"
    await conn.delete_queue(queue_name)


async def test_a_call_to_a_missing_exchange_fails_alone(
    conn: leveret.Connection, queue_name: str
) -> None:
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: leveret.Message) -> bytes:
        if request.body == b"held":
            started.set()
            await release.wait()
        return b"echo:" + request.body

    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, handler, concurrency=2):
        held = asyncio.ensure_future(conn.call(queue_name, b"held", timeout=WAIT))
        await asyncio.wait_for(started.wait(), WAIT)
        with pytest.raises(leveret.NotFound):
            await conn.call(queue_name, b"x", exchange=f"{queue_name}.missing", timeout=WAIT)
        # The 404 closed the channel the calls share; the call in flight still gets its reply.
        release.set()
        assert (await asyncio.wait_for(held, WAIT)).body == b"echo:held"
        assert pending(conn) == {}
        assert (await conn.call(queue_name, b"next", timeout=WAIT)).body == b"echo:next"
        # A named exchange that exists works as the default one does.
        await conn.bind_queue(queue_name, "amq.direct", routing_key=queue_name)
        reply = await conn.call(queue_name, b"direct", exchange="amq.direct", timeout=WAIT)
        assert reply.body == b"echo:direct"
    await conn.delete_queue(queue_name)


# -- 8. JSON ---------------------------------------------------------------------------------------


async def test_json_request_and_reply(conn: leveret.Connection, queue_name: str) -> None:
    async def handler(request: leveret.Message) -> dict[str, Any]:
        assert request.properties.content_type == "application/json"
        payload = request.json()
        return {"sum": payload["a"] + 1, "seen": payload}

    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, handler):
        reply = await conn.call(queue_name, {"a": 1}, timeout=WAIT)
    assert reply.properties.content_type == "application/json"
    assert reply.json() == {"sum": 2, "seen": {"a": 1}}
    await conn.delete_queue(queue_name)


# -- the blocking facade -------------------------------------------------------------------------


def test_blocking_calls_from_many_threads_each_get_their_own_reply(
    rabbitmq_url: str, queue_name: str
) -> None:
    handler_threads: set[str] = set()

    def handler(request: leveret.blocking.Message) -> bytes:
        if request.body == b"boom":
            raise KeyError("missing")
        handler_threads.add(threading.current_thread().name)
        return b"reply to " + request.body

    with leveret.blocking.connect(rabbitmq_url, name="rpc-blocking") as conn:
        conn.declare_queue(queue_name)
        with conn.serve(queue_name, handler, concurrency=8):
            bodies = [f"call {i} {uuid.uuid4().hex}".encode() for i in range(200)]
            with ThreadPoolExecutor(max_workers=20) as pool:
                replies = list(pool.map(lambda b: conn.call(queue_name, b, timeout=WAIT), bodies))
            assert [reply.body for reply in replies] == [b"reply to " + b for b in bodies]
            assert len({reply.properties.correlation_id for reply in replies}) == 200
            assert len(handler_threads) > 1

            with pytest.raises(leveret.RemoteError) as raised:
                conn.call(queue_name, b"boom", timeout=WAIT)
            assert raised.value.type_name == "KeyError"
            assert raised.value.remote_message == "'missing'"
            assert raised.value.remote_traceback is None
            assert conn.call(queue_name, b"after", timeout=WAIT).body == b"reply to after"
        client = conn._connection._rpc_client
        assert client is not None
        assert client._pending == {}
        assert conn.declare_queue(queue_name, passive=True).message_count == 0
        conn.delete_queue(queue_name)


async def test_a_no_ack_server_answers_and_the_broker_keeps_nothing_unacked(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str
) -> None:
    async def handler(request: leveret.Message) -> bytes:
        if request.body == b"boom":
            raise ValueError("no such thing")
        return b"ok:" + request.body

    await conn.declare_queue(queue_name)
    async with (
        leveret.connect(rabbitmq_url) as server_conn,
        server_conn.serve(queue_name, handler, concurrency=4, no_ack=True) as server,
    ):
        replies = await asyncio.gather(
            *(conn.call(queue_name, b"%d" % n, timeout=WAIT) for n in range(50))
        )
        assert [reply.body for reply in replies] == [b"ok:%d" % n for n in range(50)]
        with pytest.raises(leveret.RemoteError, match="no such thing"):
            await conn.call(queue_name, b"boom", timeout=WAIT)
        consumer = server._subscription._consumer
        assert consumer.no_ack
        assert consumer._channel is not None
        assert consumer._channel.stats.acked == 0  # nothing was ever acked: nothing to ack
    assert await message_count(conn, queue_name) == 0
    await conn.delete_queue(queue_name)


async def test_a_request_held_by_a_killed_no_ack_server_is_lost(
    conn: leveret.Connection, rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """What no_ack gives up: the request is not redelivered; its caller times out."""
    name_a = f"rpc-server-a-{uuid.uuid4().hex[:8]}"
    a_started = asyncio.Event()
    a_release = asyncio.Event()
    b_seen: list[bytes] = []

    async def handler_a(request: leveret.Message) -> bytes:
        a_started.set()
        await a_release.wait()
        return b"A"

    async def handler_b(request: leveret.Message) -> bytes:
        b_seen.append(request.body)
        return b"B"

    await conn.declare_queue(queue_name)
    server_a = await leveret.connect(rabbitmq_url, name=name_a, reconnect=False)
    server_b = await leveret.connect(rabbitmq_url, name="rpc-server-b")
    try:
        async with server_a.serve(queue_name, handler_a, concurrency=1, no_ack=True):
            call = asyncio.ensure_future(conn.call(queue_name, b"job", timeout=2))
            await asyncio.wait_for(a_started.wait(), WAIT)
            async with server_b.serve(queue_name, handler_b, concurrency=1, no_ack=True):
                await close_connection_named(rabbitmq, name_a, "server A killed by the test")
                with pytest.raises(leveret.RPCTimeout):
                    await asyncio.wait_for(call, WAIT)
                assert b_seen == []
                a_release.set()
        assert await message_count(conn, queue_name) == 0
    finally:
        a_release.set()
        await server_a.close()
        await server_b.close()
    await conn.delete_queue(queue_name)


async def test_serve_refuses_a_no_ack_that_is_not_a_bool(
    conn: leveret.Connection, queue_name: str
) -> None:
    with pytest.raises(TypeError, match="no_ack must be True or False, got 'yes'"):
        conn.serve(queue_name, echo, no_ack="yes")  # type: ignore[arg-type]


# -- 7. where replies come -----------------------------------------------------------------------


async def test_replies_come_to_an_exclusive_queue_that_goes_with_the_connection(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str
) -> None:
    reply_addresses: list[str | None] = []
    handler = echo_noting_reply_to(reply_addresses)
    await conn.declare_queue(queue_name)
    async with conn.serve(queue_name, handler):
        async with leveret.connect(rabbitmq_url) as client:
            assert (await client.call(queue_name, b"a", timeout=WAIT)).body == b"echo:a"
            assert (await client.call(queue_name, b"b", timeout=WAIT)).body == b"echo:b"
            reply_queue = reply_addresses[0]
            assert reply_queue is not None
            assert reply_queue.startswith("amq.gen-")
            assert reply_addresses == [reply_queue, reply_queue]  # one queue for all calls
            with pytest.raises(leveret.ResourceLocked):  # exclusive to the client's connection
                await conn.declare_queue(reply_queue, passive=True)
        with pytest.raises(leveret.NotFound):  # and gone with it
            await conn.declare_queue(reply_queue, passive=True)
    await conn.delete_queue(queue_name)


async def test_direct_reply_to_on_request(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str
) -> None:
    reply_addresses: list[str | None] = []
    handler = echo_noting_reply_to(reply_addresses)
    await conn.declare_queue(queue_name)
    async with (
        conn.serve(queue_name, handler),
        leveret.connect(rabbitmq_url, rpc_replies="direct") as client,
    ):
        replies = await asyncio.wait_for(
            asyncio.gather(*(client.call(queue_name, b"%d" % i) for i in range(20))), WAIT
        )
    assert [reply.body for reply in replies] == [b"echo:%d" % i for i in range(20)]
    assert all(
        address is not None and address.startswith("amq.rabbitmq.reply-to.")
        for address in reply_addresses
    ), reply_addresses
    await conn.delete_queue(queue_name)


async def test_a_user_refused_a_reply_queue_gets_replies_over_direct_reply_to(
    conn: leveret.Connection,
    rabbitmq: RabbitMQNode,
    queue_name: str,
    caplog: pytest.LogCaptureFixture,
) -> None:
    user, password = f"rpc-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmq.add_user(user, password, configure="", write=".*", read=".*")  # may declare nothing
    await conn.declare_queue(queue_name)
    try:
        async with conn.serve(queue_name, echo):
            url = f"amqp://{user}:{password}@127.0.0.1:{rabbitmq.port}/"
            async with leveret.connect(url) as client:
                with caplog.at_level(logging.WARNING, logger="leveret.rpc"):
                    first = await client.call(queue_name, b"first", timeout=WAIT)
                second = await client.call(queue_name, b"second", timeout=WAIT)
    finally:
        rabbitmq.delete_user(user)
    assert (first.body, second.body) == (b"echo:first", b"echo:second")
    refusals = [r for r in caplog.records if "direct reply-to" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert "403" in refusals[0].getMessage()
    await conn.delete_queue(queue_name)


async def test_a_vhost_at_its_queue_limit_gets_replies_over_direct_reply_to(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    vhost = f"leveret-test-rpc-{uuid.uuid4().hex[:8]}"
    await asyncio.to_thread(rabbitmq.add_vhost, vhost)
    url = rabbitmq_url.rstrip("/") + "/" + vhost
    try:
        async with leveret.connect(url) as server:
            await server.declare_queue("requests")
            await asyncio.to_thread(
                rabbitmq.ctl, "set_vhost_limits", "-p", vhost, '{"max-queues": 1}'
            )
            async with server.serve("requests", echo), leveret.connect(url) as client:
                with caplog.at_level(logging.WARNING, logger="leveret.rpc"):
                    reply = await client.call("requests", b"limited", timeout=WAIT)
    finally:
        await asyncio.to_thread(rabbitmq.delete_vhost, vhost)
    assert reply.body == b"echo:limited"
    refusals = [r for r in caplog.records if "direct reply-to" in r.getMessage()]
    assert len(refusals) == 1, caplog.text
    assert "406" in refusals[0].getMessage()


def test_connect_refuses_an_unknown_rpc_replies() -> None:
    with pytest.raises(ValueError, match="rpc_replies must be 'queue' or 'direct', got 'pigeon'"):
        leveret.connect("amqp://127.0.0.1/", rpc_replies="pigeon")  # type: ignore[arg-type]


async def test_a_deleted_reply_queue_fails_the_calls_waiting_on_it_and_the_next_call_works(
    conn: leveret.Connection, rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    reply_addresses: list[str | None] = []
    started = asyncio.Event()
    release = asyncio.Event()

    async def handler(request: leveret.Message) -> bytes:
        reply_addresses.append(request.properties.reply_to)
        if request.body == b"held":
            started.set()
            await release.wait()
        return b"echo:" + request.body

    await conn.declare_queue(queue_name)
    try:
        async with (
            conn.serve(queue_name, handler, concurrency=2),
            leveret.connect(rabbitmq_url) as client,
        ):
            assert (await client.call(queue_name, b"warm", timeout=WAIT)).body == b"echo:warm"
            channels_before = len(client._channels)
            call = asyncio.ensure_future(client.call(queue_name, b"held", timeout=60))
            await asyncio.wait_for(started.wait(), WAIT)
            first_queue = reply_addresses[0]
            assert first_queue is not None
            # Deleted by an operator (over AMQP only its own connection may: exclusive).
            await asyncio.to_thread(rabbitmq.ctl, "delete_queue", first_queue)
            with pytest.raises(leveret.LeveretError, match="cancelled the RPC reply consumer"):
                await asyncio.wait_for(call, WAIT)  # far below the call's timeout
            assert pending(client) == {}
            release.set()  # its reply has no queue to go to
            after = await client.call(queue_name, b"after", timeout=WAIT)
            assert after.body == b"echo:after"
            assert reply_addresses[-1] not in (None, first_queue)  # a new reply queue
            assert len(client._channels) == channels_before  # the old channel was closed
    finally:
        release.set()
    await conn.delete_queue(queue_name)
