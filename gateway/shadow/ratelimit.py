"""Token buckets for the sync's requests to the cloud: pure code, the caller passes `now`.

AWS IoT Core throttles Device Shadow requests per account (4,000/s by default, shared by a
whole fleet) and per thing (20 updates/s); a throttled request gets 429 and must be sent
again. A fleet of gateways reconnecting after an outage would all start syncing at once, so
each gateway spends at most `rate` requests per second (after a burst of `burst`), and at
most `thing_rate` per thing.
"""

from __future__ import annotations


class TokenBucket:
    """`rate` tokens per second, holding at most `burst`; starts full."""

    __slots__ = ("rate", "burst", "_tokens", "_at")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._at = now

    def _refill(self, now: float) -> None:
        if now > self._at:
            self._tokens = min(self.burst, self._tokens + (now - self._at) * self.rate)
            self._at = now

    def wait(self, now: float) -> float:
        """Seconds until a token is there (0: one is there now)."""
        self._refill(now)
        # (a tolerance: a wait computed from floats may land a hair short of a token)
        return 0.0 if self._tokens >= 1 - 1e-9 else (1 - self._tokens) / self.rate

    def take(self, now: float) -> None:
        """Spend one token (call when wait(now) is 0)."""
        self._refill(now)
        self._tokens -= 1

    def full(self, now: float) -> bool:
        self._refill(now)
        return self._tokens >= self.burst


class Limiter:
    """One bucket for all requests and one per thing; a request needs a token from both."""

    def __init__(self, rate: float, burst: float, thing_rate: float, now: float) -> None:
        self.all = TokenBucket(rate, burst, now)
        self.thing_rate = thing_rate
        self.things: dict[str, TokenBucket] = {}

    def wait(self, thing: str, now: float) -> float:
        """Seconds until `thing` may send; 0 means a request may go now (then take())."""
        bucket = self.things.get(thing)
        mine = bucket.wait(now) if bucket is not None else 0.0
        return max(self.all.wait(now), mine)

    def take(self, thing: str, now: float) -> None:
        self.all.take(now)
        bucket = self.things.get(thing)
        if bucket is None:
            if len(self.things) > 4096:  # forget buckets that are full again: idle things
                self.things = {t: b for t, b in self.things.items() if not b.full(now)}
            bucket = self.things[thing] = TokenBucket(self.thing_rate,
                                                      max(1.0, self.thing_rate), now)
        bucket.take(now)
