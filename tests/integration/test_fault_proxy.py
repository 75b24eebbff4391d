"""leveret.testing.FaultProxy: first against a plain asyncio echo server (every mode, byte for
byte), then between leveret and the real broker (the failures reconnection must survive)."""

from __future__ import annotations

import asyncio
import gc
import socket
import struct
from collections.abc import AsyncIterator, Awaitable, Callable

import pytest

import leveret
from leveret.testing import FaultProxy

# -- a byte-exact echo server and client ----------------------------------------------------


class _Peer(asyncio.Protocol):
    """Records every byte and how the connection ended (None: EOF/close, else the error)."""

    def __init__(self, *, echo: bool = False) -> None:
        self.echo = echo
        self.transport: asyncio.Transport | None = None
        self.received = bytearray()
        self.chunks = 0
        self.lost: asyncio.Future[Exception | None] = asyncio.get_running_loop().create_future()
        self._changed = asyncio.Event()

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self.received += data
        self.chunks += 1
        self._changed.set()
        if self.echo and self.transport is not None:
            self.transport.write(data)

    def eof_received(self) -> bool:
        return False  # close: the echo server and the client both end on EOF

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None
        if not self.lost.done():
            self.lost.set_result(exc)
        self._changed.set()

    def send(self, data: bytes) -> None:
        assert self.transport is not None, "connection already closed"
        self.transport.write(data)

    async def read_exactly(self, n: int, timeout: float = 5.0) -> bytes:
        """Wait until n bytes arrived in total and take them."""
        async with asyncio.timeout(timeout):
            while len(self.received) < n:
                if self.lost.done():
                    raise ConnectionError(
                        f"closed after {len(self.received)} of {n} bytes: {self.lost.result()!r}"
                    )
                self._changed.clear()
                await self._changed.wait()
        data = bytes(self.received[:n])
        del self.received[:n]
        return data

    async def ended(self, timeout: float = 5.0) -> Exception | None:
        async with asyncio.timeout(timeout):
            return await asyncio.shield(self.lost)

    async def close(self, *, reset: bool = False) -> None:
        """Close (FIN), or reset (RST: SO_LINGER 0), and wait until the socket is gone."""
        if self.transport is not None:
            if reset:
                sock = self.transport.get_extra_info("socket")
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.transport.abort()
        await self.lost


class EchoServer:
    def __init__(self) -> None:
        self.peers: list[_Peer] = []
        self.server: asyncio.Server | None = None
        self._accepted = asyncio.Event()

    def _factory(self) -> _Peer:
        peer = _Peer(echo=True)
        self.peers.append(peer)
        self._accepted.set()
        return peer

    @property
    def port(self) -> int:
        assert self.server is not None
        return int(self.server.sockets[0].getsockname()[1])

    async def peer(self, index: int) -> _Peer:
        """The index-th connection the server accepted, once it has arrived."""
        async with asyncio.timeout(5):
            while len(self.peers) <= index:
                self._accepted.clear()
                await self._accepted.wait()
        return self.peers[index]


@pytest.fixture
async def echo() -> AsyncIterator[EchoServer]:
    server = EchoServer()
    server.server = await asyncio.get_running_loop().create_server(server._factory, "127.0.0.1", 0)
    yield server
    server.server.close()
    await server.server.wait_closed()
    for peer in server.peers:
        await peer.close()


@pytest.fixture
async def proxy(echo: EchoServer) -> AsyncIterator[FaultProxy]:
    async with FaultProxy("127.0.0.1", echo.port) as fault_proxy:
        yield fault_proxy


@pytest.fixture
async def connect() -> AsyncIterator[Callable[[int], Awaitable[_Peer]]]:
    """connect(port) -> a recording client; every client is closed after the test."""
    clients: list[_Peer] = []

    async def open_client(port: int) -> _Peer:
        _transport, peer = await asyncio.get_running_loop().create_connection(
            _Peer, "127.0.0.1", port
        )
        clients.append(peer)
        return peer

    yield open_client
    for client in clients:
        await client.close()


Connect = Callable[[int], Awaitable[_Peer]]


async def _roundtrip(client: _Peer, data: bytes) -> None:
    client.send(data)
    assert await client.read_exactly(len(data)) == data


# -- the proxy against an echo server --------------------------------------------------------


