"""Publish deadlines: one timer for all the publishes of a connection, no table of its own.

A publish must end with PublishTimeout at its deadline even mid-reconnect,
but a timer handle per publish would cost more than the publish itself, and
so would any per-publish entry in a queue of deadlines. Deadlines almost
always arrive in send order (one `publish_timeout` for all), and each
publishing channel already keeps its unconfirmed publishes in send order: so
a publish only gets its `deadline` noted, and the sweep walks each channel's
table from the oldest until a deadline still ahead. A deadline earlier than
one noted before it (a shorter `timeout=`), and a publish sent again after a
reconnect (out of order in its new channel), go to a heap; publishes waiting
to be sent again are few and are all looked at.
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
from collections.abc import Callable, Iterable

from leveret.aio._channel import Outgoing

__all__ = ["Deadlines"]


class Deadlines:
    def __init__(
        self,
        loop: asyncio.AbstractEventLoop,
        expire: Callable[[Outgoing], None],
        in_send_order: Callable[[], Iterable[Iterable[Outgoing]]],
        waiting: Callable[[], Iterable[Outgoing]],
    ) -> None:
        """`in_send_order`: each channel's unconfirmed publishes, oldest first;
        `waiting`: the publishes waiting to be sent again, in any order."""
        self._loop = loop
        self._expire = expire
        self._in_send_order = in_send_order
        self._waiting = waiting
        self._latest = -math.inf  # the latest deadline noted in order
        self._heap: list[tuple[float, int, Outgoing]] = []
        self._order = itertools.count()
        self._timer: asyncio.TimerHandle | None = None
        self._timer_at = math.inf  # when the timer fires (infinity: no timer)

    def __len__(self) -> int:
        """Entries of its own: the publishes whose deadlines came out of order."""
        return len(self._heap)

    def watch(self, record: Outgoing, deadline: float) -> None:
        """Call `expire(record)` at `deadline` unless its future is done by then.

        `record` has just gone into its channel's table of unconfirmed publishes.
        """
        record.deadline = deadline
        if deadline >= self._latest:
            self._latest = deadline
        else:
            self._push(record)
        if deadline < self._timer_at:
            self._schedule(deadline)

    def watch_anywhere(self, record: Outgoing) -> None:
        """Keep watching `record.deadline` for a publish sent again, wherever it landed."""
        if record.deadline < math.inf:
            self._push(record)
            if record.deadline < self._timer_at:
                self._schedule(record.deadline)

    def cancel(self) -> None:
        """Forget every deadline (the connection is over; its publishes failed already)."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._timer_at = math.inf
        self._heap.clear()
        self._latest = -math.inf

    def _push(self, record: Outgoing) -> None:
        heap = self._heap
        while heap and heap[0][2].done():
            heapq.heappop(heap)
        heapq.heappush(heap, (record.deadline, next(self._order), record))

    def _schedule(self, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self._loop.call_at(when, self._sweep)
        self._timer_at = when

    def _sweep(self) -> None:
        self._timer = None
        self._timer_at = math.inf
        now = self._loop.time()
        upcoming = math.inf
        for records in self._in_send_order():
            for record in records:
                if record.done():
                    continue  # answered meanwhile, or expired by an earlier sweep
                if record.deadline > now:
                    upcoming = min(upcoming, record.deadline)
                    break  # every later one in this table is due later still
                self._expire(record)
        for record in self._waiting():
            if not record.done():
                if record.deadline <= now:
                    self._expire(record)
                else:
                    upcoming = min(upcoming, record.deadline)
        heap = self._heap
        while heap and (heap[0][2].done() or heap[0][0] <= now):
            _, _, record = heapq.heappop(heap)
            if not record.done():
                self._expire(record)
        if heap:
            upcoming = min(upcoming, heap[0][0])
        if upcoming < math.inf:
            self._schedule(upcoming)
