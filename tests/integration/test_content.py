"""Message content through a real broker: bodies around frame boundaries, the 14
properties, and every header field type, via publish -> consume and publish -> get.

What a Python value in `Properties.headers` comes back as (checked by
`test_headers_every_field_type_round_trip`; wire type = AMQP 0-9-1 field type as
RabbitMQ's errata names it):

    sent (Python)                        wire         received (Python)
    -----------------------------------  -----------  --------------------------------------------
    str                                  S longstr    str
    bytes / bytearray / memoryview       x bytes      bytearray (equal to the bytes sent)
    bool                                 t            bool
    int -128 .. 127                      b            int
    int -32768 .. 32767                  s            int
    int 32768 .. 65535                   u            int
    int -2**31 .. 2**31-1                I            int
    int 2**31 .. 2**32-1                 i            int
    any other int in -2**63 .. 2**63-1   l            int   (outside that range: ValueError on publish)
    float, finite                        d (double)   float, bit-exact (-0.0 and subnormals too)
    float inf, -inf, nan                 d            RabbitMQ cannot parse these (Erlang floats are
                                                      finite): it closes the whole connection with
                                                      541 INTERNAL_ERROR; see the test for it below
    Decimal                              D            Decimal with the same digits and exponent when
                                                      the exponent is <= 0; Decimal("1E+2") comes
                                                      back as Decimal("100") (equal value)
    datetime, aware                      T (seconds)  datetime in UTC (tzinfo=datetime.UTC),
                                                      sub-second part dropped; before 1970:
                                                      ValueError on publish; after 2106-02-07
                                                      it comes back wrong (a bug, see
                                                      test_header_datetime_after_2106_round_trips)
    datetime, naive (taken as UTC)       T            datetime in UTC, aware
    None                                 V            None
    list / tuple                         A            list
    dict                                 F            dict

Properties: the 13 non-table properties come back with the same value and type
(an empty string is not sent at all and comes back as None; 0 is kept);
`timestamp` is always an aware UTC datetime with whole seconds (naive values are
taken as UTC, aware ones are converted, fractions of a second are dropped).
`headers=None` stays None (`msg.headers` is then {}), `headers={}` comes back as {}.
Bodies always come back as `bytes`, whatever buffer type was published.
"""

from __future__ import annotations

import asyncio
import datetime
import decimal
import hashlib
import math
import os
import re
import struct
from collections.abc import AsyncIterator
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

import pytest

import leveret

pytestmark = pytest.mark.integration

UTC = datetime.UTC
MiB = 1024 * 1024
TIMEOUT = 30.0  # per wait on the broker; generous, only hit when something hangs


# -- helpers ------------------------------------------------------------------------------


def with_query(url: str, **params: object) -> str:
    """`url` with query parameters added (or replaced)."""
    parts = urlsplit(url)
    query = dict(parse_qsl(parts.query))
    query.update({k: str(v) for k, v in params.items()})
    return urlunsplit(parts._replace(query=urlencode(query)))


async def consume_one(conn: leveret.Connection, queue: str) -> leveret.Message:
    """The next message from `queue` through a consumer, acked."""
    async with asyncio.timeout(TIMEOUT), conn.consume(queue, prefetch=1) as messages:
        msg = await anext(messages)
        assert msg.ack()
        return msg


async def consume_n(conn: leveret.Connection, queue: str, n: int) -> list[leveret.Message]:
    got: list[leveret.Message] = []
    async with asyncio.timeout(TIMEOUT), conn.consume(queue, prefetch=10) as messages:
        async for msg in messages:
            assert msg.ack()
            got.append(msg)
            if len(got) == n:
                break
    return got


async def get_one(conn: leveret.Connection, queue: str) -> leveret.Message:
    """basic.get, acked; the queue must not be empty."""
    async with asyncio.timeout(TIMEOUT):
        msg = await conn.get(queue)
    assert msg is not None, f"queue {queue!r} was empty"
    assert msg.ack()
    return msg


