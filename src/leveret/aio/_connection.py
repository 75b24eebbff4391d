"""Connection: the asyncio driver around the sans-IO core, and the public API.

Theory of operation. An `asyncio.Protocol` feeds socket bytes to
`AMQPConnection.receive_data()` and dispatches the events to futures. Output
goes out at once when it is the first of its event-loop iteration and the
last iteration wrote only once (a lone RPC request or reply waits for
nothing); otherwise the iteration's output is written by one `writelines`
call at the next (`_schedule_flush`), so a burst of publishes from many
tasks costs one write, not one per publish. A timer drives heartbeats
through `handle_timer()`.

Channels are hidden. Synchronous operations borrow a channel from a pool,
one operation per channel at a time, so a broker error fails that call alone;
the broken channel is dropped and the next call opens a fresh one. Publishes
use one confirm-mode channel per exchange. Each consumer has its own channel.

Errors surface where the caller awaits: a broker channel error raises on the
call that caused it, and a lost connection raises on every pending and later
call. Nothing is swallowed.

Reconnection. Each TCP connection is a "link" (a fresh core, transport and
set of channels, numbered by `_link_id`). When a link drops for a reason
worth retrying (socket loss, missed heartbeats, a broker-forced close), the
connection tears the link down, marks its channels dead (so acks of stale
deliveries send nothing), keeps the unconfirmed publishes, and reconnects with
backoff. On the new link it declares the recorded topology again, restarts
every consumer, re-sends the kept publishes and only then lets waiting
callers through. `close()` by the user never reconnects.
"""

from __future__ import annotations

import asyncio
import datetime
import functools
import itertools
import logging
import math
import os
import socket
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar, cast

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from leveret._payload import encode_body, new_message_id, stamp
from leveret._properties import Properties
from leveret._queue_arguments import (
    Overflow,
    QueueType,
    StreamOffset,
    queue_arguments,
    stream_arguments,
)
from leveret._url import ConnectionParameters
from leveret.aio._backoff import Backoff
from leveret.aio._channel import ChannelHandle, Outgoing, new_outgoing
from leveret.aio._consumer import Consumer
from leveret.aio._deadlines import Deadlines
from leveret.aio._drain import close_reason, drain_subscriptions
from leveret.aio._listening import Listening
from leveret.aio._message import Message
from leveret.aio._publish_future import PublishFuture, wait_settled
from leveret.aio._retry import Retry
from leveret.aio._rpc import Handler, RpcClient, RpcReplies, RpcServer
from leveret.aio._send_queue import SendQueue
from leveret.aio._state_changes import StateChanges
from leveret.aio._stats import ConnectionStats, Counters, snapshot
from leveret.aio._subscription import (
    ErrorPolicy,
    MessageHandler,
    Subscription,
    check_handler,
    check_subscription_options,
)
from leveret.aio._topology import ExchangeRecord, QueueBindingRecord, QueueRecord, Topology
from leveret.exceptions import (
    AuthenticationFailed,
    ChannelClosed,
    ChannelClosedByServer,
    ConnectFailed,
    ConnectionClosed,
    ConnectionClosedByClient,
    ConnectionForced,
    ConnectionLost,
    HeartbeatTimeout,
    InternalError,
    LeveretError,
    MessageTooLarge,
    ProtocolError,
    PublishTimeout,
    ResourceLocked,
    channel_error,
    connection_error,
)
from leveret.protocol import (
    AMQPConnection,
    ChannelFlowChanged,
    ChannelOpened,
    ConnectionBlocked,
    ConnectionOpened,
    ConnectionUnblocked,
    ConsumerCancelled,
    Credentials,
    Delivery,
    Event,
    HeartbeatTimedOut,
    MethodReceived,
    PublishConfirmed,
    Returned,
)
from leveret.protocol import ChannelClosed as CoreChannelClosed
from leveret.protocol import (
    ConnectionClosed as CoreConnectionClosed,
)
from leveret.protocol._codec import (
    EMPTY_PROPERTIES_BYTES,
    PERSISTENT_PROPERTIES_BYTES,
    encode_properties,
    encode_shortstr,
    encode_table,
    stamp_prefix,
)

if TYPE_CHECKING:
    from leveret.telemetry._otel import Instrumentation, PublishOp

__all__ = ["Connection", "ExchangeType", "QueueInfo"]

log = logging.getLogger("leveret.connection")
consumer_log = logging.getLogger("leveret.consumer")

ExchangeType = Literal["direct", "fanout", "topic", "headers"] | str
Body = bytes | bytearray | memoryview | str | Any
"""bytes as they are; str as UTF-8 text; dicts, lists, numbers, dataclasses, models as JSON."""
_stamp_prefix = functools.lru_cache(maxsize=64)(stamp_prefix)
_STAMP_PLAIN = stamp_prefix(None, False)
_STAMP_PERSISTENT = stamp_prefix(None, True)
_M = TypeVar("_M", bound=PamqpMethod)
DEFAULT_MAX_MESSAGE_SIZE = 128 * 1024 * 1024  # RabbitMQ 3.x's max_message_size
_POOL_LIMIT = 32  # idle synchronous-operation channels kept open
_NAME_CACHE_LIMIT = 4096
_consumer_numbers = itertools.count(1)
# Link failures worth reconnecting after; anything else (a protocol error, an
# auth or vhost problem, a close by the user) ends the connection.
_RECOVERABLE = (ConnectionLost, ConnectionForced, InternalError)


@dataclass(frozen=True, slots=True)
class QueueInfo:
    """The broker's answer to queue.declare."""

    name: str
    message_count: int
    consumer_count: int


class _Protocol(asyncio.Protocol):
    """Moves bytes between the socket and the Connection; nothing else."""

    def __init__(self, connection: Connection, link: int) -> None:
        self._connection = connection
        self._link = link  # bytes from an older link must never reach a newer core

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the Transport methods without subclassing it.
        transport = cast(asyncio.Transport, transport)
        if self._link == self._connection._link_id:
            self._connection._transport_ready(transport)
        else:
            transport.abort()

    def data_received(self, data: bytes) -> None:
        if self._link == self._connection._link_id:
            self._connection._data_received(data)

    def eof_received(self) -> bool:
        return False  # close the transport; connection_lost follows

    def connection_lost(self, exc: Exception | None) -> None:
        self._connection._transport_lost(exc, self._link)

    def pause_writing(self) -> None:
        if self._link == self._connection._link_id:
            self._connection._write_paused = True

    def resume_writing(self) -> None:
        if self._link == self._connection._link_id:
            self._connection._resume_writing()


