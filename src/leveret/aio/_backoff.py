"""How long to wait between reconnection attempts: exponential backoff, full jitter."""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from dataclasses import dataclass

__all__ = ["Backoff"]


@dataclass(frozen=True, slots=True)
class Backoff:
    """Delays of `uniform(0, min(maximum, initial * multiplier**n))` seconds.

    Full jitter spreads a fleet of clients that lost the same broker, so they
    do not all knock at once when it comes back. `max_attempts` None retries
    forever; otherwise the connection gives up (and fails every waiter with
    the last error) after that many failed attempts in a row.
    """

    initial: float = 0.2
    maximum: float = 10.0
    multiplier: float = 2.0
    max_attempts: int | None = None

    def __post_init__(self) -> None:
        for name in ("initial", "maximum", "multiplier"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
                raise ValueError(f"Backoff.{name} must be a positive number, got {value!r}")
        if self.multiplier < 1:
            raise ValueError(f"Backoff.multiplier must be at least 1, got {self.multiplier!r}")
        if self.max_attempts is not None and (
            not isinstance(self.max_attempts, int) or self.max_attempts < 1
        ):
            raise ValueError(
                f"Backoff.max_attempts must be None or >= 1, got {self.max_attempts!r}"
            )

    def delays(self, rng: random.Random | None = None) -> Iterator[float]:
        """One delay per attempt; ends after `max_attempts` (never, when None)."""
        uniform = (rng or random).uniform
        attempt = 0
        ceiling = self.initial
        while self.max_attempts is None or attempt < self.max_attempts:
            yield uniform(0.0, ceiling)
            attempt += 1
            ceiling = min(self.maximum, ceiling * self.multiplier)
