"""The `leveret` command: `bench`, `publish`, `consume`, `declare-queue`, `delete-queue`, `mesh`, `demo`.

Every subcommand goes through the public API only. Broker errors become one
line on stderr (`leveret: NotFound: ...`) and exit code 1; bad arguments are
argparse errors (exit code 2); Ctrl-C exits with 130.
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence

import leveret
from leveret.cli import _bench, _consume, _demo, _mesh, _publish, _queue

__all__ = ["main"]

SUBCOMMANDS: tuple[Callable[[argparse._SubParsersAction[argparse.ArgumentParser]], None], ...] = (
    _bench.register,
    _publish.register,
    _consume.register,
    _queue.register,
    _mesh.register,
    _demo.register,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="leveret", description="RabbitMQ from the command line, through leveret."
    )
    parser.add_argument("--version", action="version", version=f"leveret {leveret.__version__}")
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for register in SUBCOMMANDS:
        register(subparsers)
    return parser


def _run(argv: list[str]) -> int:
    if argv[:1] == ["demo"]:  # the demo parses its own arguments, --help included
        return _demo.run_demo(argv[1:])
    parser = build_parser()
    args = parser.parse_args(argv)
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
    try:
        return _run(list(sys.argv[1:] if argv is None else argv))
    except leveret.LeveretError as exc:
        print(f"leveret: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("leveret: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # stdout went away (e.g. `leveret consume q | head`): quietly, as other Unix tools do.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
