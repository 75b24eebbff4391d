"""The driver's view of one open channel: what waits on it and what it is for.

Channels are hidden from users. Each handle has one role: a pool channel
for synchronous operations (declare, bind, get, ...), a publishing channel in
confirm mode (one per exchange, so a 404 on one exchange fails only the
publishes to it), or a consumer's channel (its own prefetch). When the
broker closes a channel, only what used that channel fails.

Unconfirmed publishes are kept as `Outgoing` records (the caller's future,
carrying everything needed to send it again), so that when the connection
drops they can be re-sent on the next one and their callers still get exactly
one answer.
"""

from __future__ import annotations

import asyncio
import math
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from leveret.aio._publish_future import PublishFuture
from leveret.exceptions import MessageReturned, PublishNacked
from leveret.protocol import Returned

if TYPE_CHECKING:
    from leveret.aio._consumer import Consumer
    from leveret.aio._stats import Counters

__all__ = ["ChannelHandle", "Outgoing", "new_outgoing"]


class Outgoing(PublishFuture):
    """One publish awaiting its confirm: the caller's future, carrying what it takes to send it again.

    The future is its own record, so a publish in flight is one object, not two:
    publish is the hottest path, and each object costs an allocation, an
    `__init__` call and a visit by the garbage collector while it lives.
    """

    __slots__ = (
        "body",
        "deadline",
        "exchange",
        "exchange_bytes",
        "mandatory",
        "properties",
        "routing_key",
        "routing_key_bytes",
    )

    body: bytes
    deadline: float  # set by Deadlines.watch
    exchange: str
    exchange_bytes: bytes
    mandatory: bool
    properties: bytes
    routing_key: str
    routing_key_bytes: bytes


def new_outgoing(
    loop: asyncio.AbstractEventLoop,
    exchange: str,
    exchange_bytes: bytes,
    routing_key: str,
    routing_key_bytes: bytes,
    body: bytes,
    properties: bytes,
    mandatory: bool,
) -> Outgoing:
    """A publish's record and future (`Connection._send_at_once` builds its own, inline)."""
    record = Outgoing(loop=loop)
    record.exchange = exchange
    record.exchange_bytes = exchange_bytes
    record.routing_key = routing_key
    record.routing_key_bytes = routing_key_bytes
    record.body = body
    record.properties = properties
    record.mandatory = mandatory
    record.deadline = math.inf
    return record


