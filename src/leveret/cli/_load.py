"""The engine of `leveret bench`: producers, consumers and the counters they share.

Every body starts with a 16-byte header: the send time (`time.perf_counter_ns`,
one process so one clock), a random tag of this run and a sequence number. The
tag tells this run's messages from anything else in a reused queue; the
sequence number lets the end of the run check that each confirmed message was
consumed, and count duplicates. Consumers of a stream each read every message,
so there `consumed` counts one copy per consumer.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import struct
import time
from array import array
from dataclasses import dataclass
from typing import TextIO

import leveret
from leveret.cli._args import queue_arguments
from leveret.cli._summary import BenchSummary, Latency, percentile

__all__ = ["HEADER_SIZE", "BenchOptions", "Tracker", "run_bench"]

HEADER = struct.Struct(">QII")  # send time in ns, run tag, sequence number
HEADER_SIZE = HEADER.size
CONFIRMED = 1  # state bits per sequence number
CONSUMED = 2
GROW = 1 << 16


@dataclass(frozen=True, slots=True)
class BenchOptions:
    url: str
    producers: int
    consumers: int
    size: int
    rate: float  # per producer, 0 = unlimited
    confirm_window: int
    duration: float | None
    count: int | None
    persistent: bool
    queue_type: str
    prefetch: int
    queue: str | None
    drain_timeout: float


class Tracker:
    """Counters shared by every task of one run (all in one event loop, so no locks)."""

    def __init__(self, count: int | None = None, views: int = 1) -> None:
        self.tag = secrets.randbits(32)
        self.count = count
        self.deadline = float("inf")
        self.issued = 0  # sequence numbers handed out
        # One state byte per message per view: competing consumers share one view, while each
        # consumer of a stream reads every message and so has a view of its own.
        self.views = [bytearray(count if count is not None else GROW) for _ in range(views)]
        self.published = self.confirmed = self.failed = 0
        self.consumed = self.duplicates = self.foreign = 0
        self.confirm_ns = array("q")
        self.delivery_ns = array("q")
        self.started = self.publish_ended = self.last_delivery = 0.0
        self.stopping = False
        self.interrupted = False
        self.error: BaseException | None = None

    def start(self, duration: float | None) -> None:
        self.started = time.perf_counter()
        if duration is not None:
            self.deadline = time.monotonic() + duration

    def stop(self, error: BaseException | None = None) -> None:
        """No new publishes from now on; the first error is kept for the summary."""
        self.stopping = True
        if error is not None and self.error is None:
            self.error = error

    def task_ended(self, task: asyncio.Task[None]) -> None:
        """A consumer that fails ends the run: its error is the run's result."""
        if not task.cancelled() and task.exception() is not None:
            self.stop(task.exception())

    def next_seq(self) -> int | None:
        """The next message to publish, or None once the run is over."""
        if self.stopping or (self.count is not None and self.issued >= self.count):
            return None
        if time.monotonic() >= self.deadline:
            return None
        seq = self.issued
        self.issued += 1
        if seq >= len(self.views[0]):
            more = bytes(max(GROW, len(self.views[0])))
            for view in self.views:
                view.extend(more)
        return seq

    def body(self, seq: int, padding: bytes) -> tuple[int, bytes]:
        sent = time.perf_counter_ns()
        return sent, HEADER.pack(sent, self.tag, seq) + padding

    def confirmed_one(self, seq: int, latency_ns: int) -> None:
        self.confirmed += 1
        self.confirm_ns.append(latency_ns)
        for view in self.views:
            view[seq] |= CONFIRMED

    def delivered(self, body: bytes, now_ns: int, view: bytearray) -> None:
        if len(body) < HEADER_SIZE:
            self.foreign += 1
            return
        sent, tag, seq = HEADER.unpack_from(body)
        if tag != self.tag or seq >= self.issued:
            self.foreign += 1
            return
        state = view[seq]
        if state & CONSUMED:
            self.duplicates += 1
            return
        view[seq] = state | CONSUMED
        self.consumed += 1
        self.delivery_ns.append(now_ns - sent)
        self.last_delivery = time.perf_counter()

    def unconsumed(self) -> int:
        """Confirmed messages not delivered yet (a C-speed count over one byte per message)."""
        return sum(view.count(CONFIRMED) for view in self.views)

    def summary(self, options: BenchOptions, queue: str) -> BenchSummary:
        end = self.publish_ended or time.perf_counter()
        consumers = options.consumers
        return BenchSummary(
            queue=queue,
            queue_type=options.queue_type,
            producers=options.producers,
            consumers=consumers,
            size=options.size,
            published=self.published,
            confirmed=self.confirmed,
            failed=self.failed,
            consumed=self.consumed,
            duplicates=self.duplicates,
            lost=self.unconsumed() if consumers else None,
            publish_seconds=end - self.started if self.started else 0.0,
            consume_seconds=self.last_delivery - self.started if self.last_delivery else 0.0,
            confirm_latency=Latency.from_ns(self.confirm_ns),
            delivery_latency=Latency.from_ns(self.delivery_ns),
            interrupted=self.interrupted,
            error=None if self.error is None else f"{type(self.error).__name__}: {self.error}",
        )


class _Pacer:
    """Spaces one producer's publishes 1/rate apart; a late producer does not burst."""

    def __init__(self, rate: float) -> None:
        self.interval = 1.0 / rate
        self.next = time.monotonic()

    async def wait(self) -> None:
        now = time.monotonic()
        slot = max(now, self.next)
        self.next = slot + self.interval
        if slot > now:
            await asyncio.sleep(slot - now)


