"""Tutorial 7, "Publisher Confirms": know that the broker has every message you published.

`await conn.publish()` returns once the broker confirmed the message (it raises if it was
refused), so awaiting one publish at a time is safe but slow; awaiting many at once, in
batches with asyncio.gather or from many tasks, keeps the guarantee and is much faster.
"""

import argparse
import asyncio
import os
import time

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


async def individually(conn: leveret.Connection, queue: str, n: int) -> int:
    confirmed = 0
    for i in range(n):
        await conn.publish(f"message {i}".encode(), routing_key=queue)
        confirmed += 1
    return confirmed


async def in_batches(conn: leveret.Connection, queue: str, n: int, batch_size: int = 100) -> int:
    confirmed = 0
    for start in range(0, n, batch_size):
        batch = range(start, min(start + batch_size, n))
        publishes = [conn.publish(f"message {i}".encode(), routing_key=queue) for i in batch]
        confirmed += len(await asyncio.gather(*publishes))
    return confirmed


async def from_many_tasks(conn: leveret.Connection, queue: str, n: int, tasks: int = 50) -> int:
    async def publisher(numbers: range) -> int:
        for i in numbers:
            await conn.publish(f"message {i}".encode(), routing_key=queue)
        return len(numbers)

    async with asyncio.TaskGroup() as group:
        running = [group.create_task(publisher(range(t, n, tasks))) for t in range(tasks)]
    return sum(task.result() for task in running)


async def main(n: int) -> None:
    async with leveret.connect(URL) as conn:
        for strategy in (individually, in_batches, from_many_tasks):
            queue = await conn.declare_queue("", exclusive=True)
            start = time.perf_counter()
            confirmed = await strategy(conn, queue.name, n)
            elapsed = time.perf_counter() - start
            queued = (await conn.declare_queue(queue.name, passive=True)).message_count
            print(
                f" [x] Published {n:,} messages {strategy.__name__.replace('_', ' ')} "
                f"in {elapsed:.2f} s ({n / elapsed:,.0f} msg/s): {confirmed:,} confirmed, "
                f"{queued:,} in the queue"
            )
            await conn.delete_queue(queue.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=10_000, help="per strategy (default 10,000)"
    )
    asyncio.run(main(parser.parse_args().messages))
