"""AMQPConnection: the sans-IO AMQP 0-9-1 client state machine.

Theory of operation. Bytes from the socket go into `receive_data()`, which
returns the events they complete; everything the client must send (replies
the protocol requires, heartbeats, the user's commands) accumulates in an
output buffer drained by `data_to_send()`. Time is never read here: the
driver calls `handle_timer(now)` at `next_deadline()`.

Rule 1: every decision about what may happen in which state lives in this
module (connection states) and in `_Channel` (channel states). Drivers never
inspect frames.

Errors: calling a command in a state that does not allow it raises
`LocalProtocolError` and sends nothing. Bytes that break the protocol raise
`RemoteProtocolError` from `receive_data()` after queueing the connection.close
the spec asks for (ref: 4.2.3, 4.2.6); the driver flushes it and hangs up.
"""

from __future__ import annotations

import enum
import platform
import struct
from collections import deque
from typing import Any

from pamqp import commands
from pamqp.base import Frame as PamqpMethod

from leveret._version import __version__
from leveret.exceptions import LocalProtocolError, RemoteProtocolError
from leveret.protocol import _codec
from leveret.protocol._codec import (
    BASIC_ACK,
    BASIC_DELIVER,
    BASIC_GET_OK,
    BASIC_NACK,
    BASIC_RETURN,
    FRAME_BODY,
    FRAME_END,
    FRAME_HEADER,
    FRAME_HEADER_STRUCT,
    FRAME_HEARTBEAT,
    FRAME_METHOD,
)
from leveret.protocol._events import (
    ChannelClosed,
    ChannelFlowChanged,
    ChannelOpened,
    ConnectionBlocked,
    ConnectionClosed,
    ConnectionOpened,
    ConnectionUnblocked,
    ConsumerCancelled,
    Delivery,
    Event,
    HeartbeatTimedOut,
    MethodReceived,
    PublishConfirmed,
    Returned,
)

__all__ = ["AMQPConnection", "ChannelState", "ConnectionState", "Credentials"]

_HANDSHAKE_FRAME_MAX = 131072  # what we accept before tune; the spec minimum is 4096
_MAX_INBOUND_FRAME = 16 * 1024 * 1024  # beyond this, a frame length means framing is lost
_DEFAULT_MAX_BODY = 128 * 1024 * 1024
_CLIENT_CAPABILITIES = {
    "publisher_confirms": True,
    "exchange_exchange_bindings": True,
    "basic.nack": True,
    "consumer_cancel_notify": True,
    "connection.blocked": True,
    "authentication_failure_close": True,
    "per_consumer_qos": True,
}
_U64 = _codec.U64
_FRAME_SIZE = struct.Struct(">I")
_HEADER_FRAME = struct.Struct(">BHIHHQ")  # frame type, channel, size; class, weight, body size
_decode_str = _codec.decode_str


class ConnectionState(enum.Enum):
    INITIAL = "initial"  #: nothing sent yet
    AWAIT_START = "await-start"  #: protocol header sent
    AWAIT_TUNE = "await-tune"  #: start-ok sent
    AWAIT_OPEN_OK = "await-open-ok"  #: tune-ok and open sent
    OPEN = "open"
    CLOSING = "closing"  #: we sent connection.close, waiting for close-ok
    CLOSED = "closed"


class ChannelState(enum.Enum):
    OPENING = "opening"
    OPEN = "open"
    CLOSING = "closing"  #: we sent channel.close; everything but close/close-ok is dropped
    CLOSED = "closed"


# The per-frame and per-publish paths compare states with these names: a member looked
# up on its enum class goes through the enum's metaclass, some 50 ns a time.
_CONNECTION_AWAIT_START = ConnectionState.AWAIT_START
_CONNECTION_OPEN = ConnectionState.OPEN
_CONNECTION_CLOSED = ConnectionState.CLOSED
_CHANNEL_OPEN = ChannelState.OPEN
_CHANNEL_CLOSING = ChannelState.CLOSING


class Credentials:
    """A SASL mechanism and its response: PLAIN (user and password) or EXTERNAL (TLS cert)."""

    __slots__ = ("mechanism", "password", "username")

    def __init__(self, username: str = "guest", password: str = "guest", mechanism: str = "PLAIN"):
        if mechanism not in ("PLAIN", "EXTERNAL"):
            raise ValueError(f"unsupported SASL mechanism {mechanism!r}; use 'PLAIN' or 'EXTERNAL'")
        self.username = username
        self.password = password
        self.mechanism = mechanism

    def response(self) -> str:
        if self.mechanism == "EXTERNAL":
            return ""
        return f"\0{self.username}\0{self.password}"

    def __repr__(self) -> str:  # never show the password
        return f"Credentials(username={self.username!r}, mechanism={self.mechanism!r})"


