"""`async for change in conn.state_changes():` the connection's ups and downs as typed events.

Why: listeners (`add_listener`) are plain callbacks, fine for a log line but
awkward for code that wants to await "the broker blocked us" or feed a health
endpoint. This stream yields a `StateChange` per transition. Its buffer is
bounded: a reader that falls behind loses the oldest changes, never memory,
and the next change it reads says how many it missed.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from types import TracebackType
from typing import Literal, cast

__all__ = ["State", "StateChange", "StateChanges"]

State = Literal["disconnected", "reconnected", "blocked", "unblocked", "closed"]
_STATES: frozenset[str] = frozenset(
    ("disconnected", "reconnected", "blocked", "unblocked", "closed")
)


@dataclass(frozen=True, slots=True)
class StateChange:
    """One transition of the connection (or, with `publisher`, of its publishing connection).

    state: "disconnected" (the link dropped; `error` says why; reconnecting),
    "reconnected" (topology and consumers restored), "blocked" (a memory or
    disk alarm stops publishing; `reason` is the broker's), "unblocked",
    "closed" (for good; `error` is None after a close by this program).
    missed: changes dropped before this one because the reader fell behind.
    """

    state: State
    error: BaseException | None = None
    reason: str | None = None
    publisher: bool = False
    missed: int = 0


class StateChanges(AsyncIterator[StateChange]):
    """The iterator `Connection.state_changes()` returns; ends after "closed".

    Use it as `async with conn.state_changes() as changes: async for change in changes:`
    (or just `async for`): leaving the block stops recording changes.
    """

    def __init__(self, maxsize: int, detach: Callable[[StateChanges], object]) -> None:
        if not isinstance(maxsize, int) or isinstance(maxsize, bool) or maxsize < 1:
            raise ValueError(f"maxsize must be a positive int, got {maxsize!r}")
        self._buffer: deque[StateChange] = deque()
        self._maxsize = maxsize
        self._missed = 0
        self._waiter: asyncio.Future[None] | None = None
        self._ended = False
        self._detach = detach

    def push(
        self, state: str, error: BaseException | None, reason: str | None, publisher: bool
    ) -> None:
        """Record one change (called by the connection, never blocks)."""
        if self._ended or state not in _STATES:
            return
        if len(self._buffer) >= self._maxsize:
            self._buffer.popleft()  # the oldest goes; the next one read reports the gap
            self._missed += 1
        self._buffer.append(StateChange(cast(State, state), error, reason, publisher))
        if state == "closed" and not publisher:
            self._ended = True
            self._detach(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def close(self) -> None:
        """Stop recording; iteration ends once the buffer is read."""
        if not self._ended:
            self._ended = True
            self._detach(self)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def __len__(self) -> int:
        return len(self._buffer)

    def __aiter__(self) -> StateChanges:
        return self

    async def __anext__(self) -> StateChange:
        while not self._buffer:
            if self._ended:
                raise StopAsyncIteration
            waiter = self._waiter = asyncio.get_running_loop().create_future()
            try:
                await waiter
            finally:
                self._waiter = None
        change = self._buffer.popleft()
        if self._missed:
            change = replace(change, missed=self._missed)
            self._missed = 0
        return change

    async def __aenter__(self) -> StateChanges:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()
