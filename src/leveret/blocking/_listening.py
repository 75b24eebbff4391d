"""`with conn.listen(exchange, ...) as messages:` pub/sub in one line, blocking style."""

from __future__ import annotations

from types import TracebackType

from leveret import aio
from leveret.blocking._consumer import Consumer
from leveret.blocking._portal import Portal
from leveret.exceptions import ConnectionClosedByClient

__all__ = ["Listening"]


class Listening:
    """A private queue bound to an exchange, consumed while the block runs, deleted after.

    Entering the block declares the exchange, the queue and its bindings and
    starts consuming; it gives a `Consumer` to iterate (`for msg in messages`,
    `messages.iter(timeout=...)`, `messages.receive(timeout)`).
    """

    def __init__(self, portal: Portal, listening: aio.Listening) -> None:
        self._portal = portal
        self._listening = listening
        self._consumer: Consumer | None = None

    @property
    def exchange(self) -> str:
        return self._listening.exchange

    @property
    def queue(self) -> str:
        """The private queue's name (it changes if a reconnect re-declares it)."""
        if self._consumer is None:
            raise RuntimeError("not listening yet: use `with conn.listen(...) as messages:`")
        return self._consumer.queue

    def __enter__(self) -> Consumer:
        if self._consumer is not None:
            raise RuntimeError("already listening: a Listening is entered once")
        portal = self._portal
        portal.refuse_loop_thread("listen()")
        consumer = Consumer(portal, portal.call(self._listening.__aenter__(), "listen()"))
        try:
            consumer.start()  # the asyncio consumer runs already: this starts the hand-over
        except BaseException:
            self._leave()
            raise
        self._consumer = consumer
        return consumer

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        consumer.close()  # wakes a thread still iterating
        self._leave()

    def _leave(self) -> None:
        """Close the asyncio consumer (if still open) and delete the private queue."""
        try:
            self._portal.call(self._listening.__aexit__(None, None, None), "listen() exit")
        except ConnectionClosedByClient:
            pass  # the queue was exclusive: it went with the connection

    def __repr__(self) -> str:
        state = "listening" if self._consumer is not None else "not started"
        return f"<leveret.blocking.Listening exchange={self.exchange!r} {state}>"
