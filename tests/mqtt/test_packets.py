"""MQTT codec: round trips for every packet type, spec byte vectors, and every strictness rule."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.mqtt import properties as props_mod
from gateway.mqtt.errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from gateway.mqtt.packets import (
    Auth,
    Connack,
    Connect,
    Disconnect,
    Pingreq,
    Pingresp,
    Puback,
    Pubcomp,
    Publish,
    Pubrec,
    Pubrel,
    Suback,
    Subscribe,
    Subscription,
    Unsuback,
    Unsubscribe,
    Will,
    decode,
    encode,
    encode_publish,
    split_frame,
)
from gateway.mqtt.properties import (
    decode_properties,
    decode_varint,
    encode_properties,
    encode_varint,
)

V31, V311, V5 = 3, 4, 5
MAX = 268_435_455 + 5
MALFORMED, PROTOCOL, TOO_LARGE, UNSUPPORTED = 0x81, 0x82, 0x95, 0x84

# --------------------------------------------------------------------------- strategies

# Strings the codec must carry: any well-formed UTF-8 without U+0000 (surrogates cannot be
# encoded at all).
text = st.text(
    alphabet=st.characters(exclude_categories=("Cs",), exclude_characters="\x00"), max_size=12
)
short_binary = st.binary(max_size=24)
packet_id = st.integers(1, 65535)

# Spec section 2.2.2.2, written out independently of properties.PROPERTIES:
# identifier -> (name, data type, packet kinds).
_ALL_ACKS = "ack"
SPEC_PROPERTIES = {
    0x01: ("payload_format_indicator", "byte", {"publish", "will"}),
    0x02: ("message_expiry_interval", "u32", {"publish", "will"}),
    0x03: ("content_type", "utf8", {"publish", "will"}),
    0x08: ("response_topic", "utf8", {"publish", "will"}),
    0x09: ("correlation_data", "binary", {"publish", "will"}),
    0x0B: ("subscription_identifier", "varint", {"publish", "subscribe"}),
    0x11: ("session_expiry_interval", "u32", {"connect", "connack", "disconnect"}),
    0x12: ("assigned_client_identifier", "utf8", {"connack"}),
    0x13: ("server_keep_alive", "u16", {"connack"}),
    0x15: ("authentication_method", "utf8", {"connect", "connack", "auth"}),
    0x16: ("authentication_data", "binary", {"connect", "connack", "auth"}),
    0x17: ("request_problem_information", "byte", {"connect"}),
    0x18: ("will_delay_interval", "u32", {"will"}),
    0x19: ("request_response_information", "byte", {"connect"}),
    0x1A: ("response_information", "utf8", {"connack"}),
    0x1C: ("server_reference", "utf8", {"connack", "disconnect"}),
    0x1F: ("reason_string", "utf8",
           {"connack", _ALL_ACKS, "suback", "unsuback", "disconnect", "auth"}),
    0x21: ("receive_maximum", "u16", {"connect", "connack"}),
    0x22: ("topic_alias_maximum", "u16", {"connect", "connack"}),
    0x23: ("topic_alias", "u16", {"publish"}),
    0x24: ("maximum_qos", "byte", {"connack"}),
    0x25: ("retain_available", "byte", {"connack"}),
    0x26: ("user_property", "pair",
           {"connect", "connack", "publish", "will", _ALL_ACKS, "subscribe", "suback",
            "unsubscribe", "unsuback", "disconnect", "auth"}),
    0x27: ("maximum_packet_size", "u32", {"connect", "connack"}),
    0x28: ("wildcard_subscription_available", "byte", {"connack"}),
    0x29: ("subscription_identifier_available", "byte", {"connack"}),
    0x2A: ("shared_subscription_available", "byte", {"connack"}),
}
KINDS = ("connect", "connack", "publish", "ack", "subscribe", "suback", "unsubscribe",
         "unsuback", "disconnect", "auth", "will")
# Zero is a Protocol Error for these.
NONZERO = {"receive_maximum", "maximum_packet_size", "topic_alias", "subscription_identifier"}


def _value(name: str, kind: str, packet: str) -> st.SearchStrategy:
    if kind == "byte":  # every single-byte property is a 0/1 flag
        return st.integers(0, 1)
    low = 1 if name in NONZERO else 0
    if kind == "u16":
        return st.integers(low, 0xFFFF)
    if kind == "u32":
        return st.integers(low, 0xFFFF_FFFF)
    if kind == "varint":  # subscription identifiers: SUBSCRIBE carries at most one
        return st.lists(st.integers(1, 268_435_455), min_size=1,
                        max_size=1 if packet == "subscribe" else 3)
    if kind == "utf8":
        return text
    if kind == "binary":
        return short_binary
    return st.lists(st.tuples(text, text), min_size=1, max_size=3)


def properties_for(packet: str) -> st.SearchStrategy[dict]:
    optional = {name: _value(name, kind, packet)
                for name, kind, allowed in SPEC_PROPERTIES.values() if packet in allowed}
    return st.fixed_dictionaries({}, optional=optional)


def _props(version: int, packet: str) -> st.SearchStrategy[dict]:
    return properties_for(packet) if version == V5 else st.just({})


@st.composite
def connects(draw, version: int) -> Connect:
    level = draw(st.sampled_from([V31, V311])) if version != V5 else V5
    will = None
    if draw(st.booleans()):
        will = Will(draw(text), draw(short_binary), draw(st.integers(0, 2)), draw(st.booleans()),
                    draw(_props(version, "will")))
    username = draw(st.none() | text)
    password = draw(st.none() | short_binary)
    if level == V311 and username is None:
        password = None
    return Connect(draw(text), level, draw(st.booleans()), draw(st.integers(0, 65535)), will,
                   username, password, draw(_props(version, "connect")))


@st.composite
def publishes(draw, version: int) -> Publish:
    qos = draw(st.integers(0, 2))
    return Publish(draw(text), draw(st.binary(max_size=300)), qos, draw(st.booleans()),
                   draw(st.booleans()) if qos else False,
                   draw(packet_id) if qos else None, draw(_props(version, "publish")))


def acks(version: int) -> st.SearchStrategy:
    reason = st.integers(0, 255) if version == V5 else st.just(0)
    return st.one_of([st.builds(cls, packet_id, reason, _props(version, "ack"))
                      for cls in (Puback, Pubrec, Pubrel, Pubcomp)])


def subscribes(version: int) -> st.SearchStrategy[Subscribe]:
    if version == V5:
        sub = st.builds(Subscription, text, st.integers(0, 2), st.booleans(), st.booleans(),
                        st.integers(0, 2))
    else:
        sub = st.builds(Subscription, text, st.integers(0, 2))
    return st.builds(Subscribe, packet_id, st.lists(sub, min_size=1, max_size=4),
                     _props(version, "subscribe"))


def packets(version: int) -> st.SearchStrategy:
    reasons = st.lists(st.integers(0, 255), max_size=5)
    strategies = [
        connects(version),
        st.builds(Connack, st.booleans(), st.integers(0, 255), _props(version, "connack")),
        publishes(version),
        acks(version),
        subscribes(version),
        st.builds(Suback, packet_id, reasons, _props(version, "suback")),
        st.builds(Unsubscribe, packet_id, st.lists(text, min_size=1, max_size=4),
                  _props(version, "unsubscribe")),
        st.builds(Unsuback, packet_id, reasons if version == V5 else st.just([]),
                  _props(version, "unsuback")),
        st.just(Pingreq()),
        st.just(Pingresp()),
    ]
    if version == V5:
        strategies += [
            st.builds(Disconnect, st.integers(0, 255), properties_for("disconnect")),
            st.builds(Auth, st.integers(0, 255), properties_for("auth")),
        ]
    else:
        strategies.append(st.just(Disconnect()))
    return st.one_of(strategies)


PACKETS = {v: packets(v) for v in (V31, V311, V5)}
versioned_packets = st.one_of([st.tuples(st.just(v), PACKETS[v]) for v in PACKETS])


def frame_and_decode(data: bytes, version: int, pos: int = 0):
    found = split_frame(data, pos, MAX)
    assert found is not None
    start, end = found
    return decode(data[pos], memoryview(data)[start:end], version), end


def dec(data: bytes, version: int = V5):
    """Decode one whole framed packet, checking the frame covers all of `data`."""
    pkt, end = frame_and_decode(data, version)
    assert end == len(data)
    return pkt


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_varint(len(body)) + body


def s(text_: str) -> bytes:
    raw = text_.encode()
    return len(raw).to_bytes(2, "big") + raw


def raises(exc: type[MQTTError], code: int, data: bytes, version: int = V5) -> MQTTError:
    with pytest.raises(exc) as info:
        dec(data, version)
    assert info.value.reason_code == code
    return info.value


# --------------------------------------------------------------------------- round trips


def test_property_table_matches_spec():
    kinds = {"byte": props_mod.BYTE, "u16": props_mod.U16, "u32": props_mod.U32,
             "varint": props_mod.VARINT, "utf8": props_mod.UTF8, "binary": props_mod.BINARY,
             "pair": props_mod.PAIR}
    assert set(props_mod.PROPERTIES) == set(SPEC_PROPERTIES)
    for ident, (name, kind, allowed) in SPEC_PROPERTIES.items():
        assert props_mod.PROPERTIES[ident] == (name, kinds[kind], frozenset(allowed))


@settings(max_examples=500, deadline=None)
@given(versioned_packets)
def test_round_trip(case):
    version, pkt = case
    data = encode(pkt, version)
    assert dec(data, version) == pkt


@settings(max_examples=100, deadline=None)
@given(st.one_of([st.tuples(st.just(v), st.lists(PACKETS[v], min_size=1, max_size=6))
                  for v in (V311, V5)]))
def test_round_trip_stream(case):
    """Several packets back to back in one buffer come apart at the right boundaries."""
    version, pkts = case
    stream = b"".join(encode(p, version) for p in pkts)
    pos, out = 0, []
    while pos < len(stream):
        pkt, pos = frame_and_decode(stream, version, pos)
        out.append(pkt)
    assert out == pkts
    assert split_frame(stream, len(stream), MAX) is None


@settings(max_examples=200, deadline=None)
@given(properties_for("publish"), properties_for("connack"), properties_for("will"))
def test_properties_round_trip(publish, connack, will):
    for packet, d in (("publish", publish), ("connack", connack), ("will", will)):
        raw = encode_properties(d)
        assert decode_properties(raw, 0, packet) == (d, len(raw))


@pytest.mark.parametrize("size", [0, 1, 127, 128, 16_383, 16_384, 2_097_151, 2_097_152])
def test_large_publish_round_trip(size):
    pkt = Publish("t", b"x" * size, 1, packet_id=7)
    for version in (V311, V5):
        data = encode(pkt, version)
        assert dec(data, version) == pkt
        assert data == encode_publish(b"t", pkt.payload, 1, False, False, 7,
                                      b"\x00" if version == V5 else None)


@pytest.mark.parametrize(("value", "raw"), [
    (0, "00"), (127, "7f"), (128, "8001"), (16_383, "ff7f"), (16_384, "808001"),
    (2_097_151, "ffff7f"), (2_097_152, "80808001"), (268_435_455, "ffffff7f"),
])
def test_varint_vectors(value, raw):
    """Spec table 1.5.5 boundaries."""
    assert encode_varint(value) == bytes.fromhex(raw)
    assert decode_varint(bytes.fromhex(raw) + b"\xaa", 0) == (value, len(raw) // 2)


def test_varint_too_large_to_encode():
    with pytest.raises(ValueError):
        encode_varint(268_435_456)


# --------------------------------------------------------------------------- byte vectors

CONNECT_311 = bytes.fromhex(
    "10 19 0004 4d515454 04 ce 000a"   # MQTT, level 4, flags 0xCE (spec 3.1.2.10), keep alive 10
    " 0001 63"                          # client id "c"
    " 0001 77 0001 6d"                  # will topic "w", will message "m"
    " 0001 75 0001 70"                  # user name "u", password "p"
)
CONNECT_5 = bytes.fromhex(
    "10 20 0004 4d515454 05 ce 000a"    # spec 5.0 figure 3-6 variable header ...
    " 05 11 0000000a"                   # ... with Session Expiry Interval 10
    " 0001 63 00 0001 77 0001 6d 0001 75 0001 70"
)
PUBLISH_5 = bytes.fromhex(
    "32 1c 0003 612f62 000a"            # QoS 1, topic "a/b", packet id 10
    " 12 0101 020000003c 03000174 2600016b000176"  # format 1, expiry 60, type "t", k=v
    " 6869"                             # payload "hi"
)


@pytest.mark.parametrize(("pkt", "version", "raw"), [
    (Connect("test", V311, True, 60), V311, "10 10 0004 4d515454 04 02 003c 0004 74657374"),
    (Connect("c", V311, True, 10, Will("w", b"m", 1), "u", b"p"), V311, CONNECT_311.hex()),
    (Connect("c", V5, True, 10, Will("w", b"m", 1), "u", b"p", {"session_expiry_interval": 10}),
     V5, CONNECT_5.hex()),
    (Connect("", V31, False, 0), V31, "10 0e 0006 4d5149736470 03 00 0000 0000"),
    (Connack(True, 0), V311, "20 02 01 00"),
    (Connack(False, 0x84, {"reason_string": "v"}), V5, "20 07 00 84 04 1f000176"),
    (Publish("a/b", b"hi", 1, packet_id=10,
             properties={"payload_format_indicator": 1, "message_expiry_interval": 60,
                         "content_type": "t", "user_property": [("k", "v")]}),
     V5, PUBLISH_5.hex()),
    (Publish("a/b", b"", 0, retain=True), V311, "31 05 0003 612f62"),
    (Publish("a", b"x", 2, dup=True, packet_id=0x1234), V311, "3c 06 0001 61 1234 78"),
    (Puback(10), V311, "40 02 000a"),
    (Puback(10), V5, "40 02 000a"),
    (Puback(10, 0x10), V5, "40 03 000a 10"),
    (Pubrec(1, 0, {"reason_string": "r"}), V5, "50 08 0001 00 04 1f000172"),
    (Pubrel(10), V311, "62 02 000a"),
    (Pubcomp(10), V311, "70 02 000a"),
    (Subscribe(10, [Subscription("a/b", 1), Subscription("c/d", 2)]), V311,
     "82 0e 000a 0003 612f62 01 0003 632f64 02"),   # spec 3.1.1 section 3.8.3 example
    (Subscribe(10, [Subscription("a", 2, True, True, 2)], {"subscription_identifier": [300]}),
     V5, "82 0a 000a 03 0bac02 0001 61 2e"),
    (Suback(10, [0, 2, 0x80]), V311, "90 05 000a 00 02 80"),  # spec 3.1.1 section 3.9.3
    (Unsubscribe(10, ["a/b", "c/d"]), V311, "a2 0c 000a 0003 612f62 0003 632f64"),
    (Unsuback(10), V311, "b0 02 000a"),
    (Unsuback(10, [0, 0x11]), V5, "b0 05 000a 00 00 11"),
    (Pingreq(), V311, "c0 00"),
    (Pingresp(), V5, "d0 00"),
    (Disconnect(), V311, "e0 00"),
    (Disconnect(), V5, "e0 00"),
    (Disconnect(0x04), V5, "e0 02 04 00"),
    (Auth(0x18, {"authentication_method": "m"}), V5, "f0 06 18 04 1500016d"),
])
def test_byte_vectors(pkt, version, raw):
    data = bytes.fromhex(raw)
    assert encode(pkt, version) == data
    assert dec(data, version) == pkt


@pytest.mark.parametrize(("raw", "pkt"), [
    ("e0 01 00", Disconnect(0)),                       # reason byte, no property length
    ("e0 01 8e", Disconnect(0x8E)),
    ("f0 00", Auth(0)),
    ("40 03 000a 00", Puback(10)),                     # reason 0 written out
    ("40 04 000a 00 00", Puback(10)),                  # ... and an empty property block
    ("40 03 000a 92", Puback(10, 0x92)),
])
def test_v5_short_forms(raw, pkt):
    """MQTT 5 lets acks, DISCONNECT and AUTH omit reason code and properties."""
    assert dec(bytes.fromhex(raw), V5) == pkt


def test_v5_connack_needs_property_length():
    raises(MalformedPacket, MALFORMED, bytes.fromhex("20 02 00 00"), V5)


def test_v5_password_without_username_allowed():
    pkt = Connect("c", V5, password=b"secret")
    assert dec(encode(pkt, V5), V5) == pkt


# --------------------------------------------------------------------------- strictness

# One valid packet of each type and the fixed-header flags it must carry.
FLAG_CASES = [
    (Connect("c", V5), 0),
    (Connack(), 0),
    (Puback(1), 0),
    (Pubrec(1), 0),
    (Pubrel(1), 2),
    (Pubcomp(1), 0),
    (Subscribe(1, [Subscription("a")]), 2),
    (Suback(1, [0]), 0),
    (Unsubscribe(1, ["a"]), 2),
    (Unsuback(1, [0]), 0),
    (Pingreq(), 0),
    (Pingresp(), 0),
    (Disconnect(), 0),
    (Auth(), 0),
]


@pytest.mark.parametrize(("pkt", "expected", "version"), [
    pytest.param(p, e, v, id=f"{type(p).__name__}-v{v}")
    for p, e in FLAG_CASES for v in (V311, V5) if v == V5 or type(p) is not Auth
])
def test_reserved_fixed_header_flags(pkt, expected, version):
    data = bytearray(encode(pkt, version))
    assert data[0] & 0x0F == expected
    assert type(dec(bytes(data), version)) is type(pkt)
    for flags in range(16):
        if flags != expected:
            data[0] = (data[0] & 0xF0) | flags
            raises(MalformedPacket, MALFORMED, bytes(data), version)


def test_reserved_packet_type_0():
    raises(MalformedPacket, MALFORMED, b"\x00\x00")


def test_auth_in_v311():
    raises(MalformedPacket, MALFORMED, b"\xf0\x00", V311)


@pytest.mark.parametrize("version", [V311, V5])
def test_publish_qos3(version):
    props = b"\x00" if version == V5 else b""
    for first in (0x36, 0x37, 0x3E, 0x3F):
        raises(MalformedPacket, MALFORMED, frame(first, s("a") + b"\x00\x01" + props), version)


@pytest.mark.parametrize("version", [V311, V5])
def test_publish_dup_on_qos0(version):
    props = b"\x00" if version == V5 else b""
    raises(MalformedPacket, MALFORMED, frame(0x38, s("a") + props), version)
    raises(MalformedPacket, MALFORMED, frame(0x39, s("a") + props), version)


@pytest.mark.parametrize("version", [V311, V5])
@pytest.mark.parametrize("raw", [
    "32 05 0001 61 0000",                 # PUBLISH QoS 1
    "34 05 0001 61 0000",                 # PUBLISH QoS 2
    "40 02 0000", "50 02 0000", "62 02 0000", "70 02 0000",
    "82 06 0000 0001 61 00",              # SUBSCRIBE (3.1.1 layout)
    "a2 05 0000 0001 61",                 # UNSUBSCRIBE (3.1.1 layout)
])
def test_packet_id_zero(raw, version):
    data = bytes.fromhex(raw)
    if version == V5 and data[0] & 0xF0 in (0x30, 0x80, 0xA0):
        # insert an empty property block after the packet identifier
        body = data[2:]
        cut = 2 + len(s("a")) if data[0] & 0xF0 == 0x30 else 2
        data = frame(data[0], body[:cut] + b"\x00" + body[cut:])
    raises(MalformedPacket, MALFORMED, data, version)


BAD_UTF8 = [
    b"\xff",              # never valid
    b"\xc0\xaf",          # overlong '/'
    b"\xed\xa0\x80",      # UTF-16 surrogate U+D800
    b"\xe2\x82",          # truncated sequence
    b"a\x00b",            # U+0000
    b"\xc0\x80",          # overlong U+0000
]


def _bad(raw: bytes) -> bytes:
    return len(raw).to_bytes(2, "big") + raw


@pytest.mark.parametrize("raw", BAD_UTF8)
def test_invalid_strings(raw):
    bad = _bad(raw)
    cases = [
        (frame(0x30, bad + b"payload"), V311),                                  # topic name
        (frame(0x30, bad + b"\x00"), V5),
        (frame(0x10, s("MQTT") + b"\x04\x02\x00\x00" + bad), V311),             # client id
        (frame(0x10, s("MQTT") + b"\x04\x82\x00\x00" + s("c") + bad), V311),    # user name
        (frame(0x10, s("MQTT") + b"\x04\x06\x00\x00" + s("c") + bad + s("m")), V311),  # will
        (frame(0x82, b"\x00\x01" + bad + b"\x00"), V311),                       # filter
        (frame(0xA2, b"\x00\x01" + bad), V311),
        (frame(0x30, s("t") + bytes((len(bad) + 1, 0x03)) + bad), V5),          # content type
        (frame(0x30, s("t") + bytes((len(bad) + 3, 0x26)) + bad + s("v")), V5),  # user prop
        (frame(0x30, s("t") + bytes((len(bad) + 3, 0x26)) + s("k") + bad), V5),
        (frame(0xE0, b"\x00" + bytes((len(bad) + 1, 0x1F)) + bad), V5),         # reason string
    ]
    for data, version in cases:
        raises(MalformedPacket, MALFORMED, data, version)


def test_string_length_past_end():
    raises(MalformedPacket, MALFORMED, frame(0x30, b"\x00\x05ab"), V311)
    raises(MalformedPacket, MALFORMED, frame(0x30, b"\x00"), V311)


def test_remaining_length_longer_than_four_bytes():
    for raw in (b"\x30\x80\x80\x80\x80\x01", b"\x30\xff\xff\xff\xff\x7f", b"\xc0\x80\x80\x80\x80"):
        with pytest.raises(MalformedPacket) as info:
            split_frame(raw + b"\x00" * 10, 0, MAX)
        assert info.value.reason_code == MALFORMED


def test_property_varint_longer_than_four_bytes():
    # property length
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + b"\x80\x80\x80\x80\x01"), V5)
    # subscription identifier value
    raises(MalformedPacket, MALFORMED,
           frame(0x30, s("t") + b"\x06\x0b\x81\x81\x81\x81\x01"), V5)


@pytest.mark.parametrize("props", [
    b"\x80\x00",                          # property length 0 in two bytes
    b"\x81\x00\x01\x01",                  # property length 1 in two bytes
    b"\x03\x0b\x81\x00",                  # subscription identifier 1 in two bytes
    b"\x04\x0b\x80\x80\x00",              # subscription identifier 0 in three bytes
])
def test_non_minimal_varint_in_properties(props):
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + props), V5)


@pytest.mark.parametrize(("raw", "version"), [
    (CONNECT_311 + b"\x00", V311),
    (CONNECT_5 + b"\x00", V5),
    (bytes.fromhex("20 02 00 00") + b"\x00", V311),
    (bytes.fromhex("20 03 00 00 00") + b"\x00", V5),
    (bytes.fromhex("40 02 000a") + b"\x00", V311),
    (bytes.fromhex("62 02 000a") + b"\x00", V311),
    (bytes.fromhex("40 04 000a 00 00") + b"\x00", V5),
    (bytes.fromhex("b0 02 000a") + b"\x00", V311),
    (bytes.fromhex("c0 00") + b"\x00", V311),
    (bytes.fromhex("d0 00") + b"\x00", V5),
    (bytes.fromhex("e0 00") + b"\x00", V311),
    (bytes.fromhex("e0 02 00 00") + b"\x00", V5),
    (bytes.fromhex("f0 02 00 00") + b"\x00", V5),
    (bytes.fromhex("82 06 000a 0001 61 00") + b"\x00", V311),  # filter length cut short
])
def test_trailing_bytes(raw, version):
    raises(MalformedPacket, MALFORMED, frame(raw[0], raw[2:]), version)


@pytest.mark.parametrize(("prop", "packet_prefix"), [
    (b"\x03" + s("a"), s("t")),                     # content type, PUBLISH
    (b"\x23\x00\x01", s("t")),                      # topic alias
    (b"\x01\x01", s("t")),                          # payload format indicator
    (b"\x02\x00\x00\x00\x01", s("t")),              # message expiry
])
def test_duplicate_property(prop, packet_prefix):
    block = prop + prop
    raises(ProtocolError, PROTOCOL, frame(0x30, packet_prefix + bytes((len(block),)) + block))


def test_duplicate_property_elsewhere():
    # session expiry twice in CONNECT
    block = b"\x11\x00\x00\x00\x01" * 2
    head = s("MQTT") + b"\x05\x02\x00\x00"
    raises(ProtocolError, PROTOCOL, frame(0x10, head + bytes((len(block),)) + block + s("c")))
    # reason string twice in DISCONNECT
    block = (b"\x1f" + s("x")) * 2
    raises(ProtocolError, PROTOCOL, frame(0xE0, b"\x00" + bytes((len(block),)) + block))
    # two subscription identifiers in SUBSCRIBE
    block = b"\x0b\x01\x0b\x02"
    raises(ProtocolError, PROTOCOL,
           frame(0x82, b"\x00\x01" + bytes((len(block),)) + block + s("a") + b"\x00"))


def test_repeatable_properties():
    """User properties repeat, and PUBLISH may carry several subscription identifiers."""
    block = b"\x26" + s("k") + s("1") + b"\x26" + s("k") + s("2") + b"\x0b\x01\x0b\x02"
    pkt = dec(frame(0x30, s("t") + bytes((len(block),)) + block), V5)
    assert pkt.properties == {"user_property": [("k", "1"), ("k", "2")],
                              "subscription_identifier": [1, 2]}


@pytest.mark.parametrize(("packet", "allowed"), [
    (kind, {name for name, _, where in SPEC_PROPERTIES.values() if kind in where})
    for kind in KINDS
])
def test_property_not_allowed(packet, allowed):
    """Every property outside its packet kinds is a Protocol Error there."""
    samples = {"byte": b"\x01", "u16": b"\x00\x01", "u32": b"\x00\x00\x00\x01",
               "varint": b"\x01", "utf8": s("x"), "binary": s("x"), "pair": s("k") + s("v")}
    for ident, (name, kind, _) in SPEC_PROPERTIES.items():
        raw = bytes((ident,)) + samples[kind]
        block = bytes((len(raw),)) + raw
        if name in allowed:
            assert decode_properties(block, 0, packet)[1] == len(block)
            continue
        with pytest.raises(ProtocolError) as info:
            decode_properties(block, 0, packet)
        assert info.value.reason_code == PROTOCOL


def test_property_not_allowed_in_packets():
    head = s("MQTT") + b"\x05\x02\x00\x00"
    raises(ProtocolError, PROTOCOL, frame(0x10, head + b"\x03\x23\x00\x01" + s("c")))
    # will delay interval belongs in the will properties, not the CONNECT properties
    raises(ProtocolError, PROTOCOL,
           frame(0x10, head + b"\x05\x18\x00\x00\x00\x01" + s("c")))
    # ... and session expiry does not belong in the will properties
    will_head = s("MQTT") + b"\x05\x06\x00\x00\x00" + s("c")
    raises(ProtocolError, PROTOCOL,
           frame(0x10, will_head + b"\x05\x11\x00\x00\x00\x01" + s("w") + s("m")))
    raises(ProtocolError, PROTOCOL, frame(0x40, b"\x00\x01\x00\x02\x23\x01"))     # PUBACK
    raises(ProtocolError, PROTOCOL, frame(0xA2, b"\x00\x01\x02\x0b\x01" + s("a")))  # UNSUB
    raises(ProtocolError, PROTOCOL, frame(0xE0, b"\x00\x02\x24\x01"))             # DISCONNECT


def test_unknown_property():
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + b"\x02\x7f\x00"))
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + b"\x02\x00\x00"))


def test_property_runs_past_block():
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + b"\x02\x02\x00\x00\x00\x00\x01"))
    raises(MalformedPacket, MALFORMED, frame(0x30, s("t") + b"\x05\x01"))


@pytest.mark.parametrize(("ident", "packet"), [
    (0x01, "publish"), (0x01, "will"), (0x17, "connect"), (0x19, "connect"),
    (0x24, "connack"), (0x25, "connack"), (0x28, "connack"), (0x29, "connack"),
    (0x2A, "connack"),
])
@pytest.mark.parametrize("value", [2, 0x80, 0xFF])
def test_boolean_property_out_of_range(ident, packet, value):
    block = bytes((2, ident, value))
    with pytest.raises(ProtocolError) as info:
        decode_properties(block, 0, packet)
    assert info.value.reason_code == PROTOCOL
    assert decode_properties(bytes((2, ident, 1)), 0, packet)[0] == {
        SPEC_PROPERTIES[ident][0]: 1}


def test_boolean_property_in_publish_packet():
    raises(ProtocolError, PROTOCOL, frame(0x30, s("t") + b"\x02\x01\x02"))


def test_zero_not_allowed():
    head = s("MQTT") + b"\x05\x02\x00\x00"
    raises(ProtocolError, PROTOCOL, frame(0x10, head + b"\x03\x21\x00\x00" + s("c")))  # recv max
    raises(ProtocolError, PROTOCOL,
           frame(0x10, head + b"\x05\x27\x00\x00\x00\x00" + s("c")))   # maximum packet size
    raises(ProtocolError, PROTOCOL, frame(0x30, s("t") + b"\x03\x23\x00\x00"))    # topic alias
    raises(ProtocolError, PROTOCOL, frame(0x30, s("t") + b"\x02\x0b\x00"))        # sub id
    raises(ProtocolError, PROTOCOL,
           frame(0x82, b"\x00\x01\x02\x0b\x00" + s("a") + b"\x00"))
    # Receive Maximum 0 in CONNACK too
    raises(ProtocolError, PROTOCOL, frame(0x20, b"\x00\x00\x03\x21\x00\x00"))


@pytest.mark.parametrize("version", [V311, V5])
def test_subscribe_without_filters(version):
    body = b"\x00\x01" + (b"\x00" if version == V5 else b"")
    raises(ProtocolError, PROTOCOL, frame(0x82, body), version)


@pytest.mark.parametrize("version", [V311, V5])
def test_unsubscribe_without_filters(version):
    body = b"\x00\x01" + (b"\x00" if version == V5 else b"")
    raises(ProtocolError, PROTOCOL, frame(0xA2, body), version)


def test_subscribe_option_bits():
    def sub(opts: int, version: int) -> bytes:
        props = b"\x00" if version == V5 else b""
        return frame(0x82, b"\x00\x01" + props + s("a/b") + bytes((opts,)))

    for opts in range(256):
        qos, rh = opts & 3, (opts >> 4) & 3
        # MQTT 3.1.1: only the two QoS bits are defined
        if opts & 0xFC or qos == 3:
            raises(MalformedPacket, MALFORMED, sub(opts, V311), V311)
        else:
            assert dec(sub(opts, V311), V311).subscriptions == [Subscription("a/b", qos)]
        # MQTT 5: bits 6-7 reserved, QoS 3 malformed, retain handling 3 a protocol error
        if opts & 0xC0 or qos == 3:
            raises(MalformedPacket, MALFORMED, sub(opts, V5), V5)
        elif rh == 3:
            raises(ProtocolError, PROTOCOL, sub(opts, V5), V5)
        else:
            assert dec(sub(opts, V5), V5).subscriptions == [
                Subscription("a/b", qos, bool(opts & 4), bool(opts & 8), rh)]


def test_subscribe_filter_without_options():
    raises(MalformedPacket, MALFORMED, frame(0x82, b"\x00\x01" + s("a")), V311)
    raises(MalformedPacket, MALFORMED, frame(0x82, b"\x00\x01" + s("a") + b"\x01" + s("b")),
           V311)


def _connect(level: int, flags: int, tail: bytes = b"") -> bytes:
    name = "MQIsdp" if level == V31 else "MQTT"
    props = b"\x00" if level == V5 else b""
    return frame(0x10, s(name) + bytes((level, flags)) + b"\x00\x3c" + props + s("c") + tail)


@pytest.mark.parametrize("level", [V31, V311, V5])
def test_connect_flags(level):
    will_props = b"\x00" if level == V5 else b""
    will = will_props + s("w") + s("m")
    # reserved bit 0
    raises(MalformedPacket, MALFORMED, _connect(level, 0x03), level)
    raises(MalformedPacket, MALFORMED, _connect(level, 0x07, will), level)
    # will QoS / will retain without the will flag
    for flags in (0x08, 0x10, 0x18, 0x20, 0x28):
        raises(MalformedPacket, MALFORMED, _connect(level, 0x02 | flags, will), level)
        raises(MalformedPacket, MALFORMED, _connect(level, 0x02 | flags), level)
    # will QoS 3
    raises(MalformedPacket, MALFORMED, _connect(level, 0x1E, will), level)
    # the same flags with the will flag are fine
    for qos in (0, 1, 2):
        pkt = dec(_connect(level, 0x26 | qos << 3, will), level)
        assert pkt.will == Will("w", b"m", qos, True)


def test_password_without_username_v311():
    raises(MalformedPacket, MALFORMED, _connect(V311, 0x42, s("p")), V311)
    assert dec(_connect(V311, 0xC2, s("u") + s("p")), V311).password == b"p"
    assert dec(_connect(V5, 0x42, s("p")), V5).password == b"p"


@pytest.mark.parametrize(("name", "level"), [
    ("MQTT", 0), ("MQTT", 1), ("MQTT", 2), ("MQTT", 3), ("MQTT", 6), ("MQTT", 0x84),
    ("MQIsdp", 4), ("MQIsdp", 5), ("MQTX", 4), ("mqtt", 5), ("", 4),
])
def test_unsupported_protocol(name, level):
    data = frame(0x10, s(name) + bytes((level,)) + b"\x02\x00\x3c" + s("c"))
    for version in (V311, V5):
        exc = raises(UnsupportedProtocolVersion, UNSUPPORTED, data, version)
        assert exc.level == level


def test_connect_truncated_header():
    raises(MalformedPacket, MALFORMED, frame(0x10, s("MQTT")))
    raises(MalformedPacket, MALFORMED, frame(0x10, s("MQTT") + b"\x04"))
    raises(MalformedPacket, MALFORMED, frame(0x10, s("MQTT") + b"\x04\x02\x00"))


def test_connack_reserved_flags():
    raises(MalformedPacket, MALFORMED, bytes.fromhex("20 02 02 00"), V311)
    raises(MalformedPacket, MALFORMED, bytes.fromhex("20 03 80 00 00"), V5)


def test_v311_ack_wrong_length():
    raises(MalformedPacket, MALFORMED, bytes.fromhex("40 01 00"), V311)
    raises(MalformedPacket, MALFORMED, bytes.fromhex("40 03 000a 00"), V311)
    raises(MalformedPacket, MALFORMED, bytes.fromhex("40 00"), V5)


def test_oversized_frame():
    data = encode(Publish("t", b"x" * 200), V311)
    assert len(data) == 206
    assert split_frame(data, 0, 206) == (3, 206)
    for limit in (205, 100, 3):
        with pytest.raises(PacketTooLarge) as info:
            split_frame(data, 0, limit)
        assert info.value.reason_code == TOO_LARGE
    # Known as soon as the Remaining Length is complete, before the body arrives.
    with pytest.raises(PacketTooLarge):
        split_frame(data[:3], 0, 205)
    assert split_frame(data[:2], 0, 205) is None


def test_oversized_frame_at_offset():
    data = encode(Pingreq()) + encode(Publish("t", b"x" * 200), V311)
    assert split_frame(data, 0, 100) == (2, 2)
    with pytest.raises(PacketTooLarge):
        split_frame(data, 2, 100)
