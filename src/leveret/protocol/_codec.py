"""Byte-level encoding and decoding of AMQP 0-9-1 frames.

Theory of operation: pamqp is the reference codec and handles every method
we do not send or receive per message. The per-message frames (basic.publish
with its content header and bodies, basic.deliver, basic.ack/nack/reject and
the content header properties) are written here by hand, because pamqp's
generic, reflective marshalling costs tens of microseconds per message. The
unit tests check these paths byte for byte against pamqp.

Field tables are encoded here too, for two reasons beyond speed: `bytes`
values are accepted (pamqp takes only `bytearray`), and a Python `float`
becomes a 64-bit double ('d'), not pamqp's lossy 32-bit 'f'.
"""

from __future__ import annotations

import calendar
import datetime
import decimal
import math
import struct
from typing import Any

from pamqp import commands
from pamqp import encode as pamqp_encode
from pamqp.base import Frame as PamqpMethod

from leveret._properties import Properties
from leveret.exceptions import RemoteProtocolError

FRAME_METHOD = 1
FRAME_HEADER = 2
FRAME_BODY = 3
FRAME_HEARTBEAT = 8
FRAME_END = 0xCE
FRAME_END_BYTE = b"\xce"
FRAME_OVERHEAD = 8  # 7-byte header + frame-end octet
PROTOCOL_HEADER = b"AMQP\x00\x00\x09\x01"
HEARTBEAT_FRAME = b"\x08\x00\x00\x00\x00\x00\x00\xce"

FRAME_HEADER_STRUCT = struct.Struct(">BHI")
_CLASS_METHOD = struct.Struct(">HH")
_CLASS_METHOD_INT = struct.Struct(">I")
_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")
_I8 = struct.Struct(">b")
_I16 = struct.Struct(">h")
_I32 = struct.Struct(">i")
_I64 = struct.Struct(">q")
_DOUBLE = struct.Struct(">d")
_HEADER_PREFIX = struct.Struct(">HHQ")  # class id, weight, body size

# (class_id << 16 | method_id) of the methods with a hand-written path.
BASIC_PUBLISH = 0x003C0028
BASIC_DELIVER = 0x003C003C
BASIC_ACK = 0x003C0050
BASIC_NACK = 0x003C0078
BASIC_REJECT = 0x003C005A
BASIC_RETURN = 0x003C0032
BASIC_GET_OK = 0x003C0047

_ACK_FRAME = struct.Struct(">BHIIQBB")  # type, channel, size, class+method, tag, bits, end


# -- short strings -------------------------------------------------------------


def encode_shortstr(value: str, what: str) -> bytes:
    """UTF-8 with a one-octet length; `what` names the field in the error."""
    if not isinstance(value, str):
        raise TypeError(f"{what} must be a str, got {type(value).__name__}: {value!r}")
    raw = value.encode("utf-8", "surrogateescape")  # a peer's non-UTF-8 goes back intact
    if len(raw) > 255:
        raise ValueError(
            f"{what} is {len(raw)} bytes encoded, over the AMQP limit of 255: {value!r}"
        )
    return _U8.pack(len(raw)) + raw