class _Channel:
    """Per-channel state: lifecycle, outstanding sync requests, content assembly, confirms."""

    __slots__ = (
        "body_chunks",
        "body_remaining",
        "confirm_mode",
        "content",
        "flow_active",
        "id",
        "last_ack",
        "publish_seq",
        "replies",
        "server_closed",
        "settled_above",
        "settled_upto",
        "state",
    )

    def __init__(self, channel_id: int) -> None:
        self.id = channel_id
        self.state = ChannelState.OPENING
        self.replies: deque[frozenset[str]] = deque()
        self.confirm_mode = False
        self.publish_seq = 0
        self.flow_active = True
        self.server_closed = False
        # Content being assembled: the method event, then its header, then bodies.
        self.content: Delivery | Returned | None = None
        self.body_remaining = -1  # -1: waiting for the content header
        self.body_chunks: list[bytes] = []
        # Ack coalescing: every delivery tag up to `settled_upto` is settled; tags settled
        # above a gap wait in `settled_above` (None: gave up tracking, no more coalescing).
        self.settled_upto = 0
        self.settled_above: set[int] | None = set()
        self.last_ack: bytes | None = None  # the queued ack frame a next ack may extend


_SETTLED_ABOVE_LIMIT = 10_000


def _note_settled(channel: _Channel, tag: int, multiple: int | bool) -> None:
    """Track which delivery tags are settled, so that acks may coalesce without skipping one."""
    above = channel.settled_above
    if above is None:
        return
    if multiple:
        if tag > channel.settled_upto:
            channel.settled_upto = tag
            above.difference_update([t for t in above if t <= tag])
    elif tag == channel.settled_upto + 1:
        channel.settled_upto = tag
    elif tag > channel.settled_upto:
        above.add(tag)
        if len(above) > _SETTLED_ABOVE_LIMIT:
            # One message held forever while thousands after it are acked: stop tracking
            # (and coalescing) on this channel rather than grow without bound.
            channel.settled_above = None
            return
    while above and channel.settled_upto + 1 in above:
        channel.settled_upto += 1
        above.discard(channel.settled_upto)


