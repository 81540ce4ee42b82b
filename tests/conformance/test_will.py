"""Will messages: published on abnormal ends only; v5 will delay and will properties."""

from __future__ import annotations

import time

import pytest

from .helpers import V5, Will, packet, unique_id

pytestmark = pytest.mark.timeout(30)


def test_will_published_on_abnormal_disconnect(mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(topic, 2)
    c = mqtt(version, will=Will(topic, b"client vanished", qos=1))
    c.drop()
    m = watcher.message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"client vanished", 1, False)
    watcher.no_message()


def test_will_not_published_on_normal_disconnect(mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(topic, 2)
    c = mqtt(version, will=Will(topic, b"should not appear", qos=1))
    c.disconnect()
    watcher.no_message(1.0)


def test_will_published_after_protocol_error(raw, mqtt, version, topic):
    """A connection the server closes because of a protocol error publishes its will."""
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    r = raw(version)
    assert r.connect(unique_id(), will=Will(topic, b"broken client", qos=1)).code == 0
    r.send(packet(0, 0, b""))  # reserved packet type 0
    r.wait_closed()
    assert watcher.message().payload == b"broken client"


def test_will_qos_downgraded_to_subscription(mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    mqtt(version, will=Will(topic, b"w", qos=2)).drop()
    m = watcher.message()
    assert (m.payload, m.qos) == (b"w", 1)


def test_retained_will(mqtt, version, topic):
    mqtt(version, will=Will(topic, b"offline", qos=1, retain=True)).drop()
    # Whoever subscribes later still sees the retained will.
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    m = watcher.message()
    assert (m.payload, m.retain) == (b"offline", True)


def test_will_with_empty_payload(mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    mqtt(version, will=Will(topic, b"", qos=1)).drop()
    m = watcher.message()
    assert (m.topic, m.payload) == (topic, b"")


def test_will_not_published_twice(mqtt, version, topic):
    watcher = mqtt(version)
    watcher.subscribe(topic, 1)
    c = mqtt(version, will=Will(topic, b"once", qos=1))
    c.drop()
    assert watcher.message().payload == b"once"
    watcher.no_message(1.0)


# -- v5 -----------------------------------------------------------------------------------


def test_v5_disconnect_with_will_message_reason_publishes_will(mqtt, topic):
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    c = mqtt(V5, will=Will(topic, b"asked for it", qos=1))
    c.disconnect(reason_code=0x04)  # Disconnect with Will Message
    assert watcher.message().payload == b"asked for it"


def test_v5_will_properties_forwarded(mqtt, topic):
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    will = Will(topic, b'{"state":"lost"}', qos=1, props={
        "ContentType": "application/json",
        "PayloadFormatIndicator": 1,
        "ResponseTopic": f"{topic}/reply",
        "CorrelationData": b"\x01\x02",
        "UserProperty": [("device", "d-1")],
        "MessageExpiryInterval": 60,
    })
    mqtt(V5, will=will).drop()
    m = watcher.message()
    assert m.payload == b'{"state":"lost"}'
    assert m.props.get("ContentType") == "application/json"
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("ResponseTopic") == f"{topic}/reply"
    assert m.props.get("CorrelationData") == b"\x01\x02"
    assert m.props.get("UserProperty") == [("device", "d-1")]
    assert 0 < m.props.get("MessageExpiryInterval", 0) <= 60


def test_v5_will_delay(mqtt, topic):
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    c = mqtt(V5, session_expiry=30, will=Will(topic, b"late", qos=1,
                                              props={"WillDelayInterval": 2}))
    c.drop()
    started = time.monotonic()
    m = watcher.message(timeout=6)
    elapsed = time.monotonic() - started
    assert m.payload == b"late"
    assert 1.5 <= elapsed <= 4.5, f"will after {elapsed:.2f}s, delay was 2s"


def test_v5_will_cancelled_by_reconnect_within_delay(mqtt, topic):
    # [MQTT-3.1.3-9]: a new connection to the session before the delay passes: no will.
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    cid = unique_id("will")
    c = mqtt(V5, client_id=cid, session_expiry=30,
             will=Will(topic, b"must not appear", qos=1, props={"WillDelayInterval": 3}))
    c.drop()
    time.sleep(0.5)
    back = mqtt(V5, client_id=cid, clean=False, session_expiry=30)
    assert back.connack.session_present
    watcher.no_message(4.0)


def test_v5_will_sent_when_session_ends_before_delay(mqtt, topic):
    # The will goes out at the earlier of will delay and session end.
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    c = mqtt(V5, session_expiry=1, will=Will(topic, b"session over", qos=1,
                                             props={"WillDelayInterval": 30}))
    c.drop()
    started = time.monotonic()
    m = watcher.message(timeout=6)
    assert m.payload == b"session over"
    assert time.monotonic() - started <= 4.0


def test_v5_will_delay_with_session_expiry_zero_is_immediate(mqtt, topic, mosquitto_deviates):
    # Session Expiry 0: the session ends with the connection, so the will goes out then,
    # whatever the will delay (v5 3.1.3.2.2: "or the Session ends, whichever happens first").
    mosquitto_deviates("2.0.11 waits the whole Will Delay Interval even though the session "
                       "(expiry 0) ended at once")
    watcher = mqtt(V5)
    watcher.subscribe(topic, 1)
    c = mqtt(V5, session_expiry=0, will=Will(topic, b"now", qos=1,
                                             props={"WillDelayInterval": 5}))
    c.drop()
    started = time.monotonic()
    assert watcher.message(timeout=4).payload == b"now"
    assert time.monotonic() - started <= 2.0
