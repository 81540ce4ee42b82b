"""Sessions: session present, offline queueing, clean session/start, redelivery, QoS 2."""

from __future__ import annotations

import time
from typing import Any

import pytest

from .helpers import (
    PUBACK,
    PUBCOMP,
    PUBLISH,
    PUBREC,
    PUBREL,
    V5,
    V311,
    disconnect_packet,
    parse_ack,
    parse_publish,
    unique_id,
)

pytestmark = pytest.mark.timeout(30)


def persistent(version: int, expiry: int = 300) -> dict[str, Any]:
    """SyncClient options for a session that outlives the connection."""
    if version == V5:
        return {"clean": False, "session_expiry": expiry}
    return {"clean": False}


def raw_persistent(version: int, expiry: int = 300) -> dict[str, Any]:
    """RawClient.connect options for the same."""
    if version == V5:
        return {"clean": False, "props": {"SessionExpiryInterval": expiry}}
    return {"clean": False}


def test_session_present_flag(mqtt, version):
    cid = unique_id("sp")
    first = mqtt(version, client_id=cid, **persistent(version))
    assert first.connack.session_present is False
    first.disconnect()

    again = mqtt(version, client_id=cid, **persistent(version))
    assert again.connack.session_present is True
    again.disconnect()

    # A clean session / clean start never reports a session present, and (3.1.1 clean
    # session, or v5 without session expiry) leaves none behind.
    clean = mqtt(version, client_id=cid, clean=True)
    assert clean.connack.session_present is False
    clean.disconnect()

    after = mqtt(version, client_id=cid, **persistent(version))
    assert after.connack.session_present is False


def test_subscriptions_survive_reconnect(mqtt, version, topic):
    cid = unique_id("subs")
    c = mqtt(version, client_id=cid, **persistent(version))
    assert c.subscribe(topic, 1) == [1]
    c.disconnect()
    back = mqtt(version, client_id=cid, **persistent(version))
    assert back.connack.session_present
    mqtt(version).publish(topic, b"no resubscribe needed", 1)
    assert back.message().payload == b"no resubscribe needed"


def test_offline_messages_queued_for_persistent_session(mqtt, version, topic):
    cid = unique_id("offline")
    c = mqtt(version, client_id=cid, **persistent(version))
    c.subscribe(f"{topic}/#", 2)
    c.disconnect()

    pub = mqtt(version)
    pub.publish(f"{topic}/q0", b"qos 0", 0)
    pub.publish(f"{topic}/q1", b"qos 1", 1)
    pub.publish(f"{topic}/q2", b"qos 2", 2)

    back = mqtt(version, client_id=cid, **persistent(version))
    assert back.connack.session_present is True
    got = back.messages(2) + back.drain()
    payloads = [m.payload for m in got]
    # QoS 1 and 2 must be queued; queueing QoS 0 is optional.
    assert payloads in ([b"qos 1", b"qos 2"], [b"qos 0", b"qos 1", b"qos 2"]), got
    qos_of = {m.payload: m.qos for m in got}
    assert qos_of[b"qos 1"] == 1 and qos_of[b"qos 2"] == 2


def test_offline_queue_downgrades_to_subscription_qos(mqtt, version, topic):
    cid = unique_id("offline")
    c = mqtt(version, client_id=cid, **persistent(version))
    c.subscribe(topic, 1)
    c.disconnect()
    mqtt(version).publish(topic, b"two", 2)
    back = mqtt(version, client_id=cid, **persistent(version))
    m = back.message()
    assert (m.payload, m.qos) == (b"two", 1)


def test_offline_queue_keeps_order(mqtt, version, topic):
    cid = unique_id("offline")
    c = mqtt(version, client_id=cid, **persistent(version))
    c.subscribe(topic, 1)
    c.disconnect()
    pub = mqtt(version)
    for i in range(50):
        pub.publish(topic, str(i).encode(), 1)
    back = mqtt(version, client_id=cid, **persistent(version))
    got = back.messages(50, timeout=10)
    assert [int(m.payload) for m in got] == list(range(50))
    back.no_message(0.3)


