"""The spool: every message bound for the cloud, in order, until the cloud acknowledges it.

Messages are numbered in arrival order and sent in that order, which keeps per-topic order.
Durable ones (from QoS 1/2 publishers, and QoS 0 if `qos0 = "disk"`) get a row in SQLite
and the publisher's PUBACK waits for its commit. The oldest unsent messages, up to
`memory_window`, are also held in RAM for sending; past that, new messages are on disk only
and are read back in pages as the window empties, so a day-long backlog costs disk, not RAM.
QoS 0 messages kept in memory only are dropped (and counted) when the window is full.

Bounded by count and bytes; when full, `refuse` answers REFUSED (the publisher sees Quota
exceeded, or no PUBACK on MQTT 3.1.1) and `drop-oldest` drops the oldest unsent messages.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import asdict, dataclass

from ..config import SpoolSettings
from ..log_throttle import LogThrottle
from ..mqtt.durability import REFUSED, CommitWait
from .store import Entry, SpoolDB

log = logging.getLogger("lichen.spool")

FULL_LOG_INTERVAL = 10.0      # seconds between "spool full" lines
LOAD_RETRY = 1.0              # seconds before reading the backlog again after an error
LOAD_PAGE = 2000              # rows read back from disk at a time
# Acknowledged rows are deleted in batches: one commit per delete would cost the writer
# thread (and the GIL) as much as the inserts. A row acknowledged but not yet deleted when
# the gateway dies is sent again after the restart, which at-least-once allows; these two
# bound how many that can be.
DELETE_DELAY_S = 0.2
DELETE_BATCH = 256


@dataclass(slots=True)
class SpoolStats:
    spooled: int = 0
    sent_acknowledged: int = 0
    refused_full: int = 0
    dropped_oldest: int = 0
    dropped_expired: int = 0
    dropped_qos0: int = 0
    rejected_by_cloud: int = 0


class Spool:
    def __init__(self, settings: SpoolSettings, db: SpoolDB) -> None:
        self.settings = settings
        self.db = db
        self.stats = SpoolStats()
        self.count = 0
        self.bytes = 0
        self.listener: Callable[[], None] | None = None   # told when there is more to send
        self.committed = CommitWait([db])   # what a durable message's ack waits for
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queue: deque[Entry] = deque()     # unsent, oldest first, in memory
        self._inflight: dict[int, Entry] = {}   # sent, awaiting the cloud's ack
        self._requeued: dict[int, Entry] = {}   # sent once, back in _queue after a failure
        self._next_seq = 1
        self._mem_last = 0            # highest seq in memory (or read back from disk)
        self._disk_backlog = False    # rows on disk newer than _mem_last
        self._disk_appends = 0        # disk-only appends, to know when a read caught up
        self._loading = False
        self._deletes: list[int] = []
        self._delete_timer: asyncio.TimerHandle | None = None
        self._wake_pending = False
        self._full_log = LogThrottle(FULL_LOG_INTERVAL)

    # ---------------------------------------------------------------- lifecycle

    def open(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        totals = self.db.totals()
        self.count, self.bytes = totals.count, totals.bytes
        self._next_seq = totals.last_seq + 1
        self._disk_backlog = totals.count > 0
        self.db.start(loop)
        if totals.count:
            log.info("spool: %d messages (%d bytes) waiting from before the restart",
                     totals.count, totals.bytes)
        self._maybe_load()

    async def close(self) -> None:
        self._flush_deletes()
        await self.db.flush()
        self.db.close()

    # ---------------------------------------------------------------- in (from the broker)

    def offer(self, route: str, topic: str, payload: bytes, qos: int, properties: dict,
              expiry_at: float | None, publisher_qos: int) -> CommitWait | None:
        """Spool one message. Answers what the publisher's ack must wait for: the spool's
        commit (a durable message from a QoS 1/2 publisher), nothing, or REFUSED."""
        settings = self.settings
        size = len(topic) + len(payload)
        if self._full(size):
            if settings.when_full == "refuse" or not self._drop_oldest(size):
                self.stats.refused_full += 1
                self._log_full("refusing new messages")
                return REFUSED
            self._log_full("dropping the oldest messages")
        durable = publisher_qos > 0 or settings.qos0 == "disk"
        in_memory = not self._disk_backlog and len(self._queue) < settings.memory_window
        if not durable and not in_memory:
            self.stats.dropped_qos0 += 1
            return None
        seq = self._next_seq
        self._next_seq = seq + 1
        entry = Entry(seq, route, topic, payload, qos, properties, expiry_at, time.time(),
                      durable)
        if durable:
            self.db.insert(entry)
        if in_memory:
            self._queue.append(entry)
            self._mem_last = seq
        else:
            self._disk_backlog = True
            self._disk_appends += 1
        self.count += 1
        self.bytes += size
        self.stats.spooled += 1
        self._wake()
        return self.committed if durable and publisher_qos else None

    def _drop_oldest(self, size: int) -> bool:
        """Make room by dropping the oldest unsent messages; False if it cannot."""
        queue = self._queue
        while self._full(size):
            if not queue:
                return False  # all in flight, or the backlog is still being read back
            victim = queue.popleft()
            if victim.done:
                continue
            self._requeued.pop(victim.seq, None)
            self._finish(victim)
            self.stats.dropped_oldest += 1
        return True

    def _full(self, size: int) -> bool:
        """No room for one more message of `size` bytes."""
        limits = self.settings
        return self.count >= limits.max_messages or self.bytes + size > limits.max_bytes

    def _log_full(self, action: str) -> None:
        if self._full_log.ready():
            s = self.stats
            log.warning("spool full (%d messages, %d bytes; limits %d, %d): %s "
                        "(%d refused, %d dropped so far)", self.count, self.bytes,
                        self.settings.max_messages, self.settings.max_bytes, action,
                        s.refused_full, s.dropped_oldest)

    # ---------------------------------------------------------------- out (to the uplink)

    def take(self, n: int) -> list[Entry]:
        """Up to n messages to send next, in order; they stay spooled until ack()."""
        out: list[Entry] = []
        queue = self._queue
        now = time.time()
        while queue and len(out) < n:
            e = queue.popleft()
            if e.done:
                continue
            if self._requeued:
                self._requeued.pop(e.seq, None)
            if e.expiry_at is not None and e.expiry_at <= now:
                self._finish(e)
                self.stats.dropped_expired += 1
                continue
            self._inflight[e.seq] = e
            out.append(e)
        self._maybe_load()
        return out

    def ack(self, seq: int, rejected: bool = False) -> None:
        """The cloud acknowledged (or, rejected=True, refused for good) message seq."""
        e = self._inflight.pop(seq, None) or self._requeued.pop(seq, None)
        if e is None or e.done:
            return
        self._finish(e)
        if rejected:
            self.stats.rejected_by_cloud += 1
        else:
            self.stats.sent_acknowledged += 1

    def retry(self, seqs: list[int]) -> int:
        """These sends failed: put them back at the front, in order, ahead of the rest."""
        entries = [e for e in (self._inflight.pop(s, None) for s in seqs) if e is not None]
        moved = len(entries)
        if not moved:
            return 0
        queue = self._queue
        while queue and queue[0].seq in self._requeued:  # merge with earlier retries
            entries.append(queue.popleft())
        entries.sort(key=lambda e: e.seq)
        for e in reversed(entries):
            queue.appendleft(e)
            self._requeued[e.seq] = e
        self._wake()
        return moved

    @property
    def inflight(self) -> int:
        return len(self._inflight)

    @property
    def has_unsent(self) -> bool:
        return bool(self._queue) or self._disk_backlog

    def oldest_spooled_at(self) -> float | None:
        """When the oldest message still waiting was spooled (wall clock); None if none is
        in memory (nothing waits, or the backlog is still being read back)."""
        oldest = min((e.spooled_at for e in self._inflight.values()), default=None)
        for e in self._queue:   # in order: the first one not done is the oldest here
            if not e.done:
                if oldest is None or e.spooled_at < oldest:
                    oldest = e.spooled_at
                break
        return oldest

    def _finish(self, e: Entry) -> None:
        e.done = True
        self.count -= 1
        self.bytes -= e.size
        if e.durable:
            deletes = self._deletes
            deletes.append(e.seq)
            if self._loop is None:
                return
            if len(deletes) == 1:
                self._delete_timer = self._loop.call_later(DELETE_DELAY_S, self._flush_deletes)
            elif len(deletes) == DELETE_BATCH:
                self._loop.call_soon(self._flush_deletes)

    def _flush_deletes(self) -> None:
        if self._delete_timer is not None:
            self._delete_timer.cancel()
            self._delete_timer = None
        if self._deletes:
            seqs, self._deletes = self._deletes, []
            self.db.delete_many(seqs)

    def _wake(self) -> None:
        if self.listener is not None and not self._wake_pending and self._loop is not None:
            self._wake_pending = True
            self._loop.call_soon(self._fire)

    def _fire(self) -> None:
        self._wake_pending = False
        if self.listener is not None:
            self.listener()

    # ---------------------------------------------------------------- reading the backlog

    def _maybe_load(self) -> None:
        window = self.settings.memory_window
        if not self._disk_backlog or self._loading or len(self._queue) > window // 2:
            return
        self._loading = True
        # in pages: building rows holds the GIL, and the event loop needs it back soon
        limit = min(window - len(self._queue), LOAD_PAGE)
        appends_then = self._disk_appends

        def loaded(rows: list[Entry] | Exception) -> None:
            self._loading = False
            if isinstance(rows, Exception):
                log.error("spool: cannot read the backlog back: %s", rows)
                if self._loop is not None:
                    self._loop.call_later(LOAD_RETRY, self._maybe_load)
                return
            self._queue.extend(rows)
            if rows:
                self._mem_last = rows[-1].seq
            if len(rows) < limit and self._disk_appends == appends_then:
                self._disk_backlog = False  # caught up: new messages go to memory again
            if rows:
                self._wake()
            self._maybe_load()

        self.db.load(self._mem_last, limit, loaded)

    def status(self) -> dict:
        return {"messages": self.count, "bytes": self.bytes, "inflight": len(self._inflight),
                "in_memory": len(self._queue), "backlog_on_disk": self._disk_backlog,
                "max_messages": self.settings.max_messages,
                "max_bytes": self.settings.max_bytes, "when_full": self.settings.when_full,
                "commits": self.db.writer.commits,
                **asdict(self.stats)}
