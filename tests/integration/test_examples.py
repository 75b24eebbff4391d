"""The tutorial scripts in examples/ and `python -m leveret.demo`, run as real processes.

Receivers print a readiness line once their queue is bound and consuming; the tests
start publishers only after reading it, and receivers exit by themselves after
`--count` messages, so nothing here depends on sleeping or killing at the right time.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import re
import signal
import sys
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import pytest

import leveret

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
LINE_TIMEOUT = 15.0  # seconds to wait for any one expected line or exit
FAST_WORK = {"SECONDS_PER_DOT": "0.01"}  # 02_work_queues: a dot is a second of work by default


class Script:
    """A running example; stdout and stderr merged, read line by line."""

    def __init__(self, proc: asyncio.subprocess.Process, title: str) -> None:
        self.proc = proc
        self.title = title
        self.lines: list[str] = []  # every line read so far

    def _failure(self, why: str) -> str:
        shown = "\n".join(f"    {line}" for line in self.lines) or "    (no output)"
        return f"{self.title}: {why}; its output so far:\n{shown}"

    async def _readline(self, deadline: float) -> str | None:
        assert self.proc.stdout is not None
        remaining = deadline - asyncio.get_running_loop().time()
        try:
            raw = await asyncio.wait_for(self.proc.stdout.readline(), max(remaining, 0.0))
        except TimeoutError:
            pytest.fail(self._failure("timed out"), pytrace=False)
        if not raw:
            return None
        line = raw.decode().rstrip("\n")
        self.lines.append(line)
        return line

    async def expect(self, text: str) -> None:
        """Read until a line containing `text` (the readiness line, typically)."""
        deadline = asyncio.get_running_loop().time() + LINE_TIMEOUT
        while (line := await self._readline(deadline)) is not None:
            if text in line:
                return
        pytest.fail(self._failure(f"exited before printing {text!r}"), pytrace=False)

    async def finish(self, returncode: int = 0) -> list[str]:
        """Read to the end and wait for the exit; assert its code; return all output lines."""
        deadline = asyncio.get_running_loop().time() + LINE_TIMEOUT
        while await self._readline(deadline) is not None:
            pass
        code = await self.proc.wait()
        assert code == returncode, self._failure(f"exit code {code}, expected {returncode}")
        return self.lines


@contextlib.asynccontextmanager
async def start(
    url: str, script: str, *args: str, module: bool = False, env: dict[str, str] | None = None
) -> AsyncIterator[Script]:
    """Run `python examples/SCRIPT.py ARGS` (or `python -m SCRIPT ARGS`), killed if still running at the end."""
    target = ["-m", script] if module else [str(EXAMPLES / f"{script}.py")]
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        *target,
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "AMQP_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield Script(proc, " ".join([script, *args]))
    finally:
        if proc.returncode is None:
            proc.kill()
        assert proc.stdout is not None
        await proc.stdout.read()
        await proc.wait()


async def run(
    url: str, script: str, *args: str, returncode: int = 0, env: dict[str, str] | None = None
) -> list[str]:
    """Run an example to completion; its output lines."""
    async with start(url, script, *args, env=env) as proc:
        return await proc.finish(returncode)


def received(lines: list[str], prefix: str = " [x] ") -> list[str]:
    """The message lines of a receiver's output (without the readiness line)."""
    return [line for line in lines if line.startswith(prefix) and "Waiting" not in line]


async def test_hello_world(rabbitmq_url: str, conn: leveret.Connection) -> None:
    await conn.delete_queue("hello")
    async with start(rabbitmq_url, "01_hello_world", "receive", "--count", "1") as receiver:
        await receiver.expect(" [*] Waiting for messages")
        assert await run(rabbitmq_url, "01_hello_world", "send") == [" [x] Sent 'Hello World!'"]
        assert received(await receiver.finish()) == [" [x] Received 'Hello World!'"]


async def test_work_queues_each_task_done_exactly_once(
    rabbitmq_url: str, rabbitmqctl: Callable[..., str], conn: leveret.Connection
) -> None:
    await conn.delete_queue("task_queue")
    tasks = [f"Task {i} {'.' * i}" for i in range(1, 7)]
    worker = ("02_work_queues", "worker", "--count", "3")
    async with (
        start(rabbitmq_url, *worker, env=FAST_WORK) as w1,
        start(rabbitmq_url, *worker, env=FAST_WORK) as w2,
    ):
        await w1.expect(" [*] Waiting for messages")
        await w2.expect(" [*] Waiting for messages")
        consumers = json.loads(
            rabbitmqctl("list_consumers", "-q", "--formatter", "json", "queue_name",
                        "prefetch_count", "ack_required")
        )  # fmt: skip
        assert [c for c in consumers if c["queue_name"] == "task_queue"] == [
            {"queue_name": "task_queue", "prefetch_count": 1, "ack_required": True}
        ] * 2  # fair dispatch: one unacked task per worker at a time
        sent = await asyncio.gather(
            *(run(rabbitmq_url, "02_work_queues", "new_task", task) for task in tasks)
        )
        assert sorted(sent) == sorted([[f" [x] Sent {task!r}"] for task in tasks])
        done1, done2 = received(await w1.finish()), received(await w2.finish())
    got = [line for line in done1 + done2 if line.startswith(" [x] Received")]
    assert sorted(got) == sorted(f" [x] Received {task!r}" for task in tasks)
    for done in (done1, done2):  # three tasks each, one at a time
        assert done == [line for task in done[0::2] for line in (task, " [x] Done")]
        assert len(done) == 6


