"""Durability against real Lichen processes: retained messages and persistent sessions (with
the messages queued for them) survive a graceful restart and `kill -9`.

Every client here is paho-mqtt on its own network thread, with automatic reconnection off so
that a broker going away is seen, not papered over. Every wait is bounded.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import paho.mqtt.client as paho
import pytest
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests.conftest import BrokerProcess

V311, V5 = 4, 5
WAIT = 10.0   # the bound on any one wait for the broker
QUIET = 0.5   # how long to listen when checking that nothing arrives


def uid(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:12]}"


class Client:
    """A paho client with blocking, bounded calls and a list of what it received."""

    def __init__(self, port: int, client_id: str, version: int = V5, clean: bool = True,
                 expiry: int | None = None, inflight: int = 20) -> None:
        self.port = port
        self.version = version
        self.clean = clean
        self.expiry = expiry
        protocol = paho.MQTTv5 if version == V5 else paho.MQTTv311
        self.paho = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id,
                                protocol=protocol,
                                clean_session=None if version == V5 else clean,
                                reconnect_on_failure=False)
        self.paho.max_inflight_messages_set(inflight)
        self.paho.max_queued_messages_set(0)
        self._cond = threading.Condition()
        self.connack: tuple[bool, int] | None = None
        self.disconnected = False
        self.subacks: dict[int, list[int]] = {}
        self.acked: dict[int, int] = {}   # mid -> reason code of the PUBACK / PUBCOMP
        self.messages: list[paho.MQTTMessage] = []
        self.paho.on_connect = self._on_connect
        self.paho.on_disconnect = self._on_disconnect
        self.paho.on_subscribe = self._on_subscribe
        self.paho.on_publish = self._on_publish
        self.paho.on_message = self._on_message

    # -- callbacks (paho's thread)

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.connack = (bool(flags.session_present), reason_code.value)
            self._cond.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cond:
            self.disconnected = True
            self._cond.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cond:
            self.subacks[mid] = [c.value for c in reason_codes]
            self._cond.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cond:
            self.acked[mid] = reason_code.value
            self._cond.notify_all()

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        with self._cond:
            self.messages.append(message)
            self._cond.notify_all()

    # -- blocking calls

    def wait_for(self, predicate: Callable[[], bool], timeout: float = WAIT) -> bool:
        with self._cond:
            return self._cond.wait_for(predicate, timeout)

    def connect(self) -> bool:
        """Connect; return the CONNACK's session present flag."""
        props = None
        if self.version == V5 and self.expiry is not None:
            props = Properties(PacketTypes.CONNECT)
            props.SessionExpiryInterval = self.expiry
        kwargs = {"clean_start": self.clean, "properties": props} if self.version == V5 else {}
        self.paho.connect("127.0.0.1", self.port, keepalive=30, **kwargs)
        self.paho.loop_start()
        assert self.wait_for(lambda: self.connack is not None), "no CONNACK"
        present, code = self.connack
        assert code == 0, f"CONNACK refused with {code:#x}"
        return present

    def subscribe(self, topic_filter: str, qos: int) -> None:
        result, mid = self.paho.subscribe(topic_filter, qos)
        assert result == paho.MQTT_ERR_SUCCESS
        assert self.wait_for(lambda: mid in self.subacks), "no SUBACK"
        assert self.subacks[mid] == [qos], self.subacks[mid]

    def publish(self, topic: str, payload: bytes, qos: int = 1,
                retain: bool = False) -> paho.MQTTMessageInfo:
        info = self.paho.publish(topic, payload, qos, retain)
        assert info.rc == paho.MQTT_ERR_SUCCESS, info.rc
        return info

    def publish_acked(self, topic: str, payload: bytes, qos: int = 1,
                      retain: bool = False) -> None:
        """Publish and wait for the broker's PUBACK (QoS 1) or PUBCOMP (QoS 2)."""
        info = self.publish(topic, payload, qos, retain)
        assert self.wait_for(lambda: info.mid in self.acked), f"{payload!r} not acknowledged"
        assert self.acked[info.mid] < 0x80, f"refused with {self.acked[info.mid]:#x}"

    def wait_messages(self, n: int, timeout: float = WAIT) -> list[paho.MQTTMessage]:
        self.wait_for(lambda: len(self.messages) >= n, timeout)
        with self._cond:
            return list(self.messages)

    def payloads(self, topic: str | None = None) -> list[bytes]:
        with self._cond:
            return [m.payload for m in self.messages if topic is None or m.topic == topic]

    def close(self) -> None:
        """A clean DISCONNECT (when still connected), then stop the network thread."""
        if self.connack is not None and not self.disconnected:
            self.paho.disconnect()
            self.wait_for(lambda: self.disconnected, 5)
        self.paho.loop_stop()