class AMQPConnection:
    """One AMQP connection as a state machine; see the module docstring."""

    def __init__(
        self,
        *,
        credentials: Credentials | None = None,
        virtual_host: str = "/",
        heartbeat: int | None = None,
        frame_max: int = 131072,
        channel_max: int = 2047,
        connection_name: str | None = None,
        client_properties: dict[str, Any] | None = None,
        max_body_size: int = _DEFAULT_MAX_BODY,
    ) -> None:
        if heartbeat is not None and not 0 <= heartbeat <= 65535:
            raise ValueError(f"heartbeat must be 0..65535 seconds, got {heartbeat!r}")
        if not 4096 <= frame_max <= 2**32 - 1 and frame_max != 0:
            raise ValueError(
                f"frame_max must be 0 or at least 4096 (AMQP minimum), got {frame_max!r}"
            )
        if not 0 <= channel_max <= 65535:
            raise ValueError(f"channel_max must be 0..65535, got {channel_max!r}")
        self.credentials = credentials or Credentials()
        self.virtual_host = virtual_host
        self._wanted_heartbeat = heartbeat
        self._wanted_frame_max = frame_max
        self._wanted_channel_max = channel_max
        self._client_properties = self._build_client_properties(connection_name, client_properties)
        self.max_body_size = max_body_size

        self.state = ConnectionState.INITIAL
        self.server_properties: dict[str, Any] = {}
        self.channel_max = channel_max or 65535
        self.frame_max = _HANDSHAKE_FRAME_MAX
        self.heartbeat = 0
        self.max_body_frame = 4096 - _codec.FRAME_OVERHEAD
        self.blocked = False

        self._inbuf = bytearray()
        self._out: list[bytes] = []
        self._channels: dict[int, _Channel] = {}
        self._next_channel_hint = 1
        # Heartbeat bookkeeping: activity flags are cheap to set per read/write;
        # handle_timer() turns them into times.
        self._rx_activity = False
        self._tx_activity = False
        self._last_rx = 0.0
        self._last_tx = 0.0
        self._last_tick = 0.0
        self._timer_started = False

    # -- client properties ------------------------------------------------------

    @staticmethod
    def _build_client_properties(
        connection_name: str | None, extra: dict[str, Any] | None
    ) -> dict[str, Any]:
        props: dict[str, Any] = {
            "product": "leveret",
            "version": __version__,
            "platform": f"Python {platform.python_version()}",
            "information": "https://pypi.org/project/leveret/",
            "capabilities": dict(_CLIENT_CAPABILITIES),
        }
        if connection_name:
            props["connection_name"] = connection_name
        if extra:
            props.update(extra)
        return props

    # -- output -------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        """Everything queued for the socket since the last call."""
        if not self._out:
            return b""
        out = self._out
        self._out = []
        self._tx_activity = True
        return b"".join(out)

    def take_output(self) -> list[bytes]:
        """Like `data_to_send()` but as pieces, for `transport.writelines()`."""
        out = self._out
        if not out:
            return []  # never hand out the live buffer: later output would appear in it
        self._out = []
        self._tx_activity = True
        return out

    @property
    def has_output(self) -> bool:
        return bool(self._out)

    # -- handshake ------------------------------------------------------------------

    def initiate(self) -> None:
        """Queue the protocol header that starts the handshake (ref: 4.2.2)."""
        if self.state is not ConnectionState.INITIAL:
            raise LocalProtocolError(f"initiate() in state {self.state.value}")
        self._out.append(_codec.PROTOCOL_HEADER)
        self.state = ConnectionState.AWAIT_START

    def _on_start(self, method: commands.Connection.Start) -> None:
        if (method.version_major, method.version_minor) != (0, 9):
            raise RemoteProtocolError(
                f"broker speaks AMQP {method.version_major}-{method.version_minor}, not 0-9-1"
            )
        offered = _as_str(method.mechanisms).split()
        mechanism = self.credentials.mechanism
        if mechanism not in offered:
            raise RemoteProtocolError(
                f"broker does not offer SASL mechanism {mechanism} (it offers {', '.join(offered)})",
                530,
            )
        self.server_properties = dict(method.server_properties or {})
        self._send_method(
            0,
            commands.Connection.StartOk(
                client_properties=self._client_properties,
                mechanism=mechanism,
                response=self.credentials.response(),
                locale="en_US",
            ),
        )
        self.state = ConnectionState.AWAIT_TUNE

    def _on_tune(self, method: commands.Connection.Tune) -> None:
        # ref: 1.4.2.6: the lower non-zero value wins; zero means "no limit".
        self.channel_max = _negotiate(self._wanted_channel_max, method.channel_max) or 65535
        self.frame_max = _negotiate(self._wanted_frame_max, method.frame_max) or 2**32 - 1
        if self.frame_max < 4096:
            raise RemoteProtocolError(
                f"broker proposed frame_max {method.frame_max}, below the AMQP minimum of 4096", 530
            )
        self.heartbeat = _negotiate_heartbeat(self._wanted_heartbeat, method.heartbeat)
        self.max_body_frame = self.frame_max - _codec.FRAME_OVERHEAD
        self._send_method(
            0,
            commands.Connection.TuneOk(
                channel_max=self.channel_max, frame_max=self.frame_max, heartbeat=self.heartbeat
            ),
        )
        self._send_method(0, commands.Connection.Open(virtual_host=self.virtual_host))
        self.state = ConnectionState.AWAIT_OPEN_OK

    # -- input ------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[Event]:
        """Feed bytes from the socket; returns the events they complete.

        `b""` means EOF. Raises RemoteProtocolError for bytes that break the
        protocol (after queueing connection.close); any other exception is a bug.
        """
        events: list[Event] = []
        if not data or self._closed():
            return events  # after close-ok, a protocol error or connection_lost: nothing counts
        self._rx_activity = True
        buf = self._inbuf
        buffered = bool(buf)
        if buffered:
            buf += data
            if len(buf) >= 7:
                (size,) = _FRAME_SIZE.unpack_from(buf, 3)
                if len(buf) < size + 8 and size <= _MAX_INBOUND_FRAME:
                    return events  # its first frame is still incomplete: wait, copy nothing
            source = bytes(buf)  # frames are sliced out of it as bytes
        else:
            # Most reads hold whole frames: parse them where they are, and keep only the
            # start of an incomplete frame (one copy per payload, not three).
            source = data if type(data) is bytes else bytes(data)
        pos = 0
        size_total = len(source)
        try:
            if self.state is _CONNECTION_AWAIT_START and source[:4] == b"AMQP":
                # The broker answers an unsupported protocol header with its own (ref: 4.2.2).
                raise RemoteProtocolError(
                    f"broker refused protocol AMQP 0-9-1 and offered {bytes(source[:8])!r}"
                )
            unpack_header = FRAME_HEADER_STRUCT.unpack_from
            channels = self._channels
            while size_total - pos >= 8:
                frame_type, channel_id, size = unpack_header(source, pos)
                end = pos + 7 + size
                if size > self.frame_max - 8 and size > _MAX_INBOUND_FRAME:
                    # RabbitMQ does not split content headers to fit our frame_max,
                    # so only a frame beyond any sane size means framing is lost.
                    raise RemoteProtocolError(
                        f"frame payload of {size} bytes is beyond any frame leveret accepts "
                        f"(frame_max {self.frame_max}): framing is lost",
                        501,
                    )
                if end >= size_total:
                    break
                if source[end] != FRAME_END:
                    raise RemoteProtocolError(
                        f"frame does not end with 0xCE (got 0x{source[end]:02x}): framing lost",
                        501,
                    )
                payload = source[pos + 7 : end]
                pos = end + 1
                if frame_type == FRAME_BODY:
                    self._on_body(channels.get(channel_id), channel_id, payload, events)
                elif frame_type == FRAME_METHOD:
                    if channel_id:
                        channel = channels.get(channel_id)
                        self._on_channel_method(channel, channel_id, payload, events)
                        if channel is not None and channel.content is not None:
                            pos = self._take_content(source, pos, channel, events)
                    else:
                        self._on_connection_method(payload, events)
                        if self._closed():
                            pos = size_total  # e.g. the close-ok of crossing closes
                            break
                elif frame_type == FRAME_HEADER:
                    self._on_header(channels.get(channel_id), channel_id, payload, events)
                elif frame_type == FRAME_HEARTBEAT:
                    if channel_id:
                        raise RemoteProtocolError("heartbeat frame on a non-zero channel", 501)
                else:
                    raise RemoteProtocolError(f"unknown frame type {frame_type}", 501)
        except RemoteProtocolError as exc:
            del buf[:]
            pos = size_total  # nothing after a protocol error counts
            self._fail(exc)
            raise
        finally:
            if buffered:
                if pos:
                    del buf[:pos]
            elif pos < size_total:
                buf += source[pos:]
        return events

    def _take_content(self, source: bytes, pos: int, channel: _Channel, events: list[Event]) -> int:
        """The content header and body just announced, when `source` holds them whole at `pos`.

        RabbitMQ writes a delivery's three frames together, so this is the
        usual case, done here in one step; returns the position after them.
        Anything else (frames still to come, a body in several frames, any
        frame that is not what it should be) is left where it is, at the
        same `pos`, for the frame loop to take and check frame by frame.
        """
        size_total = len(source)
        if size_total - pos < 30:  # a header frame (22 or more) and a body frame's header
            return pos
        frame_type: int
        channel_id: int
        size: int
        body_size: int
        frame_type, channel_id, size, class_id, _weight, body_size = _HEADER_FRAME.unpack_from(
            source, pos
        )
        header_end = pos + 7 + size
        if (
            frame_type != FRAME_HEADER
            or channel_id != channel.id
            or not 14 <= size <= _MAX_INBOUND_FRAME
            or header_end >= size_total
            or source[header_end] != FRAME_END
            or class_id != 60
            or body_size > self.max_body_size
        ):
            return pos
        content = channel.content
        assert content is not None
        end = header_end  # of the last frame taken: the header's, for an empty body
        if body_size:
            if header_end + 8 >= size_total:
                return pos
            frame_type, channel_id, size = FRAME_HEADER_STRUCT.unpack_from(source, header_end + 1)
            end = header_end + 8 + size
            if (
                frame_type != FRAME_BODY
                or channel_id != channel.id
                or size != body_size
                or size > _MAX_INBOUND_FRAME
                or end >= size_total
                or source[end] != FRAME_END
            ):
                return pos
            content.body = source[header_end + 8 : end]
        content._raw_properties = source[pos + 19 : header_end]
        channel.content = None
        events.append(content)
        return end + 1

    def _closed(self) -> bool:
        # A method, so that mypy does not keep a narrowing of self.state across calls.
        return self.state is _CONNECTION_CLOSED

    def _fail(self, exc: RemoteProtocolError) -> None:
        """Queue connection.close for a protocol violation and stop accepting input."""
        if self.state in (ConnectionState.OPEN, ConnectionState.AWAIT_OPEN_OK):
            self._out.append(
                _codec.method_frame(
                    0,
                    commands.Connection.Close(
                        reply_code=exc.reply_code,
                        reply_text=str(exc)[:255],
                        class_id=0,
                        method_id=0,
                    ),
                )
            )
        self.state = ConnectionState.CLOSED

    # -- connection-level methods --------------------------------------------------------

    def _on_connection_method(self, payload: bytes, events: list[Event]) -> None:
        method = _codec.decode_method(payload)
        state = self.state
        if isinstance(method, commands.Connection.Close):
            during_handshake = (
                state is not ConnectionState.OPEN and state is not ConnectionState.CLOSING
            )
            self._send_method(0, commands.Connection.CloseOk())
            self._close_all_channels()
            self.state = ConnectionState.CLOSED
            events.append(
                ConnectionClosed(
                    _int(method.reply_code),
                    _as_str(method.reply_text),
                    _int(method.class_id),
                    _int(method.method_id),
                    by_server=True,
                    during_handshake=during_handshake,
                )
            )
        elif isinstance(method, commands.Connection.CloseOk):
            if state is not ConnectionState.CLOSING:
                raise RemoteProtocolError("connection.close-ok without a close", 503)
            self._close_all_channels()
            self.state = ConnectionState.CLOSED
            events.append(ConnectionClosed(200, "closed by client", 0, 0, False, False))
        elif isinstance(method, commands.Connection.Start) and state is ConnectionState.AWAIT_START:
            self._on_start(method)
        elif isinstance(method, commands.Connection.Tune) and state is ConnectionState.AWAIT_TUNE:
            self._on_tune(method)
        elif (
            isinstance(method, commands.Connection.OpenOk)
            and state is ConnectionState.AWAIT_OPEN_OK
        ):
            self.state = ConnectionState.OPEN
            events.append(
                ConnectionOpened(
                    self.server_properties, self.channel_max, self.frame_max, self.heartbeat
                )
            )
        elif isinstance(method, commands.Connection.Secure):
            # RabbitMQ never challenges PLAIN or EXTERNAL; answering blindly would loop.
            raise RemoteProtocolError(
                "broker sent connection.secure, which leveret does not answer", 540
            )
        elif state is ConnectionState.CLOSING:
            return  # ref: 4.2.3: after sending close, discard everything but close/close-ok
        elif isinstance(method, commands.Connection.Blocked):
            self.blocked = True
            events.append(ConnectionBlocked(_as_str(method.reason)))
        elif isinstance(method, commands.Connection.Unblocked):
            self.blocked = False
            events.append(ConnectionUnblocked())
        elif isinstance(method, commands.Connection.UpdateSecretOk):
            events.append(MethodReceived(0, method))
        else:
            raise RemoteProtocolError(f"unexpected {method.name} in state {state.value}", 503)

    def _close_all_channels(self) -> None:
        for channel in self._channels.values():
            channel.state = ChannelState.CLOSED
        self._channels.clear()

    # -- channel-level methods -------------------------------------------------------------

    def _on_channel_method(
        self, channel: _Channel | None, channel_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if channel is None:
            raise RemoteProtocolError(
                f"method frame for channel {channel_id}, which is not open", 504
            )
        if channel.content is not None:
            raise RemoteProtocolError(
                f"method frame on channel {channel_id} while content was expected", 505
            )
        if len(payload) < 4:
            raise RemoteProtocolError("method frame shorter than its class and method ids", 502)
        (index,) = _codec.CLASS_METHOD_INT.unpack_from(payload, 0)
        state = channel.state
        if index == BASIC_DELIVER and state is _CHANNEL_OPEN:
            # Hot path: consumer tag, delivery tag, redelivered, exchange, routing key, read
            # inline. A slice never fails, so each length is checked by the read after it.
            try:
                end = 5 + payload[4]
                consumer_tag = _decode_str(payload[5:end])
                (delivery_tag,) = _U64.unpack_from(payload, end)
                redelivered = bool(payload[end + 8] & 1)
                pos = end + 9
                end = pos + 1 + payload[pos]
                exchange = _decode_str(payload[pos + 1 : end])
                pos = end + 1 + payload[end]
                if pos > len(payload):
                    raise IndexError
                routing_key = _decode_str(payload[end + 1 : pos])
            except (IndexError, struct.error):
                raise RemoteProtocolError("truncated basic.deliver", 502) from None
            channel.content = Delivery(
                channel_id, consumer_tag, delivery_tag, redelivered, exchange, routing_key, None
            )
            return
        if index in (BASIC_ACK, BASIC_NACK) and state is _CHANNEL_OPEN:
            if len(payload) < 13:
                raise RemoteProtocolError("truncated basic.ack/nack", 502)
            (tag,) = _U64.unpack_from(payload, 4)
            if not channel.confirm_mode:
                raise RemoteProtocolError(
                    f"publisher confirm on channel {channel_id}, which is not in confirm mode", 503
                )
            events.append(
                PublishConfirmed(channel_id, tag, bool(payload[12] & 1), index == BASIC_ACK)
            )
            return

        method = _codec.decode_method(payload)
        if isinstance(method, commands.Channel.Close):
            self._on_channel_close(channel, method, events)
            return
        if isinstance(method, commands.Channel.CloseOk):
            if state is not ChannelState.CLOSING:
                raise RemoteProtocolError(
                    f"channel.close-ok on channel {channel_id} without a close", 503
                )
            self._release_channel(channel)
            if not channel.server_closed:
                events.append(ChannelClosed(channel_id, 200, "closed by client", 0, 0, False))
            return
        if state is ChannelState.CLOSING:
            return  # ref: 4.2.3 (channels too): drop everything until close-ok
        if isinstance(method, commands.Channel.OpenOk) and state is ChannelState.OPENING:
            channel.state = ChannelState.OPEN
            events.append(ChannelOpened(channel_id))
            return
        if state is not ChannelState.OPEN:
            raise RemoteProtocolError(f"{method.name} on channel {channel_id} before open-ok", 503)
        if index == BASIC_RETURN:
            assert isinstance(method, commands.Basic.Return)
            channel.content = Returned(
                channel_id,
                _int(method.reply_code),
                _as_str(method.reply_text),
                _as_str(method.exchange),
                _as_str(method.routing_key),
            )
        elif index == BASIC_GET_OK:
            assert isinstance(method, commands.Basic.GetOk)
            self._expect_reply(channel, method)
            channel.content = Delivery(
                channel_id,
                None,
                _int(method.delivery_tag),
                bool(method.redelivered),
                _as_str(method.exchange),
                _as_str(method.routing_key),
                method.message_count,
            )
        elif isinstance(method, commands.Basic.Cancel):
            # Server-initiated cancel (consumer_cancel_notify): its queue went away.
            if not method.nowait:
                self._send_method(
                    channel_id, commands.Basic.CancelOk(consumer_tag=method.consumer_tag)
                )
            events.append(ConsumerCancelled(channel_id, _as_str(method.consumer_tag)))
        elif isinstance(method, commands.Channel.Flow):
            channel.flow_active = bool(method.active)
            self._send_method(channel_id, commands.Channel.FlowOk(active=method.active))
            events.append(ChannelFlowChanged(channel_id, bool(method.active)))
        else:
            self._expect_reply(channel, method)
            if isinstance(method, commands.Confirm.SelectOk):
                channel.confirm_mode = True
            events.append(MethodReceived(channel_id, method))

    def _expect_reply(self, channel: _Channel, method: PamqpMethod) -> None:
        """Check that `method` answers the oldest outstanding request on the channel."""
        if not channel.replies or method.name not in channel.replies[0]:
            expected = sorted(channel.replies[0]) if channel.replies else "nothing"
            raise RemoteProtocolError(
                f"unexpected {method.name} on channel {channel.id} (expected {expected})", 505
            )
        channel.replies.popleft()

    def _on_channel_close(
        self, channel: _Channel, method: commands.Channel.Close, events: list[Event]
    ) -> None:
        self._send_method(channel.id, commands.Channel.CloseOk())
        event = ChannelClosed(
            channel.id,
            _int(method.reply_code),
            _as_str(method.reply_text),
            _int(method.class_id),
            _int(method.method_id),
            True,
        )
        if channel.state is ChannelState.CLOSING:
            # Closes crossed: report the broker's reason now, keep the number until our close-ok.
            channel.server_closed = True
        else:
            self._release_channel(channel)
        events.append(event)

    def _release_channel(self, channel: _Channel) -> None:
        channel.state = ChannelState.CLOSED
        channel.content = None
        if self._channels.get(channel.id) is channel:
            del self._channels[channel.id]

    # -- content frames ---------------------------------------------------------------------

    def _on_header(
        self, channel: _Channel | None, channel_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if channel is None:
            raise RemoteProtocolError(
                f"content header for channel {channel_id}, which is not open", 504
            )
        content = channel.content
        if content is None or channel.body_remaining != -1:
            if channel.state is _CHANNEL_CLOSING:
                return
            raise RemoteProtocolError(f"unexpected content header on channel {channel_id}", 505)
        class_id, body_size = _codec.decode_header_prefix(payload)
        if class_id != 60:
            raise RemoteProtocolError(
                f"content header for class {class_id}, expected basic (60)", 505
            )
        if body_size > self.max_body_size:
            raise RemoteProtocolError(
                f"incoming message body of {body_size} bytes exceeds max_body_size "
                f"{self.max_body_size}",
                501,
            )
        content._raw_properties = payload[12:]
        if body_size:
            channel.body_remaining = body_size
        else:
            channel.content = None
            events.append(content)

    def _on_body(
        self, channel: _Channel | None, channel_id: int, payload: bytes, events: list[Event]
    ) -> None:
        if channel is None:
            raise RemoteProtocolError(
                f"content body for channel {channel_id}, which is not open", 504
            )
        content = channel.content
        remaining = channel.body_remaining
        if content is None or remaining <= 0:
            if channel.state is _CHANNEL_CLOSING:
                return
            raise RemoteProtocolError(f"unexpected content body on channel {channel_id}", 505)
        size = len(payload)
        if size > remaining:
            raise RemoteProtocolError(
                f"content body on channel {channel_id} is longer than its header announced", 505
            )
        if size == remaining and not channel.body_chunks:
            content.body = payload
        else:
            channel.body_chunks.append(payload)
            if size < remaining:
                channel.body_remaining = remaining - size
                return
            content.body = b"".join(channel.body_chunks)
            channel.body_chunks = []
        channel.body_remaining = -1
        channel.content = None
        events.append(content)

    # -- commands -----------------------------------------------------------------------------

    def _send_method(self, channel_id: int, method: PamqpMethod) -> None:
        self._out.append(_codec.method_frame(channel_id, method))

    def _require_open(self) -> None:
        if self.state is not ConnectionState.OPEN:
            raise LocalProtocolError(f"the connection is {self.state.value}, not open")

    def _open_channel_obj(self, channel_id: int) -> _Channel:
        channel = self._channels.get(channel_id)
        if channel is None or channel.state is not ChannelState.OPEN:
            state = "closed" if channel is None else channel.state.value
            raise LocalProtocolError(f"channel {channel_id} is {state}, not open")
        return channel

    def open_channel(self) -> int:
        """Send channel.open on the next free number, round robin; ChannelOpened follows."""
        self._require_open()
        limit = self.channel_max
        channel_id = self._next_channel_hint
        for _ in range(limit):
            if channel_id > limit:
                channel_id = 1
            if channel_id not in self._channels:
                break
            channel_id += 1
        else:
            raise LocalProtocolError(f"all {limit} channels are in use")
        self._next_channel_hint = channel_id + 1
        self._channels[channel_id] = _Channel(channel_id)
        self._send_method(channel_id, commands.Channel.Open())
        return channel_id

    def close_channel(self, channel_id: int, reply_code: int = 200, reply_text: str = "") -> None:
        """Send channel.close; ChannelClosed(by_server=False) follows its close-ok."""
        channel = self._channels.get(channel_id)
        if channel is None or channel.state in (ChannelState.CLOSING, ChannelState.CLOSED):
            return  # already going away: closing twice is harmless
        self._require_open()
        channel.state = ChannelState.CLOSING
        channel.content = None
        channel.body_chunks = []
        self._send_method(
            channel_id,
            commands.Channel.Close(
                reply_code=reply_code, reply_text=reply_text, class_id=0, method_id=0
            ),
        )

    def channel_state(self, channel_id: int) -> ChannelState:
        channel = self._channels.get(channel_id)
        return ChannelState.CLOSED if channel is None else channel.state

    def call(self, channel_id: int, method: PamqpMethod) -> None:
        """Send a method; if synchronous, its reply arrives as MethodReceived (or Delivery for get-ok)."""
        self._require_open()
        channel = self._open_channel_obj(channel_id)
        if isinstance(method, (commands.Channel.Open, commands.Channel.Close)):
            raise LocalProtocolError("use open_channel() / close_channel() for channel lifecycle")
        if method.synchronous and not getattr(method, "nowait", False):
            channel.replies.append(frozenset(method.valid_responses))
        if isinstance(method, commands.Confirm.Select):
            # The broker numbers publishes from its receipt of select, not from our
            # receipt of select-ok (and with nowait there is no select-ok at all).
            channel.confirm_mode = True
        self._out.append(_codec.method_frame(channel_id, method))

    def publish(
        self,
        channel_id: int,
        exchange: bytes,
        routing_key: bytes,
        body: bytes,
        properties: bytes,
        mandatory: bool = False,
    ) -> int:
        """Queue basic.publish with content; returns the confirm sequence number (0 without confirms).

        `exchange`, `routing_key` and `properties` come pre-encoded
        (`encode_shortstr`, `encode_properties`) so that callers can validate
        them before anything is queued, and reuse them across publishes.
        """
        channel = self._channels.get(channel_id)
        if (
            channel is None
            or channel.state is not _CHANNEL_OPEN
            or self.state is not _CONNECTION_OPEN
        ):
            self._require_open()
            self._open_channel_obj(channel_id)
        assert channel is not None
        if len(body) > self.max_body_size:
            raise ValueError(
                f"body of {len(body)} bytes exceeds max_body_size {self.max_body_size}"
            )
        if len(properties) + 12 > self.max_body_frame:
            # A content header cannot be split; the broker would close the connection (501).
            raise ValueError(
                f"message properties and headers take {len(properties) + 12} bytes, over the "
                f"{self.max_body_frame} a content header frame can carry with frame_max "
                f"{self.frame_max}"
            )
        self._out.extend(
            _codec.publish_frames(
                channel_id, exchange, routing_key, mandatory, body, properties, self.max_body_frame
            )
        )
        if channel.confirm_mode:
            channel.publish_seq += 1
            return channel.publish_seq
        return 0

    def ack(self, channel_id: int, delivery_tag: int, multiple: bool = False) -> bool:
        """Queue basic.ack; False (nothing queued) when the channel is no longer open."""
        return self._settle(channel_id, _codec.BASIC_ACK, delivery_tag, 1 if multiple else 0)

    def nack(
        self, channel_id: int, delivery_tag: int, multiple: bool = False, requeue: bool = True
    ) -> bool:
        """Queue basic.nack (RabbitMQ extension); False when the channel is gone."""
        bits = (1 if multiple else 0) | (2 if requeue else 0)
        return self._settle(channel_id, _codec.BASIC_NACK, delivery_tag, bits)

    def reject(self, channel_id: int, delivery_tag: int, requeue: bool = True) -> bool:
        """Queue basic.reject; False when the channel is gone."""
        return self._settle(channel_id, _codec.BASIC_REJECT, delivery_tag, 1 if requeue else 0)

    def _settle(self, channel_id: int, method: int, delivery_tag: int, bits: int) -> bool:
        channel = self._channels.get(channel_id)
        if (
            channel is None
            or channel.state is not _CHANNEL_OPEN
            or self.state is not _CONNECTION_OPEN
        ):
            return False  # a delivery tag from a dead channel must never reach a new one
        out = self._out
        if (
            method == _codec.BASIC_ACK
            and not bits
            and delivery_tag == channel.settled_upto + 1
            and channel.settled_above is not None
            and out
            and out[-1] is channel.last_ack
        ):
            # The ack before this one is still the last thing queued, and every tag below
            # is settled: one `multiple` ack up to this tag says the same in one frame.
            frame = _codec.ack_frame(channel_id, method, delivery_tag, 1)
            out[-1] = frame
        else:
            frame = _codec.ack_frame(channel_id, method, delivery_tag, bits)
            out.append(frame)
        _note_settled(channel, delivery_tag, multiple=method != _codec.BASIC_REJECT and bits & 1)
        coalescable = method == _codec.BASIC_ACK and channel.settled_upto == delivery_tag
        channel.last_ack = frame if coalescable else None
        return True

    def close(self, reply_code: int = 200, reply_text: str = "Normal shutdown") -> None:
        """Send connection.close; ConnectionClosed(by_server=False) follows its close-ok."""
        if self.state in (ConnectionState.CLOSING, ConnectionState.CLOSED):
            return
        if self.state is ConnectionState.INITIAL or self.state is ConnectionState.AWAIT_START:
            self.state = ConnectionState.CLOSED  # nothing to close politely yet
            return
        self._send_method(
            0,
            commands.Connection.Close(
                reply_code=reply_code, reply_text=reply_text, class_id=0, method_id=0
            ),
        )
        self.state = ConnectionState.CLOSING

    def update_secret(self, new_secret: str, reason: str = "") -> None:
        """Send connection.update-secret (e.g. a refreshed OAuth 2 token)."""
        self._require_open()
        self._send_method(0, commands.Connection.UpdateSecret(new_secret=new_secret, reason=reason))

    def connection_lost(self) -> None:
        """The transport is gone: no further input or output is meaningful."""
        self.state = ConnectionState.CLOSED
        self._close_all_channels()
        self._out = []

    # -- heartbeats -------------------------------------------------------------------------------

    def next_deadline(self) -> float | None:
        """When `handle_timer` should run next, on the driver's clock; None: no timer needed."""
        if not self.heartbeat or self.state not in (ConnectionState.OPEN, ConnectionState.CLOSING):
            return None
        if not self._timer_started:
            return 0.0
        return self._last_tick + self.heartbeat / 4

    def handle_timer(self, now: float) -> list[Event]:
        """Send a heartbeat when we have been quiet for half an interval; detect a dead peer.

        Activity flags become timestamps here, at most a quarter interval late,
        so silence is declared after 1.75 to 2 intervals (ref: RabbitMQ's
        heartbeat guide: the peer is dead after two missed heartbeats).
        """
        if not self.heartbeat or self.state not in (ConnectionState.OPEN, ConnectionState.CLOSING):
            return []
        self._last_tick = now
        if not self._timer_started:
            self._timer_started = True
            self._last_rx = self._last_tx = now
            self._rx_activity = self._tx_activity = False
            return []
        if self._rx_activity:
            self._rx_activity = False
            self._last_rx = now
        if self._tx_activity:
            self._tx_activity = False
            self._last_tx = now
        interval = self.heartbeat
        silent_for = now - self._last_rx
        if silent_for >= interval * 1.75:
            return [HeartbeatTimedOut(silent_for)]
        if now - self._last_tx >= interval / 2:
            self._out.append(_codec.HEARTBEAT_FRAME)
            self._last_tx = now
        return []


def _negotiate(ours: int, theirs: int) -> int:
    if not ours or not theirs:
        return ours or theirs
    return min(ours, theirs)


def _negotiate_heartbeat(wanted: int | None, offered: int) -> int:
    # None: take the broker's proposal. 0: the user disabled heartbeats, which
    # the broker accepts. Otherwise the lower of both, unless the broker offers 0.
    if wanted is None:
        return offered
    if wanted == 0 or offered == 0:
        return wanted
    return min(wanted, offered)


def _int(value: int | None) -> int:
    return 0 if value is None else value


def _as_str(value: str | bytes | None) -> str:
    if value is None:
        return ""
    if isinstance(value, bytes):
        return value.decode("utf-8", "surrogateescape")
    return value
