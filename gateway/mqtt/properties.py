"""MQTT 5.0 properties (spec section 2.2.2): encode and decode, pure code.

Properties travel as a plain dict keyed by snake_case name. `user_property` is a list of
(name, value) pairs and `subscription_identifier` a list of ints (PUBLISH may carry several);
every other property appears at most once.
"""

from __future__ import annotations

from .errors import MalformedPacket, ProtocolError

BYTE, U16, U32, VARINT, UTF8, BINARY, PAIR = range(7)

# Packet kinds that may carry each property. "will" stands for the will properties of CONNECT.
_C, _CA, _P, _PA, _S, _SA, _U, _UA, _D, _A, _W = (
    "connect", "connack", "publish", "ack", "subscribe", "suback", "unsubscribe", "unsuback",
    "disconnect", "auth", "will",
)

PROPERTIES: dict[int, tuple[str, int, frozenset[str]]] = {
    0x01: ("payload_format_indicator", BYTE, frozenset({_P, _W})),
    0x02: ("message_expiry_interval", U32, frozenset({_P, _W})),
    0x03: ("content_type", UTF8, frozenset({_P, _W})),
    0x08: ("response_topic", UTF8, frozenset({_P, _W})),
    0x09: ("correlation_data", BINARY, frozenset({_P, _W})),
    0x0B: ("subscription_identifier", VARINT, frozenset({_P, _S})),
    0x11: ("session_expiry_interval", U32, frozenset({_C, _CA, _D})),
    0x12: ("assigned_client_identifier", UTF8, frozenset({_CA})),
    0x13: ("server_keep_alive", U16, frozenset({_CA})),
    0x15: ("authentication_method", UTF8, frozenset({_C, _CA, _A})),
    0x16: ("authentication_data", BINARY, frozenset({_C, _CA, _A})),
    0x17: ("request_problem_information", BYTE, frozenset({_C})),
    0x18: ("will_delay_interval", U32, frozenset({_W})),
    0x19: ("request_response_information", BYTE, frozenset({_C})),
    0x1A: ("response_information", UTF8, frozenset({_CA})),
    0x1C: ("server_reference", UTF8, frozenset({_CA, _D})),
    0x1F: ("reason_string", UTF8, frozenset({_CA, _PA, _SA, _UA, _D, _A})),
    0x21: ("receive_maximum", U16, frozenset({_C, _CA})),
    0x22: ("topic_alias_maximum", U16, frozenset({_C, _CA})),
    0x23: ("topic_alias", U16, frozenset({_P})),
    0x24: ("maximum_qos", BYTE, frozenset({_CA})),
    0x25: ("retain_available", BYTE, frozenset({_CA})),
    0x26: ("user_property", PAIR, frozenset({_C, _CA, _P, _PA, _S, _SA, _U, _UA, _D, _A, _W})),
    0x27: ("maximum_packet_size", U32, frozenset({_C, _CA})),
    0x28: ("wildcard_subscription_available", BYTE, frozenset({_CA})),
    0x29: ("subscription_identifier_available", BYTE, frozenset({_CA})),
    0x2A: ("shared_subscription_available", BYTE, frozenset({_CA})),
}
BY_NAME: dict[str, tuple[int, int]] = {
    name: (pid, kind) for pid, (name, kind, _) in PROPERTIES.items()
}

# Properties whose value must be 0 or 1 (spec: anything else is a Protocol Error).
_BOOLEAN = {"payload_format_indicator", "request_problem_information",
            "request_response_information", "maximum_qos", "retain_available",
            "wildcard_subscription_available", "subscription_identifier_available",
            "shared_subscription_available"}
# Properties for which zero is a Protocol Error.
_NONZERO = {"receive_maximum", "maximum_packet_size", "topic_alias", "subscription_identifier"}


def decode_varint(buf: memoryview | bytes, pos: int) -> tuple[int, int]:
    """Variable Byte Integer at `pos`: (value, next position). At most four bytes."""
    value = 0
    shift = 0
    for i in range(4):
        if pos + i >= len(buf):
            raise MalformedPacket("variable byte integer runs past the end of the packet")
        byte = buf[pos + i]
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            if i and byte == 0:
                raise MalformedPacket("variable byte integer is not minimally encoded")
            return value, pos + i + 1
        shift += 7
    raise MalformedPacket("variable byte integer longer than four bytes")


