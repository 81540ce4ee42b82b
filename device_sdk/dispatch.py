"""Where application callbacks run: one thread, in arrival order, off paho's network thread.

A callback that blocks (a shadow update from inside on_delta, a slow sensor write) must not
block the thread that reads the socket, or the reply it waits for could never arrive.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger("device_sdk")

_STOP = object()


class Dispatcher:
    def __init__(self, name: str, maxsize: int = 1000) -> None:
        # Bounded: when callbacks fall behind, paho's thread waits here, and TCP flow control
        # slows the gateway, instead of messages piling up in memory.
        self._queue: queue.Queue = queue.Queue(maxsize)
        self.stopping = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        while self._thread.is_alive() and not self.stopping:
            try:
                self._queue.put((fn, args), timeout=0.5)
                return
            except queue.Full:
                continue  # wait for the callbacks to catch up, unless stopping

    def in_dispatcher(self) -> bool:
        return threading.current_thread() is self._thread

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            fn, args = item
            try:
                fn(*args)
            except Exception:
                log.exception("callback %s raised", getattr(fn, "__qualname__", fn))

    def stop(self, timeout: float = 5.0) -> None:
        """Run what is queued, then end the thread (not waited for from inside it)."""
        if not self._thread.is_alive():
            return
        self.stopping = True
        try:
            self._queue.put(_STOP, timeout=timeout)
        except queue.Full:
            log.warning("callbacks still running after %.0f s; leaving them", timeout)
            return
        if not self.in_dispatcher():
            self._thread.join(timeout)
