"""A progress bar on stderr for commands that send many messages.

On a terminal the bar redraws in place ten times a second; into a file or a
pipe it writes one line a second, so logs stay readable. stdout is left to
the command's own output.
"""

from __future__ import annotations

import time
from typing import TextIO

BAR_WIDTH = 30


def render(done: int, total: int | None, elapsed: float) -> str:
    """`[#########.........]   300/1,000  30%  1,234 msg/s`; without a total, count and rate."""
    rate = done / elapsed if elapsed > 0 else 0.0
    tail = f"{rate:,.0f} msg/s"
    if total is None:
        return f"{done:>9,} sent  {tail}"
    share = min(done / total, 1.0) if total else 1.0
    filled = round(share * BAR_WIDTH)
    bar = "#" * filled + "." * (BAR_WIDTH - filled)
    return f"[{bar}] {done:>{len(f'{total:,}')},}/{total:,} {share:>4.0%}  {tail}"


class Progress:
    """Counts confirmed messages and redraws at most every `interval` seconds."""

    def __init__(self, out: TextIO, total: int | None) -> None:
        self.out = out
        self.total = total
        self.done = 0
        self.tty = out.isatty()
        self.interval = 0.1 if self.tty else 1.0
        self.started = time.monotonic()
        self._shown = self.started

    def advance(self, count: int = 1) -> None:
        self.done += count
        now = time.monotonic()
        if now - self._shown >= self.interval:
            self._shown = now
            self._draw(now)

    def finish(self) -> None:
        """The final state, always drawn, ending the line."""
        self._draw(time.monotonic())
        if self.tty:
            self.out.write("\n")
            self.out.flush()

    def _draw(self, now: float) -> None:
        line = render(self.done, self.total, now - self.started)
        self.out.write(f"\r{line}\x1b[K" if self.tty else f"{line}\n")
        self.out.flush()
