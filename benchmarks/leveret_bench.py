"""leveret adapter for the shared benchmark harness (`../shared/bench/run.py`).

Runs the harness's workloads through leveret's public API only:
  publish_confirm   `asyncio.ensure_future(conn.publish(...))` per message, at most --window
                    in flight, the same line as the aio_pika and aiormq anchors: publish()
                    sends at once and returns its confirm's future, so no task is made
  publish_noconfirm skipped: leveret always waits for publisher confirms
  consume_ack       `async with conn.consume(q, prefetch=...)`, `async for`, `msg.ack()`
  rpc_latency       `conn.serve(q, handler, no_ack=True)` on one connection, sequential
                    `await conn.call(q, body, expire_unanswered=False)` on another
                    (replies to its reply queue): the workload's no-ack consumers, no TTL.
                    Variant `leveret:defaults` keeps leveret's defaults, which cost
                    the broker more per call: each request acked after its reply (in
                    the same write) and expiring after the call's timeout

Variants of publish_confirm: `leveret:tasks`, a task per `await conn.publish(...)` (what a
coroutine-returning publish costs callers who wrap each one in a task); and, for the
blocking facade (`leveret:blocking_many`, `leveret:blocking_threads[_batch]`), to set beside
pika's BlockingConnection (`pika`):
  blocking_many     `conn.publish_many(bodies)` from a plain thread
  blocking_threads  16 threads, each a loop of `conn.publish(body)` on one shared connection
  blocking_threads_batch  the same, each thread's loop in `leveret.blocking.batch_scheduling()`

From the project root, with the broker from `python -m leveret.testing start`:
    python ../shared/bench/run.py --client-dir benchmarks \
        --python-for leveret=.venv/bin/python --clients leveret,aio_pika,raw_limit
"""

from __future__ import annotations

import asyncio
import contextlib
import sys
import time
from typing import Any

# run.py puts its anchors/ folder (with _common) on PYTHONPATH.
from _common import Meter, Skip, body_of, latency_stats, run_main  # type: ignore[import-not-found]

import leveret


async def _depth(conn: leveret.Connection, queue: str, expected: int, timeout: float = 15.0) -> int:
    deadline = time.monotonic() + timeout
    while True:
        depth = (await conn.declare_queue(queue, passive=True)).message_count
        if depth == expected or time.monotonic() > deadline:
            return depth
        await asyncio.sleep(0.05)


async def publish_confirm(args: Any) -> dict[str, Any]:
    async with leveret.connect(args.url) as conn:
        await conn.declare_queue(args.queue)
        body = body_of(args.size)
        window = asyncio.Semaphore(args.window)
        failures: list[BaseException] = []

        def done(task: asyncio.Future[None]) -> None:
            window.release()
            if not task.cancelled() and task.exception() is not None:
                failures.append(task.exception())  # type: ignore[arg-type]

        publish = conn.publish
        queue = args.queue

        async def in_a_task() -> None:
            await publish(body, routing_key=queue)

        meter = Meter()
        meter.start()
        if args.variant == "tasks":
            for _ in range(args.n):
                await window.acquire()
                asyncio.ensure_future(in_a_task()).add_done_callback(done)
        else:
            for _ in range(args.n):
                await window.acquire()
                asyncio.ensure_future(publish(body, routing_key=queue)).add_done_callback(done)
        for _ in range(args.window):
            await window.acquire()
        meter.stop()
        if failures:
            raise RuntimeError(f"{len(failures)} publishes failed, first: {failures[0]!r}")
        depth = await _depth(conn, args.queue, args.n)
    return {
        "meter": meter,
        "verified": depth == args.n,
        "depth": depth,
        "mode": (
            f"task per await conn.publish(), semaphore window={args.window}"
            if args.variant == "tasks"
            else f"ensure_future(conn.publish()) per message (no task: publish() returns "
            f"its confirm's future), semaphore window={args.window}"
        ),
    }


async def consume_ack(args: Any) -> dict[str, Any]:
    received = nbytes = 0
    async with leveret.connect(args.url) as conn:
        meter = Meter()
        meter.start()
        async with conn.consume(args.queue, prefetch=args.prefetch) as messages:
            async for message in messages:
                message.ack()
                received += 1
                nbytes += len(message.body)
                if received == args.n:
                    break
            await conn.declare_queue(args.queue, passive=True)  # flush round trip (timed)
            meter.stop()
        depth = (await conn.declare_queue(args.queue, passive=True)).message_count
    ok = received == args.n and depth == 0 and nbytes == args.n * args.size
    return {
        "meter": meter,
        "verified": ok,
        "received": received,
        "depth_after": depth,
        "mode": f"async for over conn.consume(prefetch={args.prefetch}), msg.ack() each",
    }


