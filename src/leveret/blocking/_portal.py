"""The portal: one asyncio event loop in a daemon thread, and blocking calls into it.

Every blocking call hands a coroutine to the loop thread with
`asyncio.run_coroutine_threadsafe` and waits for its outcome, so heartbeats,
acks and reconnection go on in the loop thread while the caller blocks. The
blocking publish, the hot path, takes a lighter way, `Portal.run`: a queued
job (one loop wakeup for all those queued meanwhile) whose outcome comes back
through a `Handoff` (a lock and a slot instead of a future), the waiting
threads woken one at a time by a `Relay`.

Waits are interruptible: a real Ctrl-C interrupts the main thread's wait at
once, and the main thread waits in short slices so that a SIGINT that landed
on another thread (`signal.raise_signal` there, `_thread.interrupt_main()`)
reaches it within one slice. An interrupted wait cancels its coroutine and
re-raises in the caller's thread; the connection stays usable.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from leveret._loop import new_event_loop
from leveret.blocking._handoff import Handoff, Relay
from leveret.exceptions import ConnectionClosedByClient

__all__ = ["Portal"]

log = logging.getLogger("leveret.blocking")

T = TypeVar("T")
_MAIN_SLICE = 0.05  # seconds between looks at pending signals while the main thread waits
_OTHER_SLICE = 1.0  # other threads get no signals: they only check that the loop is alive
_DRAIN_TIMEOUT = 2.0  # seconds cancelled tasks get to finish when the loop stops

# Closers of every blocking connection still open, run (bounded) at interpreter exit:
# the loop threads are daemons, so nothing would otherwise close their sockets.
_open: dict[int, Callable[[], None]] = {}
_open_lock = threading.Lock()


@atexit.register
def _close_all_at_exit() -> None:
    with _open_lock:
        closers = list(_open.values())
        _open.clear()
    for close in closers:
        try:
            close()
        except BaseException:  # noqa: BLE001 - at exit, a failed close must not stop the others
            pass


def wait_slice() -> float:
    """How long one slice of a blocking wait lasts in this thread.

    Python runs signal handlers (Ctrl-C's KeyboardInterrupt) in the main
    thread only, between bytecodes: a real SIGINT interrupts a blocked wait at
    once, but one raised from another thread (`signal.raise_signal` there,
    `_thread.interrupt_main()`) waits for the main thread to wake up.
    """
    return _MAIN_SLICE if threading.current_thread() is threading.main_thread() else _OTHER_SLICE


def register_at_exit(key: int, close: Callable[[], None]) -> None:
    with _open_lock:
        _open[key] = close


def unregister_at_exit(key: int) -> None:
    with _open_lock:
        _open.pop(key, None)


class Portal:
    """An event loop running in a daemon thread of its own, and the ways into it."""

    def __init__(self, name: str) -> None:
        self.loop = new_event_loop()  # uvloop's when installed
        self._stopped = False
        # Quick jobs from other threads: one wakeup of the loop for all those queued meanwhile.
        self._inbox: deque[Handoff[Any]] = deque()
        self._inbox_scheduled = False
        self._relay = Relay()  # wakes the threads waiting in run(), one at a time
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    # -- the loop thread -----------------------------------------------------------------

    def _run(self) -> None:
        loop = self.loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_forever()
            tasks = asyncio.all_tasks(loop)
            for task in tasks:
                task.cancel()
            if tasks:
                loop.run_until_complete(asyncio.wait(tasks, timeout=_DRAIN_TIMEOUT))
                for task in tasks:
                    if task.done() and not task.cancelled():
                        task.exception()  # retrieved: nobody awaits these any more
            loop.run_until_complete(loop.shutdown_asyncgens())
        except BaseException:  # a bug: log it under leveret's name rather than the thread's
            log.exception("leveret: the blocking connection's I/O thread failed")
        finally:
            asyncio.set_event_loop(None)
            loop.close()

    @property
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    @property
    def stopped(self) -> bool:
        return self._stopped or not self._thread.is_alive()

    def stop(self, timeout: float) -> None:
        """Stop the loop (its tasks are cancelled) and wait, bounded, for the thread to end."""
        self._stopped = True
        if self.in_loop_thread:
            self.loop.stop()
            return
        try:
            self.loop.call_soon_threadsafe(self.loop.stop)
        except RuntimeError:
            pass  # already closed
        self._thread.join(timeout)

    # -- calls from other threads -----------------------------------------------------------

    def refuse_loop_thread(self, what: str) -> None:
        """Raise RuntimeError in the loop thread, where waiting for the loop would deadlock."""
        if self.in_loop_thread:
            raise RuntimeError(
                f"leveret.blocking: {what} was called from the connection's own I/O thread "
                "(e.g. from a connection listener), where it would wait for itself forever; "
                "call it from another thread, or use the asyncio API (leveret.connect) there"
            )

    def _check_caller(self, what: str) -> None:
        self.refuse_loop_thread(what)
        if self.stopped:
            raise ConnectionClosedByClient("the connection was closed by the client")

    def submit(
        self, coro: Coroutine[Any, Any, T], what: str = "a blocking call"
    ) -> concurrent.futures.Future[T]:
        """Start `coro` on the loop; its outcome arrives in the returned future."""
        try:
            self._check_caller(what)
            return asyncio.run_coroutine_threadsafe(coro, self.loop)
        except RuntimeError as exc:
            coro.close()  # never started: no "never awaited" warning
            if self.in_loop_thread:
                raise
            raise ConnectionClosedByClient("the connection was closed by the client") from exc
        except BaseException:
            coro.close()
            raise

    def call(
        self,
        coro: Coroutine[Any, Any, T],
        what: str = "a blocking call",
        timeout: float | None = None,
    ) -> T:
        """Run `coro` on the loop and wait for its outcome (raised here, as it would be there).

        `timeout` (None: unbounded) raises TimeoutError and cancels the coroutine.
        """
        return self.wait(self.submit(coro, what), timeout)

    def wait(
        self, future: concurrent.futures.Future[T] | Handoff[T], timeout: float | None = None
    ) -> T:
        """Wait for a future completed by the loop thread; interruptible; cancels it if abandoned."""
        try:
            deadline = None if timeout is None else time.monotonic() + timeout
            piece = wait_slice()
            while True:
                try:
                    return future.result(
                        piece
                        if deadline is None
                        else max(0.0, min(piece, deadline - time.monotonic()))
                    )
                except TimeoutError:
                    pass
                # Outside the except block: a Ctrl-C landing here must not come with the
                # TimeoutError as a second, chained traceback.
                if future.done():
                    return future.result()  # it finished meanwhile, or raised TimeoutError
                if not self._thread.is_alive():
                    raise ConnectionClosedByClient("the connection was closed by the client")
                if self._inbox:
                    self._kick()  # in case the thread due to kick never did (see `Relay`)
                if deadline is not None and time.monotonic() >= deadline:
                    raise TimeoutError
        except concurrent.futures.CancelledError:
            # Cancelled by the loop shutting down (a close() from another thread).
            raise ConnectionClosedByClient(
                "the connection was closed while this call waited"
            ) from None
        except BaseException:
            if not future.done():
                self.cancel(future)
            raise

    def cancel(self, future: concurrent.futures.Future[Any] | Handoff[Any]) -> None:
        # Cancelling chains to the task through call_soon_threadsafe, which fails (and
        # would be logged with a traceback) once the loop is closed.
        if not self.loop.is_closed():
            try:
                future.cancel()
            except RuntimeError:
                pass

    def run_soon(self, function: Callable[[], T], default: T) -> T:
        """Run a quick, non-blocking `function` on the loop thread and return what it returned.

        `default` when the loop is gone. Never deadlocks: in the loop thread it runs at once.
        """
        if self.in_loop_thread:
            return function()
        if self.stopped:
            return default
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def run() -> None:
            if not future.set_running_or_notify_cancel():
                return
            try:
                future.set_result(function())
            except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
                future.set_exception(exc)

        try:
            self.loop.call_soon_threadsafe(run)
        except RuntimeError:
            return default
        try:
            return self.wait(future)
        except ConnectionClosedByClient:
            return default

    def run(self, begin: Callable[[], asyncio.Future[T]], what: str = "a blocking call") -> T:
        """Run `begin` on the loop and wait for its outcome, raised here as it would be there.

        `begin` must not block: it starts the work and returns its future (as
        `Connection.publish` does). This is the blocking publish's way in,
        lighter than `call`: no coroutine, no task, a `Handoff` instead of a
        future, and threads that take turns (see `Relay`): one woken at a
        time, and one loop wakeup for all the jobs they queue meanwhile.
        """
        handoff = self.start(begin, what)
        try:
            return self.wait(handoff)
        finally:
            handoff.leave()
            if self._inbox and not self._relay.busy:
                self._kick()  # the last of the woken threads sends the jobs they queued

    def start(self, begin: Callable[[], asyncio.Future[T]], what: str) -> Handoff[T]:
        """Queue `begin` for the loop thread; `run` waits for the handoff, then leaves it."""
        self._check_caller(what)
        handoff = Handoff(self._relay, begin)
        self._inbox.append(handoff)
        # While another woken thread has yet to leave, it (or the one it wakes) will kick
        # the loop: a burst of publishes then costs one loop wakeup and one write.
        if not self._relay.busy and not self._kick():
            raise ConnectionClosedByClient("the connection was closed by the client")
        return handoff

    def _kick(self) -> bool:
        """Have the loop drain the inbox soon, unless it is due to already; False if it closed."""
        if self._inbox_scheduled:
            return True
        self._inbox_scheduled = True
        try:
            self.loop.call_soon_threadsafe(self._drain_inbox)
        except RuntimeError:
            self._inbox_scheduled = False
            return False
        return True

    def _drain_inbox(self) -> None:
        self._inbox_scheduled = False  # before popping: a job queued from now on schedules again
        inbox = self._inbox
        while inbox:
            inbox.popleft().begin()

    def call_soon_threadsafe(self, function: Callable[..., object], *args: Any) -> bool:
        """Schedule `function(*args)` on the loop; False if the loop has closed."""
        try:
            self.loop.call_soon_threadsafe(function, *args)
        except RuntimeError:
            return False
        return True
