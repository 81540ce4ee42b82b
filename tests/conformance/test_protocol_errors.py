"""Packets a broker must refuse, sent from a raw socket.

For a protocol violation MQTT 3.1.1 requires the server to close the network connection;
MQTT 5 lets it first send a DISCONNECT (or, for CONNECT, a CONNACK) with a reason code of
0x80 or more. These tests accept either form, and check that nothing else comes back.
"""

from __future__ import annotations

import struct

import pytest

from .helpers import (
    CONNACK,
    DISCONNECT,
    PUBACK,
    SUBACK,
    V5,
    V311,
    Packet,
    RawClient,
    Will,
    connect_packet,
    encode_str,
    packet,
    parse_ack,
    pingreq_packet,
    publish_packet,
    sub_options,
    subscribe_packet,
    unique_id,
)

pytestmark = pytest.mark.timeout(30)


def assert_refused(r: RawClient, *, allow_connack: bool = False) -> list[Packet]:
    """The broker closes the connection, sending at most an error CONNACK / DISCONNECT."""
    packets = r.wait_closed()
    for pkt in packets:
        if pkt.type == CONNACK and allow_connack:
            assert parse_ack(pkt, r.version).code != 0, f"CONNACK accepted: {pkt}"
        elif pkt.type == DISCONNECT and r.version == V5:
            assert parse_ack(pkt, V5).code >= 0x80, pkt
        else:
            raise AssertionError(f"unexpected {pkt} before close")
    return packets


def connected(raw, version: int) -> RawClient:
    r = raw(version)
    assert r.connect(unique_id()).code == 0
    return r


# -- CONNECT ------------------------------------------------------------------------------


def test_second_connect_is_a_protocol_violation(raw, version):
    r = connected(raw, version)
    r.send(connect_packet(unique_id(), version=version))
    assert_refused(r)


def test_first_packet_must_be_connect(raw, version):
    r = raw(version)
    r.send(pingreq_packet())
    assert_refused(r)


def test_first_packet_subscribe_instead_of_connect(raw, version):
    r = raw(version)
    r.send(subscribe_packet(1, [("a/b", 0)], version=version))
    assert_refused(r)


def test_wrong_protocol_name_not_accepted(raw, version):
    r = raw(version)
    r.send(connect_packet(unique_id(), version=version, protocol_name="MQTX"))
    assert_refused(r, allow_connack=True)


@pytest.mark.parametrize("level", [2, 9])
def test_unsupported_protocol_level(raw, level):
    # 3.1.1 answers CONNACK 0x01 (unacceptable protocol version); a v5 server may answer
    # 0x84 (unsupported protocol version). Either way the connection is then closed.
    r = raw(V311)
    r.send(connect_packet(unique_id(), version=V311, level=level))
    packets = assert_refused(r, allow_connack=True)
    for pkt in packets:
        if pkt.type == CONNACK:
            assert pkt.body[1] in (0x01, 0x84), pkt


def test_connect_reserved_flag_set(raw, version):
    data = bytearray(connect_packet(unique_id(), version=version))
    # fixed header (2) + protocol name (6) + level (1) -> connect flags at offset 9
    data[9] |= 0x01
    r = raw(version)
    r.send(bytes(data))
    assert_refused(r, allow_connack=True)


def test_connect_will_qos_3(raw, version):
    r = raw(version)
    r.send(connect_packet(unique_id(), version=version, will=Will("w/t", b"x", qos=3)))
    assert_refused(r, allow_connack=True)


def test_connect_will_retain_without_will_flag(raw, version):
    data = bytearray(connect_packet(unique_id(), version=version))
    data[9] |= 0x20
    r = raw(version)
    r.send(bytes(data))
    assert_refused(r, allow_connack=True)


def test_v311_password_without_username(raw):
    # [MQTT-3.1.2-22]: in 3.1.1 the password flag needs the user name flag.
    r = raw(V311)
    r.send(connect_packet(unique_id(), version=V311, password=b"secret"))
    assert_refused(r, allow_connack=True)


def test_connect_truncated_then_closed(raw, version):
    data = connect_packet(unique_id(), version=version)
    r = raw(version)
    # Claim a longer body than is sent, then half-close: the broker must not accept it.
    r.send(data[:1] + bytes([data[1] + 10]) + data[2:])
    r.sock.shutdown(1)
    assert_refused(r, allow_connack=True)


# -- PUBLISH ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad_topic", ["a/+/b", "a/#", "+", "#"])
def test_publish_to_wildcard_topic_refused(raw, mqtt, version, topic, bad_topic):
    watcher = mqtt(version)
    watcher.subscribe(f"{topic}/#", 0)
    r = connected(raw, version)
    r.publish(f"{topic}/{bad_topic}", b"bad", qos=1)
    packets = assert_refused(r)
    assert not any(p.type == PUBACK for p in packets)
    watcher.no_message(0.3)


def test_publish_qos_3_refused(raw, version):
    r = connected(raw, version)
    body = encode_str("a/b") + struct.pack("!H", 1)
    if version == V5:
        body += b"\x00"
    r.send(packet(3, 0x06, body + b"x"))
    assert_refused(r)


def test_publish_qos1_with_packet_id_zero_refused(raw, version):
    # [MQTT-2.3.1-1]: a QoS > 0 packet must carry a non-zero packet identifier.
    r = connected(raw, version)
    r.send(publish_packet("a/b", b"x", version=version, qos=1, pid=0))
    assert_refused(r)


def test_publish_topic_with_null_character_refused(raw, version):
    # [MQTT-1.5.3-2] / [MQTT-1.5.4-2]: U+0000 is not allowed in a UTF-8 string.
    r = connected(raw, version)
    r.send(publish_packet("a/\x00/b", b"x", version=version, qos=1, pid=7))
    assert_refused(r)


