"""Tasks whose first step runs at once, in the caller's turn of the event loop.

A handler started with `loop.create_task()` waits for the loop's next
iteration before it runs: an RPC server would answer every request one
loop turn (a poll syscall and the loop's bookkeeping) later than it could.
Python 3.12's eager tasks remove that turn; `start_eagerly` does the same
on every version, the way they do it: the task exists before its coroutine
runs and is the current task while it does, so `asyncio.current_task()`,
`asyncio.timeout()` and context variables behave in the first step as in
any later one. The caller books the task before the step runs.

A coroutine that finishes in its first step leaves its task done then and
there, as 3.12's do: the step the new task asked the loop to schedule is
held back while the first step runs (asyncio's own `call_soon`, shadowed
on the loop for the length of `create_task`), and dropped. Had the
coroutine suspended, that step is scheduled after all, and the task goes
on from where the first step left off.
"""

from __future__ import annotations

import asyncio
import contextvars
from asyncio import tasks as _tasks
from collections.abc import Callable, Coroutine, Generator
from types import TracebackType
from typing import Any

__all__ = ["start_eagerly"]

_TaskHook = Callable[[asyncio.AbstractEventLoop, "asyncio.Task[Any]"], None]
_enter_task: _TaskHook | None = getattr(_tasks, "_enter_task", None)
_leave_task: _TaskHook | None = getattr(_tasks, "_leave_task", None)
# What a task's own step does with its result (asyncio.Task.set_result refuses callers).
_finish_task: Callable[[asyncio.Future[Any], Any], None] = asyncio.Future.set_result

# What the first step left for the task: nothing (the task runs the coroutine as
# usual), a suspension to hand on, a return value, or an exception.
_DELEGATE, _SUSPENDED, _RETURNED, _RAISED = range(4)

_Held = tuple[Callable[..., object], tuple[Any, ...], "contextvars.Context | None"]


def start_eagerly(
    loop: asyncio.AbstractEventLoop,
    coro: Coroutine[Any, Any, Any],
    book: Callable[[asyncio.Task[Any]], object],
) -> asyncio.Task[Any]:
    """A task for `coro`, booked by `book(task)`, whose first step has run when this returns."""
    runner = EagerStart(coro)
    context = contextvars.copy_context()
    if _enter_task is None or _leave_task is None or loop.get_task_factory() is not None:
        # An asyncio without these hooks, or a task factory of the program's own (which may
        # run tasks its own way, eagerly too): an ordinary task, started by the loop.
        task = loop.create_task(runner, context=context)
        book(task)
        return task
    held: list[_Held] = []

    def hold(callback: Callable[..., object], *args: Any, context: Any = None) -> None:
        held.append((callback, args, context))

    shadowed = _shadow_call_soon(loop, hold)
    try:
        task = loop.create_task(runner, context=context)
    finally:
        if shadowed:
            del loop.call_soon
    try:
        book(task)
        runner.step(loop, task, context)
    finally:
        for callback, args, callback_context in held:
            if runner.returned and getattr(callback, "__self__", None) is task:
                _finish_task(task, runner.take_result())  # done: the step is not needed
            else:
                loop.call_soon(callback, *args, context=callback_context)
    return task


def _shadow_call_soon(loop: asyncio.AbstractEventLoop, hold: Callable[..., None]) -> bool:
    """Have the loop's `call_soon` hold callbacks; False where that cannot be done."""
    attributes = getattr(loop, "__dict__", None)
    if attributes is None or "call_soon" in attributes:
        return False  # a loop without instance attributes, or patched already: let be
    loop.call_soon = hold  # type: ignore[method-assign,assignment]
    return True


class EagerStart(Coroutine[Any, Any, Any]):
    """The task's coroutine: replays the first step's outcome, then drives the real one."""

    __slots__ = ("_coro", "_outcome", "_state")

    def __init__(self, coro: Coroutine[Any, Any, Any]) -> None:
        self._coro = coro
        self._state = _DELEGATE
        self._outcome: Any = None

    def step(
        self,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[Any],
        context: contextvars.Context,
    ) -> None:
        """Run the coroutine up to its first suspension, as `task`, in its context."""
        assert _enter_task is not None
        assert _leave_task is not None
        outer = _tasks.current_task(loop)  # e.g. a handler's task that starts the next one
        if outer is not None:
            _leave_task(loop, outer)
        _enter_task(loop, task)
        try:
            context.run(self._first_step)
        finally:
            _leave_task(loop, task)
            if outer is not None:
                _enter_task(loop, outer)

    @property
    def returned(self) -> bool:
        return self._state == _RETURNED

    def take_result(self) -> Any:
        outcome, self._outcome = self._outcome, None
        self._state = _DELEGATE
        return outcome

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

    # What a task's repr, get_stack() and debuggers read: those of the coroutine it runs.

    @property
    def __name__(self) -> str:
        return getattr(self._coro, "__qualname__", type(self._coro).__name__)

    @property
    def cr_frame(self) -> Any:
        return getattr(self._coro, "cr_frame", None)

    @property
    def cr_code(self) -> Any:
        return getattr(self._coro, "cr_code", None)

    @property
    def cr_await(self) -> Any:
        return getattr(self._coro, "cr_await", None)

    @property
    def cr_running(self) -> bool:
        return bool(getattr(self._coro, "cr_running", False))

    def __await__(self) -> Generator[Any, None, Any]:
        raise TypeError("an EagerStart is run by its task, not awaited")
