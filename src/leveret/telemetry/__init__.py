"""OpenTelemetry traces and metrics for leveret (`pip install 'leveret[otel]'`).

How it is turned on: `leveret.connect(..., telemetry=...)`.

- `None` (the default): on when the program has set up an OpenTelemetry
  SDK before connecting (a global tracer or meter provider that is not the
  API's placeholder), off otherwise. A service that exports traces gets
  leveret's spans without another switch, and a program that never
  configured OpenTelemetry pays nothing: leveret does not even import it.
- `True`: on, with the global providers (ImportError naming the extra if
  `opentelemetry-api` is missing).
- `False`: off, whatever the SDK says.
- `Telemetry(tracer_provider=..., meter_provider=...)`: on, with these
  providers instead of the global ones (tests, or several pipelines).

The choice is made once, at `connect()`: the driver then holds either an
instrumentation object or None, and checks that with one `is not None` per
message. Off, the only per-message cost is that check; the counters of
`conn.stats()` are kept either way (plain int increments).

What is recorded (OpenTelemetry messaging semantic conventions, RabbitMQ):
a PRODUCER span `publish <exchange>` per publish, lasting until the
broker's confirm, whose context travels in the message headers (W3C
`traceparent` through the global propagator); a CONSUMER span
`process <queue>` per message handled by `subscribe()`/`serve()` or handed
out by a `consume()` iterator (until the next one is asked for), a child of
the publisher's span; a CLIENT span `call <routing key>` per `conn.call()`.
Metrics: the `conn.stats()` counters as observable counters, plus the
histograms `messaging.client.operation.duration` (publish to confirm) and
`messaging.process.duration` (handler time).
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from leveret.telemetry._otel import Instrumentation

__all__ = ["Telemetry", "TelemetryOption", "check_option", "resolve"]


class Telemetry:
    """Explicit telemetry settings for `connect(telemetry=Telemetry(...))`.

    `tracer_provider` and `meter_provider` default to the global ones;
    `traces=False` or `metrics=False` leaves one of them out.
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        traces: bool = True,
        metrics: bool = True,
    ) -> None:
        self.tracer_provider = tracer_provider
        self.meter_provider = meter_provider
        self.traces = traces
        self.metrics = metrics

    def __repr__(self) -> str:
        return f"Telemetry(traces={self.traces}, metrics={self.metrics})"


TelemetryOption = bool | Telemetry | None


def check_option(option: object) -> None:
    """Refuse a wrong `telemetry=` before anything connects."""
    if option is not None and not isinstance(option, bool | Telemetry):
        raise TypeError(
            f"telemetry must be None, True, False or leveret.telemetry.Telemetry, "
            f"got {type(option).__name__}"
        )


def resolve(option: TelemetryOption, name: str, host: str, port: int) -> Instrumentation | None:
    """The instrumentation a connection named `name` uses, or None when telemetry is off."""
    if option is False:
        return None
    if option is None:
        if not _sdk_configured():
            return None
        option = Telemetry()
    elif option is True:
        option = Telemetry()
    try:
        from leveret.telemetry._otel import Instrumentation
    except ImportError as exc:
        raise ImportError("telemetry needs OpenTelemetry: pip install 'leveret[otel]'") from exc
    return Instrumentation(option, name, host, port)


def _sdk_configured() -> bool:
    """True when the program set a real (SDK) tracer or meter provider globally.

    Looked up only if the program imported OpenTelemetry itself: leveret
    never imports it for a program that does not use it.
    """
    if "opentelemetry.trace" not in sys.modules and "opentelemetry.metrics" not in sys.modules:
        return False
    from opentelemetry import metrics, trace

    providers = (trace.get_tracer_provider(), metrics.get_meter_provider())
    # The API's own providers (proxies until an SDK is set, no-ops) live in its modules.
    return any(
        not type(provider).__module__.startswith(("opentelemetry.trace", "opentelemetry.metrics"))
        for provider in providers
    )
