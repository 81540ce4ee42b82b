"""When to try the cloud again after a connection was lost or an attempt failed.

The wait grows with how long the cloud has been unreachable, not with how many attempts
failed: up to `min_reconnect_s` at first, then in proportion to the outage so far, reaching
`max_reconnect_s` only after `reconnect_ramp_s` of failures (10 minutes by default). So a
short outage costs a short wait (20 s of outage: at most 4 s more with the shipped values),
while a fleet that lost the cloud for an hour comes back spread over two minutes. Each wait
is drawn from [w/2, w] for the current bound w: never a burst of immediate retries, and
never longer than w after the cloud is back.

A connection that lasted less than STABLE_S does not end the outage: a link that connects
and drops at once keeps backing off instead of retrying at the fastest pace forever.
"""

from __future__ import annotations

import random
from collections.abc import Callable

STABLE_S = 30.0     # a connection this long ends the outage: the next one starts afresh


class Backoff:
    def __init__(self, min_s: float, max_s: float, ramp_s: float,
                 rand: Callable[[], float] = random.random) -> None:
        self.min_s = min_s
        self.max_s = max_s
        self.ramp_s = ramp_s
        self._rand = rand
        self._down_since: float | None = None   # start of the current outage
        self._up_since: float | None = None     # start of the current connection

    def connected(self, now: float) -> None:
        self._up_since = now

    def lost(self, now: float) -> None:
        """The connection ended (or an attempt failed with none up)."""
        up = self._up_since
        self._up_since = None
        if self._down_since is None or (up is not None and now - up >= STABLE_S):
            self._down_since = now

    def bound(self, now: float) -> float:
        """The longest wait before the next attempt, `now` into an outage."""
        down_for = 0.0 if self._down_since is None else now - self._down_since
        return min(self.max_s, max(self.min_s, self.max_s * down_for / self.ramp_s))

    def next_delay(self, now: float) -> float:
        w = self.bound(now)
        return w * (0.5 + 0.5 * self._rand())
