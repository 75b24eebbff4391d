"""Delayed retry without plugins: TTL'd retry queues that dead-letter back, and a parking lot.

For a queue `orders` and delays (1, 10, 60) the topology is:

    orders.retry.1s   x-message-ttl 1000,  dead-letters to "" / orders
    orders.retry.10s  x-message-ttl 10000, dead-letters to "" / orders
    orders.retry.1m   x-message-ttl 60000, dead-letters to "" / orders
    orders.parked     where a message rests after its last attempt

A failed message is forwarded (`forward_and_ack`: a confirmed copy, then
the ack) to the retry queue of its attempt; if that publish fails, the
message is requeued instead. The
attempt number comes from the `x-death` counts the broker adds on each pass
through a retry queue (and from leveret's own header, for brokers that stop
updating `x-death` on re-published messages). Each retry queue holds one
delay, so messages expire in the order they entered: no head-of-line wait.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from leveret.aio._forward import forward_and_ack

if TYPE_CHECKING:
    from leveret.aio._connection import Connection
    from leveret.aio._message import Message

__all__ = ["ATTEMPT_HEADER", "ERROR_HEADER", "Retry", "retry_attempt"]

log = logging.getLogger("leveret.retry")

ATTEMPT_HEADER = "x-leveret-attempt"
ERROR_HEADER = "x-leveret-error"


@dataclass(frozen=True)
class Retry:
    """A retry schedule: try again after each of `delays` (seconds), then park.

    With `park=False` the message is rejected after the last attempt instead
    (dead-lettered if the queue has a dead-letter exchange).
    """

    delays: Sequence[float] = (1.0, 10.0, 60.0)
    park: bool = True

    def __post_init__(self) -> None:
        delays = tuple(self.delays)
        if not delays:
            raise ValueError("Retry needs at least one delay")
        for delay in delays:
            if isinstance(delay, bool) or not isinstance(delay, (int, float)) or not delay > 0:
                raise ValueError(f"retry delays must be positive seconds, got {delay!r}")
            if round(delay * 1000) < 1:
                raise ValueError(f"retry delays must be at least 1 ms, got {delay!r}")
        object.__setattr__(self, "delays", delays)

    @property
    def attempts(self) -> int:
        """Handler calls a message gets at most: the first try plus one per delay."""
        return len(self.delays) + 1

    def retry_queue(self, queue: str, delay: float) -> str:
        return f"{queue}.retry.{_label(delay)}"

    def parking_queue(self, queue: str) -> str:
        return f"{queue}.parked"

    async def declare(self, connection: Connection, queue: str) -> None:
        """Declare the retry queues and the parking lot for `queue` (idempotent)."""
        if queue.startswith("amq.gen-") or not queue:
            raise ValueError(
                f"retry needs a named queue (retry queues route back to it by name), got {queue!r}"
            )
        for delay in dict.fromkeys(self.delays):
            await connection.declare_queue(
                self.retry_queue(queue, delay),
                durable=True,
                message_ttl=delay,
                dead_letter_exchange="",
                dead_letter_routing_key=queue,
            )
        if self.park:
            await connection.declare_queue(self.parking_queue(queue), durable=True)

    async def failed(
        self, connection: Connection, queue: str, message: Message, exc: BaseException
    ) -> None:
        """Send a failed message on to its next retry queue (or park it), then ack it."""
        attempt = retry_attempt(message.headers)
        error = f"{type(exc).__name__}: {exc}"[:1000]
        if attempt <= len(self.delays):
            target = self.retry_queue(queue, self.delays[attempt - 1])
            log.warning(
                "leveret: handler for %r failed attempt %d of %d (%s); retrying in %ss",
                queue,
                attempt,
                self.attempts,
                error,
                self.delays[attempt - 1],
            )
        elif self.park:
            target = self.parking_queue(queue)
            log.error(
                "leveret: handler for %r failed its last attempt (%d: %s); message parked in %r",
                queue,
                attempt,
                error,
                target,
                exc_info=exc,
            )
        else:
            log.error(
                "leveret: handler for %r failed its last attempt (%d: %s); message rejected",
                queue,
                attempt,
                error,
                exc_info=exc,
            )
            message.reject(requeue=False)
            return
        failure = await forward_and_ack(
            connection,
            message,
            routing_key=target,
            headers={ATTEMPT_HEADER: attempt, ERROR_HEADER: error},
        )
        if failure is not None:
            log.warning(
                "leveret: could not move a failed message to %r (%s); requeued instead",
                target,
                failure,
            )
            message.nack(requeue=True)


def retry_attempt(headers: Mapping[str, Any]) -> int:
    """Which attempt this delivery is: 1 at first, n+1 after n passes through retry queues."""
    own = headers.get(ATTEMPT_HEADER)
    passes = own if isinstance(own, int) and not isinstance(own, bool) else 0
    deaths = headers.get("x-death")
    if isinstance(deaths, list):
        expired = 0
        for death in deaths:
            if (
                isinstance(death, dict)
                and death.get("reason") == "expired"
                and ".retry." in str(death.get("queue", ""))
            ):
                count = death.get("count")
                expired += count if isinstance(count, int) else 1
        passes = max(passes, expired)
    return passes + 1


def _label(delay: float) -> str:
    milliseconds = round(delay * 1000)
    for unit, size in (("h", 3_600_000), ("m", 60_000), ("s", 1000)):
        if milliseconds % size == 0:
            return f"{milliseconds // size}{unit}"
    return f"{milliseconds}ms"
