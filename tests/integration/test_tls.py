"""TLS (amqps://) and SASL EXTERNAL against a real broker with a TLS listener.

The `rabbitmq_tls` node verifies client certificates against certs.ca_cert when a client
sends one, and logs EXTERNAL clients in as the CN of their certificate.
"""

from __future__ import annotations

import asyncio
import json
import os
import ssl
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlencode

import pytest

import leveret
from leveret.testing import NodeStartError, RabbitMQNode, TLSRabbitMQ

pytestmark = pytest.mark.integration


def _with_query(url: str, **query: str) -> str:
    return f"{url}?{urlencode(query)}"


def _external_url(broker: TLSRabbitMQ, cert: str, key: str) -> str:
    """No user name or password: EXTERNAL takes the identity from the certificate."""
    return _with_query(
        f"amqps://127.0.0.1:{broker.tls_port}/",
        cafile=broker.certs.ca_cert,
        certfile=cert,
        keyfile=key,
        auth_mechanism="external",
    )


def _unique_name() -> str:
    return f"tls-test-{uuid.uuid4().hex[:12]}"


def _broker_view(broker: TLSRabbitMQ, connection_name: str) -> dict[str, Any]:
    """The broker's row for our connection (`rabbitmqctl list_connections ... ssl
    peer_cert_subject auth_mechanism --formatter json`)."""
    rows = [
        row
        for row in broker.list_connections("ssl", "peer_cert_subject", "auth_mechanism")
        if row["client_properties"].get("connection_name") == connection_name
    ]
    assert len(rows) == 1, rows
    return rows[0]


async def _round_trip(conn: leveret.Connection) -> None:
    queue = await conn.declare_queue("", exclusive=True)
    body = uuid.uuid4().bytes
    await conn.publish(body, routing_key=queue.name)
    message = await conn.get(queue.name)
    assert message is not None
    assert message.body == body
    assert message.ack() is True


def _open_fds() -> int:
    return len(os.listdir("/dev/fd"))


async def _until_fds_back_to(baseline: int) -> None:
    async with asyncio.timeout(10):
        while True:  # polling: nothing public signals that the socket is finally closed
            if _open_fds() <= baseline:
                return
            await asyncio.sleep(0.001)


@pytest.fixture
def tls_user(rabbitmq_tls: TLSRabbitMQ) -> Iterator[str]:
    """A broker user named like the client certificate's CN, for EXTERNAL logins."""
    name = rabbitmq_tls.certs.client_user
    rabbitmq_tls.add_user(name, uuid.uuid4().hex)  # the password is never used
    yield name
    rabbitmq_tls.delete_user(name)


# -- verifying the broker ------------------------------------------------------------------


async def test_cafile_connects_round_trips_and_broker_reports_tls(
    rabbitmq_tls: TLSRabbitMQ,
) -> None:
    name = _unique_name()
    url = _with_query(rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.ca_cert)
    async with leveret.connect(url, name=name) as conn:
        await _round_trip(conn)
        row = _broker_view(rabbitmq_tls, name)
    assert row["ssl"] is True
    assert row["peer_cert_subject"] == ""  # no client certificate was sent
    assert (row["user"], row["auth_mechanism"]) == ("guest", "PLAIN")


async def test_ssl_context_argument_turns_tls_on(rabbitmq_tls: TLSRabbitMQ) -> None:
    context = ssl.create_default_context(cafile=rabbitmq_tls.certs.ca_cert)
    name = _unique_name()
    plain_scheme_url = f"amqp://guest:guest@127.0.0.1:{rabbitmq_tls.tls_port}/"
    async with leveret.connect(plain_scheme_url, ssl=context, name=name) as conn:
        assert conn.params.use_tls is True
        assert conn.params.ssl_context is context
        await _round_trip(conn)
        assert _broker_view(rabbitmq_tls, name)["ssl"] is True


async def test_ssl_context_argument_wins_over_the_url_files(rabbitmq_tls: TLSRabbitMQ) -> None:
    context = ssl.create_default_context(cafile=rabbitmq_tls.certs.ca_cert)
    url = _with_query(rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.other_ca_cert)
    async with leveret.connect(url, ssl=context) as conn:
        await _round_trip(conn)


async def test_wrong_ca_fails_certificate_verification(rabbitmq_tls: TLSRabbitMQ) -> None:
    url = _with_query(rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.other_ca_cert)
    with pytest.raises(leveret.ConnectFailed) as caught:
        await leveret.connect(url)
    assert type(caught.value) is leveret.ConnectFailed
    message = str(caught.value)
    assert "TLS certificate verification failed" in message
    assert f"127.0.0.1:{rabbitmq_tls.tls_port}" in message
    assert "cafile" in message  # the hint
    assert isinstance(caught.value.__cause__, ssl.SSLCertVerificationError)


