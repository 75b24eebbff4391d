"""Publish deadlines: one timer for all the publishes of a connection.

A publish must end with PublishTimeout at its deadline even mid-reconnect,
but a timer handle per publish would cost more than the publish itself.
Deadlines almost always arrive in order (one `publish_timeout` for all), so
they queue in a FIFO; an earlier one (a shorter `timeout=`) goes to a heap.
Entries of confirmed publishes are dropped from the front as new ones come,
so the queue holds about what is in flight, not a timeout's worth of traffic.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections import deque
from collections.abc import Callable

from leveret.aio._channel import Outgoing

__all__ = ["Deadlines"]

_COMPACT_AT = 4096


class Deadlines:
    def __init__(self, loop: asyncio.AbstractEventLoop, expire: Callable[[Outgoing], None]) -> None:
        self._loop = loop
        self._expire = expire
        self._fifo: deque[Outgoing] = deque()  # records, not tuples: one allocation less
        self._heap: list[tuple[float, int, Outgoing]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = float("inf")  # when the timer fires (infinity: no timer)
        self._compact_at = _COMPACT_AT

    def __len__(self) -> int:
        return len(self._fifo) + len(self._heap)

    def watch(self, record: Outgoing, deadline: float) -> None:
        """Call `expire(record)` at `deadline` unless its future is done by then."""
        record.deadline = deadline
        fifo = self._fifo
        while fifo and fifo[0].future.done():
            fifo.popleft()
        if not fifo or fifo[-1].deadline <= deadline:
            fifo.append(record)
            if len(fifo) > self._compact_at:
                self._compact()
        else:
            heap = self._heap
            while heap and heap[0][2].future.done():
                heapq.heappop(heap)
            heapq.heappush(heap, (deadline, next(self._order), record))
        if deadline < self._timer_at:
            if self._timer is not None:
                self._timer.cancel()
            self._timer = self._loop.call_at(deadline, self._sweep)
            self._timer_at = deadline

    def cancel(self) -> None:
        """Forget every deadline (the connection is over; its publishes failed already)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
            self._timer_at = float("inf")
        self._fifo.clear()
        self._heap.clear()

    def _compact(self) -> None:
        # One slow publish at the front must not keep the confirmed ones behind it alive.
        self._fifo = deque(record for record in self._fifo if not record.future.done())
        self._compact_at = max(_COMPACT_AT, 2 * len(self._fifo))

    def _sweep(self) -> None:
        self._timer = None
        self._timer_at = float("inf")
        now = self._loop.time()
        fifo, heap = self._fifo, self._heap
        while fifo and (fifo[0].future.done() or fifo[0].deadline <= now):
            record = fifo.popleft()
            if not record.future.done():
                self._expire(record)
        while heap and (heap[0][2].future.done() or heap[0][0] <= now):
            _, _, record = heapq.heappop(heap)
            if not record.future.done():
                self._expire(record)
        upcoming = [fifo[0].deadline] if fifo else []
        if heap:
            upcoming.append(heap[0][0])
        if upcoming:
            self._timer_at = min(upcoming)
            self._timer = self._loop.call_at(self._timer_at, self._sweep)
