"""At most one log line per interval for a condition that can recur thousands of times a
second (a full spool, a client publishing where it may not): logs stay readable and bounded,
and the counters in status carry the totals."""

from __future__ import annotations

import time


class LogThrottle:
    __slots__ = ("interval", "_next")

    def __init__(self, interval: float = 10.0) -> None:
        self.interval = interval
        self._next = 0.0

    def ready(self) -> bool:
        """True at most once per interval: the caller logs then."""
        now = time.monotonic()
        if now < self._next:
            return False
        self._next = now + self.interval
        return True
