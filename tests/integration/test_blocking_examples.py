"""The seven tutorials in blocking style (examples/blocking/), run as real processes.

Receivers print a readiness line once their queue is bound and consuming; the tests
start publishers only after reading it, and receivers exit by themselves after
`--count` messages, so nothing here depends on sleeping or killing at the right time.
"""

from __future__ import annotations

import contextlib
import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

import leveret.blocking

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "blocking"
LINE_TIMEOUT = 15.0  # seconds to wait for any one expected line or exit
FAST_WORK = {"SECONDS_PER_DOT": "0.01"}  # 02_work_queues: a dot is a second of work by default


class Script:
    """A running example; stdout and stderr merged, read line by line by a thread."""

    def __init__(self, proc: subprocess.Popen[str], title: str) -> None:
        self.proc = proc
        self.title = title
        self.lines: list[str] = []  # every line read so far
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self._queue.put(line.rstrip("\n"))
        self._queue.put(None)

    def _failure(self, why: str) -> str:
        shown = "\n".join(f"    {line}" for line in self.lines) or "    (no output)"
        return f"{self.title}: {why}; its output so far:\n{shown}"

    def _readline(self, deadline: float) -> str | None:
        try:
            line = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
        except queue.Empty:
            pytest.fail(self._failure("timed out"), pytrace=False)
        if line is None:
            self._queue.put(None)
            return None
        self.lines.append(line)
        return line

    def expect(self, text: str) -> None:
        """Read until a line containing `text` (the readiness line, typically)."""
        deadline = time.monotonic() + LINE_TIMEOUT
        while (line := self._readline(deadline)) is not None:
            if text in line:
                return
        pytest.fail(self._failure(f"exited before printing {text!r}"), pytrace=False)

    def finish(self, returncode: int = 0) -> list[str]:
        """Read to the end and wait for the exit; assert its code; return all output lines."""
        deadline = time.monotonic() + LINE_TIMEOUT
        while self._readline(deadline) is not None:
            pass
        code = self.proc.wait(timeout=LINE_TIMEOUT)
        assert code == returncode, self._failure(f"exit code {code}, expected {returncode}")
        return self.lines


@contextlib.contextmanager
def start(url: str, script: str, *args: str, env: dict[str, str] | None = None) -> Iterator[Script]:
    """Run `python examples/blocking/SCRIPT.py ARGS`, killed if still running at the end."""
    proc = subprocess.Popen(
        [sys.executable, str(EXAMPLES / f"{script}.py"), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env={**os.environ, "AMQP_URL": url, "PYTHONUNBUFFERED": "1", **(env or {})},
    )
    try:
        yield Script(proc, " ".join([script, *args]))
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        assert proc.stdout is not None
        proc.stdout.close()


def run(
    url: str, script: str, *args: str, returncode: int = 0, env: dict[str, str] | None = None
) -> list[str]:
    """Run an example to completion; its output lines."""
    with start(url, script, *args, env=env) as proc:
        return proc.finish(returncode)


def received(lines: list[str], prefix: str = " [x] ") -> list[str]:
    """The message lines of a receiver's output (without the readiness line)."""
    return [line for line in lines if line.startswith(prefix) and "Waiting" not in line]


def delete_queues(url: str, *names: str) -> None:
    with leveret.blocking.connect(url) as conn:
        for name in names:
            conn.delete_queue(name)


def test_hello_world(rabbitmq_url: str) -> None:
    delete_queues(rabbitmq_url, "hello")
    with start(rabbitmq_url, "01_hello_world", "receive", "--count", "1") as receiver:
        receiver.expect(" [*] Waiting for messages")
        assert run(rabbitmq_url, "01_hello_world", "send") == [" [x] Sent 'Hello World!'"]
        assert received(receiver.finish()) == [" [x] Received 'Hello World!'"]


def test_work_queues_prefetch_one_each_task_done_exactly_once(
    rabbitmq_url: str, rabbitmqctl: Callable[..., str]
) -> None:
    delete_queues(rabbitmq_url, "task_queue")
    tasks = [f"Task {i} {'.' * i}" for i in range(1, 5)]
    worker = ("02_work_queues", "worker", "--count", "2")
    with (
        start(rabbitmq_url, *worker, env=FAST_WORK) as w1,
        start(rabbitmq_url, *worker, env=FAST_WORK) as w2,
    ):
        w1.expect(" [*] Waiting for messages")
        w2.expect(" [*] Waiting for messages")
        consumers = json.loads(
            rabbitmqctl("list_consumers", "-q", "--formatter", "json", "queue_name",
                        "prefetch_count", "ack_required")
        )  # fmt: skip
        assert [c for c in consumers if c["queue_name"] == "task_queue"] == [
            {"queue_name": "task_queue", "prefetch_count": 1, "ack_required": True}
        ] * 2  # fair dispatch: one unacked task per worker at a time
        for task in tasks:
            assert run(rabbitmq_url, "02_work_queues", "new_task", task) == [f" [x] Sent {task!r}"]
        done1, done2 = received(w1.finish()), received(w2.finish())
    got = [line for line in done1 + done2 if line.startswith(" [x] Received")]
    assert sorted(got) == sorted(f" [x] Received {task!r}" for task in tasks)
    for done in (done1, done2):  # two tasks each, one at a time, each acked after its work
        assert done == [line for task in done[0::2] for line in (task, " [x] Done")]
        assert len(done) == 4
    with leveret.blocking.connect(rabbitmq_url) as conn:  # all acked: nothing left over
        assert conn.declare_queue("task_queue", durable=True).message_count == 0
        conn.delete_queue("task_queue")


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="SIGINT is ignored here (a background job?), so the worker would inherit that",
)
def test_worker_stops_cleanly_on_ctrl_c(rabbitmq_url: str) -> None:
    with start(rabbitmq_url, "02_work_queues", "worker") as worker:
        worker.expect(" [*] Waiting for messages")
        worker.proc.send_signal(signal.SIGINT)
        lines = worker.finish(returncode=0)
    assert not any("Traceback" in line or "Exception" in line for line in lines), lines


