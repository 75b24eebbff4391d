"""Consumer: `async with conn.consume(queue) as messages: async for msg in messages`."""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any

from leveret.aio._message import Message
from leveret.exceptions import ConsumerCancelled
from leveret.protocol import Delivery

if TYPE_CHECKING:
    from leveret.aio._channel import ChannelHandle
    from leveret.aio._connection import Connection
    from leveret.telemetry._otel import ProcessOp

__all__ = ["Consumer"]

log = logging.getLogger("leveret.consumer")


class Consumer:
    """One basic.consume on its own channel, as an async iterator of `Message`.

    The buffer never holds more than `prefetch` messages because the broker
    sends no more than that unacknowledged. Leaving the `async with` block
    closes the channel, so the broker requeues whatever was not acked.
    If the broker cancels the consumer (its queue was deleted), iteration
    yields what was already buffered, then raises `ConsumerCancelled`; if the
    channel or connection dies, buffered messages are dropped (the broker
    redelivers them) and iteration raises that error. A message held unacked
    past the broker's consumer_timeout raises `ConsumerTimeout` this way: the
    iterator has ended (`restart()` consumes again); `subscribe` does that itself.
    """

    def __init__(
        self,
        connection: Connection,
        queue: str,
        *,
        prefetch: int,
        no_ack: bool,
        exclusive: bool,
        arguments: dict[str, Any] | None,
        consumer_tag: str,
    ) -> None:
        self._connection = connection
        self.queue = queue
        self.prefetch = prefetch
        self.no_ack = no_ack
        self.exclusive = exclusive
        self.arguments = arguments
        self.consumer_tag = consumer_tag
        self._channel: ChannelHandle | None = None
        self._buffer: deque[Message] = deque()
        self._waiter: asyncio.Future[None] | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._starting: asyncio.Task[None] | None = None
        self._cleanup: asyncio.Future[None] | None = None
        # A stream consumer resumes after the last message handed out, not at its first offset.
        self._tracks_offset = bool(arguments and "x-stream-offset" in arguments)
        self._next_offset: int | None = None
        # A Subscription takes deliveries as they arrive, without waking a task first.
        self.on_arrival: Callable[[], None] | None = None
        # OpenTelemetry: a message handed out is "processed" until the next one is asked for.
        self._telemetry = connection._telemetry
        self._processing: ProcessOp | None = None

    # -- lifecycle ----------------------------------------------------------------

    async def start(self) -> None:
        """Open the channel, set QoS and start consuming (idempotent)."""
        if self._channel is not None or self._closed:
            return
        if self._starting is None:
            self._starting = asyncio.ensure_future(self._connection._start_consumer(self))
        starting = self._starting
        try:
            await asyncio.shield(starting)
        except asyncio.CancelledError:
            # Cancelled mid-start (e.g. by a timeout around `async with`): nobody will
            # close this consumer, so it must not go on consuming, unseen, with prefetch.
            self._closed = True
            if not starting.done():
                starting.cancel()
            elif not starting.cancelled() and starting.exception() is None:
                self._cleanup = asyncio.ensure_future(self._stop_started())
            raise

    async def restart(self) -> None:
        """Consume again on a fresh channel after the broker closed this one (e.g. a
        ConsumerTimeout). Does nothing once the consumer was closed."""
        if self._closed or self._channel is not None:
            return
        self._error = None
        self._starting = None
        await self.start()

    async def _stop_started(self) -> None:
        channel = self._channel
        self._connection._forget_consumer(self)
        if channel is not None:
            await self._connection._close_channel(channel)

    def _attach(self, channel: ChannelHandle) -> None:
        self._channel = channel
        channel.consumer = self
        self._connection._remember_consumer(self)

    async def close(self) -> None:
        """Stop consuming; unacked messages go back to the queue. Never raises for stale state."""
        if self._closed:
            return
        self._closed = True
        self._connection._forget_consumer(self)
        self._buffer.clear()
        self._wake()
        if self._processing is not None:
            self._end_processing()
        if self._starting is not None and not self._starting.done():
            try:
                await self._starting
            except Exception:  # noqa: BLE001 - a failed start leaves nothing to close
                return
        channel = self._channel
        if channel is not None:
            await self._connection._close_channel(channel)

    async def __aenter__(self) -> Consumer:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- iteration ------------------------------------------------------------------

    def __aiter__(self) -> Consumer:
        return self

    def take(self) -> Message | None:
        """The next buffered message, if any, without waiting."""
        if not self._buffer:
            return None
        message = self._buffer.popleft()
        if self._tracks_offset:
            self._note_offset(message)
        return message

    async def wait_for_change(self) -> None:
        """Until a delivery, an error or close (the caller checks which)."""
        waiter = self._waiter = asyncio.get_running_loop().create_future()
        try:
            await waiter
        finally:
            self._waiter = None

    @property
    def closed(self) -> bool:
        """Closed by the user (or by a cancelled start)."""
        return self._closed

    def wake(self) -> None:
        """Let `wait_for_change` return, e.g. when a dispatcher drained the buffer."""
        self._wake()

    @property
    def error(self) -> BaseException | None:
        """Why consuming ended, if it did (raised once the buffer is drained)."""
        return self._error

    async def __anext__(self) -> Message:
        if self._telemetry is not None:
            return await self._next_traced()
        buffer = self._buffer
        if buffer:
            message = buffer.popleft()
            if self._tracks_offset:
                self._note_offset(message)
            return message
        return await self._next_waiting()

    async def _next_traced(self) -> Message:
        """__anext__ with a CONSUMER span per message, current in the iterating task."""
        assert self._telemetry is not None
        if self._processing is not None:
            self._end_processing()
        buffer = self._buffer
        if buffer:
            message = buffer.popleft()
            if self._tracks_offset:
                self._note_offset(message)
        else:
            message = await self._next_waiting()
        self._processing = self._telemetry.start_process(message, self.queue, attach=True)
        return message

    def _end_processing(self) -> None:
        op, self._processing = self._processing, None
        if op is not None and self._telemetry is not None:
            self._telemetry.end_process(op)

    async def _next_waiting(self) -> Message:
        buffer = self._buffer
        if self._channel is None and not self._closed:
            await self.start()
        while True:
            if buffer:
                message = buffer.popleft()
                if self._tracks_offset:
                    self._note_offset(message)
                return message
            if self._closed:
                raise StopAsyncIteration
            if self._error is not None:
                raise self._error.with_traceback(None)
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None

    def _note_offset(self, message: Message) -> None:
        offset = message.stream_offset
        if offset is not None:
            self._next_offset = offset + 1

    def consume_arguments(self) -> dict[str, Any] | None:
        """basic.consume arguments; after a reconnect, a stream resumes where the user was."""
        if self._next_offset is None or self.arguments is None:
            return self.arguments
        return {**self.arguments, "x-stream-offset": self._next_offset}

    def __len__(self) -> int:
        """Messages received and not yet handed out."""
        return len(self._buffer)

    # -- called by the connection -------------------------------------------------------

    def deliver(self, delivery: Delivery, message: Message) -> None:
        self._buffer.append(message)
        if self.on_arrival is not None:
            self.on_arrival()
            if not self._buffer:
                return  # taken at once: there is nobody to wake
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def cancelled_by_server(self) -> None:
        if self._error is None:
            self._error = ConsumerCancelled(self.queue, self.consumer_tag)
        self._wake()

    def channel_failed(self, exc: BaseException) -> None:
        # Deliveries not yet handed out are stale: the broker requeues them.
        self._drop_buffered(exc)
        self._channel = None
        if self._error is None:
            self._error = exc
        self._connection._forget_consumer(self)
        self._wake()

    def link_lost(self) -> None:
        """The connection dropped and will be re-established: wait for the new channel.

        Buffered deliveries are stale (the broker requeues them and will send
        them again, flagged redelivered); messages already handed out answer
        False to ack(). Iteration simply carries on after recovery.
        """
        self._drop_buffered(None)
        self._channel = None

    def _drop_buffered(self, why: BaseException | None) -> None:
        """Throw away deliveries of a dead channel: counted, and logged once per channel loss."""
        dropped = len(self._buffer)
        if not dropped:
            return
        self._buffer.clear()
        self._connection._stats.dropped += dropped
        log.info(
            "leveret [%s]: dropped %d buffered deliveries of consumer %s on queue %r: their "
            "channel %s (the broker redelivers them)",
            self._connection.name,
            dropped,
            self.consumer_tag,
            self.queue,
            f"closed: {why}" if why is not None else "went with the lost connection",
        )

    @property
    def active(self) -> bool:
        """Still wanted: not closed by the user, not ended by an error."""
        return not self._closed and self._error is None

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)
