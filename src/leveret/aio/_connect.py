"""connect(): from URLs and options to an open `Connection`."""

from __future__ import annotations

import math
import ssl as ssl_module
from collections.abc import Generator, Sequence
from types import TracebackType
from typing import Any

from leveret._url import ConnectionParameters, parse_url
from leveret.aio._backoff import Backoff
from leveret.aio._connection import DEFAULT_MAX_MESSAGE_SIZE, Connection
from leveret.aio._rpc import RpcReplies, check_rpc_replies
from leveret.telemetry import TelemetryOption, check_option, resolve

__all__ = ["connect"]

DEFAULT_URL = "amqp://guest:guest@localhost:5672/"


def _parameters(
    url: str | ConnectionParameters,
    *,
    heartbeat: int | None,
    connection_timeout: float | None,
    ssl: ssl_module.SSLContext | bool | None,
    name: str | None,
) -> ConnectionParameters:
    params = url if isinstance(url, ConnectionParameters) else parse_url(url)
    changes: dict[str, Any] = {}
    if heartbeat is not None:
        if (
            not isinstance(heartbeat, int)
            or isinstance(heartbeat, bool)
            or not 0 <= heartbeat <= 65535
        ):
            raise ValueError(f"heartbeat must be an int from 0 to 65535 seconds, got {heartbeat!r}")
        changes["heartbeat"] = heartbeat
    if connection_timeout is not None:
        if (
            not isinstance(connection_timeout, int | float)
            or isinstance(connection_timeout, bool)
            or not 0 < connection_timeout < math.inf
        ):
            raise ValueError(
                f"connection_timeout must be positive seconds, got {connection_timeout!r}"
            )
        changes["connection_timeout"] = float(connection_timeout)
    if isinstance(ssl, ssl_module.SSLContext):
        changes["use_tls"] = True
        changes["ssl_context"] = ssl
    elif ssl is True:
        changes["use_tls"] = True
    elif ssl is False:
        changes["use_tls"] = False
    if name is not None:
        changes["connection_name"] = name
    return params.with_options(**changes) if changes else params


class _Connecting:
    """What `connect()` returns: `await` it, or use it with `async with`."""

    def __init__(
        self,
        candidates: list[ConnectionParameters],
        options: dict[str, Any],
        telemetry: TelemetryOption,
    ) -> None:
        self._candidates = candidates
        self._options = options
        self._telemetry = telemetry
        self._connection: Connection | None = None

    async def _connect(self) -> Connection:
        first = self._candidates[0]
        telemetry = resolve(
            self._telemetry, first.connection_name or first.display(), first.host, first.port
        )
        connection = Connection(self._candidates, telemetry=telemetry, **self._options)
        await connection._connect_first()
        if telemetry is not None:
            telemetry.observe(connection)
        return connection

    def __await__(self) -> Generator[Any, None, Connection]:
        return self._connect().__await__()

    async def __aenter__(self) -> Connection:
        self._connection = await self._connect()
        return self._connection

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._connection is not None:
            await self._connection.close()


