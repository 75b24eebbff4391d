"""Memory over a long run: does leveret hold on to anything per message?

A publisher (1000 confirms in flight, a task per `await conn.publish`) and a
consumer (prefetch 1000, `msg.ack()` each) on two connections of one process
move N messages (default 1,000,000) through one queue, while tracemalloc
records the Python heap every N/20 messages. The first tenth is warm-up
(caches, pools, the broker's first credit). What is in flight makes single
samples wander by a few hundred KB, so the median of the four samples after
warm-up is compared with the median of the last four: at N = 1,000,000, a
leak of one byte per message would show as a megabyte.

    python benchmarks/memory.py --url amqp://guest:guest@127.0.0.1:5672/ [--n 1000000]

Prints one JSON object (the samples, the growth after warm-up, the largest
growing allocation sites); `benchmarks/run.py` puts it in docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import tracemalloc
import uuid
from typing import Any

import leveret

WINDOW = 1000
PREFETCH = 1000
FLAT_BYTES = 1024 * 1024  # growth after warm-up that still counts as flat (1 B/msg at 1M)


def _heap() -> int:
    gc.collect()
    return tracemalloc.get_traced_memory()[0]


async def measure(url: str, n: int, size: int) -> dict[str, Any]:
    queue = f"bench.memory.{uuid.uuid4().hex[:8]}"
    body = b"x" * size
    every = max(1, n // 20)
    samples: list[tuple[int, int]] = []
    snapshots: list[tracemalloc.Snapshot] = []
    async with leveret.connect(url) as publisher, leveret.connect(url) as consumer:
        await consumer.declare_queue(queue, auto_delete=True)

        async def consume() -> int:
            received = 0
            async with consumer.consume(queue, prefetch=PREFETCH) as messages:
                async for message in messages:
                    message.ack()
                    received += 1
                    if received % every == 0:
                        samples.append((received, _heap()))
                        if received in (every * 2, every * 20):
                            snapshots.append(tracemalloc.take_snapshot())
                    if received == n:
                        return received
            return received

        receiving = asyncio.ensure_future(consume())
        window = asyncio.Semaphore(WINDOW)
        failures: list[BaseException] = []

        def done(task: asyncio.Task[None]) -> None:
            window.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        started = time.monotonic()
        for _ in range(n):
            await window.acquire()
            asyncio.ensure_future(publisher.publish(body, routing_key=queue)).add_done_callback(
                done
            )
        for _ in range(WINDOW):
            await window.acquire()
        received = await receiving
        seconds = time.monotonic() - started
    if failures:
        raise RuntimeError(f"{len(failures)} publishes failed, first: {failures[0]!r}")
    baseline = statistics.median(heap for _, heap in samples[2:6])
    growth = statistics.median(heap for _, heap in samples[-4:]) - baseline
    growing: list[str] = []
    if len(snapshots) == 2:
        for stat in snapshots[1].compare_to(snapshots[0], "lineno")[:5]:
            if stat.size_diff > 0:
                growing.append(f"{stat.traceback}: {stat.size_diff:+,} B ({stat.count_diff:+,})")
    return {
        "n": n,
        "received": received,
        "size": size,
        "seconds": round(seconds, 1),
        "samples": samples,
        "baseline_bytes": baseline,
        "growth_bytes": growth,
        "peak_bytes": tracemalloc.get_traced_memory()[1],
        "flat": received == n and growth <= FLAT_BYTES,
        "flat_limit_bytes": FLAT_BYTES,
        "growing_sites": growing,
        "mode": f"publisher window {WINDOW} (ensure_future(publish()) per message) + consumer prefetch {PREFETCH} "
        "(ack each), two connections, one process, tracemalloc on",
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--url", required=True)
    parser.add_argument("--n", type=int, default=1_000_000)
    parser.add_argument("--size", type=int, default=128)
    args = parser.parse_args(argv)
    tracemalloc.start()
    result = asyncio.run(measure(args.url, args.n, args.size))
    print(json.dumps(result))
    return 0 if result["flat"] else 1


if __name__ == "__main__":
    sys.exit(main())
