"""`leveret demo ...`: the work-queue demo of `python -m leveret.demo`, same arguments."""

from __future__ import annotations

import argparse
from typing import Any


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "demo",
        help="run the work-queue demo on a private node (python -m leveret.demo)",
        add_help=False,
    )
    parser.add_argument("args", nargs=argparse.REMAINDER)
    parser.set_defaults(run=run)


def run_demo(argv: list[str]) -> int:
    """Hand every argument to the demo's own parser (so `leveret demo --help` is its help)."""
    from leveret import demo

    return demo.main(argv)


def run(args: argparse.Namespace) -> int:
    return run_demo(args.args)