def test_publish_subscribe_every_receiver_gets_every_line(rabbitmq_url: str) -> None:
    logs = ["info: one", "error: two"]
    receiver = ("03_publish_subscribe", "receive_logs", "--count", "2")
    with start(rabbitmq_url, *receiver) as r1, start(rabbitmq_url, *receiver) as r2:
        r1.expect(" [*] Waiting for logs")
        r2.expect(" [*] Waiting for logs")
        for log in logs:
            assert run(rabbitmq_url, "03_publish_subscribe", "emit_log", log) == [
                f" [x] Sent {log!r}"
            ]
        expected = [f" [x] {log}" for log in logs]
        assert received(r1.finish()) == expected
        assert received(r2.finish()) == expected


def test_routing_by_severity(rabbitmq_url: str) -> None:
    with (
        start(rabbitmq_url, "04_routing", "receive_logs_direct", "error", "--count", "1") as errors,
        start(
            rabbitmq_url, "04_routing", "receive_logs_direct", "info", "error", "--count", "2"
        ) as both,
    ):
        errors.expect(" [*] Waiting for logs")
        both.expect(" [*] Waiting for logs")
        # Errors last: a receiver for "error" that also got others would print those first.
        for severity in ("warning", "info", "error"):
            run(rabbitmq_url, "04_routing", "emit_log_direct", severity, f"a {severity}")
        assert received(errors.finish()) == [" [x] error:'a error'"]
        assert received(both.finish()) == [" [x] info:'a info'", " [x] error:'a error'"]


def test_topics_star_and_hash(rabbitmq_url: str) -> None:
    topic = "05_topics"
    with (
        start(rabbitmq_url, topic, "receive_logs_topic", "kern.*", "--count", "1") as star,
        start(
            rabbitmq_url, topic, "receive_logs_topic", "kern.#", "*.critical", "--count", "3"
        ) as hash_,
    ):
        star.expect(" [*] Waiting for logs")
        hash_.expect(" [*] Waiting for logs")
        # Keys nobody (or only "#") wants go first, so a wrong match shows up as a received line.
        for key in ("auth.info", "kern.disk.critical", "auth.critical", "kern.info"):
            run(rabbitmq_url, topic, "emit_log_topic", key, "x")
        assert received(star.finish()) == [" [x] kern.info:'x'"]
        assert received(hash_.finish()) == [
            " [x] kern.disk.critical:'x'",
            " [x] auth.critical:'x'",
            " [x] kern.info:'x'",
        ]


def test_rpc_fibonacci_with_call_and_serve(rabbitmq_url: str) -> None:
    delete_queues(rabbitmq_url, "rpc_queue")
    with start(rabbitmq_url, "06_rpc", "rpc_server", "--count", "2") as server:
        server.expect(" [x] Awaiting RPC requests")
        client = run(rabbitmq_url, "06_rpc", "rpc_client", "10", "20")
        assert " [.] Got fib(10)=55" in client
        assert " [.] Got fib(20)=6765" in client
        assert sorted(received(server.finish(), " [.] ")) == [" [.] fib(10)", " [.] fib(20)"]


def test_rpc_client_without_server(rabbitmq_url: str) -> None:
    delete_queues(rabbitmq_url, "rpc_queue")
    lines = run(rabbitmq_url, "06_rpc", "rpc_client", "10", returncode=1)
    assert " [!] fib(10): nobody serves rpc_queue, start rpc_server first" in lines
    with leveret.blocking.connect(rabbitmq_url) as conn:
        conn.declare_queue("rpc_queue")  # a queue, but nobody consuming it
        try:
            lines = run(
                rabbitmq_url, "06_rpc", "rpc_client", "10", "--timeout", "0.3", returncode=1
            )
            assert " [!] fib(10): no reply within 0.3 s" in lines
        finally:
            conn.delete_queue("rpc_queue")


def test_publisher_confirms(rabbitmq_url: str) -> None:
    lines = run(rabbitmq_url, "07_publisher_confirms", "--messages", "1000")
    pattern = re.compile(
        r" \[x\] Published 1,000 messages (individually|with publish many|from many threads) "
        r"in [\d.]+ s \(([\d,]+) msg/s\): 1,000 confirmed, 1,000 in the queue"
    )
    matches = [m for line in lines if (m := pattern.fullmatch(line))]
    assert [m.group(1) for m in matches] == [
        "individually",
        "with publish many",
        "from many threads",
    ], lines
    print("\n".join(lines))
