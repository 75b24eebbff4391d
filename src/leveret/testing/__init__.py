"""A private, throwaway RabbitMQ node for tests: yours and leveret's own.

A client library is only as good as its tests against a real broker, and mocks cannot
reproduce connection.blocked, a broker closing connections or a consumer being cancelled.
`RabbitMQNode.start()` runs RabbitMQ as the current user on 127.0.0.1 with all state in a
temp dir (installing the Debian package first when it is missing and we are root), and
`stop()` removes every trace again.  With pytest, the `rabbitmq`, `rabbitmq_url` and
`rabbitmqctl` fixtures of `leveret.testing.pytest_plugin` do this once per session
(`rabbitmq_tls`: a second node with an AMQPS listener and SASL EXTERNAL, see
`make_test_certificates`; `rabbitmq_cluster`: a `RabbitMQCluster` of three clustered
nodes, for failover tests):

    async def test_roundtrip(rabbitmq_url: str) -> None:
        async with leveret.connect(rabbitmq_url) as conn:
            ...
"""

from leveret.testing._certs import (
    CertificateError,
    TestCertificates,
    TLSFiles,
    make_test_certificates,
)
from leveret.testing._cluster import RabbitMQCluster
from leveret.testing._node import (
    NodeStartError,
    RabbitmqctlError,
    RabbitMQNode,
    TLSRabbitMQ,
    ensure_rabbitmq_installed,
)
from leveret.testing._proxy import FaultProxy

__all__ = [
    "CertificateError",
    "FaultProxy",
    "NodeStartError",
    "RabbitMQCluster",
    "RabbitMQNode",
    "RabbitmqctlError",
    "TLSFiles",
    "TLSRabbitMQ",
    "TestCertificates",
    "ensure_rabbitmq_installed",
    "make_test_certificates",
]
