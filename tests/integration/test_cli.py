"""The `leveret` command line against the private broker: in-process through `main()`, and as
`python -m leveret.cli` subprocesses where exit codes, stdin and Ctrl-C matter.

Nothing here sleeps: subprocess tests wait for a line the process prints (a consumed
message, a progress line) before they act on it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
from typing import Any

import pytest

from leveret.cli import main
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration

LINE_TIMEOUT = 15.0
PERCENTILE_KEYS = ("p50", "p75", "p95", "p99", "max")


def cli(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    """`python -m leveret.cli ARGS` to completion."""
    return subprocess.run(
        [sys.executable, "-m", "leveret.cli", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=LINE_TIMEOUT,
        check=False,
    )


def bench_json(capsys: pytest.CaptureFixture[str], url: str, *args: str) -> dict[str, Any]:
    code = main(["bench", "--url", url, "--json", "--no-progress", *args])
    out = capsys.readouterr().out
    assert code == 0, out
    summary: dict[str, Any] = json.loads(out)
    return summary


def assert_ordered(latency: dict[str, float]) -> None:
    values = [latency[key] for key in PERCENTILE_KEYS]
    assert values == sorted(values), latency
    assert values[0] > 0


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
    return port


# -- bench --------------------------------------------------------------------------------------


def test_bench_count_every_message_confirmed_and_consumed(
    capsys: pytest.CaptureFixture[str], rabbitmq_url: str, rabbitmq: RabbitMQNode
) -> None:
    summary = bench_json(capsys, rabbitmq_url, "--count", "2000")
    assert summary["published"] == summary["confirmed"] == summary["consumed"] == 2000
    assert (summary["lost"], summary["duplicates"], summary["failed"]) == (0, 0, 0)
    assert summary["ok"] is True
    assert summary["confirm_latency_us"]["count"] == 2000
    assert summary["delivery_latency_us"]["count"] == 2000
    assert_ordered(summary["confirm_latency_us"])
    assert_ordered(summary["delivery_latency_us"])
    assert summary["published_per_s"] > 0
    assert summary["consumed_per_s"] > 0
    # The queue was the run's own: deleted at the end.
    assert summary["queue"] not in {q["name"] for q in rabbitmq.list_queues()}


def test_bench_quorum_queue_several_producers_and_consumers(
    capsys: pytest.CaptureFixture[str], rabbitmq_url: str
) -> None:
    summary = bench_json(
        capsys,
        rabbitmq_url,
        *("--count", "1000", "--producers", "3", "--consumers", "2", "--confirm-window", "7"),
        *("--queue-type", "quorum", "--persistent", "--size", "300", "--prefetch", "50"),
    )
    assert (summary["producers"], summary["consumers"], summary["size"]) == (3, 2, 300)
    assert summary["published"] == summary["confirmed"] == summary["consumed"] == 1000
    assert summary["lost"] == 0


def test_bench_stream_every_consumer_reads_every_message(
    capsys: pytest.CaptureFixture[str], rabbitmq_url: str
) -> None:
    summary = bench_json(
        capsys, rabbitmq_url, "--count", "500", "--consumers", "2", "--queue-type", "stream"
    )
    assert summary["confirmed"] == 500
    assert summary["consumed"] == 1000  # one copy per consumer
    assert (summary["lost"], summary["duplicates"]) == (0, 0)


def test_bench_named_queue_is_kept_and_without_consumers_nothing_is_lost(
    capsys: pytest.CaptureFixture[str],
    rabbitmq_url: str,
    rabbitmq: RabbitMQNode,
    queue_name: str,
) -> None:
    summary = bench_json(
        capsys, rabbitmq_url, "--count", "300", "--consumers", "0", "--queue", queue_name
    )
    assert summary["lost"] is None
    assert summary["delivery_latency_us"] is None
    assert summary["confirmed"] == 300
    depth = {q["name"]: q["messages"] for q in rabbitmq.list_queues()}
    assert depth[queue_name] == 300
    assert main(["delete-queue", "--url", rabbitmq_url, queue_name]) == 0


def test_bench_rate_limit_spaces_publishes(
    capsys: pytest.CaptureFixture[str], rabbitmq_url: str
) -> None:
    # 41 publishes at 200/s need at least 40 intervals of 5 ms: a lower bound the pacer
    # enforces, whatever the machine's speed.
    summary = bench_json(capsys, rabbitmq_url, "--count", "41", "--rate", "200")
    assert summary["confirmed"] == 41
    assert summary["publish_seconds"] >= 0.9 * 40 / 200


def test_bench_text_summary(capsys: pytest.CaptureFixture[str], rabbitmq_url: str) -> None:
    assert main(["bench", "--url", rabbitmq_url, "--count", "100", "--no-progress"]) == 0
    out = capsys.readouterr().out
    assert "publish -> confirm" in out
    assert "publish -> delivery" in out
    assert "(0 duplicates, 0 lost)" in out


async def test_bench_ctrl_c_prints_the_summary_and_exits_130(rabbitmq_url: str) -> None:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "leveret.cli", "bench", "--url", rabbitmq_url, "--duration", "60"),
        *("--json", "--progress", "--rate", "500"),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        assert proc.stderr is not None
        first = await asyncio.wait_for(proc.stderr.readline(), LINE_TIMEOUT)
        assert b"sent" in first
        assert b"received" in first
        assert b"p50" in first
        proc.send_signal(signal.SIGINT)
        out, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130, err
    assert b"Traceback" not in err
    summary = json.loads(out)
    assert summary["interrupted"] is True
    assert summary["published"] == summary["confirmed"] > 0
    assert summary["lost"] == 0


# -- errors ---------------------------------------------------------------------------------------


def test_unreachable_broker_is_one_line_and_exit_3(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"amqp://guest:guest@127.0.0.1:{closed_port()}/"
    assert main(["bench", "--url", url, "--count", "10"]) == 3
    err = capsys.readouterr().err
    assert err.startswith("leveret: ConnectFailed: ")
    assert err.count("\n") == 1


def test_wrong_password_is_one_line_and_exit_4(rabbitmq: RabbitMQNode) -> None:
    url = f"amqp://guest:wrong@127.0.0.1:{rabbitmq.port}/"
    result = cli("publish", "--url", url, "-k", "x", "body")
    assert result.returncode == 4
    assert result.stderr.startswith("leveret: AuthenticationFailed: ")
    assert result.stderr.count("\n") == 1


def test_missing_queue_is_one_line_and_exit_7(rabbitmq_url: str, queue_name: str) -> None:
    result = cli("consume", "--url", rabbitmq_url, queue_name, "--count", "1")
    assert result.returncode == 7
    assert result.stderr.startswith("leveret: NotFound: ")
    assert queue_name in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "named"),
    [
        (["bench", "--size", "-1"], ["--size", "'-1'"]),
        (["bench", "--size", "15"], ["--size", "'15'"]),
        (["bench", "--producers", "two"], ["--producers", "'two'"]),
        (["bench", "--count", "5", "--duration", "1"], ["--duration", "--count"]),
        (["bench", "--queue-type", "stream", "--prefetch", "0"], ["--prefetch", "stream"]),
        (["bench", "--url", "http://example.com/"], ["--url", "'http://example.com/'"]),
        (["publish", "--header", "no-equals", "body"], ["--header", "'no-equals'"]),
    ],
)
def test_bad_arguments_are_argparse_errors_naming_the_value(
    capsys: pytest.CaptureFixture[str], args: list[str], named: list[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "error:" in err
    for text in named:
        assert text in err


def test_bad_size_from_the_shell() -> None:
    result = cli("bench", "--size", "-1")
    assert result.returncode == 2
    assert "argument --size: must be >= 16, got '-1'" in result.stderr


# -- publish, consume, declare-queue --------------------------------------------------------------


def test_publish_then_consume_round_trip(rabbitmq_url: str, queue_name: str) -> None:
    declared = cli("declare-queue", "--url", rabbitmq_url, queue_name)
    assert declared.returncode == 0
    assert declared.stdout.startswith(f"{queue_name}\t0 messages")
    sent = cli("publish", "--url", rabbitmq_url, "-k", queue_name, "-", stdin="one\ntwo\nthree\n")
    assert sent.returncode == 0
    assert "published 3 message(s)" in sent.stderr
    tagged = cli(
        "publish", "--url", rabbitmq_url, "--routing-key", queue_name, "--persistent",
        "--header", "origin=cli", "--content-type", "text/plain", "four",
    )  # fmt: skip
    assert tagged.returncode == 0
    got = cli("consume", "--url", rabbitmq_url, queue_name, "--count", "3")
    assert got.returncode == 0
    assert got.stdout == "one\ntwo\nthree\n"
    last = cli("consume", "--url", rabbitmq_url, queue_name, "--count", "1", "--json")
    message = json.loads(last.stdout)
    assert message["body"] == "four"
    assert message["routing_key"] == queue_name
    assert message["headers"] == {"origin": "cli"}
    assert message["content_type"] == "text/plain"
    assert message["delivery_mode"] == 2
    # Everything was acked: the queue is empty, and --idle-timeout ends an empty consume.
    empty = cli("consume", "--url", rabbitmq_url, queue_name, "--idle-timeout", "0.3")
    assert (empty.returncode, empty.stdout) == (0, "")
    assert cli("delete-queue", "--url", rabbitmq_url, queue_name).returncode == 0


def test_declare_queue_types_and_mismatch(
    capsys: pytest.CaptureFixture[str], rabbitmq_url: str, queue_name: str
) -> None:
    assert main(["declare-queue", "--url", rabbitmq_url, queue_name, "--type", "quorum"]) == 0
    assert capsys.readouterr().out.startswith(queue_name)
    # Declaring it again as a classic, non-durable queue is the broker's 406.
    assert main(["declare-queue", "--url", rabbitmq_url, queue_name]) == 9
    assert capsys.readouterr().err.startswith("leveret: PreconditionFailed: ")
    assert main(["delete-queue", "--url", rabbitmq_url, queue_name]) == 0


def test_url_comes_from_the_environment(
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
    rabbitmq_url: str,
    queue_name: str,
) -> None:
    monkeypatch.setenv("LEVERET_URL", rabbitmq_url)
    assert main(["declare-queue", queue_name]) == 0
    assert main(["delete-queue", queue_name]) == 0
    assert "deleted" in capsys.readouterr().err


async def test_consume_ctrl_c_exits_130_without_a_traceback(
    rabbitmq_url: str, queue_name: str
) -> None:
    assert (
        await asyncio.to_thread(cli, "declare-queue", "--url", rabbitmq_url, queue_name)
    ).returncode == 0
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *("-m", "leveret.cli", "consume", "--url", rabbitmq_url, queue_name),
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    try:
        sent = await asyncio.to_thread(
            cli, "publish", "--url", rabbitmq_url, "-k", queue_name, "ping"
        )
        assert sent.returncode == 0
        assert proc.stdout is not None
        # Once the message is printed the consumer is inside its loop.
        assert await asyncio.wait_for(proc.stdout.readline(), LINE_TIMEOUT) == b"ping\n"
        proc.send_signal(signal.SIGINT)
        _, err = await asyncio.wait_for(proc.communicate(), LINE_TIMEOUT)
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
    assert proc.returncode == 130
    assert b"Traceback" not in err
    assert (
        await asyncio.to_thread(cli, "delete-queue", "--url", rabbitmq_url, queue_name)
    ).returncode == 0
