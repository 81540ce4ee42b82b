"""Reconnect policy: how long to wait (exponential, capped, with jitter) and which failures
are worth retrying at all. Pure: the caller keeps the attempt count and passes the random
source, so the schedule is testable without a clock."""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import ConnectRefused, DeviceSDKError, DiscoveryError, GatewayUnreachable, TLSError


@dataclass(frozen=True, slots=True)
class Backoff:
    """The delay before reconnect attempt n (0-based) is drawn from
    [(1 - jitter) * d, d] where d = min(maximum, initial * multiplier ** n).

    Jitter spreads the reconnects of a fleet that lost its gateway at the same moment, so
    they do not all come back in the same instant; the lower bound keeps a device from
    hammering a gateway that refuses it.
    """

    initial: float = 0.5
    maximum: float = 60.0
    multiplier: float = 2.0
    jitter: float = 0.5
    # A connection that lasted at least this long resets the schedule; one that dropped
    # sooner (a gateway that accepts and then closes) keeps growing the delay.
    stable_after: float = 10.0

    def __post_init__(self) -> None:
        if not 0 < self.initial <= self.maximum:
            raise ValueError(f"Backoff needs 0 < initial <= maximum, got initial="
                             f"{self.initial}, maximum={self.maximum}")
        if self.multiplier < 1:
            raise ValueError(f"Backoff multiplier must be >= 1, got {self.multiplier}")
        if not 0 <= self.jitter <= 1:
            raise ValueError(f"Backoff jitter must be between 0 and 1, got {self.jitter}")
        if self.stable_after < 0:
            raise ValueError(f"Backoff stable_after must be >= 0, got {self.stable_after}")

    def ceiling(self, attempt: int) -> float:
        """The largest delay for attempt `attempt` (before jitter)."""
        if attempt < 0:
            raise ValueError(f"attempt must be >= 0, got {attempt}")
        if self.multiplier == 1:
            return self.initial
        # Step up instead of multiplier ** attempt, which overflows in a long outage.
        delay = self.initial
        for _ in range(attempt):
            delay *= self.multiplier
            if delay >= self.maximum:
                return self.maximum
        return min(delay, self.maximum)

    def delay(self, attempt: int, rng: random.Random | None = None) -> float:
        """Seconds to wait before attempt `attempt`."""
        top = self.ceiling(attempt)
        r = (rng or random).random()
        return top * (1 - self.jitter * r)


def is_permanent(error: DeviceSDKError) -> bool:
    """Failures retrying will not fix: the device's or the gateway's configuration must
    change (a background client still retries them, slowly; connect() gives up at once)."""
    if isinstance(error, TLSError):
        return True
    if isinstance(error, ConnectRefused):
        return error.permanent
    if isinstance(error, DiscoveryError):
        return error.status in (0, 400, 401, 403, 404)
    return False


def most_telling(errors: Iterable[DeviceSDKError]) -> DeviceSDKError:
    """One error for a round of failed attempts at each address: a permanent one if any
    (it says what to fix), else all the reasons together."""
    errors = list(errors)
    if not errors:
        return GatewayUnreachable("discovery named no address to connect to")
    for kind in (TLSError, ConnectRefused):
        for error in errors:
            if isinstance(error, kind) and is_permanent(error):
                return error
    if len(errors) == 1:
        return errors[0]
    return GatewayUnreachable("cannot reach the gateway at any address: " +
                              "; ".join(str(e) for e in errors))
