"""A private, throwaway RabbitMQ cluster on loopback: several `RabbitMQNode`s, one cookie.

Failover (a client moving to another node when its node goes away, a quorum queue electing
a new leader) can only be tested against a real cluster.  `RabbitMQCluster.start()` boots
every node at once (booting is most of the cost, and the nodes do not need each other for
it); as soon as a node has booted, it is joined to node 0: `rabbitmqctl stop_app`,
`join_cluster` (which resets the node first; one node at a time) and `start_app`.  All
nodes run as the current user on 127.0.0.1 with their state under one temp dir that
`stop()` deletes again.  Faults: `stop_node(i)` (stop_app: clients get connection.close),
`kill_node(i)` (SIGKILL: a crash), then `start_node(i)`.

Nodes are numbered from 0, like `nodes` and `urls`.
"""

from __future__ import annotations

import atexit
import json
import secrets
import shutil
import signal
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from leveret.testing._node import (
    _MARKER,
    NodeStartError,
    RabbitmqctlError,
    RabbitMQNode,
    _free_port,
    ensure_rabbitmq_installed,
)

__all__ = ["RabbitMQCluster"]

_T = TypeVar("_T")
_POLL_INTERVAL = 0.1
_LIVE_CLUSTERS: set[RabbitMQCluster] = set()


@atexit.register
def _kill_leftover_clusters() -> None:
    """Safety net: a test run that forgot (or crashed before) stop() must not leave beam.smp."""
    for cluster in list(_LIVE_CLUSTERS):
        cluster.terminate()


def _parallel(function: Callable[[_T], Any], items: Sequence[_T]) -> list[Any]:
    """Run `function` on every item in threads; wait for all, then raise the first error."""
    if not items:
        return []
    with ThreadPoolExecutor(max_workers=len(items)) as pool:
        futures = [pool.submit(function, item) for item in items]
        errors = [exc for future in futures if (exc := future.exception()) is not None]
    if errors:
        raise errors[0]
    return [future.result() for future in futures]


