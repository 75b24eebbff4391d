"""leveret: an asyncio-first RabbitMQ (AMQP 0-9-1) client that handles the edge cases.

async with leveret.connect("amqp://guest:guest@localhost/") as conn:
    await conn.declare_queue("tasks", durable=True)
    await conn.publish(b"hello", routing_key="tasks")       # waits for the confirm
    async with conn.consume("tasks") as messages:
        async for msg in messages:
            msg.ack()
"""

from leveret._properties import FieldTable, FieldValue, Properties
from leveret._url import ConnectionParameters, parse_url
from leveret._version import __version__
from leveret.aio import Connection, Consumer, Message, QueueInfo, connect
from leveret.exceptions import *  # noqa: F403
from leveret.exceptions import __all__ as _exceptions_all

__all__ = [
    "Connection",
    "ConnectionParameters",
    "Consumer",
    "FieldTable",
    "FieldValue",
    "Message",
    "Properties",
    "QueueInfo",
    "__version__",
    "connect",
    "parse_url",
    *_exceptions_all,
]