async def test_verify_false_accepts_a_broker_signed_by_another_ca(
    rabbitmq_tls: TLSRabbitMQ,
) -> None:
    name = _unique_name()
    url = _with_query(rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.other_ca_cert, verify="false")
    async with leveret.connect(url, name=name) as conn:
        await _round_trip(conn)
        assert _broker_view(rabbitmq_tls, name)["ssl"] is True


async def test_server_hostname_must_match_the_certificate(rabbitmq_tls: TLSRabbitMQ) -> None:
    url = _with_query(
        rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.ca_cert, server_hostname="wrong.example"
    )
    with pytest.raises(leveret.ConnectFailed) as caught:
        await leveret.connect(url)
    assert type(caught.value) is leveret.ConnectFailed
    message = str(caught.value)
    assert "TLS certificate verification failed" in message
    assert "Hostname mismatch" in message
    assert "'wrong.example'" in message


async def test_server_hostname_in_the_certificate_connects(rabbitmq_tls: TLSRabbitMQ) -> None:
    # The server certificate names DNS:localhost besides IP:127.0.0.1.
    url = _with_query(
        rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.ca_cert, server_hostname="localhost"
    )
    async with leveret.connect(url) as conn:
        await _round_trip(conn)


async def test_verify_false_accepts_a_hostname_mismatch(rabbitmq_tls: TLSRabbitMQ) -> None:
    url = _with_query(
        rabbitmq_tls.tls_url,
        cafile=rabbitmq_tls.certs.ca_cert,
        server_hostname="wrong.example",
        verify="false",
    )
    async with leveret.connect(url) as conn:
        await _round_trip(conn)


async def test_amqps_to_the_plain_port_fails_fast(rabbitmq_tls: TLSRabbitMQ) -> None:
    """The broker answers a ClientHello with its AMQP header: an SSL error, not a hang."""
    url = _with_query(
        f"amqps://guest:guest@127.0.0.1:{rabbitmq_tls.node.port}/",
        cafile=rabbitmq_tls.certs.ca_cert,
        connection_timeout="5",
    )
    with pytest.raises(leveret.ConnectFailed) as caught:
        await leveret.connect(url)
    assert type(caught.value) is leveret.ConnectFailed
    message = str(caught.value)
    assert "TLS handshake failed" in message  # not "no AMQP handshake within 5.0s"
    assert "WRONG_VERSION_NUMBER" in message
    assert f"is 127.0.0.1:{rabbitmq_tls.node.port} a TLS port?" in message


async def test_unreadable_cafile_is_a_clear_connect_failure(
    rabbitmq_tls: TLSRabbitMQ, tmp_path: Any
) -> None:
    missing = str(tmp_path / "no-such-ca.pem")
    with pytest.raises(leveret.ConnectFailed, match="cannot load the TLS files") as caught:
        await leveret.connect(_with_query(rabbitmq_tls.tls_url, cafile=missing))
    assert isinstance(caught.value.__cause__, FileNotFoundError)


# -- client certificates and SASL EXTERNAL -------------------------------------------------


async def test_external_logs_in_as_the_certificate_cn(
    rabbitmq_tls: TLSRabbitMQ, tls_user: str
) -> None:
    certs = rabbitmq_tls.certs
    name = _unique_name()
    url = _external_url(rabbitmq_tls, certs.client_cert, certs.client_key)
    assert "guest" not in url
    async with leveret.connect(url, name=name) as conn:
        await _round_trip(conn)
        row = _broker_view(rabbitmq_tls, name)
    assert row["user"] == tls_user == "leveret-tls-user"
    assert row["auth_mechanism"] == "EXTERNAL"
    assert row["ssl"] is True
    assert "CN=leveret-tls-user" in row["peer_cert_subject"]


async def test_client_certificate_with_plain_login_is_sent(rabbitmq_tls: TLSRabbitMQ) -> None:
    certs = rabbitmq_tls.certs
    name = _unique_name()
    url = _with_query(
        rabbitmq_tls.tls_url,
        cafile=certs.ca_cert,
        certfile=certs.client_cert,
        keyfile=certs.client_key,
    )
    async with leveret.connect(url, name=name) as conn:
        row = _broker_view(rabbitmq_tls, name)
        await _round_trip(conn)
    assert (row["user"], row["auth_mechanism"]) == ("guest", "PLAIN")
    assert "CN=leveret-tls-user" in row["peer_cert_subject"]


