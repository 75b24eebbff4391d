"""Connection handshake: SASL, tuning, refusals and closes before and after open."""

from __future__ import annotations

import pytest
from pamqp import commands
from pamqp import frame as pamqp_frame

from leveret.exceptions import LocalProtocolError, RemoteProtocolError
from leveret.protocol import (
    AMQPConnection,
    ConnectionClosed,
    ConnectionState,
    Credentials,
)
from tests.protocol.frames import PROTOCOL_HEADER, SERVER_PROPERTIES, F, handshake


def started(
    conn: AMQPConnection | None = None, mechanisms: str = "PLAIN AMQPLAIN"
) -> AMQPConnection:
    """A connection that has sent start-ok and waits for tune."""
    conn = conn or AMQPConnection()
    conn.initiate()
    conn.receive_data(F.method(0, commands.Connection.Start(mechanisms=mechanisms)))
    conn.data_to_send()
    assert conn.state is ConnectionState.AWAIT_TUNE
    return conn


def sent_method(data: bytes) -> object:
    """The one method frame in `data`, decoded by pamqp."""
    consumed, channel, method = pamqp_frame.unmarshal(data)
    assert (consumed, channel) == (len(data), 0)
    return method


# -- SASL --------------------------------------------------------------------------------


def test_plain_handshake() -> None:
    conn = AMQPConnection(credentials=Credentials("alice", "s3cr3t"), virtual_host="prod")
    handshake(conn, response="\0alice\0s3cr3t")
    assert conn.server_properties == SERVER_PROPERTIES


def test_external_handshake() -> None:
    """EXTERNAL (TLS client certificate) answers with an empty response."""
    conn = AMQPConnection(credentials=Credentials(mechanism="EXTERNAL"))
    handshake(conn, mechanisms="PLAIN EXTERNAL", response="")


def test_connection_name_is_announced() -> None:
    handshake(AMQPConnection(connection_name="billing-worker"), connection_name="billing-worker")


def test_extra_client_properties_are_merged() -> None:
    conn = AMQPConnection(client_properties={"product": "acme", "x-team": "core"})
    conn.initiate()
    conn.data_to_send()
    conn.receive_data(F.method(0, commands.Connection.Start()))
    start_ok = sent_method(conn.data_to_send())
    assert isinstance(start_ok, commands.Connection.StartOk)
    assert start_ok.client_properties["product"] == "acme"
    assert start_ok.client_properties["x-team"] == "core"
    assert start_ok.client_properties["capabilities"]["publisher_confirms"] is True


def test_credentials_repr_hides_the_password() -> None:
    assert "s3cr3t" not in repr(Credentials("alice", "s3cr3t"))


def test_unsupported_mechanism_is_refused_locally() -> None:
    with pytest.raises(ValueError, match=r"unsupported SASL mechanism 'AMQPLAIN'"):
        Credentials(mechanism="AMQPLAIN")


def test_broker_without_the_mechanism() -> None:
    conn = AMQPConnection(credentials=Credentials(mechanism="EXTERNAL"))
    conn.initiate()
    conn.data_to_send()
    start = F.method(0, commands.Connection.Start(mechanisms="PLAIN AMQPLAIN"))
    with pytest.raises(
        RemoteProtocolError,
        match=r"does not offer SASL mechanism EXTERNAL \(it offers PLAIN, AMQPLAIN\)",
    ) as err:
        conn.receive_data(start)
    assert err.value.reply_code == 530
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""  # no start-ok, and nothing to close politely yet


def test_broker_answers_with_another_protocol_header() -> None:
    """ref 4.2.2: a broker refusing our version writes its own header and hangs up."""
    conn = AMQPConnection()
    conn.initiate()
    assert conn.data_to_send() == PROTOCOL_HEADER
    with pytest.raises(RemoteProtocolError, match=r"offered b'AMQP\\x00\\x00\\t\\x00'"):
        conn.receive_data(b"AMQP\x00\x00\x09\x00")
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""


