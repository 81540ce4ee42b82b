"""Connecting: CONNECT/CONNACK basics, client identifiers, session takeover, keep alive."""

from __future__ import annotations

import time

import pytest

from .helpers import (
    CONNACK,
    DISCONNECT,
    PINGRESP,
    V5,
    V311,
    Will,
    connect_packet,
    parse_ack,
    pingreq_packet,
    unique_id,
)

pytestmark = pytest.mark.timeout(30)


def test_connect_and_disconnect(mqtt, version, topic):
    c = mqtt(version)
    assert c.connack.reason_code == 0
    assert c.connack.session_present is False
    assert c.connected
    # The connection is usable, then ends cleanly on DISCONNECT.
    assert c.subscribe(topic, 1) == [1]
    c.publish(topic, b"hello", 1)
    assert c.message().payload == b"hello"
    c.disconnect()
    assert not c.connected


def test_raw_connect_connack_shape(raw, version):
    r = raw(version)
    ack = r.connect(unique_id(), clean=True)
    assert ack.code == 0
    assert ack.session_present is False
    # The broker then answers a PINGREQ, showing the connection is established.
    r.send(pingreq_packet())
    pkt = r.expect(PINGRESP)
    assert pkt.body == b""


def test_many_clients_at_once(mqtt, version, topic):
    subscribers = [mqtt(version) for _ in range(10)]
    for s in subscribers:
        assert s.subscribe(topic, 1) == [1]
    pub = mqtt(version)
    pub.publish(topic, b"fan-out", 1)
    for s in subscribers:
        m = s.message()
        assert (m.topic, m.payload) == (topic, b"fan-out")


# -- client identifiers -------------------------------------------------------------------


def test_zero_length_client_id_with_clean_session_accepted(mqtt, version, topic):
    c = mqtt(version, client_id="")
    assert c.connack.reason_code == 0
    c.subscribe(topic, 1)
    c.publish(topic, b"anonymous", 1)
    assert c.message().payload == b"anonymous"


def test_v311_zero_length_client_id_without_clean_session_rejected(raw):
    # [MQTT-3.1.3-8]: CONNACK return code 0x02 (identifier rejected), then close.
    r = raw(V311)
    ack = r.connect("", clean=False)
    assert ack.code == 0x02
    assert ack.session_present is False
    r.wait_closed()


def test_v5_zero_length_client_id_gets_assigned_identifier(mqtt):
    a = mqtt(V5, client_id="")
    b = mqtt(V5, client_id="")
    ida = a.connack.props.get("AssignedClientIdentifier")
    idb = b.connack.props.get("AssignedClientIdentifier")
    assert ida and idb, (a.connack, b.connack)
    assert ida != idb


def test_v5_assigned_client_identifier_names_a_resumable_session(mqtt, topic):
    first = mqtt(V5, client_id="", session_expiry=60)
    assigned = first.connack.props["AssignedClientIdentifier"]
    first.subscribe(topic, 1)
    first.disconnect()

    again = mqtt(V5, client_id=assigned, clean=False, session_expiry=60)
    assert again.connack.session_present is True
    mqtt(V5).publish(topic, b"to the assigned id", 1)
    assert again.message().payload == b"to the assigned id"


def test_client_id_with_utf8_characters(mqtt, version, topic):
    c = mqtt(version, client_id=f"gerät-温度-{unique_id()}")
    c.subscribe(topic, 0)
    c.publish(topic, b"x")
    assert c.message().payload == b"x"


# -- session takeover ---------------------------------------------------------------------


def test_session_takeover_disconnects_first_connection(mqtt, version, topic,
                                                       mosquitto_deviates):
    if version == V5:
        mosquitto_deviates("2.0.11 closes the old connection without sending DISCONNECT "
                           "0x8E (Session taken over) [MQTT-3.1.4-3]")
    cid = unique_id("takeover")
    first = mqtt(version, client_id=cid)
    second = mqtt(version, client_id=cid)
    gone = first.wait_disconnected()
    if version == V5:
        assert gone.reason_code == 0x8E, gone  # Session taken over
    assert not first.connected
    # The new connection is unaffected and works.
    assert second.connected
    second.subscribe(topic, 1)
    second.publish(topic, b"still here", 1)
    assert second.message().payload == b"still here"
    second.no_message(0.3)


def test_session_takeover_keeps_persistent_session(mqtt, version, topic):
    cid = unique_id("takeover")
    opts = {"clean": False, "session_expiry": 60} if version == V5 else {"clean": False}
    first = mqtt(version, client_id=cid, **opts)
    first.subscribe(topic, 1)
    second = mqtt(version, client_id=cid, **opts)
    first.wait_disconnected()
    assert second.connack.session_present is True
    mqtt(version).publish(topic, b"after takeover", 1)
    assert second.message().payload == b"after takeover"


