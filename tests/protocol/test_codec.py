"""The hand-written codec paths against pamqp, byte for byte, and its documented deviations."""

from __future__ import annotations

import dataclasses
import datetime
import decimal
import re
import struct
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import encode as pamqp_encode

from leveret import Properties
from leveret.exceptions import RemoteProtocolError
from leveret.protocol import AMQPConnection, encode_properties, encode_shortstr, encode_table
from leveret.protocol._codec import (
    EMPTY_PROPERTIES_BYTES,
    PERSISTENT_PROPERTIES_BYTES,
    decode_properties,
    decode_rpc_fields,
    decode_table,
    publish_frames,
)
from tests.protocol.frames import F, handshake, open_channel

UTC = datetime.UTC
MAX_BODY_FRAME = 4096 - 8  # with the broker tuning frame_max to 4096

# -- strategies ------------------------------------------------------------------

# At most 4 bytes per code point, so 63 characters always fit a 255-byte short string.
shortstrs = st.text(min_size=1, max_size=63)
keys = st.text(max_size=32)  # at most 128 bytes
table_ints = st.one_of(
    st.integers(-(2**7), 2**7 - 1),
    st.integers(-(2**15), 2**15 - 1),
    st.integers(0, 2**16 - 1),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 2**32 - 1),
    st.integers(-(2**63), 2**63 - 1),
)
decimals = st.builds(
    lambda unscaled, scale: decimal.Decimal(unscaled).scaleb(-scale),
    st.integers(-(2**31), 2**31 - 1),
    st.integers(0, 12),
)


def whole_seconds(max_year: int) -> st.SearchStrategy[datetime.datetime]:
    return st.datetimes(
        min_value=datetime.datetime(1970, 1, 1),
        max_value=datetime.datetime(max_year, 1, 1),
        timezones=st.just(UTC),
    ).map(lambda d: d.replace(microsecond=0))


datetimes = whole_seconds(9999)


