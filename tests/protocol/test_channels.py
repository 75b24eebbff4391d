"""Channel lifecycle, synchronous replies, broker-initiated methods and publisher confirms."""

from __future__ import annotations

import pytest
from pamqp import commands

from leveret.exceptions import LocalProtocolError, RemoteProtocolError
from leveret.protocol import (
    AMQPConnection,
    ChannelClosed,
    ChannelFlowChanged,
    ChannelOpened,
    ChannelState,
    ConnectionBlocked,
    ConnectionUnblocked,
    ConsumerCancelled,
    MethodReceived,
    PublishConfirmed,
)
from leveret.protocol._codec import EMPTY_PROPERTIES_BYTES
from tests.protocol.frames import F, connected, handshake, open_channel

EXCHANGE = b"\x00"  # the default exchange, as a short string
ROUTING_KEY = b"\x01q"


def close_ok(ch: int) -> bytes:
    return F.method(ch, commands.Channel.CloseOk())


def server_close(ch: int, code: int = 404, text: str = "NOT_FOUND - no queue 'q'") -> bytes:
    return F.method(ch, commands.Channel.Close(code, text, 50, 10))


def publish(conn: AMQPConnection, ch: int) -> int:
    return conn.publish(ch, EXCHANGE, ROUTING_KEY, b"body", EMPTY_PROPERTIES_BYTES)


def confirming() -> tuple[AMQPConnection, int]:
    """Channel 1 in confirm mode."""
    conn, ch = connected()
    conn.call(ch, commands.Confirm.Select())
    conn.data_to_send()
    [event] = conn.receive_data(F.method(ch, commands.Confirm.SelectOk()))
    assert isinstance(event, MethodReceived)
    return conn, ch


# -- open and close -----------------------------------------------------------------------


def test_open_channel() -> None:
    conn = handshake()
    ch = conn.open_channel()
    assert ch == 1
    assert conn.channel_state(ch) is ChannelState.OPENING
    assert conn.data_to_send() == F.method(1, commands.Channel.Open())
    [event] = conn.receive_data(F.method(1, commands.Channel.OpenOk()))
    assert isinstance(event, ChannelOpened)
    assert event.channel_id == 1
    assert conn.channel_state(ch) is ChannelState.OPEN


def test_client_closes_channel() -> None:
    conn, ch = connected()
    conn.close_channel(ch)
    assert conn.data_to_send() == F.method(ch, commands.Channel.Close(200, "", 0, 0))
    assert conn.channel_state(ch) is ChannelState.CLOSING
    [event] = conn.receive_data(close_ok(ch))
    assert isinstance(event, ChannelClosed)
    assert (event.channel_id, event.reply_code, event.by_server) == (ch, 200, False)
    assert conn.channel_state(ch) is ChannelState.CLOSED


def test_close_channel_twice_sends_one_close() -> None:
    conn, ch = connected()
    conn.close_channel(ch)
    conn.close_channel(ch)
    conn.close_channel(99)  # unknown: harmless too
    assert conn.data_to_send() == F.method(ch, commands.Channel.Close(200, "", 0, 0))


def test_server_closes_channel() -> None:
    conn, ch = connected()
    [event] = conn.receive_data(server_close(ch))
    assert isinstance(event, ChannelClosed)
    assert (event.reply_code, event.reply_text) == (404, "NOT_FOUND - no queue 'q'")
    assert (event.class_id, event.method_id) == (50, 10)
    assert event.by_server
    assert conn.data_to_send() == close_ok(ch)
    assert conn.channel_state(ch) is ChannelState.CLOSED


def test_server_refuses_channel_open() -> None:
    conn = handshake()
    ch = conn.open_channel()
    conn.data_to_send()
    [event] = conn.receive_data(server_close(ch, 530, "NOT_ALLOWED"))
    assert isinstance(event, ChannelClosed)
    assert event.by_server
    assert conn.data_to_send() == close_ok(ch)


