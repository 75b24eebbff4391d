"""`leveret ping [URL]`: connect, then say who answered and what was negotiated.

The first thing to run when something does not work: it separates "no broker"
(exit 3), "wrong credentials" (4) and "no such vhost" (5) from problems in the
application, and shows the limits (frame_max, channel_max, heartbeat) that
the client and the broker agreed on.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any

import leveret
from leveret.cli import _args


def register(subparsers: Any) -> None:
    parser: argparse.ArgumentParser = subparsers.add_parser(
        "ping",
        parents=[_args.common()],
        help="connect and print the server's version and the negotiated limits",
        description="Open a connection (no reconnecting), print the broker's product, "
        "version and cluster name and the negotiated frame_max, channel_max and heartbeat, "
        "then close it.",
    )
    parser.add_argument(
        "target", metavar="URL", nargs="?", type=_args.url, help="default: --url's value"
    )
    parser.add_argument("--json", action="store_true", help="one JSON object")
    parser.set_defaults(run=run)


def _text(value: object) -> str:
    if isinstance(value, bytes | bytearray):
        return value.decode(errors="replace")
    return "" if value is None else str(value)


async def _ping(args: argparse.Namespace) -> int:
    url = args.target or args.url
    shown = leveret.parse_url(url).display()
    started = time.perf_counter()
    async with leveret.connect(url, name="leveret-cli-ping", reconnect=False) as conn:
        elapsed_ms = (time.perf_counter() - started) * 1000
        server = conn.server_properties
        capabilities = server.get("capabilities") or {}
        info: dict[str, Any] = {
            "url": shown,
            "connect_ms": round(elapsed_ms, 1),
            "product": _text(server.get("product")),
            "version": _text(server.get("version")),
            "platform": _text(server.get("platform")),
            "cluster_name": _text(server.get("cluster_name")),
            "frame_max": conn.frame_max,
            "channel_max": conn.channel_max,
            "heartbeat": conn.heartbeat,
            "capabilities": sorted(name for name, on in capabilities.items() if on is True),
        }
    if args.json:
        print(json.dumps(info))
        return 0
    print(f"connected to {shown} in {info['connect_ms']} ms")
    print(f"server       {info['product']} {info['version']} ({info['platform']})")
    print(f"cluster      {info['cluster_name']}")
    print(f"frame_max    {info['frame_max']} bytes")
    print(f"channel_max  {info['channel_max']}")
    heartbeat = f"{info['heartbeat']} s" if info["heartbeat"] else "off"
    print(f"heartbeat    {heartbeat}")
    return 0


def run(args: argparse.Namespace) -> int:
    return leveret.run(_ping(args))