async def _lane(
    conn: leveret.Connection,
    tracker: Tracker,
    options: BenchOptions,
    queue: str,
    pacer: _Pacer | None,
) -> None:
    """One publish in flight at a time; a producer runs `confirm_window` of these."""
    padding = bytes(options.size - HEADER_SIZE)
    publish = conn.publish
    persistent = options.persistent
    while True:
        if pacer is not None:
            await pacer.wait()
        seq = tracker.next_seq()
        if seq is None:
            return
        sent, body = tracker.body(seq, padding)
        tracker.published += 1
        try:
            await publish(body, routing_key=queue, persistent=persistent)
        except leveret.LeveretError as exc:
            tracker.failed += 1
            tracker.stop(exc)
            return
        tracker.confirmed_one(seq, time.perf_counter_ns() - sent)


async def _produce(
    conn: leveret.Connection, tracker: Tracker, options: BenchOptions, queue: str
) -> None:
    pacer = _Pacer(options.rate) if options.rate > 0 else None
    lanes = (_lane(conn, tracker, options, queue, pacer) for _ in range(options.confirm_window))
    await asyncio.gather(*lanes)


async def _consume(messages: leveret.Consumer, tracker: Tracker, view: bytearray) -> None:
    delivered = tracker.delivered
    clock = time.perf_counter_ns
    async for message in messages:
        delivered(message.body, clock(), view)
        message.ack()
    raise RuntimeError("a consumer ended before the run did")


async def _drain(tracker: Tracker, consumers: list[asyncio.Task[None]], timeout: float) -> None:
    """Wait until every confirmed message was consumed, or `timeout` s pass without a delivery."""
    seen, quiet_since = -1, time.monotonic()
    while tracker.unconsumed() and not any(task.done() for task in consumers):
        if tracker.consumed + tracker.duplicates != seen:
            seen, quiet_since = tracker.consumed + tracker.duplicates, time.monotonic()
        elif time.monotonic() - quiet_since > timeout:
            return
        await asyncio.sleep(0.02)


def _p50_ms(samples: array[int], since: int) -> str:
    recent = sorted(samples[since:])
    return f"{percentile(recent, 50) / 1e6:.2f} ms" if recent else "-"


async def _report(tracker: Tracker, out: TextIO, tty: bool) -> None:
    """A progress line once a second: rates over the last second and its median latencies."""
    last = (0, 0, 0, 0, 0)
    last_time = tracker.started
    tick = 0
    try:
        while True:
            tick += 1
            await asyncio.sleep(max(0.0, tracker.started + tick - time.perf_counter()))
            now = time.perf_counter()
            counts = (
                tracker.published,
                tracker.confirmed,
                tracker.consumed,
                len(tracker.confirm_ns),
                len(tracker.delivery_ns),
            )
            span = now - last_time
            sent, confirmed, received = (
                (a - b) / span for a, b in zip(counts[:3], last[:3], strict=True)
            )
            line = (
                f"{now - tracker.started:5.0f} s  sent {sent:,.0f}/s  confirmed {confirmed:,.0f}/s"
                f"  received {received:,.0f}/s  p50 confirm {_p50_ms(tracker.confirm_ns, last[3])}"
                f"  delivery {_p50_ms(tracker.delivery_ns, last[4])}"
            )
            out.write(f"\r{line}\x1b[K" if tty else f"{line}\n")
            out.flush()
            last, last_time = counts, now
    finally:
        if tty and tick > 1:
            out.write("\n")
            out.flush()


async def _run_load(
    options: BenchOptions, tracker: Tracker, queue: str, progress: TextIO | None
) -> None:
    stream = options.queue_type == "stream"
    consume_arguments = {"x-stream-offset": "next"} if stream else None
    async with contextlib.AsyncExitStack() as stack:
        streams = []
        for i in range(options.consumers):
            conn = await stack.enter_async_context(
                leveret.connect(options.url, name=f"leveret-bench-consumer-{i}")
            )
            consumer = conn.consume(queue, prefetch=options.prefetch, arguments=consume_arguments)
            streams.append(await stack.enter_async_context(consumer))
        producers = [
            await stack.enter_async_context(
                leveret.connect(
                    options.url,
                    name=f"leveret-bench-producer-{i}",
                    separate_publisher=False,  # producers never consume: one connection each
                    max_in_flight=max(10_000, options.confirm_window),
                )
            )
            for i in range(options.producers)
        ]
        tracker.start(options.duration)
        views = tracker.views
        consumers = [
            asyncio.create_task(_consume(s, tracker, views[i % len(views)]))
            for i, s in enumerate(streams)
        ]
        for task in consumers:
            task.add_done_callback(tracker.task_ended)
        helpers: list[asyncio.Task[None]] = list(consumers)
        if progress is not None:
            helpers.append(asyncio.create_task(_report(tracker, progress, progress.isatty())))
        try:
            await asyncio.gather(*(_produce(p, tracker, options, queue) for p in producers))
            tracker.publish_ended = time.perf_counter()
            if consumers:
                await _drain(tracker, consumers, options.drain_timeout)
        finally:
            for task in helpers:
                task.cancel()
            await asyncio.gather(*helpers, return_exceptions=True)


async def run_bench(
    options: BenchOptions, tracker: Tracker, progress: TextIO | None = None
) -> BenchSummary:
    """Declare the queue, run the load, delete the queue (unless the user named it)."""
    durable, arguments = queue_arguments(options.queue_type)
    async with leveret.connect(options.url, name="leveret-bench") as admin:
        queue = options.queue or f"leveret-bench-{secrets.token_hex(6)}"
        await admin.declare_queue(queue, durable=durable or options.persistent, arguments=arguments)
        try:
            await _run_load(options, tracker, queue, progress)
        finally:
            if options.queue is None:
                with contextlib.suppress(leveret.LeveretError):
                    await admin.delete_queue(queue)
    return tracker.summary(options, queue)
