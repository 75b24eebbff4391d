"""leveret on uvloop (the `leveret[speed]` extra): the same behaviour on another loop.

uvloop's transports do not subclass asyncio.Transport, which once kept leveret
from ever completing a handshake there; these run the main paths on it.
"""

from __future__ import annotations

import asyncio
import urllib.parse

import pytest

import leveret
import leveret.blocking
from leveret._loop import event_loop_name
from leveret.testing import FaultProxy

uvloop = pytest.importorskip("uvloop")


def test_leveret_run_uses_uvloop_when_installed_and_the_environment_can_say_otherwise(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    async def loop_class() -> str:
        return type(asyncio.get_running_loop()).__module__

    monkeypatch.delenv("LEVERET_EVENT_LOOP", raising=False)
    assert event_loop_name() == "uvloop"
    assert leveret.run(loop_class()).startswith("uvloop")
    monkeypatch.setenv("LEVERET_EVENT_LOOP", "asyncio")
    assert leveret.run(loop_class()).startswith("asyncio")
    monkeypatch.setenv("LEVERET_EVENT_LOOP", "tokio")
    with pytest.raises(ValueError, match="'tokio'"):
        event_loop_name()
    never_started = loop_class()
    with pytest.raises(ValueError, match="'tokio'"):
        leveret.run(never_started)  # closed, so no "never awaited" warning (an error here)
    assert never_started.cr_frame is None


def test_publish_consume_rpc_and_recovery_on_uvloop(rabbitmq_url: str, queue_name: str) -> None:
    url = urllib.parse.urlsplit(rabbitmq_url)
    host, port = url.hostname, url.port
    assert host is not None
    assert port is not None

    async def main() -> tuple[list[int], bytes, int]:
        assert type(asyncio.get_running_loop()).__module__.startswith("uvloop")
        async with FaultProxy(host, port) as proxy:
            target = proxy.url_for(rabbitmq_url)
            async with leveret.connect(target, name="uvloop") as conn:
                await conn.declare_queue(queue_name, durable=True)
                await asyncio.gather(
                    *(conn.publish(str(n), routing_key=queue_name) for n in range(200))
                )
                proxy.cut()  # every connection reset: recovery has to work on uvloop too
                await conn.wait_connected(timeout=30)
                await asyncio.gather(
                    *(conn.publish(str(n), routing_key=queue_name) for n in range(200, 400))
                )
                seen: list[int] = []
                async with conn.consume(queue_name, prefetch=100) as messages:
                    async for message in messages:
                        seen.append(int(message.text()))
                        assert message.ack()
                        if len(set(seen)) == 400:
                            break

                async def echo(message: leveret.Message) -> bytes:
                    return message.body[::-1]

                rpc_queue = f"{queue_name}.rpc"
                await conn.declare_queue(rpc_queue, auto_delete=True)
                async with conn.serve(rpc_queue, echo):
                    reply = await conn.call(rpc_queue, b"uvloop", timeout=10)
                return seen, reply.body, proxy.connections_cut

    seen, reply, cut = leveret.run(main())
    assert cut >= 1
    assert sorted(set(seen)) == list(range(400))
    assert reply == b"poolvu"


def test_the_blocking_facade_runs_its_io_thread_on_uvloop(
    rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url) as conn:
        assert type(conn._portal.loop).__module__.startswith("uvloop")
        conn.declare_queue(queue_name, auto_delete=True)
        assert conn.publish_many([b"a", b"b", b"c"], routing_key=queue_name) == 3
        conn.publish(b"d", routing_key=queue_name)
        got = [conn.get(queue_name, no_ack=True) for _ in range(4)]
    assert [m.body for m in got if m is not None] == [b"a", b"b", b"c", b"d"]
