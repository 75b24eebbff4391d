"""Content assembly: a method, its header and its bodies become one event, however bytes arrive."""

from __future__ import annotations

import datetime
from collections.abc import Callable

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame

from leveret import Properties
from leveret.exceptions import RemoteProtocolError
from leveret.protocol import (
    AMQPConnection,
    ConnectionState,
    Delivery,
    Event,
    MethodReceived,
    Returned,
)
from tests.protocol.frames import F, connected, open_channel, summarize

UTC = datetime.UTC


def all_properties() -> commands.Basic.Properties:
    props = commands.Basic.Properties(
        content_type="application/json",
        content_encoding="utf-8",
        headers={"x-death": [{"count": 2, "queue": "q"}], "ok": True},
        delivery_mode=2,
        priority=5,
        correlation_id="c-1",
        reply_to="replies",
        expiration="1000",
        message_id="m-1",
        timestamp=datetime.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
        message_type="event",
        user_id="guest",
        app_id="tests",
    )
    props.cluster_id = "rabbit@a"  # pamqp's constructor refuses it; marshal writes it
    return props


ALL_PROPERTIES = Properties(
    content_type="application/json",
    content_encoding="utf-8",
    headers={"x-death": [{"count": 2, "queue": "q"}], "ok": True},
    delivery_mode=2,
    priority=5,
    correlation_id="c-1",
    reply_to="replies",
    expiration="1000",
    message_id="m-1",
    timestamp=datetime.datetime(2024, 2, 29, 23, 59, 59, tzinfo=UTC),
    message_type="event",
    user_id="guest",
    app_id="tests",
    cluster_id="rabbit@a",
)


def in_pieces(body: bytes, size: int) -> list[bytes]:
    return [body[i : i + size] for i in range(0, len(body), size)]


def deliver_in_frames(ch: int, chunks: list[bytes], **kwargs: object) -> bytes:
    """basic.deliver with one body frame per chunk."""
    method = commands.Basic.Deliver("ctag", 7, False, "ex", "rk")
    body = b"".join(chunks)
    return (
        F.method(ch, method)
        + F.header(ch, len(body), kwargs.get("props"))  # type: ignore[arg-type]
        + b"".join(F.body(ch, c) for c in chunks)
    )


def only(events: list[Event]) -> Delivery:
    [event] = events
    assert isinstance(event, Delivery)
    return event


# -- assembly ----------------------------------------------------------------------------------


def test_deliver_with_one_body_frame() -> None:
    conn, ch = connected()
    delivery = only(
        conn.receive_data(
            F.deliver(
                ch,
                b"hello",
                delivery_tag=42,
                consumer_tag="c1",
                redelivered=True,
                exchange="amq.direct",
                routing_key="k.1",
            )
        )
    )
    assert delivery.channel_id == ch
    assert (delivery.consumer_tag, delivery.delivery_tag, delivery.redelivered) == ("c1", 42, True)
    assert (delivery.exchange, delivery.routing_key) == ("amq.direct", "k.1")
    assert delivery.message_count is None
    assert delivery.body == b"hello"
    assert delivery.properties == Properties()


def test_deliver_with_many_body_frames() -> None:
    conn, ch = connected()
    body = bytes(range(256)) * 3
    delivery = only(conn.receive_data(deliver_in_frames(ch, in_pieces(body, 100))))
    assert delivery.body == body


def test_events_wait_for_the_last_body_frame() -> None:
    conn, ch = connected()
    frames = deliver_in_frames(ch, [b"ab", b"cd", b"ef"])
    last_body = F.body(ch, b"ef")
    assert conn.receive_data(frames[: -len(last_body)]) == []
    assert only(conn.receive_data(last_body)).body == b"abcdef"


def test_zero_length_body_completes_at_the_header() -> None:
    conn, ch = connected()
    delivery = only(conn.receive_data(F.deliver(ch, b"")))
    assert delivery.body == b""
    # and the next delivery starts cleanly
    assert only(conn.receive_data(F.deliver(ch, b"next"))).body == b"next"