def field_values(*extra: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    leaves = st.one_of(
        table_ints,
        st.text(max_size=20),
        st.booleans(),
        st.none(),
        datetimes,
        decimals,
        st.binary(max_size=8).map(bytearray),
        *extra,
    )
    return st.recursive(
        leaves,
        lambda children: (
            st.lists(children, max_size=3) | st.dictionaries(keys, children, max_size=3)
        ),
        max_leaves=8,
    )


# What pamqp encodes the same way: no float (pamqp writes 32-bit 'f'), no bytes (pamqp wants bytearray).
pamqp_headers = st.dictionaries(keys, field_values(), max_size=5)
# Everything leveret accepts, for round trips.
any_headers = st.dictionaries(
    keys,
    field_values(st.floats(allow_nan=False, allow_infinity=False), st.binary(max_size=8)),
    max_size=5,
)


def properties(*, roundtrip: bool) -> st.SearchStrategy[Properties]:
    def opt(strategy: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
        return st.none() | strategy

    return st.builds(
        Properties,
        content_type=opt(shortstrs),
        content_encoding=opt(shortstrs),
        headers=opt(any_headers if roundtrip else pamqp_headers),
        # pamqp refuses delivery modes other than 1 and 2; the wire carries an octet.
        delivery_mode=opt(st.integers(0, 255) if roundtrip else st.sampled_from([1, 2])),
        priority=opt(st.integers(0, 255)),
        correlation_id=opt(shortstrs),
        reply_to=opt(shortstrs),
        expiration=opt(st.integers(0, 2**40).map(str)),
        message_id=opt(shortstrs),
        timestamp=opt(datetimes),
        message_type=opt(shortstrs),
        user_id=opt(shortstrs),
        app_id=opt(shortstrs),
        # pamqp refuses a non-empty cluster_id.
        cluster_id=opt(shortstrs) if roundtrip else st.none(),
    )


def pamqp_properties(p: Properties) -> commands.Basic.Properties:
    values = {f.name: getattr(p, f.name) for f in dataclasses.fields(p) if f.name != "cluster_id"}
    return commands.Basic.Properties(**values)


ALL_BUT_CLUSTER_ID = Properties(
    content_type="application/json",
    content_encoding="gzip",
    headers={"x-retries": 3, "nested": {"list": [1, "two", None]}},
    delivery_mode=2,
    priority=9,
    correlation_id="corr-1",
    reply_to="amq.rabbitmq.reply-to",
    expiration="60000",
    message_id="msg-1",
    timestamp=datetime.datetime(2024, 5, 17, 12, 30, 45, tzinfo=UTC),
    message_type="order.created",
    user_id="guest",
    app_id="billing",
)

# -- publish, ack, nack, reject frames ------------------------------------------------


@pytest.fixture
def small_frames() -> tuple[AMQPConnection, int]:
    conn = handshake(
        AMQPConnection(frame_max=4096), tune=(2047, 131072, 60), expect_tune_ok=(2047, 4096, 60)
    )
    assert conn.max_body_frame == MAX_BODY_FRAME
    return conn, open_channel(conn)


@pytest.mark.parametrize(
    "size",
    [
        0,
        1,
        MAX_BODY_FRAME - 1,
        MAX_BODY_FRAME,
        MAX_BODY_FRAME + 1,
        2 * MAX_BODY_FRAME,
        2 * MAX_BODY_FRAME + 1,
    ],
)
@pytest.mark.parametrize("mandatory", [False, True])
def test_publish_frames_match_pamqp(
    small_frames: tuple[AMQPConnection, int], size: int, mandatory: bool
) -> None:
    """Method, header and bodies split at frame_max - 8, as pamqp writes them."""
    conn, ch = small_frames
    body = bytes(i % 251 for i in range(size))
    conn.publish(
        ch,
        encode_shortstr("amq.topic", "exchange"),
        encode_shortstr("orders.eu", "routing_key"),
        body,
        encode_properties(ALL_BUT_CLUSTER_ID),
        mandatory,
    )
    publish = commands.Basic.Publish(
        exchange="amq.topic", routing_key="orders.eu", mandatory=mandatory
    )
    expected = F.content(ch, publish, body, pamqp_properties(ALL_BUT_CLUSTER_ID), MAX_BODY_FRAME)
    assert conn.data_to_send() == expected


@settings(max_examples=300, deadline=None)
@given(
    channel=st.integers(1, 65535),
    exchange=st.from_regex(r"[a-zA-Z0-9_.:-]{0,40}", fullmatch=True),
    routing_key=st.text(max_size=60),
    mandatory=st.booleans(),
    body=st.binary(max_size=3 * 64),
    max_body_frame=st.integers(1, 100),
)
def test_publish_frames_match_pamqp_for_any_names_and_sizes(
    channel: int, exchange: str, routing_key: str, mandatory: bool, body: bytes, max_body_frame: int
) -> None:
    """The hand-written publish (cached method frames, merged packs) is pamqp's, byte for byte."""
    properties = Properties(message_id="m", timestamp=datetime.datetime(2026, 1, 1))
    for _ in range(2):  # the second time from the method frame cache
        frames = publish_frames(
            channel,
            encode_shortstr(exchange, "exchange"),
            encode_shortstr(routing_key, "routing_key"),
            mandatory,
            body,
            encode_properties(properties),
            max_body_frame,
        )
        publish = commands.Basic.Publish(
            exchange=exchange, routing_key=routing_key, mandatory=mandatory
        )
        expected = F.content(channel, publish, body, pamqp_properties(properties), max_body_frame)
        assert b"".join(frames) == expected


def test_publish_body_frame_count(small_frames: tuple[AMQPConnection, int]) -> None:
    conn, ch = small_frames
    conn.publish(ch, b"\x00", b"\x01q", b"x" * (2 * MAX_BODY_FRAME + 1), EMPTY_PROPERTIES_BYTES)
    out = conn.data_to_send()
    assert out.count(struct.pack(">BHI", 3, ch, MAX_BODY_FRAME)) == 2
    assert out.endswith(struct.pack(">BHI", 3, ch, 1) + b"x\xce")


def test_content_header_over_frame_max_is_refused(small_frames: tuple[AMQPConnection, int]) -> None:
    """A content header cannot be split; the broker would close the connection (501)."""
    conn, ch = small_frames
    properties = encode_properties(Properties(headers={"big": "x" * MAX_BODY_FRAME}))
    with pytest.raises(
        ValueError, match=r"over the 4088 a content header frame can carry with frame_max 4096"
    ):
        conn.publish(ch, b"\x00", b"\x01q", b"body", properties)
    assert conn.data_to_send() == b""
    overhead = len(encode_properties(Properties(headers={"big": ""})))
    fits = encode_properties(Properties(headers={"big": "x" * (MAX_BODY_FRAME - 12 - overhead)}))
    assert len(fits) + 12 == MAX_BODY_FRAME
    conn.publish(ch, b"\x00", b"\x01q", b"body", fits)
    assert conn.data_to_send()


def test_take_output_pieces_join_to_the_same_bytes(
    small_frames: tuple[AMQPConnection, int],
) -> None:
    conn, ch = small_frames
    conn.publish(ch, b"\x00", b"\x01q", b"hello", EMPTY_PROPERTIES_BYTES)
    pieces = conn.take_output()
    assert b"".join(pieces) == F.content(ch, commands.Basic.Publish(routing_key="q"), b"hello")
    assert conn.take_output() == []


@pytest.mark.parametrize("tag", [1, 2**32, 2**63 - 1])  # pamqp packs longlong signed
@pytest.mark.parametrize("multiple", [False, True])
def test_ack_frame_matches_pamqp(tag: int, multiple: bool) -> None:
    conn = handshake()
    ch = open_channel(conn)
    assert conn.ack(ch, tag, multiple=multiple)
    assert conn.data_to_send() == F.method(ch, commands.Basic.Ack(tag, multiple))


@pytest.mark.parametrize("tag", [1, 2**63 - 1])
@pytest.mark.parametrize("multiple", [False, True])
@pytest.mark.parametrize("requeue", [False, True])
def test_nack_frame_matches_pamqp(tag: int, multiple: bool, requeue: bool) -> None:
    conn = handshake()
    ch = open_channel(conn)
    assert conn.nack(ch, tag, multiple=multiple, requeue=requeue)
    assert conn.data_to_send() == F.method(ch, commands.Basic.Nack(tag, multiple, requeue))


@pytest.mark.parametrize("tag", [1, 2**63 - 1])
@pytest.mark.parametrize("requeue", [False, True])
def test_reject_frame_matches_pamqp(tag: int, requeue: bool) -> None:
    conn = handshake()
    ch = open_channel(conn)
    assert conn.reject(ch, tag, requeue=requeue)
    assert conn.data_to_send() == F.method(ch, commands.Basic.Reject(tag, requeue))


def test_settle_tags_use_all_64_bits() -> None:
    """The spec's longlong is unsigned; pamqp cannot encode tags past 2**63 - 1."""
    conn = handshake()
    ch = open_channel(conn)
    assert conn.ack(ch, 2**64 - 1)
    assert conn.data_to_send() == struct.pack(">BHIHHQB", 1, ch, 13, 60, 80, 2**64 - 1, 0) + b"\xce"


# -- properties ------------------------------------------------------------------------


def test_empty_and_persistent_constants() -> None:
    assert encode_properties(Properties()) == EMPTY_PROPERTIES_BYTES
    assert encode_properties(Properties(), persistent=True) == PERSISTENT_PROPERTIES_BYTES
    assert commands.Basic.Properties(delivery_mode=2).marshal() == PERSISTENT_PROPERTIES_BYTES


def test_persistent_overrides_delivery_mode() -> None:
    p = Properties(delivery_mode=1, priority=3)
    expected = commands.Basic.Properties(delivery_mode=2, priority=3).marshal()
    assert encode_properties(p, persistent=True) == expected


@pytest.mark.parametrize(
    "name", [f.name for f in dataclasses.fields(Properties) if f.name != "cluster_id"]
)
def test_each_property_alone_matches_pamqp(name: str) -> None:
    p = Properties(**{name: getattr(ALL_BUT_CLUSTER_ID, name)})
    assert encode_properties(p) == pamqp_properties(p).marshal()
    assert decode_properties(encode_properties(p)) == p


def test_all_properties_match_pamqp() -> None:
    assert encode_properties(ALL_BUT_CLUSTER_ID) == pamqp_properties(ALL_BUT_CLUSTER_ID).marshal()


def test_cluster_id_round_trips() -> None:
    """pamqp refuses cluster_id; it is the last property, flag 0x0004."""
    with_cluster = ALL_BUT_CLUSTER_ID.replace(cluster_id="rabbit@node1")
    encoded = encode_properties(with_cluster)
    without = encode_properties(ALL_BUT_CLUSTER_ID)
    (flags,) = struct.unpack_from(">H", without)
    assert encoded == struct.pack(">H", flags | 0x0004) + without[2:] + b"\x0crabbit@node1"
    assert decode_properties(encoded) == with_cluster


def test_empty_strings_are_omitted_like_pamqp() -> None:
    """An empty short string is "not set" on the wire, so it decodes as None."""
    p = Properties(content_type="", message_id="", expiration="")
    assert encode_properties(p) == commands.Basic.Properties(content_type="").marshal()
    assert encode_properties(p) == EMPTY_PROPERTIES_BYTES
    assert decode_properties(encode_properties(p)) == Properties()


def test_naive_timestamp_is_utc() -> None:
    naive = datetime.datetime(2024, 1, 2, 3, 4, 5)
    aware = naive.replace(tzinfo=UTC)
    assert encode_properties(Properties(timestamp=naive)) == encode_properties(
        Properties(timestamp=aware)
    )
    decoded = decode_properties(encode_properties(Properties(timestamp=naive)))
    assert decoded.timestamp == aware
    assert decoded.timestamp is not None
    assert decoded.timestamp.tzinfo is not None


def test_timestamp_keeps_whole_seconds() -> None:
    offset = datetime.timezone(datetime.timedelta(hours=5))
    moment = datetime.datetime(2024, 1, 2, 3, 4, 5, 999_999, tzinfo=offset)
    decoded = decode_properties(encode_properties(Properties(timestamp=moment)))
    assert decoded.timestamp == moment.replace(microsecond=0)


@settings(max_examples=100, deadline=None)
@given(properties(roundtrip=False))
def test_generated_properties_match_pamqp(p: Properties) -> None:
    assert encode_properties(p) == pamqp_properties(p).marshal()


@settings(max_examples=100, deadline=None)
@given(properties(roundtrip=True))
def test_generated_properties_round_trip(p: Properties) -> None:
    assert decode_properties(encode_properties(p)) == p


@settings(max_examples=300, deadline=None)
@given(properties(roundtrip=False))
def test_rpc_fields_are_what_the_full_decode_says(p: Properties) -> None:
    raw = encode_properties(p)
    full = decode_properties(raw)
    assert decode_rpc_fields(raw) == (full.correlation_id, full.reply_to, full.headers is not None)


@settings(max_examples=500, deadline=None)
@given(st.binary(min_size=2, max_size=80))
def test_rpc_fields_of_any_bytes_agree_with_the_full_decode_or_raise_a_protocol_error(
    raw: bytes,
) -> None:
    try:
        fields = decode_rpc_fields(raw)
    except RemoteProtocolError:
        with pytest.raises(RemoteProtocolError):  # no field the fast path reads is lenient
            decode_properties(raw)
        return
    try:
        full = decode_properties(raw)
    except RemoteProtocolError:
        return  # malformed past reply_to, which the fast path never reads
    assert fields == (full.correlation_id, full.reply_to, full.headers is not None)


# -- field tables ---------------------------------------------------------------------------

INT_BOUNDARIES = [
    -(2**63),
    -(2**31) - 1,
    -(2**31),
    -32769,
    -32768,
    -129,
    -128,
    -1,
    0,
    127,
    128,
    32767,
    32768,
    65535,
    65536,
    2**31 - 1,
    2**31,
    2**32 - 1,
    2**32,
    2**63 - 1,
]


@pytest.mark.parametrize("value", INT_BOUNDARIES)
def test_int_widths_match_pamqp(value: int) -> None:
    table = {"n": value}
    assert encode_table(table) == pamqp_encode.field_table(table)
    assert decode_table(encode_table(table)) == table


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("1.5"),
        decimal.Decimal("-0.001"),
        decimal.Decimal("1E+3"),
        decimal.Decimal(7),
    ],
)
def test_decimals_match_pamqp(value: decimal.Decimal) -> None:
    table = {"d": value}
    assert encode_table(table) == pamqp_encode.field_table(table)
    assert decode_table(encode_table(table)) == table


