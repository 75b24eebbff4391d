"""What the protocol core reports: past-tense facts, one class each.

Events are plain slotted objects, built once per frame on the hot paths
(`Delivery`, `PublishConfirmed`), so they carry positional constructors and
no validation.
"""

from __future__ import annotations

from typing import Any

from pamqp.base import Frame as PamqpMethod

from leveret._properties import Properties
from leveret.protocol._codec import (
    EMPTY_PROPERTIES_BYTES,
    decode_properties,
    decode_rpc_fields,
    rpc_fields_of,
)

__all__ = [
    "ChannelClosed",
    "ChannelFlowChanged",
    "ChannelOpened",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionUnblocked",
    "ConsumerCancelled",
    "Delivery",
    "Event",
    "HeartbeatTimedOut",
    "MethodReceived",
    "PublishConfirmed",
    "Returned",
]


class Event:
    """Base class of everything `AMQPConnection` reports."""

    __slots__ = ()

    def __repr__(self) -> str:
        names: tuple[str, ...] = self.__slots__
        fields = ", ".join(f"{slot}={getattr(self, slot)!r}" for slot in names)
        return f"{type(self).__name__}({fields})"


class ConnectionOpened(Event):
    """The handshake finished; the negotiated limits are final."""

    __slots__ = ("channel_max", "frame_max", "heartbeat", "server_properties")

    def __init__(
        self, server_properties: dict[str, Any], channel_max: int, frame_max: int, heartbeat: int
    ) -> None:
        self.server_properties = server_properties
        self.channel_max = channel_max
        self.frame_max = frame_max
        self.heartbeat = heartbeat


class ConnectionClosed(Event):
    """The connection ended: `by_server` tells who asked; `during_handshake` matters for auth."""

    __slots__ = (
        "by_server",
        "class_id",
        "during_handshake",
        "method_id",
        "reply_code",
        "reply_text",
    )

    def __init__(
        self,
        reply_code: int,
        reply_text: str,
        class_id: int,
        method_id: int,
        by_server: bool,
        during_handshake: bool,
    ) -> None:
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id
        self.by_server = by_server
        self.during_handshake = during_handshake


class HeartbeatTimedOut(Event):
    """Nothing arrived for two heartbeat intervals: treat the peer as dead."""

    __slots__ = ("silent_for",)

    def __init__(self, silent_for: float) -> None:
        self.silent_for = silent_for


class ConnectionBlocked(Event):
    """The broker stopped reading from publishers (a resource alarm)."""

    __slots__ = ("reason",)

    def __init__(self, reason: str) -> None:
        self.reason = reason


class ConnectionUnblocked(Event):
    """Every alarm cleared; publishing may resume."""

    __slots__ = ()


class ChannelOpened(Event):
    """channel.open-ok arrived."""

    __slots__ = ("channel_id",)

    def __init__(self, channel_id: int) -> None:
        self.channel_id = channel_id


class ChannelClosed(Event):
    """A channel ended; `by_server` means the broker closed it with an error."""

    __slots__ = ("by_server", "channel_id", "class_id", "method_id", "reply_code", "reply_text")

    def __init__(
        self,
        channel_id: int,
        reply_code: int,
        reply_text: str,
        class_id: int,
        method_id: int,
        by_server: bool,
    ) -> None:
        self.channel_id = channel_id
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id
        self.by_server = by_server


class ChannelFlowChanged(Event):
    """The broker asked us to stop (False) or resume (True) publishing on a channel."""

    __slots__ = ("active", "channel_id")

    def __init__(self, channel_id: int, active: bool) -> None:
        self.channel_id = channel_id
        self.active = active


class MethodReceived(Event):
    """The reply to a synchronous request (declare-ok, consume-ok, get-empty, ...)."""

    __slots__ = ("channel_id", "method")

    def __init__(self, channel_id: int, method: PamqpMethod) -> None:
        self.channel_id = channel_id
        self.method = method


class ConsumerCancelled(Event):
    """The broker cancelled a consumer (basic.cancel from the server)."""

    __slots__ = ("channel_id", "consumer_tag")

    def __init__(self, channel_id: int, consumer_tag: str) -> None:
        self.channel_id = channel_id
        self.consumer_tag = consumer_tag


class PublishConfirmed(Event):
    """basic.ack (`ack` True) or basic.nack for publish `delivery_tag` (and below, if multiple)."""

    __slots__ = ("ack", "channel_id", "delivery_tag", "multiple")

    def __init__(self, channel_id: int, delivery_tag: int, multiple: bool, ack: bool) -> None:
        self.channel_id = channel_id
        self.delivery_tag = delivery_tag
        self.multiple = multiple
        self.ack = ack


class _Content(Event):
    """A method with content: the properties are decoded on first access."""

    __slots__ = ("_properties", "_raw_properties", "body")

    body: bytes
    _raw_properties: bytes
    _properties: Properties | None

    @property
    def properties(self) -> Properties:
        props = self._properties
        if props is None:
            raw = self._raw_properties
            props = Properties() if raw == EMPTY_PROPERTIES_BYTES else decode_properties(raw)
            self._properties = props
        return props

    def rpc_fields(self) -> tuple[str | None, str | None, bool]:
        """(correlation_id, reply_to, has headers), without decoding all the properties."""
        props = self._properties
        if props is not None:
            return rpc_fields_of(props)
        return decode_rpc_fields(self._raw_properties)


class Delivery(_Content):
    """basic.deliver (from a consumer) or basic.get-ok (`consumer_tag` None), with content."""

    __slots__ = (
        "channel_id",
        "consumer_tag",
        "delivery_tag",
        "exchange",
        "message_count",
        "redelivered",
        "routing_key",
    )

    def __init__(
        self,
        channel_id: int,
        consumer_tag: str | None,
        delivery_tag: int,
        redelivered: bool,
        exchange: str,
        routing_key: str,
        message_count: int | None,
    ) -> None:
        self.channel_id = channel_id
        self.consumer_tag = consumer_tag
        self.delivery_tag = delivery_tag
        self.redelivered = redelivered
        self.exchange = exchange
        self.routing_key = routing_key
        self.message_count = message_count
        self.body = b""
        self._raw_properties = EMPTY_PROPERTIES_BYTES
        self._properties = None


class Returned(_Content):
    """basic.return with content: a mandatory publish that no queue took."""

    __slots__ = ("channel_id", "exchange", "reply_code", "reply_text", "routing_key")

    def __init__(
        self, channel_id: int, reply_code: int, reply_text: str, exchange: str, routing_key: str
    ) -> None:
        self.channel_id = channel_id
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = b""
        self._raw_properties = EMPTY_PROPERTIES_BYTES
        self._properties = None
