"""Sans-I/O MQTT 3.1.1 and 5.0 codec: bytes <-> packet objects.

`decode(first_byte, body, version)` turns one whole packet (fixed-header byte plus the body
after the Remaining Length) into a packet object and is strict: anything the specs call
malformed raises MalformedPacket, anything they call a protocol error raises ProtocolError.
`encode(packet, version)` does the reverse. `split_frame` finds packet boundaries in a
stream buffer. Nothing here does I/O.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from . import reason_codes as rc
from .errors import MalformedPacket, PacketTooLarge, ProtocolError, UnsupportedProtocolVersion
from .properties import (
    decode_binary,
    decode_properties,
    decode_utf8,
    encode_binary,
    encode_properties,
    encode_utf8,
    encode_varint,
)

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

MQTT_3_1, MQTT_3_1_1, MQTT_5 = 3, 4, 5
_PROTOCOL_NAMES = {MQTT_3_1: "MQIsdp", MQTT_3_1_1: "MQTT", MQTT_5: "MQTT"}


@dataclass(slots=True)
class Will:
    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connect:
    client_id: str
    protocol_level: int = MQTT_3_1_1
    clean_start: bool = True
    keepalive: int = 60
    will: Will | None = None
    username: str | None = None
    password: bytes | None = None
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Connack:
    session_present: bool = False
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Publish:
    topic: str
    payload: bytes = b""
    qos: int = 0
    retain: bool = False
    dup: bool = False
    packet_id: int | None = None
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class _Ack:
    packet_id: int
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


class Puback(_Ack):
    __slots__ = ()


class Pubrec(_Ack):
    __slots__ = ()


class Pubrel(_Ack):
    __slots__ = ()


class Pubcomp(_Ack):
    __slots__ = ()


@dataclass(slots=True)
class Subscription:
    topic_filter: str
    qos: int = 0
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0


@dataclass(slots=True)
class Subscribe:
    packet_id: int
    subscriptions: list[Subscription]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Suback:
    packet_id: int
    reason_codes: list[int]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsubscribe:
    packet_id: int
    topic_filters: list[str]
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Unsuback:
    packet_id: int
    reason_codes: list[int] = field(default_factory=list)
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Pingreq:
    pass


@dataclass(slots=True)
class Pingresp:
    pass


@dataclass(slots=True)
class Disconnect:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


@dataclass(slots=True)
class Auth:
    reason_code: int = 0
    properties: dict = field(default_factory=dict)


Packet = (Connect | Connack | Publish | Puback | Pubrec | Pubrel | Pubcomp | Subscribe | Suback
          | Unsubscribe | Unsuback | Pingreq | Pingresp | Disconnect | Auth)

# --------------------------------------------------------------------------- framing


def split_frame(buf: bytes | bytearray | memoryview, pos: int,
                max_size: int) -> tuple[int, int] | None:
    """Find the packet starting at `pos`: (body start, body end), or None if incomplete.

    Raises PacketTooLarge if the packet would exceed `max_size` bytes in all, and
    MalformedPacket for a Remaining Length longer than four bytes.
    """
    n = len(buf)
    value = 0
    shift = 0
    i = pos + 1
    while True:
        if i >= n:
            return None
        byte = buf[i]
        value |= (byte & 0x7F) << shift
        i += 1
        if not byte & 0x80:
            break
        shift += 7
        if shift > 21:
            raise MalformedPacket("remaining length longer than four bytes")
    if value + (i - pos) > max_size:
        raise PacketTooLarge(f"packet of {value + (i - pos)} bytes exceeds the maximum of "
                             f"{max_size}")
    end = i + value
    if end > n:
        return None
    return i, end


# --------------------------------------------------------------------------- decoding


def _u16(body: memoryview, pos: int, what: str) -> int:
    if pos + 2 > len(body):
        raise MalformedPacket(f"{what} runs past the end of the packet")
    return (body[pos] << 8) | body[pos + 1]


def _expect_flags(ptype: int, flags: int, expected: int, name: str) -> None:
    if flags != expected:
        raise MalformedPacket(f"{name} has reserved fixed-header flags 0x{flags:X}, "
                              f"expected 0x{expected:X}")


def _expect_end(body: memoryview, pos: int, name: str) -> None:
    if pos != len(body):
        raise MalformedPacket(f"{name} has {len(body) - pos} unexpected trailing bytes")


def decode(first_byte: int, body: memoryview | bytes, version: int) -> Packet:
    """Decode one packet. `version` is the connection's protocol level (5 selects MQTT 5)."""
    if not isinstance(body, memoryview):
        body = memoryview(body)
    ptype = first_byte >> 4
    flags = first_byte & 0x0F
    decoder = _DECODERS.get(ptype)
    if decoder is None:
        raise MalformedPacket(f"reserved packet type {ptype}")
    return decoder(flags, body, version)


