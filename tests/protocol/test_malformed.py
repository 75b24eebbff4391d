"""Bytes that are incomplete wait; bytes that are wrong raise RemoteProtocolError, and nothing else."""

from __future__ import annotations

import itertools
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pamqp import commands
from pamqp import frame as pamqp_frame

from leveret.exceptions import RemoteProtocolError
from leveret.protocol import AMQPConnection, ConnectionState, Delivery, Event, Returned
from tests.protocol.frames import F, connected, handshake, open_channel, summarize


def ready() -> AMQPConnection:
    """Channel 1 open in confirm mode with a basic.get outstanding; channel 2 closing."""
    conn, ch = connected()
    conn.call(ch, commands.Confirm.Select())
    conn.call(ch, commands.Basic.Get(queue="q"))
    conn.receive_data(F.method(ch, commands.Confirm.SelectOk()))
    conn.open_channel()
    conn.receive_data(F.method(2, commands.Channel.OpenOk()))
    conn.close_channel(2)
    conn.data_to_send()
    return conn


def assert_fails(conn: AMQPConnection, data: bytes, pattern: str, code: int) -> None:
    """Raises with the code, queues connection.close carrying it, and stops."""
    with pytest.raises(RemoteProtocolError, match=pattern) as err:
        conn.receive_data(data)
    assert err.value.reply_code == code
    out = conn.data_to_send()
    _, channel, close = pamqp_frame.unmarshal(out)
    assert channel == 0
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == code
    assert conn.state is ConnectionState.CLOSED


# -- incomplete input waits -------------------------------------------------------------------

WHOLE = {
    "method": F.method(1, commands.Basic.Ack(1)),
    "deliver": F.deliver(1, b"payload", props=commands.Basic.Properties(message_id="m")),
    "heartbeat": F.heartbeat(),
    "connection method": F.method(0, commands.Connection.Blocked("disk alarm")),
}


@pytest.mark.parametrize("name", WHOLE)
def test_truncated_frames_wait_for_the_rest(name: str) -> None:
    data = WHOLE[name]
    expected = summarize(ready().receive_data(data))
    for cut in range(1, len(data)):
        conn = ready()
        assert conn.receive_data(data[:cut]) == [], f"cut at {cut}"
        assert conn.data_to_send() == b""
        assert conn.state is ConnectionState.OPEN
        assert summarize(conn.receive_data(data[cut:])) == expected, f"cut at {cut}"


def test_empty_input_is_a_no_op() -> None:
    conn = ready()
    assert conn.receive_data(b"") == []
    assert conn.state is ConnectionState.OPEN


MAX_INBOUND_FRAME = 16 * 1024 * 1024


def test_huge_frame_is_refused_on_its_first_bytes() -> None:
    """A length past 16 MiB means framing is lost: refuse it before buffering anything."""
    conn = ready()
    assert_fails(
        conn,
        struct.pack(">BHI", 3, 1, MAX_INBOUND_FRAME + 1) + b"\x00",
        r"frame payload of 16777217 bytes is beyond any frame",
        501,
    )


def test_frame_over_frame_max_is_tolerated_up_to_16_mib() -> None:
    """RabbitMQ does not split content headers to fit frame_max, so larger frames are read."""
    conn = ready()
    assert conn.receive_data(struct.pack(">BHI", 3, 1, MAX_INBOUND_FRAME) + b"\x00") == []
    assert conn.state is ConnectionState.OPEN


def test_content_header_over_frame_max_is_accepted() -> None:
    conn = handshake(AMQPConnection(frame_max=4096), expect_tune_ok=(2047, 4096, 60))
    ch = open_channel(conn)
    props = commands.Basic.Properties(headers={"big": "x" * 6000})
    [delivery] = conn.receive_data(F.deliver(ch, b"body", props=props))
    assert isinstance(delivery, Delivery)
    assert delivery.properties.headers == {"big": "x" * 6000}


# -- framing errors -----------------------------------------------------------------------------


def test_bad_frame_end() -> None:
    conn = ready()
    assert_fails(
        conn,
        F.raw(1, 1, struct.pack(">HHQB", 60, 80, 1, 0), end=b"\x00"),
        r"frame does not end with 0xCE \(got 0x00\): framing lost",
        501,
    )