def assert_body(got: bytes, want: bytes) -> None:
    """Byte-for-byte equality without letting pytest diff megabytes."""
    assert type(got) is bytes, type(got)
    assert len(got) == len(want)
    if got != want:
        first = next(i for i, (a, b) in enumerate(zip(got, want, strict=True)) if a != b)
        pytest.fail(f"bodies of {len(want)} bytes differ first at offset {first}")


def assert_exact(got: Any, want: Any, path: str = "headers") -> None:
    """Equal value AND equal type, recursively; floats bit-exact, Decimals digit-exact."""
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
    elif isinstance(want, float):
        assert struct.pack(">d", got) == struct.pack(">d", want), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, decimal.Decimal):
        assert got.as_tuple() == want.as_tuple(), f"{path}: {got!r} != {want!r}"
    elif isinstance(want, datetime.datetime):
        assert got == want, f"{path}: {got!r} != {want!r}"
        assert got.tzinfo is UTC, f"{path}: tzinfo {got.tzinfo!r}, want datetime.UTC"
    else:
        assert got == want, f"{path}: {got!r} != {want!r}"


# -- fixtures --------------------------------------------------------------------------------


def safe_name(queue_name: str) -> str:
    # conftest's queue_name embeds the test id, and parametrized ids hold "[", "*", ...
    # which leveret refuses in queue names (pamqp's name check): keep what it allows.
    return re.sub(r"[^A-Za-z0-9_.:-]", "_", queue_name)


@pytest.fixture
async def conn(rabbitmq_url: str) -> AsyncIterator[leveret.Connection]:
    """Round trips here are verbatim: no message_id or timestamp added by leveret."""
    async with leveret.connect(rabbitmq_url, stamp_messages=False) as c:
        yield c


@pytest.fixture
async def queue(conn: leveret.Connection, queue_name: str) -> AsyncIterator[str]:
    """A plain queue any connection of the test can use; deleted afterwards."""
    name = safe_name(queue_name)
    await conn.declare_queue(name)
    yield name
    if not conn.is_closed:
        await conn.delete_queue(name)


@pytest.fixture
async def priority_queue(conn: leveret.Connection, queue_name: str) -> AsyncIterator[str]:
    name = safe_name(queue_name) + ".prio"
    await conn.declare_queue(name, arguments={"x-max-priority": 10})
    yield name
    if not conn.is_closed:
        await conn.delete_queue(name)


@pytest.fixture
async def small_frames(rabbitmq_url: str) -> AsyncIterator[leveret.Connection]:
    """A connection that asked for frame_max=4096 in its URL (the AMQP minimum)."""
    async with leveret.connect(with_query(rabbitmq_url, frame_max=4096), stamp_messages=False) as c:
        assert c.frame_max == 4096
        yield c


@pytest.fixture(params=["default_frames", "frame_max_4096"])
async def any_conn(
    request: pytest.FixtureRequest, conn: leveret.Connection, rabbitmq_url: str
) -> AsyncIterator[leveret.Connection]:
    """The shared connection (negotiated frame_max), then one with ?frame_max=4096."""
    if request.param == "default_frames":
        yield conn
        return
    async with leveret.connect(with_query(rabbitmq_url, frame_max=4096), stamp_messages=False) as c:
        assert c.frame_max == 4096
        yield c


# -- bodies -----------------------------------------------------------------------------------

# (multiple of frame_max, offset): a body frame carries at most frame_max - 8 bytes,
# so frame_max-9 and frame_max-8 fit one frame and frame_max-7 is the first to need two.
BODY_SIZES = [
    pytest.param(0, 0, id="0"),
    pytest.param(0, 1, id="1"),
    pytest.param(1, -9, id="frame_max-9"),
    pytest.param(1, -8, id="frame_max-8"),
    pytest.param(1, -7, id="frame_max-7"),
    pytest.param(1, 0, id="frame_max"),
    pytest.param(1, 1, id="frame_max+1"),
    pytest.param(2, 1, id="2*frame_max+1"),
]


