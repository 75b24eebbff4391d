"""Publish deadlines: expiry at the deadline wherever a publish waits, with no table of their own."""

from __future__ import annotations

import asyncio

from leveret.aio._channel import Outgoing, new_outgoing
from leveret.aio._deadlines import Deadlines


def _record(loop: asyncio.AbstractEventLoop, name: str) -> Outgoing:
    return new_outgoing(loop, "", b"\x00", name, b"", b"body", b"\x00\x00", False)


class _Books:
    """Stands in for a connection: channels' tables of unconfirmed publishes, and a re-send queue."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.channels: list[dict[int, Outgoing]] = [{}, {}]
        self.waiting: list[Outgoing] = []
        self.expired: list[str] = []
        self.deadlines = Deadlines(
            loop,
            lambda record: self.expired.append(record.routing_key),
            lambda: [table.values() for table in self.channels],
            lambda: self.waiting,
        )
        self._seq = 0

    def send(self, record: Outgoing, deadline: float, channel: int = 0) -> None:
        self._seq += 1
        self.channels[channel][self._seq] = record
        self.deadlines.watch(record, deadline)


async def test_expired_publishes_fail_and_later_ones_wait() -> None:
    loop = asyncio.get_running_loop()
    books = _Books(loop)
    now = loop.time()
    late = _record(loop, "late")
    books.send(_record(loop, "first"), now - 2)
    confirmed = _record(loop, "confirmed")
    books.send(confirmed, now - 1.5)
    books.send(_record(loop, "other channel"), now - 1, channel=1)
    books.send(late, now + 3600)
    books.send(_record(loop, "shorter timeout"), now - 3)  # out of order: the heap
    confirmed.set_result(None)
    books.deadlines._sweep()
    assert sorted(books.expired) == ["first", "other channel", "shorter timeout"]
    assert len(books.deadlines) == 0  # the heap entry is gone once expired
    assert books.deadlines._timer is not None
    assert books.deadlines._timer.when() == now + 3600
    assert not late.done()
    books.deadlines.cancel()
    assert books.deadlines._timer is None


async def test_a_sweep_stops_at_the_first_deadline_ahead_and_expires_nothing_twice() -> None:
    loop = asyncio.get_running_loop()
    books = _Books(loop)
    now = loop.time()
    due = [_record(loop, f"due {n}") for n in range(3)]
    for n, record in enumerate(due):
        books.send(record, now - 10 + n)
    ahead = [_record(loop, f"ahead {n}") for n in range(1000)]
    for n, record in enumerate(ahead):
        books.send(record, now + 60 + n)
    books.deadlines._sweep()
    for record in due:
        record.set_exception(TimeoutError())  # what the connection's expire does
    books.deadlines._sweep()  # the expired ones are still unconfirmed: skipped, not again
    assert books.expired == ["due 0", "due 1", "due 2"]
    assert books.deadlines._timer_at == now + 60
    books.deadlines.cancel()
    for record in due:  # retrieved, as a caller would: no "never retrieved" log at exit
        assert isinstance(record.exception(), TimeoutError)


async def test_publishes_waiting_to_be_sent_again_and_sent_again_keep_their_deadlines() -> None:
    loop = asyncio.get_running_loop()
    books = _Books(loop)
    now = loop.time()
    old = _record(loop, "re-sent")
    waiting = _record(loop, "waiting")
    books.send(old, now + 0.5)
    books.send(waiting, now + 0.5)
    # The link drops: both wait to be sent again; a new publish goes out meanwhile.
    books.channels[0].clear()
    books.waiting.extend([old, waiting])
    books.send(_record(loop, "new"), now + 3600)
    books.waiting.remove(old)
    books.channels[0][99] = old  # sent again, behind the new one in its table
    books.deadlines.watch_anywhere(old)
    await asyncio.sleep(0.6)
    assert sorted(books.expired) == ["re-sent", "waiting"]
    books.deadlines.cancel()


async def test_a_publish_without_a_deadline_is_never_expired() -> None:
    loop = asyncio.get_running_loop()
    books = _Books(loop)
    forever = _record(loop, "forever")
    books.channels[0][1] = forever  # never watched: publish_timeout=None
    books.deadlines.watch_anywhere(forever)
    books.deadlines._sweep()
    assert books.expired == []
    assert books.deadlines._timer is None