async def rpc_latency(args: Any) -> dict[str, Any]:
    async def echo(message: leveret.Message) -> bytes:
        return message.body

    # The workload: no-ack consumers, requests without a TTL (the peers' way). leveret's
    # defaults differ on both (acked requests, expiring after the call's timeout): the
    # variant `defaults` runs those.
    defaults = args.variant == "defaults"
    expire = defaults
    async with leveret.connect(args.url) as server, leveret.connect(args.url) as client:
        await server.declare_queue(args.queue)
        payload = body_of(args.size)
        async with server.serve(args.queue, echo, concurrency=10, no_ack=not defaults):
            for _ in range(args.warmup):
                await client.call(args.queue, payload, expire_unanswered=expire)
            samples: list[int] = []
            ok = True
            meter = Meter()
            meter.start()
            for _ in range(args.n):
                t0 = time.perf_counter_ns()
                reply = await client.call(args.queue, payload, expire_unanswered=expire)
                samples.append(time.perf_counter_ns() - t0)
                ok = ok and reply.body == payload
            meter.stop()
    return {
        "meter": meter,
        "verified": ok,
        **latency_stats(samples),
        "mode": "sequential conn.call(), replies to the client's exclusive reply queue; "
        + (
            "leveret's defaults: requests expire after the call's timeout, conn.serve() "
            "sends each reply and the request's ack in one write"
            if defaults
            else "expire_unanswered=False, conn.serve(no_ack=True): like the peers, no TTL "
            "and no-ack consumers"
        ),
    }


BLOCKING_THREADS = 16


def blocking_publish(args: Any) -> dict[str, Any]:
    from _threads import run_timed, shares

    import leveret.blocking

    body = body_of(args.size)
    with leveret.blocking.connect(args.url) as conn:
        conn.declare_queue(args.queue)
        meter = Meter()
        if args.variant == "blocking_many":
            meter.start()
            confirmed = conn.publish_many((body for _ in range(args.n)), routing_key=args.queue)
            meter.stop()
            mode = "blocking conn.publish_many(generator of N bodies)"
        else:
            done: list[int] = []

            batch = args.variant == "blocking_threads_batch"

            def publisher(count: int) -> None:
                with leveret.blocking.batch_scheduling() if batch else contextlib.nullcontext():
                    for _ in range(count):
                        conn.publish(body, routing_key=args.queue)
                done.append(count)

            run_timed(publisher, shares(args.n, BLOCKING_THREADS), meter)
            confirmed = sum(done)
            mode = f"{BLOCKING_THREADS} threads, each a loop of blocking conn.publish(), one connection"
            if batch:
                mode += ", each thread in leveret.blocking.batch_scheduling() (opt-in SCHED_BATCH)"
        depth = conn.declare_queue(args.queue, passive=True).message_count
    return {
        "meter": meter,
        "verified": confirmed == args.n and depth == args.n,
        "depth": depth,
        "mode": mode,
    }


def impl(args: Any) -> dict[str, Any]:
    if args.workload == "publish_noconfirm":
        raise Skip("leveret always uses publisher confirms; there is no fire-and-forget publish")
    if args.variant == "defaults":
        if args.workload != "rpc_latency":
            raise Skip("variant defaults is for rpc_latency only")
    elif args.variant != "default":
        if args.workload != "publish_confirm":
            raise Skip(f"variant {args.variant} is for publish_confirm only")
        if args.variant.startswith("blocking"):
            return blocking_publish(args)
    workloads = {
        "publish_confirm": publish_confirm,
        "consume_ack": consume_ack,
        "rpc_latency": rpc_latency,
    }
    result: dict[str, Any] = asyncio.run(workloads[args.workload](args))
    return result


if __name__ == "__main__":
    sys.exit(
        run_main(
            "leveret",
            impl,
            variants=(
                "default",
                "tasks",
                "blocking_many",
                "blocking_threads",
                "blocking_threads_batch",
                "defaults",
            ),
        )
    )
