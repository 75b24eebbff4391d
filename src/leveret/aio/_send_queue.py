"""Publishes that cannot go out at once wait here, in order, for one task to send them.

A publish waits when there is no publishing connection or channel yet, while
reconnecting, while the broker blocks publishing, while the socket drains, or
while `max_in_flight` publishes await their confirms. A task per waiting
publish made the first burst of a program (before its publishing channel is
open) cost five times what the rest did; one task for the whole queue sends
them in the order they were made, and no later publish overtakes them.
"""

from __future__ import annotations

import asyncio
import functools
import math
from collections import deque
from typing import TYPE_CHECKING

from leveret.aio._channel import Outgoing
from leveret.exceptions import PublishTimeout

if TYPE_CHECKING:
    from leveret.aio._connection import Connection
    from leveret.telemetry._otel import PublishOp

__all__ = ["SendQueue"]


class SendQueue:
    """The waiting publishes of one connection, and the task that sends them."""

    def __init__(self, connection: Connection) -> None:
        self._connection = connection
        # Public so that the publish fast path can test it without a call to __len__.
        self.waiting: deque[tuple[Outgoing, float | None, PublishOp | None]] = deque()
        self._latest = -math.inf  # the latest deadline queued
        # Those queued behind a later deadline, watched by the connection's deadline sweep.
        self._behind: dict[Outgoing, float] = {}
        self._task: asyncio.Task[None] | None = None

    def __len__(self) -> int:
        return len(self.waiting)

    def records(self) -> list[Outgoing]:
        return [record for record, _, _ in self.waiting]

    def add(self, record: Outgoing, timeout: float | None, traced: PublishOp | None) -> None:
        """Queue `record`; its future fails with PublishTimeout if it is not sent within `timeout`."""
        connection = self._connection
        if timeout is not None:
            record.deadline = connection._loop.time() + timeout
            if record.deadline < self._latest:
                # Behind a later deadline: the task waits for the first one only, so the
                # connection's deadline sweep watches this one.
                self._behind[record] = timeout
                connection._deadlines.watch_anywhere(record)
            else:
                self._latest = record.deadline
        self.waiting.append((record, timeout, traced))
        if self._task is None:
            self._task = connection._loop.create_task(self._send_all())

    async def _send_all(self) -> None:
        connection = self._connection
        waiting = self.waiting
        try:
            while waiting:
                record, timeout, traced = waiting[0]
                if record.done():
                    waiting.popleft()  # its caller gave up (or it expired) before it was sent
                    self._behind.pop(record, None)
                    continue
                target = connection
                try:
                    if connection._separate_publisher:
                        target = connection._publisher or await connection._open_publisher()
                except Exception as exc:  # noqa: BLE001 - every waiting caller gets it
                    self._fail_all(exc)
                    continue
                try:
                    channel = target._channel_to_send_now(record.exchange)
                    if channel is None:
                        async with asyncio.timeout_at(_finite(record.deadline)):
                            channel = await target._wait_until_sendable(record.exchange)
                except TimeoutError:
                    self._expire_due(target)
                    continue
                except Exception as exc:  # noqa: BLE001 - the caller's future carries it
                    waiting.popleft()
                    self._behind.pop(record, None)
                    if not record.done():
                        record.set_exception(exc)
                    connection._end_traced(traced, record)
                    continue
                waiting.popleft()
                self._behind.pop(record, None)
                if record.done():
                    continue  # cancelled while it waited: not sent
                try:
                    target._send(channel, record)
                except Exception as exc:  # noqa: BLE001 - e.g. a header over frame_max: refused
                    record.set_exception(exc)
                    connection._end_traced(traced, record)
                    continue
                target._sent(record, None if timeout is None else record.deadline)
                if traced is not None:
                    record.add_done_callback(functools.partial(connection._end_traced, traced))
        except asyncio.CancelledError:
            self._fail_all(None)  # the loop is closing: nobody will send them
            raise
        except BaseException as exc:  # a bug: fail them all rather than leave callers waiting
            self._fail_all(exc)
            raise
        finally:
            self._task = None
            if not waiting:
                self._latest = -math.inf

    def _expire_due(self, target: Connection) -> None:
        """Fail the waiting publishes whose deadlines have passed, from the front."""
        now = self._connection._loop.time()
        waiting = self.waiting
        while waiting and waiting[0][0].deadline <= now:
            record, timeout, traced = waiting.popleft()
            self._behind.pop(record, None)
            if not record.done():
                record.set_exception(_not_sent(record, timeout, target))
                self._connection._end_traced(traced, record)

    def expire(self, record: Outgoing) -> bool:
        """For the deadline sweep: fail `record` if it is still queued; False if it is not."""
        timeout = self._behind.pop(record, None)
        if timeout is None:
            return False
        target = self._connection._publisher or self._connection
        record.set_exception(_not_sent(record, timeout, target))
        return True  # left in the queue: the task skips it, as it is done

    def _fail_all(self, exc: BaseException | None) -> None:
        """Fail every waiting publish with `exc` (None: cancel them)."""
        waiting = list(self.waiting)
        self.waiting.clear()
        self._behind.clear()
        for record, _, traced in waiting:
            if not record.done():
                if exc is None:
                    record.cancel()
                else:
                    record.set_exception(exc)
                self._connection._end_traced(traced, record)


def _not_sent(record: Outgoing, timeout: float | None, target: Connection) -> PublishTimeout:
    return PublishTimeout(
        f"publish to exchange {record.exchange!r} with routing key {record.routing_key!r} "
        f"not sent within {timeout}s ({target._waiting_for()})"
    )


def _finite(deadline: float) -> float | None:
    return None if deadline == math.inf else deadline
