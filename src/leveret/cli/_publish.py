"""`leveret publish`: send messages and wait until the broker confirmed every one.

The body comes from BODY, from `--file`, or with BODY `-` from stdin, one
message per line. Many messages are pipelined (`--window` awaiting confirms at
once) yet stay in order: the first publish goes alone, which opens the
publishing channel, and the rest are handed to it in sequence. The first
failure stops sending; the command waits for what is in flight, then exits
with that failure's code.
"""

from __future__ import annotations

import argparse
import asyncio
import concurrent.futures
import contextlib
import os
import sys
import threading
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import Any

import leveret
from leveret.cli import _args, _message
from leveret.cli._exit import UsageError
from leveret.cli._progress import Progress

Send = Callable[[bytes], Coroutine[Any, Any, None]]


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "publish",
        parents=[_args.common()],
        help="publish messages and wait for the broker's confirms",
        description="Publish BODY (--count times), the bytes of --file, or with BODY '-' "
        "every line of stdin as its own message, in order. Returns once the broker "
        "confirmed them all.",
    )
    parser.add_argument("body", metavar="BODY", nargs="?", help="message body, - for stdin lines")
    parser.add_argument("--exchange", "-e", default="", help="default: the default exchange")
    parser.add_argument("--routing-key", "-k", default="", help="e.g. a queue name")
    parser.add_argument(
        "--mandatory", action="store_true", help="fail (exit 12) if no queue takes a message"
    )
    parser.add_argument(
        "--count", type=_args.int_range(1), metavar="N", help="publish the body N times"
    )
    parser.add_argument(
        "--rate",
        type=_args.non_negative_float,
        default=0.0,
        metavar="MSGS_PER_S",
        help="at most this many messages a second, 0 = unlimited (default)",
    )
    parser.add_argument(
        "--window",
        type=_args.int_range(1, 10_000),
        default=100,
        metavar="N",
        help="messages awaiting their confirm at once (default: %(default)s); "
        "1 waits for each confirm before sending the next",
    )
    parser.add_argument(
        "--timeout",
        type=_args.seconds,
        metavar="SECONDS",
        help="give up on a message's confirm after this long (default: 60)",
    )
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress bar on stderr (default: for many messages when stderr is a terminal)",
    )
    _message.add_options(parser)
    parser.set_defaults(run=run)


async def _stdin_lines() -> AsyncIterator[bytes]:
    """stdin lines, read by a daemon thread of our own, so confirms and heartbeats go on while
    input is slow, and Ctrl-C is not held up by a read that may never return (asyncio.run
    joins the default executor's threads on the way out)."""
    if sys.stdin is None:
        raise UsageError("BODY '-' reads stdin, but stdin is closed")
    fd = sys.stdin.fileno()
    loop = asyncio.get_running_loop()
    lines: asyncio.Queue[bytes | Exception | None] = asyncio.Queue(maxsize=1024)

    def put(line: bytes | Exception | None) -> None:
        asyncio.run_coroutine_threadsafe(lines.put(line), loop).result()

    def read() -> None:
        # os.read, not sys.stdin.buffer: a daemon thread blocked inside the buffered
        # reader holds its lock, and the interpreter aborts when it finalizes stdin.
        pending = b""
        try:
            while chunk := os.read(fd, 65536):
                *complete, pending = (pending + chunk).split(b"\n")
                for line in complete:
                    put(line)
            if pending:
                put(pending)
            put(None)
        except (RuntimeError, concurrent.futures.CancelledError):
            return  # the loop is gone: the command is ending anyway
        except Exception as exc:  # noqa: BLE001 - handed to the reading side, never lost
            with contextlib.suppress(RuntimeError, concurrent.futures.CancelledError):
                put(exc)

    threading.Thread(target=read, name="leveret-stdin", daemon=True).start()
    while (line := await lines.get()) is not None:
        if isinstance(line, Exception):
            raise line
        yield line.removesuffix(b"\r")


async def _repeat(body: bytes, count: int) -> AsyncIterator[bytes]:
    for _ in range(count):
        yield body


def _source(args: argparse.Namespace) -> tuple[AsyncIterator[bytes], int | None]:
    """The bodies to send and how many (None: unknown until stdin ends)."""
    if args.body is not None and args.file is not None:
        raise UsageError("give either BODY or --file, not both")
    if args.body == "-":
        if args.count is not None:
            raise UsageError("--count repeats one body; with BODY '-' each stdin line is sent once")
        return _stdin_lines(), None
    body = _message.file_body(args)
    if body is None:
        if args.body is None:
            raise UsageError("nothing to publish: give BODY, - for stdin lines, or --file PATH")
        body = args.body.encode()
    count = args.count or 1
    return _repeat(body, count), count


class _Pipeline:
    """Keeps up to `window` publishes in flight and remembers the first failure."""

    def __init__(self, send: Send, window: int, progress: Progress | None) -> None:
        self.send = send
        self.slots = asyncio.Semaphore(window)
        self.progress = progress
        self.confirmed = 0
        self.error: BaseException | None = None
        self.pending: set[asyncio.Task[None]] = set()

    def _done(self, task: asyncio.Task[None]) -> None:
        self.pending.discard(task)
        self.slots.release()
        if task.cancelled():
            return
        error = task.exception()
        if error is not None:
            self.error = self.error or error
            return
        self.confirmed += 1
        if self.progress is not None:
            self.progress.advance()

    async def submit(self, body: bytes) -> None:
        await self.slots.acquire()
        task = asyncio.create_task(self.send(body))
        self.pending.add(task)
        task.add_done_callback(self._done)

    def cancel(self) -> None:
        """Stop waiting for confirms (Ctrl-C): a blocked broker could hold them for minutes."""
        for task in self.pending:
            task.cancel()

    async def drain(self) -> None:
        if self.pending:
            await asyncio.wait(set(self.pending))


async def _pace(start: float, index: int, rate: float) -> None:
    """Wait until message `index` is due at `rate` messages a second from `start`; behind
    schedule by less than a millisecond, go on (a timer per message would cap the rate)."""
    if rate:
        delay = start + index / rate - asyncio.get_running_loop().time()
        if delay > 0.001:
            await asyncio.sleep(delay)


async def _publish(args: argparse.Namespace) -> int:
    bodies, total = _source(args)
    props = _message.properties(args)
    show = args.progress
    if show is None:
        show = sys.stderr.isatty() and total != 1
    progress = Progress(sys.stderr, total) if show else None
    async with leveret.connect(
        args.url, name="leveret-cli-publish", publish_timeout=args.timeout
    ) as conn:

        async def send(body: bytes) -> None:
            await conn.publish(
                body,
                exchange=args.exchange,
                routing_key=args.routing_key,
                persistent=args.persistent,
                mandatory=args.mandatory,
                properties=props,
            )

        pipeline = _Pipeline(send, args.window, progress)
        start = asyncio.get_running_loop().time()
        index = 0
        try:
            async for body in bodies:
                await _pace(start, index, args.rate)
                if index == 0:
                    await send(body)  # opens the publishing channel; the rest keep order
                    pipeline.confirmed += 1
                    if progress is not None:
                        progress.advance()
                else:
                    await pipeline.submit(body)
                index += 1
                if pipeline.error is not None:
                    break
        except BaseException:
            pipeline.cancel()
            raise
        finally:
            await pipeline.drain()
            if progress is not None:
                progress.finish()
    if pipeline.error is not None:
        raise pipeline.error
    print(f"published {pipeline.confirmed} message(s)", file=sys.stderr)
    return 0


def run(args: argparse.Namespace) -> int:
    return leveret.run(_publish(args))
