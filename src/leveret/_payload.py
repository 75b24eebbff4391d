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
import os
import secrets
import struct
import time
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

_id_prefix = secrets.token_hex(8)
_id_prefix_bytes = f"{_id_prefix}-".encode()
_id_counter = itertools.count(1)
_SHORTSTR_LENGTHS = [bytes((n,)) for n in range(256)]


def _new_process_prefix() -> None:
    # A forked child must not repeat its parent's ids.
    global _id_prefix, _id_prefix_bytes, _id_counter
    _id_prefix = secrets.token_hex(8)
    _id_prefix_bytes = f"{_id_prefix}-".encode()
    _id_counter = itertools.count(1)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_new_process_prefix)


def new_message_id() -> str:
    """Unique across processes and restarts (a random 64-bit prefix) and cheap (a counter)."""
    return f"{_id_prefix}-{next(_id_counter)}"


_U64 = struct.Struct(">Q")
_last_second = -1
_last_timestamp = b""


def timestamp_bytes() -> bytes:
    """The current time as the wire's 64-bit seconds, encoded once per second."""
    global _last_second, _last_timestamp
    second = int(time.time())
    if second != _last_second:
        _last_second = second
        _last_timestamp = _U64.pack(second)
    return _last_timestamp


def stamp(prefix: bytes) -> bytes:
    """`prefix` (from `stamp_prefix`) completed with a new message id and the current time.

    The same bytes as `stamped_properties(prefix, new_message_id(), timestamp_bytes())`,
    built in one call: every publish without properties comes through here.
    """
    global _last_second, _last_timestamp
    digits = b"%d" % next(_id_counter)
    second = int(time.time())
    if second != _last_second:
        _last_second = second
        _last_timestamp = _U64.pack(second)
    return b"".join(
        (
            prefix,
            _SHORTSTR_LENGTHS[len(_id_prefix_bytes) + len(digits)],
            _id_prefix_bytes,
            digits,
            _last_timestamp,
        )
    )
