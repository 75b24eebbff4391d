"""The service layer's wire format: one versioned JSON envelope for every kind of message.

Routing metadata (kind, service, method or topic, correlation and trace ids)
stays readable even when the payload is encrypted, so the broker, the
dead-letter queue and a human reading it can tell what a message was.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Literal

__all__ = ["ENVELOPE_VERSION", "Envelope", "EnvelopeError", "Kind"]

ENVELOPE_VERSION = 1
Kind = Literal["request", "command", "response", "event"]
_KINDS = ("request", "command", "response", "event")


class EnvelopeError(ValueError):
    """A message that is not a valid envelope; it is dead-lettered with this as the reason."""


@dataclass(slots=True)
class Envelope:
    kind: Kind
    trace_id: str
    service: str = ""  # the target service (requests, commands) or the responder
    method: str = ""  # requests and commands
    topic: str = ""  # events
    params: Any = None  # requests and commands
    payload: Any = None  # events
    result: Any = None  # responses
    error: dict[str, str] | None = None  # responses: {"type": ..., "message": ...}
    correlation_id: str = ""
    context: dict[str, Any] = field(default_factory=dict)
    encrypted: str | None = None  # the encrypted params/payload/result, base64 text

    def to_json(self) -> bytes:
        data: dict[str, Any] = {"leveret": ENVELOPE_VERSION, "kind": self.kind}
        for name in ("service", "method", "topic", "correlation_id"):
            value = getattr(self, name)
            if value:
                data[name] = value
        data["trace_id"] = self.trace_id
        if self.context:
            data["context"] = self.context
        if self.encrypted is not None:
            data["encrypted"] = self.encrypted
        elif self.kind in ("request", "command"):
            data["params"] = self.params
        elif self.kind == "event":
            data["payload"] = self.payload
        else:
            data["result"] = self.result
        if self.error is not None:
            data["error"] = self.error
        try:
            return json.dumps(data, separators=(",", ":"), ensure_ascii=False).encode()
        except (TypeError, ValueError) as exc:
            raise TypeError(f"{self.kind} is not JSON-serialisable: {exc}") from None

    @classmethod
    def from_json(cls, body: bytes) -> Envelope:
        try:
            data = json.loads(body)
        except ValueError as exc:
            raise EnvelopeError(f"not JSON: {exc}") from None
        if not isinstance(data, dict):
            raise EnvelopeError(f"not a JSON object: {type(data).__name__}")
        version = data.get("leveret")
        if version != ENVELOPE_VERSION:
            raise EnvelopeError(f"unknown envelope version {version!r} (expected 1)")
        kind = data.get("kind")
        if kind not in _KINDS:
            raise EnvelopeError(f"unknown kind {kind!r}")
        text = {}
        for name in ("service", "method", "topic", "correlation_id", "trace_id"):
            value = data.get(name, "")
            if not isinstance(value, str):
                raise EnvelopeError(f"{name} must be a string, got {value!r:.60}")
            text[name] = value
        if kind in ("request", "command") and not (text["service"] and text["method"]):
            raise EnvelopeError(f"a {kind} needs service and method")
        if kind == "event" and not text["topic"]:
            raise EnvelopeError("an event needs a topic")
        context = data.get("context", {})
        if not isinstance(context, dict):
            raise EnvelopeError(f"context must be an object, got {context!r:.60}")
        error = data.get("error")
        if error is not None and not (
            isinstance(error, dict) and all(isinstance(v, str) for v in error.values())
        ):
            raise EnvelopeError(f"error must be an object of strings, got {error!r:.60}")
        encrypted = data.get("encrypted")
        if encrypted is not None and not isinstance(encrypted, str):
            raise EnvelopeError("encrypted must be a string")
        return cls(
            kind=kind,
            trace_id=text["trace_id"],
            service=text["service"],
            method=text["method"],
            topic=text["topic"],
            params=data.get("params"),
            payload=data.get("payload"),
            result=data.get("result"),
            error=error,
            correlation_id=text["correlation_id"],
            context=context,
            encrypted=encrypted,
        )
