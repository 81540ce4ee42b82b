"""Codec robustness: whatever bytes arrive, split_frame + decode either return packets or raise
an MQTTError subclass (never IndexError, ValueError, UnicodeError, ...), and framing never
claims a packet before all of its bytes are there."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.mqtt.errors import (
    MalformedPacket,
    MQTTError,
    PacketTooLarge,
    ProtocolError,
    UnsupportedProtocolVersion,
)
from gateway.mqtt.packets import decode, encode, split_frame
from gateway.mqtt.properties import encode_varint

try:  # tests/mqtt may or may not be a package
    from .test_packets import PACKETS
except ImportError:  # pragma: no cover - depends on how pytest imported us
    from test_packets import PACKETS

VERSIONS = (3, 4, 5)
MAX = 1 << 20
versions = st.sampled_from(VERSIONS)
valid = st.one_of([st.tuples(st.just(v), PACKETS[v]) for v in VERSIONS])


def check_error(exc: MQTTError) -> None:
    assert type(exc) in (MalformedPacket, ProtocolError, PacketTooLarge,
                         UnsupportedProtocolVersion), type(exc)
    assert exc.reason_code in (0x81, 0x82, 0x84, 0x95)
    if isinstance(exc, UnsupportedProtocolVersion):
        assert 0 <= exc.level <= 255


def decode_or_error(first: int, body: bytes, version: int):
    """Decode one packet body; MQTTError is an acceptable outcome, anything else fails."""
    try:
        pkt = decode(first, memoryview(body), version)
    except MQTTError as exc:
        check_error(exc)
        return None
    # Anything the decoder accepts must survive a re-encode unchanged.
    again = encode(pkt, version if version == 5 else 4)
    start, end = split_frame(again, 0, MAX + 16)
    assert decode(again[0], memoryview(again)[start:end], version) == pkt
    return pkt


def feed(stream: bytes, version: int, max_size: int = MAX) -> list:
    """Frame and decode a stream the way a connection would, until it fails or runs dry."""
    out = []
    pos = 0
    while pos < len(stream):
        try:
            found = split_frame(stream, pos, max_size)
        except MQTTError as exc:
            check_error(exc)
            return out
        if found is None:
            return out
        start, end = found
        assert pos + 2 <= start <= end <= len(stream)
        pkt = decode_or_error(stream[pos], stream[start:end], version)
        if pkt is None:
            return out
        out.append(pkt)
        pos = end
    return out


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=200), versions, st.integers(2, 300))
@example(b"\x30\xff\xff\xff\xff\x7f", 5, 300)
@example(b"\x10\x0c\x00\x04MQTT\x05\x02\x00\x3c\x80", 5, 300)
def test_random_stream(data, version, max_size):
    feed(data, version, max_size)


@settings(max_examples=500, deadline=None)
@given(st.integers(0, 255), st.binary(max_size=120), versions)
def test_random_body(first, body, version):
    """Any fixed-header byte with any body: far more reach into the decoders than framing."""
    decode_or_error(first, body, version)


# Bodies that get past the first checks of each decoder, then random bytes.
_PREFIXES = [
    b"\x00\x04MQTT\x05", b"\x00\x04MQTT\x04", b"\x00\x06MQIsdp\x03",
    b"\x00\x04MQTT\x05\xce\x00\x0a", b"\x00\x04MQTT\x04\xee\x00\x0a\x00\x01c",
    b"\x00\x01a\x00\x01", b"\x00\x01", b"\x00\x01\x00", b"\x00\x01\x00\x00",
]


@settings(max_examples=500, deadline=None)
@given(st.sampled_from(range(16)).map(lambda t: t << 4), st.integers(0, 15),
       st.sampled_from(_PREFIXES), st.binary(max_size=60), versions)
def test_random_body_with_plausible_prefix(ptype, flags, prefix, tail, version):
    decode_or_error(ptype | flags, prefix + tail, version)


@settings(max_examples=300, deadline=None)
@given(valid, st.data())
def test_truncated_packets(case, data):
    version, pkt = case
    raw = encode(pkt, version)
    cut = data.draw(st.integers(0, len(raw) - 1), label="cut")
    # Cut off the stream: framing must report an incomplete packet.
    assert feed(raw[:cut], version) == []
    assert split_frame(raw[:cut], 0, MAX) is None
    # Cut the body but fix the Remaining Length: the decoder sees a short packet.
    start, end = split_frame(raw, 0, MAX)
    body = raw[start:end]
    short = body[:data.draw(st.integers(0, len(body)), label="body cut")]
    decode_or_error(raw[0], short, version)
    feed(bytes((raw[0],)) + encode_varint(len(short)) + short, version)


@settings(max_examples=500, deadline=None)
@given(valid, st.data())
def test_bit_flips(case, data):
    version, pkt = case
    raw = bytearray(encode(pkt, version))
    flips = data.draw(st.lists(st.integers(0, len(raw) * 8 - 1), min_size=1, max_size=4),
                      label="bits")
    for bit in flips:
        raw[bit // 8] ^= 1 << (bit % 8)
    feed(bytes(raw), version)
    # Flip only inside the body too, keeping the frame intact, so the decoder is reached.
    clean = encode(pkt, version)
    start, end = split_frame(clean, 0, MAX)
    if end > start:
        body = bytearray(clean[start:end])
        for bit in flips:
            bit %= len(body) * 8
            body[bit // 8] ^= 1 << (bit % 8)
        decode_or_error(clean[0], bytes(body), version)


@settings(max_examples=300, deadline=None)
@given(valid, st.data())
def test_byte_overwrites_and_insertions(case, data):
    version, pkt = case
    raw = bytearray(encode(pkt, version))
    start, end = split_frame(bytes(raw), 0, MAX)
    body = raw[start:end]
    pos = data.draw(st.integers(0, len(body)), label="pos")
    value = data.draw(st.integers(0, 255), label="value")
    if data.draw(st.booleans(), label="insert"):
        body[pos:pos] = bytes((value,))
    elif body:
        body[min(pos, len(body) - 1)] = value
    decode_or_error(raw[0], bytes(body), version)


@settings(max_examples=300, deadline=None)
@given(valid, st.integers(1, 3))
def test_every_prefix_is_incomplete(case, repeat):
    """split_frame returns None for every proper prefix, then exactly the whole packet."""
    version, pkt = case
    raw = encode(pkt, version)
    for n in range(len(raw)):
        assert split_frame(raw[:n], 0, MAX) is None, n
    start, end = split_frame(raw, 0, MAX)
    assert end == len(raw)
    # The same holds at an offset inside a stream that already holds other packets,
    # and with more bytes following.
    stream = raw * repeat
    for n in range(len(raw) * (repeat - 1), len(stream)):
        assert split_frame(stream[:n], len(raw) * (repeat - 1), MAX) is None
    assert split_frame(stream + b"\x00", len(raw) * (repeat - 1), MAX)[1] == len(stream)


@settings(max_examples=200, deadline=None)
@given(st.lists(PACKETS[5], min_size=1,
                max_size=5), st.binary(max_size=30))
def test_stream_of_valid_packets_then_garbage(pkts, garbage):
    stream = b"".join(encode(p, 5) for p in pkts)
    assert feed(stream, 5) == pkts
    got = feed(stream + garbage, 5)
    assert got[:len(pkts)] == pkts
