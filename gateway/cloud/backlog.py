"""The spool's backlog as an operator sees it: how deep, how old, how fast it drains and
when it will be empty; and a warning in the log when it keeps growing.

The check is a timer armed only while messages wait (poke(), from the uplink): an idle
gateway has no wake-up for it. A backlog "grows" while its depth stays above where it was
when the growth began; the warning needs that for `backlog_warn_after_s` and the oldest
message that old too, so a busy link that keeps up (a few messages always in flight) or a
backlog that drains after an outage does not warn.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable

from ..log_throttle import LogThrottle
from ..spool.queue import Spool

log = logging.getLogger("lichen.cloud")

RATE_WINDOW_S = 30.0     # the drain rate counts acknowledgements over this recent window
CHECK_S = 5.0            # how often a waiting backlog is looked at (and reported)
WARN_LOG_INTERVAL = 60.0


class BacklogWatch:
    def __init__(self, spool: Spool, warn_after_s: float,
                 on_report: Callable[[], None] | None = None) -> None:
        self.spool = spool
        self.warn_after_s = warn_after_s
        self.on_report = on_report   # after a check that found messages waiting for long
        self.interval = min(CHECK_S, max(0.5, warn_after_s / 2))
        self._acks: deque[list] = deque()          # [whole second, acknowledged in it]
        self._up_since: float | None = None        # the rate counts from here at most
        self._grow_start: tuple[float, int] | None = None   # (when, depth) growth began
        self._timer: asyncio.TimerHandle | None = None
        self._reported = False
        self._warn = LogThrottle(WARN_LOG_INTERVAL)
        self._closed = False

    # ---------------------------------------------------------------- from the uplink

    def connected(self) -> None:
        self._up_since = time.monotonic()

    def disconnected(self) -> None:
        self._up_since = None

    def acked(self, n: int) -> None:
        second = int(time.monotonic())
        acks = self._acks
        if acks and acks[-1][0] == second:
            acks[-1][1] += n
        else:
            acks.append([second, n])
            while acks[0][0] < second - RATE_WINDOW_S:
                acks.popleft()

    def poke(self) -> None:
        """Messages may be waiting: look again in a while, if not already due to."""
        if self._timer is None and self.spool.count and not self._closed:
            self._timer = asyncio.get_running_loop().call_later(self.interval, self._check)

    def close(self) -> None:
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    # ---------------------------------------------------------------- figures

    def drain_rate(self) -> float:
        """Messages the cloud acknowledged per second, lately; 0 while disconnected."""
        if self._up_since is None:
            return 0.0
        now = time.monotonic()
        span = max(1.0, min(RATE_WINDOW_S, now - self._up_since))
        since = now - span
        return sum(n for second, n in self._acks if second + 1 > since) / span

    def figures(self) -> dict:
        depth = self.spool.count
        oldest = self.spool.oldest_spooled_at()
        rate = self.drain_rate()
        if depth == 0:
            eta: float | None = 0.0
        else:
            eta = round(depth / rate, 1) if rate > 0 else None   # None: not draining
        start = self._grow_start
        growing = time.monotonic() - start[0] if start and depth > start[1] else 0.0
        return {"oldest_age_s": None if oldest is None else round(time.time() - oldest, 1),
                "drain_per_s": round(rate, 1), "drain_eta_s": eta,
                "growing_for_s": round(growing, 1)}

    # ---------------------------------------------------------------- the check

    def _check(self) -> None:
        self._timer = None
        now = time.monotonic()
        depth = self.spool.count
        start = self._grow_start
        if start is None or depth <= start[1]:   # not above where it was: no growth
            self._grow_start = start = (now, depth)
        figures = self.figures()
        age = figures["oldest_age_s"] or 0.0
        if now - start[0] >= self.warn_after_s and age >= self.warn_after_s \
                and self._warn.ready():
            why = ("the cloud is not connected" if self._up_since is None else
                   "messages arrive faster than the cloud takes them")
            log.warning("cloud backlog growing for %.0f s: %d messages (%d bytes), oldest "
                        "%.0f s, draining %.1f/s; %s", now - start[0], depth,
                        self.spool.bytes, age, figures["drain_per_s"], why)
        # report a backlog that makes messages wait, and once more when that ended
        waiting = age >= self.interval
        if (waiting or self._reported) and self.on_report is not None:
            self.on_report()
        self._reported = waiting
        if depth:
            self.poke()
        else:
            self._grow_start = None