def test_offline_queue_after_abrupt_disconnect(mqtt, version, topic):
    cid = unique_id("offline")
    c = mqtt(version, client_id=cid, **persistent(version))
    c.subscribe(topic, 1)
    c.drop()
    pub = mqtt(version)
    # The broker may not have noticed the dropped socket yet; QoS 1 must not be lost either
    # way (it is either sent on the dead connection and redelivered, or queued).
    pub.publish(topic, b"while gone", 1)
    back = mqtt(version, client_id=cid, **persistent(version))
    assert back.message().payload == b"while gone"


def test_clean_session_discards_previous_session(mqtt, version, topic):
    cid = unique_id("discard")
    c = mqtt(version, client_id=cid, **persistent(version))
    c.subscribe(topic, 1)
    c.disconnect()
    mqtt(version).publish(topic, b"queued", 1)

    clean = mqtt(version, client_id=cid, clean=True)
    assert clean.connack.session_present is False
    clean.no_message()  # the queued message went with the old session
    mqtt(version).publish(topic, b"after", 1)
    clean.no_message()  # and so did the subscription


def test_v311_clean_session_leaves_nothing_behind(mqtt, topic):
    cid = unique_id("clean")
    c = mqtt(V311, client_id=cid, clean=True)
    c.subscribe(topic, 1)
    c.disconnect()
    mqtt(V311).publish(topic, b"nobody home", 1)
    back = mqtt(V311, client_id=cid, clean=False)
    assert back.connack.session_present is False
    back.no_message()


# -- redelivery of unacknowledged messages ------------------------------------------------


def test_unacked_qos1_redelivered_on_reconnect_paho(mqtt, version, topic):
    cid = unique_id("redeliver")
    c = mqtt(version, client_id=cid, manual_ack=True, **persistent(version))
    c.subscribe(topic, 1)
    mqtt(version).publish(topic, b"ack me", 1)
    first = c.message()
    assert (first.payload, first.dup) == (b"ack me", False)
    c.drop()  # never acknowledged

    back = mqtt(version, client_id=cid, **persistent(version))
    assert back.connack.session_present
    again = back.message()
    assert (again.payload, again.qos, again.dup) == (b"ack me", 1, True)
    back.no_message()


@pytest.mark.parametrize("qos", [1, 2])
def test_unacked_publish_resent_with_dup_and_same_packet_id(any_broker, raw, mqtt, version,
                                                            topic, qos):
    """[MQTT-4.4.0-1]: on reconnect the server re-sends unacknowledged PUBLISH packets with
    their original packet identifiers, and DUP set [MQTT-3.3.1-1]."""
    cid = unique_id("raw")
    r = raw(version)
    assert r.connect(cid, **raw_persistent(version)).code == 0
    assert r.subscribe([(topic, qos)]).codes == [qos]
    mqtt(version).publish(topic, b"unacked", qos)
    first = r.recv_publish()
    assert (first.payload, first.qos, first.dup) == (b"unacked", qos, False)
    r.close()

    r2 = raw(version)
    ack = r2.connect(cid, **raw_persistent(version))
    assert (ack.code, ack.session_present) == (0, True)
    again = r2.recv_publish()
    assert (again.payload, again.qos, again.dup, again.pid) == (b"unacked", qos, True,
                                                                first.pid)
    if qos == 1:
        r2.ack(PUBACK, again.pid)
    else:
        r2.ack(PUBREC, again.pid)
        rel = parse_ack(r2.expect(PUBREL), version)
        assert rel.pid == again.pid
        r2.ack(PUBCOMP, again.pid)
    r2.nothing()


