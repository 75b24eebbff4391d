"""EagerStart: a task whose first step runs in the caller's turn, and behaves as a task's step."""

from __future__ import annotations

import asyncio
import contextvars
from typing import Any

import pytest

from leveret.aio._eager import EagerStart

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


async def test_the_first_step_runs_before_step_returns_and_as_the_task() -> None:
    loop = asyncio.get_running_loop()
    seen: list[Any] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return "done"

    start = EagerStart(loop, handler())
    assert seen == []
    start.step()
    assert seen == [start.task]  # ran now, not at the loop's next turn
    assert asyncio.current_task() is not start.task  # the caller's task is back
    assert await start.task == "done"
    assert seen == [start.task, start.task]


async def test_a_coroutine_finishing_in_its_first_step_gives_the_task_its_value() -> None:
    ran: list[str] = []

    async def handler() -> int:
        ran.append("all of it")
        return 42

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    assert ran == ["all of it"]
    assert await start.task == 42


async def test_an_exception_in_the_first_step_is_the_tasks() -> None:
    async def handler() -> None:
        raise LookupError("no such order: 17")

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()  # does not raise here
    with pytest.raises(LookupError, match="no such order: 17"):
        await start.task


async def test_asyncio_timeout_works_in_the_first_step() -> None:
    async def handler() -> str:
        try:
            async with asyncio.timeout(0):  # needs a current task, and cancels it
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "not timed out"

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    assert await asyncio.wait_for(start.task, 10) == "timed out"


async def test_context_variables_set_in_the_handler_stay_in_its_task() -> None:
    request_id.set("caller")

    async def handler() -> str:
        assert request_id.get() == "caller"  # a copy of the caller's context
        request_id.set("handler")
        await asyncio.sleep(0)
        return request_id.get()

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    assert request_id.get() == "caller"
    assert await start.task == "handler"


async def test_a_cancel_before_the_tasks_first_turn_reaches_the_waiting_coroutine() -> None:
    cleaned_up: list[str] = []
    never = asyncio.get_running_loop().create_future()

    async def handler() -> None:
        try:
            await never
        finally:
            cleaned_up.append("finally ran")

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    start.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await start.task
    assert cleaned_up == ["finally ran"]
    assert start.task.cancelled()


async def test_a_cancel_after_the_coroutine_returned_changes_nothing() -> None:
    async def handler() -> str:
        return "answered"

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    start.task.cancel()  # the work is done: 3.12's eager tasks would be done already too
    assert await start.task == "answered"


async def test_started_from_inside_another_task_that_task_stays_current() -> None:
    loop = asyncio.get_running_loop()
    inner_saw: list[Any] = []

    async def inner() -> None:
        inner_saw.append(asyncio.current_task())

    outer = asyncio.current_task()
    start = EagerStart(loop, inner())
    start.step()
    assert inner_saw == [start.task]
    assert asyncio.current_task() is outer
    await start.task


async def test_many_steps_and_an_exception_thrown_in_midway() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def handler() -> list[str]:
        log = []
        for _ in range(3):
            await asyncio.sleep(0)
            log.append("step")
        try:
            await gate
        except ValueError as exc:
            log.append(f"caught {exc}")
        return log

    start = EagerStart(asyncio.get_running_loop(), handler())
    start.step()
    for _ in range(10):
        await asyncio.sleep(0)
    gate.set_exception(ValueError("bad gate"))
    assert await start.task == ["step", "step", "step", "caught bad gate"]


async def test_a_task_never_stepped_runs_its_coroutine_whole() -> None:
    async def handler() -> str:
        await asyncio.sleep(0)
        return "ran in the task"

    start = EagerStart(asyncio.get_running_loop(), handler())  # step() not called
    assert await start.task == "ran in the task"