def test_empty_table() -> None:
    assert encode_table(None) == encode_table({}) == b"\x00\x00\x00\x00"
    assert decode_table(b"\x00\x00\x00\x00") == {}


@settings(max_examples=100, deadline=None)
@given(pamqp_headers)
def test_generated_tables_match_pamqp(table: dict[str, Any]) -> None:
    assert encode_table(table) == pamqp_encode.field_table(table)


@settings(max_examples=100, deadline=None)
@given(any_headers)
def test_generated_tables_round_trip(table: dict[str, Any]) -> None:
    assert decode_table(encode_table(table)) == table


def test_float_is_a_64_bit_double() -> None:
    """Deviation from pamqp ('f', 32-bit): a float survives exactly."""
    table = {"f": 0.1}
    assert encode_table(table) == b"\x00\x00\x00\x0b\x01fd" + struct.pack(">d", 0.1)
    assert decode_table(encode_table(table))["f"] == 0.1
    assert pamqp_encode.field_table(table) != encode_table(table)


def test_header_timestamps_past_2106_stay_seconds() -> None:
    """pamqp reads table timestamps above 2**32 as milliseconds; leveret does not."""
    table = {"at": datetime.datetime(2200, 1, 1, tzinfo=UTC)}
    assert decode_table(encode_table(table)) == table