@pytest.mark.parametrize(("factor", "offset"), BODY_SIZES)
async def test_body_round_trips_through_consume_and_get(
    any_conn: leveret.Connection, queue: str, factor: int, offset: int
) -> None:
    size = factor * any_conn.frame_max + offset
    body = os.urandom(size)

    await any_conn.publish(body, routing_key=queue)
    consumed = await consume_one(any_conn, queue)
    assert_body(consumed.body, body)

    await any_conn.publish(body, routing_key=queue)
    fetched = await get_one(any_conn, queue)
    assert_body(fetched.body, body)
    assert fetched.message_count == 0


async def test_16_mib_body_round_trips(conn: leveret.Connection, queue: str) -> None:
    body = os.urandom(16 * MiB)
    digest = hashlib.sha256(body).digest()

    await conn.publish(body, routing_key=queue)
    consumed = await consume_one(conn, queue)
    assert len(consumed.body) == len(body)
    assert hashlib.sha256(consumed.body).digest() == digest

    await conn.publish(body, routing_key=queue)
    fetched = await get_one(conn, queue)
    assert len(fetched.body) == len(body)
    assert hashlib.sha256(fetched.body).digest() == digest


async def test_many_small_frames_both_directions(
    conn: leveret.Connection, small_frames: leveret.Connection, queue: str
) -> None:
    """4 MiB in ~1000 frames of 4 KiB each way; the broker re-frames between connections."""
    body = os.urandom(4 * MiB)
    # published in 4096-byte frames, delivered in the default connection's frames
    await small_frames.publish(body, routing_key=queue)
    assert_body((await consume_one(conn, queue)).body, body)
    # published in large frames, delivered in 4096-byte frames
    await conn.publish(body, routing_key=queue)
    assert_body((await consume_one(small_frames, queue)).body, body)
    await conn.publish(body, routing_key=queue)
    assert_body((await get_one(small_frames, queue)).body, body)


async def test_multi_frame_deliveries_on_two_consumers_at_once(
    conn: leveret.Connection, small_frames: leveret.Connection, queue: str
) -> None:
    """Two consumers on one 4096-frame connection: their body frames may interleave."""
    other = queue + ".2"
    await conn.declare_queue(other, auto_delete=True)
    bodies = {q: [os.urandom(50_000 + i) for i in range(6)] for q in (queue, other)}
    for q, q_bodies in bodies.items():
        for body in q_bodies:
            await conn.publish(body, routing_key=q)

    got_a, got_b = await asyncio.gather(
        consume_n(small_frames, queue, 6), consume_n(small_frames, other, 6)
    )
    for msg, want in zip(got_a, bodies[queue], strict=True):
        assert_body(msg.body, want)
    for msg, want in zip(got_b, bodies[other], strict=True):
        assert_body(msg.body, want)


async def test_concurrent_multi_frame_publishes(
    small_frames: leveret.Connection, queue: str
) -> None:
    """Publishes from many tasks share a channel; each body's frames must stay together."""
    bodies = [os.urandom(20_000 + i) for i in range(20)]
    await asyncio.gather(*(small_frames.publish(b, routing_key=queue) for b in bodies))
    got = await consume_n(small_frames, queue, len(bodies))
    assert sorted(m.body for m in got) == sorted(bodies)


@pytest.mark.parametrize(
    "make_body",
    [
        pytest.param(lambda raw: bytearray(raw), id="bytearray"),
        pytest.param(lambda raw: memoryview(raw), id="memoryview"),
        pytest.param(lambda raw: memoryview(b"<<" + raw + b">>")[2:-2], id="memoryview-slice"),
        pytest.param(lambda raw: memoryview(bytearray(raw)).cast("I"), id="memoryview-uint32"),
    ],
)
async def test_buffer_bodies_are_accepted(
    any_conn: leveret.Connection, queue: str, make_body: Any
) -> None:
    raw = os.urandom(any_conn.frame_max * 2 + 4)  # a multiple of 4 for the cast, multi-frame
    body = make_body(raw)
    await any_conn.publish(body, routing_key=queue)
    assert_body((await consume_one(any_conn, queue)).body, raw)
    await any_conn.publish(body, routing_key=queue)
    assert_body((await get_one(any_conn, queue)).body, raw)


