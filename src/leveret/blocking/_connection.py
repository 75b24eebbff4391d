"""The blocking Connection: the asyncio API without `await`, served by an I/O thread."""

from __future__ import annotations

import asyncio
import concurrent.futures
import itertools
import logging
import ssl as ssl_module
import threading
import weakref
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from leveret import aio
from leveret._payload import encode_body
from leveret._properties import Properties
from leveret._queue_arguments import Overflow, QueueType, StreamOffset
from leveret._url import ConnectionParameters
from leveret.aio import Backoff, QueueInfo, Retry
from leveret.aio._connect import DEFAULT_URL
from leveret.aio._connection import DEFAULT_MAX_MESSAGE_SIZE, ExchangeType
from leveret.aio._rpc import RpcReplies
from leveret.aio._stats import ConnectionStats
from leveret.aio._subscription import ErrorPolicy
from leveret.blocking._consumer import Consumer, Message
from leveret.blocking._listening import Listening
from leveret.blocking._portal import Portal, register_at_exit, unregister_at_exit
from leveret.blocking._rpc import Handler, Server
from leveret.blocking._subscription import MessageHandler, Subscription
from leveret.exceptions import ConnectionClosed, ConnectionClosedByClient
from leveret.telemetry import TelemetryOption

__all__ = ["Body", "Connection", "connect"]

log = logging.getLogger("leveret.blocking")

T = TypeVar("T")
Body = bytes | bytearray | memoryview | str | Any
Listener = Callable[[str, BaseException | None], None]
PUBLISH_OPTIONS = frozenset(
    {"routing_key", "exchange", "properties", "persistent", "mandatory", "timeout"}
)
_BATCH = 500  # publish_many hands the I/O thread this many messages at a time
_BATCHES_IN_FLIGHT = 4  # and keeps at most this many slices awaiting their confirms
_thread_numbers = itertools.count(1)


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
) -> Connection:
    """Connect to RabbitMQ: `with leveret.blocking.connect(url) as conn:` (or `conn = connect(url)`
    and later `conn.close()`).

    Takes the options of `leveret.connect` and means the same by them. The
    connection runs in an I/O thread of its own (a daemon), which keeps
    heartbeats, acks and reconnection going while your code blocks.
    """
    # Everything is validated here, in the caller's thread, before a thread or socket starts.
    connecting = aio.connect(
        url,
        heartbeat=heartbeat,
        connection_timeout=connection_timeout,
        ssl=ssl,
        name=name,
        close_timeout=close_timeout,
        drain_timeout=drain_timeout,
        reconnect=reconnect,
        backoff=backoff,
        publish_timeout=publish_timeout,
        operation_timeout=operation_timeout,
        separate_publisher=separate_publisher,
        max_in_flight=max_in_flight,
        stamp_messages=stamp_messages,
        telemetry=telemetry,
        max_message_size=max_message_size,
        rpc_replies=rpc_replies,
    )
    portal = Portal(f"leveret-io-{next(_thread_numbers)}")
    try:
        connection = portal.call(_await(connecting), "connect()")
    except BaseException:
        portal.stop(close_timeout)
        raise
    return Connection(portal, connection, close_timeout)


async def _await(connecting: Any) -> aio.Connection:
    connection: aio.Connection = await connecting
    return connection


