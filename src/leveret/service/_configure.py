"""configure_topology(): set up a broker for a mesh once, at deploy time.

Why: services started with `configure=False` only check that the mesh exists
(so a service account needs no configure permission), and on a fresh broker
even the vhost is missing. This does both setup steps from one place, as an
administrator: the vhost and the service user's permissions (through the
management API, when asked) and the mesh's exchanges, dead-letter queue and
each service's queue with its bindings. Every step is idempotent.
"""

from __future__ import annotations

from leveret.aio import connect
from leveret.service._management import VhostSetup, ensure_vhost_for
from leveret.service._service import Service
from leveret.service._topology import MeshNames

__all__ = ["configure_topology"]


async def configure_topology(
    amqp_url: str,
    *services: Service,
    names: MeshNames | None = None,
    ensure_vhost: bool = False,
    api_url: str | None = None,
    admin_user: str | None = None,
    admin_password: str | None = None,
) -> VhostSetup | None:
    """Declare the mesh (and each service's queue and bindings) on the broker of `amqp_url`.

    With `ensure_vhost=True`, first create the URL's vhost and grant its user
    full permissions there through the management API (see `ensure_vhost_for`
    for `api_url` and the admin credentials) and return what that changed.
    The mesh names are `names`, else those of the services (each service's
    own), else the defaults.
    """
    for service in services:
        if not isinstance(service, Service):
            raise TypeError(f"services must be leveret.service.Service, got {service!r}")
    setup = None
    if ensure_vhost:
        setup = await ensure_vhost_for(
            amqp_url, api_url=api_url, admin_user=admin_user, admin_password=admin_password
        )
    meshes = [names] if names is not None else [s.names for s in services] or [MeshNames()]
    async with connect(amqp_url, name="leveret configure_topology") as conn:
        for mesh in dict.fromkeys(meshes):  # each distinct mesh once, in order
            await mesh.declare_shared(conn)
        for service in services:
            mesh = names or service.names
            await mesh.declare_service(conn, service.name, service.events)
    return setup
