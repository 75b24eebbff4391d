"""A publisher-to-consumer pipeline of numbered messages, run while a fault happens.

Every fault scenario asserts the same promises: each confirmed number is
consumed at least once, duplicates stay within what was in flight, no
publish fails, and nothing stalls (the longest gap without progress is
reported, and every wait is bounded so a stall fails the test).
"""

from __future__ import annotations

import asyncio
import struct
from collections import Counter
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import leveret

FAST = leveret.Backoff(initial=0.05, maximum=0.5)
WINDOW = 500
PREFETCH = 200


@dataclass
class Pipeline:
    total: int
    confirmed: set[int] = field(default_factory=set)
    received: Counter[int] = field(default_factory=Counter)
    redelivered_duplicates: int = 0
    failures: list[BaseException] = field(default_factory=list)
    events: Counter[str] = field(default_factory=Counter)
    longest_gap: float = 0.0
    # The pipeline's connections while it runs, for faults that need to know where they are.
    publisher: leveret.Connection | None = None
    consumer: leveret.Connection | None = None

    @property
    def duplicates(self) -> int:
        return sum(count - 1 for count in self.received.values())

    def report(self, name: str) -> str:
        return (
            f"{name}: published={self.total} confirmed={len(self.confirmed)} "
            f"consumed={len(self.received)} lost={len(self.confirmed - set(self.received))} "
            f"duplicates={self.duplicates} (redelivered {self.redelivered_duplicates}) "
            f"longest gap without progress={self.longest_gap:.2f}s events={dict(self.events)}"
            f" failures={Counter(repr(f)[:80] for f in self.failures).most_common(3)}"
        )

    def check(self, faults: int) -> None:
        """The promises, with `faults` the number of outages the run went through."""
        assert self.failures == []
        assert len(self.confirmed) == self.total
        assert self.confirmed - set(self.received) == set()  # nothing confirmed was lost
        # Duplicates are redeliveries or re-sent unconfirmed publishes: at most what
        # was in flight (publish window plus prefetch) at each outage.
        assert self.duplicates <= faults * (WINDOW + PREFETCH)


async def until(predicate: Callable[[], bool], timeout: float = 30.0) -> None:
    """Wait for a condition other tasks drive; fail (TimeoutError) instead of hanging."""
    async with asyncio.timeout(timeout):
        while True:  # polling: the conditions are plain counters in other tasks
            if predicate():
                return
            await asyncio.sleep(0.01)


async def run_pipeline(
    url: str | Sequence[str],
    queue: str,
    total: int,
    fault: Callable[[Pipeline], Awaitable[None]],
    *,
    timeout: float = 180.0,
    consumer_url: str | Sequence[str] | None = None,
    queue_arguments: dict[str, Any] | None = None,
    **connect_options: object,
) -> Pipeline:
    """Publish `total` persistent numbered messages and consume them while `fault` runs.

    `url` may be a list (a cluster's nodes); the consumer connects to `consumer_url`
    when given (another order of the nodes puts it on another node), else to `url`.
    The connections are named "pipeline-publisher" and "pipeline-consumer" (the
    publisher's own publishing connection: "pipeline-publisher (publisher)").
    """
    state = Pipeline(total)
    options: dict[str, object] = {"backoff": FAST, **connect_options}
    async with (
        leveret.connect(url, name="pipeline-publisher", **options) as publisher,  # type: ignore[arg-type]
        leveret.connect(
            url if consumer_url is None else consumer_url,
            name="pipeline-consumer",
            **options,  # type: ignore[arg-type]
        ) as consumer,
    ):
        state.publisher, state.consumer = publisher, consumer
        publisher.add_listener(lambda s, _e: state.events.update([f"publisher:{s}"]))
        consumer.add_listener(lambda s, _e: state.events.update([f"consumer:{s}"]))
        await publisher.declare_queue(queue, durable=True, arguments=queue_arguments)
        loop = asyncio.get_running_loop()
        last_progress = loop.time()

        def progress() -> None:
            nonlocal last_progress
            now = loop.time()
            state.longest_gap = max(state.longest_gap, now - last_progress)
            last_progress = now

        async def publish_all() -> None:
            window = asyncio.Semaphore(WINDOW)

            async def one(number: int) -> None:
                try:
                    await publisher.publish(
                        struct.pack(">I", number), routing_key=queue, persistent=True
                    )
                    state.confirmed.add(number)
                    progress()
                except leveret.LeveretError as exc:
                    state.failures.append(exc)
                finally:
                    window.release()

            tasks = []
            for number in range(total):
                await window.acquire()
                tasks.append(asyncio.ensure_future(one(number)))
            await asyncio.gather(*tasks)

        async def consume_all() -> None:
            async with consumer.consume(queue, prefetch=PREFETCH) as messages:
                async for message in messages:
                    (number,) = struct.unpack(">I", message.body)
                    if state.received[number] and message.redelivered:
                        state.redelivered_duplicates += 1
                    state.received[number] += 1
                    message.ack()
                    progress()
                    if len(state.received) == total:
                        return

        async with asyncio.timeout(timeout):
            await asyncio.gather(publish_all(), consume_all(), fault(state))
        await publisher.delete_queue(queue)
    return state
