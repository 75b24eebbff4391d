"""threads_floor: 16 threads publishing with a blocking wait for each confirm, with no library.

The floor for `leveret:blocking_threads`, as raw_limit is for the asyncio workloads:
stdlib only, one blocking socket, frames pre-encoded once (raw_limit's encoders), and
each of 16 threads looping over "publish one message, sleep until its confirm". What
is left to measure is what the workload itself costs on this machine: one thread
wakeup per message, the GIL moving with it, and the broker's round trips.

How it runs (the fastest of the designs measured for leveret's blocking facade):
- a reader thread reads the socket and hands confirmed publishes to a relay that wakes
  their threads one at a time, each woken thread waking the next (waking all at once
  makes them fight for the GIL);
- a thread sends its own publish: it appends the frames to an outbox and, unless
  another thread is sending, writes the outbox (its own frames and any queued
  meanwhile) to the socket itself.
Variant `threads_floor:kick` instead has a writer thread send the outbox once the last
woken thread of a burst has queued its publish (leveret's blocking facade works this
way: its I/O thread writes).

Only publish_confirm: the other workloads have no threaded blocking form to compare.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from collections import deque
from typing import Any

# run.py puts its anchors/ folder (with _common and raw_limit) on PYTHONPATH; _threads is
# beside this file.
from _common import Meter, Skip, body_of, run_main, split_url  # type: ignore[import-not-found]
from _threads import run_timed, shares
from raw_limit import (  # type: ignore[import-not-found]
    longstr,
    method_frame,
    publish_frames,
    shortstr,
    table,
)

THREADS = 16
_HEADER = struct.Struct(">BHI")
_METHOD = struct.Struct(">HH")
_TAG = struct.Struct(">Q")
_CHANNEL = 1
_ACK = (60, 80)
_NACK = (60, 120)


class _Waiter:
    """One publish's thread, asleep on a lock until its confirm is in and its turn comes."""

    __slots__ = ("lock", "ok")

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.lock.acquire()
        self.ok = True


