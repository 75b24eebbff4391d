"""The service layer: services with RPC methods, commands and events over a RabbitMQ mesh.

    orders = leveret.service.Service("orders")

    @orders.method
    async def create(params, ctx):
        await mesh.publish_event("orders.created", {"id": 1})   # same trace id
        return {"id": 1}

    async with leveret.connect(url) as conn, orders.run(conn) as mesh:
        ...

A client that only calls: `async with leveret.service.Mesh(conn) as mesh:
await mesh.call("orders.create", {...}, timeout=5)`.
"""

from leveret.service._configure import configure_topology
from leveret.service._context import CallContext, current_context
from leveret.service._crypto import Keys, generate_key
from leveret.service._envelope import Envelope, EnvelopeError
from leveret.service._management import (
    ManagementError,
    VhostSetup,
    ensure_vhost,
    ensure_vhost_for,
    management_url,
)
from leveret.service._mesh import DEFAULT_TTL, Mesh
from leveret.service._service import REASON_HEADER, CallAgain, Service
from leveret.service._topology import MeshNames

__all__ = [
    "DEFAULT_TTL",
    "REASON_HEADER",
    "CallAgain",
    "CallContext",
    "Envelope",
    "EnvelopeError",
    "Keys",
    "ManagementError",
    "Mesh",
    "MeshNames",
    "Service",
    "VhostSetup",
    "configure_topology",
    "current_context",
    "ensure_vhost",
    "ensure_vhost_for",
    "generate_key",
    "management_url",
]
