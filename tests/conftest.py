"""Shared fixtures. The private broker comes from leveret's own pytest plugin
(`leveret.testing.pytest_plugin`: fixtures `rabbitmq`, `rabbitmq_url`, `rabbitmqctl`)."""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator
from urllib.parse import urlsplit

import pytest

import leveret
from leveret.testing import FaultProxy


@pytest.fixture
def queue_name(request: pytest.FixtureRequest) -> str:
    """A queue name unique to this test, readable in broker listings."""
    readable = re.sub(r"[^A-Za-z0-9_.-]+", "-", request.node.name)[:60]
    return f"test.{readable}.{uuid.uuid4().hex[:8]}"


@pytest.fixture
async def conn(rabbitmq_url: str) -> AsyncIterator[leveret.Connection]:
    """An open connection to the private broker, closed after the test."""
    async with leveret.connect(rabbitmq_url, name="leveret-tests") as connection:
        yield connection


@pytest.fixture
async def broker_proxy(rabbitmq_url: str) -> AsyncIterator[FaultProxy]:
    """A fault proxy in front of the private broker: connect to `broker_proxy.url_for(url)`."""
    url = urlsplit(rabbitmq_url)
    assert url.hostname is not None
    assert url.port is not None
    async with FaultProxy(url.hostname, url.port) as fault_proxy:
        yield fault_proxy
