"""`async with conn.listen(exchange, ...) as messages:` pub/sub in one line."""

from __future__ import annotations

from collections.abc import Sequence
from types import TracebackType
from typing import TYPE_CHECKING, Any

from leveret.aio._consumer import Consumer
from leveret.exceptions import LeveretError

if TYPE_CHECKING:
    from leveret.aio._connection import Connection

__all__ = ["Listening"]


class Listening:
    """A private queue bound to an exchange, consumed while the block runs, deleted after."""

    def __init__(
        self,
        connection: Connection,
        exchange: str,
        exchange_type: str,
        *,
        routing_keys: Sequence[str],
        match: dict[str, Any] | None,
        match_all: bool,
        prefetch: int,
        durable_exchange: bool,
    ) -> None:
        self._connection = connection
        self.exchange = exchange
        self._options: dict[str, Any] = {
            "routing_keys": routing_keys,
            "match": match,
            "match_all": match_all,
            "durable_exchange": durable_exchange,
        }
        self._type = exchange_type
        self._prefetch = prefetch
        self._consumer: Consumer | None = None

    @property
    def queue(self) -> str:
        """The private queue's name (it changes if a reconnect re-declares it)."""
        if self._consumer is None:
            raise RuntimeError("not listening yet: use `async with conn.listen(...)`")
        return self._consumer.queue

    async def __aenter__(self) -> Consumer:
        connection = self._connection
        info = await connection.declare_bound_queue(self.exchange, self._type, **self._options)
        consumer = connection.consume(info.name, prefetch=self._prefetch)
        try:
            await consumer.start()
        except BaseException:
            await self._delete(info.name)
            raise
        self._consumer = consumer
        return consumer

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        consumer = self._consumer
        if consumer is None:
            return
        await consumer.close()
        await self._delete(consumer.queue)

    async def _delete(self, queue: str) -> None:
        try:
            await self._connection.delete_queue(queue)
        except LeveretError:
            pass  # exclusive: it goes with the connection anyway
