"""Tutorial 1, "Hello World!": send a message to a named queue and receive it.

Run `python examples/01_hello_world.py receive` in one terminal,
then `python examples/01_hello_world.py send` in another.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def send() -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_queue("hello")
        await conn.publish(b"Hello World!", routing_key="hello")  # returns once the broker has it
        print(" [x] Sent 'Hello World!'")


async def receive(count: int | None) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_queue("hello")
        async with conn.consume("hello") as messages:
            print(" [*] Waiting for messages. To exit press CTRL+C")
            received = 0
            async for msg in messages:
                print(f" [x] Received {msg.text()!r}")
                msg.ack()
                received += 1
                if received == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    sub.add_parser("send")
    sub.add_parser("receive").add_argument("--count", type=int, help="exit after COUNT messages")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        asyncio.run(send() if args.role == "send" else receive(args.count))