@pytest.fixture
def clients() -> Iterator[Callable[..., Client]]:
    """Factory for Clients that are all closed at teardown."""
    made: list[Client] = []

    def make(port: int, client_id: str | None = None, **kwargs) -> Client:
        client = Client(port, client_id or uid("p"), **kwargs)
        made.append(client)
        return client

    yield make
    for client in made:
        client.close()


def restart(broker: BrokerProcess, how: str) -> None:
    broker.restart(hard=how == "kill")


def store_barrier(make: Callable[..., Client], broker: BrokerProcess) -> None:
    """Wait until every state change the broker made so far is on disk.

    A retained QoS 1 publish is PUBACKed only after its write is committed, and writes are
    committed in order, so once it is acknowledged so is everything queued before it.
    """
    c = make(broker.port)
    c.connect()
    topic = uid("barrier")
    c.publish_acked(topic, b"sync", qos=1, retain=True)
    c.publish_acked(topic, b"", qos=1, retain=True)
    c.close()


RESTARTS = pytest.mark.parametrize("how", ["graceful", "kill"])
VERSIONS = pytest.mark.parametrize("version", [V311, V5], ids=["v311", "v5"])


def persistent(make: Callable[..., Client], broker: BrokerProcess, client_id: str,
               version: int, expiry: int = 600) -> Client:
    """A client that resumes a persistent session: 3.1.1 clean session 0, or 5.0
    clean start 0 with a session expiry interval."""
    if version == V5:
        return make(broker.port, client_id, version=V5, clean=False, expiry=expiry)
    return make(broker.port, client_id, version=V311, clean=False)


# ====================================================================== retained messages


@RESTARTS
def test_retained_message_survives_restart(broker: BrokerProcess, clients, how: str) -> None:
    topic = uid("ret") + "/temp"
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(topic, b"21.5", qos=1, retain=True)
    pub.close()

    restart(broker, how)

    sub = clients(broker.port)
    sub.connect()
    sub.subscribe(topic, 1)
    [msg] = sub.wait_messages(1)
    assert (msg.topic, msg.payload, msg.retain, msg.qos) == (topic, b"21.5", True, 1)


@RESTARTS
def test_retained_replacement_survives_restart(broker: BrokerProcess, clients, how: str) -> None:
    topic = uid("ret") + "/state"
    pub = clients(broker.port)
    pub.connect()
    for i in range(5):
        pub.publish_acked(topic, f"v{i}".encode(), qos=1, retain=True)
    pub.close()

    restart(broker, how)

    sub = clients(broker.port)
    sub.connect()
    sub.subscribe(topic, 1)
    sub.wait_messages(1)
    assert not sub.wait_for(lambda: len(sub.messages) > 1, QUIET)
    assert sub.payloads() == [b"v4"]


@RESTARTS
def test_cleared_retained_message_stays_cleared(broker: BrokerProcess, clients,
                                                how: str) -> None:
    prefix = uid("ret")
    cleared, kept = f"{prefix}/cleared", f"{prefix}/kept"
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(cleared, b"old", qos=1, retain=True)
    pub.publish_acked(kept, b"marker", qos=1, retain=True)
    pub.publish_acked(cleared, b"", qos=1, retain=True)   # clears it
    pub.close()

    restart(broker, how)

    sub = clients(broker.port)
    sub.connect()
    sub.subscribe(f"{prefix}/#", 1)
    sub.wait_messages(1)
    assert not sub.wait_for(lambda: len(sub.messages) > 1, QUIET)
    assert [(m.topic, m.payload) for m in sub.messages] == [(kept, b"marker")]