class Connection:
    """An open connection, for scripts and threaded programs. Get one with `connect(...)`.

    Same methods and meaning as the asyncio `leveret.Connection`, without
    `await`. Any number of threads may use one connection at once: each
    call waits for its own outcome (each publish for its own confirm).
    Calling it from the connection's I/O thread (e.g. from a listener)
    raises RuntimeError instead of deadlocking.
    """

    def __init__(self, portal: Portal, connection: aio.Connection, close_timeout: float) -> None:
        self._portal = portal
        self._connection = connection
        self.close_timeout = close_timeout
        # The driver bounds each step of its close: the publishing connection's and its
        # own wait for confirms (drain_timeout), close-ok and socket (close_timeout).
        self._close_bound = 2 * connection.drain_timeout + 4 * close_timeout + 1.0
        self._close_lock = threading.Lock()
        self._closing = False
        self._close_done = threading.Event()
        self._subscriptions: weakref.WeakSet[Subscription] = weakref.WeakSet()
        register_at_exit(id(self), self.close)

    def _call(self, coro: Coroutine[Any, Any, T], what: str) -> T:
        return self._portal.call(coro, what)

    def _check_open(self, what: str) -> None:
        self._portal.refuse_loop_thread(what)
        if self._closing or self._portal.stopped:
            raise ConnectionClosedByClient("the connection was closed by the client")

    # -- state ------------------------------------------------------------------------------

    @property
    def is_connected(self) -> bool:
        """True while a link is up and recovered; False while reconnecting or closed."""
        return not self._portal.stopped and self._connection.is_connected

    @property
    def is_closed(self) -> bool:
        """True once the connection is over for good (closed, or gave up reconnecting)."""
        return self._closing or self._portal.stopped or self._connection.is_closed

    @property
    def is_blocked(self) -> bool:
        """True while the broker has blocked publishing (a memory or disk alarm)."""
        return self._connection.is_blocked

    @property
    def heartbeat(self) -> int:
        """The negotiated heartbeat interval in seconds (0: disabled)."""
        return self._connection.heartbeat

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._connection.server_properties

    @property
    def params(self) -> ConnectionParameters:
        """The parameters of the URL currently connected to."""
        return self._connection.params

    @property
    def name(self) -> str:
        """The `name=` given to connect, else host:port/vhost (as in the logs)."""
        return self._connection.name

    def stats(self) -> ConnectionStats:
        """Counters of what the connection did so far (see `leveret.ConnectionStats`).

        Read without a trip through the I/O thread: the counters are plain ints.
        """
        return self._connection.stats()

    def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected (at once if already); raises if the connection is over."""
        self._call(self._connection.wait_connected(timeout), "wait_connected()")

    def wait_closed(self, timeout: float | None = None) -> BaseException | None:
        """Wait until the connection ends; returns why (None after a clean close by you).

        Raises TimeoutError after `timeout` seconds."""
        if self._portal.stopped:
            error = self._connection._error
            return None if isinstance(error, ConnectionClosedByClient) else error
        return self._portal.call(self._connection.wait_closed(), "wait_closed()", timeout)

    def add_listener(self, listener: Listener) -> None:
        """Call `listener(state, error)` on "disconnected", "reconnected" and "closed".

        Listeners run in the I/O thread: keep them quick, and do not call the
        blocking API from them (that raises RuntimeError); hand work to
        another thread instead.
        """
        self._portal.run_soon(lambda: self._connection.add_listener(listener), None)

    def remove_listener(self, listener: Listener) -> None:
        self._portal.run_soon(lambda: self._connection.remove_listener(listener), None)

    # -- topology ---------------------------------------------------------------------------

    def declare_queue(
        self,
        name: str = "",
        *,
        durable: bool | None = None,
        exclusive: bool = False,
        auto_delete: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
        type: QueueType | None = None,
        dead_letter_exchange: str | None = None,
        dead_letter_routing_key: str | None = None,
        message_ttl: float | None = None,
        expires: float | None = None,
        max_length: int | None = None,
        max_length_bytes: int | None = None,
        overflow: Overflow | None = None,
        delivery_limit: int | None = None,
        max_priority: int | None = None,
    ) -> QueueInfo:
        """Declare a queue (server-named when `name` is ""); `passive` only checks it exists.

        `type` is "classic", "quorum" (replicated) or "stream" (an append-only
        log, read with `consume(..., offset=...)`); quorum queues and streams
        are durable unless told otherwise. The other keywords are the usual
        `x-` arguments, spelled out: times in seconds (`message_ttl` for
        messages, `expires` for an unused queue), `delivery_limit` (quorum:
        dead-letter a message after that many redeliveries). Anything else
        goes in `arguments`.
        """
        return self._call(
            self._connection.declare_queue(
                name,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                passive=passive,
                arguments=arguments,
                type=type,
                dead_letter_exchange=dead_letter_exchange,
                dead_letter_routing_key=dead_letter_routing_key,
                message_ttl=message_ttl,
                expires=expires,
                max_length=max_length,
                max_length_bytes=max_length_bytes,
                overflow=overflow,
                delivery_limit=delivery_limit,
                max_priority=max_priority,
            ),
            "declare_queue()",
        )

    def delete_queue(self, name: str, *, if_unused: bool = False, if_empty: bool = False) -> int:
        """Delete a queue; returns how many messages it held."""
        return self._call(
            self._connection.delete_queue(name, if_unused=if_unused, if_empty=if_empty),
            "delete_queue()",
        )

    def purge_queue(self, name: str) -> int:
        """Remove every ready message from a queue; returns how many."""
        return self._call(self._connection.purge_queue(name), "purge_queue()")

    def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            self._connection.bind_queue(queue, exchange, routing_key, arguments), "bind_queue()"
        )

    def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            self._connection.unbind_queue(queue, exchange, routing_key, arguments),
            "unbind_queue()",
        )

    def declare_exchange(
        self,
        name: str,
        type: ExchangeType = "direct",
        *,
        durable: bool = False,
        auto_delete: bool = False,
        internal: bool = False,
        passive: bool = False,
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Declare an exchange of `type` (direct, fanout, topic, headers or a plugin's)."""
        self._call(
            self._connection.declare_exchange(
                name,
                type,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                passive=passive,
                arguments=arguments,
            ),
            "declare_exchange()",
        )

    def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        self._call(self._connection.delete_exchange(name, if_unused=if_unused), "delete_exchange()")

    def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Route messages from exchange `source` to exchange `destination`."""
        self._call(
            self._connection.bind_exchange(destination, source, routing_key, arguments),
            "bind_exchange()",
        )

    def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        self._call(
            self._connection.unbind_exchange(destination, source, routing_key, arguments),
            "unbind_exchange()",
        )

    def declare_bound_queue(
        self,
        exchange: str,
        type: ExchangeType = "fanout",
        *,
        routing_keys: Sequence[str] = (),
        match: dict[str, Any] | None = None,
        match_all: bool = True,
        queue: str = "",
        durable_exchange: bool = False,
        durable: bool | None = None,
    ) -> QueueInfo:
        """Declare `exchange`, a queue, and the bindings between them, in one call.

        The queue is server-named and exclusive unless `queue` names one (a
        named queue is durable and outlives the connection, for subscribers
        that must not miss messages while away). Bind it with `routing_keys`
        (one binding each: direct names, or topic patterns with `*` and `#`;
        fanout needs none) or, for a headers exchange, `match` (all of the
        headers must match, or any of them with `match_all=False`).
        """
        return self._call(
            self._connection.declare_bound_queue(
                exchange,
                type,
                routing_keys=routing_keys,
                match=match,
                match_all=match_all,
                queue=queue,
                durable_exchange=durable_exchange,
                durable=durable,
            ),
            "declare_bound_queue()",
        )

    # -- publishing ---------------------------------------------------------------------------

    def publish(
        self,
        body: Body,
        *,
        routing_key: str = "",
        exchange: str = "",
        properties: Properties | None = None,
        persistent: bool = False,
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> None:
        """Publish and return once the broker confirmed the message.

        `body` may be bytes, a str (sent as UTF-8, content type text/plain)
        or a JSON-able object: dict, list, number, dataclass or pydantic model
        (sent as JSON, content type application/json); a content type in
        `properties` wins. Unless the connection was opened with
        `stamp_messages=False`, a message gets a unique `message_id` and a
        timestamp when `properties` has none.

        Raises what the asyncio `publish` raises: PublishNacked,
        MessageReturned (`mandatory`), PublishTimeout, NotFound, a connection
        error; TypeError for a body it cannot send. Many threads may publish
        at once; each waits for its own confirm. For a batch, `publish_many`
        is much faster.
        """
        if self._closing:
            self._check_open("publish()")  # raises
        connection = self._connection
        if connection._telemetry is not None:
            options: dict[str, Any] = {
                "routing_key": routing_key,
                "exchange": exchange,
                "properties": properties,
                "persistent": persistent,
                "mandatory": mandatory,
                "timeout": timeout,
            }
            # A task started from this thread runs in a copy of its context: the
            # current span (e.g. a handler's) becomes the publish span's parent.
            self._call(_publish_awaited(connection, body, options), "publish()")
            return
        # The hot path; run() refuses the I/O thread and a closed connection as
        # _check_open does.
        self._portal.run(
            lambda: connection.publish(
                body,
                routing_key=routing_key,
                exchange=exchange,
                properties=properties,
                persistent=persistent,
                mandatory=mandatory,
                timeout=timeout,
            ),
            "publish()",
        )

    def publish_many(
        self,
        messages: Iterable[Body | tuple[Body, Mapping[str, Any]]],
        *,
        routing_key: str = "",
        exchange: str = "",
        properties: Properties | None = None,
        persistent: bool = False,
        mandatory: bool = False,
        timeout: float | None = None,
    ) -> int:
        """Publish a batch with confirms pipelined: all are sent, then all confirms awaited.

        Each item is a body (anything `publish` takes: bytes, str, a JSON-able
        object), or a `(body, options)` pair whose options (any of
        routing_key, exchange, properties, persistent, mandatory, timeout)
        override the keyword arguments for that message. Returns how many were
        confirmed, which is all of them: once every outcome is known, the
        first failure (in batch order) is raised, with a note saying how many
        messages were confirmed and which one failed first. An item that is
        neither raises TypeError once what was sent before it has its outcome.
        The messages are taken from `messages` and handed to the I/O thread
        in slices of a few hundred, a few slices at a time, so a generator of
        any length keeps memory bounded, and Ctrl-C stops it promptly.
        """
        self._check_open("publish_many()")
        defaults: dict[str, Any] = {
            "routing_key": routing_key,
            "exchange": exchange,
            "properties": properties,
            "persistent": persistent,
            "mandatory": mandatory,
            "timeout": timeout,
        }
        publish = self._connection.publish
        portal = self._portal
        # A few slices in flight keep the socket busy (more would only add tasks to
        # cancel on Ctrl-C); never more than the driver's window of unconfirmed publishes.
        window = max(1, min(_BATCHES_IN_FLIGHT, -(-self._connection.max_in_flight // _BATCH)))
        pending: deque[tuple[int, concurrent.futures.Future[list[BaseException | None]]]] = deque()
        tally = _Tally()
        sent = 0
        try:
            for batch, bad in _batches(messages, defaults):
                if batch:
                    pending.append((sent, portal.submit(_publish_batch(publish, batch))))
                    sent += len(batch)
                while pending and (len(pending) >= window or bad is not None):
                    start, future = pending.popleft()
                    tally.add(start, portal.wait(future))
                if tally.cut_short:
                    break  # the connection is over: the rest would fail too
                if bad is not None:
                    bad.add_note(
                        f"publish_many: the {sent:,} messages before it were sent; "
                        f"{tally.confirmed:,} confirmed"
                    )
                    raise bad
            while pending:
                start, future = pending.popleft()
                tally.add(start, portal.wait(future))
        except BaseException:
            for _, future in pending:
                portal.cancel(future)
            raise
        tally.raise_first(sent)
        return tally.confirmed

    # -- consuming ---------------------------------------------------------------------------

    def consume(
        self,
        queue: str,
        *,
        prefetch: int = 100,
        no_ack: bool = False,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        consumer_tag: str | None = None,
        offset: StreamOffset | None = None,
    ) -> Consumer:
        """Consume `queue`: `with conn.consume(q, prefetch=10) as messages: for msg in messages:`.

        `prefetch` bounds unacked messages in flight (0: unlimited). Leaving
        the `with` block stops the consumer; the broker requeues what was not
        acked. See `Consumer` for iteration with a timeout. For a stream,
        `offset` says where to start reading: "first", "last", "next", an
        offset number, a datetime, or an interval such as "10m"; after a
        reconnect the consumer resumes after the last message it handed out.
        Stream messages still need `ack()` (it grants credit).
        """
        self._check_open("consume()")
        consumer = self._connection.consume(
            queue,
            prefetch=prefetch,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
            consumer_tag=consumer_tag,
            offset=offset,
        )
        return Consumer(self._portal, consumer)

    def listen(
        self,
        exchange: str,
        type: ExchangeType = "fanout",
        *,
        routing_keys: Sequence[str] = (),
        match: dict[str, Any] | None = None,
        match_all: bool = True,
        prefetch: int = 100,
        durable_exchange: bool = False,
    ) -> Listening:
        """Messages published to `exchange` from now on: `with conn.listen(ex) as messages:`.

        Declares the exchange and a private (server-named, exclusive) queue
        bound as `declare_bound_queue` does, and consumes it; the queue is
        deleted on leaving the block. `messages` is a `Consumer`: iterate it,
        or use `messages.iter(timeout=...)` to stop after a quiet spell.
        """
        self._check_open("listen()")
        listening = self._connection.listen(
            exchange,
            type,
            routing_keys=routing_keys,
            match=match,
            match_all=match_all,
            prefetch=prefetch,
            durable_exchange=durable_exchange,
        )
        return Listening(self._portal, listening)

    def subscribe(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        on_error: ErrorPolicy = "requeue_once",
        retry: Retry | None = None,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        offset: StreamOffset | None = None,
    ) -> Subscription:
        """Run `handler(msg)` for each message of `queue`: `with conn.subscribe(q, h) as sub:`.

        The handler is a plain function; up to `concurrency` run at once, each
        in a worker thread (`prefetch` defaults to `concurrency`). A handler
        that returns acks its message; one that raises is dealt with by
        `on_error` ("requeue_once", "reject" or "requeue", see `Subscription`)
        or, with `retry=leveret.Retry(delays=(1, 10, 60))`, retried after each
        delay and then parked in `<queue>.parked`. `sub.wait()` blocks while
        it runs and raises what ended it; leaving the block lets running
        handlers finish (within `close_timeout`).
        """
        self._check_open("subscribe()")
        subscription = Subscription(
            self._portal,
            self._connection,
            queue,
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            on_error=on_error,
            retry=retry,
            exclusive=exclusive,
            arguments=arguments,
            offset=offset,
        )
        self._subscriptions.add(subscription)
        return subscription

    def subscribe_forever(
        self,
        queue: str,
        handler: MessageHandler,
        *,
        concurrency: int = 1,
        prefetch: int | None = None,
        on_error: ErrorPolicy = "requeue_once",
        retry: Retry | None = None,
        exclusive: bool = False,
        arguments: dict[str, Any] | None = None,
        offset: StreamOffset | None = None,
    ) -> None:
        """`subscribe` until Ctrl-C (KeyboardInterrupt) or until the subscription ends, raising
        why (e.g. ConsumerCancelled when the queue is deleted). Running handlers get
        `close_timeout` to finish either way."""
        with self.subscribe(
            queue,
            handler,
            concurrency=concurrency,
            prefetch=prefetch,
            on_error=on_error,
            retry=retry,
            exclusive=exclusive,
            arguments=arguments,
            offset=offset,
        ) as subscription:
            subscription.wait()

    def get(self, queue: str, *, no_ack: bool = False) -> Message | None:
        """basic.get: one message from `queue`, or None when it is empty."""
        message = self._call(self._connection.get(queue, no_ack=no_ack), "get()")
        return None if message is None else Message(message, self._portal)

    # -- RPC ----------------------------------------------------------------------------------

    def call(
        self,
        routing_key: str,
        body: Body = b"",
        *,
        exchange: str = "",
        timeout: float = 30.0,
        properties: Properties | None = None,
        expire_unanswered: bool = True,
    ) -> Message:
        """Send a request and wait for its reply (see `connect(rpc_replies=)`); returns the reply.

        `body` takes what `publish` takes (bytes, str, a JSON-able object);
        decode the reply with `reply.json()`, `reply.text()` or `reply.decode()`.
        Raises RPCTimeout after `timeout` seconds, RemoteError when the
        server's handler raised, MessageReturned when no queue takes the request.
        """
        reply = self._call(
            self._connection.call(
                routing_key,
                body,
                exchange=exchange,
                timeout=timeout,
                properties=properties,
                expire_unanswered=expire_unanswered,
            ),
            "call()",
        )
        return Message(reply, self._portal)

    def serve(
        self, queue: str, handler: Handler, *, concurrency: int = 10, no_ack: bool = False
    ) -> Server:
        """Answer requests on `queue` with `handler(msg) -> bytes`: `with conn.serve(q, h): ...`.

        The handler is a plain function; up to `concurrency` run at once, each
        in a worker thread, so slow handlers never stall heartbeats or acks.
        `no_ack` as in the asyncio `serve`: faster, but a request in a server
        that dies is lost rather than redelivered.
        """
        self._check_open("serve()")
        return Server(
            self._portal, self._connection, queue, handler, concurrency=concurrency, no_ack=no_ack
        )

    def serve_forever(self, queue: str, handler: Handler, *, concurrency: int = 10) -> None:
        """Serve `queue` until Ctrl-C (KeyboardInterrupt) or until the server ends, raising why
        (e.g. ConsumerCancelled when the queue is deleted)."""
        with self.serve(queue, handler, concurrency=concurrency) as server:
            server.wait()

    # -- misc ---------------------------------------------------------------------------------

    def update_secret(self, new_secret: str, reason: str = "token refresh") -> None:
        """Hand the broker a new password or OAuth 2 token (connection.update-secret)."""
        self._call(self._connection.update_secret(new_secret, reason), "update_secret()")

    def close(self) -> None:
        """Close gracefully (pending confirms first), then stop the I/O thread.

        Idempotent and bounded: if the broker does not answer within
        `close_timeout`, the socket is aborted. Using the connection
        afterwards raises ConnectionClosedByClient.
        """
        self._portal.refuse_loop_thread("close()")
        with self._close_lock:
            first = not self._closing
            self._closing = True
        if not first:
            self._close_done.wait(self._close_bound)  # another thread is closing
            return
        unregister_at_exit(id(self))
        try:
            if not self._portal.stopped:
                self._portal.call(self._connection.close(), "close()", timeout=self._close_bound)
        except TimeoutError:
            log.warning("leveret: the connection did not close within its bound; stopping")
        except ConnectionClosedByClient:
            pass
        finally:
            self._portal.stop(self.close_timeout)
            for subscription in list(self._subscriptions):
                subscription._connection_closed()  # its worker threads would idle forever
            self._close_done.set()

    def __enter__(self) -> Connection:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = (
            "closed"
            if self.is_closed
            else "open"
            if self._connection.is_connected
            else "reconnecting"
        )
        return f"<leveret.blocking.Connection {self.params.display()} {state}>"


# -- publish_many helpers ---------------------------------------------------------------------


def _batches(
    messages: Iterable[Body | tuple[Body, Mapping[str, Any]]], defaults: dict[str, Any]
) -> Iterator[tuple[list[tuple[Body, dict[str, Any]]], TypeError | None]]:
    """Slices of (body, options), each with the TypeError of a bad item that ended it (if any)."""
    batch: list[tuple[Body, dict[str, Any]]] = []
    for index, item in enumerate(messages):
        if type(item) is bytes:
            batch.append((item, defaults))
        elif isinstance(item, tuple) and len(item) == 2 and isinstance(item[1], Mapping):
            body, options = item
            try:
                encode_body(body)
            except TypeError as exc:
                yield batch, TypeError(f"publish_many: message #{index}: {exc}")
                return
            unknown = set(options) - PUBLISH_OPTIONS
            if unknown:
                yield (
                    batch,
                    TypeError(
                        f"publish_many: message #{index} has unknown options {sorted(unknown)}; "
                        f"allowed: {sorted(PUBLISH_OPTIONS)}"
                    ),
                )
                return
            batch.append((body, {**defaults, **options}))
        else:
            try:
                encode_body(item)
            except TypeError as exc:
                yield (
                    batch,
                    TypeError(
                        f"publish_many: message #{index} must be a body or a (body, options) "
                        f"pair: {exc}"
                    ),
                )
                return
            batch.append((item, defaults))
        if len(batch) >= _BATCH:
            yield batch, None
            batch = []
    if batch:
        yield batch, None


async def _publish_awaited(connection: aio.Connection, body: Body, options: dict[str, Any]) -> None:
    """A publish started in the I/O thread, by a task carrying the calling thread's context."""
    await connection.publish(body, **options)