def _decode_connect(flags: int, body: memoryview, _version: int) -> Connect:
    _expect_flags(CONNECT, flags, 0, "CONNECT")
    name, pos = decode_utf8(body, 0)
    if pos >= len(body):
        raise MalformedPacket("CONNECT ends before the protocol level")
    level = body[pos]
    pos += 1
    if name not in ("MQTT", "MQIsdp"):
        raise UnsupportedProtocolVersion(f"unknown protocol name {name!r}", level)
    if _PROTOCOL_NAMES.get(level) != name:
        raise UnsupportedProtocolVersion(f"unsupported protocol level {level} for {name}", level)
    if pos >= len(body):
        raise MalformedPacket("CONNECT ends before the connect flags")
    cflags = body[pos]
    pos += 1
    if cflags & 0x01:
        raise MalformedPacket("CONNECT reserved flag is set")
    keepalive = _u16(body, pos, "keep alive")
    pos += 2
    props: dict = {}
    if level == MQTT_5:
        props, pos = decode_properties(body, pos, "connect")
    client_id, pos = decode_utf8(body, pos)
    will = None
    will_flag = bool(cflags & 0x04)
    will_qos = (cflags >> 3) & 0x03
    will_retain = bool(cflags & 0x20)
    if will_flag:
        if will_qos == 3:
            raise MalformedPacket("will QoS 3")
        will_props: dict = {}
        if level == MQTT_5:
            will_props, pos = decode_properties(body, pos, "will")
        will_topic, pos = decode_utf8(body, pos)
        will_payload, pos = decode_binary(body, pos)
        will = Will(will_topic, will_payload, will_qos, will_retain, will_props)
    elif will_qos or will_retain:
        raise MalformedPacket("will QoS or retain set without the will flag")
    username = password = None
    if cflags & 0x80:
        username, pos = decode_utf8(body, pos)
    if cflags & 0x40:
        if level == MQTT_3_1_1 and username is None:
            raise MalformedPacket("password flag set without the user name flag")
        password, pos = decode_binary(body, pos)
    _expect_end(body, pos, "CONNECT")
    return Connect(client_id, level, bool(cflags & 0x02), keepalive, will, username, password,
                   props)


def _decode_connack(flags: int, body: memoryview, version: int) -> Connack:
    _expect_flags(CONNACK, flags, 0, "CONNACK")
    if len(body) < 2:
        raise MalformedPacket("CONNACK shorter than two bytes")
    if body[0] & 0xFE:
        raise MalformedPacket("CONNACK reserved acknowledge flags are set")
    props: dict = {}
    pos = 2
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "connack")
    _expect_end(body, pos, "CONNACK")
    return Connack(bool(body[0] & 1), body[1], props)


def _decode_publish(flags: int, body: memoryview, version: int) -> Publish:
    qos = (flags >> 1) & 0x03
    if qos == 3:
        raise MalformedPacket("PUBLISH with QoS 3")
    dup = bool(flags & 0x08)
    if dup and qos == 0:
        raise MalformedPacket("PUBLISH QoS 0 with the DUP flag set")
    topic, pos = decode_utf8(body, 0)
    packet_id = None
    if qos:
        packet_id = _u16(body, pos, "packet identifier")
        if packet_id == 0:
            raise MalformedPacket("PUBLISH packet identifier 0")
        pos += 2
    props: dict = {}
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "publish")
    return Publish(topic, bytes(body[pos:]), qos, bool(flags & 1), dup, packet_id, props)


