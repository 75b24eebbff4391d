"""leveret.service.ensure_vhost against a node with the management plugin enabled."""

from __future__ import annotations

import asyncio
import json
import socket
import uuid

import pytest

import leveret
from leveret.service import (
    CallContext,
    ManagementError,
    Service,
    VhostSetup,
    configure_topology,
    ensure_vhost,
    ensure_vhost_for,
    management_url,
)
from leveret.testing import RabbitMQNode

pytestmark = pytest.mark.integration


def api_url(node: RabbitMQNode, password: str = "guest") -> str:
    port = node.plugin_ports["rabbitmq_management"]
    return f"http://guest:{password}@127.0.0.1:{port}/"


def permissions(node: RabbitMQNode, vhost: str) -> dict[str, list[str]]:
    rows = json.loads(node.ctl("--quiet", "list_permissions", "-p", vhost, "--formatter", "json"))
    return {row["user"]: [row["configure"], row["write"], row["read"]] for row in rows}


async def test_creates_the_vhost_and_grants_a_user_then_a_service_runs_there(
    rabbitmq_management: RabbitMQNode,
) -> None:
    node = rabbitmq_management
    vhost = f"mgmt-{uuid.uuid4().hex[:8]}"
    user = f"app-{uuid.uuid4().hex[:6]}"
    node.ctl("add_user", user, "app-secret")
    assert vhost not in node.ctl("--quiet", "list_vhosts")

    setup = await ensure_vhost(api_url(node), vhost, user=user, read="^orders.*|leveret.*|amq.*")
    assert setup == VhostSetup(vhost_created=True, permissions_changed=True)
    assert permissions(node, vhost)[user] == [".*", ".*", "^orders.*|leveret.*|amq.*"]

    # The user can now run a service in the new vhost.
    orders = Service("orders")

    @orders.method
    async def add(params: dict[str, int], ctx: CallContext) -> int:
        return params["a"] + params["b"]

    url = f"amqp://{user}:app-secret@127.0.0.1:{node.port}/{vhost}"
    async with asyncio.timeout(15), leveret.connect(url) as conn, orders.run(conn) as mesh:
        assert await mesh.call("orders.add", {"a": 2, "b": 3}, timeout=5) == 5

    # A second call finds everything in place and changes nothing.
    again = await ensure_vhost(api_url(node), vhost, user=user, read="^orders.*|leveret.*|amq.*")
    assert again == VhostSetup(vhost_created=False, permissions_changed=False)
    # Other patterns are an update, not a no-op.
    changed = await ensure_vhost(api_url(node), vhost, user=user, write="^orders$")
    assert changed == VhostSetup(vhost_created=False, permissions_changed=True)
    assert permissions(node, vhost)[user] == [".*", "^orders$", ".*"]


async def test_vhost_only_and_the_url_derived_from_the_amqp_url(
    rabbitmq_management: RabbitMQNode,
) -> None:
    node = rabbitmq_management
    vhost = f"mgmt/{uuid.uuid4().hex[:8]}"  # a slash must be escaped in the API path
    url = management_url(node.url, port=node.plugin_ports["rabbitmq_management"])
    assert url == f"http://guest:guest@127.0.0.1:{node.plugin_ports['rabbitmq_management']}/"
    assert await ensure_vhost(url, vhost) == VhostSetup(True, False)
    assert vhost in node.ctl("--quiet", "list_vhosts").splitlines()
    assert await ensure_vhost(url, vhost) == VhostSetup(False, False)


async def test_wrong_admin_password_is_a_clear_error(rabbitmq_management: RabbitMQNode) -> None:
    with pytest.raises(
        ManagementError, match="refused the admin credentials of user 'guest'"
    ) as info:
        await ensure_vhost(api_url(rabbitmq_management, password="wrong"), "never-made")
    assert info.value.status == 401
    assert "never-made" not in rabbitmq_management.ctl("--quiet", "list_vhosts")


async def test_a_missing_user_is_named(rabbitmq_management: RabbitMQNode) -> None:
    with pytest.raises(ManagementError, match="user 'nobody-here' does not exist"):
        await ensure_vhost(api_url(rabbitmq_management), "mgmt-nobody", user="nobody-here")