class _Link:
    def __init__(self, url: str, kick: bool) -> None:
        host, port, user, password, vhost = split_url(url)
        self.sock = socket.create_connection((host, port))
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.buffer = b""
        self._handshake(user, password, vhost)
        self.kick = kick
        self.next_tag = 0
        self.waiting: dict[int, _Waiter] = {}
        self.nacks = 0
        self.failed: str | None = None
        self.send_lock = threading.Lock()  # tags, the waiting map and the outbox
        self.outbox: list[bytes] = []
        self.sending = False
        self.kicked = False
        self.writer_due = threading.Lock()
        self.writer_due.acquire()
        self.relay_lock = threading.Lock()
        self.relay: deque[_Waiter] = deque()
        self.relay_busy = False
        self.replies: deque[tuple[int, int, bytes]] = deque()
        self.reply_ready = threading.Semaphore(0)

    # -- setup and teardown, before the reader starts and after -----------------------

    def _read_frame(self) -> tuple[int, int, bytes]:
        while True:
            if len(self.buffer) >= 7:
                kind, channel, size = _HEADER.unpack_from(self.buffer)
                if len(self.buffer) >= size + 8:
                    payload = self.buffer[7 : 7 + size]
                    self.buffer = self.buffer[size + 8 :]
                    return kind, channel, payload
            data = self.sock.recv(65536)
            if not data:
                raise ConnectionError("the broker closed the connection")
            self.buffer += data

    def _expect(self, cls: int, method: int) -> bytes:
        while True:
            kind, _, payload = self._read_frame()
            if kind != 1:
                continue
            got = _METHOD.unpack_from(payload)
            if got == (cls, method):
                return payload
            if got in ((10, 50), (20, 40)):
                raise ConnectionError(f"the broker closed the link: {payload[4:]!r}")

    def _handshake(self, user: str, password: str, vhost: str) -> None:
        send = self.sock.sendall
        send(b"AMQP\x00\x00\x09\x01")
        self._expect(10, 10)
        response = longstr(f"\x00{user}\x00{password}")
        send(
            method_frame(
                0,
                10,
                11,
                table({"product": "threads_floor"})
                + shortstr("PLAIN")
                + response
                + shortstr("en_US"),
            )
        )
        channel_max, frame_max, _ = struct.unpack_from(">HIH", self._expect(10, 30), 4)
        self.frame_max = frame_max
        send(method_frame(0, 10, 31, struct.pack(">HIH", channel_max, frame_max, 0)))
        send(method_frame(0, 10, 40, shortstr(vhost) + shortstr("") + b"\x00"))
        self._expect(10, 41)
        send(method_frame(_CHANNEL, 20, 10, shortstr("")))
        self._expect(20, 11)
        send(method_frame(_CHANNEL, 85, 10, b"\x00"))
        self._expect(85, 11)

    def declare(self, queue: str, passive: bool = False) -> int:
        """queue.declare; the message count. Through the reader once it runs."""
        self.sock.sendall(
            method_frame(
                _CHANNEL,
                50,
                10,
                struct.pack(">H", 0) + shortstr(queue) + bytes((1 if passive else 0,)) + table({}),
            )
        )
        if self.reader is None:
            payload = self._expect(50, 11)
        else:
            self.reply_ready.acquire()
            if not self.replies:
                raise ConnectionError(self.failed or "no reply to queue.declare")
            _, _, payload = self.replies.popleft()
        name_length = payload[4]
        return int(struct.unpack_from(">I", payload, 5 + name_length)[0])

    reader: threading.Thread | None = None

    def start(self) -> None:
        self.reader = threading.Thread(target=self._read_loop, daemon=True)
        self.reader.start()
        if self.kick:
            threading.Thread(target=self._write_loop, daemon=True).start()

    def close(self) -> None:
        try:
            self.sock.close()
        except OSError:
            pass

    # -- the reader thread --------------------------------------------------------------

    def _read_loop(self) -> None:
        try:
            while True:
                kind, _, payload = self._read_frame()
                if kind != 1:
                    continue
                method = _METHOD.unpack_from(payload)
                if method in (_ACK, _NACK):
                    self._settled(
                        _TAG.unpack_from(payload, 4)[0], bool(payload[12] & 1), method == _ACK
                    )
                elif method in ((10, 50), (20, 40)):
                    raise ConnectionError(f"the broker closed the link: {payload[4:]!r}")
                else:
                    self.replies.append((method[0], method[1], payload))
                    self.reply_ready.release()
        except (OSError, ConnectionError) as exc:
            self._fail(str(exc))

    def _settled(self, tag: int, multiple: bool, ok: bool) -> None:
        with self.send_lock:
            tags = sorted(t for t in self.waiting if t <= tag) if multiple else [tag]
            waiters = [self.waiting.pop(t) for t in tags]
        if not ok:
            self.nacks += len(waiters)
            for waiter in waiters:
                waiter.ok = False
        with self.relay_lock:
            self.relay.extend(waiters)
            if not self.relay_busy and self.relay:
                self.relay_busy = True
                self.relay.popleft().lock.release()

    def _fail(self, why: str) -> None:
        self.failed = why
        with self.send_lock:
            waiters = list(self.waiting.values())
            self.waiting.clear()
        for waiter in waiters:
            waiter.ok = False
            waiter.lock.release()
        self.reply_ready.release()

    # -- the publishing threads ---------------------------------------------------------

    def _wake_next(self) -> None:
        """As a woken thread resumes: wake the next settled one, or end the burst."""
        with self.relay_lock:
            if self.relay:
                self.relay.popleft().lock.release()
                return
            self.relay_busy = False
        if self.kick:
            self._kick()

    def _kick(self) -> None:
        with self.send_lock:
            if self.outbox and not self.kicked:
                self.kicked = True
                self.writer_due.release()

    def _write_loop(self) -> None:
        while True:
            self.writer_due.acquire()
            with self.send_lock:
                self.kicked = False
                data = self._take_outbox()
            if not self._send(data):
                return

    def _take_outbox(self) -> bytes:
        """Under send_lock: all the publishes queued, as one write."""
        data = b"".join(self.outbox)
        self.outbox.clear()
        return data

    def _send(self, data: bytes) -> bool:
        try:
            self.sock.sendall(data)
        except OSError as exc:
            self._fail(str(exc))
            return False
        return True

    def publish(self, frames: bytes) -> bool:
        """Send one publish and sleep until its confirm wakes this thread; False if nacked."""
        waiter = _Waiter()
        with self.send_lock:
            if self.failed is not None:
                raise ConnectionError(self.failed)
            self.next_tag += 1
            self.waiting[self.next_tag] = waiter
            self.outbox.append(frames)
            send = not self.kick and not self.sending
            if send:
                self.sending = True
        if self.kick:
            with self.relay_lock:
                burst_running = self.relay_busy
            if not burst_running:
                self._kick()
        while send:
            with self.send_lock:
                if not self.outbox:
                    self.sending = False
                    break
                data = self._take_outbox()
            if not self._send(data):
                break  # the link failed: every waiting thread is woken with the error
        waiter.lock.acquire()
        if self.failed is None:
            self._wake_next()
        if self.failed is not None:
            raise ConnectionError(self.failed)
        return waiter.ok


def publish_confirm(args: Any) -> dict[str, Any]:
    kick = args.variant == "kick"
    link = _Link(args.url, kick)
    try:
        link.declare(args.queue)
        frames = publish_frames(
            _CHANNEL, "", args.queue, body_of(args.size), frame_max=link.frame_max
        )
        link.start()
        confirmed: list[int] = []
        errors: list[BaseException] = []

        def publisher(count: int) -> None:
            ok = 0
            try:
                for _ in range(count):
                    ok += link.publish(frames)
            except BaseException as exc:  # noqa: BLE001 - reported in the result
                errors.append(exc)
            confirmed.append(ok)

        meter = Meter()
        run_timed(publisher, shares(args.n, THREADS), meter)
        if errors:
            raise errors[0]
        depth = link.declare(args.queue, passive=True)
    finally:
        link.close()
    how = (
        "a writer thread sends the outbox when the last woken thread of a burst has queued"
        if kick
        else "each thread sends its own publish (with any queued meanwhile)"
    )
    return {
        "meter": meter,
        "verified": sum(confirmed) == args.n and depth == args.n and link.nacks == 0,
        "depth": depth,
        "nacks": link.nacks,
        "mode": f"no library: {THREADS} threads, each publish waits for its confirm, one raw "
        f"socket, pre-encoded frames; confirmed threads woken one at a time; {how}",
    }


def impl(args: Any) -> dict[str, Any]:
    if args.workload != "publish_confirm":
        raise Skip("threads_floor is the floor of threaded blocking publishing only")
    return publish_confirm(args)


if __name__ == "__main__":
    sys.exit(run_main("threads_floor", impl, variants=("default", "kick")))
