"""The blocking publish's way into the loop: Portal.run, its Handoff and the Relay."""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import threading
import time
from collections.abc import Iterator

import pytest

from leveret.blocking._handoff import Handoff, Relay
from leveret.blocking._portal import Portal
from leveret.exceptions import ConnectionClosedByClient


@pytest.fixture
def portal() -> Iterator[Portal]:
    portal = Portal("leveret-io-test")
    yield portal
    portal.stop(2.0)


def never_started() -> asyncio.Future[int]:
    raise AssertionError("the tests settle these handoffs themselves")


def handoffs(relay: Relay, count: int) -> list[Handoff[int]]:
    return [Handoff(relay, never_started) for _ in range(count)]


def woken(handoff: Handoff[int]) -> bool:
    """Whether the relay woke its thread (result() returns at once for any settled handoff)."""
    return not handoff._ready.locked()


def test_a_value_set_before_or_after_the_wait_is_returned() -> None:
    early, late = handoffs(Relay(), 2)
    early.settle(1, None)
    assert early.done()
    assert early.result(0) == 1
    assert early.result() == 1  # asking again gives it again
    early.leave()

    threading.Timer(0.05, late.settle, (2, None)).start()
    assert not late.done()
    assert late.result(5.0) == 2


def test_an_error_is_raised_and_only_the_first_outcome_counts() -> None:
    (handoff,) = handoffs(Relay(), 1)
    handoff.settle(None, ValueError("boom"))
    handoff.settle(3, None)
    with pytest.raises(ValueError, match="boom"):
        handoff.result(0)


def test_no_outcome_within_the_timeout_raises_timeout_error() -> None:
    (handoff,) = handoffs(Relay(), 1)
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        handoff.result(0.05)
    assert time.monotonic() - started >= 0.04
    with pytest.raises(TimeoutError):
        handoff.result(0)


def test_outcomes_of_asyncio_futures_are_copied() -> None:
    loop = asyncio.new_event_loop()
    try:
        value, error, cancelled = loop.create_future(), loop.create_future(), loop.create_future()
        value.set_result(4)
        error.set_exception(KeyError("k"))
        cancelled.cancel()
        copies = handoffs(Relay(), 3)
        for future, handoff in zip((value, error, cancelled), copies, strict=True):
            handoff.copy_outcome(future)
    finally:
        loop.close()
    assert copies[0].result(0) == 4
    with pytest.raises(KeyError):
        copies[1].result(0)
    with pytest.raises(concurrent.futures.CancelledError):
        copies[2].result(0)


def test_the_relay_wakes_one_waiting_thread_at_a_time() -> None:
    first, second, third = handoffs(Relay(), 3)
    for handoff in (first, second, third):
        handoff.settle(0, None)  # a burst: one confirm for three publishes
    # Outcomes are in, but only the first thread is woken; the rest in turn.
    assert [woken(first), woken(second), woken(third)] == [True, False, False]
    first.leave()
    assert [woken(second), woken(third)] == [True, False]
    second.leave()
    assert woken(third)


def test_the_relay_skips_threads_that_left_and_starts_no_job_for_them() -> None:
    started: list[str] = []

    def begin() -> asyncio.Future[int]:
        started.append("begun")
        raise ValueError("not sent")

    relay = Relay()
    awake, gone, waiting = (Handoff(relay, begin) for _ in range(3))
    awake.settle(0, None)
    gone.cancel()  # its thread gave up (Ctrl-C) before the loop thread got to it
    gone.begin()
    waiting.settle(0, None)
    assert started == []
    awake.leave()
    assert woken(waiting)


def test_a_thread_passed_over_for_a_whole_slice_moves_on() -> None:
    stuck, passed_over, next_one = handoffs(Relay(), 3)
    stuck.settle(0, None)  # woken, but its thread never leaves
    threading.Timer(0.01, passed_over.settle, (1, None)).start()
    started = time.monotonic()
    assert passed_over.result(0.1) == 1  # the outcome, once the slice is over
    assert time.monotonic() - started >= 0.09
    next_one.settle(2, None)
    assert not woken(next_one)
    passed_over.leave()  # moves on without the stuck one
    assert woken(next_one)


def test_portal_run_returns_the_outcome_of_the_started_future(portal: Portal) -> None:
    def begin(value: int) -> asyncio.Future[int]:
        future = portal.loop.create_future()
        portal.loop.call_later(0.001, future.set_result, value)
        return future

    results: dict[int, list[int]] = {}

    def publisher(number: int) -> None:
        results[number] = [
            portal.run(functools.partial(begin, number * 1000 + i)) for i in range(200)
        ]

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(16)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert results == {n: [n * 1000 + i for i in range(200)] for n in range(16)}


