"""What the user declared, recorded in order so a new connection can declare it again.

Only what went through this connection is recorded: passive declares check
and record nothing, deletes and unbinds forget. A server-named queue is
recorded under the name the broker gave it; when recovery gets a new name,
`rename_queue` moves its bindings (and the driver moves its consumers).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from leveret.protocol._codec import encode_table

__all__ = ["ExchangeRecord", "QueueBindingRecord", "QueueRecord", "Topology"]


@dataclass(slots=True)
class ExchangeRecord:
    name: str
    type: str
    durable: bool
    auto_delete: bool
    internal: bool
    arguments: dict[str, Any] | None


@dataclass(slots=True)
class QueueRecord:
    name: str
    server_named: bool
    durable: bool
    exclusive: bool
    auto_delete: bool
    arguments: dict[str, Any] | None


@dataclass(slots=True)
class QueueBindingRecord:
    """A queue-to-exchange or (with `to_exchange`) exchange-to-exchange binding."""

    destination: str
    source: str
    routing_key: str
    arguments: dict[str, Any] | None
    to_exchange: bool = False
    key: tuple[str, str, str, bytes, bool] = field(init=False)

    def __post_init__(self) -> None:
        self.key = _binding_key(
            self.destination, self.source, self.routing_key, self.arguments, self.to_exchange
        )


def _binding_key(
    destination: str,
    source: str,
    routing_key: str,
    arguments: dict[str, Any] | None,
    to_exchange: bool,
) -> tuple[str, str, str, bytes, bool]:
    return (destination, source, routing_key, encode_table(arguments, "arguments"), to_exchange)


class Topology:
    """Insertion-ordered records of exchanges, queues and bindings."""

    def __init__(self) -> None:
        self.exchanges: dict[str, ExchangeRecord] = {}
        self.queues: dict[str, QueueRecord] = {}
        self.bindings: dict[tuple[str, str, str, bytes, bool], QueueBindingRecord] = {}

    def record_exchange(self, record: ExchangeRecord) -> None:
        if record.name.startswith("amq.") or not record.name:
            return  # predefined exchanges always exist
        self.exchanges.pop(record.name, None)
        self.exchanges[record.name] = record

    def forget_exchange(self, name: str) -> None:
        self.exchanges.pop(name, None)
        for key, binding in list(self.bindings.items()):
            if binding.source == name or (binding.to_exchange and binding.destination == name):
                del self.bindings[key]

    def record_queue(self, record: QueueRecord) -> None:
        self.queues.pop(record.name, None)
        self.queues[record.name] = record

    def forget_queue(self, name: str) -> None:
        self.queues.pop(name, None)
        for key, binding in list(self.bindings.items()):
            if not binding.to_exchange and binding.destination == name:
                del self.bindings[key]

    def record_binding(self, record: QueueBindingRecord) -> None:
        self.bindings.pop(record.key, None)
        self.bindings[record.key] = record

    def forget_binding(
        self,
        destination: str,
        source: str,
        routing_key: str,
        arguments: dict[str, Any] | None,
        to_exchange: bool,
    ) -> None:
        self.bindings.pop(
            _binding_key(destination, source, routing_key, arguments, to_exchange), None
        )

    def rename_queue(self, old: str, new: str) -> None:
        """A server-named queue came back under a new name: its bindings follow it."""
        if old == new:
            return
        record = self.queues.pop(old, None)
        if record is not None:
            record.name = new
            self.queues[new] = record
        for key, binding in list(self.bindings.items()):
            if not binding.to_exchange and binding.destination == old:
                del self.bindings[key]
                binding.destination = new
                binding.key = _binding_key(
                    new, binding.source, binding.routing_key, binding.arguments, False
                )
                self.bindings[binding.key] = binding