@pytest.mark.parametrize("frame_type", [0, 4, 9, 255])
def test_unknown_frame_type(frame_type: int) -> None:
    conn = ready()
    assert_fails(conn, F.raw(frame_type, 0, b""), rf"unknown frame type {frame_type}", 501)


def test_heartbeat_on_a_channel() -> None:
    conn = ready()
    assert_fails(conn, F.raw(8, 1, b""), r"heartbeat frame on a non-zero channel", 501)


def test_heartbeat_on_channel_zero_is_fine() -> None:
    conn = ready()
    assert conn.receive_data(F.heartbeat() * 3) == []
    assert conn.data_to_send() == b""


# -- method errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("channel", [0, 1])
def test_unknown_method(channel: int) -> None:
    conn = ready()
    assert_fails(conn, F.raw(1, channel, b"\x00\x0a\x00\x63"), r"unknown method 0x000a0063", 540)


@pytest.mark.parametrize("channel", [0, 1])
@pytest.mark.parametrize("payload", [b"", b"\x00", b"\x00\x3c\x00"])
def test_method_shorter_than_its_ids(channel: int, payload: bytes) -> None:
    conn = ready()
    assert_fails(
        conn, F.raw(1, channel, payload), r"method frame shorter than its class and method ids", 502
    )


def test_garbled_method_payload() -> None:
    conn = ready()
    conn.call(1, commands.Queue.Declare(queue="q"))
    conn.data_to_send()
    # queue.declare-ok whose queue name claims 5 bytes but has 2, and no counts
    assert_fails(
        conn, F.raw(1, 1, b"\x00\x32\x00\x0b\x05ab"), r"malformed Queue.DeclareOk frame", 502
    )


def test_recover_async_from_the_broker() -> None:
    """Client-only and deprecated; pamqp would warn on decoding it."""
    conn = ready()
    assert_fails(conn, F.raw(1, 1, b"\x00\x3c\x00\x64\x00"), r"unexpected Basic.RecoverAsync", 503)


def test_garbled_connection_method() -> None:
    conn = ready()
    assert_fails(
        conn, F.raw(1, 0, b"\x00\x0a\x00\x32\x01"), r"malformed Connection.Close frame", 502
    )


@pytest.mark.parametrize(
    "payload",
    [
        b"",  # nothing after the ids
        b"\x04ct",  # consumer tag cut short
        b"\x04ctag\x00\x00\x00",  # delivery tag cut short
        b"\x04ctag" + b"\x00" * 8,  # no redelivered octet
        b"\x04ctag" + b"\x00" * 9,  # no exchange
        b"\x04ctag" + b"\x00" * 9 + b"\x05ex",  # exchange cut short
        b"\x04ctag" + b"\x00" * 9 + b"\x00",  # no routing key
        b"\x04ctag" + b"\x00" * 9 + b"\x00\x09q",  # routing key cut short
    ],
)
def test_truncated_deliver(payload: bytes) -> None:
    """basic.deliver has a hand-written decoder; every truncation is a protocol error."""
    conn = ready()
    assert_fails(
        conn,
        F.raw(1, 1, b"\x00\x3c\x00\x3c" + payload),
        r"truncated basic.deliver|short string runs past the end",
        502,
    )


def test_truncated_ack() -> None:
    conn = ready()
    assert_fails(
        conn, F.raw(1, 1, b"\x00\x3c\x00\x50" + b"\x00" * 8), r"truncated basic.ack/nack", 502
    )


def nested_table(depth: int) -> bytes:
    table = b"\x00\x00\x00\x00"
    for _ in range(depth):
        entry = b"\x01aF" + table
        table = struct.pack(">I", len(entry)) + entry
    return table


def test_deeply_nested_table_in_a_method() -> None:
    """A hostile peer's recursion depth is a protocol error, not a RecursionError."""
    conn = ready()
    # queue.declare: ticket, queue, bits, arguments
    payload = b"\x00\x32\x00\x0a" + b"\x00\x00\x01q\x00" + nested_table(2000)
    assert_fails(conn, F.raw(1, 1, payload), r"malformed Queue.Declare frame", 502)