class Connection:
    """An open AMQP connection. Get one with `leveret.connect(...)`."""

    def __init__(
        self,
        candidates: ConnectionParameters | Sequence[ConnectionParameters],
        *,
        close_timeout: float = 5.0,
        drain_timeout: float | None = None,
        reconnect: bool = True,
        backoff: Backoff | None = None,
        publish_timeout: float | None = 60.0,
        operation_timeout: float = 60.0,
        separate_publisher: bool = True,
        max_in_flight: int = 10_000,
        stamp_messages: bool = True,
        telemetry: Instrumentation | None = None,
        max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE,
        rpc_replies: RpcReplies = "queue",
    ) -> None:
        if isinstance(candidates, ConnectionParameters):
            candidates = [candidates]
        self._candidates = list(candidates)
        self.close_timeout = close_timeout
        # How long close() waits for running handlers and for unconfirmed publishes.
        self.drain_timeout = close_timeout if drain_timeout is None else drain_timeout
        self._subscriptions: dict[Subscription, None] = {}  # running: drained on close
        self.reconnect = reconnect
        self.backoff = backoff or Backoff()
        self.publish_timeout = publish_timeout
        self.operation_timeout = operation_timeout
        self.stamp_messages = stamp_messages
        self.rpc_replies = rpc_replies  # where conn.call() has its replies come
        self._telemetry = telemetry  # None unless OpenTelemetry is on: one check per message
        self._stats = Counters()
        self.max_message_size = max_message_size  # bodies over it never leave the process
        self._loop = asyncio.get_running_loop()
        self._closed: asyncio.Future[None] = self._loop.create_future()
        self._error: BaseException | None = None  # terminal: the connection is done
        self._closing = False
        self._draining = False
        self._connected = asyncio.Event()
        self._reconnecting = False
        self._reconnect_task: asyncio.Task[None] | None = None
        self._write_waiters: list[asyncio.Future[None]] = []
        self._unblocked: asyncio.Event = asyncio.Event()
        self._unblocked.set()
        self._topology = Topology()
        self._active_consumers: dict[Consumer, None] = {}  # an ordered set
        self._republish: deque[Outgoing] = deque()
        self._deadlines = Deadlines(
            self._loop,
            self._expire_publish,
            lambda: [channel.confirms.values() for channel in self._publish_channels.values()],
            lambda: self._republish,
        )
        self._rpc_client: RpcClient | None = None
        self._listeners: list[Callable[[str, BaseException | None], None]] = []
        self._state_streams: dict[StateChanges, None] = {}  # an ordered set
        self._owner: Connection | None = None  # set on a publishing connection
        self._name_cache: dict[str, bytes] = {}
        self._flush = self._schedule_flush
        # Publishes go through a second connection of their own (opened on first
        # use), so that a broker blocking publishers never stalls consumers' acks.
        self._separate_publisher = separate_publisher
        self.max_in_flight = max_in_flight
        self._in_flight = 0  # publishes awaiting their confirm on this connection
        self._window_waiters: deque[asyncio.Future[None]] = deque()
        self._send_queue = SendQueue(self)  # publishes that have to wait, in order
        self._waiting_sends = self._send_queue.waiting
        self._publisher: Connection | None = None
        self._publisher_opening: asyncio.Task[Connection] | None = None
        self._recovery_gate: asyncio.Event | None = None  # the publisher waits for topology
        self._link_id = 0
        self._new_link(self._candidates[0])

    def _new_link(self, params: ConnectionParameters) -> None:
        """Fresh per-link state: a new core, no transport, no channels."""
        self._link_id += 1
        self.params = params
        self._core = AMQPConnection(
            credentials=Credentials(params.username, params.password, params.auth_mechanism),
            virtual_host=params.virtual_host,
            heartbeat=params.heartbeat,
            frame_max=params.frame_max,
            channel_max=params.channel_max,
            connection_name=params.connection_name,
        )
        self._link_error: BaseException | None = None  # why the current link ended
        self._transport: asyncio.Transport | None = None
        self._opened: asyncio.Future[None] = self._loop.create_future()
        self._socket_closed: asyncio.Future[None] = self._loop.create_future()
        self._flush_scheduled = False
        self._write_eagerly = True
        self._wrote_eagerly = False  # this turn wrote at once (a flush is due before another)
        self._pending_writes = 0
        self._write_paused = False
        self._timer: asyncio.TimerHandle | None = None
        self._channels: dict[int, ChannelHandle] = {}
        self._idle_pool: list[ChannelHandle] = []
        self._publish_channels: dict[str, ChannelHandle] = {}
        self._publish_channel_opening: dict[str, asyncio.Task[ChannelHandle]] = {}
        self._get_channel: ChannelHandle | None = None
        self._secret_waiters: list[asyncio.Future[None]] = []
        self._consumers: dict[tuple[int, str], Consumer] = {}
        self._unblocked.set()

    # -- opening -----------------------------------------------------------------------

    async def _connect_first(self) -> None:
        """The initial connect: each URL once, in order (reconnection starts after this)."""
        errors: list[str] = []
        last: BaseException | None = None
        for index, params in enumerate(self._candidates):
            try:
                await self._open_link(params)
            except ConnectFailed as exc:
                if type(exc) is not ConnectFailed:
                    self._finish(exc)
                    raise  # e.g. AuthenticationFailed: trying other hosts will not help
                errors.append(str(exc))
                last = exc
                continue
            except BaseException as exc:
                self._finish(
                    exc if isinstance(exc, LeveretError) else ConnectionClosedByClient(str(exc))
                )
                raise
            self._candidates = self._candidates[index:] + self._candidates[:index]
            self._connected.set()
            return
        failure: BaseException
        if len(self._candidates) == 1 and last is not None:
            failure = last
        else:
            failure = ConnectFailed("could not connect to any broker: " + "; ".join(errors))
            failure.__cause__ = last
        self._finish(failure)
        raise failure

    async def _open_link(self, params: ConnectionParameters) -> None:
        """Open one TCP/TLS connection and run the AMQP handshake on a fresh link."""
        self._new_link(params)
        link = self._link_id
        try:
            ssl_context = params.make_ssl_context()
        except OSError as exc:  # ssl.SSLError too: a missing or bad cafile, certfile or keyfile
            failure = ConnectFailed(
                f"could not connect to {params.display()}: cannot load the TLS files "
                f"(cafile, certfile, keyfile): {exc}"
            )
            self._teardown_link(failure)
            raise failure from exc
        transport: asyncio.Transport | None = None
        try:
            async with asyncio.timeout(params.connection_timeout):
                transport, _protocol = await self._loop.create_connection(
                    lambda: _Protocol(self, link),
                    params.host,
                    params.port,
                    ssl=ssl_context,
                    server_hostname=(params.server_hostname or params.host)
                    if params.use_tls
                    else None,
                )
                await asyncio.shield(self._opened)
        except TimeoutError:
            self._teardown_link(ConnectFailed(f"timed out after {params.connection_timeout}s"))
            raise ConnectFailed(
                f"could not connect to {params.display()}: no AMQP handshake within "
                f"{params.connection_timeout}s"
            ) from None
        except OSError as exc:  # ssl.SSLError included: TLS handshake failures
            self._teardown_link(ConnectFailed(str(exc)))
            raise ConnectFailed(params.connect_error_message(exc)) from exc
        except ConnectionLost as exc:
            # With TLS 1.3 the broker verifies the client certificate after the client's
            # side of the handshake is done: its alert arrives as a lost connection.
            self._teardown_link(exc)
            hint = (
                "; the broker may have refused the TLS client certificate"
                if params.certfile
                else ""
            )
            raise ConnectFailed(
                f"could not connect to {params.display()} (lost during the AMQP handshake"
                f"{hint}): {exc}"
            ) from None
        except AuthenticationFailed as exc:
            self._teardown_link(exc)
            if params.auth_mechanism != "EXTERNAL":
                raise
            text = str(exc)
            reply = text.partition(f"for user {params.username!r}: ")[2] or text
            why = (
                "no client certificate was given (pass certfile and keyfile)"
                if not params.certfile
                else f"the broker takes the user name from the client certificate "
                f"{params.certfile} (its subject DN by default, its CN with "
                "ssl_cert_login_from = common_name) and that user must exist"
            )
            raise AuthenticationFailed(
                f"{params.display()} refused the SASL EXTERNAL login: {why} ({reply})"
            ) from None
        except ProtocolError as exc:
            self._teardown_link(exc)
            if params.auth_mechanism == "EXTERNAL" and exc.reply_code == 530:
                raise AuthenticationFailed(
                    f"could not log in to {params.display()}: {exc}; EXTERNAL needs amqps:// and "
                    "the rabbitmq_auth_mechanism_ssl plugin on the broker"
                ) from None
            raise
        except LeveretError:
            self._teardown_link(ConnectionClosedByClient("handshake failed"))
            raise
        except asyncio.CancelledError:
            self._teardown_link(ConnectionClosedByClient("connect() was cancelled"))
            raise
        finally:
            if self._link_error is not None and transport is not None:
                # A graceful close would start a TLS shutdown that outlives connect() (and
                # maybe the event loop, leaking the socket); just drop a failed connection.
                transport.abort()

    def _transport_ready(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except OSError:
                pass
        self._core.initiate()
        self._flush_now()

    # -- I/O ----------------------------------------------------------------------------------

    def _schedule_flush(self) -> None:
        self._pending_writes += 1
        if self._flush_scheduled:
            return
        if self._write_eagerly and not self._wrote_eagerly:
            # A lone request or reply goes out at once, and costs no loop callback (nor
            # the extra loop iteration that would run it) unless more follows it before
            # the next read: a second write then waits for a flush at the end of the turn.
            self._wrote_eagerly = True
            self._pending_writes = 1
            self._write_out()
            return
        self._flush_scheduled = True
        self._loop.call_soon(self._flush_now)

    def _flush_now(self) -> None:
        self._flush_scheduled = False
        self._wrote_eagerly = False
        # One write in the last turn (a lone request or reply): the next goes out at
        # once. A burst (many publishes or acks): writing them together is cheaper.
        self._write_eagerly = self._pending_writes <= 1
        self._pending_writes = 0
        self._write_out()

    def _write_out(self) -> None:
        transport = self._transport
        if transport is None:
            return
        out = self._core.take_output()
        if out and not transport.is_closing():
            transport.writelines(out)

    def _resume_writing(self) -> None:
        self._write_paused = False
        waiters, self._write_waiters = self._write_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def _wait_writable(self) -> None:
        waiter = self._loop.create_future()
        self._write_waiters.append(waiter)
        await waiter

    def _data_received(self, data: bytes) -> None:
        self._wrote_eagerly = False  # a new turn: its first write may go out at once
        try:
            events = self._core.receive_data(data)
        except ProtocolError as exc:
            self._flush_now()
            self._link_failed(exc)  # logs it
            return
        consumers = self._consumers
        channels = self._channels
        stats = self._stats
        for event in events:
            kind = type(event)
            if kind is Delivery:
                assert isinstance(event, Delivery)
                stats.delivered += 1
                if event.redelivered:
                    stats.redelivered += 1
                channel = channels[event.channel_id]
                if event.consumer_tag is None:
                    self._resolve_waiter(channel, event)
                    continue
                consumer = consumers.get((event.channel_id, event.consumer_tag))
                if consumer is not None:
                    consumer.deliver(
                        event,
                        Message(event, channel, self._core, self._flush, consumer.no_ack),
                    )
            elif kind is PublishConfirmed:
                assert isinstance(event, PublishConfirmed)
                channels[event.channel_id].settle(event.delivery_tag, event.multiple, event.ack)
            else:
                self._on_event(event)
        if self._core.has_output:
            self._flush_now()

    def _on_event(self, event: Event) -> None:
        if isinstance(event, MethodReceived):
            channel = self._channels.get(event.channel_id)
            if channel is not None:
                self._resolve_waiter(channel, event.method)
            elif event.channel_id == 0 and self._secret_waiters:
                waiter = self._secret_waiters.pop(0)  # update-secret-ok, in order
                if not waiter.done():
                    waiter.set_result(None)
        elif isinstance(event, ChannelOpened):
            channel = self._channels[event.channel_id]
            if not channel.opened.done():
                channel.opened.set_result(None)
        elif isinstance(event, CoreChannelClosed):
            self._on_channel_closed(event)
        elif isinstance(event, Returned):
            self._stats.returned += 1
            channel = self._channels.get(event.channel_id)
            if channel is not None:
                if channel.on_return is not None:
                    channel.on_return(event)
                else:
                    channel.returns.append(event)
        elif isinstance(event, ConsumerCancelled):
            consumer = self._consumers.pop((event.channel_id, event.consumer_tag), None)
            if consumer is not None:
                consumer_log.warning(
                    "leveret [%s]: the broker cancelled consumer %s on queue %r",
                    self.name,
                    event.consumer_tag,
                    consumer.queue,
                )
                # The channel stays open so buffered messages can still be acked;
                # leaving the consumer's `async with` closes it.
                consumer.cancelled_by_server()
        elif isinstance(event, ConnectionOpened):
            log.debug("leveret [%s]: connected to %s", self.name, self.params.display())
            if not self._opened.done():
                self._opened.set_result(None)
            self._arm_timer()
        elif isinstance(event, CoreConnectionClosed):
            self._on_connection_closed(event)
        elif isinstance(event, HeartbeatTimedOut):
            self._link_failed(
                HeartbeatTimeout(
                    f"no data from {self.params.display()} for {event.silent_for:.1f}s "
                    f"(heartbeat {self._core.heartbeat}s)"
                )
            )
        elif isinstance(event, ConnectionBlocked):
            # The broker tells every connection; only one that publishes is held by it.
            log.log(
                logging.DEBUG if self._separate_publisher else logging.WARNING,
                "leveret [%s]: the broker blocked publishing: %s",
                self.name,
                event.reason,
            )
            self._unblocked.clear()
            self._notify("blocked", None, event.reason)
        elif isinstance(event, ConnectionUnblocked):
            log.log(
                logging.DEBUG if self._separate_publisher else logging.INFO,
                "leveret [%s]: the broker unblocked publishing",
                self.name,
            )
            self._unblocked.set()
            self._notify("unblocked", None)
        elif isinstance(event, ChannelFlowChanged):
            log.warning(
                "leveret [%s]: channel.flow active=%s on channel %d",
                self.name,
                event.active,
                event.channel_id,
            )

    @staticmethod
    def _resolve_waiter(channel: ChannelHandle, value: Any) -> None:
        if channel.waiters:
            future = channel.waiters.popleft()
            if not future.done():
                future.set_result(value)

    def _on_channel_closed(self, event: CoreChannelClosed) -> None:
        channel = self._channels.pop(event.channel_id, None)
        if channel is None:
            return
        if event.by_server:
            exc: BaseException = channel_error(
                event.reply_code, event.reply_text, event.class_id, event.method_id
            )
            log.debug(
                "leveret [%s]: broker closed channel %d: %s", self.name, event.channel_id, exc
            )
        else:
            exc = ChannelClosed("the channel was closed by the client")
        self._forget_channel(channel)
        channel.fail(exc)

    def _forget_channel(self, channel: ChannelHandle) -> None:
        if channel in self._idle_pool:
            self._idle_pool.remove(channel)
        for exchange, publisher in list(self._publish_channels.items()):
            if publisher is channel:
                del self._publish_channels[exchange]
        consumer = channel.consumer
        if consumer is not None:
            self._consumers.pop((channel.id, consumer.consumer_tag), None)

    def _on_connection_closed(self, event: CoreConnectionClosed) -> None:
        if not event.by_server:
            self._link_failed(ConnectionClosedByClient("the connection was closed by the client"))
            return
        exc: BaseException
        if event.during_handshake and event.reply_code == 403:
            exc = AuthenticationFailed(
                f"{self.params.display()} refused the credentials for user "
                f"{self.params.username!r}: {event.reply_text}"
            )
        else:
            exc = connection_error(
                event.reply_code, event.reply_text, event.class_id, event.method_id
            )
        self._flush_now()  # the close-ok
        self._link_failed(exc)  # logs it

    def _transport_lost(self, exc: Exception | None, link: int) -> None:
        if link != self._link_id:
            return  # an older link's socket finally closed
        self._transport = None
        if not self._socket_closed.done():
            self._socket_closed.set_result(None)
        if self._link_error is None:
            reason = f": {exc}" if exc else ""
            self._link_failed(ConnectionLost(f"connection to {self.params.display()} lost{reason}"))

    def _link_failed(self, exc: BaseException) -> None:
        """The current link ended: reconnect if that is wanted and worth it, else finish."""
        if self._link_error is not None:
            return
        recover = (
            self.reconnect
            and not self._closing
            and self._error is None
            and self._connected.is_set()
            and isinstance(exc, _RECOVERABLE)
        )
        self._teardown_link(exc, recovering=recover or self._reconnecting)
        # Each loss is logged here, once: during a reconnect attempt the attempt loop logs it.
        if recover:
            log.warning(
                "leveret [%s]: lost the connection to %s (%s); reconnecting",
                self.name,
                self.params.display(),
                exc,
            )
            self._connected.clear()
            self._reconnecting = True
            self._notify("disconnected", exc)
            self._reconnect_task = asyncio.ensure_future(self._reconnect(exc))
        elif self._closing:
            # The user asked for the close; how the last link ended does not matter.
            self._finish(ConnectionClosedByClient("the connection was closed by the client"))
        elif not self._reconnecting and self._connected.is_set():
            log.error(
                "leveret [%s]: lost the connection to %s for good: %s",
                self.name,
                self.params.display(),
                exc,
            )
            self._finish(exc)

    def _teardown_link(self, exc: BaseException, recovering: bool = False) -> None:
        """Close this link's socket and fail its channels; keep publishes when recovering."""
        if self._link_error is not None:
            return
        self._link_error = exc
        self._core.connection_lost()
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        transport = self._transport
        if transport is not None:
            self._transport = None
            if isinstance(exc, ProtocolError | HeartbeatTimeout) or transport.is_closing():
                transport.abort()
            else:
                transport.close()
        waiters, self._secret_waiters = self._secret_waiters, []
        for future in (self._opened, *waiters):
            if not future.done():
                future.set_exception(exc)
                future.exception()
        channels, self._channels = self._channels, {}
        self._idle_pool.clear()
        self._publish_channels.clear()
        self._consumers.clear()
        self._get_channel = None
        if recovering:
            for channel in channels.values():
                if channel.republish:
                    self._republish.extend(channel.take_unconfirmed())
            for channel in channels.values():
                consumer, channel.consumer = channel.consumer, None
                if consumer is not None:
                    consumer.link_lost()
        for channel in channels.values():
            channel.fail(exc)
        self._unblocked.set()
        self._resume_writing()

    def _finish(self, exc: BaseException) -> None:
        """The connection is over for good: fail everything that still waits."""
        if self._error is not None:
            return
        self._error = exc
        self._teardown_link(exc)
        task = self._reconnect_task
        if task is not None and task is not asyncio.current_task():
            task.cancel()
        self._reconnecting = False
        records, self._republish = self._republish, deque()
        for record in records:
            if not record.done():
                record.set_exception(exc)
        if records:
            self._records_settled(len(records))
        for consumer in list(self._active_consumers):
            consumer.channel_failed(exc)
        self._deadlines.cancel()
        publisher = self._publisher
        if publisher is not None and publisher._error is None:
            # The connection as a whole is over, for the same reason: publishes still
            # waiting on the publishing connection get this error too. (A user close
            # has already closed the publisher gracefully before getting here.)
            publisher._finish(exc)
        self._connected.set()  # wake every waiter: each then sees the error
        if not self._closed.done():
            self._closed.set_result(None)
        self._notify("closed", None if isinstance(exc, ConnectionClosedByClient) else exc)

    # -- reconnection -------------------------------------------------------------------------

    async def _reconnect(self, cause: BaseException) -> None:
        """Try the URLs in turn, with backoff between rounds, until a link is up and recovered."""
        last = cause
        started = self._loop.time()
        attempts = 0
        # Start with the URL after the one that failed: with a cluster, another node
        # is likelier to be up than the one that just went away.
        failed = self.params
        index = next((i for i, p in enumerate(self._candidates) if p is failed), -1)
        order = self._candidates[index + 1 :] + self._candidates[: index + 1]
        try:
            for delay in self.backoff.delays():
                await asyncio.sleep(delay)
                for params in order:
                    attempts += 1
                    try:
                        await self._open_link(params)
                        await self._recover()
                    except (LeveretError, OSError, TimeoutError) as exc:
                        last = exc
                        log.info(
                            "leveret [%s]: reconnect attempt %d to %s failed: %s",
                            self.name,
                            attempts,
                            params.display(),
                            exc,
                        )
                        self._teardown_link(exc)
                        continue
                    self._reconnecting = False
                    self._connected.set()
                    self._stats.reconnects += 1
                    log.warning(
                        "leveret [%s]: reconnected to %s after %.1fs (%d attempts)",
                        self.name,
                        params.display(),
                        self._loop.time() - started,
                        attempts,
                    )
                    self._notify("reconnected", None)
                    return
            self._reconnecting = False
            log.error(
                "leveret [%s]: gave up reconnecting after %d attempts; last error: %s",
                self.name,
                attempts,
                last,
            )
            self._finish(
                ConnectionLost(
                    f"gave up reconnecting after {attempts} attempts; last error: {last}"
                )
            )
        except asyncio.CancelledError:
            raise
        except BaseException as exc:  # a bug: never leave callers waiting on it
            log.exception("leveret [%s]: reconnection failed", self.name)
            self._reconnecting = False
            self._finish(exc)

    async def _recover(self) -> None:
        """Declare the recorded topology again, restart consumers, re-send unconfirmed publishes."""
        topology = self._topology
        for exchange in list(topology.exchanges.values()):
            await self._replay(
                f"exchange {exchange.name!r}",
                _command(
                    commands.Exchange.Declare,
                    exchange=exchange.name,
                    exchange_type=exchange.type,
                    durable=exchange.durable,
                    auto_delete=exchange.auto_delete,
                    internal=exchange.internal,
                    arguments=exchange.arguments,
                ),
            )
        renamed: dict[str, str] = {}
        for queue in list(topology.queues.values()):
            reply = await self._replay(
                f"queue {queue.name!r}",
                _command(
                    commands.Queue.Declare,
                    queue="" if queue.server_named else queue.name,
                    durable=queue.durable,
                    exclusive=queue.exclusive,
                    auto_delete=queue.auto_delete,
                    arguments=queue.arguments,
                ),
            )
            if reply is not None and queue.server_named and reply.queue != queue.name:
                renamed[queue.name] = reply.queue
                topology.rename_queue(queue.name, reply.queue)
        for binding in list(topology.bindings.values()):
            await self._replay(
                f"binding {binding.source!r} -> {binding.destination!r}",
                _binding_command(binding, True),
            )
        for consumer in list(self._active_consumers):
            if not consumer.active:
                continue
            consumer.queue = renamed.get(consumer.queue, consumer.queue)
            try:
                await self._start_consumer(consumer, recovering=True)
            except ChannelClosedByServer as exc:
                consumer_log.error(
                    "leveret [%s]: could not restart the consumer on %r: %s",
                    self.name,
                    consumer.queue,
                    exc,
                )
                consumer.channel_failed(exc)
        if self._recovery_gate is not None and self._republish:
            # A publisher connection re-sends only once the main connection has
            # declared the topology again, or the re-sent messages could hit a
            # missing exchange.
            async with asyncio.timeout(self.operation_timeout):
                await self._recovery_gate.wait()
        while self._republish:
            record = self._republish.popleft()
            if record.done():
                self._records_settled(1)  # its caller gave up: not sent again
                continue
            try:
                channel = await self._publish_channel(record.exchange)
            except ChannelClosedByServer as exc:
                record.set_exception(exc)
                self._records_settled(1)
                continue
            except BaseException:
                self._republish.appendleft(record)
                raise
            self._send(channel, record)
            self._deadlines.watch_anywhere(record)

    async def _replay(self, what: str, method: PamqpMethod) -> Any:
        """One recovery declaration; a broker refusal is reported and skipped, 405 retried."""
        deadline = self._loop.time() + max(self.operation_timeout, 1.0)
        delay = 0.1
        while True:
            try:
                return await self._rpc(method, recovering=True)
            except ResourceLocked as exc:
                # The broker has not yet noticed the old connection died and still
                # holds its exclusive queue: wait for its clean-up, then try again.
                if delay == 0.1:
                    log.info(
                        "leveret [%s]: %s is still locked by the old connection; retrying",
                        self.name,
                        what,
                    )
                if self._loop.time() + delay > deadline:
                    log.error("leveret [%s]: could not recover %s: %s", self.name, what, exc)
                    return None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
            except ChannelClosedByServer as exc:
                log.error("leveret [%s]: could not recover %s: %s", self.name, what, exc)
                return None

    def _notify(
        self,
        state: str,
        error: BaseException | None,
        reason: str | None = None,
        publisher: bool = False,
    ) -> None:
        named = f"publisher {state}" if publisher else state
        for listener in list(self._listeners):
            try:
                listener(named, error)
            except Exception:
                log.exception("leveret [%s]: a connection state listener raised", self.name)
        for stream in list(self._state_streams):
            stream.push(state, error, reason, publisher)
        if self._owner is not None:  # a publishing connection reports to its owner
            self._owner._notify(state, error, reason, publisher=True)

    def add_listener(self, listener: Callable[[str, BaseException | None], None]) -> None:
        """Call `listener(state, error)` on "disconnected", "reconnected", "blocked",
        "unblocked" and "closed" (prefixed "publisher " for the publishing connection)."""
        self._listeners.append(listener)

    def state_changes(self, maxsize: int = 256) -> StateChanges:
        """Changes of state from now on: `async for change in conn.state_changes():`.

        Yields `StateChange(state, error, reason, publisher, missed)` for each
        "disconnected", "reconnected", "blocked", "unblocked" and "closed" of
        this connection (and, with `publisher=True`, of its publishing
        connection, the one a memory alarm blocks); ends after "closed". At
        most `maxsize` changes wait to be read: a slow reader loses the oldest,
        and the next change it reads counts them in `missed`.
        """
        streams = self._state_streams
        stream = StateChanges(maxsize, lambda done: streams.pop(done, None))
        if self._error is not None:
            stream.close()  # nothing will change any more
        else:
            streams[stream] = None
        return stream

    def remove_listener(self, listener: Callable[[str, BaseException | None], None]) -> None:
        if listener in self._listeners:
            self._listeners.remove(listener)

    # -- heartbeats ------------------------------------------------------------------------

    def _arm_timer(self) -> None:
        deadline = self._core.next_deadline()
        if deadline is None:
            return
        when = max(deadline, self._loop.time())
        self._timer = self._loop.call_at(when, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self._link_error is not None:
            return
        for event in self._core.handle_timer(self._loop.time()):
            self._on_event(event)
        if self._link_error is None:
            self._flush_now()
            self._arm_timer()

    # -- state -------------------------------------------------------------------------------

    @property
    def is_closed(self) -> bool:
        """True once the connection is over for good (closed, or gave up reconnecting)."""
        return self._error is not None

    @property
    def is_connected(self) -> bool:
        """True while a link is up and recovered; False while reconnecting or closed."""
        return self._error is None and self._connected.is_set()

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Return once connected (at once if already); raises if the connection is over."""
        if timeout is None:
            await self._wait_connected(None)
        else:
            async with asyncio.timeout(timeout):
                await self._wait_connected(None)

    @property
    def is_blocked(self) -> bool:
        """True while the broker has blocked publishing (a memory or disk alarm)."""
        if self._publisher is not None:
            return self._publisher.is_blocked
        return not self._unblocked.is_set()

    @property
    def server_properties(self) -> dict[str, Any]:
        return self._core.server_properties

    @property
    def name(self) -> str:
        """The `name=` given to connect (shown by the broker), else host:port/vhost; logs use it."""
        return self.params.connection_name or self.params.display()

    def stats(self) -> ConnectionStats:
        """Counters of what this connection did so far (publishing connection included).

        Cheap: a handful of ints copied, whether or not OpenTelemetry is on.
        """
        publisher = self._publisher
        return snapshot(
            self._stats,
            publisher._stats if publisher is not None else None,
            self._in_flight + (publisher._in_flight if publisher is not None else 0),
        )

    @property
    def heartbeat(self) -> int:
        """The negotiated heartbeat interval in seconds (0: disabled)."""
        return self._core.heartbeat

    @property
    def frame_max(self) -> int:
        return self._core.frame_max

    @property
    def channel_max(self) -> int:
        """The negotiated highest channel number (the broker's and ours, the lower)."""
        return self._core.channel_max

    def _check_usable(self) -> None:
        if self._error is not None:
            raise self._error.with_traceback(None)
        if self._closing:
            raise ConnectionClosedByClient("the connection is closing")

    async def _wait_connected(self, limit: float | None = -1.0) -> None:
        """Wait while reconnecting (bounded by `operation_timeout` unless told otherwise)."""
        self._check_usable()
        if self._connected.is_set():
            return
        bound = self.operation_timeout if limit == -1.0 else limit
        try:
            async with asyncio.timeout(bound):
                await self._connected.wait()
        except TimeoutError:
            raise ConnectionLost(
                f"not reconnected to {self.params.display()} within {bound}s"
            ) from None
        self._check_usable()

    async def wait_closed(self) -> BaseException | None:
        """Wait until the connection ends; returns why (None after a clean user close)."""
        await asyncio.shield(self._closed)
        return None if isinstance(self._error, ConnectionClosedByClient) else self._error

    # -- channels --------------------------------------------------------------------------------

    async def _open_channel(self, recovering: bool = False) -> ChannelHandle:
        if not recovering:
            await self._wait_connected()
        elif self._link_error is not None:
            raise self._link_error.with_traceback(None)
        channel_id = self._core.open_channel()
        channel = ChannelHandle(channel_id, self._loop.create_future(), self._stats)
        self._channels[channel_id] = channel
        self._schedule_flush()
        await channel.opened
        return channel

    async def _channel_call(self, channel: ChannelHandle, method: PamqpMethod) -> Any:
        if channel.closed is not None:
            raise channel.closed.with_traceback(None)
        self._check_usable()
        future: asyncio.Future[Any] = self._loop.create_future()
        channel.waiters.append(future)
        self._core.call(channel.id, method)
        self._schedule_flush()
        return await future

    async def _rpc(self, method: PamqpMethod, recovering: bool = False) -> Any:
        """One synchronous method on a pool channel; its error fails this call only."""
        if not recovering:
            await self._wait_connected()
        pool = self._idle_pool
        channel = pool.pop() if pool else await self._open_channel(recovering)
        future: asyncio.Future[Any] = self._loop.create_future()
        channel.waiters.append(future)
        self._core.call(channel.id, method)
        self._schedule_flush()
        try:
            return await asyncio.shield(future)
        finally:
            if future.done():
                self._return_to_pool(channel)
            else:
                # Cancelled while the broker works on it: the channel rejoins the
                # pool once its reply has arrived, so replies never get mixed up.
                future.add_done_callback(lambda f: self._late_reply(f, channel))

    def _late_reply(self, future: asyncio.Future[Any], channel: ChannelHandle) -> None:
        if not future.cancelled():
            future.exception()  # nobody awaits it any more: mark it retrieved
        self._return_to_pool(channel)

    def _return_to_pool(self, channel: ChannelHandle) -> None:
        if channel.closed is not None or channel.waiters:
            return
        if len(self._idle_pool) < _POOL_LIMIT:
            self._idle_pool.append(channel)
        else:
            self._core.close_channel(channel.id)
            self._schedule_flush()

    async def _close_channel(self, channel: ChannelHandle) -> None:
        """Close a channel and wait (bounded) for its close-ok, so its consumer has really stopped."""
        if channel.closed is not None or self._link_error is not None:
            return
        self._core.close_channel(channel.id)
        self._schedule_flush()
        try:
            await asyncio.wait_for(asyncio.shield(channel.gone), self.close_timeout)
        except TimeoutError:
            log.warning(
                "leveret [%s]: no channel.close-ok within %ss", self.name, self.close_timeout
            )

    # -- topology ---------------------------------------------------------------------------------

    async def declare_queue(
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
        _check_name(name, "queue name")
        _check_table(arguments, "arguments")
        if durable is None:
            durable = type in ("quorum", "stream")
        arguments = queue_arguments(
            arguments,
            queue_type=type,
            durable=durable,
            exclusive=exclusive,
            auto_delete=auto_delete,
            dead_letter_exchange=dead_letter_exchange,
            dead_letter_routing_key=dead_letter_routing_key,
            message_ttl=message_ttl,
            expires=expires,
            max_length=max_length,
            max_length_bytes=max_length_bytes,
            overflow=overflow,
            delivery_limit=delivery_limit,
            max_priority=max_priority,
        )
        reply = await self._rpc(
            _command(
                commands.Queue.Declare,
                queue=name,
                passive=passive,
                durable=durable,
                exclusive=exclusive,
                auto_delete=auto_delete,
                arguments=arguments,
            )
        )
        if not passive:
            self._topology.record_queue(
                QueueRecord(reply.queue, not name, durable, exclusive, auto_delete, arguments)
            )
        return QueueInfo(reply.queue, reply.message_count, reply.consumer_count)

    async def delete_queue(
        self, name: str, *, if_unused: bool = False, if_empty: bool = False
    ) -> int:
        """Delete a queue; returns how many messages it held."""
        _check_name(name, "queue name")
        reply = await self._rpc(
            _command(commands.Queue.Delete, queue=name, if_unused=if_unused, if_empty=if_empty)
        )
        self._topology.forget_queue(name)
        return int(reply.message_count)

    async def purge_queue(self, name: str) -> int:
        """Remove every ready message from a queue; returns how many."""
        _check_name(name, "queue name")
        reply = await self._rpc(_command(commands.Queue.Purge, queue=name))
        return int(reply.message_count)

    async def bind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Route messages from `exchange` to `queue` (recorded, so recovery binds it again)."""
        await self._change_binding(
            True, QueueBindingRecord(queue, exchange, routing_key, arguments)
        )

    async def unbind_queue(
        self,
        queue: str,
        exchange: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._change_binding(
            False, QueueBindingRecord(queue, exchange, routing_key, arguments)
        )

    async def declare_exchange(
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
        _check_name(name, "exchange name")
        _check_exchange_type(type)
        _check_table(arguments, "arguments")
        await self._rpc(
            _command(
                commands.Exchange.Declare,
                exchange=name,
                exchange_type=type,
                passive=passive,
                durable=durable,
                auto_delete=auto_delete,
                internal=internal,
                arguments=arguments,
            )
        )
        if not passive:
            self._topology.record_exchange(
                ExchangeRecord(name, type, durable, auto_delete, internal, arguments)
            )

    async def delete_exchange(self, name: str, *, if_unused: bool = False) -> None:
        _check_name(name, "exchange name")
        await self._rpc(_command(commands.Exchange.Delete, exchange=name, if_unused=if_unused))
        self._topology.forget_exchange(name)

    async def bind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        """Route messages from exchange `source` to exchange `destination` (a RabbitMQ extension)."""
        await self._change_binding(
            True, QueueBindingRecord(destination, source, routing_key, arguments, to_exchange=True)
        )

    async def unbind_exchange(
        self,
        destination: str,
        source: str,
        routing_key: str = "",
        arguments: dict[str, Any] | None = None,
    ) -> None:
        await self._change_binding(
            False, QueueBindingRecord(destination, source, routing_key, arguments, to_exchange=True)
        )

    async def _change_binding(self, bind: bool, binding: QueueBindingRecord) -> None:
        _check_name(binding.destination, "exchange name" if binding.to_exchange else "queue name")
        _check_name(binding.source, "exchange name")
        _check_name(binding.routing_key, "routing key")
        _check_table(binding.arguments, "arguments")
        await self._rpc(_binding_command(binding, bind))
        if bind:
            self._topology.record_binding(binding)
        else:
            self._topology.forget_binding(
                binding.destination,
                binding.source,
                binding.routing_key,
                binding.arguments,
                binding.to_exchange,
            )

    # -- publishing ---------------------------------------------------------------------------------

    def _encoded_name(self, value: str, what: str) -> bytes:
        cache = self._name_cache
        encoded = cache.get(value)
        if encoded is None:
            encoded = encode_shortstr(value, what)
            if len(cache) >= _NAME_CACHE_LIMIT:
                cache.clear()
            cache[value] = encoded
        return encoded

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
    ) -> PublishFuture:
        """Publish, and return the future of the broker's confirm: `await conn.publish(...)`.

        The message is sent when `publish()` is called (or, while it has to
        wait for a reconnect, a blocked broker or a full window of
        `max_in_flight` unconfirmed publishes, as soon as it can), so many
        publishes need no task each: start them, then await or gather their
        futures. `asyncio.create_task(conn.publish(...))` works too.

        `routing_key` and `exchange` are keyword-only: pika's argument order
        (exchange first) would otherwise publish to the wrong place silently.

        The future raises PublishNacked when the broker refuses the message,
        MessageReturned when `mandatory` and no queue took it, MessageTooLarge
        (nothing sent) for a body over `max_message_size`, TypeError or
        ValueError (nothing sent) for a body or option it cannot send, the
        channel error (e.g. NotFound for a missing exchange) or the
        connection error. If the connection drops before the confirm, the
        message is sent again on the next connection (so it may arrive twice,
        flagged by nothing: make consumers idempotent). `timeout` (default:
        the connection's `publish_timeout`) bounds the whole wait,
        reconnection included, and raises PublishTimeout; the message may
        still arrive after it fired.

        `body` may be bytes, a str (sent as UTF-8, content type text/plain)
        or a JSON-able object: dict, list, number, dataclass or pydantic model
        (sent as JSON, content type application/json). A content type in
        `properties` wins. Unless the connection was opened with
        `stamp_messages=False`, a message without `message_id` and `timestamp`
        gets a unique id and the current time.
        """
        try:
            names = self._name_cache
            exchange_bytes = names.get(exchange) or self._encoded_name(exchange, "exchange name")
            routing_key_bytes = names.get(routing_key) or self._encoded_name(
                routing_key, "routing key"
            )
            traced = None
            if self._telemetry is not None:
                body, properties, traced = self._traced_message(
                    exchange, routing_key, body, properties
                )
            if (
                properties is None
                and type(body) is bytes
                and self.stamp_messages
                and len(body) <= self.max_message_size
            ):
                # `_message_bytes` for the most common publish, without two calls.
                properties_bytes = stamp(_STAMP_PERSISTENT if persistent else _STAMP_PLAIN)
            else:
                body, properties_bytes = self._message_bytes(body, properties, persistent)
            if timeout is None:
                timeout = self.publish_timeout
            elif not timeout > 0:
                raise ValueError(f"timeout must be positive seconds, got {timeout!r}")
            if self._error is not None or self._closing:
                self._check_usable()
            # Telemetry's span wraps the whole publish, so it takes the slow path; so does
            # every publish while an earlier one waits there, to keep them in order.
            if traced is None and not self._waiting_sends:
                target = self._publisher if self._separate_publisher else self
                if target is not None:
                    future = target._send_at_once(
                        exchange,
                        exchange_bytes,
                        routing_key,
                        routing_key_bytes,
                        body,
                        properties_bytes,
                        mandatory,
                        timeout,
                    )
                    if future is not None:
                        return future
        except Exception as exc:  # noqa: BLE001 - raised where the caller awaits
            failed = PublishFuture(loop=self._loop)
            failed.set_exception(exc)
            return failed
        record = new_outgoing(
            self._loop,
            exchange,
            exchange_bytes,
            routing_key,
            routing_key_bytes,
            body,
            properties_bytes,
            mandatory,
        )
        self._send_queue.add(record, timeout, traced)
        return record

    def _end_traced(self, traced: PublishOp | None, future: asyncio.Future[None]) -> None:
        if traced is None or self._telemetry is None:
            return
        error = future.exception() if not future.cancelled() else asyncio.CancelledError()
        self._telemetry.end_publish(traced, error)

    def _traced_message(
        self, exchange: str, routing_key: str, body: Body, properties: Properties | None
    ) -> tuple[Body, Properties | None, PublishOp | None]:
        """Telemetry on: a PRODUCER span, and properties carrying its trace context."""
        if properties is not None and not isinstance(properties, Properties):
            return body, properties, None  # _message_bytes raises the TypeError
        content_type = None
        if type(body) is not bytes:
            body, content_type = encode_body(body)
        assert self._telemetry is not None
        properties, traced = self._telemetry.start_publish(
            exchange, routing_key, properties, self._filled_in(properties, content_type), len(body)
        )
        return body, properties, traced

    def _message_bytes(
        self, body: Body, properties: Properties | None, persistent: bool
    ) -> tuple[bytes, bytes]:
        """The body and property block a publish sends, leveret's stamps included."""
        content_type = None
        if type(body) is not bytes:
            body, content_type = encode_body(body)
        if len(body) > self.max_message_size:
            raise MessageTooLarge(len(body), self.max_message_size)
        if properties is None:
            if self.stamp_messages:
                return body, stamp(_stamp_prefix(content_type, persistent))
            if content_type is not None:
                return body, encode_properties(Properties(content_type=content_type), persistent)
            return body, PERSISTENT_PROPERTIES_BYTES if persistent else EMPTY_PROPERTIES_BYTES
        if isinstance(properties, Properties):
            changes = self._filled_in(properties, content_type)
            if changes:
                properties = properties.replace(**changes)
            return body, encode_properties(properties, persistent)
        raise TypeError(f"properties must be leveret.Properties, got {type(properties).__name__}")

    def _send_at_once(
        self,
        exchange: str,
        exchange_bytes: bytes,
        routing_key: str,
        routing_key_bytes: bytes,
        body: bytes,
        properties_bytes: bytes,
        mandatory: bool,
        timeout: float | None,
    ) -> PublishFuture | None:
        """The fast path: send now if nothing needs waiting for, and return the confirm's future.

        None when there is no publish channel yet, the link is down or paused, the
        broker blocks publishing or the window is full: the send queue then.
        The publish counts as in flight until the broker answers it or its channel fails.
        """
        channel = self._channel_to_send_now(exchange)
        if channel is None:
            return None
        # `new_outgoing`, `_send` and `_sent`, inlined: this runs for every message.
        seq = self._core.publish(
            channel.id, exchange_bytes, routing_key_bytes, body, properties_bytes, mandatory
        )
        record = Outgoing(loop=self._loop)
        record.exchange = exchange
        record.exchange_bytes = exchange_bytes
        record.routing_key = routing_key
        record.routing_key_bytes = routing_key_bytes
        record.body = body
        record.properties = properties_bytes
        record.mandatory = mandatory
        channel.confirms[seq] = record
        channel.confirm_high = seq
        if timeout is None:
            record.deadline = math.inf
        else:
            self._deadlines.watch(record, self._loop.time() + timeout)
        self._in_flight += 1
        self._stats.published += 1
        if self._flush_scheduled:
            self._pending_writes += 1
        else:
            self._schedule_flush()
        return record

    def _channel_to_send_now(self, exchange: str) -> ChannelHandle | None:
        """The publish channel for `exchange` if a publish may go out right now, else None."""
        channel = self._publish_channels.get(exchange)
        if (
            channel is None
            or self._link_error is not None
            or self._write_paused
            or self._closing
            or self._in_flight >= self.max_in_flight
            or not self._unblocked.is_set()
        ):
            return None
        return channel

    def _sent(self, record: Outgoing, deadline: float | None) -> None:
        if deadline is not None:
            self._deadlines.watch(record, deadline)
        self._in_flight += 1
        self._stats.published += 1

    def _records_settled(self, count: int) -> None:
        """`count` sent publishes left the books: their slots in the window are free.

        Counted per record, not per caller: a publish whose caller stopped waiting
        (cancelled, timed out) still holds its slot, and its memory, until answered.
        """
        self._in_flight -= count
        if self._window_waiters:
            self._wake_window_waiter()

    def _filled_in(
        self, properties: Properties | None, content_type: str | None
    ) -> dict[str, object]:
        """What leveret adds to the user's properties: never overriding a value given."""
        changes: dict[str, object] = {}
        if content_type is not None and (properties is None or properties.content_type is None):
            changes["content_type"] = content_type
        if self.stamp_messages:
            if properties is None or properties.message_id is None:
                changes["message_id"] = new_message_id()
            if properties is None or properties.timestamp is None:
                changes["timestamp"] = datetime.datetime.now(datetime.UTC)
        return changes

    def _wake_window_waiter(self) -> None:
        while self._window_waiters and self._in_flight < self.max_in_flight:
            waiter = self._window_waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return

    async def _wait_for_window(self) -> None:
        """Hold a publish while `max_in_flight` others await their confirms: memory stays bounded."""
        while self._in_flight >= self.max_in_flight:
            waiter: asyncio.Future[None] = self._loop.create_future()
            self._window_waiters.append(waiter)
            try:
                await waiter
            except BaseException:
                if waiter.done() and not waiter.cancelled():
                    self._wake_window_waiter()  # pass the slot on
                raise

    async def _open_publisher(self) -> Connection:
        """The publishing connection: same URLs and options, opened once, on first use."""
        self._check_usable()
        if self._publisher_opening is None or (
            self._publisher_opening.done() and self._publisher_opening.exception() is not None
        ):
            self._publisher_opening = asyncio.ensure_future(self._connect_publisher())
        return await asyncio.shield(self._publisher_opening)

    async def _connect_publisher(self) -> Connection:
        # The URL that works for the main connection right now goes first.
        ordered = [self.params, *(p for p in self._candidates if p is not self.params)]
        candidates = [
            params.with_options(
                connection_name=f"{params.connection_name or 'leveret'} (publisher)"
            )
            for params in ordered
        ]
        publisher = Connection(
            candidates,
            close_timeout=self.close_timeout,
            drain_timeout=self.drain_timeout,
            reconnect=self.reconnect,
            backoff=self.backoff,
            publish_timeout=self.publish_timeout,
            operation_timeout=self.operation_timeout,
            separate_publisher=False,
            max_in_flight=self.max_in_flight,
            stamp_messages=self.stamp_messages,
            telemetry=self._telemetry,
            max_message_size=self.max_message_size,
        )
        publisher._recovery_gate = self._connected
        publisher._owner = self
        await publisher._connect_first()
        if self._error is not None or self._closing:
            await publisher.close()
            self._check_usable()
        self._publisher = publisher
        return publisher

    def _waiting_for(self) -> str:
        if not self._connected.is_set():
            return "reconnecting"
        if not self._unblocked.is_set():
            return "the broker blocked publishing (a resource alarm)"
        return "waiting for the socket to drain"

    async def _wait_until_sendable(self, exchange: str) -> ChannelHandle:
        """Wait for a link, a publish channel, an unblocked broker, a drained socket, a slot.

        Returns the channel to send on at once (no await between this and the send).
        """
        while True:
            if self._in_flight >= self.max_in_flight:
                await self._wait_for_window()
            if not self._connected.is_set() or self._error is not None or self._closing:
                await self._wait_connected(None)
            link = self._link_id
            try:
                channel = self._publish_channels.get(exchange)
                if channel is None:
                    channel = await self._publish_channel(exchange)
            except ConnectionClosed:
                if self._error is not None or not (self._reconnecting or self._link_id != link):
                    raise
                continue  # the link dropped while opening the channel: wait for the next
            if self._write_paused:
                await self._wait_writable()
            if not self._unblocked.is_set():
                await self._unblocked.wait()
            if (
                channel.closed is None
                and self._link_error is None
                and self._in_flight < self.max_in_flight
            ):
                return channel

    def _send(self, channel: ChannelHandle, record: Outgoing) -> None:
        seq = self._core.publish(
            channel.id,
            record.exchange_bytes,
            record.routing_key_bytes,
            record.body,
            record.properties,
            record.mandatory,
        )
        channel.confirms[seq] = record
        channel.confirm_high = seq
        self._schedule_flush()

    def _expire_publish(self, record: Outgoing) -> None:
        if self._send_queue.expire(record):
            return  # it was still waiting to be sent
        record.set_exception(
            PublishTimeout(
                f"no confirm for the publish to exchange {record.exchange!r} with routing "
                f"key {record.routing_key!r} before its deadline ({self._waiting_for()}); "
                "the message may still arrive"
            )
        )

    async def _publish_channel(self, exchange: str) -> ChannelHandle:
        """The link's confirm-mode channel for `exchange`, opened (once) if there is none.

        Recovery re-sends each kept publish through here: opening a channel per call
        would give every re-sent message a channel of its own.
        """
        channel = self._publish_channels.get(exchange)
        if channel is not None and channel.closed is None:
            return channel
        opening = self._publish_channel_opening
        task = opening.get(exchange)
        if task is None:
            task = asyncio.ensure_future(self._open_publish_channel(exchange))
            opening[exchange] = task

            def forget(done: asyncio.Task[ChannelHandle]) -> None:
                # Forget the task in the table of the link it was made for, never in a newer one.
                if opening.get(exchange) is done:
                    opening.pop(exchange)
                if not done.cancelled():
                    done.exception()  # retrieved: every publish awaiting it may have been cancelled

            task.add_done_callback(forget)
        return await asyncio.shield(task)

    async def _open_publish_channel(self, exchange: str) -> ChannelHandle:
        link = self._link_id
        channel = await self._open_channel(recovering=True)
        channel.republish = True
        channel.on_settled = self._records_settled
        await self._channel_call(channel, commands.Confirm.Select())
        if self._link_id != link or channel.closed is not None:
            raise (channel.closed or ConnectionLost("the connection dropped")).with_traceback(None)
        self._publish_channels[exchange] = channel
        return channel

    # -- consuming ------------------------------------------------------------------------------------

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
        """Consume `queue`: use as `async with conn.consume(q) as messages: async for m in messages`.

        `prefetch` bounds unacked messages in flight (and so the buffer);
        0 means unlimited, which the broker allows but leveret discourages.
        For a stream, `offset` says where to start reading: "first", "last",
        "next", an offset number, a datetime, or an interval such as "10m";
        after a reconnect the consumer resumes after the last message it
        handed out. Stream messages still need `ack()` (it grants credit).
        """
        _check_name(queue, "queue name")
        if (
            not isinstance(prefetch, int)
            or isinstance(prefetch, bool)
            or not 0 <= prefetch <= 65535
        ):
            raise ValueError(f"prefetch must be an int from 0 to 65535, got {prefetch!r}")
        _check_table(arguments, "arguments")
        if offset is not None:
            arguments = stream_arguments(arguments, offset, prefetch=prefetch, no_ack=no_ack)
        if consumer_tag is None:
            consumer_tag = f"leveret.{os.getpid()}.{next(_consumer_numbers)}"
        else:
            _check_name(consumer_tag, "consumer tag")
        return Consumer(
            self,
            queue,
            prefetch=prefetch,
            no_ack=no_ack,
            exclusive=exclusive,
            arguments=arguments,
            consumer_tag=consumer_tag,
        )

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
        """Run `handler(msg)` for each message of `queue`: `async with conn.subscribe(q, h):`.

        Up to `concurrency` handlers run at once (`prefetch` defaults to the
        same). A handler that returns acks its message; one that raises is
        dealt with by `on_error` ("requeue_once", "reject" or "requeue", see
        `Subscription`) or, with `retry=leveret.Retry(delays=(1, 10, 60))`,
        retried after each delay and then parked in `<queue>.parked`.
        """
        check_handler(handler)
        check_subscription_options(concurrency, on_error, retry)
        consumer = self.consume(
            queue,
            prefetch=concurrency if prefetch is None else prefetch,
            exclusive=exclusive,
            arguments=arguments,
            offset=offset,
        )
        return Subscription(
            self, consumer, handler, concurrency=concurrency, on_error=on_error, retry=retry
        )

    async def declare_bound_queue(
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
        if isinstance(routing_keys, str):
            raise TypeError(
                f"routing_keys must be a list of keys, got the str {routing_keys!r} "
                f"(write routing_keys=[{routing_keys!r}])"
            )
        if match is not None and type != "headers":
            raise ValueError(f"match= is for headers exchanges, not {type!r}")
        if type == "headers" and match is None:
            raise ValueError("a headers exchange binding needs match={header: value, ...}")
        if type == "fanout" and routing_keys:
            raise ValueError(f"a fanout exchange ignores routing keys, got {list(routing_keys)!r}")
        await self.declare_exchange(exchange, type, durable=durable_exchange)
        if queue:
            info = await self.declare_queue(queue, durable=True if durable is None else durable)
        else:
            info = await self.declare_queue("", exclusive=True, durable=bool(durable))
        if match is not None:
            arguments = {"x-match": "all" if match_all else "any", **match}
            await self.bind_queue(info.name, exchange, arguments=arguments)
        else:
            for routing_key in routing_keys or [""]:
                await self.bind_queue(info.name, exchange, routing_key)
        return info

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
        """Messages published to `exchange` from now on: `async with conn.listen(...) as messages:`.

        Declares the exchange and a private (server-named, exclusive) queue
        bound as `declare_bound_queue` does; the queue is deleted on leaving.
        """
        return Listening(
            self,
            exchange,
            type,
            routing_keys=routing_keys,
            match=match,
            match_all=match_all,
            prefetch=prefetch,
            durable_exchange=durable_exchange,
        )

    async def _start_consumer(self, consumer: Consumer, recovering: bool = False) -> None:
        channel = await self._open_channel(recovering)
        try:
            if not consumer.no_ack:
                await self._channel_call(
                    channel, commands.Basic.Qos(prefetch_count=consumer.prefetch)
                )
            consumer._attach(channel)
            self._consumers[(channel.id, consumer.consumer_tag)] = consumer
            await self._channel_call(
                channel,
                _command(
                    commands.Basic.Consume,
                    queue=consumer.queue,
                    consumer_tag=consumer.consumer_tag,
                    no_ack=consumer.no_ack,
                    exclusive=consumer.exclusive,
                    arguments=consumer.consume_arguments(),
                ),
            )
        except BaseException:
            self._consumers.pop((channel.id, consumer.consumer_tag), None)
            if channel.closed is None and self._link_error is None:
                self._core.close_channel(channel.id)
                self._schedule_flush()
            raise

    def _remember_consumer(self, consumer: Consumer) -> None:
        self._active_consumers[consumer] = None

    def _forget_consumer(self, consumer: Consumer) -> None:
        self._active_consumers.pop(consumer, None)

    async def get(self, queue: str, *, no_ack: bool = False) -> Message | None:
        """basic.get: one message from `queue`, or None when it is empty.

        Gets use a channel of their own, so that a failing declare elsewhere
        cannot make a fetched but unacked message stale.
        """
        _check_name(queue, "queue name")
        await self._wait_connected()
        channel = self._get_channel
        if channel is None or channel.closed is not None:
            channel = self._get_channel = await self._open_channel()
        try:
            reply = await self._channel_call(
                channel, _command(commands.Basic.Get, queue=queue, no_ack=no_ack)
            )
        except asyncio.CancelledError:
            # The reply may still come and would hold a message unacked: drop the channel.
            self._get_channel = None
            if channel.closed is None and self._link_error is None:
                self._core.close_channel(channel.id)
                self._schedule_flush()
            raise
        if isinstance(reply, Delivery):
            return Message(reply, channel, self._core, self._flush, no_ack)
        return None

    # -- RPC ------------------------------------------------------------------------------------------

    async def call(
        self,
        routing_key: str,
        body: Body = b"",
        *,
        exchange: str = "",
        timeout: float = 30.0,
        properties: Properties | None = None,
        expire_unanswered: bool = True,
    ) -> Message:
        """Send a request and wait for its reply; returns the reply message.

        Replies come to a reply queue exclusive to the connection, or over
        direct reply-to (see `connect(rpc_replies=)`). Raises RPCTimeout
        after `timeout` seconds, RemoteError when the server's handler
        raised, MessageReturned when no queue takes the request. With
        `expire_unanswered`, the request carries `timeout` as its expiration,
        so nobody works on it after the caller gave up. `body` takes what
        `publish` takes; decode the reply with `reply.json()` etc.
        """
        if properties is not None and not isinstance(properties, Properties):
            raise TypeError(
                f"properties must be leveret.Properties, got {type(properties).__name__}"
            )
        content_type = None
        if type(body) is not bytes:
            body, content_type = encode_body(body)
        if self._rpc_client is None:
            self._rpc_client = RpcClient(self, self.rpc_replies)
        if self._telemetry is not None:  # a CLIENT span; its context goes in a copy of properties
            return await self._telemetry.call(
                self._rpc_client.call,
                routing_key,
                body,
                exchange=exchange,
                timeout=timeout,
                properties=properties,
                expiration=expire_unanswered,
                content_type=content_type,
            )
        return await self._rpc_client.call(
            routing_key,
            body,
            exchange=exchange,
            timeout=timeout,
            properties=properties,
            expiration=expire_unanswered,
            content_type=content_type,
        )

    def serve(
        self,
        queue: str,
        handler: Handler,
        *,
        concurrency: int = 10,
        include_traceback: bool = False,
        no_ack: bool = False,
    ) -> RpcServer:
        """Answer requests on `queue` with `handler(msg) -> reply`: `async with conn.serve(q, h):`.

        The reply may be bytes, str or a JSON-able object (see `publish`).
        A handler's exception becomes `RemoteError` at the caller, with the
        type name and message; the traceback only with `include_traceback`.
        Each request is acked once its reply is sent, so a server that dies
        mid-request has it redelivered to another. `no_ack=True` trades that
        for speed: no acks (about 50 us less per call on RabbitMQ 3.10), a
        request in a dying server is lost (its caller gets RPCTimeout), and
        the broker hands the server every request at once instead of
        `concurrency` at a time.
        """
        _check_name(queue, "queue name")
        if not isinstance(no_ack, bool):
            raise TypeError(f"no_ack must be True or False, got {no_ack!r}")
        return RpcServer(
            self,
            queue,
            handler,
            concurrency=concurrency,
            include_traceback=include_traceback,
            no_ack=no_ack,
        )

    # -- misc --------------------------------------------------------------------------------------------

    async def update_secret(self, new_secret: str, reason: str = "token refresh") -> None:
        """Hand the broker a new password or OAuth 2 token (connection.update-secret).

        Returns once the broker answered update-secret-ok. A secret the
        broker's auth backend refuses closes the connection, which raises here.
        """
        if not isinstance(new_secret, str):
            raise TypeError(f"new_secret must be a str, got {type(new_secret).__name__}")
        await self._wait_connected()
        waiter: asyncio.Future[None] = self._loop.create_future()
        self._secret_waiters.append(waiter)
        self._core.update_secret(new_secret, reason)
        self._schedule_flush()
        await waiter

    async def close(self) -> None:
        """Close gracefully: stop subscriptions and let their running handlers finish, wait
        for pending confirms (both within `drain_timeout`), then connection.close.

        Idempotent, and never followed by a reconnect. The close handshake is
        bounded by `close_timeout`: if the broker does not answer (e.g. it is
        blocked), the socket is aborted. Publishes still waiting to be re-sent
        after a lost connection fail with ConnectionClosedByClient.
        """
        if self._error is not None or self._closing or self._draining:
            await asyncio.shield(self._closed)
            return
        if self._subscriptions:
            # Handlers may still publish and ack while they finish: not closing yet.
            self._draining = True
            try:
                await drain_subscriptions(self._subscriptions, self.drain_timeout)
            except BaseException:
                self._draining = False  # cancelled: a later close() starts over
                raise
        self._closing = True
        task = self._reconnect_task
        if task is not None and not task.done():
            task.cancel()
        opening = self._publisher_opening
        if opening is not None and not opening.done():
            try:
                await opening
            except (LeveretError, OSError):
                pass
        if self._publisher is not None:
            await self._publisher.close()
        closed_by_client = ConnectionClosedByClient(close_reason(self))
        transport = self._transport
        if transport is not None and not self._unblocked.is_set():
            # A blocked connection is not read by the broker: no confirm and no close-ok
            # can come, so waiting for them would only make close() slow.
            transport.abort()
        elif self._connected.is_set() and self._link_error is None:
            pending = [
                record
                for channel in self._publish_channels.values()
                for record in channel.confirms.values()
            ]
            await wait_settled(pending, self.drain_timeout)
            try:
                async with asyncio.timeout(self.close_timeout):
                    if self._link_error is None:
                        self._core.close(200, "Normal shutdown")
                        self._flush_now()
                        await asyncio.shield(self._closed)
            except TimeoutError:
                log.warning(
                    "leveret [%s]: no close-ok within %ss; aborting the socket",
                    self.name,
                    self.close_timeout,
                )
        self._finish(closed_by_client)
        if transport is not None:
            # With TLS, transport.close() starts a shutdown handshake: wait for the socket
            # to really close, or a loop that ends right after close() leaks it.
            try:
                async with asyncio.timeout(self.close_timeout):
                    await asyncio.shield(self._socket_closed)
            except TimeoutError:
                transport.abort()

    async def __aenter__(self) -> Connection:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = (
            "closed"
            if self._error is not None
            else "open"
            if self._connected.is_set()
            else "reconnecting"
        )
        return f"<leveret.Connection {self.params.display()} {state}>"


def _check_name(value: str, what: str) -> None:
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    if len(value) > 63 and len(value.encode()) > 255:  # UTF-8: up to 4 bytes a character
        raise ValueError(
            f"{what} is {len(value.encode())} bytes encoded, over the AMQP limit of 255: {value!r:.300}"
        )


_BUILTIN_EXCHANGE_TYPES = frozenset({"direct", "fanout", "topic", "headers"})


def _check_exchange_type(value: str) -> None:
    # RabbitMQ answers an unknown type with a connection error (503), which
    # would take every other operation down with it: refuse it here instead.
    _check_name(value, "exchange type")
    if value not in _BUILTIN_EXCHANGE_TYPES and not value.startswith("x-"):
        raise ValueError(
            f"unknown exchange type {value!r}: use direct, fanout, topic, headers "
            "or a plugin's x- type (e.g. x-delayed-message)"
        )


def _command(cls: type[_M], **fields: Any) -> _M:
    """Build a pamqp command without its name check, which is narrower than RabbitMQ's.

    pamqp allows only `^[a-zA-Z0-9-_.:@#,/+ ]*$` in queue and exchange names;
    RabbitMQ takes any UTF-8 up to 255 bytes, which `_check_name` enforces.
    """
    method = cls()
    for name, value in fields.items():
        setattr(method, name, value)
    return method


def _binding_command(binding: QueueBindingRecord, bind: bool) -> PamqpMethod:
    if binding.to_exchange:
        return _command(
            commands.Exchange.Bind if bind else commands.Exchange.Unbind,
            destination=binding.destination,
            source=binding.source,
            routing_key=binding.routing_key,
            arguments=binding.arguments,
        )
    return _command(
        commands.Queue.Bind if bind else commands.Queue.Unbind,
        queue=binding.destination,
        exchange=binding.source,
        routing_key=binding.routing_key,
        arguments=binding.arguments,
    )


def _check_table(table: dict[str, Any] | None, what: str) -> None:
    if table is not None:
        encode_table(table, what)  # raises naming the bad key and value
