"""`leveret mesh call|publish|describe`: talk to leveret services from a shell."""

from __future__ import annotations

import argparse
import json
from typing import Any

import leveret
from leveret.cli import _args
from leveret.service import Mesh, MeshNames


def _json(value: str) -> Any:
    try:
        return json.loads(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"not JSON ({exc}): {value!r}") from None


def _context(value: str) -> dict[str, Any]:
    parsed = _json(value)
    if not isinstance(parsed, dict):
        raise argparse.ArgumentTypeError(f"context must be a JSON object, got {value!r}")
    return parsed


def register(subparsers: Any) -> None:
    mesh: argparse.ArgumentParser = subparsers.add_parser(
        "mesh", help="call services, publish events, describe a service"
    )
    verbs = mesh.add_subparsers(dest="verb", required=True, metavar="VERB")
    names = argparse.ArgumentParser(add_help=False)
    names.add_argument("--rpc-exchange", default=MeshNames.rpc_exchange)
    names.add_argument("--events-exchange", default=MeshNames.events_exchange)
    names.add_argument("--dead-letter-exchange", default=MeshNames.dead_letter_exchange)
    names.add_argument("--dead-letter-queue", default=MeshNames.dead_letter_queue)
    names.add_argument("--context", type=_context, default=None, help="JSON object, e.g. claims")

    call = verbs.add_parser(
        "call", parents=[_args.common(), names], help="call SERVICE.METHOD, print the JSON result"
    )
    call.add_argument("target", metavar="SERVICE.METHOD")
    call.add_argument("params", metavar="JSON", type=_json, nargs="?", default=None)
    call.add_argument("--timeout", type=_args.seconds, default=30.0)
    call.set_defaults(run=lambda args: leveret.run(_call(args, args.target, args.params)))

    publish = verbs.add_parser(
        "publish", parents=[_args.common(), names], help="publish an event ROUTING_KEY JSON"
    )
    publish.add_argument("topic", metavar="ROUTING_KEY")
    publish.add_argument("payload", metavar="JSON", type=_json)
    publish.set_defaults(run=lambda args: leveret.run(_publish(args)))

    describe = verbs.add_parser(
        "describe",
        parents=[_args.common(), names],
        help="the methods and events a running SERVICE exposes (answered by the service)",
    )
    describe.add_argument("service", metavar="SERVICE")
    describe.add_argument("--timeout", type=_args.seconds, default=10.0)
    describe.set_defaults(
        run=lambda args: leveret.run(_call(args, f"{args.service}.describe", None))
    )


def _names(args: argparse.Namespace) -> MeshNames:
    return MeshNames(
        rpc_exchange=args.rpc_exchange,
        events_exchange=args.events_exchange,
        dead_letter_exchange=args.dead_letter_exchange,
        dead_letter_queue=args.dead_letter_queue,
    )


async def _call(args: argparse.Namespace, target: str, params: Any) -> int:
    async with (
        leveret.connect(args.url, name="leveret-cli") as conn,
        Mesh(conn, names=_names(args), configure=False) as mesh,
    ):
        result = await mesh.call(target, params, timeout=args.timeout, context=args.context)
    print(json.dumps(result, indent=2, ensure_ascii=False))
    return 0


async def _publish(args: argparse.Namespace) -> int:
    async with (
        leveret.connect(args.url, name="leveret-cli") as conn,
        Mesh(conn, names=_names(args), configure=False) as mesh,
    ):
        await mesh.publish_event(args.topic, args.payload, context=args.context)
    return 0