def test_get_ok_with_content() -> None:
    conn, ch = connected()
    conn.call(ch, commands.Basic.Get(queue="q"))
    get_ok = commands.Basic.GetOk(9, True, "", "q", 3)
    delivery = only(conn.receive_data(F.content(ch, get_ok, b"got it")))
    assert delivery.consumer_tag is None
    assert (delivery.delivery_tag, delivery.redelivered, delivery.message_count) == (9, True, 3)
    assert (delivery.exchange, delivery.routing_key) == ("", "q")
    assert delivery.body == b"got it"


def test_get_ok_without_a_get_is_an_error() -> None:
    conn, ch = connected()
    with pytest.raises(RemoteProtocolError, match=r"unexpected Basic.GetOk"):
        conn.receive_data(F.content(ch, commands.Basic.GetOk(9, False, "", "q", 0), b"x"))


def test_return_with_content() -> None:
    conn, ch = connected()
    ret = commands.Basic.Return(312, "NO_ROUTE", "amq.direct", "nowhere")
    [event] = conn.receive_data(F.content(ch, ret, b"bounced", all_properties()))
    assert isinstance(event, Returned)
    assert (event.channel_id, event.reply_code, event.reply_text) == (ch, 312, "NO_ROUTE")
    assert (event.exchange, event.routing_key) == ("amq.direct", "nowhere")
    assert event.body == b"bounced"
    assert event.properties == ALL_PROPERTIES


def test_all_properties_are_decoded() -> None:
    conn, ch = connected()
    delivery = only(conn.receive_data(F.deliver(ch, b"{}", props=all_properties())))
    assert delivery.properties == ALL_PROPERTIES
    assert delivery.properties is delivery.properties  # decoded once, then kept


def test_properties_are_decoded_lazily() -> None:
    """Garbage properties do not stop the delivery; they fail when first read."""
    conn, ch = connected()
    method = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q"))
    garbage_header = F.raw(2, ch, b"\x00\x3c\x00\x00" + (1).to_bytes(8, "big") + b"\x80\x00\x09ab")
    delivery = only(conn.receive_data(method + garbage_header + F.body(ch, b"x")))
    assert delivery.body == b"x"
    with pytest.raises(RemoteProtocolError, match=r"malformed content header properties"):
        _ = delivery.properties


def test_content_on_two_channels_interleaves() -> None:
    """Frames of different channels may interleave; each channel assembles its own."""
    conn, ch1 = connected()
    ch2 = open_channel(conn)
    d1 = commands.Basic.Deliver("c1", 1, False, "", "q1")
    d2 = commands.Basic.Deliver("c2", 1, False, "", "q2")
    stream = (
        F.method(ch1, d1)
        + F.method(ch2, d2)
        + F.header(ch1, 4)
        + F.header(ch2, 2)
        + F.body(ch1, b"on")
        + F.body(ch2, b"tw")
        + F.heartbeat()
        + F.body(ch1, b"e!")
    )
    events = conn.receive_data(stream)
    assert [(e.channel_id, e.body) for e in events if isinstance(e, Delivery)] == [
        (ch2, b"tw"),
        (ch1, b"one!"),
    ]


# -- content that breaks the rules ---------------------------------------------------------------


def expect_protocol_error(conn: AMQPConnection, data: bytes, pattern: str, code: int) -> None:
    with pytest.raises(RemoteProtocolError, match=pattern) as err:
        conn.receive_data(data)
    assert err.value.reply_code == code


def test_method_between_deliver_and_header() -> None:
    conn, ch = connected()
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + F.deliver(ch, b"x")
    expect_protocol_error(
        conn, stream, r"method frame on channel 1 while content was expected", 505
    )


