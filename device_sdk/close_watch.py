"""Spotting a publish the gateway refuses by closing the connection (pure).

MQTT 3.1.1 has no way to refuse a PUBLISH: a gateway that will not take one (AWS IoT Core
and Lichen, for a topic the policy denies) closes the connection instead. The client sends
the queue again on reconnecting, so without this the same message would close every
connection, forever, and the ones behind it would never leave the queue.

The gateway handles a connection's publishes in order and acknowledges each before the
next, so when it closes, the oldest message still unacknowledged is the one it stopped at.
A message found there at `limit` closes in a row is taken as refused; a connection that
merely dropped is unlikely to do so, each time, before one round trip's PUBACK.
"""

from __future__ import annotations


class CloseWatch:
    def __init__(self, limit: int = 2) -> None:
        if limit < 1:
            raise ValueError(f"limit must be at least 1, got {limit}")
        self.limit = limit
        self._suspect: int | None = None
        self._closes = 0

    def closed(self, oldest_unacked: int | None) -> int:
        """A connection ended with `oldest_unacked` (a queue id, or None) the oldest message
        the gateway had not acknowledged. How many closes in a row it has been there when
        that reaches the limit (the caller gives the message up), else 0."""
        if oldest_unacked is None or oldest_unacked != self._suspect:
            self._suspect, self._closes = oldest_unacked, 0
        if oldest_unacked is None:
            return 0
        self._closes += 1
        if self._closes < self.limit:
            return 0
        closes, self._suspect, self._closes = self._closes, None, 0
        return closes
