"""Bodies beyond bytes: text and JSON out, decoding by content type in, message ids.

`publish` takes bytes as they are (the fast path); a str goes out as UTF-8
with content type text/plain; dicts, lists, numbers, dataclasses and
pydantic models go out as JSON with content type application/json. The
receiving side decodes by content type, and validates into a pydantic model
when asked, raising `PayloadError` that names what was wrong.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
import os
import secrets
import struct
import time
from collections.abc import Iterator
from typing import Any, TypeVar

from leveret.exceptions import PayloadError

__all__ = [
    "JSON_CONTENT_TYPE",
    "TEXT_CONTENT_TYPE",
    "decode_body",
    "decode_json",
    "decode_model",
    "decode_text",
    "encode_body",
    "new_message_id",
    "stamp",
    "timestamp_bytes",
]

JSON_CONTENT_TYPE = "application/json"
TEXT_CONTENT_TYPE = "text/plain"

_JSON_TYPES = (dict, list, tuple, int, float)
_compact = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode

Model = TypeVar("Model")


def encode_body(body: object, what: str = "body") -> tuple[bytes, str | None]:
    """The wire bytes of `body` and the content type they imply (None for raw bytes)."""
    if isinstance(body, bytes):
        return body, None
    if isinstance(body, (bytearray, memoryview)):
        return bytes(body), None
    if isinstance(body, str):
        return body.encode("utf-8"), TEXT_CONTENT_TYPE
    dump_json = getattr(body, "model_dump_json", None)  # pydantic v2 models, without importing it
    if dump_json is not None and callable(dump_json) and not isinstance(body, type):
        return str(dump_json()).encode("utf-8"), JSON_CONTENT_TYPE
    if dataclasses.is_dataclass(body) and not isinstance(body, type):
        body = dataclasses.asdict(body)
    if isinstance(body, _JSON_TYPES):  # bool is an int
        try:
            return _compact(body).encode("utf-8"), JSON_CONTENT_TYPE
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{what} is not JSON-serialisable ({exc}): {body!r:.80}") from None
    raise TypeError(
        f"{what} must be bytes, bytearray, memoryview, str or a JSON-able object (dict, list, "
        f"number, dataclass, pydantic model), got {type(body).__name__}: {body!r:.80}"
    )


def decode_json(body: bytes, content_type: str | None) -> Any:
    try:
        return json.loads(body)
    except ValueError as exc:  # UnicodeDecodeError and JSONDecodeError both
        raise PayloadError(
            f"body is not valid JSON ({exc}; content type {content_type!r}): {body[:80]!r}"
        ) from exc


def decode_model(body: bytes, model: type[Model]) -> Model:
    """Validate a JSON body into a pydantic model class."""
    validate = getattr(model, "model_validate_json", None)
    if validate is None:
        raise TypeError(
            f"model must be a pydantic model class (with model_validate_json), got {model!r}"
        )
    try:
        return validate(body)  # type: ignore[no-any-return]
    except ValueError as exc:  # pydantic.ValidationError is a ValueError
        raise PayloadError(f"body does not match {model.__name__}: {exc}") from exc


def decode_body(body: bytes, content_type: str | None, content_encoding: str | None) -> Any:
    """JSON for application/json (and +json), str for text/*, the bytes otherwise."""
    media = (content_type or "").split(";", 1)[0].strip().lower()
    if media == JSON_CONTENT_TYPE or media.endswith("+json"):
        return decode_json(body, content_type)
    if media.startswith("text/"):
        return decode_text(body, charset_of(content_type or "") or content_encoding or "utf-8")
    return body


def decode_text(body: bytes, charset: str) -> str:
    try:
        return body.decode(charset)
    except (LookupError, UnicodeDecodeError) as exc:
        raise PayloadError(f"body is not {charset} text ({exc}): {body[:80]!r}") from exc


def charset_of(content_type: str) -> str | None:
    for parameter in content_type.split(";")[1:]:
        name, _, value = parameter.partition("=")
        if name.strip().lower() == "charset" and value.strip():
            return value.strip().strip('"')
    return None


# -- message ids and timestamps -------------------------------------------------------------------

# A message id is a random 64-bit prefix (unique across processes and restarts) and a
# counter. Every publish without properties takes one, so ids come encoded, already
# length-prefixed as AMQP short strings, in blocks of a thousand: the decimal digits of
# n >= 1000 are those of n // 1000 followed by n % 1000 in three digits, so a block
# costs one formatting and a thousand concatenations instead of a thousand formattings.
_THREE_DIGITS = [b"%03d" % low for low in range(1000)]


def _id_block(prefix: bytes, high: int) -> list[bytes]:
    """The encoded ids of counter values 1000 * high to 1000 * high + 999 (from 1 for high 0)."""
    if high == 0:
        ids = [prefix + b"%d" % n for n in range(1, 1000)]
        return [bytes((len(i),)) + i for i in ids]
    head = prefix + b"%d" % high
    head = bytes((len(head) + 3,)) + head
    return [head + low for low in _THREE_DIGITS]


def _encoded_ids(prefix: bytes) -> Iterator[bytes]:
    return itertools.chain.from_iterable(_id_block(prefix, high) for high in itertools.count())


_id_prefix = secrets.token_hex(8)
_ids = _encoded_ids(f"{_id_prefix}-".encode())


def _new_process_prefix() -> None:
    # A forked child must not repeat its parent's ids.
    global _id_prefix, _ids
    _id_prefix = secrets.token_hex(8)
    _ids = _encoded_ids(f"{_id_prefix}-".encode())


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process_prefix)


def new_message_id() -> str:
    """Unique across processes and restarts (a random 64-bit prefix) and cheap (a counter)."""
    return next(_ids)[1:].decode()


# The current second, encoded, and the span of time.time() it holds for (the wall clock
# may also step back).
_U64 = struct.Struct(">Q")
_second_start = math.inf
_second_end = -math.inf
_last_timestamp = b""


def _new_second(now: float) -> bytes:
    global _second_start, _second_end, _last_timestamp
    second = math.floor(now)
    _second_start = second
    _second_end = second + 1
    _last_timestamp = _U64.pack(second)
    return _last_timestamp


def timestamp_bytes() -> bytes:
    """The current time as the wire's 64-bit seconds, encoded once per second."""
    now = time.time()
    if _second_start <= now < _second_end:
        return _last_timestamp
    return _new_second(now)


def stamp(prefix: bytes) -> bytes:
    """`prefix` (from `stamp_prefix`) completed with a new message id and the current time.

    The same bytes as `stamped_properties(prefix, new_message_id(), timestamp_bytes())`,
    built in one call: every publish without properties comes through here.
    """
    now = time.time()
    if _second_start <= now < _second_end:
        return prefix + next(_ids) + _last_timestamp
    return prefix + next(_ids) + _new_second(now)