# -- properties ----------------------------------------------------------------------------------


def all_properties(user: str) -> leveret.Properties:
    return leveret.Properties(
        content_type="application/json",
        content_encoding="gzip",
        headers={"x-trace": "abc", "n": 7},
        delivery_mode=2,
        priority=7,
        correlation_id="corr-1",
        reply_to="replies.for.me",
        expiration="86400000",  # a day: never expires during the test
        message_id="msg-1",
        timestamp=datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
        message_type="order.created",
        user_id=user,  # RabbitMQ refuses a user_id other than the connection's user
        app_id="leveret-tests",
        cluster_id="cluster-a",
    )


async def test_all_14_properties_round_trip(conn: leveret.Connection, priority_queue: str) -> None:
    props = all_properties(conn.params.username)
    assert all(getattr(props, f) is not None for f in props.__slots__)  # all 14 are set

    await conn.publish(b"{}", routing_key=priority_queue, properties=props)
    consumed = await consume_one(conn, priority_queue)
    await conn.publish(b"{}", routing_key=priority_queue, properties=props)
    fetched = await get_one(conn, priority_queue)

    for msg in (consumed, fetched):
        assert msg.properties == props
        for field in props.__slots__:
            want = getattr(props, field)
            assert_exact(getattr(msg.properties, field), want, field)
        assert msg.headers == {"x-trace": "abc", "n": 7}


async def test_priority_orders_delivery(conn: leveret.Connection, priority_queue: str) -> None:
    """Priority is not just carried but honoured: proof the broker read it."""
    for priority in (1, 9, 5, 0):
        await conn.publish(
            str(priority).encode(),
            routing_key=priority_queue,
            properties=leveret.Properties(priority=priority),
        )
    got = [await get_one(conn, priority_queue) for _ in range(4)]
    assert [m.body for m in got] == [b"9", b"5", b"1", b"0"]
    assert [m.properties.priority for m in got] == [9, 5, 1, 0]


async def test_non_ascii_and_255_byte_short_strings(conn: leveret.Connection, queue: str) -> None:
    longest = "é" * 127 + "x"  # 255 bytes of UTF-8, the short string maximum
    assert len(longest.encode()) == 255
    props = leveret.Properties(
        content_type="text/plain; charset=utf-8",
        correlation_id=longest,
        message_id="ünïcødé ✓ 🐇",
        app_id="日本語",
        message_type=longest,
        reply_to=longest,
    )
    await conn.publish(b"x", routing_key=queue, properties=props)
    assert (await consume_one(conn, queue)).properties == props
    await conn.publish(b"x", routing_key=queue, properties=props)
    assert (await get_one(conn, queue)).properties == props


async def test_timestamp_naive_aware_and_fractional(conn: leveret.Connection, queue: str) -> None:
    sent_and_expected = [
        # aware UTC, whole seconds: unchanged
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        # naive: taken as UTC
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5),
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        # another zone: converted to UTC
        (
            datetime.datetime(
                2024, 1, 2, 5, 4, 5, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
            ),
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        # microseconds: dropped (the wire carries whole seconds)
        (
            datetime.datetime(2024, 1, 2, 3, 4, 5, 999_999, tzinfo=UTC),
            datetime.datetime(2024, 1, 2, 3, 4, 5, tzinfo=UTC),
        ),
        (datetime.datetime(1970, 1, 1, tzinfo=UTC), datetime.datetime(1970, 1, 1, tzinfo=UTC)),
    ]
    for sent, expected in sent_and_expected:
        props = leveret.Properties(timestamp=sent)
        await conn.publish(b"t", routing_key=queue, properties=props)
        await conn.publish(b"t", routing_key=queue, properties=props)
        for msg in (await consume_one(conn, queue), await get_one(conn, queue)):
            assert_exact(msg.properties.timestamp, expected, f"timestamp sent as {sent!r}")


