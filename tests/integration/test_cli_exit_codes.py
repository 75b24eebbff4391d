"""Each exit code of the `leveret` command, provoked for real against the private broker and
read from a `python -m leveret.cli` subprocess: one stderr line, no traceback, the right number.

Where a second party is needed (an exclusive queue's owner, an RPC server) it runs in the
test's own event loop while the subprocess runs in a thread.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest

import leveret
from leveret.testing import RabbitMQNode
from tests.integration.test_cli import LINE_TIMEOUT, cli, closed_port

pytestmark = pytest.mark.integration


def assert_fails(result: subprocess.CompletedProcess[str], code: int, start: str) -> None:
    """Exit `code`, and exactly one stderr line that starts with `start`."""
    assert result.returncode == code, result.stderr
    assert result.stderr.startswith(start), result.stderr
    assert result.stderr.count("\n") == 1, result.stderr


def test_2_usage_errors_name_the_bad_value(rabbitmq_url: str, queue_name: str) -> None:
    both = cli("publish", "--url", rabbitmq_url, "--file", "/etc/hostname", "body")
    assert_fails(both, 2, "leveret: error: give either BODY or --file")
    missing = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--file", "/no/such/file")
    assert_fails(missing, 2, "leveret: error: --file '/no/such/file': No such file")
    lines = cli("publish", "--url", rabbitmq_url, "--count", "3", "-", stdin="a\n")
    assert_fails(lines, 2, "leveret: error: --count repeats one body")
    # Checked by leveret itself before anything is sent.
    long_key = "k" * 256
    too_long = cli("publish", "--url", rabbitmq_url, "-k", long_key, "body")
    assert_fails(too_long, 2, "leveret: ValueError: routing key is 256 bytes")
    reply_to = cli("call", "--url", rabbitmq_url, queue_name, "x", "--reply-to", "mine")
    assert_fails(reply_to, 2, "leveret: error: --reply-to 'mine': call sets it itself")
    bad_type = cli("declare", "exchange", "--url", rabbitmq_url, queue_name, "--type", "fanotu")
    assert_fails(bad_type, 2, "leveret: ValueError: unknown exchange type 'fanotu'")


def test_3_no_broker() -> None:
    result = cli("ping", f"amqp://guest:guest@127.0.0.1:{closed_port()}/")
    assert_fails(result, 3, "leveret: ConnectFailed: ")


def test_4_wrong_password_and_the_password_is_not_shown(rabbitmq: RabbitMQNode) -> None:
    result = cli("ping", f"amqp://guest:s3cret-wrong@127.0.0.1:{rabbitmq.port}/")
    assert_fails(result, 4, "leveret: AuthenticationFailed: ")
    assert "s3cret-wrong" not in result.stderr


def test_5_unknown_vhost(rabbitmq: RabbitMQNode) -> None:
    vhost = f"no-such-vhost-{uuid.uuid4().hex[:8]}"
    result = cli("ping", f"amqp://guest:guest@127.0.0.1:{rabbitmq.port}/{quote(vhost)}")
    assert_fails(result, 5, "leveret: NotAllowed: 530 ")
    assert vhost in result.stderr


def test_6_access_refused(rabbitmq: RabbitMQNode, queue_name: str) -> None:
    user, password = f"cli-{uuid.uuid4().hex[:8]}", uuid.uuid4().hex
    rabbitmq.add_user(user, password, configure="", write=".*", read=".*")
    try:
        url = f"amqp://{user}:{password}@127.0.0.1:{rabbitmq.port}/"
        result = cli("declare", "queue", "--url", url, queue_name)
    finally:
        rabbitmq.delete_user(user)
    assert_fails(result, 6, "leveret: AccessRefused: 403 ACCESS_REFUSED")
    assert queue_name in result.stderr


def test_7_not_found(rabbitmq_url: str, queue_name: str) -> None:
    passive = cli("declare", "queue", "--url", rabbitmq_url, "--passive", queue_name)
    assert_fails(passive, 7, f"leveret: NotFound: 404 NOT_FOUND - no queue '{queue_name}'")
    no_exchange = cli("publish", "--url", rabbitmq_url, "-e", queue_name, "body")
    assert_fails(no_exchange, 7, "leveret: NotFound: 404 NOT_FOUND - no exchange")


async def test_8_resource_locked(rabbitmq_url: str, queue_name: str) -> None:
    async with leveret.connect(rabbitmq_url) as owner:
        await owner.declare_queue(queue_name, exclusive=True)
        result = await asyncio.to_thread(cli, "declare", "queue", "--url", rabbitmq_url, queue_name)
    assert_fails(result, 8, "leveret: ResourceLocked: 405 RESOURCE_LOCKED")


def test_9_precondition_failed(rabbitmq_url: str, queue_name: str) -> None:
    assert cli("declare", "queue", "--url", rabbitmq_url, queue_name).returncode == 0
    result = cli("declare", "queue", "--url", rabbitmq_url, queue_name, "--max-length", "5")
    assert_fails(result, 9, "leveret: PreconditionFailed: 406 PRECONDITION_FAILED")
    assert "x-max-length" in result.stderr
    not_empty = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "body")
    assert not_empty.returncode == 0
    kept = cli("delete", "queue", "--url", rabbitmq_url, queue_name, "--if-empty")
    assert_fails(kept, 9, "leveret: PreconditionFailed: 406 PRECONDITION_FAILED")
    assert cli("delete", "queue", "--url", rabbitmq_url, queue_name).returncode == 0


def test_11_nacked_by_a_full_queue(rabbitmq_url: str, queue_name: str) -> None:
    declared = cli(
        "declare", "queue", "--url", rabbitmq_url, queue_name,
        "--max-length", "2", "--overflow", "reject-publish",
    )  # fmt: skip
    assert declared.returncode == 0, declared.stderr
    result = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--count", "3", "body")
    assert_fails(result, 11, "leveret: PublishNacked: ")
    depth = cli("declare", "queue", "--url", rabbitmq_url, queue_name, "--passive")
    assert depth.stdout.startswith(f"{queue_name}\t2 messages")


def test_12_unroutable(rabbitmq_url: str, queue_name: str) -> None:
    mandatory = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--mandatory", "body")
    assert_fails(mandatory, 12, "leveret: MessageReturned: 312 NO_ROUTE")
    assert queue_name in mandatory.stderr
    # Without --mandatory the broker drops it and confirms: a success.
    dropped = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "body")
    assert dropped.returncode == 0
    call = cli("call", "--url", rabbitmq_url, queue_name, "request", "--timeout", "5")
    assert_fails(call, 12, "leveret: MessageReturned: 312 NO_ROUTE")


def test_13_rpc_timeout(rabbitmq_url: str, queue_name: str) -> None:
    assert cli("declare", "queue", "--url", rabbitmq_url, queue_name).returncode == 0
    result = cli("call", "--url", rabbitmq_url, queue_name, "anyone?", "--timeout", "0.3")
    assert_fails(result, 13, "leveret: RPCTimeout: ")


def test_13_publish_timeout_while_the_broker_blocks_publishers(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    assert cli("declare", "queue", "--url", rabbitmq_url, queue_name).returncode == 0
    rabbitmq.set_vm_memory_high_watermark(0)
    try:
        result = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--timeout", "0.5", "x")
    finally:
        rabbitmq.set_vm_memory_high_watermark(0.4)
    assert_fails(result, 13, "leveret: PublishTimeout: ")


async def test_14_remote_error_and_a_successful_call(rabbitmq_url: str, queue_name: str) -> None:
    async def handler(msg: leveret.Message) -> bytes:
        if msg.body == b"fail":
            raise KeyError("no such order")
        return msg.body.upper()

    async with leveret.connect(rabbitmq_url) as server:
        await server.declare_queue(queue_name, auto_delete=True)
        async with server.serve(queue_name, handler):
            ok = await asyncio.to_thread(cli, "call", "--url", rabbitmq_url, queue_name, "hello")
            failed = await asyncio.to_thread(cli, "call", "--url", rabbitmq_url, queue_name, "fail")
    assert (ok.returncode, ok.stdout) == (0, "HELLO\n"), ok.stderr
    assert_fails(failed, 14, "leveret: RemoteError: KeyError: ")
    assert "no such order" in failed.stderr


async def test_15_consumer_cancelled_when_its_queue_is_deleted(
    rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(rabbitmq_url) as conn:
        await conn.declare_queue(queue_name)
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            *("-m", "leveret.cli", "consume", "--url", rabbitmq_url, queue_name),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
            env={**os.environ, "PYTHONUNBUFFERED": "1"},
        )
        try:
            await conn.publish(b"first", routing_key=queue_name)
            assert proc.stdout is not None
            # Printed: the consumer is running.
            assert await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT) == b"first\n"
            await conn.delete_queue(queue_name)
            _, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
        finally:
            if proc.returncode is None:
                proc.kill()
                await proc.wait()
    assert proc.returncode == 15, err
    assert err.decode().startswith("leveret: ConsumerCancelled: ")
    assert err.count(b"\n") == 1


async def test_130_publish_interrupted_while_reading_stdin(
    rabbitmq_url: str, queue_name: str
) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "leveret.cli", "publish", "--url", rabbitmq_url, "-k", queue_name, "-"),
        stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        assert proc.stdin is not None
        async with leveret.connect(rabbitmq_url) as conn:
            await conn.declare_queue(queue_name)
            async with conn.consume(queue_name) as messages:
                proc.stdin.write(b"one line\n")
                await proc.stdin.drain()
                # Delivered: the publisher is up and now waits for the next stdin line.
                message = await asyncio.wait_for(anext(messages), LINE_TIMEOUT)
                assert message.body == b"one line"
                message.ack()
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err
    assert err == b"leveret: interrupted\n"


def test_141_stdout_closed_early_is_quiet(
    rabbitmq_url: str, queue_name: str, tmp_path: Path
) -> None:
    # 2.4 MB of output: more than any pipe buffer holds, so the consumer is still writing
    # when the reader goes away, as with `leveret consume q | head -1`.
    body = tmp_path / "body"
    body.write_bytes(b"x" * 8000)
    assert cli("declare", "queue", "--url", rabbitmq_url, queue_name).returncode == 0
    sent = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "--count", "300",
               "--file", str(body))  # fmt: skip
    assert sent.returncode == 0
    with subprocess.Popen(
        [sys.executable, "-m", "leveret.cli", "consume", "--url", rabbitmq_url, queue_name],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    ) as proc:
        assert proc.stdout is not None
        assert proc.stderr is not None
        assert proc.stdout.readline() == b"x" * 8000 + b"\n"
        proc.stdout.close()
        err = proc.stderr.read()
        assert proc.wait(LINE_TIMEOUT) == 141
    assert err == b""


def test_verbose_adds_the_traceback_and_the_refused_method(
    rabbitmq_url: str, queue_name: str
) -> None:
    result = cli("declare", "queue", "--url", rabbitmq_url, "--passive", queue_name, "-v")
    assert result.returncode == 7
    lines = result.stderr.splitlines()
    assert lines[0] == "Traceback (most recent call last):"
    assert "leveret.exceptions.NotFound: 404 NOT_FOUND" in result.stderr
    assert lines[-2].startswith("details: reply_code=404, reply_text=")
    assert f"NOT_FOUND - no queue '{queue_name}'" in lines[-2]
    assert lines[-2].endswith("method=Queue.Declare")
    assert lines[-1].startswith("leveret: NotFound: 404 NOT_FOUND")
    before = cli("-v", "declare", "queue", "--url", rabbitmq_url, "--passive", queue_name)
    assert before.returncode == 7
    assert before.stderr.splitlines()[-2] == lines[-2]
