"""leveret.blocking when things go wrong: slow handlers, forced closes, Ctrl-C.

The I/O thread must keep the connection alive while user code blocks, report a
broker's close to the thread that consumes (or recover, with reconnection on),
and let Ctrl-C through promptly without a traceback of its own.
"""

from __future__ import annotations

import asyncio
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from urllib.parse import urlsplit

import pytest

import leveret
import leveret.blocking
from leveret.testing import FaultProxy, RabbitMQNode

pytestmark = pytest.mark.integration

WAIT = 10.0  # seconds: the bound on any wait for something another thread or the broker does
FAST = leveret.Backoff(initial=0.05, maximum=0.5)


def queue_row(rabbitmq: RabbitMQNode, name: str) -> dict[str, object]:
    rows = [row for row in rabbitmq.list_queues() if row["name"] == name]
    assert len(rows) == 1, rows
    return rows[0]


def test_handlers_sleeping_past_two_heartbeats_keep_the_connection(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    """heartbeat=1 and 3 s of blocking work, in a consume loop and in an RPC handler."""
    states: list[str] = []
    handled: list[bytes] = []
    rpc_queue = f"{queue_name}.rpc"

    def slow_handler(request: leveret.blocking.Message) -> bytes:
        handled.append(request.body)
        time.sleep(3.0)  # blocks this worker thread, never the I/O thread
        return b"done " + request.body

    with leveret.blocking.connect(rabbitmq_url, heartbeat=1, name="blocking-heartbeat") as conn:
        assert conn.heartbeat == 1
        conn.add_listener(lambda state, _error: states.append(state))
        conn.declare_queue(queue_name)
        conn.declare_queue(rpc_queue)
        conn.publish(b"slow job", routing_key=queue_name)
        replies: list[bytes] = []
        with conn.serve(rpc_queue, slow_handler), conn.consume(queue_name, prefetch=1) as jobs:
            caller = threading.Thread(
                target=lambda: replies.append(conn.call(rpc_queue, b"rpc", timeout=WAIT).body)
            )
            caller.start()
            job = jobs.receive(timeout=WAIT)
            assert job is not None
            time.sleep(3.0)  # the consume loop's work: three heartbeat intervals
            assert job.ack() is True
            caller.join(WAIT)
            assert jobs.receive(timeout=0.5) is None  # no redelivery
        assert replies == [b"done rpc"]
        assert handled == [b"rpc"]  # handled once: the request was never redelivered
        assert conn.is_connected
        assert states == []  # never disconnected
        assert queue_row(rabbitmq, queue_name)["messages"] == 0  # the ack reached the broker
        assert queue_row(rabbitmq, rpc_queue)["messages"] == 0
        conn.delete_queue(queue_name)
        conn.delete_queue(rpc_queue)


@pytest.fixture
def proxy(rabbitmq_url: str) -> Iterator[tuple[FaultProxy, Callable[[Callable[[], None]], None]]]:
    """A FaultProxy to the broker, run by an event loop in a thread of its own (these tests
    are synchronous), and a way to call its fault switches in that loop."""
    url = urlsplit(rabbitmq_url)
    assert url.hostname is not None
    assert url.port is not None
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="fault-proxy", daemon=True)
    thread.start()
    fault_proxy = FaultProxy(url.hostname, url.port)

    def in_proxy_loop(switch: Callable[[], None]) -> None:
        async def run() -> None:
            switch()

        asyncio.run_coroutine_threadsafe(run(), loop).result(WAIT)

    try:
        asyncio.run_coroutine_threadsafe(fault_proxy.start(), loop).result(WAIT)
        yield fault_proxy, in_proxy_loop
    finally:
        asyncio.run_coroutine_threadsafe(fault_proxy.stop(), loop).result(WAIT)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(WAIT)
        loop.close()


