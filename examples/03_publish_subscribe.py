"""Tutorial 3, "Publish/Subscribe": deliver every log message to every listening consumer.

emit_log publishes to a fanout exchange; each receive_logs binds its own server-named,
exclusive queue to it, which the broker deletes when the receiver disconnects.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def emit_log(message: str) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_exchange("logs", "fanout")
        await conn.publish(message.encode(), exchange="logs")
        print(f" [x] Sent {message!r}")


async def receive_logs(count: int | None) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_exchange("logs", "fanout")
        queue = await conn.declare_queue("", exclusive=True)  # a fresh, private queue
        await conn.bind_queue(queue.name, "logs")
        async with conn.consume(queue.name, no_ack=True) as messages:
            print(" [*] Waiting for logs. To exit press CTRL+C")
            received = 0
            async for msg in messages:
                print(f" [x] {msg.text()}")
                received += 1
                if received == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    emit = sub.add_parser("emit_log")
    emit.add_argument("message", nargs="*")
    receive = sub.add_parser("receive_logs")
    receive.add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "emit_log":
            asyncio.run(emit_log(" ".join(args.message) or "info: Hello World!"))
        else:
            asyncio.run(receive_logs(args.count))