def test_method_between_body_frames() -> None:
    conn, ch = connected()
    first_half = (
        F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q"))
        + F.header(ch, 4)
        + F.body(ch, b"ab")
    )
    assert conn.receive_data(first_half) == []
    expect_protocol_error(
        conn, F.method(ch, commands.Channel.Flow(False)), r"while content was expected", 505
    )


def test_body_longer_than_announced() -> None:
    conn, ch = connected()
    stream = (
        F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q"))
        + F.header(ch, 3)
        + F.body(ch, b"four")
    )
    expect_protocol_error(conn, stream, r"longer than its header announced", 505)


def test_body_frames_adding_up_past_the_header() -> None:
    conn, ch = connected()
    stream = (
        F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q"))
        + F.header(ch, 3)
        + F.body(ch, b"ab")
        + F.body(ch, b"cd")
    )
    expect_protocol_error(conn, stream, r"longer than its header announced", 505)


def test_header_for_a_non_basic_class() -> None:
    conn, ch = connected()
    header = F.raw(2, ch, b"\x00\x32\x00\x00" + (1).to_bytes(8, "big") + b"\x00\x00")
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + header
    expect_protocol_error(conn, stream, r"content header for class 50, expected basic \(60\)", 505)


def test_truncated_content_header() -> None:
    conn, ch = connected()
    header = F.raw(2, ch, b"\x00\x3c\x00\x00\x00")
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + header
    expect_protocol_error(conn, stream, r"content header frame is truncated", 502)


def test_header_without_a_method() -> None:
    conn, ch = connected()
    expect_protocol_error(conn, F.header(ch, 1), r"unexpected content header on channel 1", 505)


def test_header_twice() -> None:
    conn, ch = connected()
    stream = (
        F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q"))
        + F.header(ch, 1)
        + F.header(ch, 1)
    )
    expect_protocol_error(conn, stream, r"unexpected content header", 505)


def test_body_without_a_header() -> None:
    conn, ch = connected()
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + F.body(ch, b"x")
    expect_protocol_error(conn, stream, r"unexpected content body on channel 1", 505)


def test_body_after_a_zero_length_message() -> None:
    conn, ch = connected()
    expect_protocol_error(
        conn, F.deliver(ch, b"") + F.body(ch, b"x"), r"unexpected content body", 505
    )


def test_body_over_max_body_size() -> None:
    """Refused at the header, before any of the body is buffered."""
    conn, ch = connected(max_body_size=1000)
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + F.header(ch, 1001)
    expect_protocol_error(
        conn, stream, r"incoming message body of 1001 bytes exceeds max_body_size 1000", 501
    )


def test_body_at_max_body_size() -> None:
    conn, ch = connected(max_body_size=1000)
    assert only(conn.receive_data(F.deliver(ch, b"x" * 1000))).body == b"x" * 1000


def test_connection_close_is_queued_after_a_protocol_error() -> None:
    """ref 4.2.6: answer bad bytes with connection.close carrying the reply code."""
    conn, ch = connected()
    stream = F.method(ch, commands.Basic.Deliver("ctag", 1, False, "", "q")) + F.deliver(ch, b"x")
    with pytest.raises(RemoteProtocolError) as err:
        conn.receive_data(stream)
    out = conn.data_to_send()
    consumed, channel, close = pamqp_frame.unmarshal(out)
    assert (consumed, channel) == (len(out), 0)
    assert isinstance(close, commands.Connection.Close)
    assert close.reply_code == 505
    assert close.reply_text == str(err.value)
    assert conn.state is ConnectionState.CLOSED


def test_input_after_a_protocol_error_is_ignored() -> None:
    conn, ch = connected()
    with pytest.raises(RemoteProtocolError):
        conn.receive_data(F.header(ch, 1))
    assert conn.receive_data(F.deliver(ch, b"too late")) == []


# -- the same events however the bytes are cut ------------------------------------------------------


