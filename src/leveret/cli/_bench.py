"""`leveret bench`: a PerfTest-like load generator that also checks nothing was lost."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
from typing import Any

import leveret
from leveret.cli import _args
from leveret.cli._load import HEADER_SIZE, BenchOptions, Tracker, run_bench

DEFAULT_DURATION = 10.0

DESCRIPTION = """\
Publish with confirms from --producers connections and consume with acks on
--consumers connections, through one queue declared for the run. Prints
throughput and latency percentiles (publish -> confirm, publish -> delivery),
and checks at the end that every confirmed message was consumed ("lost"); on a
stream queue every consumer reads every message, so each must see all of them.
Runs for --duration seconds (default 10) or until --count messages.
"""


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "bench",
        parents=[_args.common()],
        help="measure throughput and latency against a broker",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--producers", type=_args.int_range(1), default=1, metavar="N")
    parser.add_argument("--consumers", type=_args.int_range(0), default=1, metavar="N")
    parser.add_argument(
        "--size",
        type=_args.int_range(HEADER_SIZE),
        default=128,
        metavar="BYTES",
        help=f"message body size, at least {HEADER_SIZE} (default: %(default)s)",
    )
    parser.add_argument(
        "--rate",
        type=_args.non_negative_float,
        default=0.0,
        metavar="MSGS_PER_S",
        help="publish rate limit per producer, 0 = unlimited (default)",
    )
    parser.add_argument(
        "--confirm-window",
        type=_args.int_range(1, 1_000_000),
        default=100,
        metavar="N",
        help="publishes awaiting their confirm per producer (default: %(default)s)",
    )
    until = parser.add_mutually_exclusive_group()
    until.add_argument("--duration", type=_args.seconds, metavar="SECONDS", help="default: 10 s")
    until.add_argument(
        "--count", type=_args.int_range(1), metavar="N", help="total messages to publish"
    )
    parser.add_argument("--persistent", action="store_true", help="delivery mode 2")
    parser.add_argument("--queue-type", choices=_args.QUEUE_TYPES, default="classic")
    parser.add_argument(
        "--prefetch",
        type=_args.int_range(0, 65535),
        default=1000,
        help="unacked messages per consumer, 0 = unlimited (default: %(default)s)",
    )
    parser.add_argument(
        "--queue", metavar="NAME", help="use (and keep) this queue instead of a fresh one"
    )
    parser.add_argument(
        "--drain-timeout",
        type=_args.seconds,
        default=10.0,
        metavar="SECONDS",
        help="after publishing, give up waiting for deliveries after this long without one",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    parser.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="a progress line on stderr every second (default: when stderr is a terminal)",
    )
    parser.set_defaults(run=run, check=lambda args: check(parser, args))


def check(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Combinations argparse cannot express."""
    if args.queue_type == "stream" and args.prefetch == 0:
        parser.error("--prefetch must be > 0 for a stream queue, got 0")
    if args.queue is not None and not args.queue:
        parser.error("--queue must not be empty")


def _options(args: argparse.Namespace) -> BenchOptions:
    duration = args.duration
    if duration is None and args.count is None:
        duration = DEFAULT_DURATION
    return BenchOptions(
        url=args.url,
        producers=args.producers,
        consumers=args.consumers,
        size=args.size,
        rate=args.rate,
        confirm_window=args.confirm_window,
        duration=duration,
        count=args.count,
        persistent=args.persistent,
        queue_type=args.queue_type,
        prefetch=args.prefetch,
        queue=args.queue,
        drain_timeout=args.drain_timeout,
    )


async def _bench(args: argparse.Namespace) -> int:
    options = _options(args)
    views = options.consumers if options.queue_type == "stream" else 1
    tracker = Tracker(options.count, max(views, 1))
    loop = asyncio.get_running_loop()

    def interrupt() -> None:
        # The first Ctrl-C ends the run gracefully (summary included); the next one is the
        # default KeyboardInterrupt.
        tracker.interrupted = True
        tracker.stop()
        loop.remove_signal_handler(signal.SIGINT)

    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):
        loop.add_signal_handler(signal.SIGINT, interrupt)  # main thread of a POSIX process only
    show = args.progress if args.progress is not None else sys.stderr.isatty()
    try:
        summary = await run_bench(options, tracker, sys.stderr if show else None)
    finally:
        loop.remove_signal_handler(signal.SIGINT)
    if args.json:
        print(json.dumps(summary.to_json()))
    else:
        print(summary.render())
    if tracker.error is not None:
        print(f"leveret: {summary.error}", file=sys.stderr)
    if summary.interrupted:
        return 130
    return 0 if summary.ok else 1


def run(args: argparse.Namespace) -> int:
    return leveret.run(_bench(args))