def test_portal_run_raises_what_the_job_raised(portal: Portal) -> None:
    def begin() -> asyncio.Future[int]:
        raise TypeError("cannot send that")

    with pytest.raises(TypeError, match="cannot send that"):
        portal.run(begin)
    assert portal.run(lambda: settled(portal, 5)) == 5  # the relay moved on


def settled(portal: Portal, value: int) -> asyncio.Future[int]:
    future = portal.loop.create_future()
    future.set_result(value)
    return future


def test_a_cancelled_future_raises_connection_closed(portal: Portal) -> None:
    def begin() -> asyncio.Future[int]:
        future = portal.loop.create_future()
        future.cancel()
        return future

    with pytest.raises(ConnectionClosedByClient):
        portal.run(begin)


def test_an_abandoned_wait_keeps_its_job_from_starting(portal: Portal) -> None:
    started: list[str] = []
    gate = threading.Event()
    portal.loop.call_soon_threadsafe(gate.wait, 5.0)  # holds the loop: the jobs stay queued

    def begin(name: str) -> asyncio.Future[int]:
        started.append(name)
        return settled(portal, 0)

    abandoned = portal.start(lambda: begin("abandoned"), "publish()")
    with pytest.raises(TimeoutError):
        portal.wait(abandoned, timeout=0.05)  # gives up, and cancels
    abandoned.leave()
    threading.Timer(0.05, gate.set).start()
    portal.run(lambda: begin("kept"))
    assert started == ["kept"]


def test_a_stopped_portal_refuses_new_jobs(portal: Portal) -> None:
    portal.stop(2.0)
    with pytest.raises(ConnectionClosedByClient):
        portal.run(lambda: settled(portal, 0))


def test_a_job_queued_while_a_woken_thread_has_yet_to_leave_waits_for_its_kick(
    portal: Portal,
) -> None:
    started: list[int] = []

    def begin(value: int) -> asyncio.Future[int]:
        started.append(value)
        return settled(portal, value)

    awake = Handoff(portal._relay, never_started)
    awake.settle(0, None)  # woken: it will kick the loop as it leaves
    queued = portal.start(functools.partial(begin, 1), "publish()")
    time.sleep(0.05)
    assert started == []  # one kick for the whole burst, later
    queued.leave()


def test_a_woken_thread_that_never_leaves_delays_the_others_by_slices_only(
    portal: Portal,
) -> None:
    stuck = Handoff(portal._relay, never_started)
    stuck.settle(0, None)  # woken, but it never leaves, nor kicks the loop
    started = time.monotonic()
    assert portal.run(lambda: settled(portal, 7)) == 7  # the main thread: 50 ms slices
    assert time.monotonic() - started < 1.0
    assert portal.run(lambda: settled(portal, 8)) == 8  # and the relay moved on


def test_threads_that_give_up_their_waits_do_not_hold_up_the_others(portal: Portal) -> None:
    # Outcomes come in bursts, as confirms do; some threads give up waiting now and
    # then (as on Ctrl-C): the relay must neither stall (whole wait slices) nor lose one.
    pending: list[tuple[asyncio.Future[int], int]] = []

    def confirm_all() -> None:
        for future, value in pending:
            if not future.done():
                future.set_result(value)
        pending.clear()
        portal.loop.call_later(0.0005, confirm_all)

    def begin(value: int) -> asyncio.Future[int]:
        future = portal.loop.create_future()
        pending.append((future, value))
        return future

    portal.loop.call_soon_threadsafe(confirm_all)
    results: dict[int, list[int]] = {}
    gave_up: list[int] = []

    def publisher(number: int) -> None:
        got = []
        for i in range(300):
            value = number * 1000 + i
            if i % 7 == number % 7:
                handoff = portal.start(functools.partial(begin, value), "publish()")
                try:
                    portal.wait(handoff, timeout=0.0001)
                except TimeoutError:
                    gave_up.append(value)
                finally:
                    handoff.leave()
            else:
                got.append(portal.run(functools.partial(begin, value)))
        results[number] = got

    threads = [threading.Thread(target=publisher, args=(n,)) for n in range(16)]
    started = time.monotonic()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30.0)
    assert time.monotonic() - started < 5.0  # no thread waited out a 1 s slice
    assert results == {n: [n * 1000 + i for i in range(300) if i % 7 != n % 7] for n in range(16)}
    assert gave_up  # the path was taken