@pytest.mark.parametrize(
    ("raw_properties", "pattern"),
    [
        (b"\x20\x00" + nested_table(2000), r"malformed field table"),
        (b"\x00\x40" + struct.pack(">Q", 2**63), r"malformed content header properties"),
        (b"\x00\x40" + struct.pack(">Q", 2**40), r"malformed content header properties"),
        (b"\x00\x40" + struct.pack(">Q", 2**56), r"timestamp 72057594037927936 is out of range"),
        (b"\x80\x00\x05ab", r"short string runs past the end"),
        (b"\x04\x00\x05ab", r"short string runs past the end"),
        (b"\x00\x08\x05ab", r"short string runs past the end"),
        (b"\x00\x80", r"malformed content header properties"),
        (b"\x20\x00\x00\x00\x00\x09\x01", r"headers table runs past the end"),
        (b"\x10\x00", r"malformed content header properties"),
    ],
    ids=[
        "deep headers",
        "timestamp past time_t",
        "timestamp past year 9999",
        "timestamp past the C library's range",
        "short string",
        "correlation_id",
        "app_id",
        "message_id missing",
        "table",
        "octet",
    ],
)
def test_malformed_properties_fail_on_access(raw_properties: bytes, pattern: str) -> None:
    conn, ch = connected()
    header = F.raw(2, ch, b"\x00\x3c\x00\x00" + struct.pack(">Q", 1) + raw_properties)
    stream = (
        F.method(ch, commands.Basic.Deliver("c", 1, False, "", "q")) + header + F.body(ch, b"x")
    )
    [delivery] = conn.receive_data(stream)
    assert isinstance(delivery, Delivery)
    with pytest.raises(RemoteProtocolError, match=pattern):
        _ = delivery.properties


# -- fuzz --------------------------------------------------------------------------------------------


def feed_and_check(chunks: list[bytes]) -> None:
    """Events or RemoteProtocolError; never another exception, even reading properties."""
    conn = ready()
    for chunk in chunks:
        try:
            events: list[Event] = conn.receive_data(chunk)
        except RemoteProtocolError:
            assert conn.state is ConnectionState.CLOSED
            conn.data_to_send()
            return
        for event in events:
            if isinstance(event, (Delivery, Returned)):
                try:
                    _ = event.properties
                except RemoteProtocolError:
                    pass
        conn.data_to_send()


@settings(max_examples=200, deadline=None)
@given(st.lists(st.binary(max_size=200), min_size=1, max_size=4))
def test_fuzz_arbitrary_bytes(chunks: list[bytes]) -> None:
    feed_and_check(chunks)


method_indexes = st.sampled_from(sorted(commands.INDEX_MAPPING))
payloads = st.one_of(
    st.binary(max_size=40),
    st.builds(
        lambda index, rest: struct.pack(">I", index) + rest, method_indexes, st.binary(max_size=60)
    ),
)
random_frames = st.builds(
    F.raw,
    st.sampled_from([1, 1, 2, 3, 8]) | st.integers(0, 255),
    st.sampled_from([0, 1, 1, 2, 3]),
    payloads,
)
valid_frames = st.sampled_from(
    [
        F.method(1, commands.Basic.Deliver("c", 1, False, "", "q")),
        F.method(1, commands.Basic.GetOk(1, False, "", "q", 0)),
        F.method(1, commands.Basic.Return(312, "NO_ROUTE", "", "q")),
        F.header(1, 0),
        F.header(1, 5),
        F.header(1, 3, commands.Basic.Properties(headers={"a": [1, "b"]}, priority=1)),
        F.body(1, b"abc"),
        F.body(1, b"de"),
        F.method(1, commands.Basic.Ack(1, multiple=True)),
        F.method(2, commands.Channel.CloseOk()),
        F.method(0, commands.Connection.Blocked("x")),
        F.heartbeat(),
    ]
)


@settings(max_examples=200, deadline=None)
@given(st.lists(random_frames | valid_frames, min_size=1, max_size=8), st.data())
def test_fuzz_frames(frames: list[bytes], data: st.DataObject) -> None:
    """Well-framed garbage reaches the decoders (arbitrary bytes mostly fail at framing)."""
    stream = b"".join(frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=3)))
    bounds = [0, *cuts, len(stream)]
    feed_and_check([stream[a:b] for a, b in itertools.pairwise(bounds)])
