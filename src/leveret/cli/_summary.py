"""What `leveret bench` reports: nearest-rank percentiles and the final summary.

Pure functions and plain data, so the arithmetic is unit-tested without a broker.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

__all__ = ["PERCENTILES", "BenchSummary", "Latency", "percentile"]

PERCENTILES = (50, 75, 95, 99)


def percentile(ordered: Sequence[int], p: float) -> int:
    """Nearest-rank percentile of an ascending sequence: the smallest value with at least
    p% of the samples at or below it (so it is always a measured value, never interpolated)."""
    if not ordered:
        raise ValueError("percentile of no samples")
    if not 0 < p <= 100:
        raise ValueError(f"percentile must be in (0, 100], got {p!r}")
    rank = math.ceil(p / 100 * len(ordered))
    return ordered[max(rank, 1) - 1]


@dataclass(frozen=True, slots=True)
class Latency:
    """Latency percentiles in microseconds over `count` samples."""

    count: int
    p50: float
    p75: float
    p95: float
    p99: float
    max: float

    @classmethod
    def from_ns(cls, samples: Iterable[int]) -> Latency | None:
        """Summarise nanosecond samples; None when there are none."""
        ordered = sorted(samples)
        if not ordered:
            return None
        p50, p75, p95, p99 = (percentile(ordered, p) / 1000 for p in PERCENTILES)
        return cls(len(ordered), p50, p75, p95, p99, ordered[-1] / 1000)


def _rate(count: int, seconds: float) -> float:
    return count / seconds if seconds > 0 else 0.0


@dataclass(frozen=True, slots=True)
class BenchSummary:
    """Counters and timings of one run; `lost` is None when there are no consumers."""

    queue: str
    queue_type: str
    producers: int
    consumers: int
    size: int
    published: int  # publish() calls made
    confirmed: int  # ... that the broker confirmed
    failed: int  # ... that raised (nacked, returned, timed out, connection error)
    consumed: int  # distinct messages of this run delivered (and acked)
    duplicates: int  # further deliveries of a message already consumed
    lost: int | None  # confirmed messages never consumed
    publish_seconds: float  # from the start until the last publish ended
    consume_seconds: float  # from the start until the last delivery
    confirm_latency: Latency | None  # publish() call to its confirm
    delivery_latency: Latency | None  # publish() call to the consumer receiving it
    interrupted: bool = False
    error: str | None = None

    @property
    def ok(self) -> bool:
        """Every publish confirmed and, with consumers, every confirmed message consumed."""
        return (
            self.error is None
            and not self.interrupted
            and self.failed == 0
            and self.confirmed == self.published
            and not self.lost
        )

    def rates(self) -> dict[str, float]:
        return {
            "published_per_s": _rate(self.published, self.publish_seconds),
            "confirmed_per_s": _rate(self.confirmed, self.publish_seconds),
            "consumed_per_s": _rate(self.consumed, self.consume_seconds),
        }

    def to_json(self) -> dict[str, Any]:
        """One flat-ish JSON object; latencies in microseconds."""
        data = asdict(self)
        data["confirm_latency_us"] = data.pop("confirm_latency")
        data["delivery_latency_us"] = data.pop("delivery_latency")
        data.update(self.rates())
        data["ok"] = self.ok
        return data

    def render(self) -> str:
        """The human-readable summary, several lines."""
        rates = self.rates()
        lines = [
            f"queue {self.queue} ({self.queue_type}), {self.producers} producer(s), "
            f"{self.consumers} consumer(s), {self.size} B messages",
            f"published {self.published:>12,}  {rates['published_per_s']:>12,.0f} msg/s"
            f"  in {self.publish_seconds:.2f} s",
            f"confirmed {self.confirmed:>12,}  {rates['confirmed_per_s']:>12,.0f} msg/s"
            f"  ({self.failed} failed)",
        ]
        if self.consumers:
            lines.append(
                f"consumed  {self.consumed:>12,}  "
                f"{rates['consumed_per_s']:>12,.0f} msg/s"
                f"  ({self.duplicates} duplicates, {self.lost} lost)"
            )
        header = "".join(f"{'p' + str(p):>10}" for p in PERCENTILES) + f"{'max':>10}"
        lines.append(f"{'latency (ms)':<20}{header}")
        for label, latency in (
            ("publish -> confirm", self.confirm_latency),
            ("publish -> delivery", self.delivery_latency),
        ):
            if latency is not None:
                values = (latency.p50, latency.p75, latency.p95, latency.p99, latency.max)
                lines.append(f"{label:<20}" + "".join(f"{v / 1000:>10.2f}" for v in values))
        if self.interrupted:
            lines.append("interrupted: the figures cover the run until Ctrl-C")
        if self.error is not None:
            lines.append(f"stopped by an error: {self.error}")
        return "\n".join(lines)
