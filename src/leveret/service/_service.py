"""Services: RPC methods, commands and event handlers over the mesh, with clear ack outcomes.

    orders = Service("orders")

    @orders.method
    async def create(params, ctx): ...          # "orders.create", called or commanded

    @orders.event("payments.*")
    async def on_payment(payload, ctx): ...

    async with orders.run(conn) as mesh:        # mesh.call / publish_event / send_command
        await stop.wait()

Outcomes: a handler that returns acks (after the response, if any, is
confirmed); `CallAgain` asks for one more try (requeue) once and only once,
and a message that comes back and fails again is dead-lettered; any other
exception is unrecoverable: dead-lettered at once. A request always gets a
response: the result, or the error's type and message. Dead-lettered
messages carry the reason in an `x-leveret-reason` header.
"""

from __future__ import annotations

import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any, TypeVar

from leveret._properties import Properties
from leveret.aio._forward import forward_and_ack
from leveret.aio._subscription import check_handler
from leveret.exceptions import LeveretError
from leveret.service._context import CallContext, _current
from leveret.service._crypto import Keys
from leveret.service._envelope import Envelope, EnvelopeError
from leveret.service._mesh import DEFAULT_TTL, Mesh
from leveret.service._topology import MeshNames

if TYPE_CHECKING:
    from leveret.aio import Connection, Message

__all__ = ["CallAgain", "Service"]

log = logging.getLogger("leveret.service")

Handler = Callable[[Any, CallContext], Awaitable[Any]]
H = TypeVar("H", bound=Handler)
REASON_HEADER = "x-leveret-reason"
_NAME = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


class CallAgain(Exception):
    """Raise from a handler for a recoverable failure: the message gets one more try."""


class Service:
    """A named service: its methods and event handlers, served by any number of instances."""

    def __init__(
        self,
        name: str,
        *,
        instance_id: str | None = None,
        names: MeshNames | None = None,
        prefetch: int = 10,
        default_ttl: float = DEFAULT_TTL,
        configure: bool = True,
        keys: Keys | None = None,
    ) -> None:
        if not _NAME.match(name):
            raise ValueError(f"service name must be dot-separated words, got {name!r}")
        self.name = name
        self.instance_id = instance_id
        self.names = names or MeshNames()
        self.prefetch = prefetch
        self.default_ttl = default_ttl
        self.configure = configure
        self.keys = keys
        self.methods: dict[str, Handler] = {}
        self.events: dict[str, Handler] = {}

    # -- declaring handlers ----------------------------------------------------------------------

    def method(self, handler: H | None = None, *, name: str | None = None) -> Any:
        """Expose `async def handler(params, ctx)` as "<service>.<name>" (default: its name)."""

        def register(function: H) -> H:
            method = name or function.__name__
            if not re.match(r"^[A-Za-z0-9_-]+$", method):
                raise ValueError(f"method name must be one word, got {method!r}")
            check_handler(function)
            if method in self.methods:
                raise ValueError(f"{self.name}.{method} is already registered")
            self.methods[method] = function
            return function

        return register(handler) if handler is not None else register

    def event(self, pattern: str) -> Callable[[H], H]:
        """Handle events whose topic matches `pattern` ("orders.created", "payments.*", "#")."""
        if not pattern or any(not word for word in pattern.split(".")):
            raise ValueError(f"event pattern must be dot-separated words, got {pattern!r}")

        def register(function: H) -> H:
            check_handler(function)
            self.events[pattern] = function
            return function

        return register

    # -- running ---------------------------------------------------------------------------------

    @asynccontextmanager
    async def run(self, conn: Connection) -> AsyncIterator[Mesh]:
        """Serve on `conn` while the block runs; yields the instance's Mesh for outgoing calls."""
        mesh = Mesh(
            conn,
            service=self.name,
            instance_id=self.instance_id,
            names=self.names,
            default_ttl=self.default_ttl,
            configure=self.configure,
            keys=self.keys,
        )
        await mesh.start()
        try:
            if self.configure:
                await self.names.declare_service(conn, self.name, self.events)
            else:
                await self.names.require(conn, self.name)
            runner = _Runner(self, mesh)
            async with conn.subscribe(
                self.names.service_queue(self.name),
                runner.handle,
                concurrency=self.prefetch,
                on_error="reject",
            ):
                yield mesh
        finally:
            await mesh.close()

    def describe(self) -> dict[str, Any]:
        """What this service exposes (answered by `<service>.describe` too)."""
        return {
            "service": self.name,
            "methods": sorted(self.methods),
            "events": sorted(self.events),
            "encrypted": self.keys is not None,
        }


