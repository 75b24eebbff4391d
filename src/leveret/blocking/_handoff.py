"""How a blocking publish waits for its confirm: a Handoff per call, a Relay per connection.

`Portal.run` queues a `Handoff` (the job and a slot for its outcome) for the
loop thread; the thread that called waits on the handoff's lock, which the
`Relay` releases once the outcome is in, waking the waiting threads one at a
time. Both are used from two threads at once, the loop thread and the caller,
and rely on the GIL: no lock guards them (see `Relay`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from collections import deque
from collections.abc import Callable
from typing import Any, Generic, TypeVar

__all__ = ["Handoff", "Relay"]

T = TypeVar("T")


class Relay:
    """Wakes the threads waiting in `Portal.run` one at a time: each woken one wakes the next.

    The loop thread settles handoffs in bursts (one confirm from the broker
    can cover many publishes). Waking all their threads at once has them fight
    for the GIL, held by the loop thread as it wakes them and then by each
    other: a thread woken while another holds the GIL sleeps again, on the
    GIL, and these extra sleeps and wakeups (futex calls, context switches)
    cost more than the Python code they wait to run. So the loop thread wakes
    the first thread, and each woken thread wakes the next one as its wait
    ends (`Handoff.leave`), before it returns to its caller.

    The threads taking turns also take turns to kick the loop: a thread that
    queues its next job while another is awake leaves the kick to that one,
    so the jobs of a whole burst reach the loop thread together, at the cost
    of one wakeup and one socket write instead of one or two each
    (`Portal.start`, `Portal.run`).

    No lock, so that no thread can ever block another here (a Ctrl-C can land
    anywhere in the main thread): deque operations and attribute stores are
    atomic under the GIL, and every interleaving leaves either a thread awake
    that will pump on its way out, or the queue empty. A rare race can wake
    two threads at once, which costs only the contention this avoids. And
    should a woken thread never leave, its successors still see their outcome
    within one wait slice, and the first to do so moves on (`Handoff.leave`);
    a job left queued with no kick to come is kicked after one slice
    (`Portal.wait`).
    """

    __slots__ = ("_awake", "_queue")

    def __init__(self) -> None:
        self._queue: deque[Handoff[Any]] = deque()  # settled, their threads not woken yet
        self._awake: Handoff[Any] | None = None  # the one woken last, until its thread leaves

    @property
    def busy(self) -> bool:
        """Whether a woken thread has yet to leave: it will wake the next, or kick the loop."""
        awake = self._awake
        return awake is not None and not awake.left

    def settled(self, handoff: Handoff[Any]) -> None:
        """In the loop thread: the handoff's outcome is in; wake its thread now or in turn."""
        self._queue.append(handoff)
        self.pump()

    def pump(self) -> None:
        """Wake the next waiting thread, unless the one woken last has yet to leave."""
        while not self.busy:
            try:
                handoff = self._queue.popleft()
            except IndexError:  # none left (another thread may have emptied it meanwhile)
                self._awake = None
                return
            if not handoff.left:
                self._awake = handoff
                handoff.wake()
            # Round again: if its thread left meanwhile, it may have found no one to wake.

    def unstick(self) -> None:
        """Forget the thread woken last: it was too slow to leave (see `Handoff.leave`)."""
        self._awake = None
        self.pump()


class Handoff(Generic[T]):
    """One job for the loop thread (`begin`), and its outcome, for the one thread that waits.

    What `Portal.start` queues and `Portal.run` waits for: lighter than a
    `concurrent.futures.Future` (a Condition over an RLock, a fresh lock per
    wait, a callback list), as the blocking publish pays for one per message.
    A slot for the outcome and a lock, taken at creation, that the `Relay`
    releases to wake the waiting thread once the outcome is in. `result`,
    `done` and `cancel` mean what they mean on the future, so `Portal.wait`
    takes either.
    """

    __slots__ = (
        "_begin",
        "_done",
        "_error",
        "_passed_over",
        "_ready",
        "_relay",
        "_value",
        "_woken",
        "left",
    )

    def __init__(self, relay: Relay, begin: Callable[[], asyncio.Future[T]]) -> None:
        self._relay = relay
        self._begin: Callable[[], asyncio.Future[T]] | None = begin
        self._ready = threading.Lock()
        self._ready.acquire()  # released to wake the waiting thread: the outcome is in
        self._woken = False
        self._passed_over = False
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None  # or CancelledError: the work was cancelled
        self.left = False  # the waiting thread is gone: no job to start, no thread to wake

    # -- the loop thread ------------------------------------------------------------------

    def begin(self) -> None:
        """Start the job, unless its thread stopped waiting (Ctrl-C, a timeout) before."""
        begin, self._begin = self._begin, None
        if begin is None or self.left:
            return
        try:
            future = begin()
        except BaseException as exc:  # noqa: BLE001 - handed to the waiting thread
            self.settle(None, exc)
            return
        future.add_done_callback(self.copy_outcome)

    def settle(self, value: T | None, error: BaseException | None) -> None:
        """Store the outcome (the first only) and have the relay wake the waiting thread."""
        if self._done:
            return
        self._value = value
        self._error = error
        self._done = True
        if not self.left:
            self._relay.settled(self)

    def copy_outcome(self, done: asyncio.Future[T]) -> None:
        """A done callback: settle with the asyncio future's outcome."""
        if done.cancelled():
            self.settle(None, concurrent.futures.CancelledError())
        elif (exc := done.exception()) is not None:
            self.settle(None, exc)
        else:
            self.settle(done.result(), None)

    def wake(self) -> None:
        """Called by the relay, in whichever thread pumps it."""
        self._woken = True
        self._ready.release()

    # -- the waiting thread ---------------------------------------------------------------

    def done(self) -> bool:
        return self._done

    def cancel(self) -> None:
        """Keep the job from starting: once started (a publish sent), it runs its course."""
        self.left = True

    def leave(self) -> None:
        """The waiting thread is done with it, whatever the outcome: wake the next thread."""
        self.left = True
        if self._passed_over:
            # Its outcome came in, but not its turn, within a whole wait slice: the thread
            # woken last has not left. Move on without it rather than wait for it.
            self._relay.unstick()
        else:
            self._relay.pump()

    def result(self, timeout: float | None = None) -> T:
        """The outcome, raised or returned; TimeoutError if it is not in within `timeout` s."""
        if not self._done and not self._ready.acquire(timeout=-1 if timeout is None else timeout):
            if not self._done:
                raise TimeoutError
            self._passed_over = not self._woken  # its outcome came in, but not its turn
        error = self._error
        if error is not None:
            try:
                raise error
            finally:
                del self, error  # the traceback keeps this frame: no reference cycle through it
        return self._value  # type: ignore[return-value]  # T, as no error was stored
