"""Closing well: let running handlers finish before the link goes, and say why
publishes still pending got no confirm.

Why: a handler that is halfway through a message when the program leaves
`connect()` would otherwise lose its ack (the broker redelivers the message,
so the work is done twice) and any publish it was about to make. Closing
first stops every subscription still running on the connection (no new
message starts) and gives the handlers in progress `drain_timeout` seconds,
all subscriptions together, to finish and ack; only then are the publisher's
confirms awaited and the connection closed.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leveret.aio._connection import Connection
    from leveret.aio._subscription import Subscription

__all__ = ["close_reason", "drain_subscriptions", "finish_handlers"]

log = logging.getLogger("leveret.consumer")  # handler warnings, like the subscription's


async def drain_subscriptions(subscriptions: Iterable[Subscription], timeout: float) -> None:
    """Stop every subscription, waiting at most `timeout` in all for their handlers."""
    # A handler that closes the connection itself must not wait for (or cancel) itself.
    closer = asyncio.current_task()
    await asyncio.gather(*(_stop(s, timeout, closer) for s in list(subscriptions)))


async def _stop(
    subscription: Subscription, timeout: float, closer: asyncio.Task[Any] | None
) -> None:
    # Why the subscription ended is its owner's to see, on leaving its `async with`.
    subscription._failure = await subscription._stop(timeout, spare=closer)


async def finish_handlers(
    tasks: set[asyncio.Task[None]],
    timeout: float,
    grace: float,
    queue: str,
    spare: asyncio.Task[Any] | None = None,
) -> None:
    """Wait up to `timeout` for `tasks` (but `spare`); cancel the rest and wait up to
    `grace` for them.

    A handler that ignores its cancellation is left behind with a warning: close
    must never hang on user code.
    """
    others = set(tasks) - {spare or asyncio.current_task()}
    if not others:
        return
    _, pending = await asyncio.wait(others, timeout=timeout)
    if not pending:
        return
    log.warning(
        "leveret: %d handler(s) on %r did not finish within %ss; cancelled (their messages "
        "go back to the queue)",
        len(pending),
        queue,
        timeout,
    )
    for task in pending:
        task.cancel()
    _, stuck = await asyncio.wait(pending, timeout=grace)
    if stuck:
        log.warning(
            "leveret: %d handler(s) on %r ignored cancellation; closing without them",
            len(stuck),
            queue,
        )


def close_reason(connection: Connection) -> str:
    """What publishes still pending when the user closes are told: why they got no confirm."""
    if connection.is_blocked:
        return (
            "the connection was closed by the client while the broker blocked publishing "
            "(a memory or disk alarm); an unconfirmed message may or may not have arrived"
        )
    if not connection.is_connected:
        return (
            "the connection was closed by the client while reconnecting; an unconfirmed "
            "message may or may not have arrived"
        )
    return "the connection was closed by the client"
