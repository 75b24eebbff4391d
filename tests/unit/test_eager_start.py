"""start_eagerly: a task whose first step runs in the caller's turn, and behaves as a task's."""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Coroutine
from typing import Any

import pytest

from leveret.aio._eager import start_eagerly

request_id: contextvars.ContextVar[str] = contextvars.ContextVar("request_id", default="none")


def start(coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
    booked: list[asyncio.Task[Any]] = []
    task = start_eagerly(asyncio.get_running_loop(), coro, booked.append)
    assert booked == [task]
    return task


async def test_the_task_is_booked_then_its_first_step_runs_before_start_returns() -> None:
    seen: list[Any] = []
    booked: list[Any] = []

    async def handler() -> str:
        seen.append(asyncio.current_task())
        await asyncio.sleep(0)
        seen.append(asyncio.current_task())
        return "done"

    def book(task: asyncio.Task[Any]) -> None:
        assert seen == []  # booked before the first step
        booked.append(task)

    task = start_eagerly(asyncio.get_running_loop(), handler(), book)
    assert booked == [task]
    assert seen == [task]  # ran now, not at the loop's next turn
    assert asyncio.current_task() is not task  # the caller's task is back
    assert not task.done()
    assert await task == "done"
    assert seen == [task, task]


async def test_a_coroutine_finishing_in_its_first_step_leaves_its_task_done_at_once() -> None:
    ran: list[str] = []
    callbacks: list[str] = []

    async def handler() -> int:
        ran.append("all of it")
        return 42

    task = start(handler())
    assert ran == ["all of it"]
    assert task.done()  # no loop turn needed, as with 3.12's eager tasks
    assert task.result() == 42
    task.add_done_callback(lambda _: callbacks.append("called"))
    await asyncio.sleep(0)
    assert callbacks == ["called"]
    assert await task == 42


async def test_an_exception_in_the_first_step_is_the_tasks() -> None:
    async def handler() -> None:
        raise LookupError("no such order: 17")

    task = start(handler())  # does not raise here
    with pytest.raises(LookupError, match="no such order: 17"):
        await task


async def test_asyncio_timeout_works_in_the_first_step() -> None:
    async def handler() -> str:
        try:
            async with asyncio.timeout(0):  # needs a current task, and cancels it
                await asyncio.Event().wait()
        except TimeoutError:
            return "timed out"
        return "not timed out"

    task = start(handler())
    assert await asyncio.wait_for(task, 10) == "timed out"


async def test_context_variables_set_in_the_handler_stay_in_its_task() -> None:
    request_id.set("caller")

    async def handler() -> str:
        assert request_id.get() == "caller"  # a copy of the caller's context
        request_id.set("handler")
        await asyncio.sleep(0)
        return request_id.get()

    task = start(handler())
    assert request_id.get() == "caller"
    assert await task == "handler"


async def test_a_cancel_before_the_tasks_first_turn_reaches_the_waiting_coroutine() -> None:
    cleaned_up: list[str] = []
    never = asyncio.get_running_loop().create_future()

    async def handler() -> None:
        try:
            await never
        finally:
            cleaned_up.append("finally ran")

    task = start(handler())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert cleaned_up == ["finally ran"]
    assert task.cancelled()


async def test_a_cancel_in_a_first_step_that_then_returns_changes_nothing() -> None:
    async def handler() -> str:
        task = asyncio.current_task()
        assert task is not None
        task.cancel()
        return "answered"

    task = start(handler())
    assert task.done()
    assert await task == "answered"


async def test_started_from_inside_another_task_that_task_stays_current() -> None:
    loop = asyncio.get_running_loop()
    inner_saw: list[Any] = []

    async def inner() -> None:
        inner_saw.append(asyncio.current_task())

    outer = asyncio.current_task()
    task = start_eagerly(loop, inner(), lambda _: None)
    assert inner_saw == [task]
    assert asyncio.current_task() is outer
    await task


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

    task = start(handler())
    for _ in range(10):
        await asyncio.sleep(0)
    gate.set_exception(ValueError("bad gate"))
    assert await task == ["step", "step", "step", "caught bad gate"]


async def test_a_booking_that_raises_leaves_a_task_that_runs_as_usual() -> None:
    async def handler() -> str:
        await asyncio.sleep(0)
        return "ran in the task"

    def book(task: asyncio.Task[Any]) -> None:
        raise RuntimeError("no room")

    loop = asyncio.get_running_loop()
    tasks_before = asyncio.all_tasks(loop)
    with pytest.raises(RuntimeError, match="no room"):
        start_eagerly(loop, handler(), book)
    assert "call_soon" not in vars(loop)  # the loop's own call_soon is back
    [task] = asyncio.all_tasks(loop) - tasks_before
    assert await task == "ran in the task"


async def test_the_loops_call_soon_is_its_own_again_after_each_start() -> None:
    loop = asyncio.get_running_loop()

    async def handler() -> None:
        assert "call_soon" not in vars(loop)  # not even during the first step

    task = start(handler())
    assert "call_soon" not in vars(loop)
    await task


async def test_a_programs_own_task_factory_runs_the_task_its_way() -> None:
    loop = asyncio.get_running_loop()
    made: list[asyncio.Task[Any]] = []
    ran: list[str] = []

    def factory(loop: asyncio.AbstractEventLoop, coro: Any, **kwargs: Any) -> asyncio.Task[Any]:
        task = asyncio.Task(coro, loop=loop, **kwargs)
        made.append(task)
        return task

    async def handler() -> str:
        ran.append("ran")
        return "via the factory"

    loop.set_task_factory(factory)
    try:
        task = start(handler())
        assert made == [task]
        assert ran == []  # started by the loop, as the factory's tasks are
        assert await task == "via the factory"
        assert ran == ["ran"]
    finally:
        loop.set_task_factory(None)


async def test_the_tasks_repr_and_stack_show_the_handler() -> None:
    gate = asyncio.get_running_loop().create_future()

    async def order_handler() -> None:
        await gate

    task = start(order_handler())
    assert "order_handler" in repr(task)
    [frame] = task.get_stack()
    assert frame.f_code.co_name == "order_handler"
    gate.set_result(None)
    await task