def test_non_utf8_strings_from_a_peer_re_encode_intact() -> None:
    """A broker relaying another client's bad bytes: decoding must not lose them."""
    raw = b"\x00\x00\x00\x09\x01kS\x00\x00\x00\x02\xff\xfe"
    table = decode_table(raw)
    assert isinstance(table["k"], str)
    assert encode_table(table) == raw


def test_bytes_are_accepted_as_byte_arrays() -> None:
    """Deviation from pamqp (bytearray only): bytes encode as 'x' and decode bytes-equal."""
    table = {"b": b"\x00\xffraw"}
    assert encode_table(table) == pamqp_encode.field_table({"b": bytearray(b"\x00\xffraw")})
    assert decode_table(encode_table(table))["b"] == b"\x00\xffraw"
    with pytest.raises(TypeError):
        pamqp_encode.field_table(table)


# -- bad input ------------------------------------------------------------------------------


def test_shortstr_at_the_limit_is_accepted() -> None:
    assert encode_shortstr("k" * 255, "routing_key") == b"\xff" + b"k" * 255


@pytest.mark.parametrize("value", ["k" * 256, "é" * 128])
def test_routing_key_over_255_bytes(value: str) -> None:
    """The limit is in encoded bytes: 128 'é' are 256 bytes."""
    with pytest.raises(
        ValueError, match=r"routing_key is 256 bytes encoded, over the AMQP limit of 255"
    ):
        encode_shortstr(value, "routing_key")


