"""Message: a delivery as the user sees it, with acks that never raise."""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, TypeVar

from leveret._payload import charset_of, decode_body, decode_json, decode_model, decode_text
from leveret._properties import Properties
from leveret.aio._retry import retry_attempt
from leveret.protocol import Delivery

if TYPE_CHECKING:
    from leveret.aio._channel import ChannelHandle
    from leveret.protocol import AMQPConnection

__all__ = ["Message"]

_Model = TypeVar("_Model")


class Message:
    """A received message (from a consumer or `get`).

    `ack()`, `nack()` and `reject()` return True when the settlement was sent
    and False when it could not be: the delivery was already settled, came
    from a no-ack consumer, or its channel has closed (the broker then
    requeues it, so sending the tag on another channel would be wrong). They
    never raise.
    """

    __slots__ = ("_channel", "_core", "_delivery", "_flush", "_settled")

    def __init__(
        self,
        delivery: Delivery,
        channel: ChannelHandle,
        core: AMQPConnection,
        flush: Callable[[], None],
        settled: bool = False,
    ) -> None:
        self._delivery = delivery
        self._channel = channel
        self._core = core
        self._flush = flush
        self._settled = settled

    @property
    def body(self) -> bytes:
        return self._delivery.body

    @property
    def properties(self) -> Properties:
        return self._delivery.properties

    def _rpc_fields(self) -> tuple[str | None, str | None, bool]:
        """(correlation_id, reply_to, has headers): what RPC reads of every message, cheaply."""
        return self._delivery.rpc_fields()

    @property
    def headers(self) -> dict[str, object]:
        """The headers table, empty when the message has none."""
        return self._delivery.properties.headers or {}

    @property
    def routing_key(self) -> str:
        return self._delivery.routing_key

    @property
    def exchange(self) -> str:
        return self._delivery.exchange

    @property
    def redelivered(self) -> bool:
        return self._delivery.redelivered

    @property
    def delivery_tag(self) -> int:
        return self._delivery.delivery_tag

    @property
    def consumer_tag(self) -> str | None:
        return self._delivery.consumer_tag

    @property
    def message_count(self) -> int | None:
        """For `get`: how many messages were left in the queue; None for consumed messages."""
        return self._delivery.message_count

    @property
    def settled(self) -> bool:
        """True once ack/nack/reject went out (or the delivery needed none)."""
        return self._settled

    @property
    def stale(self) -> bool:
        """True when the channel this came on has closed: it can no longer be settled."""
        return self._channel.closed is not None

    def ack(self) -> bool:
        """Acknowledge; False if nothing could be sent (see the class docstring)."""
        if self._settled or self._channel.closed is not None:
            return False
        self._settled = True
        if self._core.ack(self._channel.id, self._delivery.delivery_tag):
            self._channel.stats.acked += 1
            self._flush()
            return True
        return False

    def reply_and_ack(self, routing_key: bytes, body: bytes, properties: bytes) -> bool:
        """Publish a reply on this delivery's channel, then ack it, in one write.

        The broker takes a channel's frames in order, so it has routed the
        reply before it sees the ack: as safe as acking after the reply's
        confirm, without waiting a round trip for it. False (nothing sent) when the
        channel has closed: the broker redelivers the request.
        """
        if self._settled or self._channel.closed is not None:
            return False
        channel_id = self._channel.id
        core = self._core
        core.publish(channel_id, b"\x00", routing_key, body, properties)  # may refuse: ValueError
        self._settled = True
        stats = self._channel.stats
        stats.published += 1
        if core.ack(channel_id, self._delivery.delivery_tag):
            stats.acked += 1
            self._flush()
            return True
        return False

    def _reply_unacked(self, routing_key: bytes, body: bytes, properties: bytes) -> bool:
        """Publish a reply on this delivery's channel, for a delivery that needs no ack.

        False (nothing sent) when the channel has closed.
        """
        if self._channel.closed is not None:
            return False
        self._core.publish(self._channel.id, b"\x00", routing_key, body, properties)
        self._channel.stats.published += 1
        self._flush()
        return True

    def nack(self, requeue: bool = True) -> bool:
        """Negative acknowledgement; `requeue=False` dead-letters or drops the message."""
        if self._settled or self._channel.closed is not None:
            return False
        self._settled = True
        if self._core.nack(self._channel.id, self._delivery.delivery_tag, requeue=requeue):
            self._channel.stats.rejected += 1
            self._flush()
            return True
        return False

    def reject(self, requeue: bool = False) -> bool:
        """Reject; by default not requeued (dead-lettered if the queue has a DLX)."""
        if self._settled or self._channel.closed is not None:
            return False
        self._settled = True
        if self._core.reject(self._channel.id, self._delivery.delivery_tag, requeue=requeue):
            self._channel.stats.rejected += 1
            self._flush()
            return True
        return False

    def text(self, encoding: str | None = None) -> str:
        """The body as text: `encoding`, else the content type's charset, else UTF-8."""
        charset = encoding or charset_of(self.properties.content_type or "") or "utf-8"
        return decode_text(self.body, charset)

    def json(self) -> Any:
        """The body parsed as JSON, whatever the content type; PayloadError if it is not JSON."""
        return decode_json(self.body, self.properties.content_type)

    def model(self, model: type[_Model]) -> _Model:
        """The body validated into a pydantic model class; PayloadError names what is wrong."""
        return decode_model(self.body, model)

    def decode(self) -> Any:
        """By content type: JSON for application/json, str for text/*, else the raw bytes."""
        props = self.properties
        return decode_body(self.body, props.content_type, props.content_encoding)

    @property
    def attempt(self) -> int:
        """1 for a first try; n + 1 after n passes through a `Retry` schedule's queues."""
        return retry_attempt(self.headers)

    @property
    def message_id(self) -> str | None:
        return self._delivery.properties.message_id

    @property
    def stream_offset(self) -> int | None:
        """For messages consumed from a stream: their offset in it."""
        headers = self._delivery.properties.headers
        offset = headers.get("x-stream-offset") if headers else None
        return offset if isinstance(offset, int) else None

    def __repr__(self) -> str:
        body = self.body
        shown = body if len(body) <= 40 else body[:40] + b"..."
        return (
            f"<Message exchange={self.exchange!r} routing_key={self.routing_key!r} "
            f"delivery_tag={self.delivery_tag} redelivered={self.redelivered} body={shown!r}>"
        )