async def test_no_properties_and_empty_headers(conn: leveret.Connection, queue: str) -> None:
    await conn.publish(b"a", routing_key=queue)
    await conn.publish(b"b", routing_key=queue, properties=leveret.Properties(headers={}))
    bare, empty = await get_one(conn, queue), await get_one(conn, queue)
    assert bare.properties == leveret.Properties()
    assert bare.properties.headers is None
    assert bare.headers == {}
    assert empty.properties.headers == {}
    assert empty.headers == {}


async def test_persistent_flag_sets_delivery_mode_2(conn: leveret.Connection, queue: str) -> None:
    await conn.publish(b"1", routing_key=queue, persistent=True)
    await conn.publish(
        b"2",
        routing_key=queue,
        persistent=True,
        properties=leveret.Properties(message_id="m", delivery_mode=1),  # the flag wins
    )
    await conn.publish(b"3", routing_key=queue)
    plain, overridden, transient = await consume_n(conn, queue, 3)
    assert plain.properties == leveret.Properties(delivery_mode=2)
    assert overridden.properties == leveret.Properties(message_id="m", delivery_mode=2)
    assert transient.properties.delivery_mode is None


async def test_redelivered_after_nack_requeue_when_consuming(
    conn: leveret.Connection, queue: str
) -> None:
    await conn.publish(b"again", routing_key=queue, properties=leveret.Properties(message_id="r"))
    async with asyncio.timeout(TIMEOUT), conn.consume(queue, prefetch=1) as messages:
        first = await anext(messages)
        assert first.redelivered is False
        assert first.nack(requeue=True) is True
        second = await anext(messages)
        assert second.redelivered is True
        assert second.body == b"again"
        assert second.properties.message_id == "r"
        assert second.delivery_tag != first.delivery_tag
        assert second.ack() is True


async def test_redelivered_after_nack_requeue_with_get(
    conn: leveret.Connection, queue: str
) -> None:
    await conn.publish(b"again", routing_key=queue)
    first = await conn.get(queue)
    assert first is not None
    assert first.redelivered is False
    assert first.nack(requeue=True) is True
    second = await get_one(conn, queue)
    assert second.redelivered is True
    assert second.body == b"again"


async def test_foreign_user_id_is_refused_by_the_broker(
    conn: leveret.Connection, queue: str
) -> None:
    with pytest.raises(leveret.PreconditionFailed):
        await conn.publish(
            b"x",
            routing_key=queue,
            properties=leveret.Properties(user_id=conn.params.username + "-not-me"),
            timeout=TIMEOUT,
        )
    # only the publishing channel died: the connection still works
    await conn.publish(b"ok", routing_key=queue)
    assert (await get_one(conn, queue)).body == b"ok"


# -- headers -------------------------------------------------------------------------------------

FLOATS = [0.1, 1 / 3, -2.5, 1e308, 5e-324, -0.0]

SENT_HEADERS: dict[str, Any] = {
    "str": "hello ✓",
    "str-empty": "",
    "bytes": b"\x00\x01\xfe\xff",
    "bytes-empty": b"",
    "bytearray": bytearray(b"\x00ba"),
    "memoryview": memoryview(b"\x00mv"),
    "true": True,
    "false": False,
    "int-0": 0,
    "int-n128": -128,
    "int-127": 127,
    "int-128": 128,
    "int-n32768": -32768,
    "int-n32769": -32769,
    "int-65535": 65535,
    "int-65536": 65536,
    "int-2p31": 2**31,
    "int-2p32-1": 2**32 - 1,
    "int-n2p31-1": -(2**31) - 1,
    "int-2p40": 2**40,
    "int-2p63-1": 2**63 - 1,
    "int-n2p63": -(2**63),
    **{f"float-{i}": f for i, f in enumerate(FLOATS)},
    "decimal": decimal.Decimal("3.14"),
    "decimal-negative": decimal.Decimal("-1.5"),
    "decimal-trailing-zero": decimal.Decimal("1.50"),
    "decimal-int": decimal.Decimal("42"),
    "decimal-positive-exponent": decimal.Decimal("1E+2"),
    "decimal-tiny": decimal.Decimal("-0.000000001"),
    "datetime": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    "datetime-naive": datetime.datetime(2024, 5, 6, 7, 8, 9),
    "datetime-offset": datetime.datetime(
        2024, 5, 6, 9, 8, 9, 500, tzinfo=datetime.timezone(datetime.timedelta(hours=2))
    ),
    "none": None,
    "list": [1, "two", b"3", 4.5, None, True, [decimal.Decimal("0.5"), []], {"k": -1}],
    "tuple": (1, 2),
    "list-empty": [],
    "dict": {"a": {"b": {"c": "deep", "d": [b"x", {"e": 2**40}]}}, "empty": {}},
    "k" * 128: "the longest key AMQP allows",
}

