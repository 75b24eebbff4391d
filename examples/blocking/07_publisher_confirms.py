"""Tutorial 7, "Publisher Confirms", blocking style: know that the broker has every message.

`conn.publish()` returns once the broker confirmed the message (it raises if it was
refused): safe, but one round trip per message. `conn.publish_many()` sends a whole
batch and then waits for all its confirms, with the same guarantee, many times faster;
many threads publishing on one connection also share the round trips.
"""

import argparse
import os
import time
from concurrent.futures import ThreadPoolExecutor

import leveret.blocking

URL = os.environ.get("AMQP_URL", "amqp://guest:guest@localhost:5672/")


def individually(conn: leveret.blocking.Connection, queue: str, n: int) -> int:
    confirmed = 0
    for i in range(n):
        conn.publish(f"message {i}".encode(), routing_key=queue)
        confirmed += 1
    return confirmed


def with_publish_many(conn: leveret.blocking.Connection, queue: str, n: int) -> int:
    # Raises the first failure (after every outcome is known); returns how many were confirmed.
    return conn.publish_many((f"message {i}".encode() for i in range(n)), routing_key=queue)


def from_many_threads(
    conn: leveret.blocking.Connection, queue: str, n: int, threads: int = 16
) -> int:
    def publisher(numbers: range) -> int:
        for i in numbers:
            conn.publish(f"message {i}".encode(), routing_key=queue)
        return len(numbers)

    with ThreadPoolExecutor(max_workers=threads) as pool:
        return sum(pool.map(publisher, [range(t, n, threads) for t in range(threads)]))


def main(n: int) -> None:
    with leveret.blocking.connect(URL) as conn:
        for strategy in (individually, with_publish_many, from_many_threads):
            queue = conn.declare_queue("", exclusive=True)
            start = time.perf_counter()
            confirmed = strategy(conn, queue.name, n)
            elapsed = time.perf_counter() - start
            queued = conn.declare_queue(queue.name, passive=True).message_count
            print(
                f" [x] Published {n:,} messages {strategy.__name__.replace('_', ' ')} "
                f"in {elapsed:.2f} s ({n / elapsed:,.0f} msg/s): {confirmed:,} confirmed, "
                f"{queued:,} in the queue"
            )
            conn.delete_queue(queue.name)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--messages", type=int, default=10_000, help="per strategy (default 10,000)"
    )
    main(parser.parse_args().messages)
