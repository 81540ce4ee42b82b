"""DeviceClient: a thing's connection to its Lichen (or Greengrass-style) gateway.

Three threads do the work, so the application's own thread never waits on the network:

* the connection thread owns the connection's lifecycle: it finds the gateway (discovery or
  a fixed address), connects over mutual TLS, restores subscriptions, sends the offline
  queue in order within an in-flight window, removes each message on its PUBACK, and on a
  lost connection backs off (exponential, jitter, capped) and starts again;
* paho's network thread (one per connection) reads and writes the socket;
* the callback thread runs the application's callbacks in arrival order.
"""

from __future__ import annotations

import logging
import os
import queue
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import paho.mqtt.client as mqtt

from .acks import AckBoard
from .backoff import Backoff, is_permanent, most_telling
from .close_watch import CloseWatch
from .discovery import DEFAULT_DISCOVERY_PORT, Discovered, Endpoint, discover, parse_endpoint
from .dispatch import Dispatcher
from .errors import (
    ConnectError,
    ConnectRefused,
    DeviceSDKError,
    GatewayUnreachable,
    NotConnected,
    PublishRefused,
    QueueFull,
    SubscribeRefused,
)
from .handles import Delivery, Subscription
from .message import Message, Payload, check_filter, check_qos, check_topic, encode_payload
from .names import THING_NAME, THING_NAME_RULE
from .offline_queue import OfflineQueue
from .session import MQTT5, PROTOCOLS, Session, SessionSettings, puback_reason
from .subscriptions import SubscriptionTable
from .tls import client_context

if TYPE_CHECKING:
    from .shadow import Shadow

log = logging.getLogger("device_sdk")

DEFAULT_MQTT_PORT = 8883
PathLike = str | os.PathLike[str]


