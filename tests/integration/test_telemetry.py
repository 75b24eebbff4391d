"""OpenTelemetry against the real broker, recorded by the SDK's in-memory exporter and reader.

The providers are handed to `connect(telemetry=Telemetry(...))`, so no test
changes the process-wide OpenTelemetry state that other tests would see;
the automatic switch (a global SDK provider turns telemetry on) runs in a
subprocess of its own.
"""

from __future__ import annotations

import asyncio
import itertools
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind, StatusCode

import leveret
import leveret.blocking
from leveret.telemetry import Telemetry

pytestmark = pytest.mark.integration


@dataclass
class Recorded:
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    tracer_provider: TracerProvider
    telemetry: Telemetry

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def span(self, name: str) -> ReadableSpan:
        found = [span for span in self.finished() if span.name == name]
        assert len(found) == 1, [span.name for span in self.finished()]
        return found[0]

    def metric_points(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            point
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
            for point in metric.data.data_points
        ]


@pytest.fixture
def recorded() -> Iterator[Recorded]:
    exporter = InMemorySpanExporter()
    tracer_provider = TracerProvider()
    tracer_provider.add_span_processor(SimpleSpanProcessor(exporter))
    reader = InMemoryMetricReader()
    meter_provider = MeterProvider(metric_readers=[reader])
    yield Recorded(
        exporter,
        reader,
        tracer_provider,
        Telemetry(tracer_provider=tracer_provider, meter_provider=meter_provider),
    )
    tracer_provider.shutdown()
    meter_provider.shutdown()


def _attributes(span: ReadableSpan) -> dict[str, Any]:
    return dict(span.attributes or {})


async def test_one_trace_from_publisher_through_a_consumer_that_publishes_again(
    rabbitmq_url: str, queue_name: str, recorded: Recorded
) -> None:
    first, second = f"{queue_name}.first", f"{queue_name}.second"
    async with leveret.connect(rabbitmq_url, name="otel", telemetry=recorded.telemetry) as conn:
        await conn.declare_queue(first, exclusive=True)
        await conn.declare_queue(second, exclusive=True)

        async def forward(msg: leveret.Message) -> None:
            await conn.publish(msg.body + b" again", routing_key=second)

        tracer = recorded.tracer_provider.get_tracer("test")
        async with conn.subscribe(first, forward):
            with tracer.start_as_current_span("job"):
                await conn.publish(
                    b"hello",
                    routing_key=first,
                    properties=leveret.Properties(correlation_id="conv-1"),
                )
            async with conn.consume(second) as messages:
                async with asyncio.timeout(10):
                    message = await anext(messages)
                assert message.body == b"hello again"
                assert message.ack() is True
        stats = conn.stats()

    job = recorded.span("job")
    publish_first = [s for s in recorded.finished() if s.name == "publish amq.default"]
    assert len(publish_first) == 2
    by_parent = {span.parent.span_id if span.parent else None: span for span in publish_first}
    producer = by_parent[job.context.span_id]
    process_first = recorded.span(f"process {first}")
    forwarded = by_parent[process_first.context.span_id]
    process_second = recorded.span(f"process {second}")

    # One trace, each span the child of the one before: job -> publish -> process -> publish -> process.
    chain = [job, producer, process_first, forwarded, process_second]
    assert {span.context.trace_id for span in chain} == {job.context.trace_id}
    for parent, child in itertools.pairwise(chain):
        assert child.parent is not None
        assert child.parent.span_id == parent.context.span_id

    assert producer.kind is SpanKind.PRODUCER
    assert process_first.kind is SpanKind.CONSUMER
    attributes = _attributes(producer)
    assert attributes["messaging.system"] == "rabbitmq"
    assert attributes["messaging.operation.type"] == "send"
    assert attributes["messaging.operation.name"] == "publish"
    assert attributes["messaging.destination.name"] == ""  # the default exchange
    assert attributes["messaging.rabbitmq.destination.routing_key"] == first
    assert attributes["messaging.message.conversation_id"] == "conv-1"
    assert attributes["messaging.message.body.size"] == 5
    assert attributes["messaging.client.id"] == "otel"
    message_id = attributes["messaging.message.id"]
    consumed = _attributes(process_first)
    assert consumed["messaging.operation.type"] == "process"
    assert consumed["messaging.message.id"] == message_id  # the same message, both sides
    assert consumed["messaging.destination.subscription.name"] == first
    assert consumed["messaging.rabbitmq.message.delivery_tag"] == 1
    assert all(span.status.status_code is not StatusCode.ERROR for span in chain)

    # Metrics: the counters are conn.stats(), the histograms one point per operation.
    [sent] = recorded.metric_points("messaging.client.sent.messages")
    assert sent.value == stats.published == 2
    [consumed_count] = recorded.metric_points("messaging.client.consumed.messages")
    assert consumed_count.value == stats.delivered == 2
    [acked] = recorded.metric_points("leveret.delivery.acked")
    assert acked.value == 2  # the subscription's ack and ours
    [confirm_latency] = recorded.metric_points("messaging.client.operation.duration")
    assert confirm_latency.count == 2
    assert confirm_latency.min > 0
    handler_times = recorded.metric_points("messaging.process.duration")
    assert sum(point.count for point in handler_times) == 2