def test_shortstr_must_be_str() -> None:
    with pytest.raises(TypeError, match=r"exchange must be a str, got bytes: b'ex'"):
        encode_shortstr(b"ex", "exchange")  # type: ignore[arg-type]


def test_long_property_names_the_field() -> None:
    with pytest.raises(ValueError, match=r"correlation_id is 300 bytes"):
        encode_properties(Properties(correlation_id="c" * 300))


def test_header_key_over_128_bytes() -> None:
    """pamqp silently truncates the key; leveret refuses it."""
    key = "k" * 129
    with pytest.raises(
        ValueError, match=re.escape(f"headers key is over the AMQP limit of 128 bytes: {key!r}")
    ):
        encode_properties(Properties(headers={key: 1}))
    assert encode_table({"k" * 128: 1})  # exactly 128 is fine


@pytest.mark.parametrize("value", [object(), {1, 2}, 1 + 2j])
def test_unencodable_header_value(value: object) -> None:
    with pytest.raises(
        TypeError,
        match=re.escape(
            f"headers['bad'] has a type AMQP tables cannot carry: {type(value).__name__}"
        ),
    ):
        encode_properties(Properties(headers={"bad": value}))


def test_unencodable_value_deep_inside_names_its_path() -> None:
    with pytest.raises(TypeError, match=re.escape("headers['outer']['list'][1] has a type")):
        encode_table({"outer": {"list": [1, {3}]}}, "headers")


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**64 - 1, 10**30])
def test_int_over_64_bits(value: int) -> None:
    with pytest.raises(
        ValueError,
        match=re.escape(f"table['n'] is out of the 64-bit range AMQP can carry: {value!r}"),
    ):
        encode_table({"n": value})


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_float(value: float) -> None:
    """RabbitMQ cannot parse them and would close the whole connection (541)."""
    with pytest.raises(
        ValueError, match=re.escape(f"headers['f'] is {value!r}, which RabbitMQ cannot accept")
    ):
        encode_properties(Properties(headers={"f": value}))


