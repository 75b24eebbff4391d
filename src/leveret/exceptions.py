"""Every way an AMQP operation can fail, as one tree under `LeveretError`.

Reply codes map to classes so callers can write `except NotFound:` instead of
comparing numbers. Soft errors (the broker closes one channel) derive from
`ChannelClosedByServer`; hard errors (the broker closes the whole connection)
derive from `ConnectionClosedByServer`. `from_reply_code` picks the class.
"""

from __future__ import annotations

__all__ = [
    "AccessRefused",
    "AuthenticationFailed",
    "ChannelClosed",
    "ChannelClosedByServer",
    "ChannelError",
    "CommandInvalid",
    "ConnectFailed",
    "ConnectionClosed",
    "ConnectionClosedByClient",
    "ConnectionClosedByServer",
    "ConnectionForced",
    "ConnectionLost",
    "ConsumerCancelled",
    "ConsumerTimeout",
    "ContentTooLarge",
    "FrameError",
    "HeartbeatTimeout",
    "InstanceAlreadyRunning",
    "InternalError",
    "InvalidPath",
    "LeveretError",
    "LocalProtocolError",
    "MessageReturned",
    "MessageTooLarge",
    "NoConsumers",
    "NoRoute",
    "NotAllowed",
    "NotFound",
    "NotImplementedByServer",
    "PayloadError",
    "PreconditionFailed",
    "ProtocolError",
    "PublishError",
    "PublishNacked",
    "PublishTimeout",
    "RPCTimeout",
    "RemoteError",
    "RemoteProtocolError",
    "ResourceError",
    "ResourceLocked",
    "ServiceNotConfigured",
    "SyntaxError_",
    "UnexpectedFrame",
    "channel_error",
    "connection_error",
]

import typing

if typing.TYPE_CHECKING:
    from leveret._properties import Properties


class LeveretError(Exception):
    """Root of every exception leveret raises on purpose."""


# -- protocol ---------------------------------------------------------------


class ProtocolError(LeveretError):
    """A frame or a call that breaks AMQP 0-9-1; see the two subclasses."""

    reply_code: int = 505


class LocalProtocolError(ProtocolError):
    """Our side asked for something illegal in the current state (a bug or misuse)."""


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes we cannot accept (malformed, truncated or out of order)."""

    def __init__(self, message: str, reply_code: int = 505) -> None:
        super().__init__(message)
        self.reply_code = reply_code


# -- connection -------------------------------------------------------------


class ConnectFailed(LeveretError):
    """The TCP/TLS connection or the AMQP handshake could not be completed."""


class AuthenticationFailed(ConnectFailed):
    """The broker refused the credentials (ACCESS_REFUSED during the handshake)."""


class ConnectionClosed(LeveretError):
    """The connection is gone; every pending and later operation raises this."""


class ConnectionClosedByClient(ConnectionClosed):
    """This program closed the connection."""


class ConnectionLost(ConnectionClosed):
    """The socket broke or reached EOF without an AMQP close."""


class HeartbeatTimeout(ConnectionLost):
    """Nothing arrived from the broker for two heartbeat intervals."""


class ConnectionClosedByServer(ConnectionClosed):
    """The broker closed the connection with a reply code (a hard error)."""

    reply_code: int = 0

    def __init__(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        super().__init__(f"{reply_code} {reply_text}")
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id


class ConnectionForced(ConnectionClosedByServer):
    """320: an operator or the broker closed the connection (e.g. rabbitmqctl)."""


class InvalidPath(ConnectionClosedByServer):
    """402: the virtual host path is invalid."""


class FrameError(ConnectionClosedByServer):
    """501: the broker could not parse a frame we sent."""


class SyntaxError_(ConnectionClosedByServer):
    """502: a field we sent had an illegal value."""


class CommandInvalid(ConnectionClosedByServer):
    """503: a method was invalid in the current state."""


class ChannelError(ConnectionClosedByServer):
    """504: a frame for a channel that is not open."""


class UnexpectedFrame(ConnectionClosedByServer):
    """505: a frame arrived that the broker did not expect."""


class ResourceError(ConnectionClosedByServer):
    """506: the broker ran out of a resource (e.g. channels)."""


class NotAllowed(ConnectionClosedByServer):
    """530: not allowed, e.g. the virtual host does not exist or is not permitted."""


class NotImplementedByServer(ConnectionClosedByServer):
    """540: the broker does not implement what was asked."""


class InternalError(ConnectionClosedByServer):
    """541: the broker hit an internal error."""


# -- channel ----------------------------------------------------------------


class ChannelClosed(LeveretError):
    """The channel carrying an operation closed before the operation finished."""


class ChannelClosedByServer(ChannelClosed):
    """The broker refused an operation and closed its channel (a soft error)."""

    reply_code: int = 0

    def __init__(
        self, reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
    ) -> None:
        super().__init__(f"{reply_code} {reply_text}")
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.class_id = class_id
        self.method_id = method_id


class ContentTooLarge(ChannelClosedByServer):
    """311: the message body is larger than the broker accepts."""


class NoRoute(ChannelClosedByServer):
    """312: no route (not sent by RabbitMQ as a channel close, kept for completeness)."""


class NoConsumers(ChannelClosedByServer):
    """313: no consumers (the `immediate` flag, which RabbitMQ does not support)."""


class AccessRefused(ChannelClosedByServer):
    """403: the user lacks permission for this resource."""


class NotFound(ChannelClosedByServer):
    """404: the queue or exchange does not exist."""


class ResourceLocked(ChannelClosedByServer):
    """405: the queue is exclusive to another connection."""


class PreconditionFailed(ChannelClosedByServer):
    """406: e.g. a redeclare with other arguments, or an unknown delivery tag."""


class ConsumerTimeout(PreconditionFailed):
    """406: a delivery stayed unacked longer than the broker's consumer_timeout.

    The broker closed the consumer's channel and requeued everything unacked on
    it (each comes back with `redelivered` set); acks of those deliveries are
    not sent. Raise the broker's `consumer_timeout` (or, on RabbitMQ 3.12+,
    the queue's `x-consumer-timeout`) for handlers that need longer.
    """


def _is_consumer_timeout(reply_code: int, reply_text: str) -> bool:
    # RabbitMQ: "PRECONDITION_FAILED - delivery acknowledgement on channel 1 timed out. ..."
    text = reply_text.lower()
    return reply_code == 406 and "acknowledgement" in text and "timed out" in text


class ConsumerCancelled(LeveretError):
    """The broker cancelled a consumer (its queue was deleted or failed over)."""

    def __init__(self, queue: str, consumer_tag: str) -> None:
        super().__init__(
            f"consumer {consumer_tag!r} on queue {queue!r} was cancelled by the broker"
        )
        self.queue = queue
        self.consumer_tag = consumer_tag


# -- publishing and RPC -----------------------------------------------------


class PublishError(LeveretError):
    """The broker did not accept a published message."""


class PublishNacked(PublishError):
    """The broker answered a publish with basic.nack (e.g. reject-publish overflow)."""


class PublishTimeout(PublishError, TimeoutError):
    """No confirm arrived before the publish's deadline (the message may still arrive)."""


