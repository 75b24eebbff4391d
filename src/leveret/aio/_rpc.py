"""RPC over RabbitMQ: `conn.call()` and `conn.serve()` for handlers.

The client publishes requests and consumes replies on one channel. Replies
come to an exclusive, server-named reply queue of the connection (declared
on the first call, gone with the connection), or, with
`rpc_replies="direct"`, over RabbitMQ's direct reply-to (a no-ack consumer
on `amq.rabbitmq.reply-to`, which needs no queue and no configure
permission). The queue is the default because it is the faster of the two:
measured on RabbitMQ 3.10, a sequential round trip took about 10% less time
and the broker about 15% less CPU per call (docs/benchmarks.md). Where the
broker refuses the queue (a user without configure permission, a vhost at
its queue limit), calls get direct reply-to instead.

Calls are matched by correlation id, so any number may be in flight at
once; a call that times out or is cancelled leaves the pending table at
once, and its late reply is dropped with a debug log. Calls in flight when
the connection drops fail with its error at once: their replies were
addressed to a queue (or channel) that is gone.

Requests are published mandatory but without publisher confirms: the reply
is the end-to-end confirmation, and a confirm would cost every call one more
wakeup. A request no queue takes comes back (basic.return) and fails its
call with `MessageReturned` at once; one the broker drops after routing
(e.g. a full queue with `overflow="reject-publish"`) ends in `RPCTimeout`.

A handler's exception travels back as an error reply (type name and
message in headers, no traceback) that the caller raises as `RemoteError`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import traceback
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from pamqp import commands

from leveret._payload import encode_body, new_message_id, timestamp_bytes
from leveret._properties import Properties
from leveret.aio._consumer import Consumer
from leveret.aio._message import Message
from leveret.aio._subscription import Subscription, check_subscription_options
from leveret.exceptions import (
    ChannelClosedByServer,
    ConnectionLost,
    LeveretError,
    MessageReturned,
    RemoteError,
    RPCTimeout,
)
from leveret.protocol import Delivery, Returned
from leveret.protocol._codec import encode_properties, encode_shortstr, rpc_properties

if TYPE_CHECKING:
    from leveret.aio._channel import ChannelHandle
    from leveret.aio._connection import Connection

__all__ = ["RPC_REPLIES", "Handler", "RpcClient", "RpcReplies", "RpcServer", "check_rpc_replies"]

log = logging.getLogger("leveret.rpc")

REPLY_QUEUE = "amq.rabbitmq.reply-to"
RpcReplies = Literal["queue", "direct"]
RPC_REPLIES: tuple[str, ...] = ("queue", "direct")
ERROR_TYPE_HEADER = "x-leveret-error-type"
ERROR_MESSAGE_HEADER = "x-leveret-error-message"
ERROR_TRACEBACK_HEADER = "x-leveret-error-traceback"
Handler = Callable[[Message], Awaitable[Any]]
"""Returns the reply body: bytes, str, a JSON-able object, or None for an empty reply."""


def check_rpc_replies(value: object) -> None:
    if value not in RPC_REPLIES:
        raise ValueError(f"rpc_replies must be 'queue' or 'direct', got {value!r}")


class _ReplySink(Consumer):
    """The reply consumer: hands each reply to the pending call with its correlation id."""

    def __init__(self, connection: Connection, client: RpcClient, queue: str) -> None:
        super().__init__(
            connection,
            queue,
            prefetch=0,
            no_ack=True,
            exclusive=False,
            arguments=None,
            consumer_tag=f"leveret.rpc.{os.getpid()}.{id(client):x}",
        )
        self._client = client

    def deliver(self, delivery: Delivery, message: Message) -> None:
        self._client.on_reply(message)

    def channel_failed(self, exc: BaseException) -> None:
        self._client.on_channel_failed(exc)

    def link_lost(self) -> None:
        # A reply-to address names an exclusive queue or a channel: with the link gone, both
        # are, and replies to the calls in flight can never arrive. Fail them now (not at
        # their timeout), and do not have this sink restarted: the next call opens its own.
        super().link_lost()
        error = self._connection._link_error
        self._give_up(error if error is not None else ConnectionLost("the connection was lost"))

    def _give_up(self, exc: BaseException) -> None:
        """Stop for good (never restarted) and fail the calls waiting for replies with `exc`."""
        self._closed = True
        self._connection._forget_consumer(self)
        self._client.on_channel_failed(exc)

    def cancelled_by_server(self) -> None:
        # E.g. an operator deleted the reply queue: replies to the calls in flight have
        # nowhere to go. Fail them now, and give the channel back: the next call opens a
        # channel and a reply queue of its own.
        connection = self._connection
        channel = self._channel
        self._give_up(
            LeveretError(f"the broker cancelled the RPC reply consumer on {self.queue!r}")
        )
        if channel is not None and channel.closed is None and connection._link_error is None:
            connection._core.close_channel(channel.id)
            connection._schedule_flush()


class RpcClient:
    """Calls over one channel of the connection, replies to its reply queue (or direct reply-to)."""

    def __init__(self, connection: Connection, replies: RpcReplies) -> None:
        self._connection = connection
        self._replies = replies
        self._reply_to = REPLY_QUEUE  # the open channel's reply address
        self._reply_to_field = encode_shortstr(REPLY_QUEUE, "reply_to")  # as it goes out
        self._pending: dict[str, asyncio.Future[Message]] = {}
        self._ids = itertools.count(1)
        self._prefix = f"{os.getpid():x}.{id(self):x}"
        self._channel: ChannelHandle | None = None
        self._opening: asyncio.Task[ChannelHandle] | None = None
        self._known_exchanges: set[str] = set()

    async def _ready_channel(self) -> ChannelHandle:
        channel = self._channel
        if channel is not None and channel.closed is None:
            return channel
        if self._opening is None or self._opening.done():
            self._opening = asyncio.ensure_future(self._open())
        return await asyncio.shield(self._opening)

    async def _open(self) -> ChannelHandle:
        connection = self._connection
        channel = await connection._open_channel()
        reply_to = REPLY_QUEUE
        if self._replies == "queue":
            try:
                declared = await connection._channel_call(
                    channel, commands.Queue.Declare(queue="", exclusive=True, auto_delete=True)
                )
                reply_to = declared.queue
            except ChannelClosedByServer as exc:  # e.g. 403, or a vhost's queue limit (406)
                # The broker closed that channel: take another, and replies that need no queue.
                log.warning(
                    "leveret: RPC replies come over direct reply-to: the broker refused a "
                    "reply queue (%s)",
                    exc,
                )
                self._replies = "direct"
                channel = await connection._open_channel()
        # No confirms: the reply is the confirmation, and waiting for the broker's ack
        # frame would cost every call a wakeup. Unroutable requests come back as returns.
        channel.on_return = self.on_return
        sink = _ReplySink(connection, self, reply_to)
        sink._attach(channel)
        connection._consumers[(channel.id, sink.consumer_tag)] = sink
        await connection._channel_call(
            channel,
            commands.Basic.Consume(queue=reply_to, consumer_tag=sink.consumer_tag, no_ack=True),
        )
        self._reply_to = reply_to
        self._reply_to_field = encode_shortstr(reply_to, "reply_to")
        self._channel = channel
        return channel

    async def call(
        self,
        routing_key: str,
        body: bytes,
        *,
        exchange: str,
        timeout: float,
        properties: Properties | None,
        expiration: bool,
        content_type: str | None,
    ) -> Message:
        if timeout <= 0:
            raise ValueError(f"timeout must be positive, got {timeout!r}")
        connection = self._connection
        exchange_bytes = connection._encoded_name(exchange, "exchange name")
        routing_key_bytes = connection._encoded_name(routing_key, "routing key")
        correlation_id = f"{self._prefix}.{next(self._ids)}"
        # A request nobody picks up in time dies in the queue instead of piling up.
        expires = str(max(1, int(timeout * 1000))) if expiration else None
        loop = connection._loop
        deadline = loop.time() + timeout
        channel = self._channel
        if (
            channel is None
            or channel.closed is not None
            or (exchange and exchange not in self._known_exchanges)
        ):
            try:
                async with asyncio.timeout_at(deadline):
                    channel = await self._prepare(exchange)
            except TimeoutError:
                raise self._timed_out(routing_key, timeout, correlation_id) from None
        # Built once the channel is ready: its reply address goes in.
        if properties is None:
            stamped = connection.stamp_messages
            properties_bytes = rpc_properties(
                content_type,
                correlation_id,
                self._reply_to_field,
                expires,
                new_message_id() if stamped else None,
                timestamp_bytes() if stamped else None,
            )
        else:
            props = properties.replace(
                correlation_id=correlation_id,
                reply_to=self._reply_to,
                **connection._filled_in(properties, content_type),
            )
            if props.expiration is None:
                props.expiration = expires
            properties_bytes = encode_properties(props)
        connection._check_usable()
        if channel.closed is not None:
            raise channel.closed.with_traceback(None)
        # Sent first, book-kept after: the reply cannot arrive before this task
        # awaits, and the request is on its way sooner (a round trip is latency).
        connection._core.publish(
            channel.id, exchange_bytes, routing_key_bytes, body, properties_bytes, True
        )
        connection._stats.published += 1
        connection._schedule_flush()
        reply: asyncio.Future[Message] = loop.create_future()
        self._pending[correlation_id] = reply
        # One timer handle, not a timeout scope: the scope's task cancellation is
        # the costlier part of every call, and only an expiry needs it.
        timer = loop.call_at(deadline, self._expire, reply, routing_key, timeout, correlation_id)
        try:
            message = await reply
        finally:
            timer.cancel()
            self._pending.pop(correlation_id, None)
        return message

    async def _prepare(self, exchange: str) -> ChannelHandle:
        if exchange and exchange not in self._known_exchanges:
            # A publish to a missing exchange closes the channel every call shares
            # (404), failing all calls in flight: check it on a pooled channel first.
            await self._connection.declare_exchange(exchange, passive=True)
            self._known_exchanges.add(exchange)
        return await self._ready_channel()

    @staticmethod
    def _timed_out(routing_key: str, timeout: float, correlation_id: str) -> RPCTimeout:
        return RPCTimeout(
            f"no reply from {routing_key!r} within {timeout}s (correlation id {correlation_id})"
        )

    def _expire(
        self,
        reply: asyncio.Future[Message],
        routing_key: str,
        timeout: float,
        correlation_id: str,
    ) -> None:
        if not reply.done():
            reply.set_exception(self._timed_out(routing_key, timeout, correlation_id))

    def on_reply(self, message: Message) -> None:
        correlation_id, _, has_headers = message._rpc_fields()
        future = self._pending.pop(correlation_id or "", None)
        if future is None or future.done():
            log.debug(
                "leveret: dropped a late or unknown RPC reply (correlation id %r)", correlation_id
            )
            return
        headers = message.properties.headers if has_headers else None
        if headers and ERROR_TYPE_HEADER in headers:
            future.set_exception(
                RemoteError(
                    _text(headers.get(ERROR_TYPE_HEADER)),
                    _text(headers.get(ERROR_MESSAGE_HEADER)),
                    _text(headers.get(ERROR_TRACEBACK_HEADER)) or None,
                )
            )
        else:
            future.set_result(message)

    def on_return(self, returned: Returned) -> None:
        """A request no queue took: its call fails now rather than at its timeout."""
        future = self._pending.pop(returned.properties.correlation_id or "", None)
        if future is not None and not future.done():
            future.set_exception(
                MessageReturned(
                    returned.reply_code,
                    returned.reply_text,
                    returned.exchange,
                    returned.routing_key,
                    returned.body,
                    returned.properties,
                )
            )

    def on_channel_failed(self, exc: BaseException) -> None:
        self._channel = None
        self._known_exchanges.clear()  # e.g. one was deleted since: check them again
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)


def _text(value: object) -> str:
    if isinstance(value, (bytes, bytearray)):
        return value.decode("utf-8", "replace")
    return "" if value is None else str(value)


class RpcServer:
    """Consumes a request queue and runs `handler` for each request, up to `concurrency` at once.

    Each reply (or error reply) goes out on the channel its request came in
    on, followed by the request's ack in the same write: the broker takes a
    channel's frames in order, so the request is acked only once its reply
    was routed, and a connection lost before that redelivers the request.
    Requests without `reply_to` are rejected without requeueing, since no
    answer could ever reach their sender. With `no_ack`, the broker forgets
    each request as it delivers it: no ack to send or process, but a request
    whose server dies mid-handler is lost (its caller gets RPCTimeout), and
    with no prefetch window the broker hands this server every request at once.
    """

    def __init__(
        self,
        connection: Connection,
        queue: str,
        handler: Handler,
        *,
        concurrency: int,
        include_traceback: bool = False,
        no_ack: bool = False,
    ) -> None:
        self._connection = connection
        self.queue = queue
        self._handler = handler
        self._include_traceback = include_traceback
        check_subscription_options(concurrency, "reject", None)
        self._no_ack = no_ack
        # `_handle` settles every request itself; "reject" only covers a bug in it.
        self._subscription = Subscription(
            connection,
            connection.consume(queue, prefetch=0 if no_ack else concurrency, no_ack=no_ack),
            self._handle,
            concurrency=concurrency,
            on_error="reject",
            retry=None,
        )

    async def __aenter__(self) -> RpcServer:
        await self._subscription.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop taking requests; let running handlers finish (bounded), then close.

        Why serving ended, if it ended on its own, is `wait_closed()`'s to raise.
        """
        await self._subscription.close()

    async def wait_closed(self) -> None:
        """Serve until the consumer ends; re-raises why it ended (e.g. ConsumerCancelled)."""
        await self._subscription.wait_closed()

    async def _handle(self, request: Message) -> None:
        correlation_id, reply_to_name, _ = request._rpc_fields()
        if not reply_to_name:
            log.warning("leveret: rejected an RPC request on %r without reply_to", self.queue)
            request.reject(requeue=False)
            return
        content_type: str | None = None
        headers: dict[str, Any] | None = None
        try:
            result = await self._handler(request)
            if result is None:
                body = b""
            else:
                body, content_type = encode_body(result, "the handler's reply")
        except Exception as exc:  # the caller gets the error; the server lives on
            log.exception("leveret: RPC handler for %r raised", self.queue)
            body = b""
            headers = {ERROR_TYPE_HEADER: type(exc).__name__, ERROR_MESSAGE_HEADER: str(exc)}
            if self._include_traceback:  # off by default: tracebacks leak internals
                headers[ERROR_TRACEBACK_HEADER] = "".join(traceback.format_exception(exc))
        connection = self._connection
        telemetry = connection._telemetry
        traced = None
        try:
            if headers is None and correlation_id and telemetry is None:
                stamped = connection.stamp_messages
                properties_bytes = rpc_properties(
                    content_type,
                    correlation_id,
                    None,
                    None,
                    new_message_id() if stamped else None,
                    timestamp_bytes() if stamped else None,
                )
            else:
                reply_props = Properties(
                    correlation_id=correlation_id, content_type=content_type, headers=headers
                )
                changes = connection._filled_in(reply_props, None)
                if telemetry is not None:  # a PRODUCER span for the reply, child of the request's
                    reply_props, traced = telemetry.start_publish(
                        "", reply_to_name, reply_props, changes, len(body)
                    )
                elif changes:
                    reply_props = reply_props.replace(**changes)
                properties_bytes = encode_properties(reply_props)
            reply_to = connection._encoded_name(reply_to_name, "reply_to")
            if self._no_ack:
                sent = request._reply_unacked(reply_to, body, properties_bytes)
            else:
                sent = request.reply_and_ack(reply_to, body, properties_bytes)
        except ValueError as exc:
            if telemetry is not None and traced is not None:
                telemetry.end_publish(traced, exc)
            log.warning("leveret: could not publish the RPC reply to %r: %s", reply_to_name, exc)
            request.nack(requeue=not request.redelivered)
            return
        if telemetry is not None and traced is not None:
            telemetry.end_publish(traced, None)
        if not sent:
            log.debug(
                "leveret: the RPC request channel closed before the reply; %s",
                "the request is lost (no_ack)" if self._no_ack else "redelivered",
            )