def test_protocol_header_arriving_in_pieces() -> None:
    conn = AMQPConnection()
    conn.initiate()
    assert conn.receive_data(b"AMQ") == []
    with pytest.raises(RemoteProtocolError, match=r"refused protocol"):
        conn.receive_data(b"P\x01\x01\x00\x0a")


def test_broker_speaking_another_version() -> None:
    conn = AMQPConnection()
    conn.initiate()
    with pytest.raises(RemoteProtocolError, match=r"AMQP 0-8, not 0-9-1"):
        conn.receive_data(F.method(0, commands.Connection.Start(version_minor=8)))


def test_secure_challenge_is_a_protocol_error() -> None:
    """RabbitMQ never challenges PLAIN or EXTERNAL; answering blindly could loop."""
    conn = started()
    with pytest.raises(RemoteProtocolError, match=r"connection.secure") as err:
        conn.receive_data(F.method(0, commands.Connection.Secure(challenge="?")))
    assert err.value.reply_code == 540


def test_initiate_twice() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    with pytest.raises(LocalProtocolError):
        conn.initiate()
    assert conn.data_to_send() == b""


@pytest.mark.parametrize(
    "kwargs",
    [{"heartbeat": -1}, {"heartbeat": 65536}, {"frame_max": 4095}, {"channel_max": 65536}],
)
def test_constructor_refuses_out_of_range_limits(kwargs: dict[str, int]) -> None:
    with pytest.raises(ValueError, match=str(next(iter(kwargs.values())))):
        AMQPConnection(**kwargs)


# -- tuning (ref 1.4.2.6: the lower non-zero value wins, zero means no limit) ------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "agreed"),
    [
        (2047, 2047, 2047),
        (2047, 100, 100),
        (100, 2047, 100),
        (2047, 0, 2047),
        (0, 2047, 2047),
        (0, 0, 65535),  # both unlimited: the field's maximum
    ],
)
def test_channel_max_negotiation(ours: int, theirs: int, agreed: int) -> None:
    conn = AMQPConnection(channel_max=ours)
    handshake(conn, tune=(theirs, 131072, 60), expect_tune_ok=(agreed, 131072, 60))
    assert conn.channel_max == agreed


@pytest.mark.parametrize(
    ("ours", "theirs", "agreed"),
    [
        (131072, 131072, 131072),
        (131072, 8192, 8192),
        (4096, 131072, 4096),
        (131072, 0, 131072),
        (0, 65536, 65536),
        (0, 0, 2**32 - 1),
    ],
)
def test_frame_max_negotiation(ours: int, theirs: int, agreed: int) -> None:
    conn = AMQPConnection(frame_max=ours)
    handshake(conn, tune=(2047, theirs, 60), expect_tune_ok=(2047, agreed, 60))
    assert conn.frame_max == agreed
    assert conn.max_body_frame == agreed - 8


@pytest.mark.parametrize(
    ("ours", "theirs", "agreed"),
    [
        (None, 60, 60),  # None: take the broker's proposal
        (None, 0, 0),
        (0, 60, 0),  # 0: the user disabled heartbeats
        (10, 60, 10),
        (120, 60, 60),
        (30, 0, 30),  # the broker has no preference
    ],
)
def test_heartbeat_negotiation(ours: int | None, theirs: int, agreed: int) -> None:
    conn = AMQPConnection(heartbeat=ours)
    handshake(conn, tune=(2047, 131072, theirs), expect_tune_ok=(2047, 131072, agreed))
    assert conn.heartbeat == agreed


def test_tune_ok_and_open_carry_the_vhost() -> None:
    handshake(AMQPConnection(virtual_host="tenant/eu"))


# -- closes ------------------------------------------------------------------------------------


def test_access_refused_during_handshake() -> None:
    """Bad credentials: RabbitMQ answers start-ok with connection.close(403)."""
    conn = started()
    close = commands.Connection.Close(403, "ACCESS_REFUSED - Login was refused", 10, 11)
    [event] = conn.receive_data(F.method(0, close))
    assert isinstance(event, ConnectionClosed)
    assert (event.reply_code, event.reply_text) == (403, "ACCESS_REFUSED - Login was refused")
    assert (event.class_id, event.method_id) == (10, 11)
    assert event.by_server
    assert event.during_handshake
    assert conn.data_to_send() == F.method(0, commands.Connection.CloseOk())
    assert conn.state is ConnectionState.CLOSED