def test_crossing_channel_closes() -> None:
    """Both sides close at once: report the broker's reason, free the number on our close-ok."""
    conn, ch = connected()
    conn.close_channel(ch)
    conn.data_to_send()
    [event] = conn.receive_data(
        server_close(ch, 406, "PRECONDITION_FAILED - unknown delivery tag 7")
    )
    assert isinstance(event, ChannelClosed)
    assert (event.reply_code, event.by_server) == (406, True)
    assert conn.data_to_send() == close_ok(ch)
    assert conn.channel_state(ch) is ChannelState.CLOSING  # number still taken
    assert conn.receive_data(close_ok(ch)) == []  # already reported
    assert conn.channel_state(ch) is ChannelState.CLOSED


def test_closing_channel_drops_everything_until_close_ok() -> None:
    """ref 4.2.3: deliveries, confirms, returns and replies in flight are discarded."""
    conn, ch = confirming()
    conn.call(ch, commands.Queue.Declare(queue="q"))
    conn.close_channel(ch)
    conn.data_to_send()
    in_flight = (
        F.deliver(ch, b"late delivery")
        + F.method(ch, commands.Basic.Ack(1))
        + F.content(ch, commands.Basic.Return(312, "NO_ROUTE", "", "q"), b"returned")
        + F.method(ch, commands.Queue.DeclareOk("q", 0, 0))
        + F.method(ch, commands.Channel.Flow(False))
    )
    assert conn.receive_data(in_flight) == []
    assert conn.data_to_send() == b""  # not even flow-ok
    [event] = conn.receive_data(close_ok(ch))
    assert isinstance(event, ChannelClosed)


def test_close_while_opening_drops_the_open_ok() -> None:
    conn = handshake()
    ch = conn.open_channel()
    conn.close_channel(ch)
    conn.data_to_send()
    assert conn.receive_data(F.method(ch, commands.Channel.OpenOk())) == []
    [event] = conn.receive_data(close_ok(ch))
    assert isinstance(event, ChannelClosed)


def test_close_ok_without_close() -> None:
    conn, ch = connected()
    with pytest.raises(RemoteProtocolError, match=r"close-ok on channel 1 without a close"):
        conn.receive_data(close_ok(ch))


@pytest.mark.parametrize(
    "frame",
    [
        F.method(7, commands.Channel.OpenOk()),
        F.deliver(7, b"x"),
        F.header(7, 1),
        F.body(7, b"x"),
    ],
    ids=["method", "deliver", "header", "body"],
)
def test_frame_for_unknown_channel(frame: bytes) -> None:
    conn, _ = connected()
    with pytest.raises(RemoteProtocolError, match=r"channel 7, which is not open") as err:
        conn.receive_data(frame)
    assert err.value.reply_code == 504


def test_method_before_open_ok() -> None:
    conn = handshake()
    ch = conn.open_channel()
    with pytest.raises(RemoteProtocolError, match=r"Basic.Deliver on channel 1 before open-ok"):
        conn.receive_data(F.deliver(ch, b"x"))


def test_channel_numbers_round_robin_and_reuse() -> None:
    """A just-freed number is reused last, so stale frames cannot reach a new channel."""
    conn = handshake(tune=(3, 131072, 60))
    assert [open_channel(conn) for _ in range(3)] == [1, 2, 3]
    with pytest.raises(LocalProtocolError, match=r"all 3 channels are in use"):
        conn.open_channel()
    assert conn.data_to_send() == b""
    conn.close_channel(2)
    conn.data_to_send()
    conn.receive_data(close_ok(2))
    assert open_channel(conn) == 2
    conn.receive_data(server_close(1))
    conn.data_to_send()
    assert open_channel(conn) == 1


def test_numbers_after_a_close_go_forward_first() -> None:
    conn = handshake()
    assert open_channel(conn) == 1
    assert open_channel(conn) == 2
    conn.receive_data(server_close(1))
    conn.data_to_send()
    assert open_channel(conn) == 3