def test_retained_messages_survive_repeated_kills(broker: BrokerProcess, clients) -> None:
    """Each generation's acknowledged retained writes are there after the next kill -9."""
    prefix = uid("ret")
    expected: dict[str, bytes] = {}
    for generation in range(3):
        pub = clients(broker.port)
        pub.connect()
        for i in range(20):
            topic = f"{prefix}/{i}"
            if (i + generation) % 4 == 0 and topic in expected:
                pub.publish_acked(topic, b"", qos=1, retain=True)
                del expected[topic]
            else:
                payload = f"g{generation}-{i}".encode()
                pub.publish_acked(topic, payload, qos=1, retain=True)
                expected[topic] = payload
        pub.close()
        broker.restart(hard=True)

    sub = clients(broker.port)
    sub.connect()
    sub.subscribe(f"{prefix}/#", 1)
    sub.wait_messages(len(expected))
    assert not sub.wait_for(lambda: len(sub.messages) > len(expected), QUIET)
    assert {m.topic: m.payload for m in sub.messages} == expected
    assert all(m.retain for m in sub.messages)


# ====================================================================== persistent sessions


@VERSIONS
@RESTARTS
def test_subscriptions_survive_restart(broker: BrokerProcess, clients, version: int,
                                       how: str) -> None:
    topic = uid("sess") + "/cmd"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, version)
    assert sub.connect() is False
    sub.subscribe(topic, 1)
    sub.close()
    store_barrier(clients, broker)

    restart(broker, how)

    sub = persistent(clients, broker, cid, version)
    assert sub.connect() is True, "the session did not survive the restart"
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(topic, b"after restart", qos=1)
    [msg] = sub.wait_messages(1)
    assert (msg.topic, msg.payload, msg.qos) == (topic, b"after restart", 1)


@VERSIONS
def test_session_of_connected_client_survives_kill(broker: BrokerProcess, clients,
                                                   version: int) -> None:
    """The broker dies while the persistent client is connected: no DISCONNECT ever
    happened, and the session (with its subscription) is still there."""
    topic = uid("sess") + "/cmd"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, version)
    sub.connect()
    sub.subscribe(topic, 2)
    store_barrier(clients, broker)

    broker.kill()
    assert sub.wait_for(lambda: sub.disconnected), "the client did not see the broker die"
    sub.close()
    broker.start()

    sub = persistent(clients, broker, cid, version)
    assert sub.connect() is True
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(topic, b"hello again", qos=2)
    [msg] = sub.wait_messages(1)
    assert (msg.payload, msg.qos) == (b"hello again", 2)


@VERSIONS
@RESTARTS
def test_offline_messages_survive_restart_in_order(broker: BrokerProcess, clients,
                                                   version: int, how: str) -> None:
    """A burst of QoS 1 and QoS 2 messages, each PUBACKed / PUBCOMPed to the publisher while
    the persistent subscriber was offline, all arrive after the restart, in order."""
    prefix = uid("sess")
    t1, t2 = f"{prefix}/q1", f"{prefix}/q2"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, version)
    sub.connect()
    sub.subscribe(f"{prefix}/#", 2)
    sub.close()

    pub = clients(broker.port, version=version, inflight=50)
    pub.connect()
    burst = 200
    infos = []
    for i in range(burst):
        infos.append(pub.publish(t1, b"q1-%04d" % i, qos=1))
        infos.append(pub.publish(t2, b"q2-%04d" % i, qos=2))
    mids = {info.mid for info in infos}
    assert pub.wait_for(lambda: mids <= pub.acked.keys()), \
        f"{len(mids - pub.acked.keys())} publishes never acknowledged"
    assert all(pub.acked[m] < 0x80 for m in mids)
    pub.close()

    restart(broker, how)

    sub = persistent(clients, broker, cid, version)
    assert sub.connect() is True
    sub.wait_messages(2 * burst)
    assert sub.payloads(t1) == [b"q1-%04d" % i for i in range(burst)]
    assert sub.payloads(t2) == [b"q2-%04d" % i for i in range(burst)]
    assert {m.qos for m in sub.messages if m.topic == t2} == {2}
    assert not sub.wait_for(lambda: len(sub.messages) > 2 * burst, QUIET), "duplicates"


