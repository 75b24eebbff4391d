"""The private-broker plugin itself: every other integration test stands on it."""

from __future__ import annotations

import socket
import struct
import time
import uuid
from collections.abc import Callable
from urllib.parse import urlsplit

import pika
import pika.exceptions
import pytest

from leveret.testing import RabbitmqctlError, RabbitMQNode

pytestmark = pytest.mark.integration

AMQP_0_9_1_HEADER = b"AMQP\x00\x00\x09\x01"
FRAME_METHOD = 1


def _recv_exactly(sock: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = sock.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"broker closed the socket after {len(data)} bytes")
        data += chunk
    return data


def test_url_points_at_loopback_port(rabbitmq: RabbitMQNode, rabbitmq_url: str) -> None:
    url = urlsplit(rabbitmq_url)
    assert (url.scheme, url.hostname, url.port) == ("amqp", "127.0.0.1", rabbitmq.port)
    assert (url.username, url.password, url.path) == ("guest", "guest", "/")


def test_port_answers_protocol_header_with_connection_start(rabbitmq: RabbitMQNode) -> None:
    with socket.create_connection((rabbitmq.host, rabbitmq.port), timeout=10) as sock:
        sock.sendall(AMQP_0_9_1_HEADER)
        header = _recv_exactly(sock, 11)  # type(1) channel(2) size(4) class(2) method(2)
    frame_type, channel, _size, class_id, method_id = struct.unpack(">BHIHH", header)
    assert frame_type == FRAME_METHOD
    assert channel == 0
    assert (class_id, method_id) == (10, 10)  # connection.start


def test_ctl_status(rabbitmqctl: Callable[..., str], rabbitmq: RabbitMQNode) -> None:
    assert rabbitmq.node_name in rabbitmqctl("status")


def test_add_user_shows_in_list_users(rabbitmq: RabbitMQNode) -> None:
    name = f"plugin-test-{uuid.uuid4().hex[:8]}"
    rabbitmq.add_user(name, "secret", configure="", write="", read="")
    try:
        assert name in {row["user"] for row in rabbitmq.list_users()}
        assert name in rabbitmq.ctl("list_users")
    finally:
        rabbitmq.delete_user(name)
    assert name not in {row["user"] for row in rabbitmq.list_users()}


def test_unknown_command_raises_with_its_name(rabbitmq: RabbitMQNode) -> None:
    with pytest.raises(RabbitmqctlError, match="no_such_command") as caught:
        rabbitmq.ctl("no_such_command")
    assert caught.value.returncode not in (0, None)
    assert caught.value.command[-1] == "no_such_command"


def test_list_queues_and_connections_are_json(rabbitmq: RabbitMQNode) -> None:
    assert isinstance(rabbitmq.list_queues(), list)
    assert isinstance(rabbitmq.list_connections(), list)


def test_logs_name_the_node(rabbitmq: RabbitMQNode) -> None:
    assert "startup.log" in rabbitmq.logs()


def _wait_for(condition: Callable[[], bool], timeout: float = 15.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.1)


def _pika_connection(rabbitmq: RabbitMQNode, name: str) -> pika.BlockingConnection:
    params = pika.URLParameters(rabbitmq.url)
    params.client_properties = {"connection_name": name}
    return pika.BlockingConnection(params)


def test_list_connections_then_close_all(rabbitmq: RabbitMQNode) -> None:
    name = f"plugin-test-{uuid.uuid4().hex[:8]}"
    conn = _pika_connection(rabbitmq, name)
    try:
        (row,) = [
            c
            for c in rabbitmq.list_connections()
            if c["client_properties"].get("connection_name") == name
        ]
        assert (row["user"], row["vhost"]) == ("guest", "/")
        rabbitmq.close_all_connections("plugin test says bye")
        with pytest.raises(pika.exceptions.ConnectionClosedByBroker) as caught:
            _wait_for(lambda: conn.process_data_events(0.1) or not conn.is_open)
        assert caught.value.reply_code == 320
        assert "plugin test says bye" in caught.value.reply_text
    finally:
        if conn.is_open:
            conn.close()


def test_memory_watermark_blocks_publishers(rabbitmq: RabbitMQNode) -> None:
    name = f"plugin-test-{uuid.uuid4().hex[:8]}"
    conn = _pika_connection(rabbitmq, name)
    try:
        rabbitmq.set_vm_memory_high_watermark(0)
        conn.channel().basic_publish("", "nowhere", b"x")

        def blocked() -> bool:
            states = {
                c["state"]
                for c in rabbitmq.list_connections()
                if c["client_properties"].get("connection_name") == name
            }
            return states == {"blocked"}

        _wait_for(blocked)
    finally:
        rabbitmq.set_vm_memory_high_watermark(0.4)
        conn.close()
