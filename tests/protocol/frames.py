"""Server-side byte fixtures built with pamqp, and a handshake driver.

pamqp is the reference codec: every fixture here is what a conforming broker
would put on the wire, produced independently of leveret's hand-written paths.
"""

from __future__ import annotations

import platform
import struct
from typing import Any

from pamqp import commands
from pamqp import frame as pamqp_frame
from pamqp.base import Frame as PamqpMethod
from pamqp.body import ContentBody
from pamqp.header import ContentHeader
from pamqp.heartbeat import Heartbeat

import leveret
from leveret.protocol import (
    AMQPConnection,
    ChannelOpened,
    ConnectionOpened,
    ConnectionState,
    Event,
)

PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"

CLIENT_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}

SERVER_PROPERTIES = {
    "product": "RabbitMQ",
    "version": "3.13.0",
    "capabilities": {"publisher_confirms": True, "consumer_cancel_notify": True},
}


class FrameFactory:
    """Byte fixtures for frames a broker sends (all through pamqp)."""

    @staticmethod
    def method(channel: int, obj: PamqpMethod) -> bytes:
        return pamqp_frame.marshal(obj, channel)

    @staticmethod
    def header(channel: int, size: int, props: commands.Basic.Properties | None = None) -> bytes:
        return pamqp_frame.marshal(ContentHeader(0, size, props), channel)

    @staticmethod
    def body(channel: int, data: bytes) -> bytes:
        return pamqp_frame.marshal(ContentBody(data), channel)

    @staticmethod
    def heartbeat() -> bytes:
        return pamqp_frame.marshal(Heartbeat(), 0)

    @staticmethod
    def raw(frame_type: int, channel: int, payload: bytes, end: bytes = b"\xce") -> bytes:
        """A hand-made frame, for payloads no codec would produce."""
        return struct.pack(">BHI", frame_type, channel, len(payload)) + payload + end

    @classmethod
    def content(
        cls,
        channel: int,
        obj: PamqpMethod,
        body: bytes,
        props: commands.Basic.Properties | None = None,
        max_body_frame: int = 131072 - 8,
    ) -> bytes:
        """A method with content: method, header, then bodies of at most max_body_frame."""
        chunks = [body[i : i + max_body_frame] for i in range(0, len(body), max_body_frame)]
        return (
            cls.method(channel, obj)
            + cls.header(channel, len(body), props)
            + b"".join(cls.body(channel, chunk) for chunk in chunks)
        )

    @classmethod
    def deliver(
        cls,
        channel: int,
        body: bytes,
        delivery_tag: int = 1,
        props: commands.Basic.Properties | None = None,
        consumer_tag: str = "ctag",
        redelivered: bool = False,
        exchange: str = "ex",
        routing_key: str = "rk",
    ) -> bytes:
        deliver = commands.Basic.Deliver(
            consumer_tag=consumer_tag,
            delivery_tag=delivery_tag,
            redelivered=redelivered,
            exchange=exchange,
            routing_key=routing_key,
        )
        return cls.content(channel, deliver, body, props)


F = FrameFactory


def client_properties(connection_name: str | None = None) -> dict[str, Any]:
    """The client_properties leveret must announce in connection.start-ok."""
    props: dict[str, Any] = {
        "product": "leveret",
        "version": leveret.__version__,
        "platform": f"Python {platform.python_version()}",
        "information": "https://pypi.org/project/leveret/",
        "capabilities": dict(CLIENT_CAPABILITIES),
    }
    if connection_name:
        props["connection_name"] = connection_name
    return props


def handshake(
    conn: AMQPConnection | None = None,
    *,
    tune: tuple[int, int, int] = (2047, 131072, 60),
    expect_tune_ok: tuple[int, int, int] | None = None,
    mechanisms: str = "PLAIN AMQPLAIN",
    response: str = "\0guest\0guest",
    connection_name: str | None = None,
) -> AMQPConnection:
    """Drive `conn` from INITIAL to OPEN, asserting every byte it sends.

    `tune` is the broker's (channel_max, frame_max, heartbeat) proposal and
    `expect_tune_ok` what the client must answer (defaults to `tune`).
    """
    conn = conn if conn is not None else AMQPConnection()
    conn.initiate()
    assert conn.data_to_send() == PROTOCOL_HEADER

    start = commands.Connection.Start(server_properties=SERVER_PROPERTIES, mechanisms=mechanisms)
    assert conn.receive_data(F.method(0, start)) == []
    start_ok = commands.Connection.StartOk(
        client_properties=client_properties(connection_name),
        mechanism=conn.credentials.mechanism,
        response=response,
        locale="en_US",
    )
    assert conn.data_to_send() == F.method(0, start_ok)
    assert conn.state is ConnectionState.AWAIT_TUNE

    channel_max, frame_max, heartbeat = tune
    tune_method = commands.Connection.Tune(
        channel_max=channel_max, frame_max=frame_max, heartbeat=heartbeat
    )
    assert conn.receive_data(F.method(0, tune_method)) == []
    ok_channel_max, ok_frame_max, ok_heartbeat = expect_tune_ok or tune
    assert conn.data_to_send() == F.method(
        0,
        commands.Connection.TuneOk(
            channel_max=ok_channel_max, frame_max=ok_frame_max, heartbeat=ok_heartbeat
        ),
    ) + F.method(0, commands.Connection.Open(virtual_host=conn.virtual_host))
    assert conn.state is ConnectionState.AWAIT_OPEN_OK

    [opened] = conn.receive_data(F.method(0, commands.Connection.OpenOk()))
    assert isinstance(opened, ConnectionOpened)
    assert (opened.channel_max, opened.frame_max, opened.heartbeat) == (
        ok_channel_max,
        ok_frame_max,
        ok_heartbeat,
    )
    assert opened.server_properties == SERVER_PROPERTIES
    assert conn.state is ConnectionState.OPEN
    assert conn.data_to_send() == b""
    return conn


def open_channel(conn: AMQPConnection) -> int:
    """Open the next channel, asserting channel.open goes out and open-ok completes it."""
    channel_id = conn.open_channel()
    assert conn.data_to_send() == F.method(channel_id, commands.Channel.Open())
    [opened] = conn.receive_data(F.method(channel_id, commands.Channel.OpenOk()))
    assert isinstance(opened, ChannelOpened)
    assert opened.channel_id == channel_id
    return channel_id


def connected(**kwargs: Any) -> tuple[AMQPConnection, int]:
    """An open connection (broker tune 2047/131072/60) with channel 1 open."""
    conn = handshake(AMQPConnection(**kwargs))
    return conn, open_channel(conn)


def summarize(events: list[Event]) -> list[tuple[Any, ...]]:
    """Events as comparable tuples (events have no __eq__): type, slots, content."""
    out: list[tuple[Any, ...]] = []
    for event in events:
        slots: list[str] = []
        for cls in type(event).__mro__:
            slots.extend(s for s in getattr(cls, "__slots__", ()) if not s.startswith("_"))
        values = tuple((name, _comparable(getattr(event, name))) for name in sorted(slots))
        if hasattr(event, "properties"):
            values += (("properties", event.properties),)
        out.append((type(event).__name__, values))
    return out


def _comparable(value: Any) -> Any:
    if isinstance(value, PamqpMethod):  # pamqp methods have no __eq__
        return (value.name, tuple(value))
    return value
