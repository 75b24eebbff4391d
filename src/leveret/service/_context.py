"""What a handler knows about the message it handles, and how trace ids travel on.

The context of the request or event being handled sits in a ContextVar, so
any call or event a handler makes (in its task or the tasks it starts)
carries the same trace id and context without the handler passing them.
"""

from __future__ import annotations

import contextvars
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leveret.aio import Message

__all__ = ["CallContext", "current_context", "new_trace_id"]


@dataclass(frozen=True, slots=True)
class CallContext:
    """Passed to every handler: who asked, on behalf of whom, as part of which trace."""

    service: str  # the service handling it
    method: str  # the method, or the event's topic
    kind: str  # "request", "command" or "event"
    trace_id: str
    context: dict[str, Any] = field(default_factory=dict)  # e.g. the caller's user claims
    correlation_id: str = ""
    message: Message | None = None  # the raw delivery, for headers and redelivered


_current: contextvars.ContextVar[CallContext | None] = contextvars.ContextVar(
    "leveret_service_context", default=None
)


def current_context() -> CallContext | None:
    """The context of the request or event being handled in this task, if any."""
    return _current.get()


def new_trace_id() -> str:
    return uuid.uuid4().hex