def test_vhost_refused_after_open() -> None:
    conn = started()
    conn.receive_data(F.method(0, commands.Connection.Tune(2047, 131072, 60)))
    conn.data_to_send()
    close = commands.Connection.Close(530, "NOT_ALLOWED - vhost nope not found", 10, 40)
    [event] = conn.receive_data(F.method(0, close))
    assert isinstance(event, ConnectionClosed)
    assert event.reply_code == 530
    assert event.during_handshake
    assert conn.data_to_send() == F.method(0, commands.Connection.CloseOk())


def test_close_after_open_is_not_during_handshake() -> None:
    conn = handshake()
    close = commands.Connection.Close(
        320, "CONNECTION_FORCED - broker forced connection closure", 0, 0
    )
    [event] = conn.receive_data(F.method(0, close))
    assert isinstance(event, ConnectionClosed)
    assert event.reply_code == 320
    assert event.by_server
    assert not event.during_handshake
    assert conn.data_to_send() == F.method(0, commands.Connection.CloseOk())


def test_client_close() -> None:
    conn = handshake()
    conn.close()
    assert conn.data_to_send() == F.method(
        0, commands.Connection.Close(200, "Normal shutdown", 0, 0)
    )
    assert conn.state is ConnectionState.CLOSING
    conn.close()  # twice is harmless
    assert conn.data_to_send() == b""
    [event] = conn.receive_data(F.method(0, commands.Connection.CloseOk()))
    assert isinstance(event, ConnectionClosed)
    assert not event.by_server
    assert conn.state is ConnectionState.CLOSED


def test_closing_discards_everything_but_close_ok() -> None:
    """ref 4.2.3: after sending close, the client ignores other methods."""
    conn = handshake()
    conn.close()
    conn.data_to_send()
    assert conn.receive_data(F.method(0, commands.Connection.Blocked("disk"))) == []
    assert not conn.blocked
    [event] = conn.receive_data(F.method(0, commands.Connection.CloseOk()))
    assert isinstance(event, ConnectionClosed)


def test_crossing_connection_closes() -> None:
    """Both sides close at once: the broker's reason wins and its later close-ok is ignored."""
    conn = handshake()
    conn.close()
    conn.data_to_send()
    crossing = F.method(0, commands.Connection.Close(320, "CONNECTION_FORCED", 0, 0)) + F.method(
        0, commands.Connection.CloseOk()
    )
    [event] = conn.receive_data(crossing)
    assert isinstance(event, ConnectionClosed)
    assert (event.reply_code, event.by_server) == (320, True)
    assert conn.data_to_send() == F.method(0, commands.Connection.CloseOk())
    assert conn.receive_data(F.method(0, commands.Connection.CloseOk())) == []


def test_close_before_the_handshake_sends_nothing() -> None:
    conn = AMQPConnection()
    conn.initiate()
    conn.data_to_send()
    conn.close()
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""
    assert conn.receive_data(F.method(0, commands.Connection.Start())) == []


def test_close_ok_without_close() -> None:
    conn = handshake()
    with pytest.raises(RemoteProtocolError, match=r"close-ok without a close") as err:
        conn.receive_data(F.method(0, commands.Connection.CloseOk()))
    assert err.value.reply_code == 503


def test_start_after_open_is_unexpected() -> None:
    conn = handshake()
    with pytest.raises(RemoteProtocolError, match=r"unexpected Connection.Start in state open"):
        conn.receive_data(F.method(0, commands.Connection.Start()))


def test_connection_lost_drops_output() -> None:
    conn = handshake()
    conn.open_channel()
    conn.connection_lost()
    assert conn.state is ConnectionState.CLOSED
    assert conn.data_to_send() == b""
    assert conn.receive_data(F.heartbeat()) == []
