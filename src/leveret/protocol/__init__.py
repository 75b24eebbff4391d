"""The sans-IO AMQP 0-9-1 core: bytes in, events out; commands in, bytes out.

Nothing in this package opens a socket, starts a task or reads a clock, so
every protocol edge case can be driven by a unit test with byte fixtures, and
one core serves both the asyncio driver and the blocking facade.
"""

from leveret.protocol._codec import encode_properties, encode_shortstr, encode_table
from leveret.protocol._connection import (
    AMQPConnection,
    ChannelState,
    ConnectionState,
    Credentials,
)
from leveret.protocol._events import (
    ChannelClosed,
    ChannelFlowChanged,
    ChannelOpened,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionUnblocked,
    ConsumerCancelled,
    Delivery,
    Event,
    HeartbeatTimedOut,
    MethodReceived,
    PublishConfirmed,
    Returned,
)

__all__ = [
    "AMQPConnection",
    "ChannelClosed",
    "ChannelFlowChanged",
    "ChannelOpened",
    "ChannelState",
    "ConnectionBlocked",
    "ConnectionClosed",
    "ConnectionOpened",
    "ConnectionState",
    "ConnectionUnblocked",
    "ConsumerCancelled",
    "Credentials",
    "Delivery",
    "Event",
    "HeartbeatTimedOut",
    "MethodReceived",
    "PublishConfirmed",
    "Returned",
    "encode_properties",
    "encode_shortstr",
    "encode_table",
]
