"""Retained messages: store, replace, clear, delivery on subscribe, live delivery flag."""

from __future__ import annotations

import pytest

from .helpers import V5, V311

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_retained_delivered_on_subscribe_with_retain_flag(mqtt, version, topic, qos):
    pub = mqtt(version)
    pub.publish(topic, b"last known good", qos, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 2)
    m = sub.message()
    assert (m.topic, m.payload, m.qos, m.retain) == (topic, b"last known good", qos, True)
    sub.no_message()


def test_retained_qos_downgraded_to_subscription(mqtt, version, topic):
    mqtt(version).publish(topic, b"r", 2, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    m = sub.message()
    assert (m.qos, m.retain) == (1, True)


def test_retained_message_replaced(mqtt, version, topic):
    pub = mqtt(version)
    pub.publish(topic, b"first", 1, retain=True)
    pub.publish(topic, b"second", 1, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    assert sub.message().payload == b"second"
    sub.no_message()


def test_non_retained_publish_leaves_retained_message(mqtt, version, topic):
    # [MQTT-3.3.1-12]: RETAIN 0 neither stores nor replaces nor removes.
    pub = mqtt(version)
    pub.publish(topic, b"kept", 1, retain=True)
    pub.publish(topic, b"transient", 1, retain=False)
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    m = sub.message()
    assert (m.payload, m.retain) == (b"kept", True)
    sub.no_message()


def test_zero_length_retained_clears(mqtt, version, topic):
    pub = mqtt(version)
    pub.publish(topic, b"soon gone", 1, retain=True)
    live = mqtt(version)
    live.subscribe(topic, 1)
    assert live.message().payload == b"soon gone"
    pub.publish(topic, b"", 1, retain=True)
    # The clearing publish is delivered to existing subscribers as a normal message.
    m = live.message()
    assert (m.payload, m.retain) == (b"", False)
    # New subscribers get nothing: the empty message is not stored either.
    late = mqtt(version)
    late.subscribe(topic, 1)
    late.no_message()


def test_clearing_absent_retained_is_harmless(mqtt, version, topic):
    pub = mqtt(version)
    pub.publish(topic, b"", 1, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    sub.no_message()
    pub.publish(topic, b"now", 1, retain=True)
    assert sub.message().payload == b"now"


def test_live_delivery_of_retained_publish_not_flagged(mqtt, version, topic):
    # [MQTT-3.3.1-9] (3.1.1), and v5 with Retain As Published 0 (the default): a message
    # sent because it matches an established subscription has RETAIN 0.
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    mqtt(version).publish(topic, b"live", 1, retain=True)
    m = sub.message()
    assert (m.payload, m.retain) == (b"live", False)


def test_wildcard_subscription_receives_all_retained(mqtt, version, topic):
    pub = mqtt(version)
    expected = {}
    for i, qos in enumerate((0, 1, 2)):
        t = f"{topic}/dev{i}/state"
        pub.publish(t, f"s{i}".encode(), qos, retain=True)
        expected[t] = (f"s{i}".encode(), qos)
    pub.publish(f"{topic}/dev9/other", b"not matched", 1, retain=True)
    sub = mqtt(version)
    sub.subscribe(f"{topic}/+/state", 2)
    got = sub.messages(3)
    assert {m.topic: (m.payload, m.qos) for m in got} == expected
    assert all(m.retain for m in got)
    sub.no_message()


def test_retained_resent_on_resubscribe(mqtt, version, topic):
    # 3.1.1 [MQTT-3.8.4-3]; v5 with Retain Handling 0 (default) [MQTT-3.8.4-4].
    mqtt(version).publish(topic, b"again", 1, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    assert sub.message().payload == b"again"
    sub.subscribe(topic, 1)
    m = sub.message()
    assert (m.payload, m.retain) == (b"again", True)


def test_retained_survives_publisher_disconnect(mqtt, version, topic):
    pub = mqtt(version)
    pub.publish(topic, b"orphan", 1, retain=True)
    pub.disconnect()
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    assert sub.message().payload == b"orphan"


def test_retained_qos0_delivered(mqtt, version, topic):
    mqtt(version).publish(topic, b"q0", 0, retain=True)
    sub = mqtt(version)
    sub.subscribe(topic, 0)
    # QoS 0 publish followed by a subscribe on another connection: allow for ordering.
    m = sub.message()
    assert (m.payload, m.qos, m.retain) == (b"q0", 0, True)


def test_v5_retained_keeps_properties(mqtt, topic):
    mqtt(V5).publish(topic, b"{}", 1, retain=True, ContentType="application/json",
                     UserProperty=[("origin", "sensor-7"), ("unit", "C")],
                     PayloadFormatIndicator=1)
    sub = mqtt(V5)
    sub.subscribe(topic, 1)
    m = sub.message()
    assert m.retain
    assert m.props.get("ContentType") == "application/json"
    assert m.props.get("PayloadFormatIndicator") == 1
    assert m.props.get("UserProperty") == [("origin", "sensor-7"), ("unit", "C")]


def test_retained_cross_version(mqtt, topic):
    mqtt(V5).publish(topic, b"from v5", 1, retain=True)
    old = mqtt(V311)
    old.subscribe(topic, 1)
    m = old.message()
    assert (m.payload, m.retain) == (b"from v5", True)
