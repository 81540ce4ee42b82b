"""The cloud bridge: routes between the local broker and AWS IoT Core, through the spool.

Up routes attach to the broker as internal subscribers: a matching message is rewritten for
the cloud and spooled, and the publisher's PUBACK waits for the spool's commit. Down routes
are subscriptions on the cloud connection: what arrives is rewritten and published locally.
Messages that came down from the cloud never go back up (loops). The connection state and
the backlog (gateway.cloud.backlog) are kept in `status()` and in the retained
`$lichen/cloud/connection` topic, which is published again on each change of state and
every few seconds while messages wait in the spool.

With `[cloud] connections = N` the uplink has N connections, client ids THING, THING-2 ...
THING-N; each cloud topic is pinned to one of them (gateway.cloud.lane). The first one is
the primary: down routes, other components' subscriptions and publishes, and the state the
bridge reports are its own; the others only carry the spool.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path

from ..config import GatewayConfig
from ..log_throttle import LogThrottle
from ..mqtt.broker import Broker, InternalSubscriber
from ..mqtt.durability import CommitWait
from ..mqtt.message import Message
from ..mqtt.topics import InvalidTopic, compile_filter
from ..spool.queue import Spool
from ..spool.store import SpoolDB
from .backlog import BacklogWatch
from .lane import SOURCE_TOPIC, Batch, Unit
from .link import CloudLink, Incoming
from .routes import Route
from .uplink import Uplink

log = logging.getLogger("lichen.cloud")

STATUS_TOPIC = "$lichen/cloud/connection"
SPOOL_DB = "spool.db"
CLOUD_ORIGIN = "\x00cloud"     # not a possible client id: MQTT strings cannot hold U+0000
BAD_TOPIC_LOG_INTERVAL = 10.0


class _Direct:
    """The token of a publish_direct send (the spool's tokens are ints)."""

    __slots__ = ()


class CloudBridge:
    def __init__(self, broker: Broker, cfg: GatewayConfig, state_dir: Path) -> None:
        self.broker = broker
        self.cfg = cfg
        self.settings = cfg.cloud
        self.thing = cfg.cloud.thing_name or ""
        self.up = [r for r in cfg.routes if r.direction == "up"]
        self.down: list[tuple[Route, str, Callable[[str], bool]]] = []  # filter, matcher
        for r in cfg.routes:
            if r.direction == "down":
                cloud_filter = r.source_filter(self.thing)
                self.down.append((r, cloud_filter, compile_filter(cloud_filter)))
        self.spool = Spool(cfg.spool, SpoolDB(state_dir / SPOOL_DB, cfg.spool.sync))
        self.links = [CloudLink(cfg.cloud, state_dir, self._on_state, self._from_cloud,
                                self._on_completions)]
        for k in range(2, cfg.cloud.connections + 1):
            self.links.append(CloudLink(
                cfg.cloud, state_dir, partial(self._on_lane_state, k - 1), _ignore,
                partial(self._on_lane_completions, k - 1), client_id=f"{self.thing}-{k}"))
        self.link = self.links[0]   # the primary: services and down routes use it
        backlog = BacklogWatch(self.spool, cfg.cloud.backlog_warn_after_s,
                               self._publish_connection)
        batches = {r.name: r.batch for r in self.up if r.batch is not None}
        self.uplink = Uplink(self.spool, [self._sender(link) for link in self.links],
                             cfg.cloud.max_inflight, backlog, batches)
        self.state = "stopped"
        self.since = time.time()
        self.last_error: str | None = None
        self.connects = 0
        self.connection_failures = 0
        self.received = 0
        self.dropped_bad_topic = 0
        self._subs: list[InternalSubscriber] = []
        self._state_listeners: list[Callable[[str], None]] = []
        self._cloud_subs: list[tuple[str, int, Callable[[str], bool],
                                     Callable[[Incoming], None]]] = []
        self._direct: dict[_Direct, asyncio.Future] = {}
        self._bad_topic_log = LogThrottle(BAD_TOPIC_LOG_INTERVAL)
        self._stopping = False

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.spool.open(loop)
        self.broker.add_commit_source(self.spool.db)
        for route in self.up:
            self._subs.append(self.broker.subscribe_callback(
                route.source_filter(self.thing), self._spooler(route)))
        for link in self.links:
            link.start(loop)
        self._on_state("connecting", None)
        log.info("cloud: %s:%d as %s (%d connections); %d up and %d down routes; spool %d "
                 "messages", self.settings.endpoint, self.settings.port, self.thing,
                 len(self.links), len(self.up), len(self.down), self.spool.count)

    async def stop(self) -> None:
        for sub in self._subs:
            self.broker.unsubscribe_callback(sub)
        self._subs.clear()
        self._stopping = True
        self.uplink.close()
        await asyncio.gather(*(link.stop() for link in self.links))
        self._set_state("stopped", None)
        await self.spool.close()

    # ---------------------------------------------------------------- local -> cloud

    def _spooler(self, route: Route):
        thing = self.thing
        offer = self.spool.offer
        batched = route.batch is not None

        def spool_message(msg: Message) -> CommitWait | None:
            if msg.origin == CLOUD_ORIGIN:
                return None
            try:
                topic = route.target_topic(msg.topic, thing)
            except InvalidTopic as exc:
                self._bad_topic(route, msg.topic, exc)
                return None
            # a batch carries no MQTT properties, but each message's local topic
            props = {SOURCE_TOPIC: msg.topic} if batched else msg.properties
            return offer(route.name, topic, msg.payload, route.qos, props, msg.expiry_at,
                         msg.qos)

        return spool_message

    @staticmethod
    def _sender(link: CloudLink) -> Callable[[Unit], None]:
        publish = link.publish

        def send(unit: Unit) -> None:
            if type(unit) is Batch:
                publish(unit, unit.topic, unit.payload, unit.qos, unit.properties, None)
                return
            expiry = None
            if unit.expiry_at is not None:
                expiry = max(1, int(unit.expiry_at - time.time() + 0.999))
            publish(unit.seq, unit.topic, unit.payload, unit.qos, unit.properties, expiry)

        return send

    def _bad_topic(self, route: Route, topic: str, exc: Exception) -> None:
        self.dropped_bad_topic += 1
        if self._bad_topic_log.ready():
            log.warning("route %s: cannot rewrite %r for the cloud (%s); not sent",
                        route.name, topic, exc)

    def _on_completions(self, batch: list) -> None:
        spooled = batch
        if self._direct:  # publish_direct's futures are answered here, the rest is the spool's
            spooled = []
            for item in batch:
                future = self._direct.pop(item[0], None) if type(item[0]) is _Direct else None
                if future is None:
                    spooled.append(item)
                elif not future.done():
                    future.set_result((item[1], item[3]))
        if spooled:
            self.uplink.on_completions(spooled, 0)

    def _on_lane_completions(self, lane: int, batch: list) -> None:
        self.uplink.on_completions(batch, lane)

    def _on_lane_state(self, lane: int, state: str, why: str | None) -> None:
        """A connection other than the primary: it only carries the spool."""
        if self._stopping:
            return
        if state == "connected":
            self.uplink.on_connected(lane)
            log.info("cloud: connection %d connected", lane + 1)
        elif state == "disconnected":
            self.uplink.on_disconnected(lane)
            log.warning("cloud: connection %d lost (%s), reconnecting", lane + 1, why)

    # ------------------------------------------------- other components on the connection

    def add_state_listener(self, listener: Callable[[str], None]) -> None:
        """listener(state) on the loop at every change: "connecting", "connected",
        "disconnected", "stopped". Components that talk to the cloud themselves (deployment
        Jobs, shadow sync) resume their work on "connected"."""
        self._state_listeners.append(listener)

    def subscribe_cloud(self, topic_filter: str, qos: int,
                        callback: Callable[[Incoming], None]) -> None:
        """Receive cloud messages matching topic_filter (subscribed now if connected, and again
        on every connection); they do not go through the down routes' republishing."""
        self._cloud_subs.append((topic_filter, qos, compile_filter(topic_filter), callback))
        if self.state == "connected":
            self.link.subscribe([(topic_filter, qos)])

    def publish_direct(self, topic: str, payload: bytes, qos: int = 1) -> asyncio.Future:
        """Publish to the cloud now, outside the spool: for a component that keeps its own
        durable state and retries (job status updates, shadow sync requests). The future
        resolves to (acknowledged, why) when the cloud answers or the attempt fails; while
        disconnected it resolves at once to (False, "not connected")."""
        future = asyncio.get_running_loop().create_future()
        if self.state != "connected":
            future.set_result((False, "not connected"))
            return future
        token = _Direct()
        self._direct[token] = future
        self.link.publish(token, topic, payload, qos, {}, None)
        return future

    # ---------------------------------------------------------------- cloud -> local

    def _from_cloud(self, incoming: Incoming) -> None:
        self.received += 1
        for _, _, match, callback in self._cloud_subs:
            if match(incoming.topic):
                try:
                    callback(incoming)
                except Exception:  # one component's bug must not stop the others
                    log.exception("cloud subscriber failed on %s", incoming.topic)
        for route, _, match in self.down:
            if not match(incoming.topic):
                continue
            try:
                topic = route.target_topic(incoming.topic, self.thing)
                self.broker.publish(topic, incoming.payload, min(route.qos, incoming.qos),
                                    False, incoming.properties, origin=CLOUD_ORIGIN)
            except (InvalidTopic, ValueError) as exc:
                self._bad_topic(route, incoming.topic, exc)

    # ---------------------------------------------------------------- connection state

    def _on_state(self, state: str, why: str | None) -> None:
        if self._stopping:
            return
        if state == "connected":
            self.connects += 1
            filters = [(f, r.qos) for r, f, _ in self.down]
            filters += [(f, qos) for f, qos, _, _ in self._cloud_subs]
            if filters:
                self.link.subscribe(filters)
            self.uplink.on_connected(0)
            log.info("cloud: connected to %s:%d (%d messages spooled)",
                     self.settings.endpoint, self.settings.port, self.spool.count)
        elif state == "disconnected":
            self.uplink.on_disconnected(0)
            log.warning("cloud: connection lost (%s); %d messages spooled, reconnecting",
                        why, self.spool.count)
        elif state == "connecting" and why is not None:
            self.connection_failures += 1
            if self.connection_failures == 1 or self.connection_failures % 20 == 0:
                log.warning("cloud: cannot connect to %s:%d (%s); %d attempts so far",
                            self.settings.endpoint, self.settings.port, why,
                            self.connection_failures)
        if state == "connecting" and self.state == "disconnected":
            state = "disconnected"  # still down: keep saying so while retrying
        self._set_state(state, why)

    def _set_state(self, state: str, why: str | None) -> None:
        if why is not None:
            self.last_error = why
        if state == self.state and why is None:
            return
        changed = state != self.state
        self.state = state
        if changed:
            self.since = time.time()
            if state != "connected":  # what was sent directly failed with the connection
                for future in self._direct.values():
                    if not future.done():
                        future.set_result((False, f"connection {state}"))
                self._direct.clear()
            for listener in self._state_listeners:
                try:
                    listener(state)
                except Exception:
                    log.exception("cloud state listener failed")
        self._publish_connection()

    def _publish_connection(self) -> None:
        try:
            self.broker.publish(STATUS_TOPIC, json.dumps(self.connection_document()), 1, True)
        except Exception:  # the broker is stopping; the state is in status() anyway
            log.debug("cannot publish %s", STATUS_TOPIC, exc_info=True)

    def backlog(self) -> dict:
        """Depth, oldest message's age, drain rate and time to drain."""
        return {"messages": self.spool.count, "bytes": self.spool.bytes,
                **self.uplink.backlog.figures()}

    def _state_document(self) -> dict:
        return {"state": self.state, "endpoint": f"{self.settings.endpoint}:{self.settings.port}",
                "thing_name": self.thing, "since": round(self.since, 3),
                "last_error": self.last_error}

    def connection_document(self) -> dict:
        """The retained $lichen/cloud/connection payload."""
        return {**self._state_document(), "backlog": self.backlog()}

    def status(self) -> dict:
        retry_in = self.link.retry_in
        return {**self._state_document(), "connects": self.connects,
                "connection_failures": self.connection_failures,
                "reconnect_in_s": None if retry_in is None else round(retry_in, 1),
                "sent": self.uplink.sent, "resent": self.uplink.resent,
                "received": self.received, "dropped_bad_topic": self.dropped_bad_topic,
                "routes_up": len(self.up), "routes_down": len(self.down),
                "spool": {**self.spool.status(), **self.uplink.backlog.figures()},
                "connections": [{"client_id": link.client_id, "state": link.state,
                                 "connects": link.connects, **lane}
                                for link, lane in zip(self.links, self.uplink.status(),
                                                      strict=True)]}


def _ignore(_incoming: Incoming) -> None:
    """The extra connections subscribe to nothing."""


def offline_status(cfg: GatewayConfig) -> dict:
    """The status of a gateway with no cloud configured."""
    return {"state": "offline", "endpoint": None, "reason": "no cloud.endpoint configured",
            "routes_up": sum(r.direction == "up" for r in cfg.routes),
            "routes_down": sum(r.direction == "down" for r in cfg.routes)}
