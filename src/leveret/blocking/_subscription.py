"""Blocking handler-style consuming: `with conn.subscribe(queue, handler, concurrency=N):`.

The asyncio `Subscription` does the work (concurrency, the ack/requeue/
reject outcome of each message, the retry schedule, the bounded close), so
both APIs settle messages by the same rules; each handler call runs in one
of `concurrency` worker threads, so a slow handler never holds up the I/O
thread's heartbeats and acks.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from leveret import aio
from leveret._queue_arguments import StreamOffset
from leveret.aio import Retry
from leveret.aio._subscription import ErrorPolicy
from leveret.blocking._consumer import Message
from leveret.blocking._portal import Portal
from leveret.blocking._workers import Workers
from leveret.exceptions import ConnectionClosedByClient

__all__ = ["MessageHandler", "Subscription", "check_plain_handler"]

MessageHandler = Callable[[Message], object]
_STOP_WAIT = 1.0  # seconds close() waits for idle workers to end


def check_plain_handler(handler: object) -> None:
    """Refuse an async handler up front: called in a thread it would only make a coroutine."""
    if not callable(handler):
        raise TypeError(f"handler must be a function taking a message, got {handler!r}")
    call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects count too
    if inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call):
        name = getattr(handler, "__qualname__", None) or repr(handler)
        raise TypeError(
            f"handler {name} is an async function, but leveret.blocking runs handlers in "
            "worker threads: make it a plain def, or use the asyncio API "
            "(leveret.connect(...).subscribe) for async handlers"
        )


class Subscription:
    """Runs a plain function for each message of a queue: `with conn.subscribe(q, handler):`.

    Up to `concurrency` calls of `handler(msg)` run at once, each in a worker
    thread. How each message is settled:

    - the handler returns: ack;
    - the handler settled the message itself (`msg.ack()`, `msg.reject()`, ...):
      nothing more;
    - the handler raised: the `on_error` policy ("requeue_once": requeue the
      first failure, reject a redelivered one; "reject"; "requeue"), or with
      `retry=leveret.Retry(delays=...)` a retry after each delay, then parking.

    `wait()` (or `conn.subscribe_forever(...)`) blocks until the subscription
    ends: Ctrl-C, `close()` from another thread, or the error that ended it
    (e.g. ConsumerCancelled), raised in the waiting thread. Leaving the `with`
    block stops taking messages, lets running handlers finish (within the
    connection's `close_timeout`), then closes the consumer; what was not
    acked goes back to the queue.
    """

    def __init__(
        self,
        portal: Portal,
        connection: aio.Connection,
        queue: str,
        handler: MessageHandler,
        *,
        concurrency: int,
        prefetch: int | None,
        on_error: ErrorPolicy,
        retry: Retry | None,
        exclusive: bool,
        arguments: dict[str, Any] | None,
        offset: StreamOffset | None,
    ) -> None:
        check_plain_handler(handler)
        self._portal = portal
        self._handler = handler
        # Validates the options here, in the caller's thread, before anything starts.
        self._subscription = connection.subscribe(
            queue,
            self._on_message,
            concurrency=concurrency,
            prefetch=prefetch,
            on_error=on_error,
            retry=retry,
            exclusive=exclusive,
            arguments=arguments,
            offset=offset,
        )
        self._workers: Workers | None = None
        self._lock = threading.Lock()
        self._started = False
        self._closed = False

    # -- what the asyncio subscription knows -------------------------------------------------

    @property
    def queue(self) -> str:
        """The queue consumed (after a reconnect, a server-named queue's new name)."""
        return self._subscription.queue

    @property
    def concurrency(self) -> int:
        return self._subscription.concurrency

    @property
    def on_error(self) -> ErrorPolicy:
        return self._subscription.on_error

    @property
    def retry(self) -> Retry | None:
        return self._subscription.retry

    @property
    def handled(self) -> int:
        """Messages whose handler returned."""
        return self._subscription.handled

    @property
    def failed(self) -> int:
        """Messages whose handler raised."""
        return self._subscription.failed

    @property
    def running(self) -> int:
        """Handlers running right now."""
        return self._subscription.running

    # -- the I/O thread's side -----------------------------------------------------------------

    async def _on_message(self, message: aio.Message) -> None:
        """The asyncio handler: run the plain one in a worker; its exception is raised here."""
        assert self._workers is not None
        await self._workers.run(functools.partial(self._call, Message(message, self._portal)))

    def _call(self, message: Message) -> None:
        result = self._handler(message)
        if inspect.isawaitable(result):
            close = getattr(result, "close", None)
            if callable(close):
                close()  # never awaited: no "never awaited" warning on top
            raise TypeError(
                f"handler {self._handler!r} returned an awaitable; leveret.blocking runs "
                "plain functions: make it a def, or use the asyncio API for async handlers"
            )

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start taking messages (done by `with`; idempotent)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._portal.refuse_loop_thread("Subscription.start()")
            self._workers = Workers(
                self._portal, self._subscription.concurrency, f"leveret-sub-{self.queue}"
            )
            try:
                self._portal.call(self._subscription.start(), "Subscription.start()")
            except BaseException:
                self._closed = True
                try:
                    self._portal.call(self._subscription.close(), "Subscription.close()")
                except Exception:  # noqa: BLE001 - the start's own error is the one to raise
                    pass
                finally:
                    self._workers.stop(_STOP_WAIT)
                raise
            self._started = True

    def wait(self, timeout: float | None = None) -> None:
        """Block while the subscription runs; returns after `close()` (from another thread) or
        `timeout` seconds, raises what ended it (ConsumerCancelled, a channel or connection
        error). Ctrl-C interrupts it with KeyboardInterrupt."""
        if self._closed:
            return
        if not self._started:
            self.start()
        try:
            self._portal.call(self._wait(), "Subscription.wait()", timeout)
        except TimeoutError:
            if timeout is None:
                raise

    async def _wait(self) -> None:
        try:
            await self._subscription.wait_closed()
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or not self._closed:
                raise  # this wait was abandoned (a timeout, Ctrl-C), not the subscription closed
        except StopAsyncIteration:
            pass  # its consumer was closed: an end, not an error

    def close(self) -> None:
        """Stop taking messages, let running handlers finish (within `close_timeout`), close
        the consumer. Idempotent. Raises what had ended the subscription, if anything did,
        so that an error nobody waited for is not lost."""
        self._close(raise_failure=True)

    def _close(self, raise_failure: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._portal.refuse_loop_thread("Subscription.close()")
            self._closed = True
        failure: BaseException | None = None
        try:
            failure = self._portal.call(self._stop(), "Subscription.close()")
        except ConnectionClosedByClient:
            pass  # the connection is closed, and the subscription with it
        finally:
            if self._workers is not None:
                # Handlers had close_timeout to finish; one still running is abandoned.
                self._workers.stop(_STOP_WAIT)
        if failure is not None and raise_failure:
            raise failure.with_traceback(None)

    def _connection_closed(self) -> None:
        """The connection closed under a running subscription: let its idle workers end."""
        if self._workers is not None:
            self._workers.stop(0.0)

    async def _stop(self) -> BaseException | None:
        try:
            await self._subscription.__aexit__(None, None, None)
        except StopAsyncIteration:
            return None
        except Exception as exc:  # noqa: BLE001 - raised in the caller's thread instead
            return exc
        return None

    def __enter__(self) -> Subscription:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        # An exception already on its way out (Ctrl-C, the error wait() raised) is not replaced.
        self._close(raise_failure=exc is None)

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running" if self._started else "not started"
        return (
            f"<leveret.blocking.Subscription queue={self.queue!r} "
            f"concurrency={self.concurrency} {state}>"
        )