async def test_new_task_is_persistent_on_a_durable_queue(
    rabbitmq_url: str, conn: leveret.Connection
) -> None:
    await conn.delete_queue("task_queue")
    await run(rabbitmq_url, "02_work_queues", "new_task", "Keep me.")
    with pytest.raises(leveret.PreconditionFailed):
        await conn.declare_queue("task_queue", durable=False)  # it exists, and is durable
    msg = await conn.get("task_queue")
    assert msg is not None
    assert (msg.text(), msg.properties.delivery_mode) == ("Keep me.", 2)
    assert msg.ack()


async def test_work_queues_task_of_a_dead_worker_is_redelivered(
    rabbitmq_url: str, conn: leveret.Connection
) -> None:
    await conn.delete_queue("task_queue")
    async with start(
        rabbitmq_url, "02_work_queues", "worker", env={"SECONDS_PER_DOT": "60"}
    ) as doomed:
        await doomed.expect(" [*] Waiting for messages")
        await run(rabbitmq_url, "02_work_queues", "new_task", "Slow task.")
        await doomed.expect(" [x] Received 'Slow task.'")
        doomed.proc.send_signal(signal.SIGKILL)  # dies mid-task, without acking
        await doomed.finish(returncode=-signal.SIGKILL)
    lines = await run(rabbitmq_url, "02_work_queues", "worker", "--count", "1", env=FAST_WORK)
    assert received(lines) == [" [x] Received 'Slow task.'", " [x] Done"]


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="SIGINT is ignored here (a background job?), so the worker would inherit that",
)
async def test_worker_stops_cleanly_on_ctrl_c(rabbitmq_url: str) -> None:
    async with start(rabbitmq_url, "02_work_queues", "worker") as worker:
        await worker.expect(" [*] Waiting for messages")
        worker.proc.send_signal(signal.SIGINT)
        assert not any("Traceback" in line for line in await worker.finish(returncode=0))


async def test_publish_subscribe_every_receiver_gets_every_line(rabbitmq_url: str) -> None:
    logs = ["info: one", "warning: two", "error: three"]
    async with (
        start(rabbitmq_url, "03_publish_subscribe", "receive_logs", "--count", "3") as r1,
        start(rabbitmq_url, "03_publish_subscribe", "receive_logs", "--count", "3") as r2,
    ):
        await r1.expect(" [*] Waiting for logs")
        await r2.expect(" [*] Waiting for logs")
        for log in logs:
            assert await run(rabbitmq_url, "03_publish_subscribe", "emit_log", log) == [
                f" [x] Sent {log!r}"
            ]
        expected = [f" [x] {log}" for log in logs]
        assert received(await r1.finish()) == expected
        assert received(await r2.finish()) == expected


async def test_routing_by_severity(rabbitmq_url: str) -> None:
    async with (
        start(rabbitmq_url, "04_routing", "receive_logs_direct", "error", "--count", "1") as errors,
        start(
            rabbitmq_url, "04_routing", "receive_logs_direct", "info", "warning", "error",
            "--count", "3",
        ) as everything,
    ):  # fmt: skip
        await errors.expect(" [*] Waiting for logs")
        await everything.expect(" [*] Waiting for logs")
        # Errors last: a receiver for "error" that also got others would print those first.
        for severity in ("info", "warning", "error"):
            await run(rabbitmq_url, "04_routing", "emit_log_direct", severity, f"a {severity}")
        assert received(await errors.finish()) == [" [x] error:'a error'"]
        assert received(await everything.finish()) == [
            " [x] info:'a info'",
            " [x] warning:'a warning'",
            " [x] error:'a error'",
        ]


