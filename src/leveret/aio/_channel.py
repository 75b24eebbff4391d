"""The driver's view of one open channel: what waits on it and what it is for.

Channels are hidden from users. Each handle has one role: a pool channel
for synchronous operations (declare, bind, get, ...), a publishing channel in
confirm mode (one per exchange, so a 404 on one exchange fails only the
publishes to it), or a consumer's channel (its own prefetch). When the
broker closes a channel, only what used that channel fails.
"""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from leveret.exceptions import LeveretError, MessageReturned, PublishNacked
from leveret.protocol import Returned

if TYPE_CHECKING:
    from leveret.aio._consumer import Consumer


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
        "mandatory",
        "mandatory_bodies",
        "opened",
        "returns",
        "waiters",
    )

    def __init__(self, channel_id: int, opened: asyncio.Future[None]) -> None:
        self.id = channel_id
        self.opened = opened
        self.gone: asyncio.Future[None] = opened.get_loop().create_future()
        self.closed: BaseException | None = None
        # Synchronous requests in send order; replies come back in the same order.
        self.waiters: deque[asyncio.Future[Any]] = deque()
        # Publisher confirms: seq -> future, and the range that may still be open.
        self.confirms: dict[int, asyncio.Future[None]] = {}
        self.confirm_low = 1
        self.confirm_high = 0
        # Mandatory publishes awaiting a confirm, so a basic.return can find its publish.
        self.mandatory: dict[int, tuple[str, str]] = {}
        # Their bodies, when known: the routing key alone cannot tell a returned publish
        # from a routed one with the same key (e.g. through a headers exchange).
        self.mandatory_bodies: dict[int, bytes] = {}
        self.returns: deque[Returned] = deque()
        self.consumer: Consumer | None = None

    # -- confirms --------------------------------------------------------------------

    def add_confirm(self, seq: int, future: asyncio.Future[None]) -> None:
        self.confirms[seq] = future
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
        for tag in tags:
            future = pop(tag, None)
            if future is None or future.done():
                continue
            if returned and tag in returned:
                future.set_exception(returned[tag])
            elif ack:
                future.set_result(None)
            else:
                future.set_exception(
                    PublishNacked(
                        "the broker refused the message (basic.nack), e.g. a queue with "
                        "x-overflow=reject-publish is full"
                    )
                )
        if self.mandatory:
            for tag in tags:
                self.mandatory.pop(tag, None)
                self.mandatory_bodies.pop(tag, None)
        if self.returns and not self.mandatory:
            self.returns.clear()  # no mandatory publish is left to claim them
        low = self.confirm_low
        if multiple:
            low = max(low, delivery_tag + 1)
        high = self.confirm_high
        while low <= high and low not in confirms:
            low += 1
        self.confirm_low = low

    def _match_returns(self, tags: range | tuple[int]) -> dict[int, MessageReturned]:
        # The broker sends basic.return just before the confirm of the same
        # publish, so each pending return belongs to the lowest settled
        # mandatory publish with its exchange, routing key and body (never
        # matched by message_id, which users may repeat or leave out).
        # Several returns may arrive before the first of their confirms: one
        # that matches none of these tags belongs to a later confirm, so keep it.
        matched: dict[int, MessageReturned] = {}
        unmatched: deque[Returned] = deque()
        while self.returns:
            returned = self.returns.popleft()
            key = (returned.exchange, returned.routing_key)
            body = returned.body
            for tag in tags:
                if (
                    tag not in matched
                    and self.mandatory.get(tag) == key
                    and self.mandatory_bodies.get(tag, body) == body
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
        for future in confirms.values():
            if not future.done():
                future.set_exception(exc)
        self.mandatory.clear()
        self.mandatory_bodies.clear()
        self.returns.clear()
        if self.consumer is not None:
            self.consumer.channel_failed(exc)


def describe_failure(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LeveretError) else repr(exc)