def test_session_takeover_repeatedly(mqtt, version):
    cid = unique_id("flap")
    previous = mqtt(version, client_id=cid)
    for _ in range(5):
        current = mqtt(version, client_id=cid)
        previous.wait_disconnected()
        previous = current
    assert previous.connected


# -- keep alive ---------------------------------------------------------------------------

# A broker may only be late by scheduling noise on top of the 1.5 x Keep Alive rule.
SLACK = 0.25


@pytest.mark.parametrize("keepalive", [1, 2])
def test_keepalive_silent_client_disconnected_within_one_and_a_half_times(
        raw, version, keepalive, mosquitto_deviates):
    mosquitto_deviates("checks keep alive only every few seconds (closes a keepalive=1 client "
                       "after ~5 s, not 1.5 s) [MQTT-3.1.2-24 / MQTT-3.1.2-22 in v5]")
    r = raw(version)
    ack = r.connect(unique_id(), keepalive=keepalive)
    assert ack.code == 0
    if version == V5 and "ServerKeepAlive" in ack.props:
        keepalive = ack.props["ServerKeepAlive"]
        assert keepalive > 0
    started = time.monotonic()
    packets = r.wait_closed(timeout=1.5 * keepalive + 3)
    elapsed = time.monotonic() - started
    assert elapsed <= 1.5 * keepalive + SLACK, f"closed only after {elapsed:.2f}s"
    assert elapsed >= keepalive * 0.95, f"closed too early, after {elapsed:.2f}s"
    for pkt in packets:
        assert pkt.type == DISCONNECT, pkt
        if version == V5:
            assert parse_ack(pkt, V5).code == 0x8D  # Keep Alive timeout


def test_keepalive_silent_client_eventually_disconnected_with_will(any_broker, mqtt, raw,
                                                                   version, topic):
    """Looser than the 1.5x test: the mechanism works at all, and the will is published."""
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    r = raw(version)
    ack = r.connect(unique_id(), keepalive=1, will=Will(topic, b"timed out", 1))
    assert ack.code == 0
    m = watcher.message(timeout=9)
    assert (m.topic, m.payload) == (topic, b"timed out")
    r.wait_closed(timeout=1)


def test_keepalive_pings_keep_connection_open(raw, version):
    r = raw(version)
    assert r.connect(unique_id(), keepalive=1).code == 0
    deadline = time.monotonic() + 3.2
    while time.monotonic() < deadline:
        r.send(pingreq_packet())
        r.expect(PINGRESP, timeout=1)
        r.nothing(0.5)


def test_keepalive_paho_client_stays_connected(mqtt, version, topic):
    """paho sends PINGREQs on its own; a 1 s keep alive survives several periods."""
    c = mqtt(version, keepalive=1)
    c.subscribe(topic, 1)
    c.no_message(3.5)
    assert c.connected
    c.publish(topic, b"alive", 1)
    assert c.message().payload == b"alive"


def test_v5_server_keep_alive_and_assigned_id_accepted_by_paho(mqtt, topic):
    """Whatever Server Keep Alive / Assigned Client Identifier the broker sends, paho uses
    them and the connection works; a Server Keep Alive, if sent, is honoured by the broker
    itself (the client is not dropped while pinging at that interval)."""
    c = mqtt(V5, client_id="", keepalive=2)
    props = c.connack.props
    assert props.get("AssignedClientIdentifier")
    if "ServerKeepAlive" in props:
        assert isinstance(props["ServerKeepAlive"], int)
    c.subscribe(topic, 1)
    c.no_message(2.5)
    assert c.connected
    c.publish(topic, b"ok", 1)
    assert c.message().payload == b"ok"


# -- CONNACK properties (v5) --------------------------------------------------------------


def test_v5_connack_properties_are_well_formed(raw):
    r = raw(V5)
    ack = r.connect(unique_id())
    assert ack.code == 0
    p = ack.props
    if "ReceiveMaximum" in p:
        assert p["ReceiveMaximum"] > 0
    if "MaximumQoS" in p:
        assert p["MaximumQoS"] in (0, 1)
    if "MaximumPacketSize" in p:
        assert p["MaximumPacketSize"] > 0
    for flag in ("RetainAvailable", "WildcardSubscriptionAvailable",
                 "SubscriptionIdentifierAvailable", "SharedSubscriptionAvailable"):
        if flag in p:
            assert p[flag] in (0, 1)


def test_connack_is_first_packet(raw, version):
    """Nothing is sent before CONNACK, and CONNACK is sent exactly once."""
    r = raw(version)
    r.send(connect_packet(unique_id(), version=version))
    first = r.recv()
    assert first.type == CONNACK
    r.nothing(0.3)


def test_disconnect_then_reconnect_same_id(mqtt, version, topic):
    cid = unique_id()
    for i in range(3):
        c = mqtt(version, client_id=cid)
        c.subscribe(topic, 1)
        c.publish(topic, str(i).encode(), 1)
        assert c.message().payload == str(i).encode()
        c.disconnect()

