"""What the threaded benchmark adapters share: N split over threads, and timing them all."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


def shares(n: int, threads: int) -> list[int]:
    """`n` messages over `threads` threads, as evenly as they go."""
    share, extra = divmod(n, threads)
    return [share + (1 if i < extra else 0) for i in range(threads)]


def run_timed(publisher: Callable[[int], None], counts: list[int], meter: Any) -> None:
    """Start a thread per count running `publisher(count)`, and time them until all end."""
    threads = [threading.Thread(target=publisher, args=(count,)) for count in counts]
    meter.start()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    meter.stop()