# -- synchronous replies --------------------------------------------------------------------


def test_sync_replies_are_matched_in_order() -> None:
    conn, ch = connected()
    conn.call(ch, commands.Queue.Declare(queue="a"))
    conn.call(ch, commands.Exchange.Declare(exchange="x"))
    conn.call(ch, commands.Basic.Qos(prefetch_count=10))
    assert conn.data_to_send() == (
        F.method(ch, commands.Queue.Declare(queue="a"))
        + F.method(ch, commands.Exchange.Declare(exchange="x"))
        + F.method(ch, commands.Basic.Qos(prefetch_count=10))
    )
    replies = (
        F.method(ch, commands.Queue.DeclareOk("a", 5, 1))
        + F.method(ch, commands.Exchange.DeclareOk())
        + F.method(ch, commands.Basic.QosOk())
    )
    events = conn.receive_data(replies)
    assert [type(e) for e in events] == [MethodReceived] * 3
    assert [e.method.name for e in events if isinstance(e, MethodReceived)] == [
        "Queue.DeclareOk",
        "Exchange.DeclareOk",
        "Basic.QosOk",
    ]
    first = events[0]
    assert isinstance(first, MethodReceived)
    assert isinstance(first.method, commands.Queue.DeclareOk)
    assert (first.method.message_count, first.method.consumer_count) == (5, 1)


def test_reply_out_of_order_is_an_error() -> None:
    conn, ch = connected()
    conn.call(ch, commands.Queue.Declare(queue="a"))
    conn.call(ch, commands.Exchange.Declare(exchange="x"))
    with pytest.raises(
        RemoteProtocolError,
        match=r"unexpected Exchange.DeclareOk on channel 1 \(expected \['Queue.DeclareOk'\]\)",
    ) as err:
        conn.receive_data(F.method(ch, commands.Exchange.DeclareOk()))
    assert err.value.reply_code == 505


def test_reply_without_request_is_an_error() -> None:
    conn, ch = connected()
    with pytest.raises(
        RemoteProtocolError, match=r"unexpected Queue.PurgeOk on channel 1 \(expected nothing\)"
    ):
        conn.receive_data(F.method(ch, commands.Queue.PurgeOk(3)))


def test_nowait_expects_no_reply() -> None:
    conn, ch = connected()
    conn.call(ch, commands.Queue.Declare(queue="a", nowait=True))
    with pytest.raises(RemoteProtocolError, match=r"expected nothing"):
        conn.receive_data(F.method(ch, commands.Queue.DeclareOk("a", 0, 0)))


def test_get_empty_is_a_reply() -> None:
    conn, ch = connected()
    conn.call(ch, commands.Basic.Get(queue="q"))
    [event] = conn.receive_data(F.method(ch, commands.Basic.GetEmpty()))
    assert isinstance(event, MethodReceived)
    assert isinstance(event.method, commands.Basic.GetEmpty)


def test_replies_are_per_channel() -> None:
    conn, ch1 = connected()
    ch2 = open_channel(conn)
    conn.call(ch1, commands.Queue.Declare(queue="a"))
    conn.call(ch2, commands.Queue.Purge(queue="b"))
    events = conn.receive_data(
        F.method(ch2, commands.Queue.PurgeOk(2))
        + F.method(ch1, commands.Queue.DeclareOk("a", 0, 0))
    )
    assert [(e.channel_id, e.method.name) for e in events if isinstance(e, MethodReceived)] == [
        (ch2, "Queue.PurgeOk"),
        (ch1, "Queue.DeclareOk"),
    ]


# -- broker-initiated methods -------------------------------------------------------------------


