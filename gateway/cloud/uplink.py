"""Sends the spool to the cloud: in order, a bounded window in flight, nothing removed from
the spool before the cloud acknowledged it.

While connected, the window is topped up whenever messages arrive or acknowledgements come
back, one batch per loop turn, so a long backlog drains as fast as the link acknowledges
and local traffic keeps its turns on the event loop. When the link drops, what was in
flight fails back (or is rewound on the next connect) and goes first again: delivery is
at least once, in spool order, which keeps per-topic order.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ..log_throttle import LogThrottle
from ..spool.queue import Spool
from .link import CloudLink, Completion

log = logging.getLogger("lichen.cloud")

REJECT_LOG_INTERVAL = 10.0
PUMP_BATCH = 32            # publishes handed to the SDK per loop turn


class Uplink:
    def __init__(self, spool: Spool, link: CloudLink, max_inflight: int) -> None:
        self.spool = spool
        self.link = link
        self.max_inflight = max_inflight
        self.connected = False
        self.epoch = 0                 # connection number: completions of old ones are stale
        self.sent = 0
        self.resent = 0
        self._reject_log = LogThrottle(REJECT_LOG_INTERVAL)
        self._pump_scheduled = False
        spool.listener = self.pump

    def on_connected(self) -> None:
        self.epoch += 1
        self.connected = True
        rewound = self.spool.rewind()
        if rewound:
            self.resent += rewound
            log.info("cloud: sending %d unacknowledged messages again", rewound)
        self.pump()

    def on_disconnected(self) -> None:
        self.connected = False

    def pump(self) -> None:
        spool = self.spool
        room = self.max_inflight - spool.inflight
        if not self.connected or room <= 0:
            return
        if room > PUMP_BATCH:  # the rest on a later turn: local traffic goes in between
            room = PUMP_BATCH
            if not self._pump_scheduled:
                self._pump_scheduled = True
                asyncio.get_running_loop().call_soon(self._pump_later)
        link = self.link
        token_epoch = self.epoch
        for e in spool.take(room):
            expiry = None
            if e.expiry_at is not None:
                expiry = max(1, int(e.expiry_at - time.time() + 0.999))
            link.publish((token_epoch, e.seq), e.topic, e.payload, e.qos, e.properties, expiry)
            self.sent += 1

    def _pump_later(self) -> None:
        self._pump_scheduled = False
        self.pump()

    def on_completions(self, batch: list[Completion]) -> None:
        spool = self.spool
        retry: list[int] = []
        for (epoch, seq), ok, permanent, why in batch:
            if ok:
                spool.ack(seq)
            elif permanent:
                spool.ack(seq, rejected=True)
                self._log_reject(seq, why)
            elif epoch == self.epoch:
                retry.append(seq)   # failed on the current connection: send again
            # else: from a connection that is gone; on_connected rewound it already
        if retry:
            self.resent += spool.retry(retry)
        self.pump()

    def _log_reject(self, seq: int, why: str) -> None:
        if self._reject_log.ready():
            log.warning("cloud refused spooled message %d for good (%s); dropped, %d so far",
                        seq, why, self.spool.stats.rejected_by_cloud)