def _make_ack_decoder(cls: type, ptype: int, name: str, expected_flags: int):
    def decode_ack(flags: int, body: memoryview, version: int) -> _Ack:
        _expect_flags(ptype, flags, expected_flags, name)
        packet_id = _u16(body, 0, "packet identifier")
        if packet_id == 0:
            raise MalformedPacket(f"{name} packet identifier 0")
        reason = 0
        props: dict = {}
        if version == MQTT_5 and len(body) > 2:
            reason = body[2]
            if len(body) > 3:
                props, pos = decode_properties(body, 3, "ack")
                _expect_end(body, pos, name)
        elif len(body) != 2:
            raise MalformedPacket(f"{name} must be exactly two bytes long in MQTT 3.1.1")
        return cls(packet_id, reason, props)

    return decode_ack


def _decode_subscribe(flags: int, body: memoryview, version: int) -> Subscribe:
    _expect_flags(SUBSCRIBE, flags, 0x02, "SUBSCRIBE")
    packet_id = _u16(body, 0, "packet identifier")
    if packet_id == 0:
        raise MalformedPacket("SUBSCRIBE packet identifier 0")
    pos = 2
    props: dict = {}
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "subscribe")
    subs = []
    while pos < len(body):
        topic_filter, pos = decode_utf8(body, pos)
        if pos >= len(body):
            raise MalformedPacket("SUBSCRIBE topic filter without options")
        opts = body[pos]
        pos += 1
        qos = opts & 0x03
        if qos == 3:
            raise MalformedPacket("SUBSCRIBE requests QoS 3")
        if version == MQTT_5:
            if opts & 0xC0:
                raise MalformedPacket("SUBSCRIBE options reserved bits are set")
            retain_handling = (opts >> 4) & 0x03
            if retain_handling == 3:
                raise ProtocolError("SUBSCRIBE retain handling 3")
            subs.append(Subscription(topic_filter, qos, bool(opts & 0x04), bool(opts & 0x08),
                                     retain_handling))
        else:
            if opts & 0xFC:
                raise MalformedPacket("SUBSCRIBE requested QoS byte has reserved bits set")
            subs.append(Subscription(topic_filter, qos))
    if not subs:
        raise ProtocolError("SUBSCRIBE with no topic filters")
    return Subscribe(packet_id, subs, props)


def _decode_suback(flags: int, body: memoryview, version: int) -> Suback:
    _expect_flags(SUBACK, flags, 0, "SUBACK")
    packet_id = _u16(body, 0, "packet identifier")
    pos = 2
    props: dict = {}
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "suback")
    return Suback(packet_id, list(body[pos:]), props)


def _decode_unsubscribe(flags: int, body: memoryview, version: int) -> Unsubscribe:
    _expect_flags(UNSUBSCRIBE, flags, 0x02, "UNSUBSCRIBE")
    packet_id = _u16(body, 0, "packet identifier")
    if packet_id == 0:
        raise MalformedPacket("UNSUBSCRIBE packet identifier 0")
    pos = 2
    props: dict = {}
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "unsubscribe")
    filters = []
    while pos < len(body):
        topic_filter, pos = decode_utf8(body, pos)
        filters.append(topic_filter)
    if not filters:
        raise ProtocolError("UNSUBSCRIBE with no topic filters")
    return Unsubscribe(packet_id, filters, props)


def _decode_unsuback(flags: int, body: memoryview, version: int) -> Unsuback:
    _expect_flags(UNSUBACK, flags, 0, "UNSUBACK")
    packet_id = _u16(body, 0, "packet identifier")
    pos = 2
    props: dict = {}
    if version == MQTT_5:
        props, pos = decode_properties(body, pos, "unsuback")
        return Unsuback(packet_id, list(body[pos:]), props)
    _expect_end(body, pos, "UNSUBACK")
    return Unsuback(packet_id, [], props)