async def test_a_failed_handler_marks_its_span_and_a_nacked_publish_its_own(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str, recorded: Recorded
) -> None:
    async with leveret.connect(rabbitmq_url, telemetry=recorded.telemetry) as traced:
        await traced.declare_queue(
            queue_name, exclusive=True, max_length=1, overflow="reject-publish"
        )
        handled = asyncio.Event()

        async def fail(msg: leveret.Message) -> None:
            handled.set()
            raise ValueError("bad message")

        await traced.publish(b"one", routing_key=queue_name)
        with pytest.raises(leveret.PublishNacked):
            await traced.publish(b"two", routing_key=queue_name)
        async with traced.subscribe(queue_name, fail, on_error="reject"):
            async with asyncio.timeout(10):
                await handled.wait()
        await traced.delete_queue(queue_name)

    publishes = [s for s in recorded.finished() if s.name == "publish amq.default"]
    assert [s.status.status_code for s in publishes] == [StatusCode.UNSET, StatusCode.ERROR]
    assert _attributes(publishes[1])["error.type"] == "PublishNacked"
    process = recorded.span(f"process {queue_name}")
    assert process.status.status_code is StatusCode.ERROR
    assert _attributes(process)["error.type"] == "ValueError"
    assert [event.name for event in process.events] == ["exception"]
    errors = [
        point
        for point in recorded.metric_points("messaging.client.operation.duration")
        if point.attributes.get("error.type") == "PublishNacked"
    ]
    assert [point.count for point in errors] == [1]


async def test_rpc_call_and_its_handler_share_one_trace(
    rabbitmq_url: str, queue_name: str, recorded: Recorded
) -> None:
    async with leveret.connect(rabbitmq_url, telemetry=recorded.telemetry) as conn:
        await conn.declare_queue(queue_name, exclusive=True)

        async def double(msg: leveret.Message) -> Any:
            return {"n": msg.json()["n"] * 2}

        async with conn.serve(queue_name, double):
            reply = await conn.call(queue_name, {"n": 21}, timeout=10)
        assert reply.json() == {"n": 42}

    call = recorded.span(f"call {queue_name}")
    process = recorded.span(f"process {queue_name}")
    answer = recorded.span("publish amq.default")
    assert call.kind is SpanKind.CLIENT
    assert process.parent is not None
    assert process.parent.span_id == call.context.span_id
    assert answer.parent is not None
    assert answer.parent.span_id == process.context.span_id
    assert {call.context.trace_id, process.context.trace_id, answer.context.trace_id} == {
        call.context.trace_id
    }
    conversation = _attributes(call)["messaging.message.conversation_id"]
    assert _attributes(process)["messaging.message.conversation_id"] == conversation
    assert _attributes(answer)["messaging.message.conversation_id"] == conversation


async def test_a_message_without_trace_context_starts_a_new_trace(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str, recorded: Recorded
) -> None:
    await conn.declare_queue(queue_name)
    await conn.publish(b"untraced", routing_key=queue_name)  # `conn` has telemetry off
    async with (
        leveret.connect(rabbitmq_url, telemetry=recorded.telemetry) as traced,
        traced.consume(queue_name) as messages,
    ):
        message = await anext(messages)
        assert "traceparent" not in message.headers
        assert message.ack() is True
    await conn.delete_queue(queue_name)
    [process] = recorded.finished()
    assert process.parent is None


async def test_telemetry_is_off_unless_an_sdk_is_configured(
    conn: leveret.Connection, rabbitmq_url: str, queue_name: str
) -> None:
    assert conn._telemetry is None  # this test process never sets a global provider
    await conn.declare_queue(queue_name, exclusive=True)
    await conn.publish(b"plain", routing_key=queue_name)
    message = await conn.get(queue_name)
    assert message is not None
    assert "traceparent" not in message.headers

    # A program that set an SDK tracer provider gets spans without another switch.
    script = textwrap.dedent(
        f"""
        import asyncio
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
        import leveret

        exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(exporter))
        trace.set_tracer_provider(provider)

        async def main():
            async with leveret.connect({rabbitmq_url!r}) as conn:
                queue = (await conn.declare_queue("", exclusive=True)).name
                await conn.publish(b"x", routing_key=queue)
                message = await conn.get(queue)
                assert "traceparent" in message.headers, message.headers
            async with leveret.connect({rabbitmq_url!r}, telemetry=False) as conn:
                assert conn._telemetry is None
            print(sorted(span.name for span in exporter.get_finished_spans()))

        asyncio.run(main())
        """
    )
    result = await asyncio.to_thread(
        subprocess.run,
        [sys.executable, "-c", script],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "['publish amq.default']"


def test_blocking_handlers_run_inside_their_message_span(
    rabbitmq_url: str, queue_name: str, recorded: Recorded
) -> None:
    """A handler runs in a worker thread: the span reaches it, so its publishes join the trace."""
    first, second = f"{queue_name}.first", f"{queue_name}.second"
    with leveret.blocking.connect(rabbitmq_url, telemetry=recorded.telemetry) as conn:
        conn.declare_queue(first, exclusive=True)
        conn.declare_queue(second, exclusive=True)

        def forward(msg: leveret.blocking.Message) -> None:
            conn.publish(msg.body, routing_key=second)

        with conn.subscribe(first, forward):
            conn.publish(b"hop", routing_key=first)
            with conn.consume(second) as messages:
                for message in messages.iter(timeout=10.0):
                    assert message.ack() is True
                    break

    process = recorded.span(f"process {first}")
    publishes = [s for s in recorded.finished() if s.name == "publish amq.default"]
    [forwarded] = [s for s in publishes if s.parent is not None]
    assert forwarded.parent is not None
    assert forwarded.parent.span_id == process.context.span_id
    assert recorded.span(f"process {second}").context.trace_id == process.context.trace_id
