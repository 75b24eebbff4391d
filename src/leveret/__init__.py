"""leveret: an asyncio-first RabbitMQ (AMQP 0-9-1) client that handles the edge cases.

    async with leveret.connect("amqp://guest:guest@localhost/") as conn:
        await conn.declare_queue("tasks", durable=True)
        await conn.publish(b"hello", routing_key="tasks")       # waits for the confirm
        async with conn.consume("tasks") as messages:
            async for msg in messages:
                msg.ack()

`leveret.blocking` offers the same API without `await`, for scripts and
threaded programs. The asyncio names (and `leveret.blocking`) are imported on
first use, so that `import leveret.protocol` (the sans-IO core) loads no
event-loop machinery.
"""

from typing import TYPE_CHECKING, Any

from leveret._properties import FieldTable, FieldValue, Properties
from leveret._queue_arguments import QueueType, StreamOffset
from leveret._url import ConnectionParameters, parse_url
from leveret._version import __version__
from leveret.exceptions import *  # noqa: F403
from leveret.exceptions import __all__ as _exceptions_all

if TYPE_CHECKING:
    from leveret import blocking
    from leveret._loop import run
    from leveret.aio import (
        Backoff,
        Connection,
        ConnectionStats,
        Consumer,
        Listening,
        Message,
        PublishFuture,
        QueueInfo,
        Retry,
        StateChange,
        StateChanges,
        Subscription,
        connect,
    )

_ASYNCIO_NAMES = frozenset(
    {
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
    }
)

__all__ = [
    "Backoff",
    "Connection",
    "ConnectionParameters",
    "ConnectionStats",
    "Consumer",
    "FieldTable",
    "FieldValue",
    "Listening",
    "Message",
    "Properties",
    "PublishFuture",
    "QueueInfo",
    "QueueType",
    "Retry",
    "StateChange",
    "StateChanges",
    "StreamOffset",
    "Subscription",
    "__version__",
    "blocking",
    "connect",
    "parse_url",
    "run",
    *_exceptions_all,
]


def __getattr__(name: str) -> Any:
    if name in _ASYNCIO_NAMES:
        from leveret import aio

        value = getattr(aio, name)
        globals()[name] = value
        return value
    if name == "run":  # lazy: `import leveret.protocol` must not import asyncio
        from leveret._loop import run

        return run
    if name == "blocking":  # leveret.blocking, the API without await
        import leveret.blocking

        return leveret.blocking
    raise AttributeError(f"module 'leveret' has no attribute {name!r}")