EXPECTED_HEADERS: dict[str, Any] = {
    **SENT_HEADERS,
    "bytes": bytearray(b"\x00\x01\xfe\xff"),
    "bytes-empty": bytearray(),
    "memoryview": bytearray(b"\x00mv"),
    "decimal-positive-exponent": decimal.Decimal("100"),
    "datetime-naive": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    "datetime-offset": datetime.datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC),
    "list": [
        1,
        "two",
        bytearray(b"3"),
        4.5,
        None,
        True,
        [decimal.Decimal("0.5"), []],
        {"k": -1},
    ],
    "tuple": [1, 2],
    "dict": {"a": {"b": {"c": "deep", "d": [bytearray(b"x"), {"e": 2**40}]}}, "empty": {}},
}


async def test_headers_every_field_type_round_trip(conn: leveret.Connection, queue: str) -> None:
    props = leveret.Properties(headers=SENT_HEADERS)
    await conn.publish(b"h", routing_key=queue, properties=props)
    consumed = await consume_one(conn, queue)
    await conn.publish(b"h", routing_key=queue, properties=props)
    fetched = await get_one(conn, queue)
    for msg in (consumed, fetched):
        assert_exact(msg.headers, EXPECTED_HEADERS)
        assert msg.properties.headers is msg.headers


async def test_large_headers_table_fits_in_one_frame(conn: leveret.Connection, queue: str) -> None:
    """A content header must fit one frame: 100 kB of headers with the default frame_max."""
    headers = {f"h{i:04}": "v" * 1000 for i in range(100)}
    await conn.publish(b"x", routing_key=queue, properties=leveret.Properties(headers=headers))
    assert (await consume_one(conn, queue)).headers == headers


async def test_header_datetime_after_2106_round_trips(conn: leveret.Connection, queue: str) -> None:
    """AMQP timestamps are 64-bit seconds; a date past 2**32 seconds must survive too.

    (Properties.timestamp is decoded by leveret itself and is checked alongside.)
    """
    when = datetime.datetime(2200, 1, 1, tzinfo=UTC)
    props = leveret.Properties(timestamp=when, headers={"when": when})
    await conn.publish(b"x", routing_key=queue, properties=props)
    msg = await get_one(conn, queue)
    assert msg.properties.timestamp == when
    assert msg.headers["when"] == when


@pytest.mark.parametrize(
    "props",
    [
        pytest.param(
            leveret.Properties(timestamp=datetime.datetime(1960, 1, 1, tzinfo=UTC)),
            id="timestamp",
        ),
        pytest.param(
            leveret.Properties(headers={"when": datetime.datetime(1960, 1, 1, tzinfo=UTC)}),
            id="header",
        ),
    ],
)
async def test_pre_epoch_datetime_is_refused_with_value_error(
    conn: leveret.Connection, queue: str, props: leveret.Properties
) -> None:
    """AMQP timestamps are unsigned: a clear ValueError (like other bad properties), not struct.error."""
    with pytest.raises(ValueError, match=r"timestamp|when"):
        await conn.publish(b"x", routing_key=queue, properties=props)
    await conn.publish(b"ok", routing_key=queue)
    assert (await get_one(conn, queue)).body == b"ok"


