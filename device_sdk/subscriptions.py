"""The client's subscriptions: which callbacks want which filters, at which QoS (no I/O).

Several callbacks may share one filter; the gateway sees one subscription per filter, sent
when the first callback arrives (or at a higher QoS), withdrawn when the last one leaves, and
sent again, all of them, on every new connection.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

from .handles import Subscription
from .message import filter_matches


@dataclass(slots=True)
class _Filter:
    qos: int
    subscriptions: list[Subscription] = field(default_factory=list)


class SubscriptionTable:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._filters: dict[str, _Filter] = {}

    def add(self, subs: list[Subscription], qos: int) -> list[tuple[str, int]]:
        """Register `subs`; the (filter, qos) pairs the gateway must now be sent."""
        with self._lock:
            send: list[str] = []
            for sub in subs:
                entry = self._filters.get(sub.topic_filter)
                if entry is None:
                    entry = self._filters[sub.topic_filter] = _Filter(qos)
                    send.append(sub.topic_filter)
                elif qos > entry.qos:  # a higher QoS needs the subscription sent again
                    entry.qos = qos
                    send.append(sub.topic_filter)
                entry.subscriptions.append(sub)
            return [(f, self._filters[f].qos) for f in dict.fromkeys(send)]

    def remove(self, sub: Subscription) -> bool:
        """Forget `sub`; True when its filter has no callback left (unsubscribe it)."""
        with self._lock:
            entry = self._filters.get(sub.topic_filter)
            if entry is None or sub not in entry.subscriptions:
                return False
            entry.subscriptions.remove(sub)
            if entry.subscriptions:
                return False
            del self._filters[sub.topic_filter]
            return True

    def matching(self, topic: str) -> list[Subscription]:
        """Every subscription whose filter matches `topic`, oldest filter first."""
        with self._lock:
            return [s for f, entry in self._filters.items() if filter_matches(f, topic)
                    for s in entry.subscriptions]

    def missing(self, done: set[str]) -> list[tuple[str, int]]:
        """(filter, qos) of every filter not in `done`: what a new connection still needs."""
        with self._lock:
            return [(f, e.qos) for f, e in self._filters.items() if f not in done]
