"""Sends the spool to the cloud: in order, a bounded window in flight, nothing removed from
the spool before the cloud acknowledged it.

While connected, the window is topped up whenever messages arrive or acknowledgements come
back, one batch per loop turn, so a long backlog drains as fast as the link acknowledges
and local traffic keeps its turns on the event loop. A further turn is taken only while a
full batch went out and more waits: an idle link costs no wake-ups at all.

A publish that fails (the link dropped, or the SDK was stopped between connections: see
gateway.cloud.link) comes back here and goes first again; nothing else re-sends, so each
message is on the wire once per connection. Delivery is at least once (a message whose
PUBACK was lost with the link is sent again), in spool order, which keeps per-topic order.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..log_throttle import LogThrottle
from ..spool.queue import Spool
from .backlog import BacklogWatch
from .link import CloudLink, Completion

log = logging.getLogger("lichen.cloud")

REJECT_LOG_INTERVAL = 10.0
PUMP_BATCH = 32            # publishes handed to the SDK per loop turn


class Uplink:
    def __init__(self, spool: Spool, link: CloudLink, max_inflight: int,
                 backlog: BacklogWatch) -> None:
        self.spool = spool
        self.link = link
        self.max_inflight = max_inflight
        self.backlog = backlog
        self.connected = False
        self.sent = 0
        self.resent = 0
        self._reject_log = LogThrottle(REJECT_LOG_INTERVAL)
        self._pump_scheduled = False
        spool.listener = self.pump

    def on_connected(self) -> None:
        self.connected = True
        self.backlog.connected()
        self.pump()

    def on_disconnected(self) -> None:
        self.connected = False
        self.backlog.disconnected()

    def pump(self) -> None:
        spool = self.spool
        if spool.count:
            self.backlog.poke()
        room = self.max_inflight - spool.inflight
        if not self.connected or room <= 0:
            return
        batch = min(room, PUMP_BATCH)
        link = self.link
        taken = spool.take(batch)
        for e in taken:
            expiry = None
            if e.expiry_at is not None:
                expiry = max(1, int(e.expiry_at - time.time() + 0.999))
            link.publish(e.seq, e.topic, e.payload, e.qos, e.properties, expiry)
        self.sent += len(taken)
        # more room and more to send: the rest on a later turn, local traffic in between
        if len(taken) == batch < room and spool.has_unsent and not self._pump_scheduled:
            self._pump_scheduled = True
            asyncio.get_running_loop().call_soon(self._pump_later)

    def _pump_later(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def on_completions(self, batch: list[Completion]) -> None:
        spool = self.spool
        retry: list[int] = []
        acked = 0
        for seq, ok, permanent, why in batch:
            if ok:
                spool.ack(seq)
                acked += 1
            elif permanent:
                spool.ack(seq, rejected=True)
                self._log_reject(seq, why)
            else:
                retry.append(seq)   # failed back (link down, SDK stopped): send again
        if acked:
            self.backlog.acked(acked)
        if retry:
            self.resent += spool.retry(retry)
        self.pump()

    def close(self) -> None:
        self.on_disconnected()
        self.backlog.close()

    def _log_reject(self, seq: int, why: str) -> None:
        if self._reject_log.ready():
            log.warning("cloud refused spooled message %d for good (%s); dropped, %d so far",
                        seq, why, self.spool.stats.rejected_by_cloud)