class MessageReturned(PublishError):
    """A mandatory publish could not be routed to any queue."""

    def __init__(
        self,
        reply_code: int,
        reply_text: str,
        exchange: str,
        routing_key: str,
        body: bytes,
        properties: Properties,
    ) -> None:
        super().__init__(
            f"{reply_code} {reply_text}: exchange={exchange!r} routing_key={routing_key!r}"
        )
        self.reply_code = reply_code
        self.reply_text = reply_text
        self.exchange = exchange
        self.routing_key = routing_key
        self.body = body
        self.properties = properties


class MessageTooLarge(PublishError, ValueError):
    """A body over the connection's `max_message_size`, refused before anything was sent.

    The broker would refuse it anyway (and close the channel): RabbitMQ's
    `max_message_size` is 128 MiB up to 3.x and 16 MiB from 4.0. AMQP does not
    announce the broker's limit, so the client keeps its own, set to match.
    """

    def __init__(self, size: int, limit: int) -> None:
        super().__init__(
            f"message body of {size} bytes is over max_message_size={limit}: split it, or "
            "raise the broker's max_message_size and connect(max_message_size=...) together"
        )
        self.size = size
        self.limit = limit


class PayloadError(LeveretError, ValueError):
    """A message body could not be decoded as asked (bad JSON, wrong charset, failed validation)."""


class RPCTimeout(LeveretError, TimeoutError):
    """No reply to an RPC call arrived within its timeout."""


class RemoteError(LeveretError):
    """An RPC handler raised; carries the remote exception's type name and message."""

    def __init__(self, type_name: str, message: str, remote_traceback: str | None = None) -> None:
        super().__init__(f"{type_name}: {message}")
        self.type_name = type_name
        self.remote_message = message
        self.remote_traceback = remote_traceback  # only when the server opted in


class ServiceNotConfigured(LeveretError):
    """The service mesh's exchanges or queues do not exist and the service may not declare them."""


class InstanceAlreadyRunning(LeveretError):
    """Another instance with the same fixed instance id holds its response queue."""


# -- reply code mapping -----------------------------------------------------

_CHANNEL_ERRORS: dict[int, type[ChannelClosedByServer]] = {
    311: ContentTooLarge,
    312: NoRoute,
    313: NoConsumers,
    403: AccessRefused,
    404: NotFound,
    405: ResourceLocked,
    406: PreconditionFailed,
}

_CONNECTION_ERRORS: dict[int, type[ConnectionClosedByServer]] = {
    320: ConnectionForced,
    402: InvalidPath,
    501: FrameError,
    502: SyntaxError_,
    503: CommandInvalid,
    504: ChannelError,
    505: UnexpectedFrame,
    506: ResourceError,
    530: NotAllowed,
    540: NotImplementedByServer,
    541: InternalError,
}


def channel_error(
    reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
) -> ChannelClosedByServer:
    """The exception for a broker's channel.close, by reply code."""
    if _is_consumer_timeout(reply_code, reply_text):
        return ConsumerTimeout(reply_code, reply_text, class_id, method_id)
    cls = _CHANNEL_ERRORS.get(reply_code, ChannelClosedByServer)
    return cls(reply_code, reply_text, class_id, method_id)


def connection_error(
    reply_code: int, reply_text: str, class_id: int = 0, method_id: int = 0
) -> ConnectionClosedByServer:
    """The exception for a broker's connection.close, by reply code."""
    cls = _CONNECTION_ERRORS.get(reply_code, ConnectionClosedByServer)
    return cls(reply_code, reply_text, class_id, method_id)


for _code, _channel_cls in _CHANNEL_ERRORS.items():
    _channel_cls.reply_code = _code
for _code, _connection_cls in _CONNECTION_ERRORS.items():
    _connection_cls.reply_code = _code
