"""The instrumentation a connection calls when telemetry is on: spans, propagation, histograms.

Only this package imports OpenTelemetry, and only once a connection turned
telemetry on. The driver calls: `start_publish` / `finish_publish` around
a publish (PRODUCER span until the confirm, its context injected into the
headers; `end_publish` for an RPC reply, which has no confirm), `process`
around a subscription's handler, `start_process` / `end_process` around a
message handed out by a `consume()` iterator (both CONSUMER spans, children
of the context extracted from the headers), and `call` around an RPC.

Attribute names follow the OpenTelemetry messaging semantic conventions
(`messaging.operation.type` "send"/"process", which replaced "publish"
in them; RabbitMQ's destination is the exchange, "" for the default one).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from opentelemetry import context as otel_context
from opentelemetry import metrics, propagate, trace
from opentelemetry.propagators.textmap import Getter
from opentelemetry.trace import Span, SpanKind, StatusCode

from leveret._properties import Properties
from leveret._version import __version__
from leveret.telemetry import Telemetry
from leveret.telemetry._metrics import Observed, register

if TYPE_CHECKING:
    from leveret.aio._message import Message

__all__ = ["Instrumentation", "PublishOp", "ProcessOp"]

SYSTEM = "messaging.system"
OPERATION_NAME = "messaging.operation.name"
OPERATION_TYPE = "messaging.operation.type"
DESTINATION = "messaging.destination.name"
SUBSCRIPTION = "messaging.destination.subscription.name"
ROUTING_KEY = "messaging.rabbitmq.destination.routing_key"
DELIVERY_TAG = "messaging.rabbitmq.message.delivery_tag"
MESSAGE_ID = "messaging.message.id"
CONVERSATION_ID = "messaging.message.conversation_id"
BODY_SIZE = "messaging.message.body.size"
CLIENT_ID = "messaging.client.id"
ERROR_TYPE = "error.type"
DEFAULT_EXCHANGE = "amq.default"


class _HeaderGetter(Getter[Mapping[str, Any]]):
    """Reads propagation fields from an AMQP headers table (values may arrive as bytes)."""

    def get(self, carrier: Mapping[str, Any], key: str) -> list[str] | None:
        value = carrier.get(key)
        if value is None:
            return None
        if isinstance(value, bytes | bytearray):
            value = value.decode("utf-8", "replace")
        return [str(value)]

    def keys(self, carrier: Mapping[str, Any]) -> list[str]:
        return list(carrier)


_GETTER = _HeaderGetter()
_EMPTY = Properties()


class PublishOp:
    """One publish in flight: its span (if tracing) and when it started (if measuring)."""

    __slots__ = ("attributes", "span", "started")

    def __init__(self, span: Span | None, started: float, attributes: dict[str, Any]) -> None:
        self.span = span
        self.started = started
        self.attributes = attributes


class ProcessOp:
    """One message being processed, and the context to restore when it is done."""

    __slots__ = ("attributes", "span", "started", "task", "token")

    def __init__(self, span: Span | None, started: float, attributes: dict[str, Any]) -> None:
        self.span = span
        self.started = started
        self.attributes = attributes
        self.token: object | None = None
        self.task: asyncio.Task[Any] | None = None


class Instrumentation:
    """Tracing and histograms for one connection (shared with its publishing connection)."""

    def __init__(self, options: Telemetry, name: str, host: str, port: int) -> None:
        self.name = name
        self._base: dict[str, Any] = {
            SYSTEM: "rabbitmq",
            CLIENT_ID: name,
            "server.address": host,
            "server.port": port,
        }
        self._tracer: trace.Tracer | None = None
        if options.traces:
            provider = options.tracer_provider or trace.get_tracer_provider()
            self._tracer = provider.get_tracer("leveret", __version__)
        self._meter_provider: Any = None
        self._meter: metrics.Meter | None = None
        self._publish_duration: metrics.Histogram | None = None
        self._process_duration: metrics.Histogram | None = None
        if options.metrics:
            self._meter_provider = options.meter_provider or metrics.get_meter_provider()
            self._meter = self._meter_provider.get_meter("leveret", __version__)
            self._publish_duration = self._meter.create_histogram(
                "messaging.client.operation.duration",
                unit="s",
                description="Publish to broker confirm",
            )
            self._process_duration = self._meter.create_histogram(
                "messaging.process.duration", unit="s", description="Handling of one message"
            )

    def observe(self, connection: Observed) -> None:
        """Export `connection.stats()` as observable counters (metrics on only)."""
        if self._meter is not None:
            register(
                self._meter_provider,
                self._meter,
                connection,
                {SYSTEM: "rabbitmq", CLIENT_ID: self.name},
            )

    # -- publishing ---------------------------------------------------------------------

    def start_publish(
        self,
        exchange: str,
        routing_key: str,
        properties: Properties | None,
        changes: dict[str, object],
        body_size: int,
    ) -> tuple[Properties, PublishOp]:
        """A copy of `properties` with leveret's stamps and the trace context, and the op."""
        props = (properties or _EMPTY).replace(**changes)  # a copy: the caller's stays as it was
        attributes = {
            **self._base,
            OPERATION_NAME: "publish",
            OPERATION_TYPE: "send",
            DESTINATION: exchange,
        }
        span = None
        if self._tracer is not None:
            span_attributes = dict(attributes)
            _add_message_attributes(span_attributes, routing_key, props, body_size)
            span = self._tracer.start_span(
                f"publish {exchange or DEFAULT_EXCHANGE}",
                kind=SpanKind.PRODUCER,
                attributes=span_attributes,
            )
            props.headers = _with_context(props.headers, span)
        started = time.perf_counter() if self._publish_duration is not None else 0.0
        return props, PublishOp(span, started, attributes)

    async def finish_publish(self, op: PublishOp, sending: Awaitable[None]) -> None:
        """Await the confirm, then end the span and record publish-to-confirm time."""
        try:
            await sending
        except BaseException as exc:
            self.end_publish(op, exc)
            raise
        self.end_publish(op, None)

    def end_publish(self, op: PublishOp, error: BaseException | None) -> None:
        """End a publish's span (for a reply sent without a confirm: once it is written)."""
        self._end(op.span, op.started, op.attributes, self._publish_duration, error)

    # -- consuming ------------------------------------------------------------------------

    def start_process(self, message: Message, queue: str, *, attach: bool) -> ProcessOp:
        """Start a CONSUMER span for `message`; with `attach`, make it current in this task."""
        attributes = {
            **self._base,
            OPERATION_NAME: "process",
            OPERATION_TYPE: "process",
            DESTINATION: message.exchange,
        }
        span = None
        if self._tracer is not None:
            span_attributes = dict(attributes)
            _add_message_attributes(
                span_attributes, message.routing_key, message.properties, len(message.body)
            )
            span_attributes[SUBSCRIPTION] = queue
            span_attributes[DELIVERY_TAG] = message.delivery_tag
            headers = message.properties.headers
            # No headers: a new trace (never a child of whatever is current in the consumer).
            parent = (
                propagate.extract(headers, getter=_GETTER) if headers else otel_context.Context()
            )
            span = self._tracer.start_span(
                f"process {_queue_label(queue)}",
                context=parent,
                kind=SpanKind.CONSUMER,
                attributes=span_attributes,
            )
        started = time.perf_counter() if self._process_duration is not None else 0.0
        op = ProcessOp(span, started, attributes)
        if attach and span is not None:
            op.token = otel_context.attach(trace.set_span_in_context(span))
            op.task = asyncio.current_task()
        return op

    def end_process(self, op: ProcessOp, error: BaseException | None = None) -> None:
        """End the span and record the time; restore the context if this task attached it."""
        self._end(op.span, op.started, op.attributes, self._process_duration, error)
        if op.token is not None and asyncio.current_task() is op.task:
            otel_context.detach(op.token)  # type: ignore[arg-type]
        op.token = None

    async def process(
        self, message: Message, queue: str, handler: Callable[[Message], Awaitable[Any]]
    ) -> None:
        """Run `handler(message)` inside its CONSUMER span (the span is current in the handler)."""
        op = self.start_process(message, queue, attach=True)
        try:
            await handler(message)
        except BaseException as exc:
            self.end_process(op, exc)
            raise
        self.end_process(op)

    # -- RPC -------------------------------------------------------------------------------

    async def call(
        self,
        call: Callable[..., Awaitable[Message]],
        routing_key: str,
        body: bytes,
        *,
        exchange: str,
        properties: Properties | None,
        **options: Any,
    ) -> Message:
        """`conn.call()` inside a CLIENT span whose context travels in the request's headers.

        The correlation id is chosen by the RPC client, so the span learns it
        (as `messaging.message.conversation_id`) from the reply.
        """
        attributes = {
            **self._base,
            OPERATION_NAME: "call",
            OPERATION_TYPE: "send",
            DESTINATION: exchange,
        }
        if routing_key:
            attributes[ROUTING_KEY] = routing_key
        span = None
        if self._tracer is not None:
            span = self._tracer.start_span(
                f"call {routing_key or exchange or DEFAULT_EXCHANGE}",
                kind=SpanKind.CLIENT,
                attributes={**attributes, BODY_SIZE: len(body)},
            )
            properties = (properties or _EMPTY).replace(
                headers=_with_context(properties.headers if properties else None, span)
            )
        try:
            reply = await call(
                routing_key, body, exchange=exchange, properties=properties, **options
            )
        except BaseException as exc:
            self._end(span, 0.0, attributes, None, exc)
            raise
        if span is not None and reply.properties.correlation_id:
            span.set_attribute(CONVERSATION_ID, reply.properties.correlation_id)
        self._end(span, 0.0, attributes, None, None)
        return reply

    # -- shared ------------------------------------------------------------------------------

    @staticmethod
    def _end(
        span: Span | None,
        started: float,
        attributes: dict[str, Any],
        histogram: metrics.Histogram | None,
        error: BaseException | None,
    ) -> None:
        if error is not None:
            attributes = {**attributes, ERROR_TYPE: type(error).__qualname__}
        if histogram is not None:
            histogram.record(time.perf_counter() - started, attributes)
        if span is not None:
            if error is not None:
                span.set_attribute(ERROR_TYPE, type(error).__qualname__)
                span.record_exception(error)
                span.set_status(StatusCode.ERROR, str(error))
            span.end()


def _add_message_attributes(
    attributes: dict[str, Any], routing_key: str, props: Properties, body_size: int | None
) -> None:
    if routing_key:
        attributes[ROUTING_KEY] = routing_key
    if props.message_id:
        attributes[MESSAGE_ID] = props.message_id
    if props.correlation_id:
        attributes[CONVERSATION_ID] = props.correlation_id
    if body_size is not None:
        attributes[BODY_SIZE] = body_size


def _with_context(headers: dict[str, Any] | None, span: Span) -> dict[str, Any]:
    """A copy of `headers` with `span`'s context added by the global propagator."""
    carrier = dict(headers) if headers else {}
    propagate.inject(carrier, context=trace.set_span_in_context(span))
    return carrier


def _queue_label(queue: str) -> str:
    """A low-cardinality name for span names: server-named queues are all alike."""
    return "(anonymous)" if queue.startswith("amq.") else queue
