"""The 14 basic properties of an AMQP message, as one plain value object."""

from __future__ import annotations

import datetime
import decimal
from dataclasses import dataclass, fields
from typing import Any, TypeAlias

__all__ = ["FieldTable", "FieldValue", "Properties"]

FieldValue: TypeAlias = (
    bool
    | int
    | float
    | decimal.Decimal
    | str
    | bytes
    | bytearray
    | datetime.datetime
    | list[Any]
    | dict[str, Any]
    | None
)
"""What a header or argument value may be; see `encode_table` for the wire types."""

FieldTable: TypeAlias = dict[str, Any]


@dataclass(slots=True, kw_only=True)
class Properties:
    """Message properties (AMQP `basic` content header), all optional.

    `message_type` is the AMQP `type` property (renamed so it does not shadow
    the builtin). `timestamp` is a `datetime`; naive values are taken as UTC
    and received values are timezone-aware UTC, with whole-second precision as
    on the wire. `delivery_mode` 2 means persistent.
    """

    content_type: str | None = None
    content_encoding: str | None = None
    headers: FieldTable | None = None
    delivery_mode: int | None = None
    priority: int | None = None
    correlation_id: str | None = None
    reply_to: str | None = None
    expiration: str | None = None
    message_id: str | None = None
    timestamp: datetime.datetime | None = None
    message_type: str | None = None
    user_id: str | None = None
    app_id: str | None = None
    cluster_id: str | None = None

    def replace(self, **changes: Any) -> Properties:
        """A copy with some fields changed (dataclasses.replace, without the import)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        values.update(changes)
        return Properties(**values)


EMPTY_PROPERTIES = Properties()