class ChannelHandle:
    """One open channel; `closed` flips exactly once and stale deliveries check it."""

    __slots__ = (
        "closed",
        "confirm_high",
        "confirm_low",
        "confirms",
        "consumer",
        "gone",
        "id",
        "on_return",
        "on_settled",
        "opened",
        "republish",
        "returns",
        "stats",
        "waiters",
    )

    def __init__(self, channel_id: int, opened: asyncio.Future[None], stats: Counters) -> None:
        self.id = channel_id
        self.stats = stats  # the connection's counters: confirms and acks count here
        self.opened = opened
        self.gone: asyncio.Future[None] = opened.get_loop().create_future()
        self.closed: BaseException | None = None
        # Synchronous requests in send order; replies come back in the same order.
        self.waiters: deque[asyncio.Future[Any]] = deque()
        # Publisher confirms: seq -> record, and the range that may still be open.
        self.confirms: dict[int, Outgoing] = {}
        self.confirm_low = 1
        self.confirm_high = 0
        self.returns: deque[Returned] = deque()
        # Set on a channel without confirms: returns cannot wait for a confirm to claim them.
        self.on_return: Callable[[Returned], None] | None = None
        self.consumer: Consumer | None = None
        # A publishing channel: its unconfirmed publishes survive a lost connection.
        self.republish = False
        # Told how many publishes left the books (answered, or failed with the channel):
        # the connection's window of unconfirmed publishes counts records, not callers.
        self.on_settled: Callable[[int], None] | None = None

    # -- confirms --------------------------------------------------------------------

    def add_confirm(self, seq: int, record: Outgoing) -> None:
        self.confirms[seq] = record
        self.confirm_high = seq

    def settle(self, delivery_tag: int, multiple: bool, ack: bool) -> None:
        """Resolve the publishes a basic.ack/nack covers (multiple: every tag up to it)."""
        confirms = self.confirms
        if multiple:
            tags: range | tuple[int] = range(self.confirm_low, delivery_tag + 1)
        else:
            tags = (delivery_tag,)
        returned = self._match_returns(tags) if self.returns else None
        pop = confirms.pop
        confirmed = finished = 0
        for tag in tags:
            record = pop(tag, None)
            if record is None:
                continue
            finished += 1
            # Answered: the caller may keep its future a long time, the body need not stay.
            record.body = b""
            if record.done():
                continue
            if returned and tag in returned:
                record.set_exception(returned[tag])
            elif ack:
                record.set_result(None)
                confirmed += 1
            else:
                self.stats.nacked += 1
                record.set_exception(
                    PublishNacked(
                        "the broker refused the message (basic.nack), e.g. a queue with "
                        "x-overflow=reject-publish is full"
                    )
                )
        if confirmed:
            self.stats.confirmed += confirmed
        low = self.confirm_low
        if multiple:
            low = max(low, delivery_tag + 1)
        high = self.confirm_high
        while low <= high and low not in confirms:
            low += 1
        self.confirm_low = low
        if self.returns and not any(r.mandatory for r in confirms.values()):
            self.returns.clear()  # no mandatory publish is left to claim them
        if finished and self.on_settled is not None:
            self.on_settled(finished)

    def _match_returns(self, tags: range | tuple[int]) -> dict[int, MessageReturned]:
        # The broker sends basic.return just before the confirm of the same
        # publish, so each pending return belongs to the lowest settled
        # mandatory publish with its exchange, routing key and body (never
        # matched by message_id, which users may repeat or leave out).
        # Several returns may arrive before the first of their confirms: one
        # that matches none of these tags belongs to a later confirm, so keep it.
        matched: dict[int, MessageReturned] = {}
        unmatched: deque[Returned] = deque()
        confirms = self.confirms
        while self.returns:
            returned = self.returns.popleft()
            for tag in tags:
                record = confirms.get(tag)
                if (
                    record is not None
                    and record.mandatory
                    and tag not in matched
                    and record.exchange == returned.exchange
                    and record.routing_key == returned.routing_key
                    and record.body == returned.body
                ):
                    matched[tag] = MessageReturned(
                        returned.reply_code,
                        returned.reply_text,
                        returned.exchange,
                        returned.routing_key,
                        returned.body,
                        returned.properties,
                    )
                    break
            else:
                unmatched.append(returned)
        self.returns = unmatched
        return matched

    def take_unconfirmed(self) -> list[Outgoing]:
        """Remove and return the publishes still waiting for a confirm, in send order."""
        records = [record for _, record in sorted(self.confirms.items())]
        self.confirms = {}
        self.returns.clear()
        return records

    # -- failure -------------------------------------------------------------------------

    def fail(self, exc: BaseException) -> None:
        """The channel is gone: fail everything waiting on it, once."""
        if self.closed is not None:
            return
        self.closed = exc
        self.gone.set_result(None)
        if not self.opened.done():
            self.opened.set_exception(exc)
            self.opened.exception()  # retrieved: nobody may be awaiting it any more
        waiters, self.waiters = self.waiters, deque()
        for future in waiters:
            if not future.done():
                future.set_exception(exc)
        confirms, self.confirms = self.confirms, {}
        for record in confirms.values():
            if not record.done():
                record.set_exception(exc)
        if confirms and self.on_settled is not None:
            self.on_settled(len(confirms))
        self.returns.clear()
        consumer, self.consumer = self.consumer, None
        if consumer is not None:
            consumer.channel_failed(exc)
