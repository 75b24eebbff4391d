"""Tutorial 2, "Work Queues": distribute time-consuming tasks among several workers.

A durable queue and persistent messages survive a broker restart; prefetch=1 gives each
worker one task at a time (fair dispatch), and a task is acked only after it is done.
"""

import argparse
import asyncio
import contextlib
import os

import leveret

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
SECONDS_PER_DOT = float(os.environ.get("SECONDS_PER_DOT", "1"))  # each "." is a second of work


async def new_task(message: str) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_queue("task_queue", durable=True)
        await conn.publish(message.encode(), routing_key="task_queue", persistent=True)
        print(f" [x] Sent {message!r}")


async def worker(count: int | None) -> None:
    async with leveret.connect(URL) as conn:
        await conn.declare_queue("task_queue", durable=True)
        async with conn.consume("task_queue", prefetch=1) as tasks:
            print(" [*] Waiting for messages. To exit press CTRL+C")
            done = 0
            async for task in tasks:
                print(f" [x] Received {task.text()!r}")
                await asyncio.sleep(task.body.count(b".") * SECONDS_PER_DOT)
                print(" [x] Done")
                task.ack()
                done += 1
                if done == count:
                    break


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="role", required=True)
    task = sub.add_parser("new_task")
    task.add_argument("message", nargs="*", help='e.g. "Third message..." (3 s of work)')
    work = sub.add_parser("worker")
    work.add_argument("--count", type=int, help="exit after COUNT tasks")
    args = parser.parse_args()
    with contextlib.suppress(KeyboardInterrupt):
        if args.role == "new_task":
            asyncio.run(new_task(" ".join(args.message) or "Hello World!"))
        else:
            asyncio.run(worker(args.count))