@pytest.mark.parametrize("nowait", [False, True])
def test_server_cancels_consumer(nowait: bool) -> None:
    """consumer_cancel_notify: the queue went away; answer cancel-ok unless nowait."""
    conn, ch = connected()
    [event] = conn.receive_data(F.method(ch, commands.Basic.Cancel("ctag-1", nowait=nowait)))
    assert isinstance(event, ConsumerCancelled)
    assert (event.channel_id, event.consumer_tag) == (ch, "ctag-1")
    expected = b"" if nowait else F.method(ch, commands.Basic.CancelOk("ctag-1"))
    assert conn.data_to_send() == expected


@pytest.mark.parametrize("active", [False, True])
def test_channel_flow(active: bool) -> None:
    conn, ch = connected()
    [event] = conn.receive_data(F.method(ch, commands.Channel.Flow(active)))
    assert isinstance(event, ChannelFlowChanged)
    assert (event.channel_id, event.active) == (ch, active)
    assert conn.data_to_send() == F.method(ch, commands.Channel.FlowOk(active))


def test_connection_blocked_and_unblocked() -> None:
    conn = handshake()
    [blocked] = conn.receive_data(F.method(0, commands.Connection.Blocked("low on memory")))
    assert isinstance(blocked, ConnectionBlocked)
    assert blocked.reason == "low on memory"
    assert conn.blocked
    [unblocked] = conn.receive_data(F.method(0, commands.Connection.Unblocked()))
    assert isinstance(unblocked, ConnectionUnblocked)
    assert not conn.blocked
    assert conn.data_to_send() == b""


def test_update_secret() -> None:
    conn = handshake()
    conn.update_secret("new-token", "token refresh")
    assert conn.data_to_send() == F.method(
        0, commands.Connection.UpdateSecret("new-token", "token refresh")
    )
    [event] = conn.receive_data(F.method(0, commands.Connection.UpdateSecretOk()))
    assert isinstance(event, MethodReceived)
    assert event.channel_id == 0
    assert isinstance(event.method, commands.Connection.UpdateSecretOk)


# -- publisher confirms ---------------------------------------------------------------------------


def test_publish_without_confirms_returns_zero() -> None:
    conn, ch = connected()
    assert publish(conn, ch) == 0
    assert publish(conn, ch) == 0


def test_select_ok_enables_confirm_mode() -> None:
    conn, ch = confirming()
    assert [publish(conn, ch) for _ in range(3)] == [1, 2, 3]


def test_confirm_numbering_starts_at_select() -> None:
    """The broker numbers publishes from the select, even those sent before select-ok."""
    conn, ch = connected()
    conn.call(ch, commands.Confirm.Select())
    assert publish(conn, ch) == 1
    conn.receive_data(F.method(ch, commands.Confirm.SelectOk()))
    assert publish(conn, ch) == 2
    [event] = conn.receive_data(F.method(ch, commands.Basic.Ack(2, multiple=True)))
    assert isinstance(event, PublishConfirmed)


def test_confirm_select_nowait() -> None:
    """No select-ok comes back; the broker's acks must still be accepted."""
    conn, ch = connected()
    conn.call(ch, commands.Confirm.Select(nowait=True))
    assert publish(conn, ch) == 1
    [event] = conn.receive_data(F.method(ch, commands.Basic.Ack(1)))
    assert isinstance(event, PublishConfirmed)
    assert event.ack


def test_confirms() -> None:
    conn, ch = confirming()
    for _ in range(5):
        publish(conn, ch)
    events = conn.receive_data(
        F.method(ch, commands.Basic.Ack(2, multiple=True))
        + F.method(ch, commands.Basic.Nack(3, multiple=False, requeue=False))
        + F.method(ch, commands.Basic.Nack(5, multiple=True))
    )
    assert [
        (e.channel_id, e.delivery_tag, e.multiple, e.ack)
        for e in events
        if isinstance(e, PublishConfirmed)
    ] == [(ch, 2, True, True), (ch, 3, False, False), (ch, 5, True, False)]
    assert len(events) == 3


