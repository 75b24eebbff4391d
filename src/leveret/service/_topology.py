"""Names and declarations of a service mesh: rpc, events and dead-letter exchanges, queues.

leveret.rpc     topic exchange   "<service>.<method>" -> the service's queue
leveret.events  topic exchange   "<domain>.<event>"   -> queues of services listening
leveret.dlx     fanout exchange  rejected and expired messages -> leveret.dlq
<service>       durable queue shared by every instance (competing consumers)
<service>.<instance>.responses   exclusive: replies to this instance's calls
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from leveret.exceptions import NotFound, PreconditionFailed, ServiceNotConfigured

if TYPE_CHECKING:
    from leveret.aio import Connection

__all__ = ["MeshNames"]


@dataclass(frozen=True)
class MeshNames:
    """Every name the mesh uses; change any to fit an existing broker layout."""

    rpc_exchange: str = "leveret.rpc"
    events_exchange: str = "leveret.events"
    dead_letter_exchange: str = "leveret.dlx"
    dead_letter_queue: str = "leveret.dlq"

    def service_queue(self, service: str) -> str:
        return service

    def response_queue(self, service: str, instance_id: str) -> str:
        return f"{service}.{instance_id}.responses"

    async def declare_shared(self, conn: Connection) -> None:
        """The exchanges and the dead-letter queue (idempotent)."""
        await conn.declare_exchange(self.rpc_exchange, "topic", durable=True)
        await conn.declare_exchange(self.events_exchange, "topic", durable=True)
        await conn.declare_exchange(self.dead_letter_exchange, "fanout", durable=True)
        await conn.declare_queue(self.dead_letter_queue, durable=True)
        await conn.bind_queue(self.dead_letter_queue, self.dead_letter_exchange)

    async def declare_service(
        self, conn: Connection, service: str, event_patterns: Iterable[str]
    ) -> None:
        """The service's queue with its request and event bindings (idempotent)."""
        queue = self.service_queue(service)
        await conn.declare_queue(
            queue, durable=True, dead_letter_exchange=self.dead_letter_exchange
        )
        await conn.bind_queue(queue, self.rpc_exchange, f"{service}.*")
        for pattern in event_patterns:
            await conn.bind_queue(queue, self.events_exchange, pattern)

    async def require(self, conn: Connection, service: str | None) -> None:
        """Check (passively) that the topology exists; ServiceNotConfigured names what is missing."""
        checks: list[tuple[str, str]] = [
            ("exchange", self.rpc_exchange),
            ("exchange", self.events_exchange),
            ("exchange", self.dead_letter_exchange),
            ("queue", self.dead_letter_queue),
        ]
        if service is not None:
            checks.append(("queue", self.service_queue(service)))
        for kind, name in checks:
            try:
                if kind == "exchange":
                    await conn.declare_exchange(name, "topic", passive=True)
                else:
                    await conn.declare_queue(name, passive=True)
            except (NotFound, PreconditionFailed) as exc:
                raise ServiceNotConfigured(
                    f"the mesh {kind} {name!r} does not exist ({exc}); run configure_topology() "
                    "or let the service declare it"
                ) from None
