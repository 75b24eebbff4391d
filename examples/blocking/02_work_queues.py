"""Tutorial 2, "Work Queues", blocking style: distribute time-consuming tasks among workers.

A durable queue and persistent messages survive a broker restart; prefetch=1 gives each
worker one task at a time (fair dispatch), and a task is acked only after it is done.
The work is a plain time.sleep(): the connection's I/O thread keeps the heartbeats going.
"""

import argparse
import contextlib
import os
import time

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")
SECONDS_PER_DOT = float(os.environ.get("SECONDS_PER_DOT", "1"))  # each "." is a second of work


def new_task(message: str) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_queue("task_queue", durable=True)
        conn.publish(message.encode(), routing_key="task_queue", persistent=True)
        print(f" [x] Sent {message!r}")


def worker(count: int | None) -> None:
    with leveret.blocking.connect(URL) as conn:
        conn.declare_queue("task_queue", durable=True)
        with conn.consume("task_queue", prefetch=1) as tasks:
            print(" [*] Waiting for messages. To exit press CTRL+C")
            for done, task in enumerate(tasks, start=1):
                print(f" [x] Received {task.text()!r}")
                time.sleep(task.body.count(b".") * SECONDS_PER_DOT)
                print(" [x] Done")
                task.ack()
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
            new_task(" ".join(args.message) or "Hello World!")
        else:
            worker(args.count)
