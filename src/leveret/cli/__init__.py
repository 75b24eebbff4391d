"""The `leveret` command: ping, declare/delete/purge, publish, consume, call, bench, mesh, demo.

Every subcommand goes through the public API only. A failure prints one line
on stderr (`leveret: NotFound: 404 NOT_FOUND - no queue 'x' in vhost '/'`);
`--verbose` prints the traceback and the broker's reply fields before it. The
exit code says what failed, by the exception's class (the most specific row
wins, so `AuthenticationFailed` is 4 although it is also a `ConnectFailed`):

code  exception                                 meaning
   0  -                                         success
   1  LeveretError                              other leveret errors; bench: a message was lost
   2  UsageError, ValueError                    bad arguments or values; nothing was sent
   3  ConnectFailed                             no broker reachable (TCP, TLS or handshake)
   4  AuthenticationFailed                      the broker refused the credentials
   5  ConnectionClosed                          connection lost or closed (530 no such vhost)
   6  AccessRefused                             403: no permission for this resource
   7  NotFound                                  404: no such queue or exchange
   8  ResourceLocked                            405: queue exclusive to another connection
   9  PreconditionFailed                        406: e.g. redeclared with other arguments
  10  ChannelClosedByServer                     another channel error from the broker
  11  PublishNacked                             the broker refused (nacked) a message
  12  MessageReturned                           no queue took a --mandatory message or a call
  13  PublishTimeout, RPCTimeout, TimeoutError  no confirm or reply in time
  14  RemoteError                               call: the server's handler raised
  15  ConsumerCancelled                         consume: the broker cancelled the consumer
  70  Exception                                 internal error (a bug; --verbose shows where)
 130  KeyboardInterrupt                         interrupted (Ctrl-C)
 141  BrokenPipeError                           stdout closed early (e.g. piped into head)

Codes are stable: a new failure kind gets a new number, never an old one.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import leveret
from leveret.cli import (
    _bench,
    _call,
    _consume,
    _demo,
    _exit,
    _mesh,
    _ping,
    _publish,
    _topology,
)

__all__ = ["main"]

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _ping.register,
    _topology.register,
    _publish.register,
    _consume.register,
    _call.register,
    _bench.register,
    _mesh.register,
    _demo.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leveret",
        description="RabbitMQ from the command line, through leveret.",
        epilog="exit codes:\n" + _exit.render_table(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"leveret {leveret.__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        dest="verbose_before",  # a subcommand's own -v default would overwrite `verbose`
        help="the same as a subcommand's -v (`leveret -v publish ...`)",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def _run(args: argparse.Namespace) -> int:
    check: Callable[[argparse.Namespace], None] | None = getattr(args, "check", None)
    if check is not None:
        check(args)
    with _leveret_logs(getattr(args, "verbose", 0)):
        result: int = args.run(args)
    return result


class _Stderr(logging.Handler):
    """Writes to whatever sys.stderr is at the time (tests swap it)."""

    def emit(self, record: logging.LogRecord) -> None:
        try:
            print(self.format(record), file=sys.stderr)
        except Exception:  # noqa: BLE001 - logging must never raise
            self.handleError(record)


@contextlib.contextmanager
def _leveret_logs(verbose: int) -> Iterator[None]:
    """Errors only by default: a failing command already says why in its one error line,
    which leveret's warning about the same event would only repeat."""
    logger = logging.getLogger("leveret")
    handler = _Stderr()
    level = logger.level
    logger.setLevel(logging.ERROR if not verbose else logging.WARNING if verbose == 1 else 1)
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit code (argparse errors raise SystemExit(2))."""
    arguments = list(sys.argv[1:] if argv is None else argv)
    args = argparse.Namespace(verbose=0)
    try:
        if arguments[:1] == ["demo"]:  # the demo parses its own arguments, --help included
            return _demo.run_demo(arguments[1:])
        args = build_parser().parse_args(arguments)
        args.verbose = getattr(args, "verbose", 0) + args.verbose_before
        return _run(args)
    except BrokenPipeError:
        # stdout went away (e.g. `leveret consume q | head`): quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return _exit.BROKEN_PIPE
    except KeyboardInterrupt:
        print("leveret: interrupted", file=sys.stderr)
        return _exit.INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every failure becomes one line and its exit code
        return _exit.report(exc, args.verbose)
