"""Publish/subscribe: QoS levels and downgrade, payloads, topic matching, unsubscribe."""

from __future__ import annotations

import pytest

from .helpers import V5, V311

pytestmark = pytest.mark.timeout(30)


@pytest.mark.parametrize("sub_qos", [0, 1, 2])
def test_delivered_qos_is_min_of_publish_and_subscription(mqtt, version, topic, sub_qos):
    sub = mqtt(version)
    assert sub.subscribe(topic, sub_qos) == [sub_qos]
    pub = mqtt(version)
    for pub_qos in (0, 1, 2):
        pub.publish(topic, f"qos {pub_qos}".encode(), pub_qos)
    got = sub.messages(3)
    # One publisher on one topic: order is preserved for QoS 1/2 and here for all three.
    assert [m.payload for m in got] == [b"qos 0", b"qos 1", b"qos 2"]
    assert [m.qos for m in got] == [min(q, sub_qos) for q in (0, 1, 2)]
    assert all(m.topic == topic and not m.retain and not m.dup for m in got)
    sub.no_message()


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_publisher_receives_own_message(mqtt, version, topic, qos):
    c = mqtt(version)
    c.subscribe(topic, qos)
    c.publish(topic, b"echo", qos)
    m = c.message()
    assert (m.topic, m.payload, m.qos) == (topic, b"echo", qos)


def test_v5_puback_reason_is_success_or_no_subscribers(mqtt, topic):
    c = mqtt(V5)
    assert c.publish(f"{topic}/nobody", b"x", 1) in (0x00, 0x10)
    assert c.publish(f"{topic}/nobody", b"x", 2) in (0x00, 0x10)
    c.subscribe(topic, 1)
    assert c.publish(topic, b"x", 1) == 0x00


@pytest.mark.parametrize("qos", [0, 1, 2])
def test_many_messages_in_order(mqtt, version, topic, qos):
    sub = mqtt(version)
    sub.subscribe(topic, qos)
    pub = mqtt(version)
    n = 100
    for i in range(n):
        pub.publish(topic, str(i).encode(), qos)
    got = sub.messages(n, timeout=10)
    # Even QoS 0 is not lost on loopback with an idle broker; order holds for one publisher.
    assert [int(m.payload) for m in got] == list(range(n))
    sub.no_message(0.3)


@pytest.mark.parametrize("payload", [
    b"",
    bytes(range(256)),
    "ünïcödé ✓".encode(),
    b"\x00" * 1000,
    bytes(range(256)) * 1024,  # 256 KiB
], ids=["empty", "all-bytes", "utf8", "nuls", "256KiB"])
def test_payload_delivered_byte_for_byte(mqtt, version, topic, payload):
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    mqtt(version).publish(topic, payload, 1)
    assert sub.message().payload == payload


@pytest.mark.parametrize("name", [
    "plain",
    "with space/and more",
    "ünïcödé/温度",
    "trailing/",
    "/leading",
    "double//slash",
], ids=["plain", "spaces", "utf8", "trailing-slash", "leading-slash", "empty-level"])
def test_topic_names_round_trip(mqtt, version, topic, name):
    full = f"{topic}/{name}"
    sub = mqtt(version)
    sub.subscribe(full, 1)
    mqtt(version).publish(full, b"t", 1)
    assert sub.message().topic == full


# -- topic matching -----------------------------------------------------------------------

MATCHES = [
    # (filter suffix, topic suffix, matches?)
    ("a/b", "a/b", True),
    ("a/b", "a/B", False),
    ("a/+", "a/b", True),
    ("a/+", "a/b/c", False),
    ("a/+", "a", False),
    ("a/+", "a/", True),
    ("+/b", "a/b", True),
    ("a/+/c", "a/x/c", True),
    ("a/+/c", "a/x/y/c", False),
    ("a/#", "a", True),  # "#" also matches the parent level
    ("a/#", "a/b", True),
    ("a/#", "a/b/c/d", True),
    ("a/#", "ab", False),
    ("a/b/#", "a/bc", False),
    ("+/+", "a/b", True),
    ("+/+", "a/b/c", False),
    ("#", "a/b/c", True),
]


@pytest.mark.parametrize("filt,name,expected", MATCHES,
                         ids=[f"{f}~{t}" for f, t, _ in MATCHES])