async def test_topics_star_and_hash(rabbitmq_url: str) -> None:
    bindings = {"kern.*": 2, "*.critical": 2, "kern.#": 3, "#": 5}
    async with contextlib.AsyncExitStack() as stack:
        receivers = {
            key: await stack.enter_async_context(
                start(rabbitmq_url, "05_topics", "receive_logs_topic", key, "--count", str(n))
            )
            for key, n in bindings.items()
        }
        for receiver in receivers.values():
            await receiver.expect(" [*] Waiting for logs")
        # The keys no binding but "#" wants go first, so a wrong match shows up as a received line.
        for key in (
            "auth.info",
            "kern.disk.critical",
            "kern.info",
            "auth.critical",
            "kern.critical",
        ):
            await run(rabbitmq_url, "05_topics", "emit_log_topic", key, "x")
        got = {key: received(await r.finish()) for key, r in receivers.items()}

    def lines(*keys: str) -> list[str]:
        return [f" [x] {key}:'x'" for key in keys]

    assert got == {
        "kern.*": lines("kern.info", "kern.critical"),
        "*.critical": lines("auth.critical", "kern.critical"),
        "kern.#": lines("kern.disk.critical", "kern.info", "kern.critical"),
        "#": lines(
            "auth.info", "kern.disk.critical", "kern.info", "auth.critical", "kern.critical"
        ),
    }


async def test_rpc_fibonacci(rabbitmq_url: str, conn: leveret.Connection) -> None:
    await conn.delete_queue("rpc_queue")
    async with start(rabbitmq_url, "06_rpc", "rpc_server", "--count", "2") as server:
        await server.expect(" [x] Awaiting RPC requests")
        client = await run(rabbitmq_url, "06_rpc", "rpc_client", "10", "20")
        assert " [.] Got fib(10)=55" in client
        assert " [.] Got fib(20)=6765" in client
        assert sorted(received(await server.finish(), " [.] ")) == [" [.] fib(10)", " [.] fib(20)"]


async def test_rpc_client_without_server(rabbitmq_url: str, conn: leveret.Connection) -> None:
    await conn.delete_queue("rpc_queue")
    lines = await run(rabbitmq_url, "06_rpc", "rpc_client", "10", returncode=1)
    assert " [!] fib(10): nobody serves rpc_queue, start rpc_server first" in lines
    await conn.declare_queue("rpc_queue")  # a queue, but nobody consuming it
    try:
        args = ("rpc_client", "10", "--timeout", "0.3")
        lines = await run(rabbitmq_url, "06_rpc", *args, returncode=1)
        assert " [!] fib(10): no reply within 0.3 s" in lines
    finally:
        await conn.delete_queue("rpc_queue")


async def test_publisher_confirms(rabbitmq_url: str) -> None:
    lines = await run(rabbitmq_url, "07_publisher_confirms", "--messages", "500")
    pattern = re.compile(
        r" \[x\] Published 500 messages (individually|in batches|from many tasks) "
        r"in [\d.]+ s \([\d,]+ msg/s\): 500 confirmed, 500 in the queue"
    )
    strategies = [m.group(1) for line in lines if (m := pattern.fullmatch(line))]
    assert strategies == ["individually", "in batches", "from many tasks"], lines


async def test_demo(rabbitmq_url: str) -> None:
    args = ("--url", rabbitmq_url, "--messages", "2000", "--workers", "3")
    async with start(rabbitmq_url, "leveret.demo", *args, module=True) as demo:
        lines = await demo.finish()
    summary = re.compile(
        r"published 2000, confirmed 2000, consumed 2000, duplicates 0, "
        r"redeliveries (\d+) \(nacked on purpose: (\d+)\)"
    )
    matches = [m for line in lines if (m := summary.search(line))]
    assert len(matches) == 1, lines
    redeliveries, nacked = matches[0].groups()
    assert redeliveries == nacked != "0"  # 1% of 2000 nacked: none at all has odds of 2e-9
    assert any(re.search(r"\d+ msg/s", line) for line in lines), lines
    assert lines[-1].startswith("OK"), lines


async def test_retry_and_parking_lot(rabbitmq_url: str, conn: leveret.Connection) -> None:
    lines = await run(rabbitmq_url, "08_retry", "--delays", "0.1", "0.2")
    assert [line for line in lines if line.startswith(" [x] order-2")] == [
        " [x] order-2 (flaky), attempt 1",
        " [x] order-2 (flaky), attempt 2",
        " [x] order-2 (flaky), attempt 3",
    ]
    assert lines[-3:] == [
        " [=] order-1: done on attempt 1",
        " [=] order-2: done on attempt 3",
        " [=] order-3: parked: RuntimeError: cannot process order-3 yet",
    ]
    retry = leveret.Retry(delays=(0.1, 0.2))
    for name in (
        "orders",
        retry.parking_queue("orders"),
        *(retry.retry_queue("orders", d) for d in retry.delays),
    ):
        await conn.delete_queue(name)


async def test_streams(rabbitmq_url: str, conn: leveret.Connection) -> None:
    lines = await run(rabbitmq_url, "09_streams")
    events = "['0:event 0', '1:event 1', '2:event 2']"
    assert lines == [
        f" [x] first: {events}",
        f" [x] first again: {events}",
        " [x] next: ['3:event 3']",
    ]
    await conn.delete_queue("events")
