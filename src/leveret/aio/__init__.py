"""The asyncio driver: sockets, timers and futures around the sans-IO core."""

from leveret.aio._backoff import Backoff
from leveret.aio._connect import connect
from leveret.aio._connection import Connection, QueueInfo
from leveret.aio._consumer import Consumer
from leveret.aio._message import Message

__all__ = ["Backoff", "Connection", "Consumer", "Message", "QueueInfo", "connect"]
