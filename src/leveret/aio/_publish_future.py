"""The confirm of one publish: what `Connection.publish()` returns instead of a coroutine.

A publish is sent when `publish()` is called, so there is nothing left for a task to
run: the caller gets the future of the broker's confirm. Creating a task per publish
(what `asyncio.ensure_future(conn.publish(...))` did with a coroutine) cost about as
much CPU as encoding and sending the message. The future also speaks the coroutine
protocol, so `asyncio.create_task(conn.publish(...))` and `TaskGroup.create_task` keep
working: the task simply waits for the confirm.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine, Sequence
from typing import Any, NoReturn

__all__ = ["PublishFuture", "wait_settled"]


class PublishFuture(asyncio.Future[None], Coroutine[Any, Any, None]):
    """The outcome of one publish: None once confirmed, or its exception.

    Await it, gather it, hand it to `asyncio.ensure_future` (which returns it
    as it is) or wrap it in a task. Cancelling it stops the caller waiting;
    a message already sent is not taken back.
    """

    __slots__ = ()

    # The coroutine protocol, for a task that wraps this future: each step either
    # yields the future to wait on (itself) or ends with its outcome.
    def send(self, value: None) -> Any:
        if not self.done():
            self._asyncio_future_blocking = True
            return self
        raise StopIteration(self.result())

    def throw(self, typ: Any, val: Any = None, tb: Any = None) -> NoReturn:
        error = typ if val is None else val
        if isinstance(error, type):
            error = error()
        if isinstance(error, asyncio.CancelledError):
            self.cancel()
        raise error

    def close(self) -> None:
        """Nothing to clean up: the publish goes on whether or not anything waits for it."""


async def wait_settled(futures: Sequence[asyncio.Future[None]], timeout: float | None) -> None:
    """Wait, at most `timeout`, until every future is done.

    `asyncio.wait` refuses PublishFutures (they pass for coroutines), and a task
    each would cost more than the wait.
    """
    remaining = sum(1 for future in futures if not future.done())
    if not remaining:
        return
    all_done = asyncio.get_running_loop().create_future()

    def one_done(_future: asyncio.Future[None]) -> None:
        nonlocal remaining
        remaining -= 1
        if not remaining and not all_done.done():
            all_done.set_result(None)

    waiting = [future for future in futures if not future.done()]
    for future in waiting:
        future.add_done_callback(one_done)
    try:
        async with asyncio.timeout(timeout):
            await all_done
    except TimeoutError:
        pass
    finally:
        for future in waiting:
            future.remove_done_callback(one_done)