def test_ack_without_confirm_mode_is_an_error() -> None:
    conn, ch = connected()
    with pytest.raises(RemoteProtocolError, match=r"not in confirm mode") as err:
        conn.receive_data(F.method(ch, commands.Basic.Ack(1)))
    assert err.value.reply_code == 503


def test_confirm_numbering_is_per_channel() -> None:
    conn, ch1 = confirming()
    ch2 = open_channel(conn)
    conn.call(ch2, commands.Confirm.Select())
    conn.receive_data(F.method(ch2, commands.Confirm.SelectOk()))
    assert [publish(conn, ch1), publish(conn, ch2), publish(conn, ch1)] == [1, 1, 2]


# -- settling deliveries on channels that are gone -------------------------------------------------


@pytest.mark.parametrize("how", ["closing", "closed by server", "never opened", "opening"])
def test_settle_on_a_channel_that_is_not_open(how: str) -> None:
    """A delivery tag from a dead channel must never reach a new one: False, nothing queued."""
    conn, ch = connected()
    if how == "closing":
        conn.close_channel(ch)
    elif how == "closed by server":
        conn.receive_data(server_close(ch))
    elif how == "never opened":
        ch = 9
    else:
        ch = conn.open_channel()
    conn.data_to_send()
    assert conn.ack(ch, 1) is False
    assert conn.nack(ch, 1) is False
    assert conn.reject(ch, 1) is False
    assert conn.data_to_send() == b""


def test_settle_after_the_connection_closed() -> None:
    conn, ch = connected()
    conn.close()
    conn.data_to_send()
    assert conn.ack(ch, 1) is False
    assert conn.data_to_send() == b""


# -- commands in the wrong state -----------------------------------------------------------------


def test_commands_before_the_connection_is_open() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match=r"connection is await-start, not open"):
        conn.open_channel()
    with pytest.raises(LocalProtocolError):
        conn.update_secret("t")
    with pytest.raises(LocalProtocolError):
        conn.call(1, commands.Queue.Declare(queue="q"))
    with pytest.raises(LocalProtocolError):
        conn.publish(1, EXCHANGE, ROUTING_KEY, b"x", EMPTY_PROPERTIES_BYTES)
    assert conn.data_to_send() == b""


def test_commands_while_the_connection_is_closing() -> None:
    conn, ch = connected()
    conn.close()
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match=r"connection is closing"):
        conn.open_channel()
    with pytest.raises(LocalProtocolError):
        conn.call(ch, commands.Queue.Declare(queue="q"))
    with pytest.raises(LocalProtocolError):
        publish(conn, ch)
    with pytest.raises(LocalProtocolError):
        conn.close_channel(ch)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("how", ["opening", "closing", "unknown"])
def test_commands_on_a_channel_that_is_not_open(how: str) -> None:
    conn, ch = connected()
    if how == "opening":
        ch = conn.open_channel()
    elif how == "closing":
        conn.close_channel(ch)
    else:
        ch = 42
    conn.data_to_send()
    with pytest.raises(LocalProtocolError, match=rf"channel {ch} is"):
        conn.call(ch, commands.Queue.Declare(queue="q"))
    with pytest.raises(LocalProtocolError, match=rf"channel {ch} is"):
        publish(conn, ch)
    assert conn.data_to_send() == b""


@pytest.mark.parametrize("method", [commands.Channel.Open(), commands.Channel.Close()])
def test_call_refuses_channel_lifecycle(method: object) -> None:
    conn, ch = connected()
    with pytest.raises(LocalProtocolError, match=r"open_channel\(\) / close_channel\(\)"):
        conn.call(ch, method)  # type: ignore[arg-type]
    assert conn.data_to_send() == b""


def test_publish_over_max_body_size() -> None:
    conn, ch = connected(max_body_size=10)
    with pytest.raises(ValueError, match=r"body of 11 bytes exceeds max_body_size 10"):
        conn.publish(ch, EXCHANGE, ROUTING_KEY, b"x" * 11, EMPTY_PROPERTIES_BYTES)
    assert conn.data_to_send() == b""