def test_wildcard_matching(mqtt, version, topic, filt, name, expected):
    sub = mqtt(version)
    sub.subscribe(f"{topic}/{filt}", 1)
    mqtt(version).publish(f"{topic}/{name}", b"m", 1)
    if expected:
        assert sub.message().topic == f"{topic}/{name}"
    else:
        sub.no_message()


def test_single_level_wildcard_matches_empty_leading_level(mqtt, version, topic):
    # "+/x" matches "/x" (the first level is empty) and "#" matches "/x".
    sub = mqtt(version)
    sub.subscribe([(f"+/{topic}", 1), ("#", 1)])
    mqtt(version).publish(f"/{topic}", b"m", 1)
    got = sub.messages(1) + sub.drain()
    assert {m.topic for m in got} == {f"/{topic}"}


@pytest.mark.parametrize("sys_topic", ["$conf/x", "$dollar-test/x"])
def test_dollar_topics_not_matched_by_leading_wildcards(mqtt, version, topic, sys_topic):
    # [MQTT-4.7.2-1]: filters starting with # or + don't match names starting with $.
    name = f"{sys_topic.split('/')[0]}/{topic}"
    wild = mqtt(version)
    codes = wild.subscribe([("#", 1), ("+/#", 1), (f"+/{topic}", 1)])
    assert codes == [1, 1, 1]
    exact = mqtt(version)
    exact.subscribe(f"{name.split('/')[0]}/#", 1)
    wild.drain(0.3)  # anything that happened to be retained on the broker
    pub = mqtt(version)
    pub.publish(name, b"dollar", 1)
    m = exact.message()
    assert (m.topic, m.payload) == (name, b"dollar")
    assert [x for x in wild.drain() if x.topic.startswith("$")] == []


@pytest.mark.parametrize("order", ["hash-first", "plus-first"])
def test_overlapping_subscriptions(mqtt, version, topic, order, mosquitto_deviates):
    """One message at the highest QoS of the matching subscriptions, or one copy per
    matching subscription, each at its own QoS [MQTT-3.3.5-1] (3.1.1) / [MQTT-3.3.4-2] (v5).
    """
    if version == V311:
        mosquitto_deviates("2.0.11 sends a 3.1.1 client only the copy for the '+' "
                           "subscription (QoS 1), not one at the '#' subscription's QoS 2 "
                           "[MQTT-3.3.5-1]")
    subs = [(f"{topic}/#", 2), (f"{topic}/+", 1)]
    if order == "plus-first":
        subs.reverse()
    sub = mqtt(version)
    assert sub.subscribe(subs) == [q for _, q in subs]
    mqtt(version).publish(f"{topic}/x", b"overlap", 2)
    got = sub.messages(1) + sub.drain()
    assert 1 <= len(got) <= 2, got
    assert all(m.payload == b"overlap" for m in got)
    assert max(m.qos for m in got) == 2, got
    if len(got) == 2:
        assert sorted(m.qos for m in got) == [1, 2]


def test_overlapping_subscriptions_lower_qos_on_wildcard(mqtt, version, topic):
    sub = mqtt(version)
    assert sub.subscribe([(f"{topic}/+", 2), (f"{topic}/#", 1)]) == [2, 1]
    mqtt(version).publish(f"{topic}/x", b"overlap", 2)
    got = sub.messages(1) + sub.drain()
    assert 1 <= len(got) <= 2, got
    assert max(m.qos for m in got) == 2, got


