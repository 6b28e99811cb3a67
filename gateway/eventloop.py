"""Run the server's event loop: uvloop when it is installed (the `fast` extra, and the container
image), else asyncio's own. uvloop's loop and transports are in C; for a proxy, whose work is
mostly moving small messages between sockets, that is a large share of the cost per request."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


def loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    try:
        import uvloop
    except ImportError:
        return None
    return uvloop.new_event_loop  # type: ignore[no-any-return]


def run(main: Coroutine[Any, Any, T]) -> T:
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
