"""The mesh client: call methods, send commands and publish events, from anywhere.

`Mesh` is all a client needs (`client_only`); a `Service` uses one too, for the
calls its handlers make. Replies come back on this instance's exclusive
response queue, matched by correlation id; a reply after its call timed out is
dropped with a debug log, so the table of pending calls stays bounded.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import uuid
from types import TracebackType
from typing import TYPE_CHECKING, Any

from leveret._properties import Properties
from leveret._queue_arguments import milliseconds
from leveret.exceptions import (
    InstanceAlreadyRunning,
    RemoteError,
    ResourceLocked,
    RPCTimeout,
)
from leveret.service._context import current_context, new_trace_id
from leveret.service._crypto import Keys
from leveret.service._envelope import Envelope, EnvelopeError, Kind
from leveret.service._topology import MeshNames

if TYPE_CHECKING:
    from leveret.aio import Connection, Consumer, Message

__all__ = ["DEFAULT_TTL", "Mesh"]

log = logging.getLogger("leveret.service")

DEFAULT_TTL = 12 * 3600.0  # seconds a request may wait in a queue before it dies


class Mesh:
    """Calls, commands and events over the mesh's exchanges, on one connection.

    `configure=True` declares the mesh's exchanges and dead-letter queue if
    missing; `configure=False` requires them to exist (ServiceNotConfigured).
    """

    def __init__(
        self,
        conn: Connection,
        *,
        service: str = "client",
        instance_id: str | None = None,
        names: MeshNames | None = None,
        default_ttl: float = DEFAULT_TTL,
        configure: bool = True,
        keys: Keys | None = None,
    ) -> None:
        milliseconds(default_ttl, "default_ttl", allow_zero=False)
        self.conn = conn
        self.service = service
        self.instance_id = instance_id or uuid.uuid4().hex[:12]
        self.names = names or MeshNames()
        self.default_ttl = default_ttl
        self.configure = configure
        self.keys = keys
        self.response_queue = self.names.response_queue(service, self.instance_id)
        self._pending: dict[str, asyncio.Future[Envelope]] = {}
        self._ids = itertools.count(1)
        self._responses: Consumer | None = None
        self._reader: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._responses is not None:
            return
        if self.configure:
            await self.names.declare_shared(self.conn)
        else:
            await self.names.require(self.conn, None)
        try:
            await self.conn.declare_queue(self.response_queue, exclusive=True)
        except ResourceLocked:
            raise InstanceAlreadyRunning(
                f"another instance of {self.service!r} with instance id {self.instance_id!r} is "
                f"running (it holds the exclusive queue {self.response_queue!r})"
            ) from None
        self._responses = self.conn.consume(self.response_queue, no_ack=True)
        await self._responses.start()
        self._reader = asyncio.ensure_future(self._read_responses(self._responses))

    async def close(self) -> None:
        if self._reader is not None:
            self._reader.cancel()
            try:
                await self._reader
            except asyncio.CancelledError:
                pass
            except Exception:  # noqa: BLE001 - already failed every pending call
                pass
        if self._responses is not None:
            await self._responses.close()
        for future in self._pending.values():
            if not future.done():
                future.cancel()
        self._pending.clear()

    async def __aenter__(self) -> Mesh:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    # -- sending ---------------------------------------------------------------------------------

    async def call(
        self,
        target: str,
        params: Any = None,
        *,
        timeout: float = 30.0,
        context: dict[str, Any] | None = None,
        ttl: float | None = None,
    ) -> Any:
        """Call "service.method" with `params`; returns the result or raises RemoteError.

        `ttl` (default: the mesh's, 12 hours) is how long the request may wait
        in the service's queue; past it, the broker dead-letters it.
        """
        if self._responses is None:
            await self.start()
        service, method = _split_target(target)
        correlation_id = f"{self.instance_id}.{next(self._ids)}"
        envelope = self._outgoing("request", service=service, method=method, context=context)
        envelope.params = params
        envelope.correlation_id = correlation_id
        reply: asyncio.Future[Envelope] = asyncio.get_running_loop().create_future()
        self._pending[correlation_id] = reply
        try:
            async with asyncio.timeout(timeout):
                await self._send(
                    envelope,
                    self.names.rpc_exchange,
                    target,
                    ttl,
                    correlation_id=correlation_id,
                    reply_to=self.response_queue,
                )
                response = await reply
        except TimeoutError:
            raise RPCTimeout(
                f"no reply from {target!r} within {timeout}s (correlation id {correlation_id})"
            ) from None
        finally:
            self._pending.pop(correlation_id, None)
        self._open(response)
        if response.error is not None:
            raise RemoteError(
                response.error.get("type", "Error"), response.error.get("message", "")
            )
        return response.result

    async def send_command(
        self,
        target: str,
        params: Any = None,
        *,
        context: dict[str, Any] | None = None,
        ttl: float | None = None,
    ) -> None:
        """Fire and forget: "service.method" runs, nobody waits for a result.

        Returns once the broker confirmed the command reached the service's queue.
        """
        service, method = _split_target(target)
        envelope = self._outgoing("command", service=service, method=method, context=context)
        envelope.params = params
        await self._send(envelope, self.names.rpc_exchange, target, ttl)

    async def publish_event(
        self, topic: str, payload: Any = None, *, context: dict[str, Any] | None = None
    ) -> None:
        """Broadcast `payload` under "domain.event" to every service listening for it."""
        if not topic or topic.startswith(".") or topic.endswith("."):
            raise ValueError(
                f"topic must be dot-separated words like 'orders.created', got {topic!r}"
            )
        envelope = self._outgoing("event", topic=topic, context=context)
        envelope.payload = payload
        await self._send(envelope, self.names.events_exchange, topic, None, mandatory=False)

    def _outgoing(
        self,
        kind: Kind,
        *,
        context: dict[str, Any] | None,
        service: str = "",
        method: str = "",
        topic: str = "",
    ) -> Envelope:
        # Inside a handler, the trace id and context of what is being handled travel on.
        handling = current_context()
        trace_id = handling.trace_id if handling else new_trace_id()
        if context is None:
            context = dict(handling.context) if handling else {}
        return Envelope(
            kind=kind,
            trace_id=trace_id,
            context=context,
            service=service,
            method=method,
            topic=topic,
        )

    async def _send(
        self,
        envelope: Envelope,
        exchange: str,
        routing_key: str,
        ttl: float | None,
        *,
        correlation_id: str | None = None,
        reply_to: str | None = None,
        mandatory: bool = True,
    ) -> None:
        if self.keys is not None:
            self.keys.seal(envelope)
        expiration = None
        if envelope.kind in ("request", "command"):
            expiration = str(
                milliseconds(self.default_ttl if ttl is None else ttl, "ttl", allow_zero=False)
            )
        properties = Properties(
            content_type="application/json",
            correlation_id=correlation_id,
            reply_to=reply_to,
            expiration=expiration,
            message_type=envelope.kind,
            app_id=self.service,
        )
        await self.conn.publish(
            envelope.to_json(),
            exchange=exchange,
            routing_key=routing_key,
            properties=properties,
            persistent=True,
            mandatory=mandatory,
        )

    def _open(self, envelope: Envelope) -> None:
        if envelope.encrypted is not None:
            if self.keys is None:
                raise EnvelopeError(f"the {envelope.kind} is encrypted and this mesh has no keys")
            self.keys.open(envelope)

    # -- receiving responses ---------------------------------------------------------------------

    async def _read_responses(self, responses: Consumer) -> None:
        try:
            async for message in responses:
                self._on_response(message)
        except Exception as exc:
            for future in self._pending.values():
                if not future.done():
                    future.set_exception(exc)
            raise

    def _on_response(self, message: Message) -> None:
        try:
            envelope = Envelope.from_json(message.body)
        except EnvelopeError as exc:
            log.warning("leveret: dropped a malformed response on %r: %s", self.response_queue, exc)
            return
        future = self._pending.pop(envelope.correlation_id, None)
        if future is None or future.done():
            log.debug(
                "leveret: dropped a late or unknown response (correlation id %r)",
                envelope.correlation_id,
            )
            return
        future.set_result(envelope)


def _split_target(target: str) -> tuple[str, str]:
    service, dot, method = target.rpartition(".")
    if not dot or not service or not method:
        raise ValueError(f"target must be 'service.method', got {target!r}")
    return service, method
