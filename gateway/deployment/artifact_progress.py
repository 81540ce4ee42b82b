"""Progress reports at a bounded rate: pure, the clock is passed in."""

from __future__ import annotations

import time
from collections.abc import Callable

ProgressCallback = Callable[[int, int], None]


class ProgressThrottle:
    """Calls `callback(done, total)` when `done` moved by `step_fraction` of `total` or
    `interval_s` passed since the last report, and always for the first and the last byte,
    so a caller publishing progress over MQTT sends ~100 messages, not one per chunk."""

    def __init__(self, total: int, callback: ProgressCallback | None,
                 step_fraction: float = 0.01, interval_s: float = 1.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.total = total
        self.callback = callback
        self.step = max(1, int(total * step_fraction))
        self.interval_s = interval_s
        self.clock = clock
        self.last_done: int | None = None
        self.last_time = 0.0

    def update(self, done: int) -> None:
        if self.callback is None or done == self.last_done:
            return
        now = self.clock()
        due = (self.last_done is None or done >= self.total or done < self.last_done
               or done - self.last_done >= self.step or now - self.last_time >= self.interval_s)
        if due:
            self.last_done = done
            self.last_time = now
            self.callback(done, self.total)