async def test_external_with_a_cn_that_is_no_user_is_refused(rabbitmq_tls: TLSRabbitMQ) -> None:
    certs = rabbitmq_tls.certs
    url = _external_url(rabbitmq_tls, certs.unknown_client_cert, certs.unknown_client_key)
    with pytest.raises(leveret.AuthenticationFailed) as caught:
        await leveret.connect(url)
    message = str(caught.value)
    assert "refused the SASL EXTERNAL login" in message
    assert certs.unknown_client_cert in message
    assert "that user must exist" in message
    # RabbitMQ's own words: 403 during the handshake.
    assert "ACCESS_REFUSED - Login was refused using authentication mechanism EXTERNAL" in message
    assert "user ''" not in message  # the old, misleading wording


async def test_external_without_a_client_certificate_is_refused(
    rabbitmq_tls: TLSRabbitMQ,
) -> None:
    # On a TLS listener RabbitMQ 3.10 offers EXTERNAL even when no certificate was sent,
    # then refuses the login.
    url = _with_query(
        f"amqps://127.0.0.1:{rabbitmq_tls.tls_port}/",
        cafile=rabbitmq_tls.certs.ca_cert,
        auth_mechanism="external",
    )
    with pytest.raises(leveret.AuthenticationFailed) as caught:
        await leveret.connect(url)
    message = str(caught.value)
    assert "no client certificate was given (pass certfile and keyfile)" in message
    assert "ACCESS_REFUSED" in message


async def test_external_on_a_plain_listener_is_not_offered(rabbitmq_tls: TLSRabbitMQ) -> None:
    url = _with_query(f"amqp://127.0.0.1:{rabbitmq_tls.node.port}/", auth_mechanism="external")
    with pytest.raises(leveret.AuthenticationFailed) as caught:
        await leveret.connect(url)
    message = str(caught.value)
    assert "broker does not offer SASL mechanism EXTERNAL (it offers AMQPLAIN, PLAIN)" in message
    assert "rabbitmq_auth_mechanism_ssl" in message


async def test_client_certificate_from_an_untrusted_ca_is_refused(
    rabbitmq_tls: TLSRabbitMQ, tls_user: str
) -> None:
    """The broker rejects the certificate (with TLS 1.3 only after the client finished its
    side of the handshake); connect must still raise ConnectFailed, not ConnectionLost."""
    certs = rabbitmq_tls.certs
    url = _external_url(rabbitmq_tls, certs.untrusted_client_cert, certs.untrusted_client_key)
    with pytest.raises(leveret.ConnectFailed) as caught:
        await leveret.connect(url)
    assert type(caught.value) is leveret.ConnectFailed
    message = str(caught.value)
    assert "unknown ca" in message.lower()  # the broker's TLS alert
    assert "client certificate" in message


async def test_close_releases_the_tls_socket(rabbitmq_tls: TLSRabbitMQ) -> None:
    baseline = _open_fds()
    conn = await leveret.connect(
        _with_query(rabbitmq_tls.tls_url, cafile=rabbitmq_tls.certs.ca_cert)
    )
    assert _open_fds() == baseline + 1
    try:
        await conn.close()
        assert _open_fds() == baseline
    finally:
        await _until_fds_back_to(baseline)


# -- the node itself -------------------------------------------------------------------------


def test_tls_node_serves_plain_and_tls_on_separate_ports(rabbitmq_tls: TLSRabbitMQ) -> None:
    node = rabbitmq_tls.node
    assert node.tls_port is not None
    assert node.tls_port != node.port
    assert rabbitmq_tls.tls_url == f"amqps://guest:guest@127.0.0.1:{node.tls_port}/"
    assert node.tls == rabbitmq_tls.certs.server
    status = json.loads(node.ctl("--quiet", "status", "--formatter", "json"))
    listeners = {
        (item["interface"], item["port"], item["protocol"]) for item in status["listeners"]
    }
    assert ("127.0.0.1", node.tls_port, "amqp/ssl") in listeners
    assert ("127.0.0.1", node.port, "amqp") in listeners


def test_plain_node_has_no_tls_url(rabbitmq: RabbitMQNode) -> None:
    assert rabbitmq.tls_port is None
    assert rabbitmq.tls is None
    with pytest.raises(NodeStartError, match="without tls"):
        _ = rabbitmq.tls_url