async def test_bytes_pass_both_ways_and_are_counted(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await proxy.wait_for_connections(1)
    await _roundtrip(client, b"hello")
    big = bytes(range(256)) * 8192  # 2 MiB: more than any socket buffer, so flow control runs
    await _roundtrip(client, big)
    assert (await echo.peer(0)).received == b"hello" + big
    total = 5 + len(big)
    assert (proxy.bytes_upstream, proxy.bytes_downstream) == (total, total)
    assert (proxy.connections_accepted, proxy.active_connections, proxy.bytes_dropped) == (1, 1, 0)


async def test_half_close_is_forwarded_as_eof_not_reset(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    client.send(b"last words")
    assert client.transport is not None
    client.transport.write_eof()
    assert await client.read_exactly(10) == b"last words"
    assert await client.ended() is None  # the server's FIN, passed on as a FIN
    assert await (await echo.peer(0)).ended() is None
    await proxy.wait_until(lambda: proxy.active_connections == 0)


async def test_cut_resets_both_sides_and_new_connections_still_work(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"before")
    proxy.cut()
    assert (proxy.active_connections, proxy.connections_cut) == (0, 1)
    assert isinstance(await client.ended(), ConnectionResetError)
    assert isinstance(await (await echo.peer(0)).ended(), ConnectionResetError)

    again = await connect(proxy.port)
    await _roundtrip(again, b"after the cut")
    assert proxy.connections_accepted == 2


async def test_refuse_resets_new_connections_until_accept(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    existing = await connect(proxy.port)
    await _roundtrip(existing, b"up")
    proxy.refuse()
    refused = await connect(proxy.port)
    assert isinstance(await refused.ended(), ConnectionResetError)
    assert refused.received == b""
    assert (proxy.connections_accepted, proxy.connections_refused) == (2, 1)
    assert len(echo.peers) == 1  # the target never saw the refused client
    await _roundtrip(existing, b"existing connections are untouched")

    proxy.accept()
    accepted = await connect(proxy.port)
    await _roundtrip(accepted, b"welcome back")
    assert proxy.connections_refused == 1


async def test_blackhole_drops_everything_until_pass_through(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"ping")
    server_side = await echo.peer(0)

    proxy.blackhole()
    client.send(b"into the void")
    await proxy.wait_until(lambda: proxy.bytes_dropped == 13)
    with pytest.raises(TimeoutError):
        await client.read_exactly(1, timeout=0.2)
    server_side.send(b"unheard")  # the other direction is dropped too
    await proxy.wait_until(lambda: proxy.bytes_dropped == 13 + 7)
    assert not client.lost.done()
    assert not server_side.lost.done()  # nobody is told: the sockets stay open

    proxy.pass_through()
    await _roundtrip(client, b"pong")  # the dropped bytes are gone for good
    assert server_side.received == b"pingpong"
    assert proxy.bytes_upstream == proxy.bytes_downstream == 8


@pytest.mark.parametrize("reset", [True, False], ids=["reset", "close"])
async def test_blackhole_hides_a_close_until_pass_through(
    proxy: FaultProxy, echo: EchoServer, connect: Connect, reset: bool
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"hi")
    proxy.blackhole()
    await client.close(reset=reset)  # lost in the partition
    await proxy.wait_until(lambda: proxy.peer_closes == 1)  # the proxy has seen it
    server_side = await echo.peer(0)
    assert proxy.active_connections == 1
    assert not server_side.lost.done()
    proxy.pass_through()
    ended = await server_side.ended()
    if reset:
        assert isinstance(ended, ConnectionResetError)
    else:
        assert ended is None  # a FIN passed on as a FIN
    await proxy.wait_until(lambda: proxy.active_connections == 0)


async def test_stall_holds_bytes_and_pass_through_delivers_them(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"warm-up")
    proxy.stall()
    payload = bytes(range(256)) * 4096  # 1 MiB waits in kernel buffers
    client.send(payload)
    with pytest.raises(TimeoutError):
        await client.read_exactly(1, timeout=0.2)
    assert proxy.bytes_upstream == 7
    assert (await echo.peer(0)).received == b"warm-up"

    proxy.pass_through()
    assert await client.read_exactly(len(payload)) == payload
    assert proxy.bytes_dropped == 0


async def test_slow_holds_chunks_for_the_delay(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"fast")
    proxy.slow(3600, direction="upstream")
    client.send(b"slow")
    await proxy.wait_until(lambda: proxy.bytes_in_flight == 4)
    assert proxy.bytes_upstream == 4
    assert (await echo.peer(0)).received == b"fast"
    proxy.pass_through()  # lifts the delay of what is already queued too
    assert await client.read_exactly(4) == b"slow"
    assert proxy.bytes_in_flight == 0

    loop = asyncio.get_running_loop()
    proxy.slow(0.1)
    started = loop.time()
    await _roundtrip(client, b"delayed twice")
    assert loop.time() - started >= 0.15  # 0.1 s each way; a generous lower bound only


async def test_slow_throttles_bandwidth(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    proxy.slow(0, bytes_per_second=2000, direction="downstream")
    payload = b"x" * 400
    started = asyncio.get_running_loop().time()
    await _roundtrip(client, payload)
    assert client.chunks >= 5  # trickled out in slices, not in one write
    assert (await echo.peer(0)).chunks <= 2  # the upstream direction is not throttled
    assert asyncio.get_running_loop().time() - started >= 0.1  # 400 B at 2000 B/s: ~0.2 s


async def test_cut_after_forwards_exactly_n_bytes_upstream(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    proxy.cut_after(10, "upstream")
    client = await connect(proxy.port)
    client.send(bytes(range(100)))
    server_side = await echo.peer(0)
    assert isinstance(await server_side.ended(), ConnectionResetError)
    assert server_side.received == bytes(range(10))
    assert isinstance(await client.ended(), ConnectionResetError)
    assert (proxy.bytes_upstream, proxy.connections_cut) == (10, 1)

    second = await connect(proxy.port)  # armed for every new connection
    second.send(b"A" * 50)
    assert isinstance(await second.ended(), ConnectionResetError)
    assert (await echo.peer(1)).received == b"A" * 10

    proxy.pass_through()
    third = await connect(proxy.port)
    await _roundtrip(third, b"B" * 50)


async def test_cut_after_downstream_counts_from_now_on_existing_connections(
    proxy: FaultProxy, echo: EchoServer, connect: Connect
) -> None:
    client = await connect(proxy.port)
    await _roundtrip(client, b"12345")
    proxy.cut_after(7, "downstream")
    client.send(b"abcdefghijklmnop")
    assert isinstance(await client.ended(), ConnectionResetError)
    assert client.received == b"abcdefg"
    assert proxy.bytes_downstream == 5 + 7


async def test_unreachable_target_resets_the_client(connect: Connect) -> None:
    async with FaultProxy("127.0.0.1", _closed_port()) as proxy:
        client = await connect(proxy.port)
        assert isinstance(await client.ended(), ConnectionResetError)
        assert proxy.upstream_failures == 1


async def test_waits_time_out_and_url_for_keeps_everything_but_the_address(
    echo: EchoServer,
) -> None:
    proxy = FaultProxy("127.0.0.1", echo.port)
    with pytest.raises(RuntimeError, match="not started"):
        proxy.url_for("amqp://localhost/")
    async with proxy:
        with pytest.raises(TimeoutError, match="1 accepted connections"):
            await proxy.wait_for_connections(1, timeout=0.05)
        port = proxy.port
        assert (
            proxy.url_for(
                "amqps://us%40er:p%3Ass@broker.example:5671/my%2Fvhost?heartbeat=5&name=x"
            )
            == f"amqps://us%40er:p%3Ass@127.0.0.1:{port}/my%2Fvhost?heartbeat=5&name=x"
        )
        assert proxy.url_for("amqp://broker") == f"amqp://127.0.0.1:{port}"
        with pytest.raises(ValueError, match="not a URL"):
            proxy.url_for("broker:5672")
        with pytest.raises(ValueError, match="direction"):
            proxy.cut_after(1, "sideways")  # type: ignore[arg-type]


async def test_stop_closes_every_socket_and_task(echo: EchoServer, connect: Connect) -> None:
    before = asyncio.all_tasks()
    proxy = FaultProxy("127.0.0.1", echo.port)
    await proxy.start()
    clients = [await connect(proxy.port) for _ in range(3)]
    for client in clients:
        await _roundtrip(client, b"x")
    proxy.stall()  # stop() must not depend on the mode
    await proxy.stop()
    for client in clients:
        assert isinstance(await client.ended(), ConnectionResetError)
    assert proxy.active_connections == 0
    assert asyncio.all_tasks() == before
    gc.collect()  # an unclosed socket would raise ResourceWarning (filterwarnings=error)
    with pytest.raises(ConnectionRefusedError):  # nobody listens any more
        await connect(proxy.port)


def _closed_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# -- the proxy between leveret and the broker ---------------------------------------------------
# The failure tests use reconnect=False: they check what a dead link looks like to the
# caller.  Reconnecting through the proxy is tested in test_faults.py.


@pytest.mark.integration
async def test_leveret_round_trips_through_the_proxy(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url)) as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        await conn.publish(b"via the proxy", routing_key=queue_name)
        message = await conn.get(queue_name, no_ack=True)
        assert message is not None
        assert message.body == b"via the proxy"
    assert broker_proxy.connections_accepted >= 1  # leveret may open a publisher connection
    assert broker_proxy.bytes_upstream > len(b"via the proxy")
    assert broker_proxy.bytes_downstream > len(b"via the proxy")


@pytest.mark.integration
async def test_cut_fails_a_waiting_consumer_with_connection_lost(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url), reconnect=False) as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        async with conn.consume(queue_name) as messages:
            waiting = asyncio.ensure_future(anext(messages))
            await asyncio.sleep(0)
            assert not waiting.done()
            broker_proxy.cut()
            async with asyncio.timeout(5):
                with pytest.raises(leveret.ConnectionLost) as caught:
                    await waiting
        assert not isinstance(caught.value, leveret.HeartbeatTimeout)
        assert isinstance(await conn.wait_closed(), leveret.ConnectionLost)


@pytest.mark.integration
async def test_cut_fails_a_pending_get_with_connection_lost(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url), reconnect=False) as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        await conn.get(queue_name)  # opens the channel get uses
        broker_proxy.blackhole()
        dropped = broker_proxy.bytes_dropped
        pending = asyncio.ensure_future(conn.get(queue_name))
        await broker_proxy.wait_until(lambda: broker_proxy.bytes_dropped > dropped)
        assert not pending.done()  # the basic.get left; no answer can come back
        broker_proxy.cut()
        async with asyncio.timeout(5):
            with pytest.raises(leveret.ConnectionLost):
                await pending


@pytest.mark.integration
async def test_blackhole_ends_in_heartbeat_timeout(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    url = broker_proxy.url_for(rabbitmq_url)
    async with leveret.connect(url, heartbeat=1, reconnect=False) as conn:
        assert conn.heartbeat == 1
        await conn.declare_queue(queue_name, exclusive=True)
        async with conn.consume(queue_name) as messages:
            broker_proxy.blackhole()
            async with asyncio.timeout(10):
                with pytest.raises(leveret.HeartbeatTimeout):
                    await anext(messages)
                assert isinstance(await conn.wait_closed(), leveret.HeartbeatTimeout)
        assert broker_proxy.bytes_dropped > 0  # our heartbeats, at least


@pytest.mark.integration
async def test_refuse_makes_connect_fail_and_accept_restores(
    broker_proxy: FaultProxy, rabbitmq_url: str
) -> None:
    url = broker_proxy.url_for(rabbitmq_url)
    broker_proxy.refuse()
    async with asyncio.timeout(10):
        with pytest.raises(leveret.ConnectFailed):
            await leveret.connect(url, connection_timeout=5)
    assert broker_proxy.connections_refused == 1
    broker_proxy.accept()
    async with leveret.connect(url) as conn:
        await conn.declare_queue("", exclusive=True)


@pytest.mark.integration
async def test_cut_in_the_middle_of_the_handshake_fails_connect(
    broker_proxy: FaultProxy, rabbitmq_url: str
) -> None:
    broker_proxy.cut_after(50, "downstream")  # connection.start is several hundred bytes
    async with asyncio.timeout(10):
        with pytest.raises(leveret.ConnectFailed):
            await leveret.connect(broker_proxy.url_for(rabbitmq_url), connection_timeout=5)
    assert broker_proxy.bytes_downstream == 50


@pytest.mark.integration
async def test_cut_in_the_middle_of_a_delivery_fails_the_consumer(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str, conn: leveret.Connection
) -> None:
    await conn.declare_queue(queue_name, auto_delete=True)
    async with (
        leveret.connect(broker_proxy.url_for(rabbitmq_url), reconnect=False) as proxied,
        proxied.consume(queue_name) as messages,
    ):
        broker_proxy.cut_after(1000, "downstream")
        await conn.publish(b"m" * 65536, routing_key=queue_name)  # direct, not proxied
        async with asyncio.timeout(5):
            with pytest.raises(leveret.ConnectionLost):
                await anext(messages)
    assert broker_proxy.bytes_downstream >= 1000
    assert broker_proxy.active_connections == 0


@pytest.mark.integration
async def test_stall_and_slow_only_delay_leveret(
    broker_proxy: FaultProxy, rabbitmq_url: str, queue_name: str
) -> None:
    async with leveret.connect(broker_proxy.url_for(rabbitmq_url)) as conn:
        await conn.declare_queue(queue_name, exclusive=True)
        broker_proxy.stall()
        publishing = asyncio.ensure_future(conn.publish(b"held", routing_key=queue_name))
        with pytest.raises(TimeoutError):
            async with asyncio.timeout(0.3):
                await asyncio.shield(publishing)
        broker_proxy.slow(0.05)
        async with asyncio.timeout(5):
            await publishing  # confirmed once the bytes flow again
            message = await conn.get(queue_name, no_ack=True)
        assert message is not None
        assert message.body == b"held"