class RabbitMQCluster:
    """A cluster of RabbitMQ nodes owned by this process; create it with `start()`."""

    def __init__(self, nodes: Sequence[RabbitMQNode], base_dir: Path) -> None:
        self._nodes = list(nodes)
        self._base = base_dir
        self._stopped = False
        self._killed: set[int] = set()
        _LIVE_CLUSTERS.add(self)

    @classmethod
    def start(
        cls,
        size: int = 3,
        *,
        base_dir: str | None = None,
        start_timeout: float = 120.0,
        install: bool = True,
        plugins: Sequence[str] = (),
    ) -> Self:
        """Start `size` fresh nodes and cluster them; returns once every node runs in the cluster.

        Each node gets its own AMQP and distribution port on 127.0.0.1 and its own name
        (`leveret-PORT@localhost`); all share a fresh Erlang cookie.  base_dir: where all
        state goes (default: a new temp dir), one subdirectory per node.  plugins: enabled
        on every node.  Raises NodeStartError, with the nodes' logs, if anything fails.
        """
        if not isinstance(size, int) or size < 1:
            raise ValueError(f"size must be a positive int, got {size!r}")
        ensure_rabbitmq_installed(install)  # once, not from every thread
        base = _prepare_cluster_dir(base_dir)
        cookie = secrets.token_hex(20)
        # Ports are picked here, not in the threads: two threads could pick the same free port.
        taken: set[int] = set()
        for _ in range(2 * size):
            taken.add(_free_port(avoid=taken))
        ports = sorted(taken)
        layout = [(base / f"node-{i}", ports[2 * i], ports[2 * i + 1]) for i in range(size)]
        started: list[RabbitMQNode] = []
        deadline = time.monotonic() + start_timeout
        seed: list[RabbitMQNode] = []
        seed_booted = threading.Event()
        join_lock = threading.Lock()

        def bring_up(i: int) -> RabbitMQNode:
            """Boot node i; unless it is node 0, stop its application, join it to node 0
            (once node 0 has booted, one node at a time) and start it again."""
            directory, port, dist_port = layout[i]
            try:
                node = RabbitMQNode.start(
                    port=port,
                    dist_port=dist_port,
                    base_dir=str(directory),
                    start_timeout=start_timeout,
                    install=False,
                    plugins=plugins,
                    cookie=cookie,
                )
                started.append(node)
                if i == 0:
                    seed.append(node)
            finally:
                if i == 0:
                    seed_booted.set()  # also when it failed: nobody may wait for it forever
            if i == 0:
                return node
            node.ctl("stop_app")
            seed_booted.wait(max(0.0, deadline - time.monotonic()))
            if not seed:
                raise NodeStartError(f"node 0 did not start, so {node.node_name} cannot join it")
            # Two nodes joining at once can leave one with a schema Mnesia will not start.
            with join_lock:
                node.ctl("join_cluster", seed[0].node_name)  # resets the node first
            node.ctl("start_app")
            return node

        cluster: Self | None = None
        try:
            nodes = _parallel(bring_up, range(size))
            cluster = cls(nodes, base)
            cluster.wait_running(timeout=max(1.0, deadline - time.monotonic()))
        except BaseException as exc:
            if cluster is not None:
                cluster._begin_shutdown()
            logs = "\n".join(node.logs() for node in started)
            _parallel(RabbitMQNode.terminate, started)
            shutil.rmtree(base, ignore_errors=True)
            if isinstance(exc, NodeStartError):
                raise
            if isinstance(exc, RabbitmqctlError | TimeoutError):
                raise NodeStartError(
                    f"the RabbitMQ nodes booted but could not form a cluster: {exc}\n{logs}"
                ) from None
            raise
        return cluster

    # ------------------------------------------------------------------ properties

    @property
    def nodes(self) -> list[RabbitMQNode]:
        return list(self._nodes)

    @property
    def urls(self) -> list[str]:
        """The nodes' AMQP URLs for guest, in node order: pass them all to `leveret.connect`."""
        return [node.url for node in self._nodes]

    @property
    def ports(self) -> list[int]:
        return [node.port for node in self._nodes]

    @property
    def node_names(self) -> list[str]:
        return [node.node_name for node in self._nodes]

    @property
    def base_dir(self) -> str:
        return str(self._base)

    def index(self, port: int) -> int:
        """The number of the node whose AMQP port this is, e.g. `cluster.index(conn.params.port)`."""
        for i, node in enumerate(self._nodes):
            if node.port == port:
                return i
        raise ValueError(f"no node of this cluster listens on port {port}")

    def __len__(self) -> int:
        return len(self._nodes)

    def __repr__(self) -> str:
        return f"<RabbitMQCluster {' '.join(self.node_names)} dir={self._base}>"

    # ------------------------------------------------------------------ CLI tools

    def ctl(self, i: int, *args: str, timeout: float = 60.0, check: bool = True) -> str:
        """Run `rabbitmqctl -n NODE ARGS` against node i and return its stdout."""
        return self._nodes[i].ctl(*args, timeout=timeout, check=check)

    def cluster_status(self, i: int | None = None) -> dict[str, Any]:
        """`rabbitmqctl cluster_status` as a dict, asked of node i (default: a running node)."""
        candidates = range(len(self._nodes)) if i is None else [i]
        error: RabbitmqctlError | None = None
        for j in candidates:
            try:
                status: dict[str, Any] = json.loads(
                    self.ctl(j, "--quiet", "cluster_status", "--formatter", "json", timeout=30)
                )
            except RabbitmqctlError as exc:
                error = exc
                continue
            return status
        assert error is not None
        raise error

    def running_nodes(self) -> set[str]:
        """Names of the nodes whose RabbitMQ application runs, as the cluster sees it."""
        return set(self.cluster_status()["running_nodes"])

    def wait_running(self, nodes: Sequence[int] | None = None, timeout: float = 60.0) -> None:
        """Wait until the given nodes (default: all) run in the cluster; TimeoutError if not."""
        wanted = {self._nodes[i].node_name for i in (nodes or range(len(self._nodes)))}
        deadline = time.monotonic() + timeout
        while True:
            try:
                running = self.running_nodes()
            except RabbitmqctlError:
                running = set()
            if wanted <= running:
                return
            if time.monotonic() >= deadline:
                raise TimeoutError(
                    f"nodes {sorted(wanted - running)} not running in the cluster after "
                    f"{timeout:g}s (running: {sorted(running)})"
                )
            time.sleep(_POLL_INTERVAL)

    # ------------------------------------------------------------------ faults

    def stop_node(self, i: int, timeout: float = 60.0) -> None:
        """Stop RabbitMQ on node i (`rabbitmqctl stop_app`): its listener closes and every
        client connection to it is closed (connection.close 320, CONNECTION_FORCED); the
        Erlang VM keeps running, so `start_node(i)` brings it back within a second or two."""
        self.ctl(i, "stop_app", timeout=timeout)

    def kill_node(self, i: int, timeout: float = 10.0) -> None:
        """Crash node i: SIGKILL its Erlang VM.  Its clients' sockets are reset without a
        connection.close, and the other nodes see it go down (quorum queues whose leader
        it was elect a new one).  `start_node(i)` boots it again with its data."""
        node = self._nodes[i]
        node._signal_group(signal.SIGKILL)
        if not node._wait_gone(timeout):
            raise RuntimeError(f"{node.node_name} still runs {timeout:g}s after SIGKILL")
        self._killed.add(i)

    def start_node(self, i: int, timeout: float = 60.0) -> None:
        """Start node i again after `stop_node(i)` (start_app) or `kill_node(i)` (a new VM on
        the same data, ports and name), and wait until the cluster sees it running."""
        if i in self._killed:
            node = self._nodes[i]
            node._launch()
            node._await_startup(timeout)
            self._killed.discard(i)
        else:
            self.ctl(i, "start_app", timeout=timeout)
        self.wait_running([i], timeout=timeout)

    def list_connections(self, *extra: str) -> list[dict[str, Any]]:
        """The AMQP connections of the whole cluster (`RabbitMQNode.list_connections`, asked
        of a running node), each row with "port", the broker port the client connected
        to, and "node", the number of the node it is on."""
        error: RabbitmqctlError | None = None
        for node in self._nodes:
            try:
                rows = node.list_connections("port", *extra)
            except RabbitmqctlError as exc:  # its application is stopped: ask another
                error = exc
                continue
            for row in rows:
                row["node"] = self.index(int(row["port"]))
            return rows
        assert error is not None
        raise error

    def logs(self, lines: int = 60) -> str:
        """The tail of every node's logs."""
        return "\n".join(node.logs(lines) for node in self._nodes)

    # ------------------------------------------------------------------ shutdown

    def stop(self, *, timeout: float = 30.0) -> None:
        """Stop every node (at once, gracefully) and delete all state.  Safe to call twice."""
        if not self._begin_shutdown():
            return
        _parallel(lambda node: node.stop(timeout=timeout), self._nodes)
        self._remove_base_dir()

    def terminate(self) -> None:
        """Stop every node with signals (the atexit safety net) and delete all state."""
        if not self._begin_shutdown():
            return
        # No threads here: atexit runs after the interpreter stopped handing them out.
        for node in self._nodes:  # signal every node first, so that they stop side by side
            node._signal_group(signal.SIGTERM)
        for node in self._nodes:
            node.terminate()
        self._remove_base_dir()

    def _begin_shutdown(self) -> bool:
        if self._stopped:
            return False
        self._stopped = True
        _LIVE_CLUSTERS.discard(self)
        return True

    def _remove_base_dir(self) -> None:
        if (self._base / _MARKER).exists():
            shutil.rmtree(self._base, ignore_errors=True)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _prepare_cluster_dir(base_dir: str | None) -> Path:
    """A new temp dir, or the given one if it is empty; marked so that only we delete it."""
    if base_dir is None:
        base = Path(tempfile.mkdtemp(prefix="leveret-rabbitmq-cluster-"))
    else:
        base = Path(base_dir).absolute()
        if base.exists() and any(base.iterdir()):
            raise NodeStartError(f"{base} is not empty; give the cluster an empty directory")
        base.mkdir(mode=0o700, parents=True, exist_ok=True)
    (base / _MARKER).write_text("created by leveret.testing; deleted when the cluster stops\n")
    return base
