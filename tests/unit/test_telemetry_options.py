"""How telemetry is switched on, checked without a broker."""

from __future__ import annotations

import subprocess
import sys

import pytest

import leveret
from leveret.telemetry import Telemetry, resolve


def test_importing_leveret_imports_no_opentelemetry() -> None:
    script = (
        "import sys, leveret, leveret.aio, leveret.blocking, leveret.telemetry\n"
        "print(sorted(m for m in sys.modules if m.startswith('opentelemetry')))"
    )
    result = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=True
    )
    assert result.stdout.strip() == "[]"


def test_a_wrong_telemetry_option_is_refused_before_connecting() -> None:
    with pytest.raises(TypeError, match="telemetry must be"):
        leveret.connect("amqp://localhost/", telemetry="yes")  # type: ignore[arg-type]


def test_off_means_no_instrumentation_and_on_means_one() -> None:
    assert resolve(False, "n", "localhost", 5672) is None
    # No global SDK provider in this process: the default stays off.
    assert resolve(None, "n", "localhost", 5672) is None
    instrumentation = resolve(True, "n", "localhost", 5672)
    assert instrumentation is not None
    assert instrumentation.name == "n"
    assert resolve(Telemetry(traces=False), "n", "h", 1) is not None