def _make_empty_decoder(cls: type, ptype: int, name: str):
    def decode_empty(flags: int, body: memoryview, _version: int):
        _expect_flags(ptype, flags, 0, name)
        _expect_end(body, 0, name)
        return cls()

    return decode_empty


def _make_reason_decoder(cls: type, ptype: int, name: str, packet: str):
    def decode_reason(flags: int, body: memoryview, version: int):
        _expect_flags(ptype, flags, 0, name)
        if version != MQTT_5:
            if ptype == AUTH:
                raise MalformedPacket("AUTH is an MQTT 5 packet")
            _expect_end(body, 0, name)
            return cls()
        if not body:
            return cls()
        reason = body[0]
        props: dict = {}
        if len(body) > 1:
            props, pos = decode_properties(body, 1, packet)
            _expect_end(body, pos, name)
        return cls(reason, props)

    return decode_reason


_DECODERS = {
    CONNECT: _decode_connect,
    CONNACK: _decode_connack,
    PUBLISH: _decode_publish,
    PUBACK: _make_ack_decoder(Puback, PUBACK, "PUBACK", 0),
    PUBREC: _make_ack_decoder(Pubrec, PUBREC, "PUBREC", 0),
    PUBREL: _make_ack_decoder(Pubrel, PUBREL, "PUBREL", 0x02),
    PUBCOMP: _make_ack_decoder(Pubcomp, PUBCOMP, "PUBCOMP", 0),
    SUBSCRIBE: _decode_subscribe,
    SUBACK: _decode_suback,
    UNSUBSCRIBE: _decode_unsubscribe,
    UNSUBACK: _decode_unsuback,
    PINGREQ: _make_empty_decoder(Pingreq, PINGREQ, "PINGREQ"),
    PINGRESP: _make_empty_decoder(Pingresp, PINGRESP, "PINGRESP"),
    DISCONNECT: _make_reason_decoder(Disconnect, DISCONNECT, "DISCONNECT", "disconnect"),
    AUTH: _make_reason_decoder(Auth, AUTH, "AUTH", "auth"),
}

# --------------------------------------------------------------------------- encoding


def _frame(first_byte: int, body: bytes) -> bytes:
    return bytes((first_byte,)) + encode_varint(len(body)) + body


def encode_publish(topic: bytes, payload: bytes, qos: int, retain: bool, dup: bool,
                   packet_id: int | None, props: bytes | None) -> bytes:
    """Fast path: `topic` already UTF-8, `props` already encoded (None for MQTT 3.1.1)."""
    first = 0x30 | (qos << 1) | (0x01 if retain else 0) | (0x08 if dup else 0)
    tlen = len(topic)
    length = 2 + tlen + len(payload)
    if qos:
        length += 2
    if props is not None:
        length += len(props)
    # One join instead of a chain of concatenations: this runs for every QoS 1/2 delivery.
    if length < 128:
        fixed = _pack_header(first, length, tlen)
    else:
        fixed = bytes((first,)) + encode_varint(length) + _pack_u16(tlen)
    if qos:
        if props is not None:
            return b"".join((fixed, topic, _pack_u16(packet_id), props, payload))
        return b"".join((fixed, topic, _pack_u16(packet_id), payload))
    if props is not None:
        return b"".join((fixed, topic, props, payload))
    return b"".join((fixed, topic, payload))


_pack_header = struct.Struct(">BBH").pack
_pack_u16 = struct.Struct(">H").pack


