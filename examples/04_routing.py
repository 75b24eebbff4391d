"""Tutorial 4, "Routing": receive only a subset of the messages.

emit_log_direct publishes to a direct exchange with the severity as routing key;
receive_logs_direct binds its queue once per severity it wants.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def emit_log_direct(severity: str, message: str) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_exchange("direct_logs", "direct")
        await conn.publish(message.encode(), exchange="direct_logs", routing_key=severity)
        print(f" [x] Sent {severity}:{message!r}")


async def receive_logs_direct(severities: list[str], count: int | None) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_exchange("direct_logs", "direct")
        queue = await conn.declare_queue("", exclusive=True)
        for severity in severities:
            await conn.bind_queue(queue.name, "direct_logs", routing_key=severity)
        async with conn.consume(queue.name, no_ack=True) as messages:
            print(" [*] Waiting for logs. To exit press CTRL+C")
            received = 0
            async for msg in messages:
                print(f" [x] {msg.routing_key}:{msg.text()!r}")
                received += 1
                if received == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    emit = sub.add_parser("emit_log_direct")
    emit.add_argument("severity", nargs="?", default="info")
    emit.add_argument("message", nargs="*")
    receive = sub.add_parser("receive_logs_direct")
    receive.add_argument("severities", nargs="+", metavar="severity", help="info, warning, error")
    receive.add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "emit_log_direct":
            asyncio.run(emit_log_direct(args.severity, " ".join(args.message) or "Hello World!"))
        else:
            asyncio.run(receive_logs_direct(args.severities, args.count))
