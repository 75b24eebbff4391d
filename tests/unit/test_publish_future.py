"""PublishFuture: a future that tasks, TaskGroups and gather take like a coroutine."""

from __future__ import annotations

import asyncio

import pytest

from leveret.aio._publish_future import PublishFuture, wait_settled


async def test_ensure_future_returns_it_and_await_gives_the_outcome() -> None:
    future = PublishFuture(loop=asyncio.get_running_loop())
    assert asyncio.ensure_future(future) is future
    asyncio.get_running_loop().call_soon(future.set_result, None)
    assert await future is None


async def test_a_task_wrapping_it_ends_with_its_result_or_exception() -> None:
    loop = asyncio.get_running_loop()
    confirmed = PublishFuture(loop=loop)
    failed = PublishFuture(loop=loop)
    first = asyncio.create_task(confirmed)
    second = asyncio.create_task(failed)
    await asyncio.sleep(0)
    confirmed.set_result(None)
    failed.set_exception(ValueError("nacked"))
    assert await first is None
    with pytest.raises(ValueError, match="nacked"):
        await second


async def test_a_task_group_waits_for_it() -> None:
    loop = asyncio.get_running_loop()
    futures = [PublishFuture(loop=loop) for _ in range(3)]
    for future in futures:
        loop.call_soon(future.set_result, None)
    async with asyncio.TaskGroup() as group:
        tasks = [group.create_task(future) for future in futures]
    assert [task.result() for task in tasks] == [None, None, None]


async def test_cancelling_the_wrapping_task_cancels_the_future() -> None:
    loop = asyncio.get_running_loop()
    waiting = PublishFuture(loop=loop)
    task = asyncio.create_task(waiting)
    await asyncio.sleep(0)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert waiting.cancelled()

    not_started = PublishFuture(loop=loop)
    task = asyncio.create_task(not_started)
    task.cancel()  # before its first step: thrown in rather than awaited
    with pytest.raises(asyncio.CancelledError):
        await task
    assert not_started.cancelled()


async def test_a_finished_future_wrapped_in_a_task() -> None:
    future = PublishFuture(loop=asyncio.get_running_loop())
    future.set_exception(KeyError("gone"))
    with pytest.raises(KeyError):
        await asyncio.create_task(future)


async def test_wait_settled_returns_when_all_are_done_or_at_the_timeout() -> None:
    loop = asyncio.get_running_loop()
    futures: list[asyncio.Future[None]] = [PublishFuture(loop=loop) for _ in range(3)]
    futures[0].set_result(None)
    loop.call_soon(futures[1].set_exception, ValueError("x"))
    loop.call_soon(futures[2].cancel)
    await wait_settled(futures, timeout=10)
    assert all(future.done() for future in futures)
    futures[1].exception()

    stuck: list[asyncio.Future[None]] = [PublishFuture(loop=loop)]
    await wait_settled(stuck, timeout=0.01)
    assert not stuck[0].done()
    assert not stuck[0]._callbacks  # type: ignore[attr-defined]
    await wait_settled([], timeout=None)