def test_pubrel_resent_after_reconnect(raw, mqtt, version, topic):
    """A QoS 2 delivery interrupted after PUBREC resumes with PUBREL, not a new PUBLISH."""
    cid = unique_id("rel")
    r = raw(version)
    assert r.connect(cid, **raw_persistent(version)).code == 0
    r.subscribe([(topic, 2)])
    mqtt(version).publish(topic, b"exactly once", 2)
    pub = r.recv_publish()
    r.ack(PUBREC, pub.pid)
    rel = parse_ack(r.expect(PUBREL), version)
    assert rel.pid == pub.pid
    r.close()  # without PUBCOMP

    r2 = raw(version)
    assert r2.connect(cid, **raw_persistent(version)).session_present
    pkt = r2.recv()
    assert pkt.type == PUBREL, f"expected PUBREL to be re-sent, got {pkt}"
    assert pkt.flags == 0x02
    assert parse_ack(pkt, version).pid == pub.pid
    r2.ack(PUBCOMP, pub.pid)
    r2.nothing()


def test_qos2_flow_packet_ids_and_flags(raw, mqtt, version, topic):
    r = raw(version)
    assert r.connect(unique_id()).code == 0
    r.subscribe([(topic, 2)])
    mqtt(version).publish(topic, b"q2", 2)
    pkt = r.expect(PUBLISH)
    assert pkt.flags & 0x06 == 0x04  # QoS 2
    pub = parse_publish(pkt, version)
    assert pub.pid and pub.dup is False
    r.ack(PUBREC, pub.pid)
    rel = r.expect(PUBREL)
    assert rel.flags == 0x02  # [MQTT-3.6.1-1]
    assert parse_ack(rel, version).pid == pub.pid
    r.ack(PUBCOMP, pub.pid)
    r.nothing()


# -- inbound QoS 1 / 2 from a raw publisher -----------------------------------------------