def ready() -> AMQPConnection:
    """Channel 1 open, in confirm mode, with a basic.get outstanding."""
    conn, ch = connected()
    conn.call(ch, commands.Confirm.Select())
    conn.call(ch, commands.Basic.Get(queue="q"))
    conn.receive_data(F.method(ch, commands.Confirm.SelectOk()))
    conn.data_to_send()
    return conn


FIXTURES: dict[str, bytes] = {
    "deliver": F.deliver(1, b"hello world"),
    "deliver, all properties": F.deliver(1, b"{}", props=all_properties()),
    "deliver, many bodies": deliver_in_frames(1, [b"abc", b"defg", b"h"]),
    "deliver, empty body": F.deliver(1, b""),
    "get-ok": F.content(1, commands.Basic.GetOk(5, False, "", "q", 0), b"got"),
    "return": F.content(1, commands.Basic.Return(312, "NO_ROUTE", "ex", "rk"), b"back"),
    "acks and heartbeats": F.heartbeat()
    + F.method(1, commands.Basic.Ack(1))
    + F.heartbeat()
    + F.method(1, commands.Basic.Nack(3, multiple=True)),
    "mixed": F.deliver(1, b"one")
    + F.method(0, commands.Connection.Blocked("mem"))
    + F.deliver(1, b"", delivery_tag=2)
    + F.method(1, commands.Basic.Ack(1))
    + F.method(1, commands.Basic.Cancel("ctag"))
    + F.deliver(1, b"three", delivery_tag=3),
}


def feed(chunks: list[bytes]) -> list[tuple[object, ...]]:
    conn = ready()
    events: list[Event] = []
    for chunk in chunks:
        events.extend(conn.receive_data(chunk))
    return summarize(events)


@pytest.mark.parametrize("name", FIXTURES)
def test_whole_split_and_byte_by_byte_give_the_same_events(name: str) -> None:
    data = FIXTURES[name]
    whole = feed([data])
    assert whole  # every fixture completes at least one event
    for cut in range(1, len(data)):
        assert feed([data[:cut], data[cut:]]) == whole, f"split at byte {cut}"
    assert feed([data[i : i + 1] for i in range(len(data))]) == whole
    assert feed([data[:9], data[9:-3], data[-3:]]) == whole
    assert feed([bytearray(data)]) == whole
    assert feed([memoryview(data)]) == whole  # type: ignore[list-item]


@pytest.mark.parametrize(
    ("name", "check"),
    [
        ("deliver", lambda e: isinstance(e, Delivery) and e.body == b"hello world"),
        (
            "get-ok",
            lambda e: isinstance(e, Delivery) and e.consumer_tag is None and e.body == b"got",
        ),
        ("return", lambda e: isinstance(e, Returned) and e.body == b"back"),
        ("deliver, many bodies", lambda e: isinstance(e, Delivery) and e.body == b"abcdefgh"),
    ],
)
def test_fixture_events(name: str, check: Callable[[Event], bool]) -> None:
    conn = ready()
    [event] = conn.receive_data(FIXTURES[name])
    assert check(event)


def test_cancel_in_the_mixed_fixture_is_answered_once_however_cut() -> None:
    data = FIXTURES["mixed"]
    conn = ready()
    for i in range(len(data)):
        conn.receive_data(data[i : i + 1])
    assert conn.data_to_send() == F.method(1, commands.Basic.CancelOk("ctag"))
    assert conn.blocked


def test_sync_reply_between_deliveries() -> None:
    conn = ready()
    conn.call(1, commands.Queue.Declare(queue="q2"))
    events = conn.receive_data(
        F.deliver(1, b"a")
        + F.method(1, commands.Basic.GetEmpty())
        + F.method(1, commands.Queue.DeclareOk("q2", 0, 0))
        + F.deliver(1, b"b")
    )
    assert [type(e) for e in events] == [Delivery, MethodReceived, MethodReceived, Delivery]