def test_overlapping_subscriptions_same_qos_exact_and_wildcard(mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe([(topic, 1), (f"{topic}/#", 1), ("#", 0)])
    mqtt(version).publish(topic, b"o", 1)
    got = sub.messages(1) + sub.drain()
    assert 1 <= len(got) <= 3
    assert max(m.qos for m in got) == 1


def test_subscribe_multiple_filters_in_one_packet(mqtt, version, topic):
    sub = mqtt(version)
    codes = sub.subscribe([(f"{topic}/a", 0), (f"{topic}/b", 1), (f"{topic}/c", 2)])
    assert codes == [0, 1, 2]
    pub = mqtt(version)
    for t in "abc":
        pub.publish(f"{topic}/{t}", t.encode(), 2)
    got = sorted(sub.messages(3), key=lambda m: m.payload)
    assert [(m.payload, m.qos) for m in got] == [(b"a", 0), (b"b", 1), (b"c", 2)]


def test_resubscribe_replaces_subscription(mqtt, version, topic):
    # [MQTT-3.8.4-3]: same filter again replaces the existing subscription (new QoS),
    # it does not add a second one.
    sub = mqtt(version)
    assert sub.subscribe(topic, 0) == [0]
    assert sub.subscribe(topic, 2) == [2]
    mqtt(version).publish(topic, b"once", 2)
    m = sub.message()
    assert (m.payload, m.qos) == (b"once", 2)
    sub.no_message()


# -- unsubscribe --------------------------------------------------------------------------


def test_unsubscribe_stops_delivery(mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe([(f"{topic}/0", 2), (f"{topic}/1", 2), (f"{topic}/2", 2)])
    codes = sub.unsubscribe(f"{topic}/0")
    if version == V5:
        assert codes == [0]
    pub = mqtt(version)
    for i in range(3):
        pub.publish(f"{topic}/{i}", str(i).encode(), 1)
    got = sub.messages(2)
    assert sorted(m.payload for m in got) == [b"1", b"2"]
    sub.no_message()


def test_unsubscribe_wildcard_filter_is_exact_not_matching(mqtt, version, topic):
    # Unsubscribing "t/+" removes only that filter, not a "t/a" subscription it matches.
    sub = mqtt(version)
    sub.subscribe([(f"{topic}/+", 1), (f"{topic}/a", 1)])
    sub.unsubscribe(f"{topic}/+")
    mqtt(version).publish(f"{topic}/a", b"a", 1)
    assert sub.message().payload == b"a"
    sub.no_message()


def test_unsubscribe_unknown_filter(mqtt, version, topic):
    # 3.1.1: UNSUBACK anyway [MQTT-3.10.4-5]; v5: reason 0x11 (No subscription existed),
    # 0x00 being tolerated by clients too.
    sub = mqtt(version)
    codes = sub.unsubscribe(f"{topic}/never")
    if version == V5:
        assert codes in ([0x11], [0x00])
    assert sub.connected


def test_unsubscribe_several_filters_in_one_packet(mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe([(f"{topic}/a", 1), (f"{topic}/b", 1), (f"{topic}/c", 1)])
    codes = sub.unsubscribe([f"{topic}/a", f"{topic}/b", f"{topic}/zzz"])
    if version == V5:
        assert codes[:2] == [0, 0] and codes[2] in (0x00, 0x11)
    pub = mqtt(version)
    for t in "abc":
        pub.publish(f"{topic}/{t}", t.encode(), 1)
    assert sub.message().payload == b"c"
    sub.no_message()


def test_unsubscribe_then_resubscribe(mqtt, version, topic):
    sub = mqtt(version)
    sub.subscribe(topic, 1)
    sub.unsubscribe(topic)
    pub = mqtt(version)
    pub.publish(topic, b"gap", 1)
    sub.no_message(0.3)
    sub.subscribe(topic, 1)
    pub.publish(topic, b"back", 1)
    assert sub.message().payload == b"back"


def test_messages_not_delivered_to_other_topics(mqtt, version, topic):
    a = mqtt(version)
    b = mqtt(version)
    a.subscribe(f"{topic}/a", 1)
    b.subscribe(f"{topic}/b", 1)
    pub = mqtt(version)
    pub.publish(f"{topic}/a", b"for a", 1)
    pub.publish(f"{topic}/b", b"for b", 1)
    assert a.message().payload == b"for a"
    assert b.message().payload == b"for b"
    a.no_message(0.2)
    b.no_message(0.2)


def test_cross_version_delivery(mqtt, topic):
    """A 3.1.1 subscriber gets what a v5 client publishes and the other way round."""
    old = mqtt(V311)
    new = mqtt(V5)
    old.subscribe(f"{topic}/old", 2)
    new.subscribe(f"{topic}/new", 2)
    new.publish(f"{topic}/old", b"from v5", 2, UserProperty=[("k", "v")], ContentType="x/y")
    old.publish(f"{topic}/new", b"from v311", 2)
    m_old = old.message()
    assert (m_old.payload, m_old.qos, m_old.props) == (b"from v5", 2, {})
    m_new = new.message()
    assert (m_new.payload, m_new.qos) == (b"from v311", 2)
    assert "UserProperty" not in m_new.props
