"""batch_scheduling(): the thread's policy inside and after the block, and where it can't switch.

Each test runs in a thread of its own, so a failure cannot leave the test
runner's main thread under another policy.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import pytest

from leveret.blocking import _scheduling, batch_scheduling

T = TypeVar("T")

linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="SCHED_BATCH is Linux's"
)


def in_a_thread(function: Callable[[], T]) -> T:
    """Run `function` in a fresh thread (one pool per call) and return or raise its outcome."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        return pool.submit(function).result(timeout=10.0)


def policy() -> int:
    return os.sched_getscheduler(0)


@linux_only
def test_the_block_runs_under_sched_batch_and_the_default_comes_back() -> None:
    def run() -> tuple[int, bool, int, int]:
        before = policy()
        with batch_scheduling() as switched:
            inside = policy()
        return before, switched, inside, policy()

    before, switched, inside, after = in_a_thread(run)
    assert (before, switched, inside, after) == (
        os.SCHED_OTHER,
        True,
        os.SCHED_BATCH,
        os.SCHED_OTHER,
    )


@linux_only
def test_an_exception_in_the_block_still_restores_the_policy() -> None:
    def run() -> int:
        with pytest.raises(ZeroDivisionError), batch_scheduling():
            _ = 1 / 0
        return policy()

    assert in_a_thread(run) == os.SCHED_OTHER


@linux_only
def test_nested_blocks_leave_the_switch_to_the_outer_one() -> None:
    def run() -> tuple[bool, bool, int, int]:
        with batch_scheduling() as outer:
            with batch_scheduling() as inner:
                pass
            after_inner = policy()
        return outer, inner, after_inner, policy()

    assert in_a_thread(run) == (True, False, os.SCHED_BATCH, os.SCHED_OTHER)


@linux_only
def test_a_thread_under_another_policy_is_left_alone() -> None:
    def run() -> tuple[bool, int]:
        os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))  # the caller's own choice
        with batch_scheduling() as switched:
            pass
        return switched, policy()

    assert in_a_thread(run) == (False, os.SCHED_BATCH)


@linux_only
def test_a_refused_switch_runs_the_block_unchanged(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(pid: int, wanted: int, param: object) -> None:
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "sched_setscheduler", refuse)

    def run() -> tuple[bool, int]:
        with batch_scheduling() as switched:
            return switched, policy()

    assert in_a_thread(run) == (False, os.SCHED_OTHER)


def test_without_sched_batch_it_does_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_scheduling, "_BATCH", None)  # as on macOS and Windows
    ran: list[bool] = []

    def run() -> bool:
        with batch_scheduling() as switched:
            ran.append(True)
        return switched

    assert in_a_thread(run) is False
    assert ran == [True]
