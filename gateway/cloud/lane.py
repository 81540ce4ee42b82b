"""One cloud connection's share of the uplink: what it must send, in order, and its window.

The uplink hands each spooled message to the lane its cloud topic hashes to (so a topic's
messages always share one connection, whose MQTT ordering keeps them in order). A lane
turns messages into sends: an unbatched message is its own send (its spool Entry, token =
its seq); a batched route's messages gather per cloud topic in a Packer until it is full
or its oldest message has waited max_delay_ms, and then go as one send (a Batch, whose
PUBACK acknowledges every message in it). Sends wait in `ready` and go out while fewer
than max_inflight are unanswered. A send that fails comes back to the front of `ready`,
in order, and goes again whole; the spool keeps every message until its PUBACK.

No I/O here: `send(unit)` is the caller's.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable

from ..spool.store import Entry
from .batch import BatchSettings, Packer, element

SOURCE_TOPIC = "lichen_source_topic"   # a batched message's local topic, in its properties


def lane_of(topic: str, lanes: int) -> int:
    """The lane a cloud topic uses: stable across restarts (unlike hash())."""
    return zlib.crc32(topic.encode()) % lanes if lanes > 1 else 0


class Batch:
    """A send of several spooled messages to one cloud topic."""

    __slots__ = ("seq", "seqs", "topic", "payload", "qos", "properties", "expiry_at")

    def __init__(self, seqs: list[int], topic: str, payload: bytes, qos: int) -> None:
        self.seq = seqs[0]          # for ordering with other sends
        self.seqs = seqs
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties: dict = {}
        self.expiry_at = None

    def __repr__(self) -> str:
        return f"Batch({self.seqs[0]}..{self.seqs[-1]}, {len(self.seqs)} messages)"


Unit = Entry | Batch


class Lane:
    def __init__(self, index: int, max_inflight: int, send: Callable[[Unit], None]) -> None:
        self.index = index
        self.max_inflight = max_inflight
        self.send = send
        self.connected = False
        self.ready: deque[Unit] = deque()           # to send, in order
        self.open: dict[str, tuple[Packer, int]] = {}  # cloud topic -> (batch filling, qos)
        self.inflight: dict[object, Unit] = {}      # token -> send awaiting its PUBACK
        self.requeued: set[object] = set()          # tokens failed back, at ready's front
        self.held = 0       # messages here: ready, filling or in flight
        self.publishes = 0  # a batch counts once
        self.sent = 0       # messages, each time one went
        self.resent = 0     # messages sent again after their send failed

    # ---------------------------------------------------------------- in

    def add(self, e: Entry, batch: BatchSettings | None) -> None:
        self.held += 1
        if batch is None:
            self.ready.append(e)
            return
        source = e.properties.get(SOURCE_TOPIC, e.topic)
        elem = element(source, int(e.spooled_at * 1000), e.payload)
        filling = self.open.get(e.topic)
        if filling is not None and not filling[0].fits(elem):
            self._close(e.topic)
            filling = None
        if filling is None:
            filling = (Packer(batch, e.spooled_at), e.qos)
            self.open[e.topic] = filling
        filling[0].add(elem, e.seq)
        if filling[0].full:
            self._close(e.topic)

    def close_due(self, now: float) -> float | None:
        """Close the batches whose oldest message waited long enough; when the next one is
        due (wall clock), if any is filling."""
        nxt = None
        for topic, (packer, _) in list(self.open.items()):
            due = packer.first_at + packer.settings.max_delay_ms / 1000
            if due <= now:
                self._close(topic)
            elif nxt is None or due < nxt:
                nxt = due
        return nxt

    def _close(self, topic: str) -> None:
        packer, qos = self.open.pop(topic)
        self.ready.append(Batch(packer.tokens, topic, packer.payload(), qos))

    # ---------------------------------------------------------------- out

    def pump(self, limit: int) -> int:
        """Send up to `limit` of what is ready, within the window; how many went."""
        if not self.connected:
            return 0
        n = min(limit, self.max_inflight - len(self.inflight), len(self.ready))
        ready, inflight, send = self.ready, self.inflight, self.send
        messages = 0
        requeued = self.requeued
        for _ in range(n):
            unit = ready.popleft()
            if type(unit) is Batch:
                token: object = unit
                messages += len(unit.seqs)
            else:
                token = unit.seq
                messages += 1
            if requeued:
                requeued.discard(token)
            inflight[token] = unit
            send(unit)
        self.publishes += n
        self.sent += messages
        return n

    @property
    def can_send(self) -> bool:
        return self.connected and bool(self.ready) and len(self.inflight) < self.max_inflight

    def done(self, token: object) -> Unit | None:
        """The send behind token was answered (acknowledged or refused for good)."""
        unit = self.inflight.pop(token, None)
        if unit is not None:
            self.held -= len(unit.seqs) if type(unit) is Batch else 1
        return unit

    def failed(self, tokens: list[object]) -> int:
        """These sends failed (the connection dropped): first again, in order, merged with
        those that failed before them (failures can come back in several batches)."""
        units = [u for u in (self.inflight.pop(t, None) for t in tokens) if u is not None]
        if not units:
            return 0
        self.resent += sum(len(u.seqs) if type(u) is Batch else 1 for u in units)
        moved = len(units)
        ready, requeued = self.ready, self.requeued
        while ready and _token(ready[0]) in requeued:
            units.append(ready.popleft())
        units.sort(key=_first_seq)
        ready.extendleft(reversed(units))
        requeued.update(_token(u) for u in units)
        return moved


def _first_seq(unit: Unit) -> int:
    return unit.seq


def _token(unit: Unit) -> object:
    return unit if type(unit) is Batch else unit.seq