def connect(
    url: str | ConnectionParameters | Sequence[str | ConnectionParameters] = DEFAULT_URL,
    *,
    heartbeat: int | None = None,
    connection_timeout: float | None = None,
    ssl: ssl_module.SSLContext | bool | None = None,
    name: str | None = None,
    close_timeout: float = 5.0,
    drain_timeout: float | None = None,
    reconnect: bool = True,
    backoff: Backoff | None = None,
    publish_timeout: float | None = 60.0,
    operation_timeout: float = 60.0,
    separate_publisher: bool = True,
    max_in_flight: int = 10_000,
    stamp_messages: bool = True,
    telemetry: TelemetryOption = None,
    max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
    rpc_replies: RpcReplies = "queue",
) -> _Connecting:
    """Connect to RabbitMQ: `async with leveret.connect(url) as conn:` or `conn = await connect(url)`.

    `url` may be a list of URLs, tried in order. Keyword arguments override
    what the URL says. Everything is validated before any socket opens.

    Once connected, a lost connection is re-established (unless
    `reconnect=False`) with `backoff` between rounds over the URLs; the
    declared topology and consumers are restored and unconfirmed publishes
    sent again. `publish_timeout` bounds each `publish()` (None: no bound);
    `operation_timeout` bounds how long other calls wait for a reconnect.
    With `separate_publisher` (the default), publishes use a second
    connection, opened on the first publish, so that a broker that blocks
    publishers (a memory or disk alarm) never stops consumers from acking.
    Leaving `async with` (or `close()`) first stops the connection's
    subscriptions and waits up to `drain_timeout` (default: `close_timeout`)
    for their running handlers and for unconfirmed publishes; `close_timeout`
    bounds the close handshake. At most `max_in_flight` publishes await
    their confirms at once; more wait their turn (within their timeout), so
    memory stays bounded. With `stamp_messages`, publishes get a unique
    `message_id` and a `timestamp` unless they carry their own. A publish
    whose body is over `max_message_size` (default 128 MiB, RabbitMQ 3.x's
    limit; 4.x brokers default to 16 MiB) raises MessageTooLarge before
    anything is sent. `telemetry` turns OpenTelemetry spans and metrics on
    or off (see `leveret.telemetry`; by default on when the program
    configured an OpenTelemetry SDK). `conn.stats()` counts either way.
    `rpc_replies` is where `conn.call()` has replies sent: "queue" (an
    exclusive reply queue of the connection, the faster) or "direct"
    (RabbitMQ's direct reply-to: no queue, no configure permission needed).
    """
    if (
        not isinstance(max_message_size, int)
        or isinstance(max_message_size, bool)
        or max_message_size < 1
    ):
        raise ValueError(f"max_message_size must be a positive int, got {max_message_size!r}")
    if not isinstance(max_in_flight, int) or isinstance(max_in_flight, bool) or max_in_flight < 1:
        raise ValueError(f"max_in_flight must be a positive int, got {max_in_flight!r}")
    for what, value in (("close_timeout", close_timeout), ("operation_timeout", operation_timeout)):
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value > 0:
            raise ValueError(f"{what} must be positive seconds, got {value!r}")
    if drain_timeout is not None and (
        not isinstance(drain_timeout, (int, float))
        or isinstance(drain_timeout, bool)
        or not 0 <= drain_timeout < math.inf
    ):
        raise ValueError(
            f"drain_timeout must be seconds (0 or more) or None, got {drain_timeout!r}"
        )
    if publish_timeout is not None and (
        not isinstance(publish_timeout, (int, float))
        or isinstance(publish_timeout, bool)
        or not publish_timeout > 0
    ):
        raise ValueError(
            f"publish_timeout must be positive seconds or None, got {publish_timeout!r}"
        )
    check_option(telemetry)
    check_rpc_replies(rpc_replies)
    if backoff is not None and not isinstance(backoff, Backoff):
        raise TypeError(f"backoff must be a leveret.Backoff, got {type(backoff).__name__}")
    urls: Sequence[str | ConnectionParameters]
    urls = [url] if isinstance(url, (str, ConnectionParameters)) else list(url)
    if not urls:
        raise ValueError("connect() needs at least one URL")
    candidates = [
        _parameters(
            u, heartbeat=heartbeat, connection_timeout=connection_timeout, ssl=ssl, name=name
        )
        for u in urls
    ]
    options: dict[str, Any] = {
        "close_timeout": close_timeout,
        "drain_timeout": drain_timeout,
        "reconnect": bool(reconnect),
        "backoff": backoff,
        "publish_timeout": publish_timeout,
        "operation_timeout": operation_timeout,
        "separate_publisher": bool(separate_publisher),
        "max_in_flight": max_in_flight,
        "stamp_messages": bool(stamp_messages),
        "max_message_size": max_message_size,
        "rpc_replies": rpc_replies,
    }
    return _Connecting(candidates, options, telemetry)
