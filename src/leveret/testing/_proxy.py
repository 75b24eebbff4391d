"""FaultProxy: a TCP proxy on loopback that breaks the network on demand.

Reconnection logic is only as good as the faults it was tested against, and the interesting
ones -- a reset in the middle of a frame, a peer that silently stops answering, a broker that
refuses connections -- cannot be produced by closing a connection politely.  Put a
`FaultProxy` between the client and the broker and flip it between modes while the client
runs:

    async with FaultProxy("127.0.0.1", broker_port) as proxy:
        async with leveret.connect(proxy.url_for(rabbitmq_url), heartbeat=1) as conn:
            proxy.blackhole()                 # the broker goes silent; nothing is closed
            err = await conn.wait_closed()    # HeartbeatTimeout after two intervals

Forwarding modes (each one replaces the previous one, for existing and new connections):

- `pass_through()`: forward everything (the default); also ends `refuse()`, `slow()` and
  `cut_after()`.
- `stall()`: read from neither side, so bytes queue up in the kernel's buffers and senders
  eventually block; `pass_through()` delivers them.
- `blackhole()`: keep every socket open, read from both sides and drop what arrives (a
  network partition or a dead peer).  Dropped bytes are gone for good.
- `slow(delay, bytes_per_second)`: forward every chunk no earlier than `delay` seconds after
  it arrived, optionally throttled.

While stalled or blackholed, a side that closes or resets is not reported to the other side
(it could not be, across a partition); that happens when `pass_through()` is called.

Actions and the listener: `cut()` resets every current connection (RST where the platform
allows, via SO_LINGER 0); `cut_after(n, direction)` resets each connection once it has
forwarded `n` more bytes in one direction, to cut in the middle of a frame; `refuse()` resets
every new connection right after accepting it (a broker that is down), `accept()` ends that.

Counters (`connections_accepted`, `connections_refused`, `connections_cut`,
`active_connections`, `peer_closes`, `bytes_upstream`, `bytes_downstream`, `bytes_dropped`,
`bytes_in_flight`) and `wait_for_connections()` / `wait_until()` let tests wait for what
happened instead of sleeping.  Only the standard library is used; `stop()` closes every
socket and waits for every task it started.
"""

from __future__ import annotations

import asyncio
import socket
import struct
from collections import deque
from collections.abc import Callable
from types import TracebackType
from typing import Literal, Self, cast
from urllib.parse import urlsplit, urlunsplit

__all__ = ["Direction", "FaultProxy"]

Direction = Literal["upstream", "downstream"]
"""upstream: client -> target (what the client sends); downstream: target -> client."""

_PASS = "pass"
_STALL = "stall"
_BLACKHOLE = "blackhole"
_HIGH_WATER = 256 * 1024  # bytes queued in one direction before the proxy stops reading
_THROTTLE_SLICE = 0.02  # seconds of bandwidth written at once when throttling
_LINGER_RESET = struct.pack("ii", 1, 0)


def _reset(transport: asyncio.Transport, *, flush: bool = False) -> None:
    """Close abruptly: SO_LINGER 0 makes the kernel send RST instead of FIN.

    `flush`: hand what the transport still buffers to the kernel first (so bytes already
    counted as forwarded really leave), then reset.
    """
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, _LINGER_RESET)
        except OSError:
            pass  # already closed, or a platform without SO_LINGER: a FIN it is
    if flush and transport.get_write_buffer_size():
        transport.close()
    else:
        transport.abort()


class _Side(asyncio.Protocol):
    """One of the two sockets of a proxied connection."""

    def __init__(self, link: _Link, role: Literal["client", "upstream"]) -> None:
        self.link = link
        self.role = role
        self.transport: asyncio.Transport | None = None
        self.made = False
        self.lost = False
        self.lost_exc: Exception | None = None
        self.eof = False  # the peer half-closed (FIN)
        self.write_paused = False
        self.peer_closed = False  # counted in FaultProxy.peer_closes

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # uvloop's transports have the Transport methods without subclassing it.
        self.transport = cast(asyncio.Transport, transport)
        self.made = True
        self.link.side_made(self)

    def data_received(self, data: bytes) -> None:
        self.link.data_received(self, data)

    def eof_received(self) -> bool:
        self.eof = True
        self.link.peer_closed(self)
        self.link.eof_received(self)
        return True  # keep our half open: the other direction may still carry data

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        self.lost = True
        self.lost_exc = exc
        if not self.link.dead:
            self.link.peer_closed(self)
        self.link.side_lost(self)

    def pause_writing(self) -> None:
        self.write_paused = True
        self.link.update_reading()

    def resume_writing(self) -> None:
        self.write_paused = False
        self.link.pipe_towards(self).kick()

    def set_reading(self, reading: bool) -> None:
        transport = self.transport
        if transport is None or self.eof or transport.is_closing():
            return
        if reading:
            transport.resume_reading()
        else:
            transport.pause_reading()


