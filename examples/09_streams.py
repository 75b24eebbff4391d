"""Streams: an append-only log that any number of consumers read, each from where it likes.

Reading from "first" twice gives the same messages (reading does not remove them);
"next" sees only what arrives after the consumer started.
"""

import asyncio
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def read(conn: leveret.Connection, offset: leveret.StreamOffset, count: int) -> list[str]:
    lines = []
    async with conn.consume("events", prefetch=100, offset=offset) as messages:
        async for msg in messages:
            lines.append(f"{msg.stream_offset}:{msg.text()}")
            msg.ack()  # on a stream an ack only grants credit: nothing is removed
            if len(lines) == count:
                return lines
    return lines


async def main() -> None:
    async with leveret.connect(URL) as conn:
        await conn.delete_queue("events")  # start the log afresh for the example
        await conn.declare_queue("events", type="stream")  # durable by default
        for n in range(3):
            await conn.publish(f"event {n}", routing_key="events")
        print(" [x] first:", await read(conn, "first", 3))
        print(" [x] first again:", await read(conn, "first", 3))
        async with conn.consume("events", prefetch=10, offset="next") as messages:
            await conn.publish("event 3", routing_key="events")  # after the reader attached
            msg = await anext(messages)
            msg.ack()
            print(" [x] next:", [f"{msg.stream_offset}:{msg.text()}"])


if __name__ == "__main__":
    asyncio.run(main())
