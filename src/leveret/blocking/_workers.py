"""Worker threads that run plain functions for the I/O thread.

The I/O thread must never run user code that blocks (heartbeats and acks
would stall), so a handler runs in one of a fixed set of daemon threads and
its outcome comes back as an asyncio future the I/O thread can await. The
threads are daemons: a handler stuck forever does not keep the interpreter
from exiting.
"""

from __future__ import annotations

import asyncio
import contextvars
import queue
import threading
import time
from collections.abc import Callable
from typing import Any, TypeVar

from leveret.blocking._portal import Portal

__all__ = ["Workers"]

T = TypeVar("T")
_Job = tuple[Callable[[Callable[[], Any]], Any], Callable[[], Any], "asyncio.Future[Any]"]


def _resolve(future: asyncio.Future[Any], result: object, error: Exception | None) -> None:
    if future.done():
        return  # nobody waits for this call any more (it was cancelled on closing)
    if error is not None:
        future.set_exception(error)
    else:
        future.set_result(result)


class Workers:
    """`size` daemon threads taking calls from the I/O thread, one at a time each."""

    def __init__(self, portal: Portal, size: int, name: str) -> None:
        self._portal = portal
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads = [
            threading.Thread(target=self._work, name=f"{name}-{number}", daemon=True)
            for number in range(1, size + 1)
        ]
        for thread in self._threads:
            thread.start()

    def run(self, function: Callable[[], T]) -> asyncio.Future[T]:
        """In the I/O thread: queue one call; the returned future gets its outcome.

        The call runs in a copy of the caller's context (as `asyncio.to_thread`
        does), so context variables such as the current trace span reach it.
        """
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._jobs.put((contextvars.copy_context().run, function, future))
        return future

    def _work(self) -> None:
        while (job := self._jobs.get()) is not None:
            run_in_context, function, future = job
            result: object = None
            error: Exception | None = None
            try:
                result = run_in_context(function)
            except Exception as exc:  # noqa: BLE001 - handed to whoever awaits the future
                error = exc
            except BaseException as exc:  # noqa: BLE001 - e.g. SystemExit in a handler
                error = RuntimeError(f"the handler raised {exc!r}")
            self._portal.call_soon_threadsafe(_resolve, future, result, error)
            del job, run_in_context, function, future, result, error  # hold nothing while idle

    def stop(self, timeout: float) -> None:
        """Let each worker finish its current call, then end; wait up to `timeout` for that."""
        for _ in self._threads:
            self._jobs.put(None)
        if any(thread is threading.current_thread() for thread in self._threads):
            return  # closed from a handler: it cannot wait for itself
        deadline = time.monotonic() + timeout
        for thread in self._threads:
            thread.join(max(0.0, deadline - time.monotonic()))