def test_offline_messages_survive_two_kills(broker: BrokerProcess, clients) -> None:
    """Messages queued before one kill -9 and after it are all there after the second."""
    topic = uid("sess") + "/t"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, V5)
    sub.connect()
    sub.subscribe(topic, 1)
    sub.close()
    expected = []
    for generation in range(2):
        pub = clients(broker.port)
        pub.connect()
        for i in range(50):
            payload = f"g{generation}-{i:03d}".encode()
            pub.publish_acked(topic, payload, qos=1)
            expected.append(payload)
        pub.close()
        broker.restart(hard=True)

    sub = persistent(clients, broker, cid, V5)
    assert sub.connect() is True
    sub.wait_messages(len(expected))
    assert sub.payloads() == expected


def test_partially_received_session_resumes_after_kill(broker: BrokerProcess,
                                                       clients) -> None:
    """A subscriber takes part of its queue, goes away; after kill -9 it gets the rest, and
    nothing it already acknowledged comes back."""
    topic = uid("sess") + "/t"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, V5)
    sub.connect()
    sub.subscribe(topic, 1)
    sub.close()
    pub = clients(broker.port)
    pub.connect()
    for i in range(100):
        pub.publish_acked(topic, b"%03d" % i, qos=1)
    pub.close()

    sub = persistent(clients, broker, cid, V5)
    assert sub.connect() is True
    sub.wait_messages(100)
    first = sub.payloads()
    assert first == [b"%03d" % i for i in range(100)]
    sub.close()   # every message was PUBACKed by paho before this DISCONNECT

    pub = clients(broker.port)
    pub.connect()
    for i in range(100, 150):
        pub.publish_acked(topic, b"%03d" % i, qos=1)
    pub.close()
    broker.restart(hard=True)

    sub = persistent(clients, broker, cid, V5)
    assert sub.connect() is True
    sub.wait_messages(50)
    assert not sub.wait_for(lambda: len(sub.messages) > 50, QUIET)
    assert sub.payloads() == [b"%03d" % i for i in range(100, 150)]



def load_store(make: Callable[..., Client], broker: BrokerProcess) -> None:
    """Give the store's writer a backlog: 30 MB of retained QoS 0 writes (not waited for)."""
    load = make(broker.port)
    load.connect()
    prefix = uid("load")
    for i in range(300):
        load.publish(f"{prefix}/{i}", b"x" * 100_000, qos=0, retain=True)
    # Once this (not durable, so not held) PUBACK is back, the broker has taken all of the
    # above and queued their writes.
    load.publish_acked(uid("nobody") + "/t", b"sync", qos=1)


def test_subscription_acknowledged_under_store_load_survives_kill(broker: BrokerProcess,
                                                                  clients) -> None:
    """A SUBACKed subscription of a persistent session is there after kill -9, even when
    the store was busy when it was made."""
    topic = uid("sess") + "/t"
    cid = uid("sub")
    sub = persistent(clients, broker, cid, V5)
    sub.connect()
    store_barrier(clients, broker)
    load_store(clients, broker)
    sub.subscribe(topic, 1)
    broker.kill()
    broker.start()
    sub = persistent(clients, broker, cid, V5)
    assert sub.connect() is True
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(topic, b"x", qos=1)
    assert sub.wait_messages(1, 3), "the acknowledged subscription was lost"


def test_session_acknowledged_under_store_load_survives_kill(broker: BrokerProcess,
                                                             clients) -> None:
    """A persistent session the CONNACK confirmed is there after kill -9, even when the
    store was busy when it was made."""
    cid = uid("sub")
    load_store(clients, broker)
    assert persistent(clients, broker, cid, V5).connect() is False
    broker.kill()
    broker.start()
    assert persistent(clients, broker, cid, V5).connect() is True, "the session was lost"


# ====================================================================== session expiry


def test_session_expires_after_its_interval(broker: BrokerProcess, clients) -> None:
    short, long_ = uid("short"), uid("long")
    for cid, expiry in ((short, 1), (long_, 60)):
        c = clients(broker.port, cid, version=V5, clean=False, expiry=expiry)
        assert c.connect() is False
        c.subscribe(uid("exp") + "/t", 1)
        c.close()

    time.sleep(2.5)   # the point of the test is that this much time passes

    c = clients(broker.port, short, version=V5, clean=False, expiry=1)
    assert c.connect() is False, "a session with a 1 s expiry was still there after 2.5 s"
    c = clients(broker.port, long_, version=V5, clean=False, expiry=60)
    assert c.connect() is True, "a session with a 60 s expiry was gone after 2.5 s"


