"""`python -m leveret.demo`: watch leveret move messages through a real broker.

Starts a private RabbitMQ node (or uses --url), publishes --messages persistent messages
to a durable work queue, each awaited until the broker confirms it, and consumes them
with a pool of --workers. A small random fraction is nacked (requeued) once so that
redeliveries show up. At the end every message id must have been acked exactly once;
the exit code is 0 only then.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import random
import sys
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import leveret

__all__ = ["main"]

ID_BYTES = 8  # each body starts with the message id, big-endian
PUBLISH_WINDOW = 256  # publishes awaiting their confirm at any moment
STALL_SECONDS = 30.0  # give up when no counter moves for this long
BAR_WIDTH = 30


@dataclass
class Stats:
    messages: int
    published: int = 0
    confirmed: int = 0
    consumed: int = 0  # distinct ids acked
    duplicates: int = 0  # acks of an id already acked
    redeliveries: int = 0  # deliveries flagged redelivered
    nacked: set[int] = field(default_factory=set)
    acks: bytearray = field(init=False)  # acks per id (saturating at 255)

    def __post_init__(self) -> None:
        self.acks = bytearray(self.messages)

    def counters(self) -> tuple[int, int, int, int]:
        return self.published, self.confirmed, self.consumed, self.redeliveries


async def produce(
    conn: leveret.Connection, queue: str, stats: Stats, size: int, window: int
) -> None:
    """Publish every id, persistent; `window` publishers each await their confirms."""
    padding = b"." * (size - ID_BYTES)
    ids = iter(range(stats.messages))  # shared: each publisher takes the next id

    async def publisher() -> None:
        for message_id in ids:
            stats.published += 1
            body = message_id.to_bytes(ID_BYTES, "big") + padding
            await conn.publish(body, routing_key=queue, persistent=True)
            stats.confirmed += 1

    async with asyncio.TaskGroup() as group:
        for _ in range(min(window, stats.messages)):
            group.create_task(publisher())


async def work(
    conn: leveret.Connection,
    queue: str,
    stats: Stats,
    nack_rate: float,
    rng: random.Random,
    all_acked: asyncio.Event,
) -> None:
    """One worker: ack each message, except a random few nacked (requeued) the first time."""
    async with conn.consume(queue, prefetch=100) as messages:
        async for msg in messages:
            message_id = int.from_bytes(msg.body[:ID_BYTES], "big")
            if msg.redelivered:
                stats.redeliveries += 1
            if message_id not in stats.nacked and rng.random() < nack_rate:
                stats.nacked.add(message_id)
                msg.nack(requeue=True)
                continue
            if not msg.ack():
                continue  # its channel closed: the broker redelivers it
            if stats.acks[message_id]:
                stats.duplicates += 1
            else:
                stats.consumed += 1
            stats.acks[message_id] = min(stats.acks[message_id] + 1, 255)
            if stats.consumed == stats.messages:
                all_acked.set()


class Progress:
    """One live line: a bar redrawn with \\r on a terminal, plain lines every second otherwise."""

    def __init__(self, stats: Stats, started: float, tty: bool) -> None:
        self.stats = stats
        self.started = started
        self.tty = tty
        self.interval = 0.1 if tty else 1.0
        self._samples: collections.deque[tuple[float, int]] = collections.deque([(started, 0)])

    def rate(self, now: float) -> float:
        """Consumed per second over about the last second."""
        samples = self._samples
        samples.append((now, self.stats.consumed))
        while len(samples) > 2 and now - samples[1][0] >= 1.0:
            samples.popleft()
        (t0, c0), (t1, c1) = samples[0], samples[-1]
        return (c1 - c0) / (t1 - t0) if t1 > t0 else 0.0

    def show(self, now: float) -> None:
        s = self.stats
        w = len(str(s.messages))
        counts = (
            f"published {s.published:>{w}}  confirmed {s.confirmed:>{w}}  "
            f"consumed {s.consumed:>{w}}  redelivered {s.redeliveries}  "
            f"{self.rate(now):>7,.0f} msg/s"
        )
        if self.tty:
            done = s.consumed / s.messages if s.messages else 1.0
            filled = int(done * BAR_WIDTH)
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            sys.stdout.write(f"\r[{bar}] {done:4.0%}  {counts}\x1b[K")
            sys.stdout.flush()
        else:
            print(f"{now - self.started:6.1f} s  {counts}", flush=True)

    def end(self, now: float) -> None:
        self.show(now)
        if self.tty:
            sys.stdout.write("\n")


async def watch(
    stats: Stats,
    progress: Progress,
    all_acked: asyncio.Event,
    producer: asyncio.Task[None],
    workers: Sequence[asyncio.Task[None]],
) -> str | None:
    """Show progress until every message is confirmed and acked; else why the run failed.

    Consumers may ack the last messages before their publishers have the confirms,
    so the run ends when both are through.
    """
    loop = asyncio.get_running_loop()
    last_counters, last_change = stats.counters(), loop.time()
    acked = asyncio.create_task(all_acked.wait())
    running: set[asyncio.Task[Any]] = {acked, producer, *workers}
    try:
        while not (acked.done() and producer.done()):
            finished, running = await asyncio.wait(
                running, timeout=progress.interval, return_when=asyncio.FIRST_COMPLETED
            )
            for task in finished:
                if task is not acked and (exc := task.exception()) is not None:
                    while isinstance(exc, BaseExceptionGroup):  # from the producer's TaskGroup
                        exc = exc.exceptions[0]
                    return f"{type(exc).__name__}: {exc}"
            now = loop.time()
            if finished:
                continue  # the caller shows the final state
            progress.show(now)
            if stats.counters() != last_counters:
                last_counters, last_change = stats.counters(), now
            elif now - last_change > STALL_SECONDS:
                return f"no progress for {STALL_SECONDS:.0f} s"
        return None
    finally:
        acked.cancel()


async def run(url: str, messages: int, workers: int, size: int, nack_rate: float) -> bool:
    """The demo against the broker at `url`; True when every message was acked exactly once."""
    stats = Stats(messages)
    queue = f"leveret.demo.{uuid.uuid4().hex[:8]}"
    all_acked = asyncio.Event()
    rng = random.Random()
    async with (
        leveret.connect(url, name="leveret-demo producer") as producer_conn,
        leveret.connect(url, name="leveret-demo workers") as worker_conn,
    ):
        await producer_conn.declare_queue(queue, durable=True)
        print(
            f"queue {queue}: {messages} persistent messages of {size} bytes, {workers} workers, "
            f"nacking {nack_rate:.1%} once"
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        progress = Progress(stats, started, sys.stdout.isatty())
        consumers = [
            asyncio.create_task(work(worker_conn, queue, stats, nack_rate, rng, all_acked))
            for _ in range(workers)
        ]
        producer = asyncio.create_task(produce(producer_conn, queue, stats, size, PUBLISH_WINDOW))
        tasks = [producer, *consumers]
        try:
            failure = await watch(stats, progress, all_acked, producer, consumers)
            elapsed = loop.time() - started
            progress.end(loop.time())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        # Acks get no reply; the queue's depth at delete time is the broker's word on them.
        left = None if worker_conn.is_closed else await worker_conn.delete_queue(queue)

    never = sum(1 for n in stats.acks if n == 0)
    ok = (
        failure is None
        and never == 0
        and stats.duplicates == 0
        and stats.confirmed == stats.published == messages
        and left == 0
    )
    print(
        f"published {stats.published}, confirmed {stats.confirmed}, consumed {stats.consumed}, "
        f"duplicates {stats.duplicates}, redeliveries {stats.redeliveries} "
        f"(nacked on purpose: {len(stats.nacked)})"
    )
    print(
        f"{stats.consumed} messages in {elapsed:.2f} s: {stats.consumed / elapsed:,.0f} msg/s "
        f"end to end (publish, confirm, deliver, ack)"
    )
    if ok:
        print("OK: every message was published, confirmed, consumed and acked exactly once")
    else:
        problems = [failure] if failure else []
        if never:
            problems.append(f"{never} messages never acked")
        if stats.duplicates:
            problems.append(f"{stats.duplicates} acked more than once")
        if stats.confirmed != messages:
            problems.append(f"{messages - stats.confirmed} publishes not confirmed")
        if left:
            problems.append(f"{left} messages still in the queue at the end")
        print("FAILED: " + "; ".join(problems))
    return ok


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m leveret.demo",
        description="Publish and consume messages through RabbitMQ with leveret, live.",
    )
    parser.add_argument("--messages", type=_positive, default=20_000, help="default 20000")
    parser.add_argument("--workers", type=_positive, default=4, help="consumers (default 4)")
    parser.add_argument(
        "--size", type=int, default=256, help=f"body bytes, at least {ID_BYTES} (default 256)"
    )
    parser.add_argument(
        "--nack-rate",
        type=float,
        default=0.01,
        help="fraction of messages nacked (requeued) once (default 0.01)",
    )
    parser.add_argument(
        "--url", help="use the broker at this AMQP URL instead of starting a private node"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.size < ID_BYTES:
        parser.error(f"--size must be at least {ID_BYTES}")
    if not 0.0 <= args.nack_rate < 1.0:
        parser.error("--nack-rate must be from 0 up to (not including) 1")

    def demo(url: str) -> bool:
        return leveret.run(run(url, args.messages, args.workers, args.size, args.nack_rate))

    try:
        if args.url is not None:
            print(f"broker: {leveret.parse_url(args.url).display()}")
            ok = demo(args.url)
        else:
            from leveret.testing import NodeStartError, RabbitMQNode

            print("starting a private RabbitMQ node (installing rabbitmq-server if missing)...")
            try:
                node = RabbitMQNode.start()
            except NodeStartError as exc:
                print(f"could not start RabbitMQ: {exc}", file=sys.stderr)
                return 1
            with node:
                print(f"broker: {node.url} (base dir {node.base_dir})")
                try:
                    ok = demo(node.url)
                finally:
                    print("stopping the broker...")
    except KeyboardInterrupt:
        print("\ninterrupted")
        return 130
    except leveret.LeveretError as exc:
        print(f"error: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