def test_inbound_qos1_puback_carries_packet_id(raw, mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    r = raw(version)
    assert r.connect(unique_id()).code == 0
    r.publish(topic, b"one", qos=1, pid=4242)
    ack = parse_ack(r.expect(PUBACK), version)
    assert ack.pid == 4242 and ack.code in (0x00, 0x10)
    assert sub.message().payload == b"one"


def test_inbound_qos2_duplicate_publish_delivered_once(raw, mqtt, version, topic):
    """[MQTT-4.3.3-x]: until PUBREL, a re-sent PUBLISH with the same packet id must not
    cause a second onward delivery."""
    sub = mqtt(version)
    sub.subscribe(topic, 2)
    r = raw(version)
    assert r.connect(unique_id()).code == 0
    r.publish(topic, b"only once", qos=2, pid=77)
    assert parse_ack(r.expect(PUBREC), version).pid == 77
    r.publish(topic, b"only once", qos=2, pid=77, dup=True)
    assert parse_ack(r.expect(PUBREC), version).pid == 77
    r.ack(PUBREL, 77)
    assert parse_ack(r.expect(PUBCOMP), version).pid == 77
    assert sub.message().payload == b"only once"
    sub.no_message()


def test_inbound_qos2_pubrel_completed_after_reconnect(raw, mqtt, version, topic):
    """A client that lost the connection after PUBREC finishes with PUBREL on reconnect."""
    sub = mqtt(version)
    sub.subscribe(topic, 2)
    cid = unique_id("pubrel")
    r = raw(version)
    assert r.connect(cid, **raw_persistent(version)).code == 0
    r.publish(topic, b"interrupted", qos=2, pid=9)
    assert parse_ack(r.expect(PUBREC), version).pid == 9
    r.close()

    r2 = raw(version)
    assert r2.connect(cid, **raw_persistent(version)).session_present
    r2.ack(PUBREL, 9)
    comp = parse_ack(r2.expect(PUBCOMP), version)
    assert comp.pid == 9 and comp.code == 0
    assert sub.message().payload == b"interrupted"
    sub.no_message()


def test_inbound_qos2_packet_id_reusable_after_pubcomp(raw, mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe(topic, 2)
    r = raw(version)
    assert r.connect(unique_id()).code == 0
    for payload in (b"first", b"second"):
        r.publish(topic, payload, qos=2, pid=5)
        r.expect(PUBREC)
        r.ack(PUBREL, 5)
        r.expect(PUBCOMP)
    got = sub.messages(2)
    assert [m.payload for m in got] == [b"first", b"second"]


def test_v5_pubrel_unknown_packet_id(raw):
    """PUBREL for an id the broker does not know: PUBCOMP 0x92 (Packet Identifier not found)
    in v5; 3.1.1 brokers just answer PUBCOMP."""
    r = raw(V5)
    assert r.connect(unique_id()).code == 0
    r.ack(PUBREL, 1234)
    comp = parse_ack(r.expect(PUBCOMP), V5)
    assert comp.pid == 1234 and comp.code in (0x00, 0x92)


# -- v5 session expiry ----------------------------------------------------------------------


def test_v5_session_expiry_zero_ends_session_at_disconnect(mqtt):
    cid = unique_id("exp")
    mqtt(V5, client_id=cid, clean=True, session_expiry=0).disconnect()
    again = mqtt(V5, client_id=cid, clean=False, session_expiry=0)
    assert again.connack.session_present is False


def test_v5_absent_session_expiry_means_zero(mqtt):
    cid = unique_id("exp")
    mqtt(V5, client_id=cid, clean=False).disconnect()
    again = mqtt(V5, client_id=cid, clean=False)
    assert again.connack.session_present is False


def test_v5_session_expires_after_interval(mqtt, topic):
    cid = unique_id("exp")
    c = mqtt(V5, client_id=cid, clean=True, session_expiry=2)
    c.subscribe(topic, 1)
    c.disconnect()
    time.sleep(0.5)
    kept = mqtt(V5, client_id=cid, clean=False, session_expiry=2)
    assert kept.connack.session_present is True
    kept.disconnect()
    time.sleep(3.5)
    gone = mqtt(V5, client_id=cid, clean=False, session_expiry=2)
    assert gone.connack.session_present is False
    mqtt(V5).publish(topic, b"no subscription left", 1)
    gone.no_message()


def test_v5_disconnect_can_change_session_expiry(mqtt):
    cid = unique_id("exp")
    c = mqtt(V5, client_id=cid, clean=True, session_expiry=1)
    c.disconnect(SessionExpiryInterval=30)
    time.sleep(2)
    kept = mqtt(V5, client_id=cid, clean=False, session_expiry=1)
    assert kept.connack.session_present is True
    kept.disconnect(SessionExpiryInterval=0)
    gone = mqtt(V5, client_id=cid, clean=False, session_expiry=1)
    assert gone.connack.session_present is False


def test_v5_disconnect_setting_expiry_when_connect_had_zero_is_protocol_error(raw):
    """[MQTT-3.14.2-2]: if CONNECT had Session Expiry 0, the client must not set a non-zero
    one on DISCONNECT; the server treats it as a protocol error (DISCONNECT 0x82 or close)."""
    r = raw(V5)
    assert r.connect(unique_id(), props={"SessionExpiryInterval": 0}).code == 0
    r.send(disconnect_packet(version=V5, props={"SessionExpiryInterval": 60}))
    packets = r.wait_closed()
    for pkt in packets:
        assert parse_ack(pkt, V5).code == 0x82, pkt


def test_v5_clean_start_with_expiry_replaces_old_session(mqtt, topic):
    cid = unique_id("exp")
    c = mqtt(V5, client_id=cid, clean=False, session_expiry=60)
    c.subscribe(topic, 1)
    c.disconnect()
    fresh = mqtt(V5, client_id=cid, clean=True, session_expiry=60)
    assert fresh.connack.session_present is False
    mqtt(V5).publish(topic, b"old subscription", 1)
    fresh.no_message()
    fresh.disconnect()
    # The new (empty) session persists.
    again = mqtt(V5, client_id=cid, clean=False, session_expiry=60)
    assert again.connack.session_present is True