async def test_no_management_plugin_says_so(rabbitmq: RabbitMQNode) -> None:
    # The session node runs without the plugin: nothing listens where the API would be.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(ManagementError, match="is the rabbitmq_management plugin enabled"):
        await ensure_vhost(management_url(rabbitmq.url, port=port), "anything", timeout=5)


@pytest.mark.parametrize(
    ("url", "vhost", "options", "error", "text"),
    [
        ("amqp://guest:guest@localhost/", "v", {}, ValueError, "amqp://guest"),
        ("http://localhost:15672/", "", {}, ValueError, "vhost must be a non-empty str"),
        ("http://localhost:15672/", "v", {"user": ""}, ValueError, "user must be"),
        ("http://localhost:15672/", "v", {"read": None}, TypeError, "read must be a str"),
        ("http://localhost:15672/", "v", {"timeout": 0}, ValueError, "timeout must be"),
    ],
)
async def test_bad_input_is_named(
    url: str, vhost: str, options: dict[str, object], error: type[Exception], text: str
) -> None:
    with pytest.raises(error, match=text):
        await ensure_vhost(url, vhost, **options)  # type: ignore[arg-type]


async def test_ensure_vhost_for_takes_the_vhost_and_user_from_the_amqp_url(
    rabbitmq_management: RabbitMQNode,
) -> None:
    node = rabbitmq_management
    vhost, user = f"for-{uuid.uuid4().hex[:8]}", f"svc-{uuid.uuid4().hex[:6]}"
    node.ctl("add_user", user, "svc-secret")
    amqp_url = f"amqp://{user}:svc-secret@127.0.0.1:{node.port}/{vhost}"
    # The app's own user is no administrator: the API refuses it, and says what to check.
    with pytest.raises(ManagementError, match="administrator tag"):
        await ensure_vhost_for(
            amqp_url,
            api_url=api_url(node).replace("guest:guest@", ""),
            admin_user=user,
            admin_password="svc-secret",
        )
    setup = await ensure_vhost_for(amqp_url, api_url=api_url(node))
    assert setup == VhostSetup(vhost_created=True, permissions_changed=True)
    assert permissions(node, vhost)[user] == [".*", ".*", ".*"]
    async with leveret.connect(amqp_url) as conn:
        await conn.declare_queue("works", auto_delete=True)
    assert await ensure_vhost_for(amqp_url, api_url=api_url(node)) == VhostSetup(False, False)


async def test_configure_topology_prepares_a_fresh_vhost_for_a_service_without_rights(
    rabbitmq_management: RabbitMQNode,
) -> None:
    """Deploy-time setup as the administrator; the service itself only checks the mesh."""
    node = rabbitmq_management
    vhost, user = f"deploy-{uuid.uuid4().hex[:8]}", f"billing-{uuid.uuid4().hex[:6]}"
    node.ctl("add_user", user, "billing-secret")
    billing = Service("billing", configure=False)

    @billing.method
    async def total(params: list[int], ctx: CallContext) -> int:
        return sum(params)

    admin_url = f"amqp://guest:guest@127.0.0.1:{node.port}/{vhost}"
    setup = await configure_topology(admin_url, billing, ensure_vhost=True, api_url=api_url(node))
    # The API grants the admin who creates a vhost full permissions there already.
    assert setup == VhostSetup(vhost_created=True, permissions_changed=False)
    # The service's own user gets read and write, but no configure permission.
    assert await ensure_vhost(api_url(node), vhost, user=user, configure="^$") == VhostSetup(
        vhost_created=False, permissions_changed=True
    )
    service_url = f"amqp://{user}:billing-secret@127.0.0.1:{node.port}/{vhost}"
    async with asyncio.timeout(15), leveret.connect(service_url) as conn:
        # Only the exclusive response queue is its own; the mesh was declared for it.
        with pytest.raises(leveret.AccessRefused):
            await conn.declare_queue("not-allowed", durable=True)
    # Running it needs the exclusive response queue: give it that much.
    await ensure_vhost(api_url(node), vhost, user=user, configure=r"^billing\..*\.responses$")
    async with (
        asyncio.timeout(15),
        leveret.connect(service_url) as conn,
        billing.run(conn) as mesh,
    ):
        assert await mesh.call("billing.total", [1, 2, 3], timeout=5) == 6
    assert await configure_topology(admin_url, billing) is None  # again: changes nothing