def test_session_resumed_within_its_interval(broker: BrokerProcess, clients) -> None:
    cid = uid("exp")
    c = clients(broker.port, cid, version=V5, clean=False, expiry=5)
    c.connect()
    c.close()
    c = clients(broker.port, cid, version=V5, clean=False, expiry=5)
    assert c.connect() is True


def test_session_expires_while_the_broker_is_down(broker: BrokerProcess, clients) -> None:
    """Expiry counts from the disconnect, across a restart: a 1 s session is gone when the
    broker comes back 2.5 s later, and a 600 s one is not."""
    short, long_ = uid("short"), uid("long")
    for cid, expiry in ((short, 1), (long_, 600)):
        c = clients(broker.port, cid, version=V5, clean=False, expiry=expiry)
        c.connect()
        c.subscribe(uid("exp") + "/t", 1)
        c.close()
    broker.stop()
    time.sleep(2.5)   # the point of the test is that this much time passes
    broker.start()
    assert clients(broker.port, short, version=V5, clean=False, expiry=1).connect() is False
    assert clients(broker.port, long_, version=V5, clean=False, expiry=600).connect() is True


def test_clean_start_discards_a_stored_session(broker: BrokerProcess, clients) -> None:
    topic = uid("sess") + "/t"
    cid = uid("sub")
    c = clients(broker.port, cid, version=V5, clean=False, expiry=600)
    c.connect()
    c.subscribe(topic, 1)
    c.close()
    store_barrier(clients, broker)
    broker.restart(hard=True)
    c = clients(broker.port, cid, version=V5, clean=True, expiry=600)
    assert c.connect() is False
    c.close()
    store_barrier(clients, broker)
    broker.restart(hard=True)
    c = clients(broker.port, cid, version=V5, clean=False, expiry=600)
    assert c.connect() is True   # the session made by the clean start, with no subscription
    pub = clients(broker.port)
    pub.connect()
    pub.publish_acked(topic, b"x", qos=1)
    assert not c.wait_for(lambda: bool(c.messages), QUIET)


# ====================================================================== kill -9 mid-burst


@VERSIONS
def test_kill_mid_burst_loses_no_acknowledged_message(tmp_path: Path, clients,
                                                      version: int) -> None:
    """kill -9 while a publisher streams QoS 1 messages to an offline persistent subscriber:
    every message the publisher saw PUBACKed is delivered after the restart (at least once),
    and messages appear in publish order (by first appearance)."""
    broker = BrokerProcess(tmp_path / "state",
                           config="[mqtt]\nmax_queued_messages = 100000\n").start()
    try:
        topic = uid("burst") + "/t"
        cid = uid("sub")
        sub = persistent(clients, broker, cid, version)
        sub.connect()
        sub.subscribe(topic, 1)
        sub.close()

        pub = clients(broker.port, version=version, inflight=100)
        pub.connect()
        total = 20_000
        index_of_mid: dict[int, int] = {}
        for i in range(total):
            index_of_mid[pub.publish(topic, b"%06d" % i, qos=1).mid] = i
        # Kill once a good part (but not all) of the burst has been acknowledged.
        assert pub.wait_for(lambda: len(pub.acked) >= 1000), "the burst did not get going"
        broker.kill()
        assert pub.wait_for(lambda: pub.disconnected)
        with pub._cond:
            acked = sorted(index_of_mid[m] for m, code in pub.acked.items() if code < 0x80)
        assert len(acked) < total, "the whole burst was acknowledged before the kill"
        pub.close()

        broker.start()
        sub = persistent(clients, broker, cid, version)
        assert sub.connect() is True
        want = {b"%06d" % i for i in acked}
        assert sub.wait_for(lambda: want <= {m.payload for m in sub.messages}), \
            f"acknowledged but lost: {sorted(want - set(sub.payloads()))[:10]}..."
        first_seen: list[int] = []
        seen: set[bytes] = set()
        for payload in sub.payloads():
            if payload not in seen:
                seen.add(payload)
                first_seen.append(int(payload))
        assert first_seen == sorted(first_seen), "delivered out of order"
    finally:
        broker.stop()
