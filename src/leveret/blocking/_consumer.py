"""Blocking messages and consumers: `with conn.consume(q) as messages: for msg in messages`."""

from __future__ import annotations

import asyncio
import queue
import threading
import time
from collections.abc import Callable, Iterator
from types import TracebackType
from typing import Any, Final, TypeVar

from leveret import aio
from leveret._properties import Properties
from leveret.blocking._portal import Portal, wait_slice
from leveret.exceptions import ConnectionClosedByClient

__all__ = ["Consumer", "Message"]

_Model = TypeVar("_Model")


class Message:
    """A received message; `ack()`, `nack()` and `reject()` may be called from any thread.

    Settling hands the work to the connection's I/O thread (the protocol core
    is not thread-safe) without waiting for it. They return False when the
    settlement cannot be sent: the delivery was already settled (here or in
    another thread), came from a no-ack consumer, or its channel has closed
    (the broker then requeues it). True means it was handed over to be sent;
    as with the asyncio API, an ack still in flight when the connection
    drops is lost, and the broker redelivers the message. They never raise.
    """

    __slots__ = ("_message", "_portal", "_unclaimed")

    def __init__(self, message: aio.Message, portal: Portal) -> None:
        self._message = message
        self._portal = portal
        self._unclaimed = [True]

    @property
    def body(self) -> bytes:
        return self._message.body

    @property
    def properties(self) -> Properties:
        return self._message.properties

    @property
    def headers(self) -> dict[str, object]:
        """The headers table, empty when the message has none."""
        return self._message.headers

    @property
    def routing_key(self) -> str:
        return self._message.routing_key

    @property
    def exchange(self) -> str:
        return self._message.exchange

    @property
    def redelivered(self) -> bool:
        return self._message.redelivered

    @property
    def delivery_tag(self) -> int:
        return self._message.delivery_tag

    @property
    def consumer_tag(self) -> str | None:
        return self._message.consumer_tag

    @property
    def message_count(self) -> int | None:
        """For `get`: how many messages were left in the queue; None for consumed messages."""
        return self._message.message_count

    @property
    def settled(self) -> bool:
        """True once ack/nack/reject was called successfully (or the delivery needed none)."""
        return not self._unclaimed or self._message.settled

    @property
    def stale(self) -> bool:
        """True when the channel this came on has closed: it can no longer be settled."""
        return self._message.stale

    def ack(self) -> bool:
        """Acknowledge; False if nothing could be sent (see the class docstring)."""
        return self._settle(self._message.ack)

    def nack(self, requeue: bool = True) -> bool:
        """Negative acknowledgement; `requeue=False` dead-letters or drops the message."""
        return self._settle(lambda: self._message.nack(requeue))

    def reject(self, requeue: bool = False) -> bool:
        """Reject; by default not requeued (dead-lettered if the queue has a DLX)."""
        return self._settle(lambda: self._message.reject(requeue))

    def _settle(self, settle: Callable[[], bool]) -> bool:
        message = self._message
        if message.settled or message.stale:
            return False
        try:
            self._unclaimed.pop()  # atomic: of two threads settling at once, one wins
        except IndexError:
            return False
        if self._portal.in_loop_thread:
            return settle()
        return self._portal.call_soon_threadsafe(settle)

    def text(self, encoding: str | None = None) -> str:
        """The body as text: `encoding`, else the content type's charset, else UTF-8."""
        return self._message.text(encoding)

    def json(self) -> Any:
        """The body parsed as JSON, whatever the content type; PayloadError if it is not JSON."""
        return self._message.json()

    def model(self, model: type[_Model]) -> _Model:
        """The body validated into a pydantic model class; PayloadError names what is wrong."""
        return self._message.model(model)

    def decode(self) -> Any:
        """By content type: JSON for application/json, str for text/*, else the raw bytes."""
        return self._message.decode()

    @property
    def attempt(self) -> int:
        """1 for a first try; n + 1 after n passes through a `Retry` schedule's queues."""
        return self._message.attempt

    @property
    def message_id(self) -> str | None:
        return self._message.message_id

    @property
    def stream_offset(self) -> int | None:
        """For messages consumed from a stream: their offset in it."""
        return self._message.stream_offset

    def __repr__(self) -> str:
        return repr(self._message)


class _End:
    """Why a consumer's stream ended: an error, or None (closed)."""

    __slots__ = ("error",)

    def __init__(self, error: BaseException | None) -> None:
        self.error = error


_CLOSED: Final = _End(None)


