"""Tasks whose first step runs at once, in the caller's turn of the event loop.

A handler started with `loop.create_task()` waits for the loop's next
iteration before it runs: an RPC server would answer every request one
loop turn (a poll syscall and the loop's bookkeeping) later than it could.
Python 3.12's eager tasks remove that turn; this module does the same on
every version, the way they do it: the task exists before its coroutine
runs and is the current task while it does, so `asyncio.current_task()`,
`asyncio.timeout()` and context variables behave in the first step as in
any later one. The caller gets the task before the step, to book it first.

One difference from 3.12: a coroutine that finishes in its first step still
has its task complete in the loop's next turn. Its work, e.g. a reply
written to the socket, is done by then.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks as _tasks
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

__all__ = ["EagerStart"]

_TaskHook = Callable[[asyncio.AbstractEventLoop, "asyncio.Task[Any]"], None]
_enter_task: _TaskHook | None = getattr(_tasks, "_enter_task", None)
_leave_task: _TaskHook | None = getattr(_tasks, "_leave_task", None)

# What the first step left for the task: nothing (the task runs the coroutine as
# usual), a suspension to hand on, a return value, or an exception.
_DELEGATE, _SUSPENDED, _RETURNED, _RAISED = range(4)


class EagerStart(Coroutine[Any, Any, Any]):
    """The task's coroutine: replays the first step's outcome, then drives the real one."""

    __slots__ = ("_context", "_coro", "_loop", "_outcome", "_state", "task")

    def __init__(self, loop: asyncio.AbstractEventLoop, coro: Coroutine[Any, Any, Any]) -> None:
        self._loop = loop
        self._coro = coro
        self._state = _DELEGATE
        self._outcome: Any = None
        self._context = contextvars.copy_context()
        self.task: asyncio.Task[Any] = loop.create_task(self, context=self._context)

    def step(self) -> None:
        """Run the coroutine up to its first suspension, as its task, in its context."""
        if _enter_task is None or _leave_task is None:
            return  # an asyncio without these hooks: the task runs the first step itself
        loop, task = self._loop, self.task
        outer = _tasks.current_task(loop)  # e.g. a handler's task that starts the next one
        if outer is not None:
            _leave_task(loop, outer)
        _enter_task(loop, task)
        try:
            self._context.run(self._first_step)
        finally:
            _leave_task(loop, task)
            if outer is not None:
                _enter_task(loop, outer)

    def _first_step(self) -> None:
        try:
            self._outcome = self._coro.send(None)
            self._state = _SUSPENDED
        except StopIteration as stop:
            self._outcome = stop.value
            self._state = _RETURNED
        except BaseException as exc:  # the task raises it, as its own step would have
            self._outcome = exc
            self._state = _RAISED
            if isinstance(exc, (KeyboardInterrupt, SystemExit)):
                raise

    # -- the coroutine protocol, as the task drives it ---------------------------------------

    def send(self, value: Any) -> Any:
        state = self._state
        if state == _DELEGATE:
            return self._coro.send(value)
        return self._replay(state, None)

    def throw(
        self,
        typ: type[BaseException] | BaseException,
        val: BaseException | object = None,
        tb: TracebackType | None = None,
    ) -> Any:
        exc = typ if isinstance(typ, BaseException) else typ() if val is None else val
        assert isinstance(exc, BaseException)
        state = self._state
        if state == _DELEGATE:
            return self._coro.throw(exc)
        return self._replay(state, exc)

    def _replay(self, state: int, exc: BaseException | None) -> Any:
        outcome, self._outcome = self._outcome, None
        self._state = _DELEGATE
        if state == _SUSPENDED:
            # The task's first step: hand it what the coroutine waits for. A cancellation
            # that came before it goes into the coroutine, where it waits.
            return outcome if exc is None else self._coro.throw(exc)
        if state == _RETURNED:
            raise StopIteration(outcome)  # done already: a late cancel changes nothing
        raise outcome

    def close(self) -> None:
        self._coro.close()

    @property
    def __name__(self) -> str:  # what a task's repr shows: the coroutine it runs
        return getattr(self._coro, "__qualname__", type(self._coro).__name__)

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("an EagerStart is run by its task, not awaited")