def encode_varint(value: int) -> bytes:
    if value < 128:
        return bytes((value,))
    if value > 268_435_455:
        raise ValueError(f"{value} does not fit a variable byte integer")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def decode_utf8(buf: memoryview | bytes, pos: int) -> tuple[str, int]:
    """UTF-8 Encoded String (spec 1.5.4): well-formed, no U+0000."""
    if pos + 2 > len(buf):
        raise MalformedPacket("string length runs past the end of the packet")
    n = (buf[pos] << 8) | buf[pos + 1]
    end = pos + 2 + n
    if end > len(buf):
        raise MalformedPacket("string runs past the end of the packet")
    raw = bytes(buf[pos + 2:end])
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MalformedPacket(f"string is not valid UTF-8: {exc.reason}") from None
    if "\x00" in text:
        raise MalformedPacket("string contains the null character U+0000")
    return text, end


def decode_binary(buf: memoryview | bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(buf):
        raise MalformedPacket("binary data length runs past the end of the packet")
    n = (buf[pos] << 8) | buf[pos + 1]
    end = pos + 2 + n
    if end > len(buf):
        raise MalformedPacket("binary data runs past the end of the packet")
    return bytes(buf[pos + 2:end]), end


def encode_utf8(text: str) -> bytes:
    raw = text.encode("utf-8")
    if len(raw) > 65535:
        raise ValueError("string longer than 65,535 bytes")
    return len(raw).to_bytes(2, "big") + raw


def encode_binary(data: bytes) -> bytes:
    if len(data) > 65535:
        raise ValueError("binary data longer than 65,535 bytes")
    return len(data).to_bytes(2, "big") + data


def decode_properties(buf: memoryview | bytes, pos: int, packet: str) -> tuple[dict, int]:
    """Property Length + properties at `pos`, allowed for `packet`: (properties, next pos)."""
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise MalformedPacket("properties run past the end of the packet")
    props: dict = {}
    view = buf[:end]
    while pos < end:
        ident, pos = decode_varint(view, pos)
        spec = PROPERTIES.get(ident)
        if spec is None:
            raise MalformedPacket(f"unknown property identifier 0x{ident:02X}")
        name, kind, allowed = spec
        if packet not in allowed:
            raise ProtocolError(f"property {name} is not allowed in {packet.upper()}")
        if kind == BYTE:
            if pos + 1 > end:
                raise MalformedPacket(f"property {name} runs past the end")
            value = view[pos]
            pos += 1
        elif kind == U16:
            if pos + 2 > end:
                raise MalformedPacket(f"property {name} runs past the end")
            value = (view[pos] << 8) | view[pos + 1]
            pos += 2
        elif kind == U32:
            if pos + 4 > end:
                raise MalformedPacket(f"property {name} runs past the end")
            value = int.from_bytes(view[pos:pos + 4], "big")
            pos += 4
        elif kind == VARINT:
            value, pos = decode_varint(view, pos)
        elif kind == UTF8:
            value, pos = decode_utf8(view, pos)
        elif kind == BINARY:
            value, pos = decode_binary(view, pos)
        else:
            key, pos = decode_utf8(view, pos)
            val, pos = decode_utf8(view, pos)
            props.setdefault(name, []).append((key, val))
            continue
        if name in _BOOLEAN and value not in (0, 1):
            raise ProtocolError(f"property {name} must be 0 or 1, got {value}")
        if name in _NONZERO and value == 0:
            raise ProtocolError(f"property {name} must not be 0")
        if name == "subscription_identifier":
            if packet == "subscribe" and name in props:
                raise ProtocolError("SUBSCRIBE carries more than one subscription identifier")
            props.setdefault(name, []).append(value)
            continue
        if name in props:
            raise ProtocolError(f"property {name} appears more than once")
        props[name] = value
    return props, end


def encode_properties(props: dict | None) -> bytes:
    """Property Length + properties. Unknown names raise ValueError."""
    if not props:
        return b"\x00"
    out = bytearray()
    for name, value in props.items():
        if value is None:
            continue
        try:
            ident, kind = BY_NAME[name]
        except KeyError:
            raise ValueError(f"unknown MQTT property {name!r}") from None
        if kind == PAIR:
            for key, val in value:
                out.append(ident)
                out += encode_utf8(key)
                out += encode_utf8(val)
            continue
        if name == "subscription_identifier":
            for sub_id in value if isinstance(value, (list, tuple)) else (value,):
                out.append(ident)
                out += encode_varint(sub_id)
            continue
        out.append(ident)
        if kind == BYTE:
            out.append(value)
        elif kind == U16:
            out += value.to_bytes(2, "big")
        elif kind == U32:
            out += value.to_bytes(4, "big")
        elif kind == VARINT:
            out += encode_varint(value)
        elif kind == UTF8:
            out += encode_utf8(value)
        else:
            out += encode_binary(value)
    return encode_varint(len(out)) + bytes(out)