def test_table_key_must_be_str() -> None:
    with pytest.raises(TypeError, match=r"key must be a str, got int: 1"):
        encode_table({1: "x"})  # type: ignore[dict-item]


@pytest.mark.parametrize(
    "value",
    [
        decimal.Decimal("NaN"),
        decimal.Decimal("Infinity"),
        decimal.Decimal("1E+10"),
        decimal.Decimal("1." + "0" * 300),
    ],
)
def test_decimal_that_does_not_fit(value: decimal.Decimal) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(value))):
        encode_table({"d": value})


@pytest.mark.parametrize("value", ["abc", "-1", "1.5", " 10", "١٢"])
def test_non_numeric_expiration(value: str) -> None:
    """RabbitMQ would close the channel (406); refuse before anything is queued."""
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"expiration must be a string of a non-negative integer (milliseconds), got {value!r}"
        ),
    ):
        encode_properties(Properties(expiration=value))


def test_int_expiration_is_refused() -> None:
    with pytest.raises(ValueError, match=r"got 60000"):
        encode_properties(Properties(expiration=60000))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("priority", 300),
        ("priority", -1),
        ("priority", True),
        ("delivery_mode", 256),
        ("delivery_mode", "2"),
    ],
)
def test_octet_out_of_range(name: str, value: object) -> None:
    with pytest.raises(
        ValueError, match=re.escape(f"{name} must be an int from 0 to 255, got {value!r}")
    ):
        encode_properties(Properties(**{name: value}))


def test_timestamp_before_1970() -> None:
    moment = datetime.datetime(1969, 12, 31, 23, 59, 59, tzinfo=UTC)
    with pytest.raises(
        ValueError,
        match=re.escape(
            f"timestamp is before 1970, which AMQP timestamps cannot carry: {moment!r}"
        ),
    ):
        encode_properties(Properties(timestamp=moment))
    with pytest.raises(ValueError, match=r"headers\['at'\] is before 1970"):
        encode_properties(Properties(headers={"at": moment}))


def test_timestamp_must_be_a_datetime() -> None:
    with pytest.raises(TypeError, match=r"timestamp must be a datetime, got int: 1700000000"):
        encode_properties(Properties(timestamp=1700000000))  # type: ignore[arg-type]