def test_a_dead_peer_is_detected_while_the_consuming_thread_blocks(
    proxy: tuple[FaultProxy, Callable[[Callable[[], None]], None]],
    rabbitmq_url: str,
    queue_name: str,
) -> None:
    fault_proxy, in_proxy_loop = proxy
    url = fault_proxy.url_for(rabbitmq_url)
    with leveret.blocking.connect(url, heartbeat=1, reconnect=False) as conn:
        conn.declare_queue(queue_name, exclusive=True)
        with conn.consume(queue_name) as messages:
            in_proxy_loop(fault_proxy.blackhole)  # sockets stay open; nothing gets through
            with pytest.raises(leveret.HeartbeatTimeout):
                for _ in messages.iter(timeout=WAIT):
                    pass
        assert isinstance(conn.wait_closed(timeout=WAIT), leveret.HeartbeatTimeout)


def test_forced_close_without_reconnect_raises_in_the_consuming_thread(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    outcome: list[BaseException] = []
    consuming = threading.Event()
    with leveret.blocking.connect(rabbitmq_url, reconnect=False) as conn:
        conn.declare_queue(queue_name, exclusive=True)
        conn.publish(b"first", routing_key=queue_name)

        def consume() -> None:
            try:
                with conn.consume(queue_name) as messages:
                    for message in messages.iter(timeout=WAIT):
                        message.ack()
                        consuming.set()
            except BaseException as exc:  # noqa: BLE001 - the test looks at it
                outcome.append(exc)

        thread = threading.Thread(target=consume)
        thread.start()
        assert consuming.wait(WAIT)
        rabbitmq.close_all_connections("forced by the blocking test")
        thread.join(WAIT)
        assert not thread.is_alive()
        assert len(outcome) == 1
        assert isinstance(outcome[0], leveret.ConnectionForced), outcome
        assert "forced by the blocking test" in str(outcome[0])
        with pytest.raises(leveret.ConnectionForced):
            conn.declare_queue(queue_name)
        assert isinstance(conn.wait_closed(timeout=WAIT), leveret.ConnectionForced)


def test_forced_close_with_reconnect_consumption_carries_on(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    total = 400
    states: list[str] = []
    seen: Counter[int] = Counter()
    published: list[int] = []
    with leveret.blocking.connect(rabbitmq_url, backoff=FAST) as conn:
        conn.add_listener(lambda state, _error: states.append(state))
        conn.declare_queue(queue_name)
        conn.publish_many([b"%d" % n for n in range(total // 2)], routing_key=queue_name)
        # The second half is published while the connection is being killed and recovered.
        second_half = threading.Thread(
            target=lambda: published.append(
                conn.publish_many(
                    [b"%d" % n for n in range(total // 2, total)], routing_key=queue_name
                )
            )
        )
        with conn.consume(queue_name, prefetch=20) as messages:
            for message in messages.iter(timeout=WAIT):
                seen[int(message.body)] += 1
                message.ack()
                if len(seen) == 50 and not second_half.is_alive() and not published:
                    rabbitmq.close_all_connections("recover, blocking")
                    second_half.start()
                if len(seen) == total:
                    break
        second_half.join(WAIT)
        assert published == [total // 2]  # every publish of the second half confirmed
        assert set(seen) == set(range(total))  # every message processed
        assert "disconnected" in states
        assert "reconnected" in states
        # Whatever is left in the queue is a copy of a processed message (a redelivery of
        # one whose ack was lost with the connection, or a re-sent publish).
        leftovers = []
        while (message := conn.get(queue_name)) is not None:
            leftovers.append(int(message.body))
            assert message.ack()
        assert set(leftovers) <= set(seen)
        conn.delete_queue(queue_name)


def publish_from_threads(
    conn: leveret.blocking.Connection, queue: str, threads: int, each: int
) -> tuple[list[threading.Thread], Counter[str], Callable[[], int]]:
    """Threads each publishing up to `each` messages with publish(), until one fails."""
    outcomes: Counter[str] = Counter()
    lock = threading.Lock()
    progress = [0]

    def publisher(number: int) -> None:
        for i in range(each):
            try:
                conn.publish(b"%d.%d" % (number, i), routing_key=queue)
                kind = "confirmed"
            except leveret.ConnectionClosed as exc:
                kind = type(exc).__name__
            with lock:
                outcomes[kind] += 1
                progress[0] += 1
            if kind != "confirmed":
                return

    workers = [threading.Thread(target=publisher, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    return workers, outcomes, lambda: progress[0]


def test_threads_publishing_through_a_forced_close_with_reconnect_all_get_confirms(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url, backoff=FAST) as conn:
        conn.declare_queue(queue_name)
        workers, outcomes, progress = publish_from_threads(conn, queue_name, 8, 300)
        deadline = time.monotonic() + WAIT
        while progress() < 400 and time.monotonic() < deadline:
            time.sleep(0.005)
        rabbitmq.close_all_connections("recover, threaded publishes")
        for worker in workers:
            worker.join(WAIT)
        assert not any(worker.is_alive() for worker in workers)  # none stranded
        assert outcomes == {"confirmed": 8 * 300}
        assert conn.declare_queue(queue_name, passive=True).message_count >= 8 * 300
        conn.delete_queue(queue_name)


def test_threads_publishing_through_a_forced_close_without_reconnect_all_get_the_error(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    with leveret.blocking.connect(rabbitmq_url, reconnect=False) as conn:
        conn.declare_queue(queue_name, exclusive=True)
        workers, outcomes, progress = publish_from_threads(conn, queue_name, 8, 100_000)
        deadline = time.monotonic() + WAIT
        while progress() < 400 and time.monotonic() < deadline:
            time.sleep(0.005)
        rabbitmq.close_all_connections("forced, threaded publishes")
        started = time.monotonic()
        for worker in workers:
            worker.join(WAIT)
        assert not any(worker.is_alive() for worker in workers)
        assert time.monotonic() - started < 1.0  # nobody waited out a wait slice
    # Every thread had its publish in flight, or its next one, fail with the broker's error.
    assert set(outcomes) == {"confirmed", "ConnectionForced"}
    assert outcomes["ConnectionForced"] == 8


def test_publish_many_stops_taking_messages_when_the_connection_ends(
    rabbitmq: RabbitMQNode, rabbitmq_url: str, queue_name: str
) -> None:
    cap = 1_000_000
    produced = 0
    killer = threading.Thread(target=rabbitmq.close_all_connections, args=("end the batch",))

    def bodies() -> Iterator[bytes]:
        nonlocal produced
        for produced in range(1, cap + 1):  # the test reads how far it got
            if produced == 2000:
                killer.start()  # from another thread, while the batch goes on
            yield b"x"

    with leveret.blocking.connect(rabbitmq_url, reconnect=False) as conn:
        conn.declare_queue(queue_name, exclusive=True)
        with pytest.raises(leveret.ConnectionForced) as ended:
            conn.publish_many(bodies(), routing_key=queue_name)
        killer.join(WAIT)
    assert ended.value.__notes__[-1].endswith("the connection ended, so the rest was not sent")
    assert produced < cap  # it stopped instead of failing every remaining message


INTERRUPTED_SCRIPT = textwrap.dedent(
    """
    import _thread, os, signal, sys, threading, time
    import leveret.blocking

    url, queue, where, how, catch = sys.argv[1:]
    interrupted_at = None

    def interrupt():
        global interrupted_at
        interrupted_at = time.monotonic()
        print("interrupting", flush=True)
        if how == "interrupt_main":
            _thread.interrupt_main()
        elif how == "raise_signal":
            signal.raise_signal(signal.SIGINT)  # in this timer thread, not the main one
        else:
            os.kill(os.getpid(), signal.SIGINT)

    def main():
        with leveret.blocking.connect(url, name="ctrl-c-test") as conn:
            conn.declare_queue(queue, arguments={"x-expires": 10000})
            threading.Timer(0.3, interrupt).start()
            try:
                if where == "consume":
                    with conn.consume(queue) as messages:
                        for message in messages:
                            print("unexpected", message)
                elif where == "call":
                    conn.call(queue, b"nobody answers", timeout=60)
                elif where == "serve_forever":
                    conn.serve_forever(queue, lambda request: b"")
                elif where == "publish":
                    while True:
                        conn.publish(b"x" * 1000, routing_key=queue)
                elif where == "publish_many":
                    conn.publish_many(iter(lambda: b"x" * 1000, None), routing_key=queue)
            except KeyboardInterrupt:
                if catch == "catch":  # the interrupted call left the connection usable
                    check = conn.declare_queue("", exclusive=True).name
                    conn.publish(b"after", routing_key=check)
                    print("usable after the interrupt:", conn.get(check).body, flush=True)
                raise

    if catch == "catch":
        try:
            main()
        except KeyboardInterrupt:
            took = time.monotonic() - interrupted_at
            print(f"interrupted; closed {took:.2f} s after the signal", flush=True)
            print("leveret threads:", [t.name for t in threading.enumerate()
                                       if t.name.startswith("leveret-")], flush=True)
    else:
        main()
    """
)


@pytest.fixture
def interrupted_script(tmp_path: Path) -> Path:
    path = tmp_path / "interrupted.py"
    path.write_text(INTERRUPTED_SCRIPT)
    return path


def run_interrupted(
    script: Path, url: str, queue: str, where: str, how: str, catch: bool
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(script), url, queue, where, how, "catch" if catch else "raise"],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("how", ["raise_signal", "interrupt_main", "kill"])
@pytest.mark.parametrize("where", ["consume", "call", "serve_forever", "publish", "publish_many"])
def test_ctrl_c_during_a_blocking_wait_closes_cleanly(
    interrupted_script: Path, rabbitmq_url: str, queue_name: str, where: str, how: str
) -> None:
    done = run_interrupted(interrupted_script, rabbitmq_url, queue_name, where, how, catch=True)
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""  # no traceback, warning or log line from the I/O thread
    lines = done.stdout.splitlines()
    assert lines[:2] == ["interrupting", "usable after the interrupt: b'after'"]
    match = re.fullmatch(r"interrupted; closed ([\d.]+) s after the signal", lines[2])
    assert match, lines
    assert float(match.group(1)) < 5.0  # prompt: a hang would take minutes (call: 60 s)
    assert lines[3:] == ["leveret threads: []"]  # the I/O and handler threads are gone


NEVER_CLOSED_SCRIPT = textwrap.dedent(
    """
    import atexit, sys
    state = {}
    # Registered before leveret's own exit hook, so it runs after it (atexit is LIFO).
    atexit.register(lambda: print("closed at exit:", state["conn"].is_closed, flush=True))
    import leveret.blocking

    conn = leveret.blocking.connect(sys.argv[1], name="never-closed")
    state["conn"] = conn
    queue = conn.declare_queue("", exclusive=True).name
    conn.publish(b"unread", routing_key=queue)
    messages = conn.consume(queue)
    print("received", next(messages).body, flush=True)
    # No close(), no `with`: the interpreter exits with the I/O thread still running.
    """
)


def test_a_connection_left_open_is_closed_at_interpreter_exit(
    tmp_path: Path, rabbitmq_url: str
) -> None:
    script = tmp_path / "never_closed.py"
    script.write_text(NEVER_CLOSED_SCRIPT)
    done = subprocess.run(
        [sys.executable, str(script), rabbitmq_url], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    assert done.stdout.splitlines() == ["received b'unread'", "closed at exit: True"]


@pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is signal.SIG_IGN,
    reason="SIGINT is ignored here (a background job?), so the script would inherit that",
)
def test_uncaught_ctrl_c_shows_only_the_main_thread_traceback(
    interrupted_script: Path, rabbitmq_url: str, queue_name: str
) -> None:
    done = run_interrupted(
        interrupted_script, rabbitmq_url, queue_name, "consume", "kill", catch=False
    )
    assert done.returncode == -signal.SIGINT  # how Python exits on an uncaught Ctrl-C
    assert done.stdout.splitlines() == ["interrupting"]
    assert done.stderr.count("Traceback (most recent call last)") == 1, done.stderr
    assert done.stderr.rstrip().splitlines()[-1] == "KeyboardInterrupt", done.stderr
    for noise in ("Exception in thread", "Task was destroyed", "Exception ignored", "leveret:"):
        assert noise not in done.stderr, done.stderr
