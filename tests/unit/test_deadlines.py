"""Publish deadlines: expiry in deadline order, and memory that follows what is in flight."""

from __future__ import annotations

import asyncio

from leveret.aio._channel import Outgoing
from leveret.aio._deadlines import Deadlines


def _record(loop: asyncio.AbstractEventLoop, name: str) -> Outgoing:
    return Outgoing(loop.create_future(), "", b"\x00", name, b"", b"body", b"\x00\x00", False)


async def test_expired_publishes_fail_in_deadline_order_and_later_ones_wait() -> None:
    loop = asyncio.get_running_loop()
    expired: list[str] = []
    deadlines = Deadlines(loop, lambda record: expired.append(record.routing_key))
    now = loop.time()
    late = _record(loop, "late")
    deadlines.watch(_record(loop, "first"), now - 2)
    deadlines.watch(late, now + 3600)
    deadlines.watch(_record(loop, "shorter-timeout"), now - 3)  # out of order: the heap
    confirmed = _record(loop, "confirmed")
    deadlines.watch(confirmed, now - 1)
    confirmed.future.set_result(None)
    deadlines._sweep()
    assert expired == ["first", "shorter-timeout"]
    assert len(deadlines) == 1
    assert deadlines._timer is not None
    assert deadlines._timer.when() == now + 3600
    deadlines.cancel()
    assert len(deadlines) == 0
    assert deadlines._timer is None
    assert not late.future.done()


async def test_confirmed_publishes_are_forgotten_long_before_their_deadline() -> None:
    loop = asyncio.get_running_loop()
    deadlines = Deadlines(loop, lambda record: None)
    now = loop.time()
    stuck = _record(loop, "stuck")  # never confirmed: must not pin everything behind it
    deadlines.watch(stuck, now + 60)
    in_flight: list[Outgoing] = []
    for n in range(100_000):
        record = _record(loop, str(n))
        deadlines.watch(record, now + 60 + n * 1e-6)
        in_flight.append(record)
        if len(in_flight) > 1000:
            in_flight.pop(0).future.set_result(None)
    assert len(deadlines) <= 2 * 4096 + 1001
    deadlines.cancel()
