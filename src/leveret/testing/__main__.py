"""`python -m leveret.testing install|start|stop|url|ctl|logs`: a node that outlives the command.

For the Makefile and demos, where no test session owns the node: `start` leaves it running
with its state in a fixed directory, and the other commands find it there again.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from collections.abc import Sequence

from leveret.testing._node import (
    NodeStartError,
    RabbitmqctlError,
    RabbitMQNode,
    ensure_rabbitmq_installed,
)

DEFAULT_BASE_DIR = os.path.join(tempfile.gettempdir(), "leveret-demo-node")
DEFAULT_PORT = 5673


def _parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--base-dir", default=DEFAULT_BASE_DIR, help="node state dir (default: %(default)s)"
    )
    parser = argparse.ArgumentParser(
        prog="python -m leveret.testing", description=__doc__.split("\n", 1)[0]
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("install", help="apt-get install rabbitmq-server if it is missing")
    start = sub.add_parser("start", parents=[common], help="start a node, print its URL")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help="default: %(default)s")
    start.add_argument("--timeout", type=float, default=120.0, help="seconds to wait for boot")
    start.add_argument("--plugin", action="append", default=[], help="plugin to enable")
    sub.add_parser("stop", parents=[common], help="stop the node and delete its state")
    sub.add_parser("url", parents=[common], help="print the node's AMQP URL")
    sub.add_parser("logs", parents=[common], help="print the tail of the node's logs")
    sub.add_parser(
        "ctl",
        parents=[common],
        usage="python -m leveret.testing ctl [--base-dir DIR] ARGS...",
        help="run rabbitmqctl ARGS against the node",
    )
    return parser


def _split_ctl_args(argv: list[str]) -> tuple[list[str], list[str]]:
    """argparse cannot pass options such as -q through, so rabbitmqctl's arguments are cut off
    by hand: everything after `ctl [--base-dir DIR]`."""
    if argv[:1] != ["ctl"]:
        return argv, []
    head, rest = argv[:1], argv[1:]
    if rest[:1] == ["--base-dir"]:
        head, rest = head + rest[:2], rest[2:]
    elif rest[:1] and rest[0].startswith("--base-dir="):
        head, rest = head + rest[:1], rest[1:]
    if rest[:1] in (["-h"], ["--help"]):
        head, rest = head + rest[:1], rest[1:]
    return head, rest


def _start(args: argparse.Namespace) -> int:
    try:
        running = RabbitMQNode.attach(args.base_dir)
    except NodeStartError:
        running = None
    if running is not None and running.is_running():
        print(f"already running: {running.node_name} in {args.base_dir}", file=sys.stderr)
        print(running.url)
        return 0
    node = RabbitMQNode.start(
        port=args.port, base_dir=args.base_dir, start_timeout=args.timeout, plugins=args.plugin
    )
    node.detach()
    print(
        f"started {node.node_name}; stop it with: python -m leveret.testing stop", file=sys.stderr
    )
    print(node.url)
    return 0


def _stop(args: argparse.Namespace) -> int:
    try:
        node = RabbitMQNode.attach(args.base_dir)
    except NodeStartError:
        print(f"no node in {args.base_dir}; nothing to stop", file=sys.stderr)
        return 0
    node.stop()
    print(f"stopped {node.node_name}", file=sys.stderr)
    return 0


def _ctl(node: RabbitMQNode, args: Sequence[str]) -> int:
    try:
        sys.stdout.write(node.ctl(*args))
    except RabbitmqctlError as exc:
        sys.stdout.write(exc.stdout)
        sys.stderr.write(exc.stderr)
        return exc.returncode or 1
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    own_args, ctl_args = _split_ctl_args(list(sys.argv[1:] if argv is None else argv))
    args = _parser().parse_args(own_args)
    try:
        if args.command == "install":
            print(ensure_rabbitmq_installed())
            return 0
        if args.command == "start":
            return _start(args)
        if args.command == "stop":
            return _stop(args)
        node = RabbitMQNode.attach(args.base_dir)
        if args.command == "ctl":
            return _ctl(node, ctl_args)
        print(node.url if args.command == "url" else node.logs())
    except NodeStartError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