async def _publish_batch(
    publish: Callable[..., Awaitable[None]], batch: list[tuple[Body, dict[str, Any]]]
) -> list[BaseException | None]:
    """In the I/O thread: start every publish of the slice, then wait for every outcome."""
    futures = [publish(body, **options) for body, options in batch]
    outcomes: list[BaseException | None] = await asyncio.gather(*futures, return_exceptions=True)
    return outcomes


class _Tally:
    """publish_many's outcomes: how many were confirmed, and the first failure."""

    def __init__(self) -> None:
        self.confirmed = 0
        self.failed = 0
        self.first: tuple[int, BaseException] | None = None
        self.cut_short = False

    def add(self, start: int, outcomes: list[BaseException | None]) -> None:
        for offset, outcome in enumerate(outcomes):
            if outcome is None:
                self.confirmed += 1
                continue
            self.failed += 1
            if isinstance(outcome, ConnectionClosed):
                self.cut_short = True  # never raised while reconnection may still help
            if self.first is None:
                self.first = (start + offset, outcome)

    def raise_first(self, total: int) -> None:
        if self.first is None:
            return
        index, error = self.first
        error = _own_copy(error)
        rest = "; the connection ended, so the rest was not sent" if self.cut_short else ""
        error.add_note(
            f"publish_many: {self.confirmed:,} of {total:,} messages confirmed, "
            f"{self.failed:,} failed; this is the first failure, message #{index}{rest}"
        )
        raise error


def _own_copy(error: BaseException) -> BaseException:
    """A copy to annotate: the same error object may be raised to other publishers too."""
    try:
        copy = type(error).__new__(type(error), *error.args)
        copy.__dict__.update(error.__dict__)
        if hasattr(error, "__notes__"):
            copy.__notes__ = list(error.__notes__)
    except Exception:  # noqa: BLE001 - an exotic exception type: annotate the original
        return error
    return copy
