"""pytest fixtures for a private RabbitMQ node, loaded through leveret's `pytest11` entry point.

One node per test session (per xdist worker), started on first use and stopped at the end.
A node that cannot start fails the tests that need it, with the node's log in the report:
skipping would let a broken environment pass as green.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

try:
    import pytest
except ImportError as exc:  # pragma: no cover - pytest imports this module itself
    raise ImportError("leveret.testing.pytest_plugin is a pytest plugin; install pytest") from exc

from leveret.testing._certs import CertificateError, make_test_certificates
from leveret.testing._cluster import RabbitMQCluster
from leveret.testing._node import NodeStartError, RabbitMQNode, TLSRabbitMQ


@pytest.fixture(scope="session")
def rabbitmq() -> Iterator[RabbitMQNode]:
    """The session's private RabbitMQ node (guest/guest on 127.0.0.1, a free port)."""
    try:
        node = RabbitMQNode.start()
    except NodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    with node:
        yield node


@pytest.fixture(scope="session")
def rabbitmq_url(rabbitmq: RabbitMQNode) -> str:
    """amqp://guest:guest@127.0.0.1:PORT/ of the session's node."""
    return rabbitmq.url


@pytest.fixture(scope="session")
def rabbitmqctl(rabbitmq: RabbitMQNode) -> Callable[..., str]:
    """`rabbitmqctl("list_queues", "name")` against the session's node; returns stdout."""
    return rabbitmq.ctl


@pytest.fixture(scope="session")
def rabbitmq_tls(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TLSRabbitMQ]:
    """A second node, started only for tests that ask for it: AMQPS on a free loopback port
    (`.tls_url`) with a certificate for 127.0.0.1/localhost, client certificates verified
    against `.certs.ca_cert` when sent, and SASL EXTERNAL logging in as a certificate's CN
    (`.certs.client_user` has no broker user until a test adds one)."""
    try:
        certs = make_test_certificates(tmp_path_factory.mktemp("tls-certs"))
        node = RabbitMQNode.start(tls=certs.server, plugins=["rabbitmq_auth_mechanism_ssl"])
    except (CertificateError, NodeStartError) as exc:
        pytest.fail(str(exc), pytrace=False)
    with node:
        yield TLSRabbitMQ(node, certs)


@pytest.fixture(scope="session")
def rabbitmq_management() -> Iterator[RabbitMQNode]:
    """A second node with the rabbitmq_management plugin, started only for tests that ask
    for it (about 4 s): its HTTP API listens on 127.0.0.1 at
    `.plugin_ports["rabbitmq_management"]`, guest/guest is an administrator."""
    try:
        node = RabbitMQNode.start(plugins=["rabbitmq_management"])
    except NodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    with node:
        yield node


@pytest.fixture(scope="session")
def rabbitmq_cluster() -> Iterator[RabbitMQCluster]:
    """Three clustered nodes, started only for tests that ask for them: `.urls` (pass them
    all to `leveret.connect`), `.nodes`, `.ctl(i, ...)`, and `.stop_node(i)` /
    `.start_node(i)` to take node i away from its clients and bring it back."""
    try:
        cluster = RabbitMQCluster.start(3)
    except NodeStartError as exc:
        pytest.fail(str(exc), pytrace=False)
    with cluster:
        yield cluster
