"""Sends the spool to the cloud: in per-topic order, a bounded window in flight on each
connection, nothing removed from the spool before the cloud acknowledged it.

Messages are taken from the spool in order and handed to the lane (gateway.cloud.lane) of
the connection their cloud topic hashes to; each lane sends what is ready while its window
has room, batching per cloud topic for routes that ask for it. The uplink holds at most
`hold` messages (in lanes, batches being filled and in flight); a connection that is down
parks its topics' messages, so the others go on until it holds half of that (then the
spool waits: it is one ordered queue, and the rest of it stays on disk).

Wake-ups are batched: when messages arrive or acknowledgements come back, the lanes are
topped up at most every PUMP_INTERVAL_S under load (at once when the uplink was quiet), so
the SDK's thread is woken once per batch of sends rather than once per message, and its
acknowledgements come back in batches too. A further turn is taken only while a full
batch went out and more waits: an idle link costs no wake-ups at all.

A publish that fails (the link dropped, or the SDK was stopped between connections: see
gateway.cloud.link) goes first again on its connection; nothing else re-sends, so each
message is on the wire once per connection. Delivery is at least once (a message whose
PUBACK was lost with the link is sent again), in per-topic order.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from ..log_throttle import LogThrottle
from ..spool.queue import Spool
from .backlog import BacklogWatch
from .batch import BatchSettings
from .lane import Batch, Lane, Unit, lane_of
from .link import Completion

log = logging.getLogger("lichen.cloud")

REJECT_LOG_INTERVAL = 10.0
PUMP_BATCH = 32             # publishes handed to the SDK per lane per loop turn
# Under load, the lanes are topped up at most this often: each top-up wakes the SDK's thread
# and brings a batch of acknowledgements back, so at 800 msg/s this halves its CPU per
# message (bench/uplink_cpu.py); a message waits at most this much longer, only under load.
PUMP_INTERVAL_S = 0.02


class Uplink:
    def __init__(self, spool: Spool, publishers: list[Callable[[Unit], None]],
                 max_inflight: int, backlog: BacklogWatch,
                 batches: dict[str, BatchSettings] | None = None) -> None:
        self.spool = spool
        self.batches = batches or {}     # route name -> its batch settings
        self.lanes = [Lane(i, max_inflight, send) for i, send in enumerate(publishers)]
        self.backlog = backlog
        per_send = max((b.max_messages for b in self.batches.values()), default=1)
        n = len(self.lanes)
        window = spool.settings.memory_window
        if n == 1:   # enough to keep the window full, within the spool's memory window
            self.hold = max(max_inflight, min(max_inflight * per_send, window))
            self.lane_hold = self.hold
        else:        # and room for a connection that is down to park its topics' share
            self.hold = max(2 * max_inflight * per_send * n, window)
            self.lane_hold = self.hold // 2
        self._reject_log = LogThrottle(REJECT_LOG_INTERVAL)
        self._pump_scheduled = False
        self._timer: asyncio.TimerHandle | None = None    # the next rate-limited pump
        self._batch_timer: asyncio.TimerHandle | None = None
        self._batch_due: float | None = None
        self._last_pump = 0.0
        spool.listener = self.wake

    @property
    def connected(self) -> bool:
        return any(lane.connected for lane in self.lanes)

    @property
    def sent(self) -> int:
        return sum(lane.sent for lane in self.lanes)

    @property
    def resent(self) -> int:
        return sum(lane.resent for lane in self.lanes)

    def on_connected(self, lane: int = 0) -> None:
        if not self.connected:
            self.backlog.connected()
        self.lanes[lane].connected = True
        self.pump()

    def on_disconnected(self, lane: int = 0) -> None:
        self.lanes[lane].connected = False
        if not self.connected:
            self.backlog.disconnected()

    # ---------------------------------------------------------------- pumping

    def wake(self) -> None:
        """More to send (or room to send it): pump now, or within PUMP_INTERVAL_S unless
        a full batch already waits (a backlog drains as fast as acknowledgements allow)."""
        if self._pump_scheduled:
            return
        spool = self.spool
        if spool.count - spool.inflight >= PUMP_BATCH:
            if self._timer is not None:
                self._timer.cancel()
                self._timer = None
            self.pump()
            return
        if self._timer is not None:
            return
        loop = asyncio.get_running_loop()
        due = self._last_pump + PUMP_INTERVAL_S
        if loop.time() >= due:
            self.pump()
        else:
            self._timer = loop.call_at(due, self._timed)

    def _timed(self) -> None:
        self._timer = None
        self.pump()

    def pump(self) -> None:
        spool = self.spool
        if spool.count:
            self.backlog.poke()
        lanes = self.lanes
        if not any(lane.connected for lane in lanes):
            return
        self._last_pump = asyncio.get_running_loop().time()
        self._take()
        if self._batch_due is not None or any(lane.open for lane in lanes):
            self._close_batches()
        more = False
        for lane in lanes:
            sent = lane.pump(PUMP_BATCH)
            more = more or (sent == PUMP_BATCH and lane.can_send)
        # more room and more to send: the rest on a later turn, local traffic in between
        if more and not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_later)

    def _pump_later(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def _take(self) -> None:
        lanes = self.lanes
        held = 0
        for lane in lanes:
            if lane.held >= self.lane_hold:
                return     # a connection's share is full: the spool waits for it
            held += lane.held
        want = self.hold - held
        if want <= 0 or not self.spool.has_unsent:
            return
        batches = self.batches
        n = len(lanes)
        if n == 1:
            lane = lanes[0]
            if not batches:
                for e in self.spool.take(want):
                    lane.add(e, None)
                return
            for e in self.spool.take(want):
                lane.add(e, batches.get(e.route))
            return
        for e in self.spool.take(want):
            lanes[lane_of(e.topic, n)].add(e, batches.get(e.route))

    def _close_batches(self) -> None:
        now = time.time()
        due = None
        for lane in self.lanes:
            d = lane.close_due(now)
            if d is not None and (due is None or d < due):
                due = d
        if due != self._batch_due:
            if self._batch_timer is not None:
                self._batch_timer.cancel()
                self._batch_timer = None
            self._batch_due = due
            if due is not None:
                self._batch_timer = asyncio.get_running_loop().call_later(
                    max(0.0, due - now), self._batch_timed)

    def _batch_timed(self) -> None:
        self._batch_timer = None
        self._batch_due = None
        self.pump()

    # ---------------------------------------------------------------- answers

    def on_completions(self, batch: list[Completion], lane_index: int = 0) -> None:
        spool = self.spool
        lane = self.lanes[lane_index]
        retry: list[object] = []
        acked = 0
        for token, ok, permanent, why in batch:
            if not ok and not permanent:
                retry.append(token)   # failed back (link down, SDK stopped): send again
                continue
            unit = lane.done(token)
            if unit is None:
                continue
            seqs = unit.seqs if type(unit) is Batch else (unit.seq,)
            for seq in seqs:
                spool.ack(seq, rejected=not ok)
            if ok:
                acked += len(seqs)
            else:
                self._log_reject(unit, why)
        if acked:
            self.backlog.acked(acked)
        if retry:
            lane.failed(retry)
        self.wake()

    def close(self) -> None:
        for lane in range(len(self.lanes)):
            self.on_disconnected(lane)
        for timer in (self._timer, self._batch_timer):
            if timer is not None:
                timer.cancel()
        self.backlog.close()

    def status(self) -> list[dict]:
        return [{"connected": lane.connected, "inflight": len(lane.inflight),
                 "held": lane.held, "sent": lane.sent, "resent": lane.resent}
                for lane in self.lanes]

    def _log_reject(self, unit: Unit, why: str) -> None:
        if self._reject_log.ready():
            log.warning("cloud refused spooled %r for good (%s); dropped, %d so far",
                        unit, why, self.spool.stats.rejected_by_cloud)