class _Runner:
    """Handles each message of the service queue and settles it by the outcome rules."""

    def __init__(self, service: Service, mesh: Mesh) -> None:
        self.service = service
        self.mesh = mesh

    async def handle(self, message: Message) -> None:
        try:
            envelope = Envelope.from_json(message.body)
        except EnvelopeError as exc:
            await self._dead_letter(message, f"malformed envelope: {exc}")
            return
        try:
            self.mesh._open(envelope)
        except EnvelopeError as exc:  # the metadata is readable: the caller can be told
            await self._respond(message, envelope, error=exc)
            await self._dead_letter(message, f"malformed envelope: {exc}")
            return
        if envelope.kind in ("request", "command"):
            await self._handle_call(message, envelope)
        elif envelope.kind == "event":
            await self._handle_event(message, envelope)
        else:
            await self._dead_letter(message, f"unexpected {envelope.kind} on a service queue")

    async def _handle_call(self, message: Message, envelope: Envelope) -> None:
        service = self.service
        handler = service.methods.get(envelope.method)
        if handler is None and envelope.method == "describe":
            await self._respond(message, envelope, result=service.describe())
            message.ack()
            return
        if handler is None:
            error = LookupError(f"{service.name} has no method {envelope.method!r}")
            await self._respond(message, envelope, error=error)
            await self._dead_letter(message, f"unknown method: {envelope.method!r}")
            return
        ctx = CallContext(
            service=service.name,
            method=envelope.method,
            kind=envelope.kind,
            trace_id=envelope.trace_id,
            context=envelope.context,
            correlation_id=envelope.correlation_id,
            message=message,
        )
        outcome = await self._run(handler, envelope.params, ctx, message)
        if outcome is _REQUEUED:
            return
        if isinstance(outcome, _Failure):
            await self._respond(message, envelope, error=outcome.error)
            await self._dead_letter(message, outcome.reason)
            return
        await self._respond(message, envelope, result=outcome)
        message.ack()

    async def _handle_event(self, message: Message, envelope: Envelope) -> None:
        handlers = [
            h for pattern, h in self.service.events.items() if _matches(pattern, envelope.topic)
        ]
        if not handlers:
            log.warning(
                "leveret: %s has no handler for event %r", self.service.name, envelope.topic
            )
            message.ack()
            return
        for handler in handlers:
            ctx = CallContext(
                service=self.service.name,
                method=envelope.topic,
                kind="event",
                trace_id=envelope.trace_id,
                context=envelope.context,
                message=message,
            )
            outcome = await self._run(handler, envelope.payload, ctx, message)
            if outcome is _REQUEUED:
                return
            if isinstance(outcome, _Failure):
                await self._dead_letter(message, outcome.reason)
                return
        message.ack()

    async def _run(
        self, handler: Handler, argument: Any, ctx: CallContext, message: Message
    ) -> Any:
        token = _current.set(ctx)
        try:
            return await handler(argument, ctx)
        except CallAgain as exc:
            if not message.redelivered:
                log.warning(
                    "leveret: %s.%s asked to be called again: %s", ctx.service, ctx.method, exc
                )
                message.nack(requeue=True)
                return _REQUEUED
            return _Failure(exc, f"failed again after one more try: {_describe(exc)}")
        except Exception as exc:
            log.exception("leveret: %s.%s failed", ctx.service, ctx.method)
            return _Failure(exc, f"unrecoverable: {_describe(exc)}")
        finally:
            _current.reset(token)

    async def _respond(
        self,
        message: Message,
        request: Envelope,
        *,
        result: Any = None,
        error: BaseException | None = None,
    ) -> None:
        reply_to = message.properties.reply_to
        if request.kind != "request" or not reply_to:
            return
        response = Envelope(
            kind="response",
            trace_id=request.trace_id,
            service=self.service.name,
            method=request.method,
            correlation_id=request.correlation_id,
            context={},
            result=result,
            error=None if error is None else {"type": type(error).__name__, "message": str(error)},
        )
        # A key problem is answered in clear: the caller may not hold the right key.
        if self.mesh.keys is not None and not isinstance(error, EnvelopeError):
            self.mesh.keys.seal(response)
        try:
            body = response.to_json()
        except TypeError as exc:  # the result is not JSON: the caller learns that instead
            response.result = None
            response.encrypted = None
            response.error = {"type": "TypeError", "message": str(exc)}
            body = response.to_json()
        try:
            await self.mesh.conn.publish(
                body,
                routing_key=reply_to,
                properties=Properties(
                    content_type="application/json",
                    correlation_id=request.correlation_id,
                    message_type="response",
                    app_id=self.service.name,
                ),
            )
        except LeveretError as exc:  # the caller's instance is gone: nobody to tell
            log.warning("leveret: could not send the response to %r: %s", reply_to, exc)

    async def _dead_letter(self, message: Message, reason: str) -> None:
        """Park the message in the dead-letter exchange with its reason, then ack it."""
        log.error("leveret: dead-lettering a message of %s: %s", self.service.name, reason)
        failure = await forward_and_ack(
            self.mesh.conn,
            message,
            exchange=self.service.names.dead_letter_exchange,
            headers={
                REASON_HEADER: reason[:1000],
                "x-leveret-original-exchange": message.exchange,
                "x-leveret-original-routing-key": message.routing_key,
            },
        )
        if failure is not None:
            log.warning("leveret: could not dead-letter with a reason (%s); rejecting", failure)
            message.reject(requeue=False)  # the queue's dead-letter exchange takes it


class _Failure:
    __slots__ = ("error", "reason")

    def __init__(self, error: BaseException, reason: str) -> None:
        self.error = error
        self.reason = reason


_REQUEUED = object()


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _matches(pattern: str, topic: str) -> bool:
    """AMQP topic matching: "*" is exactly one word, "#" zero or more."""
    return _match_words(pattern.split("."), topic.split("."))


def _match_words(pattern: list[str], words: list[str]) -> bool:
    if not pattern:
        return not words
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        return any(_match_words(rest, words[i:]) for i in range(len(words) + 1))
    if not words:
        return False
    return (head == "*" or head == words[0]) and _match_words(rest, words[1:])
