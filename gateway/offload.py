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
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, TypeVar

log = logging.getLogger("lichen")

T = TypeVar("T")

STOP_DRAIN_S = 10.0   # at stop: how long a call already running may take to finish


class Offloader:
    """Runs blocking calls in threads of its own and knows which are still running.

    It tracks the thread-side (concurrent) futures, not the asyncio ones: cancelling the task
    that awaits a call cancels the asyncio future at once while the thread runs on, which is
    exactly the case `drain()` is for."""

    def __init__(self, name: str, threads: int = 4) -> None:
        self.name = name
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix=name)
        self._running: set[Future] = set()
        self._lock = threading.Lock()   # done callbacks run on the worker threads

    async def run(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        work = self._pool.submit(functools.partial(fn, *args, **kwargs))
        with self._lock:
            self._running.add(work)
        work.add_done_callback(self._finished)
        return await asyncio.wrap_future(work)

    def _finished(self, work: Future) -> None:
        with self._lock:
            self._running.discard(work)

    async def drain(self, timeout: float = STOP_DRAIN_S) -> bool:
        """Wait (at most `timeout` s) for every call still in a thread; True when none is.
        No new call may start after this."""
        with self._lock:
            running = list(self._running)
        if running:
            await asyncio.wait([asyncio.wrap_future(w) for w in running], timeout=timeout)
        self._pool.shutdown(wait=False)
        with self._lock:
            left = len(self._running)
        if left:
            log.warning("%s: %d blocking calls still running at stop; their resources are "
                        "left to the process's exit", self.name, left)
            return False
        return True
