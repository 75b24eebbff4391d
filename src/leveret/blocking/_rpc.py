"""Blocking RPC server: `with conn.serve(queue, handler):` with a plain-function handler.

The asyncio `RpcServer` does the work (consume, reply, ack behind the
reply on the request's channel, error replies); each request's handler runs in one of
`concurrency` worker threads, so a slow handler never holds up the I/O
thread's heartbeats and acks. The workers are daemon threads: a handler
stuck forever does not keep the interpreter from exiting.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from types import TracebackType
from typing import Any

from leveret import aio
from leveret.blocking._consumer import Message
from leveret.blocking._portal import Portal
from leveret.blocking._workers import Workers
from leveret.exceptions import ConnectionClosedByClient

__all__ = ["Handler", "Server"]

Handler = Callable[[Message], Any]
"""Returns the reply body: bytes, str, a JSON-able object, or None for an empty reply."""
_Reply = Any
_STOP_WAIT = 1.0  # seconds Server.close() waits for idle workers to end


class Server:
    """Answers requests on a queue with a plain function: `with conn.serve(q, handler):`.

    `handler(msg)` runs in one of `concurrency` worker threads and returns the
    reply body (bytes, str, a JSON-able object, or None for an empty reply); an exception becomes the
    caller's `RemoteError`. Each request is acked right behind its reply, on
    the channel it came in on (so the broker routes the reply first). `wait()` (or `conn.serve_forever(...)`) blocks until the
    server ends: Ctrl-C, or the error that ended it (e.g. ConsumerCancelled).
    """

    def __init__(
        self,
        portal: Portal,
        connection: aio.Connection,
        queue: str,
        handler: Handler,
        *,
        concurrency: int,
        no_ack: bool = False,
    ) -> None:
        if not callable(handler):
            raise TypeError(f"handler must be callable, got {type(handler).__name__}")
        self._portal = portal
        self._handler = handler
        self._concurrency = concurrency
        self._server = connection.serve(
            queue, self._on_request, concurrency=concurrency, no_ack=no_ack
        )
        self._workers: Workers | None = None
        self._lock = threading.Lock()
        self._started = False
        self._closed = False
        self.queue = queue

    async def _on_request(self, message: aio.Message) -> _Reply:
        assert self._workers is not None
        request = Message(message, self._portal)
        return await self._workers.run(lambda: self._handler(request))

    def start(self) -> None:
        """Start serving (done by `with`; idempotent)."""
        with self._lock:
            if self._started or self._closed:
                return
            self._portal.refuse_loop_thread("Server.start()")
            self._workers = Workers(self._portal, self._concurrency, f"leveret-rpc-{self.queue}")
            try:
                self._portal.call(self._server.__aenter__(), "Server.start()")
            except BaseException:
                self._workers.stop(_STOP_WAIT)
                raise
            self._started = True

    def wait(self, timeout: float | None = None) -> None:
        """Block while serving; returns after `close()` (from another thread) or `timeout`
        seconds, raises what ended the server (ConsumerCancelled, a connection error)."""
        if not self._started:
            self.start()
        try:
            self._portal.call(self._wait(), "Server.wait()", timeout)
        except TimeoutError:
            if timeout is None:
                raise

    async def _wait(self) -> None:
        try:
            await asyncio.shield(self._server.wait_closed())
        except asyncio.CancelledError:
            task = asyncio.current_task()
            if (task is not None and task.cancelling()) or not self._closed:
                raise  # this wait was abandoned (a timeout, Ctrl-C), not the server closed

    def close(self) -> None:
        """Stop taking requests; running handlers get `close_timeout` to finish. Idempotent."""
        if self._closed:
            return
        self._portal.refuse_loop_thread("Server.close()")
        self._closed = True
        try:
            self._portal.call(self._server.close(), "Server.close()")
        except ConnectionClosedByClient:
            pass  # the connection is closed, and the server with it
        finally:
            if self._workers is not None:
                # Handlers had close_timeout to finish; one still running is abandoned.
                self._workers.stop(_STOP_WAIT)

    def __enter__(self) -> Server:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "serving" if self._started else "not started"
        return f"<leveret.blocking.Server queue={self.queue!r} {state}>"
