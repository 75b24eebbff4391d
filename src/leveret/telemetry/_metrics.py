"""The `conn.stats()` counters as OpenTelemetry observable counters.

Why observable: the driver already counts every publish, confirm and
delivery in plain ints; an observable counter reads them when the metric
reader collects, so exporting metrics adds nothing per message. OpenTelemetry
keeps one instrument per name and meter, so each meter provider gets one set
of instruments whose callbacks walk every live connection registered with
it (held weakly: a connection that is gone stops being reported).
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Iterable
from typing import Any, Protocol

from opentelemetry.metrics import CallbackOptions, Meter, Observation

from leveret.aio._stats import ConnectionStats

__all__ = ["COUNTERS", "register"]

# (instrument name, ConnectionStats field, description); the first two are the
# semantic conventions' names, the rest leveret's own.
COUNTERS: tuple[tuple[str, str, str], ...] = (
    ("messaging.client.sent.messages", "published", "Messages handed to the broker"),
    ("messaging.client.consumed.messages", "delivered", "Messages received from the broker"),
    ("leveret.publish.confirmed", "confirmed", "Publishes the broker confirmed"),
    ("leveret.publish.nacked", "nacked", "Publishes the broker refused (basic.nack)"),
    ("leveret.publish.returned", "returned", "Mandatory publishes no queue took"),
    ("leveret.delivery.redelivered", "redelivered", "Deliveries flagged redelivered"),
    ("leveret.delivery.acked", "acked", "Deliveries acknowledged"),
    ("leveret.delivery.rejected", "rejected", "Deliveries nacked or rejected"),
    ("leveret.delivery.dropped", "dropped", "Buffered deliveries dropped with a dead channel"),
    ("leveret.connection.reconnects", "reconnects", "Recoveries of the main connection"),
    (
        "leveret.connection.publisher_reconnects",
        "publisher_reconnects",
        "Recoveries of the publishing connection",
    ),
)


class Observed(Protocol):
    """What a registered connection offers: its counters."""

    def stats(self) -> ConnectionStats: ...


class _Registry:
    """One meter's instruments and the connections they report."""

    def __init__(self, meter: Meter) -> None:
        self.sources: weakref.WeakKeyDictionary[Observed, dict[str, Any]] = (
            weakref.WeakKeyDictionary()
        )
        for name, field, description in COUNTERS:
            meter.create_observable_counter(
                name,
                callbacks=[self._callback(field)],
                unit="{message}" if "reconnects" not in field else "{reconnect}",
                description=description,
            )

    def _callback(self, field: str) -> Any:
        def observe(options: CallbackOptions) -> Iterable[Observation]:
            for source, attributes in list(self.sources.items()):
                yield Observation(getattr(source.stats(), field), attributes)

        return observe


_registries: dict[int, tuple[object, _Registry]] = {}
_lock = threading.Lock()  # connections on several event loops may register at once


def register(
    meter_provider: object, meter: Meter, source: Observed, attributes: dict[str, Any]
) -> None:
    """Report `source.stats()` through `meter_provider`'s instruments, with `attributes`."""
    with _lock:
        entry = _registries.get(id(meter_provider))
        if entry is None or entry[0] is not meter_provider:
            entry = (meter_provider, _Registry(meter))
            _registries[id(meter_provider)] = entry
        entry[1].sources[source] = attributes