def _decode_str(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        # A peer sent non-UTF-8; keep every byte recoverable instead of failing the frame.
        return raw.decode("utf-8", "surrogateescape")


# -- field tables ----------------------------------------------------------------


def encode_table(table: dict[str, Any] | None, what: str = "table") -> bytes:
    """Encode a field table; errors name the key path and the offending value."""
    if table is None:
        return b"\x00\x00\x00\x00"
    if not isinstance(table, dict):
        raise TypeError(f"{what} must be a dict, got {type(table).__name__}: {table!r}")
    if not table:
        return b"\x00\x00\x00\x00"
    for key in table:
        if not isinstance(key, str):
            raise TypeError(f"{what} key must be a str, got {type(key).__name__}: {key!r}")
    parts: list[bytes] = []
    for key, value in sorted(table.items()):
        raw_key = key.encode("utf-8", "surrogateescape")
        if len(raw_key) > 128:
            raise ValueError(f"{what} key is over the AMQP limit of 128 bytes: {key!r}")
        parts.append(_U8.pack(len(raw_key)))
        parts.append(raw_key)
        parts.append(_encode_value(value, f"{what}[{key!r}]"))
    payload = b"".join(parts)
    return _U32.pack(len(payload)) + payload


def _encode_int(value: int, what: str) -> bytes:
    # Same choice of width as pamqp, so tables stay byte-identical to it.
    if -128 <= value <= 127:
        return b"b" + _I8.pack(value)
    if -32768 <= value <= 32767:
        return b"s" + _I16.pack(value)
    if 0 <= value <= 65535:
        return b"u" + _U16.pack(value)
    if -2147483648 <= value <= 2147483647:
        return b"I" + _I32.pack(value)
    if 0 <= value <= 4294967295:
        return b"i" + _U32.pack(value)
    if -9223372036854775808 <= value <= 9223372036854775807:
        return b"l" + _I64.pack(value)
    raise ValueError(f"{what} is out of the 64-bit range AMQP can carry: {value!r}")


def _encode_value(value: Any, what: str) -> bytes:
    if isinstance(value, str):
        raw = value.encode("utf-8", "surrogateescape")
        return b"S" + _U32.pack(len(raw)) + raw
    if isinstance(value, bool):
        return b"t\x01" if value else b"t\x00"
    if isinstance(value, int):
        return _encode_int(value, what)
    if isinstance(value, float):
        if not math.isfinite(value):
            # RabbitMQ cannot parse NaN or infinities and closes the whole connection (541).
            raise ValueError(f"{what} is {value!r}, which RabbitMQ cannot accept in a table")
        return b"d" + _DOUBLE.pack(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        raw = bytes(value)
        return b"x" + _U32.pack(len(raw)) + raw
    if value is None:
        return b"V"
    if isinstance(value, dict):
        return b"F" + encode_table(value, what)
    if isinstance(value, (list, tuple)):
        items = b"".join(_encode_value(v, f"{what}[{i}]") for i, v in enumerate(value))
        return b"A" + _U32.pack(len(items)) + items
    if isinstance(value, datetime.datetime):
        return b"T" + _U64.pack(_timestamp_seconds(value, what))
    if isinstance(value, decimal.Decimal):
        return b"D" + _encode_decimal(value, what)
    raise TypeError(
        f"{what} has a type AMQP tables cannot carry: {type(value).__name__} ({value!r}); "
        "use str, bytes, bool, int, float, Decimal, datetime, None, list or dict"
    )


def _encode_decimal(value: decimal.Decimal, what: str) -> bytes:
    exponent = value.as_tuple().exponent
    if not isinstance(exponent, int):
        raise ValueError(f"{what} is not a finite decimal: {value!r}")
    scale = -exponent if exponent < 0 else 0
    unscaled = int(value.scaleb(scale))
    if scale > 255 or not -2147483648 <= unscaled <= 2147483647:
        raise ValueError(
            f"{what} does not fit AMQP's decimal (scale octet, 32-bit value): {value!r}"
        )
    return _U8.pack(scale) + _I32.pack(unscaled)


def _timestamp_seconds(value: datetime.datetime, what: str) -> int:
    if not isinstance(value, datetime.datetime):
        raise TypeError(f"{what} must be a datetime, got {type(value).__name__}: {value!r}")
    if value.tzinfo is None or value.utcoffset() is None:
        seconds = calendar.timegm(value.timetuple())
    else:
        seconds = int(value.timestamp())
    if seconds < 0:
        raise ValueError(f"{what} is before 1970, which AMQP timestamps cannot carry: {value!r}")
    return seconds


def decode_table(data: bytes) -> dict[str, Any]:
    """Decode a field table (with its length prefix), every RabbitMQ field type.

    Written here rather than taken from pamqp so that it is lenient where peers
    are sloppy (non-UTF-8 keys and strings keep their bytes via surrogateescape)
    and exact where pamqp guesses (timestamps are always seconds).
    """
    try:
        table, _ = _decode_table_at(data, 0, 0)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        raise RemoteProtocolError(f"malformed field table: {exc}", 502) from exc
    return table


_MAX_TABLE_DEPTH = 100


def _decode_table_at(data: bytes, pos: int, depth: int) -> tuple[dict[str, Any], int]:
    if depth > _MAX_TABLE_DEPTH:
        raise ValueError("field tables nested too deeply")
    (size,) = _U32.unpack_from(data, pos)
    pos += 4
    end = pos + size
    if end > len(data):
        raise ValueError("field table runs past the end of its frame")
    table: dict[str, Any] = {}
    while pos < end:
        key_len = data[pos]
        key = _decode_str(bytes(data[pos + 1 : pos + 1 + key_len]))
        table[key], pos = _decode_value(data, pos + 1 + key_len, depth)
    if pos != end:
        raise ValueError("field table value runs past the table's length")
    return table, end


def _decode_value(data: bytes, pos: int, depth: int) -> tuple[Any, int]:
    kind = data[pos]
    pos += 1
    simple = _SIMPLE_VALUES.get(kind)
    if simple is not None:
        fmt, width = simple
        return fmt.unpack_from(data, pos)[0], pos + width
    if kind == 0x53:  # S: long string
        (length,) = _U32.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data):
            raise ValueError("long string runs past the end of its frame")
        return _decode_str(bytes(data[pos + 4 : end])), end
    if kind == 0x74:  # t: boolean
        return data[pos] != 0, pos + 1
    if kind == 0x46:  # F: nested table
        return _decode_table_at(data, pos, depth + 1)
    if kind == 0x41:  # A: array
        (length,) = _U32.unpack_from(data, pos)
        pos += 4
        end = pos + length
        if end > len(data):
            raise ValueError("field array runs past the end of its frame")
        items: list[Any] = []
        while pos < end:
            item, pos = _decode_value(data, pos, depth + 1)
            items.append(item)
        if pos != end:
            raise ValueError("field array value runs past the array's length")
        return items, end
    if kind == 0x54:  # T: timestamp, seconds since the epoch
        (seconds,) = _U64.unpack_from(data, pos)
        return datetime.datetime.fromtimestamp(seconds, datetime.UTC), pos + 8
    if kind == 0x44:  # D: decimal
        scale = data[pos]
        (unscaled,) = _I32.unpack_from(data, pos + 1)
        return decimal.Decimal(unscaled).scaleb(-scale), pos + 5
    if kind == 0x78:  # x: byte array
        (length,) = _U32.unpack_from(data, pos)
        end = pos + 4 + length
        if end > len(data):
            raise ValueError("byte array runs past the end of its frame")
        return bytearray(data[pos + 4 : end]), end
    if kind == 0x56:  # V: void
        return None, pos
    raise ValueError(f"unknown field type {chr(kind)!r}")


_SIMPLE_VALUES: dict[int, tuple[struct.Struct, int]] = {
    0x62: (_I8, 1),  # b
    0x42: (_U8, 1),  # B
    0x73: (_I16, 2),  # s
    0x75: (_U16, 2),  # u
    0x49: (_I32, 4),  # I
    0x69: (_U32, 4),  # i
    0x6C: (_I64, 8),  # l
    0x4C: (_U64, 8),  # L
    0x66: (struct.Struct(">f"), 4),  # f
    0x64: (_DOUBLE, 8),  # d
}


# -- properties ------------------------------------------------------------------

_FLAG_CONTENT_TYPE = 0x8000
_FLAG_CONTENT_ENCODING = 0x4000
_FLAG_HEADERS = 0x2000
_FLAG_DELIVERY_MODE = 0x1000
_FLAG_PRIORITY = 0x0800
_FLAG_CORRELATION_ID = 0x0400
_FLAG_REPLY_TO = 0x0200
_FLAG_EXPIRATION = 0x0100
_FLAG_MESSAGE_ID = 0x0080
_FLAG_TIMESTAMP = 0x0040
_FLAG_TYPE = 0x0020
_FLAG_USER_ID = 0x0010
_FLAG_APP_ID = 0x0008
_FLAG_CLUSTER_ID = 0x0004

EMPTY_PROPERTIES_BYTES = b"\x00\x00"
PERSISTENT_PROPERTIES_BYTES = b"\x10\x00\x02"


def encode_properties(p: Properties, persistent: bool = False) -> bytes:
    """Flags and values of a content header; `persistent` forces delivery_mode 2."""
    flags = 0
    parts: list[bytes] = []
    if p.content_type:
        flags |= _FLAG_CONTENT_TYPE
        parts.append(encode_shortstr(p.content_type, "content_type"))
    if p.content_encoding:
        flags |= _FLAG_CONTENT_ENCODING
        parts.append(encode_shortstr(p.content_encoding, "content_encoding"))
    if p.headers is not None:
        flags |= _FLAG_HEADERS
        parts.append(encode_table(p.headers, "headers"))
    delivery_mode = 2 if persistent else p.delivery_mode
    if delivery_mode is not None:
        flags |= _FLAG_DELIVERY_MODE
        parts.append(_octet(delivery_mode, "delivery_mode"))
    if p.priority is not None:
        flags |= _FLAG_PRIORITY
        parts.append(_octet(p.priority, "priority"))
    if p.correlation_id:
        flags |= _FLAG_CORRELATION_ID
        parts.append(encode_shortstr(p.correlation_id, "correlation_id"))
    if p.reply_to:
        flags |= _FLAG_REPLY_TO
        parts.append(encode_shortstr(p.reply_to, "reply_to"))
    if p.expiration:
        flags |= _FLAG_EXPIRATION
        parts.append(encode_shortstr(_check_expiration(p.expiration), "expiration"))
    if p.message_id:
        flags |= _FLAG_MESSAGE_ID
        parts.append(encode_shortstr(p.message_id, "message_id"))
    if p.timestamp is not None:
        flags |= _FLAG_TIMESTAMP
        parts.append(_U64.pack(_timestamp_seconds(p.timestamp, "timestamp")))
    if p.message_type:
        flags |= _FLAG_TYPE
        parts.append(encode_shortstr(p.message_type, "message_type"))
    if p.user_id:
        flags |= _FLAG_USER_ID
        parts.append(encode_shortstr(p.user_id, "user_id"))
    if p.app_id:
        flags |= _FLAG_APP_ID
        parts.append(encode_shortstr(p.app_id, "app_id"))
    if p.cluster_id:
        flags |= _FLAG_CLUSTER_ID
        parts.append(encode_shortstr(p.cluster_id, "cluster_id"))
    return _U16.pack(flags) + b"".join(parts)


def stamp_prefix(content_type: str | None, persistent: bool) -> bytes:
    """Flags and leading values of a content header that ends in message_id and timestamp.

    `stamped_properties` appends those two per message, byte-identical to
    `encode_properties` of the same values, without building a Properties.
    """
    flags = _FLAG_MESSAGE_ID | _FLAG_TIMESTAMP
    parts = []
    if content_type:
        flags |= _FLAG_CONTENT_TYPE
        parts.append(encode_shortstr(content_type, "content_type"))
    if persistent:
        flags |= _FLAG_DELIVERY_MODE
        parts.append(b"\x02")
    return _U16.pack(flags) + b"".join(parts)


def stamped_properties(prefix: bytes, message_id: str, timestamp: bytes) -> bytes:
    """`prefix` from `stamp_prefix`, then a message id (ASCII, < 256 bytes) and a packed timestamp."""
    return prefix + _U8.pack(len(message_id)) + message_id.encode("ascii") + timestamp


def rpc_properties(
    content_type: str | None,
    correlation_id: str,
    reply_to_field: bytes | None,
    expiration: str | None,
    message_id: str | None,
    timestamp: bytes | None,
) -> bytes:
    """The properties of an RPC request or reply, without building a Properties.

    Byte-identical to `encode_properties` of the same values (`timestamp`
    packed as by `timestamp_bytes`); every call and reply goes through here.
    `reply_to_field` comes encoded (`encode_shortstr`): a client sends the
    same address with every call. `message_id` is one of `new_message_id`'s.
    """
    correlation = correlation_id.encode("utf-8", "surrogateescape")
    if len(correlation) > 255:
        encode_shortstr(correlation_id, "correlation_id")  # raises, naming the value
    flags = _FLAG_CORRELATION_ID
    out = _U8.pack(len(correlation)) + correlation
    if content_type:
        flags |= _FLAG_CONTENT_TYPE
        out = encode_shortstr(content_type, "content_type") + out
    if reply_to_field:
        flags |= _FLAG_REPLY_TO
        out += reply_to_field
    if expiration:
        flags |= _FLAG_EXPIRATION
        out += encode_shortstr(_check_expiration(expiration), "expiration")
    if message_id:
        flags |= _FLAG_MESSAGE_ID
        out += _U8.pack(len(message_id)) + message_id.encode("ascii")
    if timestamp is not None:
        flags |= _FLAG_TIMESTAMP
        out += timestamp
    return _U16.pack(flags) + out


def _octet(value: int, what: str) -> bytes:
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= 255:
        raise ValueError(f"{what} must be an int from 0 to 255, got {value!r}")
    return _U8.pack(value)


def _check_expiration(value: str) -> str:
    # RabbitMQ closes the channel (406) for anything but a non-negative integer
    # string, which would fail every publish sharing the channel: refuse it here.
    if not isinstance(value, str) or not value.isascii() or not value.isdigit():
        raise ValueError(
            f"expiration must be a string of a non-negative integer (milliseconds), got {value!r}"
        )
    return value


def decode_properties(data: bytes) -> Properties:
    """Decode property flags and values (the content header after body size)."""
    try:
        return _decode_properties(data)
    except (struct.error, IndexError, ValueError, OverflowError) as exc:
        if isinstance(exc, RemoteProtocolError):
            raise
        raise RemoteProtocolError(f"malformed content header properties: {exc}", 502) from exc


_SHORTSTR_AFTER_PRIORITY = (
    (_FLAG_CORRELATION_ID, "correlation_id"),
    (_FLAG_REPLY_TO, "reply_to"),
    (_FLAG_EXPIRATION, "expiration"),
    (_FLAG_MESSAGE_ID, "message_id"),
)
_AFTER_TIMESTAMP = _FLAG_TYPE | _FLAG_USER_ID | _FLAG_APP_ID | _FLAG_CLUSTER_ID
_SHORTSTR_AFTER_TIMESTAMP = (
    (_FLAG_TYPE, "message_type"),
    (_FLAG_USER_ID, "user_id"),
    (_FLAG_APP_ID, "app_id"),
    (_FLAG_CLUSTER_ID, "cluster_id"),
)
_timestamps: dict[int, datetime.datetime] = {}  # seconds -> datetime: a stream repeats them


def _timestamp(seconds: int) -> datetime.datetime:
    value = _timestamps.get(seconds)
    if value is None:
        if len(_timestamps) >= 64:
            _timestamps.clear()
        try:
            value = datetime.datetime.fromtimestamp(seconds, datetime.UTC)
        except (OverflowError, OSError, ValueError) as exc:  # OSError: EOVERFLOW from the C library
            raise ValueError(f"timestamp {seconds} is out of range for a datetime: {exc}") from None
        _timestamps[seconds] = value
    return value


def _decode_properties(data: bytes) -> Properties:
    # Every delivery (and every RPC reply) comes through here: no closures, no dict of
    # values, one slice per string.
    (flags,) = _U16.unpack_from(data, 0)
    properties = Properties()
    if not flags:
        return properties
    pos = 2
    if flags & 1:  # continuation flag words: no 0-9-1 property uses them; skip over.
        while True:
            (more,) = _U16.unpack_from(data, pos)
            pos += 2
            if not more & 1:
                break
    size = len(data)
    if flags & _FLAG_CONTENT_TYPE:
        end = pos + 1 + data[pos]
        if end > size:
            raise ValueError("short string runs past the end of the header")
        properties.content_type = _decode_str(data[pos + 1 : end])
        pos = end
    if flags & _FLAG_CONTENT_ENCODING:
        end = pos + 1 + data[pos]
        if end > size:
            raise ValueError("short string runs past the end of the header")
        properties.content_encoding = _decode_str(data[pos + 1 : end])
        pos = end
    if flags & _FLAG_HEADERS:
        (length,) = _U32.unpack_from(data, pos)
        end = pos + 4 + length
        if end > size:
            raise ValueError("headers table runs past the end of the header")
        properties.headers = decode_table(data[pos:end])
        pos = end
    if flags & _FLAG_DELIVERY_MODE:
        properties.delivery_mode = data[pos]
        pos += 1
    if flags & _FLAG_PRIORITY:
        properties.priority = data[pos]
        pos += 1
    pos = _read_shortstrs(properties, data, pos, size, flags, _SHORTSTR_AFTER_PRIORITY)
    if flags & _FLAG_TIMESTAMP:
        (seconds,) = _U64.unpack_from(data, pos)
        pos += 8
        properties.timestamp = _timestamp(seconds)
    if flags & _AFTER_TIMESTAMP:
        _read_shortstrs(properties, data, pos, size, flags, _SHORTSTR_AFTER_TIMESTAMP)
    return properties


def decode_rpc_fields(data: bytes) -> tuple[str | None, str | None, bool]:
    """(correlation_id, reply_to, has headers) of encoded properties, without decoding the rest.

    What RPC needs of every request and reply: a full decode costs several
    times as much, and handlers rarely look at the other properties.
    """
    try:
        (flags,) = _U16.unpack_from(data, 0)
        if not flags & _RPC_FIELDS:
            return None, None, bool(flags & _FLAG_HEADERS)
        if flags & 1:
            return rpc_fields_of(_decode_properties(data))  # continuation flags: never seen
        pos = 2
        if flags & _BEFORE_CORRELATION_ID:  # RPC requests and replies seldom have these
            if flags & _FLAG_CONTENT_TYPE:
                pos += 1 + data[pos]
            if flags & _FLAG_CONTENT_ENCODING:
                pos += 1 + data[pos]
            if flags & _FLAG_HEADERS:
                pos += 4 + _U32.unpack_from(data, pos)[0]
            if flags & _FLAG_DELIVERY_MODE:
                pos += 1
            if flags & _FLAG_PRIORITY:
                pos += 1
        correlation_id = reply_to = None
        size = len(data)
        if flags & _FLAG_CORRELATION_ID:
            end = pos + 1 + data[pos]
            if end > size:
                raise ValueError("short string runs past the end of the header")
            correlation_id = _decode_str(data[pos + 1 : end])
            pos = end
        if flags & _FLAG_REPLY_TO:
            end = pos + 1 + data[pos]
            if end > size:
                raise ValueError("short string runs past the end of the header")
            reply_to = _decode_str(data[pos + 1 : end])
    except (struct.error, IndexError, ValueError) as exc:
        raise RemoteProtocolError(f"malformed content header properties: {exc}", 502) from exc
    return correlation_id, reply_to, bool(flags & _FLAG_HEADERS)


_RPC_FIELDS = _FLAG_CORRELATION_ID | _FLAG_REPLY_TO
_BEFORE_CORRELATION_ID = (
    _FLAG_CONTENT_TYPE
    | _FLAG_CONTENT_ENCODING
    | _FLAG_HEADERS
    | _FLAG_DELIVERY_MODE
    | _FLAG_PRIORITY
)


def rpc_fields_of(properties: Properties) -> tuple[str | None, str | None, bool]:
    """What `decode_rpc_fields` gives, of properties already decoded."""
    return properties.correlation_id, properties.reply_to, properties.headers is not None


def _read_shortstrs(
    properties: Properties,
    data: bytes,
    pos: int,
    size: int,
    flags: int,
    fields: tuple[tuple[int, str], ...],
) -> int:
    """Decode the short-string properties of `fields` that `flags` marks present; the new pos."""
    for flag, name in fields:
        if flags & flag:
            end = pos + 1 + data[pos]
            if end > size:
                raise ValueError("short string runs past the end of the header")
            setattr(properties, name, _decode_str(data[pos + 1 : end]))
            pos = end
    return pos


# -- frames out --------------------------------------------------------------------


def method_frame(channel: int, method: PamqpMethod) -> bytes:
    """Any method, field by field through pamqp's encoders (the rare, non-per-message ones).

    pamqp's own `marshal()` first validates names against a pattern narrower
    than RabbitMQ's (it refuses e.g. "données" or "jobs[1]"); the driver checks
    lengths itself, so the encoding is done here without that step.
    """
    parts = [_CLASS_METHOD_INT.pack(method.index)]
    bits = bit_count = 0
    for name in method.__slots__:
        kind = method.amqp_type(name)
        value: Any = getattr(method, name, 0)
        if kind == "bit":
            if value:
                bits |= 1 << bit_count
            bit_count += 1
            if bit_count == 8:
                parts.append(_U8.pack(bits))
                bits = bit_count = 0
            continue
        if bit_count:
            parts.append(_U8.pack(bits))
            bits = bit_count = 0
        if kind == "table":
            parts.append(encode_table(value, name))
        else:
            parts.append(pamqp_encode.by_type(value, kind))
    if bit_count:
        parts.append(_U8.pack(bits))
    payload = b"".join(parts)
    return FRAME_HEADER_STRUCT.pack(FRAME_METHOD, channel, len(payload)) + payload + FRAME_END_BYTE


_CONTENT_HEADER = struct.Struct(">BHIHHQ")  # frame type, channel, size; class, weight, body size
_END_THEN_BODY = struct.Struct(">BBHI")  # the header's frame end, then a body frame's header
_publish_methods: dict[tuple[int, bytes, bytes, bool], bytes] = {}
_PUBLISH_METHODS_LIMIT = 1024


def _publish_method(
    channel: int, exchange_bytes: bytes, routing_key_bytes: bytes, mandatory: bool
) -> bytes:
    """The basic.publish frame, whole: a publisher sends the same few over and over."""
    key = (channel, exchange_bytes, routing_key_bytes, mandatory)
    frame = _publish_methods.get(key)
    if frame is None:
        size = 4 + 2 + len(exchange_bytes) + len(routing_key_bytes) + 1
        frame = b"".join(
            (
                FRAME_HEADER_STRUCT.pack(FRAME_METHOD, channel, size),
                b"\x00\x3c\x00\x28\x00\x00",
                exchange_bytes,
                routing_key_bytes,
                b"\x01\xce" if mandatory else b"\x00\xce",
            )
        )
        if len(_publish_methods) >= _PUBLISH_METHODS_LIMIT:
            _publish_methods.clear()
        _publish_methods[key] = frame
    return frame


def publish_frames(
    channel: int,
    exchange_bytes: bytes,
    routing_key_bytes: bytes,
    mandatory: bool,
    body: bytes,
    properties_bytes: bytes,
    max_body_frame: int,
) -> list[bytes]:
    """basic.publish, its content header and as many body frames as frame_max needs.

    `exchange_bytes` and `routing_key_bytes` are already length-prefixed short
    strings. Returns pieces for one `b"".join` by the caller (or writelines):
    six for a body that fits one frame.
    """
    method = _publish_methods.get((channel, exchange_bytes, routing_key_bytes, mandatory))
    if method is None:
        method = _publish_method(channel, exchange_bytes, routing_key_bytes, mandatory)
    body_size = len(body)
    header = _CONTENT_HEADER.pack(
        FRAME_HEADER, channel, 12 + len(properties_bytes), 60, 0, body_size
    )
    if body_size <= max_body_frame:
        if body_size:
            return [
                method,
                header,
                properties_bytes,
                _END_THEN_BODY.pack(FRAME_END, FRAME_BODY, channel, body_size),
                body,
                FRAME_END_BYTE,
            ]
        return [method, header, properties_bytes, FRAME_END_BYTE]
    out = [method, header, properties_bytes, FRAME_END_BYTE]
    view = memoryview(body)
    for start in range(0, body_size, max_body_frame):
        chunk = view[start : start + max_body_frame]
        out.append(FRAME_HEADER_STRUCT.pack(FRAME_BODY, channel, len(chunk)))
        out.append(bytes(chunk))
        out.append(FRAME_END_BYTE)
    return out


def ack_frame(channel: int, method: int, delivery_tag: int, bits: int) -> bytes:
    """basic.ack / basic.nack / basic.reject: same layout, 13-byte payload."""
    return _ACK_FRAME.pack(FRAME_METHOD, channel, 13, method, delivery_tag, bits, FRAME_END)


# -- frames in ----------------------------------------------------------------------


def decode_method(payload: bytes) -> PamqpMethod:
    """Decode a method frame payload through pamqp, as a protocol error on failure."""
    if len(payload) < 4:
        raise RemoteProtocolError("method frame shorter than its class and method ids", 502)
    (index,) = _CLASS_METHOD_INT.unpack_from(payload, 0)
    cls = commands.INDEX_MAPPING.get(index)
    if cls is None:
        raise RemoteProtocolError(f"unknown method 0x{index:08x}", 540)
    if cls is commands.Basic.RecoverAsync:
        # Client-to-server only, and pamqp's constructor warns (an error under -W error).
        raise RemoteProtocolError("unexpected Basic.RecoverAsync from the broker", 503)
    method: PamqpMethod = cls()
    try:
        method.unmarshal(payload[4:])
    except (struct.error, ValueError, IndexError, TypeError, KeyError, RecursionError) as exc:
        raise RemoteProtocolError(f"malformed {method.name} frame: {exc}", 502) from exc
    return method


def decode_header_prefix(payload: bytes) -> tuple[int, int]:
    """(class id, body size) of a content header payload."""
    if len(payload) < 14:
        raise RemoteProtocolError("content header frame is truncated", 502)
    class_id, _weight, body_size = _HEADER_PREFIX.unpack_from(payload, 0)
    return class_id, body_size


U64 = _U64
U16 = _U16
decode_str = _decode_str
CLASS_METHOD_INT = _CLASS_METHOD_INT