class Consumer:
    """A consumer as a blocking iterator of `Message`.

    `with conn.consume(q) as messages:` starts it and, on leaving, closes its
    channel (the broker requeues what was not acked). `for msg in messages`
    blocks until the next message; `messages.iter(timeout=5)` stops after
    five seconds without one; `messages.receive(timeout)` returns one message
    or None. If the broker cancels the consumer or the connection fails,
    iteration raises that error (ConsumerCancelled, ConnectionForced, ...);
    with reconnection on, it simply carries on after a reconnect.

    Any thread may iterate or close it. Deliveries are moved into a
    thread-safe buffer by the I/O thread; the buffer never holds more than
    `prefetch` of them, since the broker sends no more unacked.
    """

    def __init__(self, portal: Portal, consumer: aio.Consumer) -> None:
        self._portal = portal
        self._consumer = consumer
        self._inbox: queue.SimpleQueue[Message | _End] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self._end: _End | None = None
        self._pump: asyncio.Task[None] | None = None

    @property
    def queue(self) -> str:
        """The queue consumed (a server-named queue gets a new name after a reconnect)."""
        return self._consumer.queue

    @property
    def consumer_tag(self) -> str:
        return self._consumer.consumer_tag

    @property
    def prefetch(self) -> int:
        return self._consumer.prefetch

    # -- lifecycle -------------------------------------------------------------------------

    def start(self) -> None:
        """Start consuming (done by `with` or the first iteration; idempotent)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._portal.call(self._start(), "Consumer.start()")
            self._started = True

    async def _start(self) -> None:
        await self._consumer.start()
        self._pump = asyncio.ensure_future(self._move())

    async def _move(self) -> None:
        """In the I/O thread: hand each delivery to the blocking side, then why it ended."""
        put = self._inbox.put
        portal = self._portal
        try:
            async for message in self._consumer:
                put(Message(message, portal))
        except asyncio.CancelledError:
            put(_End(ConnectionClosedByClient("the connection was closed by the client")))
            raise
        except BaseException as exc:  # noqa: BLE001 - raised in the iterating thread instead
            put(_End(exc))
        else:
            put(_CLOSED)

    def close(self) -> None:
        """Stop consuming; unacked messages go back to the queue. Idempotent; never raises
        for stale state. A thread blocked iterating this consumer stops iterating."""
        if self._closed:
            return
        self._portal.refuse_loop_thread("Consumer.close()")
        self._closed = True
        self._inbox.put(_CLOSED)  # wake a thread blocked in iteration
        try:
            self._portal.call(self._consumer.close(), "Consumer.close()")
        except ConnectionClosedByClient:
            pass  # the connection is closed, and with it this consumer

    def __enter__(self) -> Consumer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    # -- iteration --------------------------------------------------------------------------

    def _receive(self, timeout: float | None) -> Message | _End | None:
        """The next live message, the end of the stream, or None after `timeout` seconds."""
        if self._closed:
            return _CLOSED
        if not self._started:
            self.start()
        if self._end is not None:
            return self._end
        if timeout is not None and not timeout >= 0:
            raise ValueError(f"timeout must be None or seconds >= 0, got {timeout!r}")
        deadline = None if timeout is None else time.monotonic() + timeout
        inbox = self._inbox
        piece = wait_slice()
        while True:
            left = piece if deadline is None else deadline - time.monotonic()
            wait = max(0.0, min(piece, left))
            try:
                item = inbox.get(timeout=wait)
            except queue.Empty:
                item = None
            if item is None:
                # Outside the except block: a Ctrl-C landing here must not print the
                # queue.Empty it would otherwise be chained to as a second traceback.
                if self._closed:
                    return _CLOSED
                if deadline is not None and time.monotonic() >= deadline:
                    return None
                if self._portal.stopped and inbox.empty():
                    item = _End(ConnectionClosedByClient("the connection was closed by the client"))
                else:
                    continue
            if isinstance(item, _End):
                if self._closed:
                    return _CLOSED
                self._end = item
                inbox.put(item)  # any other thread iterating this consumer ends too
                return item
            if self._closed:
                return _CLOSED
            if item.stale:
                continue  # buffered before the connection dropped: the broker redelivers it
            return item

    def __iter__(self) -> Consumer:
        return self

    def __next__(self) -> Message:
        item = self._receive(None)
        if isinstance(item, Message):
            return item
        assert item is not None
        if item.error is not None:
            raise item.error.with_traceback(None)
        raise StopIteration

    def receive(self, timeout: float | None = None) -> Message | None:
        """The next message; None when none arrived within `timeout` seconds or the consumer
        was closed. Raises what ended the consumer (ConsumerCancelled, a connection error)."""
        item = self._receive(timeout)
        if isinstance(item, _End):
            if item.error is not None:
                raise item.error.with_traceback(None)
            return None
        return item

    def iter(self, timeout: float | None = None) -> Iterator[Message]:
        """Iterate, stopping once no message arrived for `timeout` seconds (None: never)."""
        while True:
            item = self._receive(timeout)
            if item is None:
                return
            if isinstance(item, _End):
                if item.error is not None:
                    raise item.error.with_traceback(None)
                return
            yield item

    def __repr__(self) -> str:
        state = "closed" if self._closed else "consuming" if self._started else "not started"
        return f"<leveret.blocking.Consumer queue={self.queue!r} {state}>"