class _Pipe:
    """One direction of a proxied connection: a queue of chunks on their way to `dst`."""

    def __init__(self, link: _Link, src: _Side, dst: _Side, direction: Direction) -> None:
        self.link = link
        self.src = src
        self.dst = dst
        self.direction = direction
        self.queue: deque[tuple[float, bytes]] = deque()  # (arrival time, chunk)
        self.queued = 0
        self.limit: int | None = None  # bytes left before cut_after() cuts
        self.next_send = 0.0  # throttling: when the next slice may go
        self.eof_sent = False
        self.timer: asyncio.TimerHandle | None = None

    def drop(self) -> None:
        """Forget everything queued (counted as dropped) and any pending wake-up."""
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if self.queued:
            self.link.proxy._count_dropped(self.queued)
        self.queue.clear()
        self.queued = 0

    def push(self, data: bytes) -> None:
        self.queue.append((self.link.proxy._loop.time(), data))
        self.queued += len(data)
        self.kick()
        proxy = self.link.proxy
        if proxy._waiters:
            proxy._notify()

    def kick(self) -> None:
        """Forward what may go now; schedule a wake-up for what must wait."""
        self._forward()
        self.link.update_reading()

    def _forward(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        link = self.link
        proxy = link.proxy
        if link.dead or proxy._flow != _PASS:
            return
        dst = self.dst
        transport = dst.transport
        if transport is None:
            return  # upstream still connecting (or gone: side_lost deals with that)
        loop = proxy._loop
        now = loop.time()
        delay = proxy._delay[self.direction]
        rate = proxy._rate[self.direction]
        queue = self.queue
        while queue:
            if dst.write_paused:
                return  # resume_writing() kicks again
            arrival, chunk = queue[0]
            if arrival + delay > now:
                self._wake_at(arrival + delay)
                return
            piece = chunk
            if rate is not None:
                if self.next_send > now:
                    self._wake_at(self.next_send)
                    return
                piece = chunk[: max(1, int(rate * _THROTTLE_SLICE))]
            if self.limit is not None:
                piece = piece[: self.limit]
            if piece:
                transport.write(piece)
                if len(piece) == len(chunk):
                    queue.popleft()
                else:
                    queue[0] = (arrival, chunk[len(piece) :])
                self.queued -= len(piece)
                proxy._count_forwarded(self.direction, len(piece))
                if rate is not None:
                    self.next_send = max(now, self.next_send) + len(piece) / rate
            if self.limit is not None:
                self.limit -= len(piece)
                if self.limit <= 0:
                    link.cut_after_limit(self)
                    return
        if self.src.eof and not self.eof_sent:
            self.eof_sent = True
            if transport.can_write_eof():
                transport.write_eof()
            link.check_finished()

    def _wake_at(self, when: float) -> None:
        self.timer = self.link.proxy._loop.call_at(when, self.kick)


class _Link:
    """A proxied connection: the accepted client socket and its upstream socket."""

    def __init__(self, proxy: FaultProxy) -> None:
        self.proxy = proxy
        self.client = _Side(self, "client")
        self.upstream = _Side(self, "upstream")
        self.up = _Pipe(self, self.client, self.upstream, "upstream")
        self.down = _Pipe(self, self.upstream, self.client, "downstream")
        self.dead = False  # being closed by the proxy: nothing is forwarded any more
        self.connecting: asyncio.Task[None] | None = None
        if proxy._cut_after is not None:
            limit, direction = proxy._cut_after
            self.pipe(direction).limit = limit

    def pipe(self, direction: Direction) -> _Pipe:
        return self.up if direction == "upstream" else self.down

    def pipe_towards(self, side: _Side) -> _Pipe:
        return self.up if side is self.upstream else self.down

    def pipe_from(self, side: _Side) -> _Pipe:
        return self.up if side is self.client else self.down

    # -- events from the sides ---------------------------------------------------------

    def side_made(self, side: _Side) -> None:
        if self.dead:
            assert side.transport is not None
            _reset(side.transport)
            return
        if side is self.client:
            self.proxy._accepted(self)
            return
        self.apply()

    def data_received(self, side: _Side, data: bytes) -> None:
        pipe = self.pipe_from(side)
        if self.dead or self.proxy._flow == _BLACKHOLE or pipe.dst.lost:
            self.proxy._count_dropped(len(data))
            return
        pipe.push(data)

    def eof_received(self, side: _Side) -> None:
        self.pipe_from(side).kick()

    def peer_closed(self, side: _Side) -> None:
        if not side.peer_closed:
            side.peer_closed = True
            self.proxy.peer_closes += 1
            self.proxy._notify()

    def side_lost(self, side: _Side) -> None:
        if not self.dead:
            self.pipe_towards(side).drop()
            # A reset (or any loss we did not cause) reaches the other side as a reset,
            # but not across a stall or a blackhole: apply() reports it later.
            if self.proxy._flow == _PASS:
                self.abort()
        self.maybe_forget()

    # -- state changes -------------------------------------------------------------------

    def apply(self) -> None:
        """Bring the link in line with the proxy's current mode."""
        if self.dead:
            return
        flow = self.proxy._flow
        if flow == _BLACKHOLE:
            self.up.drop()
            self.down.drop()
        elif flow == _PASS and (self.client.lost or self.upstream.lost):
            self.abort()
            return
        self.update_reading()
        self.up.kick()
        self.down.kick()

    def update_reading(self) -> None:
        if self.dead:
            return
        flow = self.proxy._flow
        for pipe in (self.up, self.down):
            if flow == _STALL:
                reading = False
            elif flow == _BLACKHOLE:
                reading = True
            else:
                reading = (
                    pipe.dst.transport is not None
                    and not pipe.dst.write_paused
                    and pipe.queued < _HIGH_WATER
                )
            pipe.src.set_reading(reading)

    def check_finished(self) -> None:
        """Both directions have delivered their EOF: close both sockets normally."""
        if self.up.eof_sent and self.down.eof_sent and not self.dead:
            self.dead = True
            self.proxy._notify()
            for side in (self.client, self.upstream):
                if side.transport is not None:
                    side.transport.close()

    def abort(self, *, flush_to: _Side | None = None) -> None:
        """Reset both sockets (`flush_to`: after handing it what was already written)."""
        if self.dead:
            return
        self.dead = True
        self.up.drop()
        self.down.drop()
        for side in (self.client, self.upstream):
            if side.transport is not None:
                _reset(side.transport, flush=side is flush_to)
        self.proxy._notify()
        self.maybe_forget()

    def cut_after_limit(self, pipe: _Pipe) -> None:
        self.proxy.connections_cut += 1
        self.abort(flush_to=pipe.dst)

    def connect_done(self, task: asyncio.Task[None]) -> None:
        self.proxy._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.proxy.upstream_failures += 1
            self.abort()  # the target is unreachable: so is the proxy, for this client
        self.maybe_forget()

    def maybe_forget(self) -> None:
        """Drop the link once both of its sockets are closed."""
        connecting = self.connecting is not None and not self.connecting.done()
        upstream_gone = self.upstream.lost or (not self.upstream.made and not connecting)
        if self.dead and self.client.lost and upstream_gone:
            self.proxy._forget(self)


class FaultProxy:
    """A TCP proxy to `target_host:target_port` that injects faults on demand.

    Use `async with FaultProxy(host, port) as proxy:` (or `await start()` / `await stop()`),
    point the client at `proxy.url_for(url)` or `proxy.port`, and switch modes at any time;
    see the module documentation for what each mode does.
    """

    def __init__(
        self,
        target_host: str,
        target_port: int,
        *,
        listen_host: str = "127.0.0.1",
        listen_port: int = 0,
    ) -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.listen_port = listen_port
        self._server: asyncio.Server | None = None
        self._loop: asyncio.AbstractEventLoop  # set by start()
        self._address: tuple[str, int] | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._flow = _PASS
        self._refusing = False
        self._delay: dict[Direction, float] = {"upstream": 0.0, "downstream": 0.0}
        self._rate: dict[Direction, float | None] = {"upstream": None, "downstream": None}
        self._cut_after: tuple[int, Direction] | None = None
        #: Client connections accepted since start(), refused ones included.
        self.connections_accepted = 0
        #: Client connections reset right after accept because of refuse().
        self.connections_refused = 0
        #: Connections reset by cut() or cut_after().
        self.connections_cut = 0
        #: Client connections reset because the target could not be reached.
        self.upstream_failures = 0
        #: Sockets that a client or the target closed (FIN) or reset without the proxy
        #: asking, counted when the proxy sees it (even if a blackhole hides it from the other).
        self.peer_closes = 0
        #: Bytes written to the target (client -> target).
        self.bytes_upstream = 0
        #: Bytes written to the client (target -> client).
        self.bytes_downstream = 0
        #: Bytes read and thrown away: blackholed, or queued for a connection that died.
        self.bytes_dropped = 0

    # -- lifecycle ----------------------------------------------------------------------------

    async def start(self) -> Self:
        """Listen; returns self.  The port is known afterwards (`port`, `url_for`)."""
        if self._server is not None:
            raise RuntimeError("the FaultProxy is already running")
        self._loop = asyncio.get_running_loop()
        server = await self._loop.create_server(
            self._new_client, self.listen_host, self.listen_port
        )
        self._server = server
        host, port = server.sockets[0].getsockname()[:2]
        self._address = (str(host), int(port))
        return self

    async def stop(self) -> None:
        """Stop listening, reset every connection and wait until all sockets are closed."""
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for link in list(self._links):
            link.abort()
        await server.wait_closed()
        if self._tasks:  # upstream connects in flight: loopback ones finish at once
            _done, pending = await asyncio.wait(set(self._tasks), timeout=5.0)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending)
        if self._links:
            await self.wait_until(lambda: not self._links, timeout=5.0)
        for _predicate, future in self._waiters:
            if not future.done():
                future.set_exception(RuntimeError("the FaultProxy was stopped"))

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    # -- where clients connect ----------------------------------------------------------------

    @property
    def host(self) -> str:
        """The address the proxy listens on (after start())."""
        return self._require_address()[0]

    @property
    def port(self) -> int:
        """The port the proxy listens on (after start())."""
        return self._require_address()[1]

    def url_for(self, url: str) -> str:
        """`url` (amqp://user:pw@host:port/vhost?query) with host:port replaced by the proxy's.

        User, password, vhost and query are kept exactly as written.
        """
        parts = urlsplit(url)
        if not parts.scheme or not parts.netloc:
            raise ValueError(f"not a URL with a host: {url!r}")
        userinfo, at, _hostport = parts.netloc.rpartition("@")
        host = self.host
        if ":" in host:
            host = f"[{host}]"
        netloc = f"{userinfo}{at}{host}:{self.port}"
        return urlunsplit(parts._replace(netloc=netloc))

    def _require_address(self) -> tuple[str, int]:
        if self._address is None:
            raise RuntimeError("the FaultProxy is not started: use `async with` or start()")
        return self._address

    # -- modes ---------------------------------------------------------------------------------

    def pass_through(self) -> None:
        """Back to normal: forward everything at full speed, accept new connections.

        Ends stall(), blackhole(), slow(), cut_after() and refuse().  Bytes held by a stall are
        delivered; a close or reset hidden by a stall or blackhole reaches the other side now.
        """
        self._refusing = False
        self._cut_after = None
        self._delay = {"upstream": 0.0, "downstream": 0.0}
        self._rate = {"upstream": None, "downstream": None}
        for link in self._links:
            link.up.limit = link.down.limit = None
        self._set_flow(_PASS)

    def stall(self) -> None:
        """Stop reading from both sides: bytes wait in kernel buffers until pass_through()."""
        self._set_flow(_STALL)

    def blackhole(self) -> None:
        """Keep every socket open but forward nothing: read and drop (a network partition)."""
        self._set_flow(_BLACKHOLE)

    def slow(
        self,
        delay_seconds: float,
        bytes_per_second: float | None = None,
        *,
        direction: Direction | Literal["both"] = "both",
    ) -> None:
        """Forward each chunk `delay_seconds` after it arrived, at most `bytes_per_second`
        per connection and direction (None: unthrottled).  Ends stall() and blackhole()."""
        if not delay_seconds >= 0:
            raise ValueError(f"delay_seconds must be >= 0, got {delay_seconds!r}")
        if bytes_per_second is not None and not bytes_per_second > 0:
            raise ValueError(f"bytes_per_second must be > 0 or None, got {bytes_per_second!r}")
        directions: tuple[Direction, ...] = (
            ("upstream", "downstream") if direction == "both" else (_direction(direction),)
        )
        for one in directions:
            self._delay[one] = float(delay_seconds)
            self._rate[one] = bytes_per_second
        for link in self._links:
            for one in directions:
                link.pipe(one).next_send = 0.0
        self._set_flow(_PASS)

    def cut_after(self, n_bytes: int, direction: Direction = "upstream") -> None:
        """Reset each connection once it has forwarded `n_bytes` more in `direction`.

        Applies to current connections (counting from now) and to every new one (counting
        from its start) until pass_through().  The n bytes are delivered, the rest is not.
        """
        if not isinstance(n_bytes, int) or isinstance(n_bytes, bool) or n_bytes < 0:
            raise ValueError(f"n_bytes must be an int >= 0, got {n_bytes!r}")
        direction = _direction(direction)
        self._cut_after = (n_bytes, direction)
        for link in list(self._links):
            link.up.limit = link.down.limit = None
            link.pipe(direction).limit = n_bytes
            link.pipe(direction).kick()

    def cut(self) -> None:
        """Reset every current connection (both sockets, RST); new ones are still accepted."""
        for link in list(self._links):
            if not link.dead:
                self.connections_cut += 1
                link.abort()

    def refuse(self) -> None:
        """Reset every new client connection right after accepting it (a broker that is down)."""
        self._refusing = True

    def accept(self) -> None:
        """Accept and forward new connections again (ends refuse())."""
        self._refusing = False

    def _set_flow(self, flow: str) -> None:
        self._flow = flow
        for link in list(self._links):
            link.apply()

    # -- counters and waiting ------------------------------------------------------------------

    @property
    def mode(self) -> str:
        """The forwarding mode: pass, stall or blackhole (slow() forwards: pass)."""
        return self._flow

    @property
    def active_connections(self) -> int:
        """Client connections currently forwarded (not being closed or reset by the proxy)."""
        return sum(1 for link in self._links if not link.dead)

    @property
    def bytes_in_flight(self) -> int:
        """Bytes read from one side and held by the proxy, not yet written to the other
        (slow() delays them; a stall holds what was read before it began)."""
        return sum(link.up.queued + link.down.queued for link in self._links)

    async def wait_for_connections(self, n: int, timeout: float = 10.0) -> None:
        """Wait until at least `n` client connections were accepted in total since start()
        (refused ones included); raises TimeoutError after `timeout` seconds."""
        await self.wait_until(
            lambda: self.connections_accepted >= n,
            timeout=timeout,
            what=f"{n} accepted connections (have {self.connections_accepted})",
        )

    async def wait_until(
        self, predicate: Callable[[], bool], timeout: float = 10.0, *, what: str = ""
    ) -> None:
        """Wait until `predicate()` is true; it is checked whenever a counter changes.

        Example: `await proxy.wait_until(lambda: proxy.bytes_dropped > 0)`.
        """
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._waiters.append(entry)
        try:
            async with asyncio.timeout(timeout):
                await future
        except TimeoutError:
            raise TimeoutError(
                f"FaultProxy: not reached within {timeout}s: {what or predicate}"
            ) from None
        finally:
            self._waiters.remove(entry)

    def _notify(self) -> None:
        for predicate, future in self._waiters:
            if future.done():
                continue
            try:
                reached = predicate()
            except Exception as exc:  # noqa: BLE001 - handed to the waiter, not lost
                future.set_exception(exc)
                continue
            if reached:
                future.set_result(None)

    def _count_forwarded(self, direction: Direction, n: int) -> None:
        if direction == "upstream":
            self.bytes_upstream += n
        else:
            self.bytes_downstream += n
        if self._waiters:
            self._notify()

    def _count_dropped(self, n: int) -> None:
        self.bytes_dropped += n
        if self._waiters:
            self._notify()

    # -- connections ---------------------------------------------------------------------------

    def _new_client(self) -> _Side:
        return _Link(self).client

    def _accepted(self, link: _Link) -> None:
        self.connections_accepted += 1
        self._links.add(link)
        if self._refusing or self._server is None:
            if self._refusing:
                self.connections_refused += 1
            link.abort()
        else:
            link.update_reading()  # the client waits until its upstream is there
            task = self._loop.create_task(self._connect(link))
            link.connecting = task
            self._tasks.add(task)
            task.add_done_callback(link.connect_done)
        self._notify()

    async def _connect(self, link: _Link) -> None:
        await self._loop.create_connection(
            lambda: link.upstream, self.target_host, self.target_port
        )

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        self._notify()

    def __repr__(self) -> str:
        where = f"{self._address[0]}:{self._address[1]}" if self._address else "not started"
        return (
            f"<FaultProxy {where} -> {self.target_host}:{self.target_port} {self._flow}"
            f"{' refusing' if self._refusing else ''} active={self.active_connections}>"
        )


def _direction(value: str) -> Direction:
    if value == "upstream":
        return "upstream"
    if value == "downstream":
        return "downstream"
    raise ValueError(f"direction must be 'upstream' or 'downstream', got {value!r}")