def big_header(frame_max: int, extra: int) -> leveret.Properties:
    """Headers {"big": "a" * n} whose content header frame payload is frame_max - 8 + extra.

    Payload = 12 (class, weight, body size) + 2 (flags) + 4 (table size)
    + 4 (key "big" with its length) + 5 (type S and length) + n = n + 27.
    """
    return leveret.Properties(headers={"big": "a" * (frame_max - 8 - 27 + extra)})


async def test_headers_filling_a_frame_exactly_round_trip(
    small_frames: leveret.Connection, queue: str
) -> None:
    props = big_header(small_frames.frame_max, 0)
    await small_frames.publish(b"x", routing_key=queue, properties=props)
    assert (await consume_one(small_frames, queue)).headers == props.headers
    await small_frames.publish(b"x", routing_key=queue, properties=props)
    assert (await get_one(small_frames, queue)).headers == props.headers


@pytest.mark.parametrize("extra", [1, 1000], ids=["one-byte-over", "1000-bytes-over"])
async def test_headers_too_big_for_frame_max_fail_the_publish_not_the_connection(
    small_frames: leveret.Connection, queue: str, extra: int
) -> None:
    """A content header cannot span frames; one over frame_max must be refused locally.

    1000 bytes over: RabbitMQ closes the whole connection (501 FRAME_ERROR,
    frame_too_large), failing every other publish, consumer and call on it.
    One byte over: RabbitMQ tolerates it (its check has a +1 slack), so the
    publish "succeeds" with an out-of-spec frame, which leveret itself then
    refuses when the broker delivers it back.
    """
    too_big = big_header(small_frames.frame_max, extra)
    with pytest.raises(ValueError, match="frame"):
        await small_frames.publish(b"x", routing_key=queue, properties=too_big, timeout=TIMEOUT)
    assert not small_frames.is_closed
    await small_frames.publish(b"ok", routing_key=queue)
    assert (await get_one(small_frames, queue)).body == b"ok"


async def test_headers_bigger_than_the_consumers_frame_max_are_delivered(
    conn: leveret.Connection, small_frames: leveret.Connection, queue: str
) -> None:
    """RabbitMQ never splits a content header to fit the receiver's frame_max: a message
    with 10 kB of headers published on a 128 KiB-frame connection reaches a 4 KiB-frame
    consumer as one oversized header frame. pika accepts it; leveret must too, or one
    such message (redelivered forever) kills every small-frame consumer's connection."""
    props = leveret.Properties(headers={"big": "a" * 10_000})
    await conn.publish(b"x", routing_key=queue, properties=props)
    await conn.publish(b"x", routing_key=queue, properties=props)
    assert (await get_one(small_frames, queue)).headers == props.headers
    assert (await consume_one(small_frames, queue)).headers == props.headers
    assert not small_frames.is_closed


@pytest.mark.parametrize("value", [math.inf, -math.inf, math.nan], ids=["inf", "-inf", "nan"])
async def test_non_finite_float_header_fails_the_publish_not_the_connection(
    conn: leveret.Connection, queue: str, value: float
) -> None:
    """RabbitMQ cannot parse a non-finite double in a table and closes the connection
    (541 INTERNAL_ERROR, function_clause in rabbit_binary_parser:parse_table), so the
    client must refuse it before sending, like an int out of the 64-bit range."""
    with pytest.raises(ValueError, match="x-float"):
        await conn.publish(
            b"x",
            routing_key=queue,
            properties=leveret.Properties(headers={"x-float": value}),
            timeout=TIMEOUT,
        )
    assert not conn.is_closed
    await conn.publish(b"ok", routing_key=queue)
    assert (await get_one(conn, queue)).body == b"ok"


async def test_int_outside_64_bits_fails_the_publish_not_the_connection(
    conn: leveret.Connection, queue: str
) -> None:
    for value in (2**63, -(2**63) - 1):
        with pytest.raises(ValueError, match="x-int"):
            await conn.publish(
                b"x", routing_key=queue, properties=leveret.Properties(headers={"x-int": value})
            )
    await conn.publish(b"ok", routing_key=queue)
    assert (await get_one(conn, queue)).body == b"ok"
