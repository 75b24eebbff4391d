"""The asyncio driver: sockets, timers and futures around the sans-IO core."""

from leveret.aio._backoff import Backoff
from leveret.aio._connect import connect
from leveret.aio._connection import Connection, QueueInfo
from leveret.aio._consumer import Consumer
from leveret.aio._listening import Listening
from leveret.aio._message import Message
from leveret.aio._publish_future import PublishFuture
from leveret.aio._retry import Retry
from leveret.aio._state_changes import StateChange, StateChanges
from leveret.aio._stats import ConnectionStats
from leveret.aio._subscription import Subscription

__all__ = [
    "Backoff",
    "Connection",
    "ConnectionStats",
    "Consumer",
    "Listening",
    "Message",
    "PublishFuture",
    "QueueInfo",
    "Retry",
    "StateChange",
    "StateChanges",
    "Subscription",
    "connect",
]
