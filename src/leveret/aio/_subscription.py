"""Handler-style consuming: `async with conn.subscribe(queue, handler, concurrency=N):`.

The subscription runs up to N handlers at once and settles each message by
what its handler did, so user code never forgets an ack:

- the handler returns: ack;
- the handler settled the message itself: nothing more;
- the handler raised: the `on_error` policy, or the `retry` schedule.

Leaving the block stops taking messages, waits (up to the connection's
`drain_timeout`) for running handlers, then closes the consumer; whatever
was not acked goes back to the queue. Closing the connection with
subscriptions still running does the same for each of them first.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

from leveret.aio._consumer import Consumer
from leveret.aio._drain import finish_handlers
from leveret.aio._eager import start_eagerly
from leveret.aio._message import Message
from leveret.aio._retry import Retry
from leveret.exceptions import ConsumerTimeout

if TYPE_CHECKING:
    from leveret.aio._connection import Connection

__all__ = [
    "ErrorPolicy",
    "MessageHandler",
    "Subscription",
    "check_handler",
    "check_subscription_options",
]

log = logging.getLogger("leveret.consumer")

MessageHandler = Callable[[Message], Awaitable[Any]]
ErrorPolicy = Literal["requeue_once", "reject", "requeue"]
ERROR_POLICIES: tuple[str, ...] = ("requeue_once", "reject", "requeue")


class Subscription:
    """A consumer whose messages go to `handler`, up to `concurrency` at a time.

    On a handler exception, `on_error` decides (unless `retry` is given):

    - "requeue_once" (the default): the first failure requeues the message
      for one more try; a message that fails again after coming back
      (`redelivered`) is rejected, i.e. dead-lettered when the queue has a
      dead-letter exchange and dropped otherwise. Nothing loops forever.
    - "reject": reject at once, without requeueing.
    - "requeue": always requeue. A message that always fails then loops
      forever: use only when failures are known to be transient.

    With `retry=Retry(delays=...)`, a failed message is retried after each
    delay in turn (through TTL'd retry queues) and parked after the last.

    A handler that holds its message past the broker's consumer_timeout does
    not end the subscription: the broker closes the channel and requeues the
    message, the subscription logs it, counts it in `timed_out` and consumes
    again; the slow handler's ack is not sent (the message is redelivered).
    """

    def __init__(
        self,
        connection: Connection,
        consumer: Consumer,
        handler: MessageHandler,
        *,
        concurrency: int,
        on_error: ErrorPolicy,
        retry: Retry | None,
    ) -> None:
        self._connection = connection
        self._consumer = consumer
        self._handler = handler
        self.concurrency = concurrency
        self.on_error = on_error
        self.retry = retry
        self._runner: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._dispatching = False  # _dispatch is running: a nested call leaves it to that one
        self._closed = False
        self._failure: BaseException | None = None
        self.handled = 0  # messages whose handler returned
        self.failed = 0  # messages whose handler raised
        self.timed_out = 0  # channels the broker closed for its consumer_timeout
        # Spans wrap the handler here rather than the consumer's hand-out.
        self._telemetry = connection._telemetry
        consumer._telemetry = None

    @property
    def queue(self) -> str:
        """The queue consumed (after a reconnect, a server-named queue's new name)."""
        return self._consumer.queue

    @property
    def running(self) -> int:
        """Handlers running right now."""
        return len(self._tasks)

    async def start(self) -> None:
        if self._runner is not None:
            return
        if self.retry is not None:
            await self.retry.declare(self._connection, self._consumer.queue)
        await self._consumer.start()
        self._runner = asyncio.ensure_future(self._run())
        self._connection._subscriptions[self] = None  # closing the connection drains it

    async def __aenter__(self) -> Subscription:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        failure = await self._stop()
        if failure is not None and exc is None:
            raise failure.with_traceback(None)

    async def close(self) -> None:
        """Stop taking messages, let running handlers finish (bounded), close the consumer."""
        await self._stop()

    async def wait_closed(self) -> None:
        """Run until the subscription ends; raises why (e.g. ConsumerCancelled, a channel error)."""
        if self._runner is None:
            await self.start()
        assert self._runner is not None
        await asyncio.shield(self._runner)

    async def _stop(
        self, timeout: float | None = None, spare: asyncio.Task[Any] | None = None
    ) -> BaseException | None:
        """Stop; the first call does the work. A failure kept by a connection's drain is
        returned by the next call (the owner's `async with` exit). `spare`: a handler's
        task not to wait for (the one closing the connection)."""
        if self._closed:
            kept, self._failure = self._failure, None
            return kept
        self._closed = True
        self._connection._subscriptions.pop(self, None)
        failure: BaseException | None = None
        runner = self._runner
        if runner is not None:
            if runner.done():
                if not runner.cancelled():
                    failure = runner.exception()
            else:
                runner.cancel()
                try:
                    await runner
                except asyncio.CancelledError:
                    pass
                except Exception as exc:  # noqa: BLE001 - reported to the caller below
                    failure = exc
        connection = self._connection
        await finish_handlers(
            self._tasks,
            connection.drain_timeout if timeout is None else timeout,
            connection.close_timeout,
            self.queue,
            spare,
        )
        await self._consumer.close()
        return failure

    async def _run(self) -> None:
        """Dispatch what is buffered; end with the consumer (raising why it ended).

        Deliveries arriving while slots are free start their handler from
        `on_arrival` directly, one event-loop iteration sooner than a task
        woken to fetch them could.
        """
        consumer = self._consumer
        consumer.on_arrival = self._dispatch
        try:
            while True:
                self._dispatch()
                if consumer.closed:
                    return
                if len(consumer) == 0 and consumer.error is not None:
                    if not isinstance(consumer.error, ConsumerTimeout):
                        raise consumer.error.with_traceback(None)
                    self._consumer_timed_out(consumer.error)
                    await consumer.restart()
                    continue
                await consumer.wait_for_change()
        finally:
            consumer.on_arrival = None

    def _dispatch(self) -> None:
        if self._dispatching:
            return  # a handler that finished in its first step: the loop below goes on
        consumer = self._consumer
        loop = self._connection._loop
        self._dispatching = True
        try:
            while len(self._tasks) < self.concurrency and not self._closed:
                message = consumer.take()
                if message is None:
                    return
                # The handler's first step runs now, not a loop turn later: an RPC
                # reply goes out in the turn that read its request.
                start_eagerly(loop, self._handle(message), self._book)
        finally:
            self._dispatching = False

    def _book(self, task: asyncio.Task[None]) -> None:
        self._tasks.add(task)
        task.add_done_callback(self._finished)

    def _consumer_timed_out(self, exc: ConsumerTimeout) -> None:
        self.timed_out += 1
        log.warning(
            "leveret: a message on %r stayed unacked past the broker's consumer_timeout and "
            "comes back redelivered (its handler's ack is not sent); consuming again: %s",
            self.queue,
            exc,
        )

    def _finished(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        if not self._closed and self._runner is not None and not self._runner.done():
            self._dispatch()
            consumer = self._consumer
            if consumer.error is not None and len(consumer) == 0:
                consumer.wake()  # the runner raises it once the buffer is drained

    async def _handle(self, message: Message) -> None:
        try:
            if self._telemetry is None:
                await self._handler(message)
            else:
                await self._telemetry.process(message, self._consumer.queue, self._handler)
        except asyncio.CancelledError:
            raise  # closing: the message is requeued with the channel
        except Exception as exc:  # noqa: BLE001 - the policy below decides; never lost
            self.failed += 1
            if message.settled or message.stale:
                log.warning("leveret: handler for %r raised after settling: %r", self.queue, exc)
            elif self.retry is not None:
                await self.retry.failed(self._connection, self._consumer.queue, message, exc)
            else:
                self._apply_policy(message, exc)
        else:
            self.handled += 1
            if not message.settled:
                message.ack()
        finally:
            # The task takes itself off the books as its last step, rather than in its done
            # callback, which would cost every message one more event-loop turn. (A task
            # cancelled before it started never gets here: the callback stays for it.)
            task = asyncio.current_task(self._connection._loop)
            if task is not None and task in self._tasks:
                task.remove_done_callback(self._finished)
                self._finished(task)

    def _apply_policy(self, message: Message, exc: Exception) -> None:
        policy = self.on_error
        if policy == "requeue" or (policy == "requeue_once" and not message.redelivered):
            log.warning(
                "leveret: handler for %r raised %r; message requeued", self.queue, exc, exc_info=exc
            )
            message.nack(requeue=True)
        else:
            log.error(
                "leveret: handler for %r raised %r; message rejected (dead-lettered if the queue "
                "has a dead-letter exchange)",
                self.queue,
                exc,
                exc_info=exc,
            )
            message.reject(requeue=False)


def check_handler(handler: object, what: str = "handler") -> None:
    """Refuse a plain function up front: its messages would otherwise fail one by one."""
    call = getattr(handler, "__call__", None)  # noqa: B004 - async callable objects count too
    if not (inspect.iscoroutinefunction(handler) or inspect.iscoroutinefunction(call)):
        raise TypeError(f"{what} must be an async function (async def), got {handler!r}")


def check_subscription_options(concurrency: object, on_error: object, retry: object) -> None:
    if not isinstance(concurrency, int) or isinstance(concurrency, bool) or concurrency < 1:
        raise ValueError(f"concurrency must be a positive int, got {concurrency!r}")
    if on_error not in ERROR_POLICIES:
        raise ValueError(f"on_error must be one of {', '.join(ERROR_POLICIES)}, got {on_error!r}")
    if retry is not None and not isinstance(retry, Retry):
        raise TypeError(f"retry must be a leveret.Retry, got {type(retry).__name__}")
