"""`leveret ping|declare|delete|unbind|purge|publish|consume|call` as subprocesses against the
private broker, checked through the broker's own view (rabbitmqctl) or through the CLI's
other half (what `publish` sent, `consume` must print).

Nothing sleeps: a test that needs a running consumer waits for a line it printed.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import leveret
from leveret.testing import RabbitMQNode
from tests.integration.test_cli import LINE_TIMEOUT, cli

pytestmark = pytest.mark.integration


def ok(*args: str, stdin: str | None = None) -> str:
    """Run the CLI, expect exit 0, return stdout."""
    result = cli(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    return result.stdout


def consumed(url: str, queue: str, count: int) -> list[dict[str, Any]]:
    out = ok("consume", "--url", url, queue, "--count", str(count), "--json")
    return [json.loads(line) for line in out.splitlines()]


def ctl_json(rabbitmq: RabbitMQNode, *args: str) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = json.loads(rabbitmq.ctl(*args, "--formatter", "json"))
    return rows


# -- ping -------------------------------------------------------------------------------------------


def test_ping_prints_the_server_and_the_negotiated_limits(rabbitmq: RabbitMQNode) -> None:
    version = rabbitmq.ctl("version").strip()
    url = f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/?frame_max=8192&channel_max=9&heartbeat=7"
    info = json.loads(ok("ping", url, "--json"))
    assert (info["product"], info["version"]) == ("RabbitMQ", version)
    # The client asked for less than the broker offers: the lower values win.
    assert (info["frame_max"], info["channel_max"], info["heartbeat"]) == (8192, 9, 7)
    assert "publisher_confirms" in info["capabilities"]
    assert info["url"] == f"amqp://guest@127.0.0.1:{rabbitmq.port}/%2F"  # no password
    text = ok("ping", "--url", rabbitmq.url)
    assert f"server       RabbitMQ {version} (Erlang/OTP" in text
    assert "frame_max    131072 bytes" in text
    assert "channel_max  2047\n" in text
    assert "heartbeat    60 s\n" in text


# -- topology ---------------------------------------------------------------------------------------


def test_declare_queue_options_reach_the_broker(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    out = ok(
        "declare", "queue", "--url", rabbitmq_url, queue_name, "--type", "quorum",
        "--delivery-limit", "4", "--message-ttl", "60", "--argument", "x-max-length:=100",
        "--dead-letter-exchange", "dlx",
    )  # fmt: skip
    assert out == f"{queue_name}\t0 messages\t0 consumers\n"
    rows = ctl_json(rabbitmq, "list_queues", "name", "type", "durable", "arguments")
    row = next(r for r in rows if r["name"] == queue_name)
    assert (row["type"], row["durable"]) == ("quorum", True)
    arguments = {key: value for key, _type, value in row["arguments"]}
    assert arguments["x-delivery-limit"] == 4
    assert arguments["x-message-ttl"] == 60_000
    assert arguments["x-max-length"] == 100
    assert arguments["x-dead-letter-exchange"] == "dlx"
    ok("delete", "queue", "--url", rabbitmq_url, queue_name)
    assert queue_name not in {q["name"] for q in rabbitmq.list_queues()}


def test_exchange_binding_lifecycle(rabbitmq_url: str, queue_name: str) -> None:
    url = ("--url", rabbitmq_url)
    exchange = f"{queue_name}.ex"
    assert ok("declare", "exchange", *url, exchange, "--type", "topic") == f"{exchange}\ttopic\n"
    ok("declare", "queue", *url, queue_name)
    bound = cli("declare", "bind", *url, exchange, queue_name, "-k", "kern.*", "-k", "app.#")
    assert bound.returncode == 0
    assert f"bound {exchange} -> {queue_name} (key 'kern.*')" in bound.stderr
    for key in ("kern.disk", "app.web.error", "user.login"):
        ok("publish", *url, "-e", exchange, "-k", key, key)
    assert ok("consume", *url, queue_name, "--idle-timeout", "0.5") == "kern.disk\napp.web.error\n"
    ok("unbind", *url, exchange, queue_name, "-k", "kern.*")
    unrouted = cli("publish", *url, "-e", exchange, "-k", "kern.disk", "--mandatory", "x")
    assert unrouted.returncode == 12
    ok("delete", "bind", *url, exchange, queue_name, "-k", "app.#")
    assert cli("publish", *url, "-e", exchange, "-k", "app.x", "--mandatory", "x").returncode == 12
    # Exchange to exchange, then deleting the source: publishing to it is a 404.
    source = f"{queue_name}.src"
    ok("declare", "exchange", *url, source, "--type", "fanout")
    ok("declare", "bind", *url, source, exchange, "--to-exchange", "-k", "ignored")
    ok("declare", "bind", *url, exchange, queue_name, "-k", "#")
    ok("publish", *url, "-e", source, "via-source")
    assert ok("consume", *url, queue_name, "--count", "1") == "via-source\n"
    ok("delete", "exchange", *url, source)
    assert cli("publish", *url, "-e", source, "x").returncode == 7
    ok("delete", "exchange", *url, exchange)
    ok("delete", "queue", *url, queue_name)


def test_purge_and_the_old_spellings(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    url = ("--url", rabbitmq_url)
    assert ok("declare-queue", *url, queue_name, "--max-length", "10").startswith(queue_name)
    ok("publish", *url, "-k", queue_name, "--count", "4", "x")
    purged = cli("purge", *url, queue_name)
    assert (purged.returncode, purged.stderr) == (0, f"purged {queue_name} (4 messages)\n")
    depth = {q["name"]: q["messages"] for q in rabbitmq.list_queues()}
    assert depth[queue_name] == 0
    assert cli("delete-queue", *url, queue_name).returncode == 0


# -- publish ------------------------------------------------------------------------------------------


def test_publish_stdin_lines_keep_their_order(rabbitmq_url: str, queue_name: str) -> None:
    ok("declare", "queue", "--url", rabbitmq_url, queue_name)
    lines = [f"line {i}" for i in range(500)]
    sent = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--window", "50", "-",
               stdin="\n".join(lines) + "\n")  # fmt: skip
    assert sent.returncode == 0
    assert sent.stderr == "published 500 message(s)\n"
    got = ok("consume", "--url", rabbitmq_url, queue_name, "--count", "500")
    assert got.splitlines() == lines


def test_publish_a_binary_file(rabbitmq_url: str, queue_name: str, tmp_path: Path) -> None:
    body = bytes(range(256)) * 4 + b"\n\xff"
    path = tmp_path / "body.bin"
    path.write_bytes(body)
    ok("declare", "queue", "--url", rabbitmq_url, queue_name)
    ok("publish", "--url", rabbitmq_url, "-k", queue_name, "--file", str(path))
    [message] = consumed(rabbitmq_url, queue_name, 1)
    assert "body" not in message
    assert base64.b64decode(message["body_base64"]) == body


def test_publish_properties_and_typed_headers(rabbitmq_url: str, queue_name: str) -> None:
    ok("declare", "queue", "--url", rabbitmq_url, queue_name)
    ok(
        "publish", "--url", rabbitmq_url, "-k", queue_name, "--persistent",
        "--content-type", "application/json", "--content-encoding", "utf-8",
        "--header", "origin=cli", "--header", "attempt:=3", "--header", "dry:=true",
        "--header", 'route:={"zone": "eu", "hops": [1, 2]}', "--priority", "7",
        "--expiration", "60000", "--message-id", "m-1", "--correlation-id", "c-1",
        "--reply-to", "answers", "--type", "order.created", "--app-id", "shop",
        "--user-id", "guest", '{"sku": "tea"}',
    )  # fmt: skip
    [message] = consumed(rabbitmq_url, queue_name, 1)
    assert message["body"] == '{"sku": "tea"}'
    assert message["headers"] == {
        "origin": "cli",
        "attempt": 3,
        "dry": True,
        "route": {"zone": "eu", "hops": [1, 2]},
    }
    expected = {
        "delivery_mode": 2,
        "content_type": "application/json",
        "content_encoding": "utf-8",
        "priority": 7,
        "expiration": "60000",
        "message_id": "m-1",
        "correlation_id": "c-1",
        "reply_to": "answers",
        "message_type": "order.created",
        "app_id": "shop",
        "user_id": "guest",
    }
    assert {key: message[key] for key in expected} == expected
    assert message["timestamp"].endswith("+00:00")  # stamped by leveret


def test_publish_count_with_a_progress_bar(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    ok("declare", "queue", "--url", rabbitmq_url, queue_name)
    sent = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--count", "3000",
               "--progress", "x")  # fmt: skip
    assert sent.returncode == 0
    lines = sent.stderr.splitlines()
    assert lines[-1] == "published 3000 message(s)"
    assert lines[-2].startswith("[" + "#" * 30 + "] 3,000/3,000 100%")
    assert lines[-2].endswith(" msg/s")
    depth = {q["name"]: q["messages"] for q in rabbitmq.list_queues()}
    assert depth[queue_name] == 3000
    quiet = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--count", "5", "x")
    assert quiet.stderr == "published 5 message(s)\n"  # not a terminal: no bar unless asked


def test_publish_rate_spaces_the_messages(rabbitmq_url: str, queue_name: str) -> None:
    # 21 messages at 100/s: the last is due 0.2 s after the first, whatever the machine.
    started = time.monotonic()
    ok("publish", "--url", rabbitmq_url, "-k", queue_name, "--count", "21", "--rate", "100", "x")
    assert time.monotonic() - started >= 0.2


# -- consume ----------------------------------------------------------------------------------------


def test_consume_requeue_leaves_the_messages_and_reject_dead_letters(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    url = ("--url", rabbitmq_url)
    dead = f"{queue_name}.dead"
    ok("declare", "exchange", *url, dead, "--type", "fanout")
    ok("declare", "queue", *url, dead)
    ok("declare", "bind", *url, dead, dead)
    ok("declare", "queue", *url, queue_name, "--dead-letter-exchange", dead)
    ok("publish", *url, "-k", queue_name, "-", stdin="one\ntwo\nthree\n")
    assert ok("consume", *url, queue_name, "--count", "2", "--requeue") == "one\ntwo\n"
    depth = {q["name"]: q["messages"] for q in rabbitmq.list_queues()}
    assert depth[queue_name] == 3
    first = consumed(rabbitmq_url, queue_name, 1)  # acked: gone
    assert (first[0]["body"], first[0]["redelivered"]) == ("one", True)
    assert ok("consume", *url, queue_name, "--count", "2", "--reject") == "two\nthree\n"
    depth = {q["name"]: q["messages"] for q in rabbitmq.list_queues()}
    assert (depth[queue_name], depth[dead]) == (0, 2)
    assert ok("consume", *url, dead, "--count", "2") == "two\nthree\n"
    both = cli("consume", *url, queue_name, "--ack", "--reject")
    assert both.returncode == 2
    assert "not allowed with argument" in both.stderr


async def test_consume_prefetch_reaches_the_broker(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "leveret.cli", "consume", "--url", rabbitmq_url, queue_name),
            *("--prefetch", "7", "--json"),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            await conn.publish(b"hello", routing_key=queue_name)
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT)
            assert json.loads(line)["body"] == "hello"
            rows = await asyncio.to_thread(
                ctl_json, rabbitmq, "list_consumers", "queue_name", "prefetch_count"
            )
            assert [r["prefetch_count"] for r in rows if r["queue_name"] == queue_name] == [7]
            proc.send_signal(signal.SIGINT)
            await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
        assert proc.returncode == 130
        await conn.delete_queue(queue_name)


# -- call -------------------------------------------------------------------------------------------


async def test_call_sends_body_and_properties_and_prints_the_reply(
    rabbitmq_url: str, queue_name: str, tmp_path: Path
) -> None:
    async def handler(msg: leveret.Message) -> dict[str, Any]:
        return {"got": msg.json(), "tenant": msg.headers.get("tenant")}

    request = tmp_path / "request.json"
    request.write_text('{"n": 30}')
    async with leveret.connect(rabbitmq_url) as server:
        await server.declare_queue(queue_name, auto_delete=True)
        async with server.serve(queue_name, handler):
            result = await asyncio.to_thread(
                cli, "call", "--url", rabbitmq_url, queue_name, "--file", str(request),
                "--header", "tenant=acme", "--content-type", "application/json", "--json",
            )  # fmt: skip
    assert result.returncode == 0, result.stderr
    reply = json.loads(result.stdout)
    assert json.loads(reply["body"]) == {"got": {"n": 30}, "tenant": "acme"}
    assert reply["content_type"] == "application/json"


# -- demo -------------------------------------------------------------------------------------------


def test_demo_against_the_private_broker(rabbitmq_url: str) -> None:
    out = ok("demo", "--url", rabbitmq_url, "--messages", "40", "--workers", "2")
    assert "published 40, confirmed 40, consumed 40, duplicates 0" in out
    assert out.rstrip().endswith("acked exactly once")
