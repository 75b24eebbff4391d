"""Payload encryption for the mesh: AES-GCM (authenticated) with a key per service.

Only the payload (params, event payload, result or error) is sealed; the
envelope's routing metadata stays clear and is bound to the ciphertext as
associated data, so a sealed payload cannot be moved to another method,
topic or correlation id unnoticed. Needs the `cryptography` package
(`pip install leveret[crypto]`).
"""

from __future__ import annotations

import base64
import json
import os
from collections.abc import Mapping
from typing import Any

from leveret.service._envelope import Envelope, EnvelopeError

__all__ = ["Keys", "generate_key"]

_NONCE = 12


def generate_key() -> bytes:
    """A new random 256-bit key."""
    return os.urandom(32)


class Keys:
    """Keys by service name: requests and commands use the target service's key,
    responses the responding service's, events the key of the topic's first word
    (the domain, "orders" for "orders.created")."""

    def __init__(self, keys: Mapping[str, bytes]) -> None:
        try:
            from cryptography.hazmat.primitives.ciphers.aead import AESGCM
        except ImportError:
            raise ImportError(
                "payload encryption needs the cryptography package: pip install 'leveret[crypto]'"
            ) from None
        self._ciphers: dict[str, Any] = {}
        for service, key in keys.items():
            if not isinstance(key, bytes) or len(key) not in (16, 24, 32):
                raise ValueError(
                    f"the key for {service!r} must be 16, 24 or 32 bytes, got {key!r:.20}"
                )
            self._ciphers[service] = AESGCM(key)

    def _cipher(self, envelope: Envelope) -> Any:
        owner = envelope.topic.split(".", 1)[0] if envelope.kind == "event" else envelope.service
        cipher = self._ciphers.get(owner)
        if cipher is None:
            raise EnvelopeError(f"no encryption key for {owner!r}")
        return cipher

    def seal(self, envelope: Envelope) -> None:
        """Replace the envelope's payload fields with their ciphertext."""
        cipher = self._cipher(envelope)
        clear = json.dumps(
            {
                "params": envelope.params,
                "payload": envelope.payload,
                "result": envelope.result,
                "error": envelope.error,
            },
            separators=(",", ":"),
        ).encode()
        nonce = os.urandom(_NONCE)
        sealed = cipher.encrypt(nonce, clear, _associated(envelope))
        envelope.encrypted = base64.b64encode(nonce + sealed).decode("ascii")
        envelope.params = envelope.payload = envelope.result = None
        envelope.error = None

    def open(self, envelope: Envelope) -> None:
        """Decrypt in place; EnvelopeError if the key is wrong or anything was altered."""
        if envelope.encrypted is None:
            return
        cipher = self._cipher(envelope)
        try:
            raw = base64.b64decode(envelope.encrypted, validate=True)
            clear = cipher.decrypt(raw[:_NONCE], raw[_NONCE:], _associated(envelope))
        except Exception as exc:  # noqa: BLE001 - InvalidTag, bad base64: all one answer
            raise EnvelopeError(
                f"cannot decrypt the {envelope.kind} payload (wrong key or altered message: "
                f"{type(exc).__name__})"
            ) from None
        data = json.loads(clear)
        envelope.params = data["params"]
        envelope.payload = data["payload"]
        envelope.result = data["result"]
        envelope.error = data["error"]
        envelope.encrypted = None


def _associated(envelope: Envelope) -> bytes:
    return "\x00".join(
        (
            envelope.kind,
            envelope.service,
            envelope.method,
            envelope.topic,
            envelope.correlation_id,
            envelope.trace_id,
        )
    ).encode()
