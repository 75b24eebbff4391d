"""The blocking facade's handoff: Portal.start's outcome, waited for by Portal.wait."""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
import time
from collections.abc import Iterator

import pytest

from leveret.blocking._portal import Handoff, Portal
from leveret.exceptions import ConnectionClosedByClient


@pytest.fixture
def portal() -> Iterator[Portal]:
    portal = Portal("leveret-io-test")
    yield portal
    portal.stop(2.0)


def test_a_value_set_before_or_after_the_wait_is_returned() -> None:
    early: Handoff[int] = Handoff()
    early.settle(1, None)
    assert early.done()
    assert early.result(0) == 1
    assert early.result() == 1  # asking again gives it again

    late: Handoff[int] = Handoff()
    threading.Timer(0.05, late.settle, (2, None)).start()
    assert not late.done()
    assert late.result(5.0) == 2


def test_an_error_is_raised_and_only_the_first_outcome_counts() -> None:
    handoff: Handoff[int] = Handoff()
    handoff.settle(None, ValueError("boom"))
    handoff.settle(3, None)
    with pytest.raises(ValueError, match="boom"):
        handoff.result(0)


def test_no_outcome_within_the_timeout_raises_timeout_error() -> None:
    handoff: Handoff[int] = Handoff()
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
        handoffs: list[Handoff[int]] = [Handoff(), Handoff(), Handoff()]
        for future, handoff in zip((value, error, cancelled), handoffs, strict=True):
            handoff.copy_outcome(future)
    finally:
        loop.close()
    assert handoffs[0].result(0) == 4
    with pytest.raises(KeyError):
        handoffs[1].result(0)
    with pytest.raises(concurrent.futures.CancelledError):
        handoffs[2].result(0)


def test_portal_start_hands_back_the_outcome_of_the_started_future(portal: Portal) -> None:
    def begin(value: int) -> asyncio.Future[int]:
        future = portal.loop.create_future()
        portal.loop.call_later(0.01, future.set_result, value)
        return future

    handoffs = [portal.start(lambda n=n: begin(n)) for n in range(50)]  # type: ignore[misc]
    assert [portal.wait(handoff) for handoff in handoffs] == list(range(50))


def test_portal_wait_raises_what_the_job_raised(portal: Portal) -> None:
    def begin() -> asyncio.Future[int]:
        raise TypeError("cannot send that")

    with pytest.raises(TypeError, match="cannot send that"):
        portal.wait(portal.start(begin))


def test_a_cancelled_future_raises_connection_closed(portal: Portal) -> None:
    def begin() -> asyncio.Future[int]:
        future = portal.loop.create_future()
        future.cancel()
        return future

    with pytest.raises(ConnectionClosedByClient):
        portal.wait(portal.start(begin))


def test_an_abandoned_wait_keeps_its_job_from_starting(portal: Portal) -> None:
    started: list[str] = []
    gate = threading.Event()
    portal.loop.call_soon_threadsafe(gate.wait, 5.0)  # holds the loop: the jobs stay queued

    def begin(name: str) -> asyncio.Future[None]:
        started.append(name)
        future = portal.loop.create_future()
        future.set_result(None)
        return future

    abandoned = portal.start(lambda: begin("abandoned"))
    with pytest.raises(TimeoutError):
        portal.wait(abandoned, timeout=0.05)  # gives up, and cancels
    kept = portal.start(lambda: begin("kept"))
    gate.set()
    portal.wait(kept, timeout=5.0)
    assert started == ["kept"]


def test_a_stopped_portal_refuses_new_jobs(portal: Portal) -> None:
    portal.stop(2.0)
    with pytest.raises(ConnectionClosedByClient):
        portal.start(lambda: portal.loop.create_future())