def encode(packet: Packet, version: int = MQTT_3_1_1) -> bytes:
    """Encode any packet object for a connection speaking protocol level `version`."""
    v5 = version == MQTT_5
    kind = type(packet)
    if kind is Publish:
        p = packet
        return encode_publish(p.topic.encode(), p.payload, p.qos, p.retain, p.dup, p.packet_id,
                              encode_properties(p.properties) if v5 else None)
    if kind in _ACK_TYPES:
        body = packet.packet_id.to_bytes(2, "big")
        if v5 and (packet.reason_code or packet.properties):
            body += bytes((packet.reason_code,))
            if packet.properties:
                body += encode_properties(packet.properties)
        return _frame(_ACK_TYPES[kind], body)
    if kind is Connack:
        body = bytes((1 if packet.session_present else 0, packet.reason_code))
        if v5:
            body += encode_properties(packet.properties)
        return _frame(0x20, body)
    if kind is Suback:
        body = packet.packet_id.to_bytes(2, "big")
        if v5:
            body += encode_properties(packet.properties)
        return _frame(0x90, body + bytes(packet.reason_codes))
    if kind is Unsuback:
        body = packet.packet_id.to_bytes(2, "big")
        if v5:
            body += encode_properties(packet.properties) + bytes(packet.reason_codes)
        return _frame(0xB0, body)
    if kind is Pingreq:
        return b"\xc0\x00"
    if kind is Pingresp:
        return b"\xd0\x00"
    if kind in (Disconnect, Auth):
        first = 0xE0 if kind is Disconnect else 0xF0
        if not v5:
            if kind is Auth:
                raise ValueError("AUTH is an MQTT 5 packet")
            return b"\xe0\x00"
        if packet.reason_code == 0 and not packet.properties:
            return bytes((first, 0))
        return _frame(first, bytes((packet.reason_code,)) + encode_properties(packet.properties))
    if kind is Connect:
        return _encode_connect(packet)
    if kind is Subscribe:
        return _encode_subscribe(packet, v5)
    if kind is Unsubscribe:
        body = packet.packet_id.to_bytes(2, "big")
        if v5:
            body += encode_properties(packet.properties)
        for topic_filter in packet.topic_filters:
            body += encode_utf8(topic_filter)
        return _frame(0xA2, body)
    raise TypeError(f"not an MQTT packet: {packet!r}")


_ACK_TYPES = {Puback: 0x40, Pubrec: 0x50, Pubrel: 0x62, Pubcomp: 0x70}


def _encode_connect(p: Connect) -> bytes:
    level = p.protocol_level
    body = encode_utf8(_PROTOCOL_NAMES[level]) + bytes((level,))
    flags = 0x02 if p.clean_start else 0
    if p.will is not None:
        flags |= 0x04 | (p.will.qos << 3) | (0x20 if p.will.retain else 0)
    if p.username is not None:
        flags |= 0x80
    if p.password is not None:
        flags |= 0x40
    body += bytes((flags,)) + p.keepalive.to_bytes(2, "big")
    if level == MQTT_5:
        body += encode_properties(p.properties)
    body += encode_utf8(p.client_id)
    if p.will is not None:
        if level == MQTT_5:
            body += encode_properties(p.will.properties)
        body += encode_utf8(p.will.topic) + encode_binary(p.will.payload)
    if p.username is not None:
        body += encode_utf8(p.username)
    if p.password is not None:
        body += encode_binary(p.password)
    return _frame(0x10, body)


def _encode_subscribe(p: Subscribe, v5: bool) -> bytes:
    body = p.packet_id.to_bytes(2, "big")
    if v5:
        body += encode_properties(p.properties)
    for sub in p.subscriptions:
        opts = sub.qos
        if v5:
            opts |= (0x04 if sub.no_local else 0) | (0x08 if sub.retain_as_published else 0)
            opts |= sub.retain_handling << 4
        body += encode_utf8(sub.topic_filter) + bytes((opts,))
    return _frame(0x82, body)


def reason_is_error(code: int) -> bool:
    return code >= rc.UNSPECIFIED_ERROR


__all__ = [
    "Auth", "Connack", "Connect", "Disconnect", "MalformedPacket", "Packet", "Pingreq",
    "Pingresp", "ProtocolError", "Puback", "Pubcomp", "Publish", "Pubrec", "Pubrel", "Suback",
    "Subscribe", "Subscription", "Unsuback", "Unsubscribe", "Will", "decode", "encode",
    "encode_publish", "split_frame",
]
