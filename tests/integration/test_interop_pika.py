"""Interoperability with pika (the reference Python client), both ways, on a real broker.

pika runs as `pika.BlockingConnection` in a worker thread (`asyncio.to_thread`).

pika quirks found here (compare by meaning, not by type):
  * doubles ('d') in a table come back from pika as *int*: its decoder wraps them in
    `long(...)`, so 2.5 reads as 2 (and 32-bit 'f' likewise). leveret sends the exact
    double (test_content checks it bit for bit); pika cannot publish a float header at
    all (UnsupportedAMQPFieldException), so floats only go leveret -> pika.
  * 'x' byte arrays come back from pika as `bytes`; leveret returns `bytearray`.
  * pika encodes every int as 'I' (32-bit) or 'l' (64-bit); leveret picks the smallest
    type (b/s/u/I/i/l). pika decodes all of leveret's widths, including the unsigned 'u'
    and 'i', to the same ints, but 'l' (and 'd', 'f') values come back as
    `pika.compat.long`, an int subclass whose repr ends in "L".
  * pika normalizes a Decimal before sending: Decimal("1.50") arrives as Decimal("1.5"),
    Decimal("100") as Decimal("1E+2") (scale 0, so leveret reads Decimal("100")).
  * pika's `BasicProperties.timestamp` is an int of seconds; leveret's is an aware UTC
    datetime. Table datetimes are aware UTC datetimes on both sides (naive ones are
    taken as UTC by both encoders).
  * pika's property field for the AMQP `type` is `type`; leveret's is `message_type`.
  * pika accepts `bytes` for short-string properties and table keys and sends them as
    they are, so it can produce non-UTF-8 short strings; it decodes them back to bytes.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import os
import re
from collections.abc import AsyncIterator
from typing import Any

import pika
import pytest
from pika.spec import BasicProperties

import leveret

pytestmark = pytest.mark.integration

UTC = datetime.UTC
MiB = 1024 * 1024
TIMEOUT = 30.0


# -- pika side (blocking; run in a thread) ------------------------------------------------------


def _pika_connect(url: str) -> pika.BlockingConnection:
    return pika.BlockingConnection(pika.URLParameters(url))


def pika_publish(url: str, queue: str, body: bytes, properties: BasicProperties) -> None:
    with _pika_connect(url) as connection:
        channel = connection.channel()
        channel.confirm_delivery()
        channel.basic_publish("", queue, body, properties, mandatory=True)


def pika_get(url: str, queue: str) -> tuple[Any, BasicProperties, bytes]:
    """(method, properties, body) of one message, acked; fails if the queue is empty."""
    with _pika_connect(url) as connection:
        channel = connection.channel()
        method, properties, body = channel.basic_get(queue, auto_ack=False)
        assert method is not None, f"pika found queue {queue!r} empty"
        channel.basic_ack(method.delivery_tag)
        return method, properties, body


def pika_consume_one(url: str, queue: str) -> tuple[Any, BasicProperties, bytes]:
    with _pika_connect(url) as connection:
        channel = connection.channel()
        for method, properties, body in channel.consume(queue, inactivity_timeout=TIMEOUT):
            assert method is not None, f"pika got nothing from {queue!r} in {TIMEOUT}s"
            channel.basic_ack(method.delivery_tag)
            channel.cancel()
            return method, properties, body
    raise AssertionError("unreachable")


# -- leveret side ----------------------------------------------------------------------------------


async def consume_one(conn: leveret.Connection, queue: str) -> leveret.Message:
    async with asyncio.timeout(TIMEOUT), conn.consume(queue, prefetch=1) as messages:
        msg = await anext(messages)
        assert msg.ack()
        return msg


async def get_one(conn: leveret.Connection, queue: str) -> leveret.Message:
    async with asyncio.timeout(TIMEOUT):
        msg = await conn.get(queue)
    assert msg is not None, f"queue {queue!r} was empty"
    assert msg.ack()
    return msg


def assert_exact(got: Any, want: Any, path: str = "headers") -> None:
    """Equal value and equal type, recursively; Decimals digit-exact, datetimes in UTC."""
    assert type(got) is type(want), (
        f"{path}: got {type(got).__name__} {got!r}, want {type(want).__name__} {want!r}"
    )
    if isinstance(want, dict):
        assert sorted(got) == sorted(want), path
        for key in want:
            assert_exact(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_exact(g, w, f"{path}[{i}]")
    elif isinstance(want, decimal.Decimal):
        assert got.as_tuple() == want.as_tuple(), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, datetime.datetime):
        assert got == want, f"{path}: {got!r} != {want!r}"
        assert got.tzinfo is UTC, f"{path}: tzinfo {got.tzinfo!r}"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


def assert_same_meaning(got: Any, want: Any, path: str = "headers") -> None:
    """What pika decoded equals what was meant: ints may be pika's long (an int
    subclass), bytes may be bytes or bytearray, datetimes must be aware."""
    if isinstance(want, dict):
        assert isinstance(got, dict), f"{path}: {got!r}"
        assert sorted(got) == sorted(want), path
        for key in want:
            assert_same_meaning(got[key], want[key], f"{path}[{key!r}]")
    elif isinstance(want, list):
        assert isinstance(got, list), f"{path}: {got!r}"
        assert len(got) == len(want), f"{path}: {got!r} != {want!r}"
        for i, (g, w) in enumerate(zip(got, want, strict=True)):
            assert_same_meaning(g, w, f"{path}[{i}]")
    elif isinstance(want, bool) or want is None:
        assert got is want, f"{path}: {got!r} is not {want!r}"
    elif isinstance(want, int):
        assert isinstance(got, int), f"{path}: {got!r}"
        assert not isinstance(got, bool), f"{path}: {got!r}"
        assert got == want, f"{path}: {got!r} != {want!r}"
    elif isinstance(want, (bytes, bytearray)):
        assert isinstance(got, (bytes, bytearray)), f"{path}: {got!r}"
        assert bytes(got) == bytes(want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, datetime.datetime):
        assert got == want, f"{path}: {got!r} != {want!r}"
        assert got.utcoffset() == datetime.timedelta(0), f"{path}: {got!r}"
    else:
        assert type(got) is type(want), f"{path}: {got!r} vs {want!r}"
        assert got == want, f"{path}: {got!r} != {want!r}"


def assert_body(got: bytes, want: bytes) -> None:
    assert type(got) is bytes, type(got)
    assert len(got) == len(want)
    assert hashlib.sha256(got).digest() == hashlib.sha256(want).digest()


@pytest.fixture
async def queue(conn: leveret.Connection, queue_name: str) -> AsyncIterator[str]:
    """A shared (non-exclusive) priority queue both clients can use; deleted afterwards."""
    name = re.sub(r"[^A-Za-z0-9_.:-]", "_", queue_name)  # param ids hold "[", ...
    await conn.declare_queue(name, arguments={"x-max-priority": 10})
    yield name
    if not conn.is_closed:
        await conn.delete_queue(name)


# -- leveret -> pika --------------------------------------------------------------------------------

WHEN = datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)

LEVERET_HEADERS: dict[str, Any] = {
    "str": "hello ✓",
    "bytes": b"\x00\x01\xfe\xff",
    "true": True,
    "false": False,
    "i8": -128,  # b
    "i16": -32769 + 1,  # s
    "u16": 65535,  # u
    "i32": -(2**31),  # I
    "u32": 2**31,  # i
    "i64": -(2**63),  # l
    "i64-big": 2**40,  # l
    "float": 2.5,
    "decimal": decimal.Decimal("3.14"),
    "decimal-negative": decimal.Decimal("-1.5"),
    "datetime": WHEN,
    "datetime-naive": datetime.datetime(2024, 5, 6, 7, 8, 9),
    "none": None,
    "list": [1, "a", b"b", [None, False], {"k": "v"}],
    "dict": {"outer": {"inner": [2**40, "deep"]}, "empty": {}},
}

# What pika decodes LEVERET_HEADERS to (same meaning; see the module docstring for why).
PIKA_SEES: dict[str, Any] = {
    **LEVERET_HEADERS,
    "float": 2,  # pika quirk: doubles decoded through long() -> truncated to int
    "datetime-naive": WHEN,
}


async def test_pika_reads_all_properties_and_headers_leveret_published(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    props = leveret.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers=LEVERET_HEADERS,
        delivery_mode=2,
        priority=5,
        correlation_id="corr-ü",
        reply_to="reply.queue",
        expiration="86400000",
        message_id="msg-1",
        timestamp=WHEN,
        message_type="order.created",
        user_id=conn.params.username,
        app_id="leveret",
        cluster_id="cluster-a",
    )
    await conn.publish(b'{"a": 1}', routing_key=queue, properties=props)
    method, got, body = await asyncio.to_thread(pika_get, rabbitmq_url, queue)

    assert body == b'{"a": 1}'
    assert method.routing_key == queue
    assert method.redelivered is False
    assert got.content_type == "application/json"
    assert got.content_encoding == "utf-8"
    assert got.delivery_mode == 2
    assert got.priority == 5
    assert got.correlation_id == "corr-ü"
    assert got.reply_to == "reply.queue"
    assert got.expiration == "86400000"
    assert got.message_id == "msg-1"
    assert got.timestamp == int(WHEN.timestamp())  # pika: int seconds
    assert got.type == "order.created"
    assert got.user_id == conn.params.username
    assert got.app_id == "leveret"
    assert got.cluster_id == "cluster-a"

    assert_same_meaning(got.headers, PIKA_SEES)
    assert type(got.headers["bytes"]) is bytes  # pika: 'x' -> bytes
    assert type(got.headers["i64"]) is pika.compat.long  # pika: 'l' -> long(int)
    assert type(got.headers["float"]) is pika.compat.long  # pika: 'd' -> long(int), truncated


async def test_pika_reads_leveret_persistent_flag_and_empty_properties(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    await conn.publish(b"p", routing_key=queue, persistent=True)
    _, got, body = await asyncio.to_thread(pika_get, rabbitmq_url, queue)
    assert body == b"p"
    assert got.delivery_mode == 2
    assert got.headers is None
    assert got.content_type is None


async def test_1_mib_body_leveret_to_pika(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    body = os.urandom(MiB)
    await conn.publish(body, routing_key=queue)
    _, _, via_consume = await asyncio.to_thread(pika_consume_one, rabbitmq_url, queue)
    assert_body(via_consume, body)
    await conn.publish(bytearray(body), routing_key=queue)
    _, _, via_get = await asyncio.to_thread(pika_get, rabbitmq_url, queue)
    assert_body(via_get, body)


# -- pika -> leveret --------------------------------------------------------------------------------

PIKA_HEADERS: dict[str, Any] = {
    "str": "hello ✓",
    "bytes": b"\x00\x01\xfe\xff",
    "true": True,
    "false": False,
    "small": -128,  # pika: I
    "i32": 2**31 - 1,  # I
    "i64": 2**31,  # l
    "i64-min": -(2**63),  # l
    "decimal": decimal.Decimal("3.14"),
    "decimal-negative": decimal.Decimal("-1.5"),
    "decimal-trailing-zero": decimal.Decimal("1.50"),
    "decimal-int": decimal.Decimal("100"),
    "datetime": WHEN,
    "datetime-naive": datetime.datetime(2024, 5, 6, 7, 8, 9),
    "none": None,
    "list": [1, "a", b"b", [None, False], {"k": "v"}],
    "dict": {"outer": {"inner": [2**40, "deep"]}, "empty": {}},
}

# What leveret decodes PIKA_HEADERS to, exactly (type included).
LEVERET_SEES: dict[str, Any] = {
    **PIKA_HEADERS,
    "bytes": bytearray(b"\x00\x01\xfe\xff"),  # 'x' -> bytearray
    "decimal-trailing-zero": decimal.Decimal("1.5"),  # pika normalized it before sending
    "decimal-int": decimal.Decimal("100"),  # sent as 1E+2 normalized -> scale 0, 100
    "datetime-naive": WHEN,
    "list": [1, "a", bytearray(b"b"), [None, False], {"k": "v"}],
}


def pika_all_properties(user: str) -> BasicProperties:
    return BasicProperties(
        content_type="text/plain",
        content_encoding="utf-8",
        headers=PIKA_HEADERS,
        delivery_mode=pika.DeliveryMode.Persistent,
        priority=9,
        correlation_id="corr-ü",
        reply_to="reply.queue",
        expiration="86400000",
        message_id="msg-pika",
        timestamp=int(WHEN.timestamp()),
        type="order.shipped",
        user_id=user,
        app_id="pika",
        cluster_id="cluster-b",
    )


async def test_leveret_reads_all_properties_and_headers_pika_published(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    pika_props = pika_all_properties(conn.params.username)
    await asyncio.to_thread(pika_publish, rabbitmq_url, queue, b"from pika", pika_props)
    consumed = await consume_one(conn, queue)
    await asyncio.to_thread(pika_publish, rabbitmq_url, queue, b"from pika", pika_props)
    fetched = await get_one(conn, queue)

    expected = leveret.Properties(
        content_type="text/plain",
        content_encoding="utf-8",
        headers=LEVERET_SEES,
        delivery_mode=2,
        priority=9,
        correlation_id="corr-ü",
        reply_to="reply.queue",
        expiration="86400000",
        message_id="msg-pika",
        timestamp=WHEN,  # pika's int seconds -> aware UTC datetime
        message_type="order.shipped",
        user_id=conn.params.username,
        app_id="pika",
        cluster_id="cluster-b",
    )
    for msg in (consumed, fetched):
        assert msg.body == b"from pika"
        assert msg.text() == "from pika"
        assert msg.routing_key == queue
        assert msg.exchange == ""
        for field in expected.__slots__:
            assert_exact(getattr(msg.properties, field), getattr(expected, field), field)
        assert msg.properties == expected


async def test_1_mib_body_pika_to_leveret(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    body = os.urandom(MiB)
    await asyncio.to_thread(pika_publish, rabbitmq_url, queue, body, BasicProperties())
    assert_body((await consume_one(conn, queue)).body, body)
    await asyncio.to_thread(pika_publish, rabbitmq_url, queue, body, BasicProperties())
    assert_body((await get_one(conn, queue)).body, body)


async def test_pika_redelivers_what_leveret_nacked(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    await conn.publish(b"twice", routing_key=queue)
    first = await conn.get(queue)
    assert first is not None
    assert first.nack(requeue=True)
    method, _, body = await asyncio.to_thread(pika_get, rabbitmq_url, queue)
    assert body == b"twice"
    assert method.redelivered is True


# -- non-UTF-8 short strings (pika can send them; leveret must survive them) -----------------------


async def test_non_utf8_short_string_property_survives_a_round_trip(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    """leveret decodes a non-UTF-8 short string with surrogateescape so no byte is lost;
    the value must then also be publishable again (an RPC server echoing a
    correlation_id, a message being forwarded), arriving byte-identical."""
    raw = b"\xff\x00id-\xc3"
    await asyncio.to_thread(
        pika_publish, rabbitmq_url, queue, b"x", BasicProperties(correlation_id=raw)
    )
    msg = await get_one(conn, queue)
    correlation_id = msg.properties.correlation_id
    assert correlation_id is not None
    assert correlation_id.encode("utf-8", "surrogateescape") == raw

    await conn.publish(b"echo", routing_key=queue, properties=msg.properties)
    _, got, body = await asyncio.to_thread(pika_get, rabbitmq_url, queue)
    assert body == b"echo"
    assert got.correlation_id == raw  # pika hands back non-UTF-8 as bytes


async def test_non_utf8_header_key_does_not_make_the_message_unreadable(
    conn: leveret.Connection, queue: str, rabbitmq_url: str
) -> None:
    """A table key that is not UTF-8 (pika sends bytes keys as they are) must not make
    `msg.properties` raise; short-string values in the same position are decoded
    leniently (surrogateescape), keys should be too."""
    raw_key = b"\xffkey"
    props = BasicProperties(message_id="m-1", headers={raw_key: 1, "ok": "yes"})
    await asyncio.to_thread(pika_publish, rabbitmq_url, queue, b"body", props)
    msg = await get_one(conn, queue)
    assert msg.body == b"body"
    assert msg.properties.message_id == "m-1"
    assert msg.headers["ok"] == "yes"
    assert msg.headers[raw_key.decode("utf-8", "surrogateescape")] == 1
    assert not conn.is_closed