def test_publish_topic_invalid_utf8_refused(raw, version):
    r = connected(raw, version)
    body = struct.pack("!H", 3) + b"a\xffb" + struct.pack("!H", 3)
    if version == V5:
        body += b"\x00"
    r.send(packet(3, 0x02, body + b"payload"))
    assert_refused(r)


# -- SUBSCRIBE / UNSUBSCRIBE --------------------------------------------------------------


def test_subscribe_with_wrong_fixed_header_flags_refused(raw, version):
    # [MQTT-3.8.1-1]: bits 3..0 of the SUBSCRIBE fixed header are 0010.
    r = connected(raw, version)
    r.send(subscribe_packet(1, [("a/b", 0)], version=version, flags=0x00))
    assert_refused(r)


def test_subscribe_without_any_filter_refused(raw, version):
    # [MQTT-3.8.3-3] (3.1.1) / [MQTT-3.8.3-2] (v5): at least one topic filter.
    r = connected(raw, version)
    r.send(subscribe_packet(1, [], version=version))
    assert_refused(r)


def test_subscribe_requested_qos_3_refused(raw, version):
    r = connected(raw, version)
    r.send(subscribe_packet(1, [("a/b", 3)], version=version))
    assert_refused(r)


def test_subscribe_reserved_option_bits_refused(raw, version):
    # 3.1.1: upper six bits of the requested QoS byte are reserved [MQTT-3-8.3-4];
    # v5: bits 6 and 7 of the subscription options are reserved [MQTT-3.8.3-5].
    r = connected(raw, version)
    r.send(subscribe_packet(1, [("a/b", 0xC0 | 1)], version=version))
    assert_refused(r)


def test_v5_retain_handling_3_refused(raw):
    r = connected(raw, V5)
    r.send(subscribe_packet(1, [("a/b", sub_options(1, retain_handling=3))], version=V5))
    assert_refused(r)


def test_v5_no_local_on_shared_subscription_refused(raw, topic, mosquitto_deviates):
    mosquitto_deviates("2.0.11 grants No Local on a shared subscription [MQTT-3.8.3-4]")
    # [MQTT-3.8.3-4]: No Local on a shared subscription is a protocol error.
    r = connected(raw, V5)
    r.send(subscribe_packet(1, [(f"$share/g/{topic}", sub_options(1, no_local=True))],
                            version=V5))
    assert_refused(r)


def test_unsubscribe_with_wrong_fixed_header_flags_refused(raw, version):
    r = connected(raw, version)
    body = struct.pack("!H", 1) + (b"\x00" if version == V5 else b"") + encode_str("a/b")
    r.send(packet(10, 0x00, body))
    assert_refused(r)


@pytest.mark.parametrize("bad_filter", ["a/#/b", "a/b#", "a+/b", "#/a", "a/+b", ""])
def test_invalid_topic_filter_rejected(raw, mqtt, version, topic, bad_filter):
    """A malformed topic filter never becomes a subscription.

    The broker either refuses it in SUBACK (0x80 in 3.1.1, 0x8F Topic Filter invalid in
    v5), or treats the packet as a protocol violation and closes the connection
    (in v5 possibly after a DISCONNECT with 0x8F, 0x81 or 0x82).
    """
    r = connected(raw, version)
    full = f"{topic}/{bad_filter}" if bad_filter else ""
    r.send(subscribe_packet(1, [(full, 1)], version=version))
    try:
        pkt = r.recv()
    except Exception:  # closed at once
        pkt = None
    if pkt is not None and pkt.type == SUBACK:
        ack = parse_ack(pkt, version)
        assert ack.pid == 1
        assert ack.codes == ([0x80] if version == V311 else [0x8F]), ack
        # The connection stays usable and nothing is delivered through the bad filter.
        assert r.subscribe([(f"{topic}/ok", 1)]).codes == [1]
        mqtt(version).publish(f"{topic}/ok", b"fine", 1)
        assert r.recv_publish().payload == b"fine"
        r.nothing(0.3)
    else:
        rest = [pkt] if pkt is not None else []
        closed, more = r.closed_within(5)
        assert closed, f"broker neither refused the filter nor closed: {rest + more}"
        for p in rest + more:
            assert p.type == DISCONNECT, p
            if version == V5:
                assert parse_ack(p, V5).code in (0x81, 0x82, 0x8F), p


def test_mixed_valid_and_invalid_filters(raw, version):
    """Only when the broker answers with a SUBACK: one reason code per filter, in order."""
    r = connected(raw, version)
    t = unique_id("f")
    r.send(subscribe_packet(5, [(f"{t}/a", 0), (f"{t}/#/x", 1), (f"{t}/c", 2)],
                            version=version))
    try:
        pkt = r.recv()
    except Exception:
        pkt = None
    if pkt is None or pkt.type != SUBACK:
        closed, _ = r.closed_within(5)
        assert closed
        return
    ack = parse_ack(pkt, version)
    assert ack.pid == 5
    assert len(ack.codes) == 3, ack
    assert ack.codes[0] == 0 and ack.codes[2] in (0, 1, 2), ack
    assert ack.codes[1] == (0x80 if version == V311 else 0x8F), ack


def test_reserved_packet_type_zero_refused(raw, version):
    r = connected(raw, version)
    r.send(packet(0, 0, b""))
    assert_refused(r)


def test_client_sends_connack_refused(raw, version):
    r = connected(raw, version)
    r.send(packet(CONNACK, 0, b"\x00\x00"))
    assert_refused(r)


def test_v311_auth_packet_type_refused(raw):
    # Packet type 15 is reserved in 3.1.1.
    r = connected(raw, V311)
    r.send(packet(15, 0, b""))
    assert_refused(r)

