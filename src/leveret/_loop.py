"""Which event loop leveret's own entry points run on: uvloop when installed.

`leveret.run(main())` (and the blocking facade's I/O thread, the CLI, the
demo) use uvloop when the `leveret[speed]` extra is installed, asyncio's own
loop otherwise. `LEVERET_EVENT_LOOP=asyncio` (or `uvloop`) overrides the
choice; asking for uvloop when it is missing is an error, not a silent
fallback. leveret works the same on both: code that calls `asyncio.run`
itself keeps whatever loop it chose.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

__all__ = ["event_loop_name", "new_event_loop", "run"]

T = TypeVar("T")
_CHOICES = ("auto", "uvloop", "asyncio")


def event_loop_name() -> str:
    """ "uvloop" or "asyncio": what `new_event_loop` makes, given the environment."""
    choice = os.environ.get("LEVERET_EVENT_LOOP", "auto").strip().lower() or "auto"
    if choice not in _CHOICES:
        raise ValueError(f"LEVERET_EVENT_LOOP must be one of {', '.join(_CHOICES)}, got {choice!r}")
    if choice == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if choice == "uvloop":
            raise RuntimeError(
                "LEVERET_EVENT_LOOP=uvloop but uvloop is not installed "
                "(pip install 'leveret[speed]')"
            ) from None
        return "asyncio"
    return "uvloop"


def _factory() -> Callable[[], asyncio.AbstractEventLoop]:
    if event_loop_name() == "uvloop":
        import uvloop

        return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    """A new loop: uvloop's when installed (see the module docstring)."""
    return _factory()()


def run(main: Coroutine[Any, Any, T], *, debug: bool | None = None) -> T:
    """`asyncio.run(main)` on the loop `new_event_loop` picks."""
    try:
        factory = _factory()
    except BaseException:
        main.close()  # never started: no "never awaited" warning on top of the error
        raise
    with asyncio.Runner(debug=debug, loop_factory=factory) as runner:
        return runner.run(main)