class DeviceClient:
    """A device's MQTT client for the gateway, over mutual TLS.

    Give the gateway's address (`host`, `port`) or its discovery endpoint (`discover=
    "HOST:PORT"`, which also supplies the CA to trust). `ca` is the CA that signed the
    gateway's certificate (`lichen ca show`); with discovery it is what the discovery
    endpoint is checked against. None means the system's trust store.

    QoS 1 publishes go through `offline_queue` (a path to a SQLite file, an OfflineQueue,
    or None for one in memory): each stays there until the gateway acknowledges it, and
    whatever a previous process left in the file is sent first.

    >>> client = DeviceClient("sensor-1", "s1.crt", "s1.key", ca="ca.pem",
    ...                       host="gateway.local")              # doctest: +SKIP
    >>> client.connect()                                          # doctest: +SKIP
    >>> client.publish("things/sensor-1/temp", {"celsius": 21.5})  # doctest: +SKIP
    """

    def __init__(self, thing_name: str, cert: PathLike, key: PathLike, *,
                 ca: PathLike | None = None, host: str | None = None,
                 port: int = DEFAULT_MQTT_PORT, discover: str | tuple[str, int] | None = None,
                 protocol: str = MQTT5, keepalive: int = 30, session_expiry: int = 0,
                 connect_timeout: float = 5.0,
                 offline_queue: PathLike | OfflineQueue | None = None,
                 max_inflight: int = 10, backoff: Backoff | None = None) -> None:
        if not isinstance(thing_name, str) or not THING_NAME.fullmatch(thing_name):
            raise ValueError(f"invalid thing name {thing_name!r}: {THING_NAME_RULE}")
        if (host is None) == (discover is None):
            raise ValueError("give either host= (the gateway's address) or discover= (its "
                             "discovery endpoint, 'HOST:PORT'), not both or neither")
        if protocol not in PROTOCOLS:
            raise ValueError(f"protocol must be '5' or '3.1.1', got {protocol!r}")
        if not 1 <= max_inflight <= 65535:
            raise ValueError(f"max_inflight must be 1..65535, got {max_inflight}")
        if not 0 <= keepalive <= 65535:
            raise ValueError(f"keepalive must be 0..65535, got {keepalive}")
        self.thing_name = thing_name
        self.protocol = "3.1.1" if protocol == "311" else protocol
        self._cert, self._key, self._ca = cert, key, ca
        client_context(cert, key, ca=ca)  # bad files fail here, not in the background
        self._static: list[Endpoint] = []
        self._discover_at: Endpoint | None = None
        if host is not None:
            self._static = [Endpoint(host, port)]
        elif isinstance(discover, tuple):
            self._discover_at = Endpoint(discover[0], int(discover[1]))
        else:
            self._discover_at = parse_endpoint(str(discover), DEFAULT_DISCOVERY_PORT)
        self._settings = SessionSettings(thing_name, self.protocol, keepalive, session_expiry,
                                         connect_timeout)
        self._backoff = backoff or Backoff()
        self._max_inflight = max_inflight
        if isinstance(offline_queue, OfflineQueue):
            self._queue, self._owns_queue = offline_queue, False
        else:
            self._queue = OfflineQueue(offline_queue if offline_queue is not None else
                                       ":memory:")
            self._owns_queue = True

        # Application callbacks (run on the callback thread).
        self.on_connect: Callable[[], None] | None = None
        self.on_disconnect: Callable[[str], None] | None = None

        self._lock = threading.RLock()
        self._changed = threading.Condition(self._lock)   # connection state, queue length
        self._events: queue.SimpleQueue = queue.SimpleQueue()
        self._acks = AckBoard()
        self._dispatcher = Dispatcher(f"device-sdk-callbacks-{thing_name}")
        self._subscriptions = SubscriptionTable()
        self._deliveries: dict[int, Delivery] = {}
        self._close_watch = CloseWatch(3)  # a message the gateway closes the connection over
        self._connect_hooks: list[Callable[[], None]] = []
        self._session: Session | None = None
        self._connected = False
        self._last_error: DeviceSDKError | None = None
        self._logged_error = ""
        self._discovered: Discovered | None = None
        self._rediscover = True
        self._session_count = 0
        self._manager: threading.Thread | None = None
        self._stopping = threading.Event()
        self._closed = False

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Connect in the background and keep reconnecting; returns at once. Publishes made
        meanwhile wait in the offline queue (QoS 1)."""
        with self._lock:
            if self._closed:
                raise DeviceSDKError("the client is closed; make a new DeviceClient")
            if self._manager is not None and self._manager.is_alive():
                return
            while True:  # what a stopped connection thread left unread means nothing now
                try:
                    self._events.get_nowait()
                except queue.Empty:
                    break
            self._stopping.clear()
            self._manager = threading.Thread(target=self._run, daemon=True,
                                             name=f"device-sdk-{self.thing_name}")
            self._manager.start()

    def connect(self, timeout: float = 30.0) -> None:
        """Start, and return once connected. Raises TLSError or ConnectRefused as soon as
        the gateway makes clear retrying will not help (certificate, client id, policy),
        DiscoveryError when discovery refuses, and GatewayUnreachable when no gateway
        answered within `timeout` seconds. On failure the client is stopped (the offline
        queue keeps what it holds); start() or connect() may be called again."""
        with self._changed:
            self._last_error = None
        self.start()
        deadline = time.monotonic() + timeout
        with self._changed:
            while not self._connected:
                error = self._last_error
                if error is not None and is_permanent(error):
                    break
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                self._changed.wait(left)
            if self._connected:
                return
            error = self._last_error
        self._stop()
        if error is not None and is_permanent(error):
            raise error
        if isinstance(error, ConnectRefused):
            raise error
        if error is not None:
            raise GatewayUnreachable(f"{error} (no connection within {timeout:g} s)")
        raise GatewayUnreachable(f"no connection to the gateway within {timeout:g} s")

    def wait_connected(self, timeout: float | None = None) -> bool:
        """True once connected; False if `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self._connected:
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
            return True

    @property
    def connected(self) -> bool:
        return self._connected

    @property
    def endpoint(self) -> Endpoint | None:
        """Where the client is connected now."""
        session = self._current_session()
        return session.endpoint if session is not None else None

    @property
    def last_error(self) -> DeviceSDKError | None:
        """Why the last connection attempt failed (None after a success)."""
        return self._last_error

    @property
    def discovered(self) -> Discovered | None:
        """The last discovery answer, when using discovery."""
        return self._discovered

    @property
    def queue(self) -> OfflineQueue:
        return self._queue

    def close(self, timeout: float = 5.0) -> None:
        """Disconnect cleanly and stop every thread. What is still queued stays in the
        queue file for the next process. Idempotent."""
        if self._closed:
            return
        self._dispatcher.stopping = True   # callbacks queued from now on are dropped
        self._stop(timeout)
        self._dispatcher.stop(timeout)
        with self._lock:
            self._closed = True
        if self._owns_queue:
            self._queue.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _stop(self, timeout: float = 5.0) -> None:
        self._stopping.set()
        self._events.put(("stop",))
        manager = self._manager
        if manager is not None and manager is not threading.current_thread():
            manager.join(timeout + self._settings.connect_timeout)
            if manager.is_alive():
                log.warning("%s: the connection thread did not stop in time", self.thing_name)
        self._manager = None

    # ------------------------------------------------------------------ publish

    def publish(self, topic: str, payload: Payload, qos: int = 1,
                retain: bool = False) -> Delivery:
        """Publish a message (bytes, str, or a dict/list sent as JSON).

        QoS 1 (the default): the message is written to the offline queue and sent, in
        order, when connected; it leaves the queue on the gateway's PUBACK. Raises QueueFull
        when the queue is full and its policy is "reject". QoS 0: sent now if connected,
        else dropped (the Delivery says so). Wait on the returned Delivery if you need to
        know it arrived."""
        check_topic(topic)
        check_qos(qos)
        data = encode_payload(payload)
        if self._closed:
            raise DeviceSDKError("the client is closed; make a new DeviceClient")
        delivery = Delivery(topic, qos)
        if qos == 0:
            session = self._current_session()
            if session is None or session.publish(topic, data, 0, retain) is None:
                delivery._fail(NotConnected(f"not connected: QoS 0 message to {topic!r} "
                                            "dropped (use QoS 1 to have it queued)"))
            else:
                delivery._succeed()
            return delivery
        with self._lock:
            enqueued = self._queue.put(topic, data, 1, retain)
            delivery.message_id = enqueued.id
            self._deliveries[enqueued.id] = delivery
            for gone in enqueued.evicted:
                evicted = self._deliveries.pop(gone, None)
                if evicted is not None:
                    evicted._fail(QueueFull(f"message to {evicted.topic!r} evicted from the "
                                            "full offline queue (when_full='drop-oldest')"))
        if enqueued.evicted:
            log.warning("%s: offline queue full: dropped %d oldest message(s)",
                        self.thing_name, len(enqueued.evicted))
        self._events.put(("wake",))
        return delivery

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until the offline queue is empty (everything acknowledged). False if
        `timeout` passes first."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while len(self._queue):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                # also woken by each PUBACK; the bound keeps a closed queue from hanging us
                self._changed.wait(0.5 if left is None else min(left, 0.5))
            return True

    # ------------------------------------------------------------------ subscribe

    def subscribe(self, topic_filter: str, callback: Callable[[Message], None], qos: int = 1,
                  timeout: float = 10.0) -> Subscription:
        """Call `callback(message)` (on the callback thread) for every message matching
        `topic_filter`. Kept across reconnects. When connected, returns once the gateway
        has granted it and raises SubscribeRefused if it did not (a policy that does not
        allow the filter); when not, it is sent on connecting."""
        check_filter(topic_filter)
        check_qos(qos)
        sub = Subscription(self, topic_filter, callback)
        self._add_subscriptions([sub], qos, timeout)
        return sub

    def unsubscribe(self, subscription: Subscription) -> None:
        subscription.unsubscribe()

    def _add_subscriptions(self, subs: list[Subscription], qos: int, timeout: float) -> None:
        with self._lock:  # atomic with _go_live's last look: no filter falls between
            wanted = self._subscriptions.add(subs, qos)
            session = self._current_session()
        if session is None or not wanted:
            return  # sent with the others on (re)connecting
        mid = session.subscribe(wanted)
        if mid is None:
            return
        try:
            codes = self._acks.wait(session.number, mid, timeout, "SUBACK")
        except NotConnected:
            return
        refused = [(f, code) for (f, _), code in zip(wanted, codes, strict=False)
                   if code >= 0x80]
        if refused:
            for sub in subs:
                if any(sub.topic_filter == f for f, _ in refused):
                    sub.unsubscribe()
            f, code = refused[0]
            raise SubscribeRefused(
                f"the gateway refused the subscription to {f!r} (reason code 0x{code:02X}): "
                f"does thing {self.thing_name!r}'s policy allow iot:Subscribe on it? (the "
                "default policy allows things/THING/... and $aws/things/THING/...)", f, code)

    def _remove_subscription(self, sub: Subscription) -> None:
        if self._subscriptions.remove(sub):
            session = self._current_session()
            if session is not None:
                session.unsubscribe([sub.topic_filter])

    def _on_message(self, msg: mqtt.MQTTMessage) -> None:
        """paho's thread: hand the message to every subscription whose filter matches."""
        try:
            topic = msg.topic
        except UnicodeDecodeError:
            log.warning("%s: dropped a message with a topic that is not UTF-8", self.thing_name)
            return
        message = Message(topic, bytes(msg.payload), msg.qos, bool(msg.retain))
        for sub in self._subscriptions.matching(topic):
            if sub.inline:
                try:
                    sub.callback(message)
                except Exception:
                    log.exception("handler for %s failed", sub.topic_filter)
            else:
                self._dispatcher.call_soon(_deliver, sub, message)

    # ------------------------------------------------------------------ for Shadow

    def shadow(self, name: str | None = None) -> Shadow:
        """The thing's classic shadow, or its named shadow `name`."""
        from .shadow import Shadow

        return Shadow(self, name)

    def _live_session(self, timeout: float) -> Session:
        """The connected session, waiting up to `timeout` for one; NotConnected if none."""
        if self._manager is None and not self._connected:
            raise NotConnected("the client is not started: call connect() or start() first")
        if not self.wait_connected(timeout):
            why = f" (last error: {self._last_error})" if self._last_error else ""
            raise NotConnected(f"not connected to the gateway within {timeout:g} s{why}")
        session = self._current_session()
        if session is None:
            raise NotConnected("the connection to the gateway just closed")
        return session

    def _current_session(self) -> Session | None:
        with self._lock:
            return self._session if self._connected else None

    def _call_soon(self, fn: Callable[..., object], *args: object) -> None:
        self._dispatcher.call_soon(fn, *args)

    # ------------------------------------------------------------------ connection thread

    def _run(self) -> None:
        attempt = 0
        while not self._stopping.is_set():
            try:
                session = self._open_session()
            except _Stopping:
                return
            except DeviceSDKError as exc:
                self._failed(exc)
                self._stopping.wait(self._backoff.delay(attempt))
                attempt += 1
                continue
            except Exception as exc:  # a bug, or something unforeseen: keep the device going
                log.exception("%s: connecting failed", self.thing_name)
                self._failed(ConnectError(f"connecting failed: {exc!r}"))
                self._stopping.wait(self._backoff.delay(attempt))
                attempt += 1
                continue
            if self._stopping.is_set():
                session.close()
                return
            reason = "closed"
            inflight: dict[int, int] = {}   # packet id -> queue id, on this session
            try:
                reason = self._serve(session, inflight)
            except DeviceSDKError as exc:
                reason = str(exc)
            except Exception as exc:
                log.exception("%s: connection handling failed", self.thing_name)
                reason = repr(exc)
            finally:
                with self._changed:
                    self._connected = False
                    self._session = None
                    self._changed.notify_all()
                session.close()
            if self._stopping.is_set():
                return
            log.warning("%s: connection to %s lost (%s); reconnecting", self.thing_name,
                        session.endpoint, reason)
            self._check_closed_over(inflight)
            if self.on_disconnect is not None and session.live:
                self._dispatcher.call_soon(self.on_disconnect, reason)
            if time.monotonic() - session.connected_at >= self._backoff.stable_after:
                attempt = 0
            else:  # dropped soon after connecting: do not hammer the gateway
                self._stopping.wait(self._backoff.delay(attempt))
                attempt += 1

    def _failed(self, exc: DeviceSDKError) -> None:
        with self._changed:
            self._last_error = exc
            self._changed.notify_all()
        if str(exc) != self._logged_error:  # once per distinct reason, not every retry
            self._logged_error = str(exc)
            log.warning("%s: %s", self.thing_name, exc)

    def _endpoints(self) -> tuple[list[Endpoint], dict]:
        """Where to try, and the trust to use there."""
        if self._discover_at is None:
            return self._static, {"ca": self._ca}
        if self._rediscover or self._discovered is None:
            try:
                self._discovered = discover(self.thing_name, self._cert, self._key,
                                            host=self._discover_at.host,
                                            port=self._discover_at.port, ca=self._ca,
                                            timeout=max(self._settings.connect_timeout, 1.0))
                self._rediscover = False
                log.info("%s: discovered %s", self.thing_name,
                         ", ".join(map(str, self._discovered.endpoints)))
            except DeviceSDKError as exc:
                if self._discovered is None:
                    raise
                log.info("%s: discovery failed (%s); using the last answer",
                         self.thing_name, exc)
        return self._discovered.endpoints, {"cadata": self._discovered.ca_pem}

    def _open_session(self) -> Session:
        endpoints, trust = self._endpoints()
        errors: list[DeviceSDKError] = []
        for endpoint in endpoints:
            if self._stopping.is_set():
                raise _Stopping
            self._session_count += 1
            context = client_context(self._cert, self._key, **trust)
            session = Session(self._session_count, endpoint, self._settings, context,
                              self._events, self._acks, self._on_message)
            try:
                session.open()
            except ConnectError as exc:
                errors.append(exc)
                continue
            log.info("%s: connected to %s (MQTT %s)", self.thing_name, endpoint,
                     self.protocol)
            return session
        self._rediscover = True  # the gateway may have moved: ask again next time
        raise most_telling(errors)

    def _serve(self, session: Session, inflight: dict[int, int]) -> str:
        """Run one connected session until it ends; the reason it ended. `inflight` is
        left holding what was sent and not acknowledged."""
        self._go_live(session)
        for hook in list(self._connect_hooks):
            self._dispatcher.call_soon(hook)
        if self.on_connect is not None:
            self._dispatcher.call_soon(self.on_connect)
        sent_upto = 0                   # the last queue id handed to paho on this session
        window = min(self._max_inflight, session.receive_maximum)
        while True:
            sent_upto = self._pump(session, inflight, sent_upto, window)
            try:
                event = self._events.get(timeout=1.0)
            except queue.Empty:
                continue
            while True:
                kind = event[0]
                if kind == "stop" or self._stopping.is_set():
                    return "client closed"
                if kind == "disconnect" and event[1] == session.number:
                    return event[2]
                if kind == "puback" and event[1] == session.number:
                    queue_id = inflight.pop(event[2], None)
                    if queue_id is not None:
                        self._acknowledged(queue_id, event[3])
                try:
                    event = self._events.get_nowait()
                except queue.Empty:
                    break

    def _go_live(self, session: Session) -> None:
        """Subscribe to every filter, then mark the session connected: nothing sent or
        requested from then on misses its reply."""
        done: set[str] = set()
        while True:
            with self._changed:
                pending = self._subscriptions.missing(done)
                if not pending:
                    self._session = session
                    self._connected = True
                    session.live = True
                    self._last_error = None
                    self._logged_error = ""
                    self._changed.notify_all()
                    return
            mid = session.subscribe(pending)
            if mid is None:
                raise NotConnected("connection lost while restoring subscriptions")
            codes = self._acks.wait(session.number, mid, self._settings.connect_timeout,
                                    "SUBACK")
            for (f, _), code in zip(pending, codes, strict=False):
                done.add(f)
                if code >= 0x80:
                    log.warning("%s: the gateway refused the subscription to %s (reason code "
                                "0x%02X)", self.thing_name, f, code)

    def _pump(self, session: Session, inflight: dict[int, int], sent_upto: int,
              window: int) -> int:
        """Hand queued messages to paho, oldest first, while the window has room."""
        while len(inflight) < window:
            rows = self._queue.peek(after=sent_upto, limit=window - len(inflight))
            if not rows:
                break
            for row in rows:
                try:
                    mid = session.publish(row.topic, row.payload, row.qos, row.retain)
                except ValueError as exc:  # cannot be sent at all: do not block the queue
                    log.error("%s: dropping queued message to %r: %s", self.thing_name,
                              row.topic, exc)
                    self._acknowledged(row.id, 0x80, str(exc))
                    sent_upto = row.id
                    continue
                if mid is None:
                    return sent_upto  # connection gone; its disconnect event follows
                inflight[mid] = row.id
                sent_upto = row.id
        return sent_upto

    def _acknowledged(self, queue_id: int, code: int, why: str = "") -> None:
        """The gateway is done with a queued message: `code` from its PUBACK (>= 0x80 a
        refusal; `why` replaces the reason code's name in the error)."""
        self._queue.remove(queue_id)
        with self._changed:
            delivery = self._deliveries.pop(queue_id, None)
            self._changed.notify_all()
        if code < 0x80:
            if delivery is not None:
                delivery._succeed()
            return
        topic = delivery.topic if delivery is not None else "?"
        why = why or f"reason code 0x{code:02X}, {puback_reason(code)}"
        log.warning("%s: the gateway refused a publish to %r (%s); dropped from the queue",
                    self.thing_name, topic, why)
        if delivery is not None:
            delivery._fail(PublishRefused(
                f"the gateway refused the publish to {topic!r} ({why}): does thing "
                f"{self.thing_name!r}'s policy allow iot:Publish on it?", topic, code))

    def _check_closed_over(self, inflight: dict[int, int]) -> None:
        """Give up a message the gateway keeps closing the connection over (how MQTT 3.1.1
        refuses a publish), so it neither comes back forever nor blocks the queue. MQTT 5
        refuses with a reason code, so there a close is only ever a lost connection."""
        if self.protocol != "3.1.1":
            return
        oldest = min(inflight.values()) if inflight else None
        closes = self._close_watch.closed(oldest)
        if closes and oldest is not None:
            self._acknowledged(oldest, 0x80, f"it closed the connection instead of "
                               f"acknowledging it, {closes} times in a row, as MQTT 3.1.1 "
                               "gateways do")

    def __repr__(self) -> str:
        where = self.endpoint or self._discover_at or (self._static[0] if self._static
                                                        else None)
        state = "connected" if self._connected else "closed" if self._closed else \
            "not connected"
        return f"<DeviceClient {self.thing_name} {state} {where}, {len(self._queue)} queued>"


class _Stopping(Exception):
    pass


def _deliver(sub: Subscription, message: Message) -> None:
    if sub.active:
        sub.callback(message)
