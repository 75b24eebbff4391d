"""Message counters: plain ints bumped on paths the driver runs anyway, read by `stats()`.

Why plain ints: the publish and delivery paths cost a few microseconds a
message, and a lock, a dict lookup or a clock read per message would show.
An attribute increment on an object already at hand is all a counter costs;
everything else (summing, snapshotting, exporting to OpenTelemetry) happens
when someone asks. The event loop is the only writer, so no lock is needed.
"""

from __future__ import annotations

from dataclasses import dataclass, fields

__all__ = ["ConnectionStats", "Counters", "snapshot"]


class Counters:
    """The live counters of one connection (the driver's half of `ConnectionStats`)."""

    __slots__ = (
        "acked",
        "confirmed",
        "delivered",
        "dropped",
        "nacked",
        "published",
        "reconnects",
        "redelivered",
        "rejected",
        "returned",
    )

    def __init__(self) -> None:
        self.published = 0
        self.confirmed = 0
        self.nacked = 0
        self.returned = 0
        self.delivered = 0
        self.redelivered = 0
        self.acked = 0
        self.rejected = 0
        self.dropped = 0
        self.reconnects = 0


@dataclass(frozen=True, slots=True)
class ConnectionStats:
    """What a connection has done since it opened: `conn.stats()`.

    Publishing counts (`published` ... `returned`) include the publishing
    connection leveret opens beside the main one. `published` counts
    publishes handed to the broker (a message re-sent after a reconnect
    counts once); `confirmed`, `nacked` and `returned` are the broker's
    answers. `delivered` counts messages received by consumers and `get`
    (`redelivered` those flagged so), `acked` and `rejected` (nack or reject)
    the settlements sent, `dropped` the buffered deliveries thrown away
    because their channel died (the broker redelivers them). `reconnects`
    counts recoveries of the main connection, `publisher_reconnects` those
    of the publishing one. `in_flight` is how many publishes await their
    confirm right now.
    """

    published: int
    confirmed: int
    nacked: int
    returned: int
    delivered: int
    redelivered: int
    acked: int
    rejected: int
    dropped: int
    reconnects: int
    publisher_reconnects: int
    in_flight: int

    def as_dict(self) -> dict[str, int]:
        """The counters by name, e.g. for a JSON status endpoint."""
        return {field.name: getattr(self, field.name) for field in fields(self)}


def snapshot(main: Counters, publisher: Counters | None, in_flight: int) -> ConnectionStats:
    """One consistent view of a connection and its publishing connection."""
    other = publisher if publisher is not None else Counters()
    return ConnectionStats(
        published=main.published + other.published,
        confirmed=main.confirmed + other.confirmed,
        nacked=main.nacked + other.nacked,
        returned=main.returned + other.returned,
        delivered=main.delivered + other.delivered,
        redelivered=main.redelivered + other.redelivered,
        acked=main.acked + other.acked,
        rejected=main.rejected + other.rejected,
        dropped=main.dropped + other.dropped,
        reconnects=main.reconnects,
        publisher_reconnects=other.reconnects,
        in_flight=in_flight,
    )
