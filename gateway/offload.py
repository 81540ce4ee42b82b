"""Blocking calls run off the event loop, and a stop that waits for the ones still running.

Cancelling a task that awaits `asyncio.to_thread(...)` does not stop the thread: it goes on
with, say, a query on a SQLite connection. Closing that connection meanwhile is a
use-after-free in the sqlite3 module (a segfault at SIGTERM, seen here). A component that
owns a connection sends its blocking calls through an Offloader and, when stopping, closes
the connection only once `drain()` says nothing it sent is still running.
"""

from __future__ import annotations

import asyncio
import functools
import logging
from collections.abc import Callable
from typing import Any, TypeVar

log = logging.getLogger("lichen")

T = TypeVar("T")


class Offloader:
    def __init__(self, name: str) -> None:
        self.name = name
        self._running: set[asyncio.Future] = set()

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, functools.partial(fn, *args, **kwargs))
        self._running.add(future)
        future.add_done_callback(self._running.discard)
        return await future

    async def drain(self, timeout: float) -> bool:
        """Wait (at most `timeout` s) for every call still in a thread; True when none is."""
        if self._running:
            await asyncio.wait(set(self._running), timeout=timeout)
        if self._running:
            log.warning("%s: %d blocking calls still running at stop; their resources are "
                        "left to the process's exit", self.name, len(self._running))
            return False
        return True
