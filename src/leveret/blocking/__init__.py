"""leveret.blocking: the asyncio API without `await`, for scripts and threaded programs.

    import leveret.blocking

    with leveret.blocking.connect("amqp://guest:guest@localhost/") as conn:
        conn.declare_queue("tasks", durable=True)
        conn.publish(b"hello", routing_key="tasks")           # returns once confirmed
        conn.publish_many([b"a", b"b", b"c"], routing_key="tasks")   # confirms pipelined
        with conn.consume("tasks", prefetch=10) as messages:
            for msg in messages.iter(timeout=5.0):             # stops after 5 s of silence
                msg.ack()

        def handle(msg):              # a plain function, run in a worker thread
            print(msg.decode())       # returns: acked; raises: requeued once, then rejected
        conn.subscribe_forever("tasks", handle, concurrency=4)      # until Ctrl-C

Each connection runs the asyncio driver on an event loop in a daemon thread
of its own (its I/O thread), so heartbeats, acks and reconnection carry on
while your code blocks. Every method may be called from any thread except
that I/O thread; Ctrl-C interrupts a blocked call and leaves the connection
usable (and `with` closes it).
"""

from leveret.aio import Backoff, QueueInfo, Retry
from leveret.blocking._connection import Body, Connection, connect
from leveret.blocking._consumer import Consumer, Message
from leveret.blocking._listening import Listening
from leveret.blocking._rpc import Handler, Server
from leveret.blocking._scheduling import batch_scheduling
from leveret.blocking._subscription import MessageHandler, Subscription

__all__ = [
    "Backoff",
    "Body",
    "Connection",
    "Consumer",
    "Handler",
    "Listening",
    "Message",
    "MessageHandler",
    "QueueInfo",
    "Retry",
    "Server",
    "Subscription",
    "batch_scheduling",
    "connect",
]
