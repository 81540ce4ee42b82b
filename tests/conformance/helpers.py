"""Clients for the conformance suite.

Two kinds of client live here:

* `SyncClient` drives paho-mqtt from its own network thread and offers blocking calls
  (connect, subscribe, publish, ...) that each wait a bounded time for the broker's answer,
  plus a queue of received messages.
* `RawClient` is a bare TCP socket that speaks hand-encoded MQTT. It is for behaviour a
  well-behaved library hides: never acknowledging, staying silent, sending a packet the
  broker must refuse, or looking at the exact bytes and sizes of what the broker sends.
  Its encoder and decoder are written here on purpose, so that the tests do not lean on the
  broker's own codec.

Every wait in this module has a deadline; nothing sleeps in a loop without one.
"""

from __future__ import annotations

import contextlib
import queue
import socket
import struct
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.reasoncodes import ReasonCode
from paho.mqtt.subscribeoptions import SubscribeOptions

V311 = 4
V5 = 5

TIMEOUT = 5.0  # default bound on a single wait for the broker
QUIET = 0.5  # how long to listen when checking that nothing (more) arrives


def unique_topic(*parts: str) -> str:
    """A topic prefix no other test (or earlier run against a persistent broker) uses."""
    return "/".join(("conf", uuid.uuid4().hex[:12], *parts))


def unique_id(prefix: str = "c") -> str:
    return f"{prefix}-{uuid.uuid4().hex[:16]}"


# --------------------------------------------------------------------------------------------
# paho-based client
# --------------------------------------------------------------------------------------------


def props_to_dict(props: Properties | None) -> dict[str, Any]:
    """paho Properties -> {"ContentType": ..., "UserProperty": [(k, v), ...], ...}."""
    if props is None:
        return {}
    out: dict[str, Any] = {}
    for name in props.names:
        key = name.replace(" ", "")
        if hasattr(props, key):
            out[key] = getattr(props, key)
    return out


def make_props(packet_type: int, **values: Any) -> Properties | None:
    """Build paho Properties from keyword names (None values are left out)."""
    values = {k: v for k, v in values.items() if v is not None}
    if not values:
        return None
    props = Properties(packet_type)
    for key, value in values.items():
        setattr(props, key, value)
    return props


def _code(rc: Any) -> int:
    """A paho ReasonCode (or a plain int) as an int."""
    if rc is None:
        return 0
    return int(getattr(rc, "value", rc))


@dataclass
class Msg:
    """One application message as a client received it."""

    topic: str  # after resolving any topic alias
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    mid: int
    props: dict[str, Any]
    wire_topic: str  # the topic name field exactly as it was on the wire


@dataclass
class ConnAck:
    reason_code: int
    session_present: bool
    props: dict[str, Any]


@dataclass
class Will:
    topic: str
    payload: bytes = b"will"
    qos: int = 0
    retain: bool = False
    props: dict[str, Any] = field(default_factory=dict)


@dataclass
class Disconnected:
    reason_code: int
    props: dict[str, Any]


class SyncClient:
    """One MQTT connection made with paho-mqtt, with bounded blocking calls.

    A SyncClient is one connection: to reconnect with the same client id (to resume a
    session), make a new SyncClient with that client_id.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        version: int = V5,
        client_id: str | None = None,
        clean: bool = True,
        session_expiry: int | None = None,
        keepalive: int = 60,
        will: Will | None = None,
        connect_props: dict[str, Any] | None = None,
        manual_ack: bool = False,
    ) -> None:
        self.host = host
        self.port = port
        self.version = version
        self.client_id = unique_id() if client_id is None else client_id
        self.clean = clean
        self.session_expiry = session_expiry
        self.keepalive = keepalive
        self.connect_props = dict(connect_props or {})
        # What this client allows the server to use (server -> client topic aliases).
        self.alias_max = int(self.connect_props.get("TopicAliasMaximum", 0))
        self.violations: list[str] = []  # protocol errors seen in what the broker sent

        protocol = paho.MQTTv5 if version == V5 else paho.MQTTv311
        kwargs: dict[str, Any] = {}
        if version != V5:
            kwargs["clean_session"] = clean
        self._c = paho.Client(
            callback_api_version=CallbackAPIVersion.VERSION2,
            client_id=self.client_id,
            protocol=protocol,
            reconnect_on_failure=False,
            manual_ack=manual_ack,
            **kwargs,
        )
        if will is not None:
            wprops = make_props(PacketTypes.WILLMESSAGE, **will.props) if will.props else None
            self._c.will_set(will.topic, will.payload, will.qos, will.retain, properties=wprops)

        self._cv = threading.Condition()
        self._results: dict[tuple[str, int], Any] = {}
        self._messages: queue.Queue[Msg] = queue.Queue()
        self._aliases: dict[int, str] = {}
        self.connack: ConnAck | None = None
        self.last_suback_props: dict[str, Any] = {}
        self.last_unsuback_props: dict[str, Any] = {}
        self.disconnected: Disconnected | None = None
        self._loop_started = False

        self._c.on_connect = self._on_connect
        self._c.on_disconnect = self._on_disconnect
        self._c.on_message = self._on_message
        self._c.on_subscribe = self._on_subscribe
        self._c.on_unsubscribe = self._on_unsubscribe
        self._c.on_publish = self._on_publish

    # -- callbacks (paho network thread) --------------------------------------------------

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cv:
            self.connack = ConnAck(
                _code(reason_code), bool(flags.session_present), props_to_dict(properties)
            )
            self._cv.notify_all()

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        with self._cv:
            self.disconnected = Disconnected(_code(reason_code), props_to_dict(properties))
            self._cv.notify_all()

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cv:
            self._results[("sub", mid)] = ([_code(r) for r in reason_codes],
                                           props_to_dict(properties))
            self._cv.notify_all()

    def _on_unsubscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        with self._cv:
            codes = [_code(r) for r in reason_codes] if isinstance(reason_codes, list) else []
            self._results[("unsub", mid)] = (codes, props_to_dict(properties))
            self._cv.notify_all()

    def _on_publish(self, client, userdata, mid, reason_code, properties) -> None:
        with self._cv:
            self._results[("pub", mid)] = (_code(reason_code), props_to_dict(properties))
            self._cv.notify_all()

    def _on_message(self, client, userdata, message: paho.MQTTMessage) -> None:
        props = props_to_dict(message.properties) if self.version == V5 else {}
        wire = message.topic
        topic = wire
        alias = props.get("TopicAlias")
        if alias is not None:
            if not 1 <= alias <= self.alias_max:
                self.violations.append(
                    f"server used topic alias {alias}, client allowed {self.alias_max}")
            if wire:
                self._aliases[alias] = wire
            elif alias in self._aliases:
                topic = self._aliases[alias]
            else:
                self.violations.append(f"server used topic alias {alias} before setting it")
        self._messages.put(Msg(topic, bytes(message.payload), message.qos, bool(message.retain),
                               bool(message.dup), message.mid, props, wire))

    # -- waiting ------------------------------------------------------------------------

    def _wait(self, predicate: Callable[[], bool], timeout: float, what: str) -> None:
        with self._cv:
            if not self._cv.wait_for(predicate, timeout=timeout):
                raise AssertionError(f"{self.client_id}: timed out after {timeout}s waiting for "
                                     f"{what}")

    def _result(self, key: tuple[str, int], timeout: float, what: str) -> Any:
        self._wait(lambda: key in self._results or self.disconnected is not None, timeout, what)
        with self._cv:
            if key not in self._results:
                raise AssertionError(f"{self.client_id}: disconnected ({self.disconnected}) "
                                     f"while waiting for {what}")
            return self._results.pop(key)

    # -- operations ---------------------------------------------------------------------

    def connect(self, timeout: float = TIMEOUT) -> ConnAck:
        """Send CONNECT and wait for CONNACK (or for the broker to close the connection)."""
        props = dict(self.connect_props)
        if self.version == V5:
            if self.session_expiry is not None:
                props["SessionExpiryInterval"] = self.session_expiry
            self._c.connect(self.host, self.port, self.keepalive, clean_start=self.clean,
                            properties=make_props(PacketTypes.CONNECT, **props))
        else:
            self._c.connect(self.host, self.port, self.keepalive)
        self._c.loop_start()
        self._loop_started = True
        self._wait(lambda: self.connack is not None or self.disconnected is not None,
                   timeout, "CONNACK")
        if self.connack is None:
            raise AssertionError(f"{self.client_id}: connection closed without CONNACK "
                                 f"({self.disconnected})")
        return self.connack

    @property
    def connected(self) -> bool:
        # paho can still say "connected" just after the broker's DISCONNECT; trust the callback.
        return self.disconnected is None and self._c.is_connected()

    def subscribe(
        self,
        filters: str | Iterable[str | tuple[str, int]],
        qos: int = 0,
        *,
        no_local: bool = False,
        retain_as_published: bool = False,
        retain_handling: int = 0,
        sub_id: int | None = None,
        user_props: list[tuple[str, str]] | None = None,
        timeout: float = TIMEOUT,
    ) -> list[int]:
        """Subscribe and return the SUBACK's reason codes (granted QoS or failure)."""
        entries = [filters] if isinstance(filters, str) else list(filters)
        pairs = [(e, qos) if isinstance(e, str) else (e[0], e[1]) for e in entries]
        props = None
        if self.version == V5:
            items: list[Any] = [
                (f, SubscribeOptions(qos=q, noLocal=no_local,
                                     retainAsPublished=retain_as_published,
                                     retainHandling=retain_handling))
                for f, q in pairs]
            props = make_props(PacketTypes.SUBSCRIBE, SubscriptionIdentifier=sub_id,
                               UserProperty=user_props)
        else:
            items = pairs
        rc, mid = self._c.subscribe(items, properties=props)
        assert rc == paho.MQTT_ERR_SUCCESS, f"subscribe not sent: {rc}"
        codes, self.last_suback_props = self._result(("sub", mid), timeout, "SUBACK")
        return codes

    def unsubscribe(self, filters: str | Iterable[str], timeout: float = TIMEOUT) -> list[int]:
        """Unsubscribe; returns the UNSUBACK reason codes (empty list in 3.1.1)."""
        topics = [filters] if isinstance(filters, str) else list(filters)
        rc, mid = self._c.unsubscribe(topics)
        assert rc == paho.MQTT_ERR_SUCCESS, f"unsubscribe not sent: {rc}"
        codes, self.last_unsuback_props = self._result(("unsub", mid), timeout, "UNSUBACK")
        return codes

    def publish(
        self,
        topic: str,
        payload: bytes | str = b"",
        qos: int = 0,
        retain: bool = False,
        timeout: float = TIMEOUT,
        **props: Any,
    ) -> int:
        """Publish and, for QoS > 0, wait for the flow to complete (PUBACK / PUBCOMP).

        Keyword arguments are v5 PUBLISH properties by their paho names (ContentType=...).
        Returns the PUBACK/PUBREC reason code (0 for QoS 0 and for 3.1.1).
        """
        p = make_props(PacketTypes.PUBLISH, **props) if props else None
        info = self._c.publish(topic, payload, qos=qos, retain=retain, properties=p)
        assert info.rc == paho.MQTT_ERR_SUCCESS, f"publish not sent: {info.rc}"
        if qos == 0:
            info.wait_for_publish(timeout)
            return 0
        code, _ = self._result(("pub", info.mid), timeout, f"QoS {qos} publish to complete")
        return code

    def ack(self, msg: Msg) -> None:
        """Acknowledge a message by hand (only for clients made with manual_ack=True)."""
        self._c.ack(msg.mid, msg.qos)

    # -- receiving ----------------------------------------------------------------------

    def messages(self, n: int, timeout: float = TIMEOUT) -> list[Msg]:
        """Wait for the next n messages."""
        deadline = time.monotonic() + timeout
        out: list[Msg] = []
        while len(out) < n:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"{self.client_id}: expected {n} messages within "
                                     f"{timeout}s, got {len(out)}: {out}")
            try:
                out.append(self._messages.get(timeout=remaining))
            except queue.Empty:
                pass
        return out

    def message(self, timeout: float = TIMEOUT) -> Msg:
        return self.messages(1, timeout)[0]

    def drain(self, within: float = QUIET) -> list[Msg]:
        """Everything that arrives in the next `within` seconds (at least that long)."""
        deadline = time.monotonic() + within
        out: list[Msg] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                out.append(self._messages.get(timeout=remaining))
            except queue.Empty:
                return out

    def no_message(self, within: float = QUIET) -> None:
        extra = self.drain(within)
        assert not extra, f"{self.client_id}: expected no message, got {extra}"

    # -- ending -------------------------------------------------------------------------

    def disconnect(self, reason_code: int | None = None, timeout: float = TIMEOUT,
                   **props: Any) -> None:
        """A normal DISCONNECT (v5: optionally with a reason code and properties)."""
        rc = None
        p = None
        if self.version == V5:
            if reason_code is not None:
                rc = ReasonCode(PacketTypes.DISCONNECT, identifier=reason_code)
            p = make_props(PacketTypes.DISCONNECT, **props) if props else None
        self._c.disconnect(reasoncode=rc, properties=p)
        self._wait(lambda: self.disconnected is not None, timeout, "disconnect")
        self._stop_loop()

    def drop(self, timeout: float = TIMEOUT) -> None:
        """End the connection abruptly: close the socket without sending DISCONNECT."""
        sock = self._c.socket()
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        self._wait(lambda: self.disconnected is not None, timeout, "socket to close")
        self._stop_loop()

    def wait_disconnected(self, timeout: float = TIMEOUT) -> Disconnected:
        """Wait for the broker to end this connection; returns the reason (v5 DISCONNECT)."""
        self._wait(lambda: self.disconnected is not None, timeout, "the broker to disconnect")
        assert self.disconnected is not None
        return self.disconnected

    def _stop_loop(self) -> None:
        if self._loop_started:
            self._loop_started = False
            self._c.loop_stop()

    def close(self) -> None:
        """Teardown: end the connection however it is, quietly and quickly."""
        try:
            if self._c.is_connected():
                self._c.disconnect()
                with self._cv:
                    self._cv.wait_for(lambda: self.disconnected is not None, timeout=2)
        finally:
            self._stop_loop()
            sock = self._c.socket()
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.close()


# --------------------------------------------------------------------------------------------
# raw MQTT codec
# --------------------------------------------------------------------------------------------

CONNECT, CONNACK, PUBLISH, PUBACK, PUBREC, PUBREL, PUBCOMP = 1, 2, 3, 4, 5, 6, 7
SUBSCRIBE, SUBACK, UNSUBSCRIBE, UNSUBACK, PINGREQ, PINGRESP, DISCONNECT, AUTH = range(8, 16)

PACKET_NAMES = {1: "CONNECT", 2: "CONNACK", 3: "PUBLISH", 4: "PUBACK", 5: "PUBREC",
                6: "PUBREL", 7: "PUBCOMP", 8: "SUBSCRIBE", 9: "SUBACK", 10: "UNSUBSCRIBE",
                11: "UNSUBACK", 12: "PINGREQ", 13: "PINGRESP", 14: "DISCONNECT", 15: "AUTH"}

# MQTT 5 properties: name -> (identifier, wire type)
PROPERTIES: dict[str, tuple[int, str]] = {
    "PayloadFormatIndicator": (0x01, "byte"),
    "MessageExpiryInterval": (0x02, "u32"),
    "ContentType": (0x03, "str"),
    "ResponseTopic": (0x08, "str"),
    "CorrelationData": (0x09, "bin"),
    "SubscriptionIdentifier": (0x0B, "varint"),
    "SessionExpiryInterval": (0x11, "u32"),
    "AssignedClientIdentifier": (0x12, "str"),
    "ServerKeepAlive": (0x13, "u16"),
    "AuthenticationMethod": (0x15, "str"),
    "AuthenticationData": (0x16, "bin"),
    "RequestProblemInformation": (0x17, "byte"),
    "WillDelayInterval": (0x18, "u32"),
    "RequestResponseInformation": (0x19, "byte"),
    "ResponseInformation": (0x1A, "str"),
    "ServerReference": (0x1C, "str"),
    "ReasonString": (0x1F, "str"),
    "ReceiveMaximum": (0x21, "u16"),
    "TopicAliasMaximum": (0x22, "u16"),
    "TopicAlias": (0x23, "u16"),
    "MaximumQoS": (0x24, "byte"),
    "RetainAvailable": (0x25, "byte"),
    "UserProperty": (0x26, "pair"),
    "MaximumPacketSize": (0x27, "u32"),
    "WildcardSubscriptionAvailable": (0x28, "byte"),
    "SubscriptionIdentifierAvailable": (0x29, "byte"),
    "SharedSubscriptionAvailable": (0x2A, "byte"),
}
_PROPERTY_BY_ID = {ident: (name, kind) for name, (ident, kind) in PROPERTIES.items()}
_MULTIPLE = {"UserProperty", "SubscriptionIdentifier"}


class ProtocolError(AssertionError):
    """The broker sent bytes that are not valid MQTT."""


def encode_varint(n: int) -> bytes:
    if not 0 <= n <= 268_435_455:
        raise ValueError(f"variable byte integer out of range: {n}")
    out = bytearray()
    while True:
        byte, n = n % 128, n // 128
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def decode_varint(buf: bytes, pos: int) -> tuple[int, int]:
    value = 0
    for i in range(4):
        if pos >= len(buf):
            raise ProtocolError("truncated variable byte integer")
        byte = buf[pos]
        pos += 1
        value += (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            return value, pos
    raise ProtocolError("variable byte integer longer than 4 bytes")


def encode_bytes(data: bytes) -> bytes:
    return struct.pack("!H", len(data)) + data


def encode_str(text: str | bytes) -> bytes:
    return encode_bytes(text.encode() if isinstance(text, str) else text)


def _read_bytes(buf: bytes, pos: int) -> tuple[bytes, int]:
    if pos + 2 > len(buf):
        raise ProtocolError("truncated length prefix")
    (n,) = struct.unpack_from("!H", buf, pos)
    if pos + 2 + n > len(buf):
        raise ProtocolError("truncated string/binary data")
    return bytes(buf[pos + 2:pos + 2 + n]), pos + 2 + n


def _read_str(buf: bytes, pos: int) -> tuple[str, int]:
    data, pos = _read_bytes(buf, pos)
    try:
        return data.decode("utf-8"), pos
    except UnicodeDecodeError as exc:
        raise ProtocolError(f"invalid UTF-8 string {data!r}") from exc


def encode_properties(props: dict[str, Any] | None) -> bytes:
    """MQTT 5 property block (length prefix included) from {name: value}."""
    body = bytearray()
    for name, value in (props or {}).items():
        ident, kind = PROPERTIES[name]
        values = value if name in _MULTIPLE and isinstance(value, list) else [value]
        for v in values:
            body += encode_varint(ident)
            if kind == "byte":
                body.append(v)
            elif kind == "u16":
                body += struct.pack("!H", v)
            elif kind == "u32":
                body += struct.pack("!I", v)
            elif kind == "varint":
                body += encode_varint(v)
            elif kind == "str":
                body += encode_str(v)
            elif kind == "bin":
                body += encode_bytes(v)
            else:  # pair
                body += encode_str(v[0]) + encode_str(v[1])
    return encode_varint(len(body)) + bytes(body)


def decode_properties(buf: bytes, pos: int) -> tuple[dict[str, Any], int]:
    length, pos = decode_varint(buf, pos)
    end = pos + length
    if end > len(buf):
        raise ProtocolError("property length runs past the packet")
    props: dict[str, Any] = {}
    while pos < end:
        ident, pos = decode_varint(buf, pos)
        if ident not in _PROPERTY_BY_ID:
            raise ProtocolError(f"unknown property identifier 0x{ident:02x}")
        name, kind = _PROPERTY_BY_ID[ident]
        value: Any
        if kind == "byte":
            value, pos = buf[pos], pos + 1
        elif kind == "u16":
            (value,), pos = struct.unpack_from("!H", buf, pos), pos + 2
        elif kind == "u32":
            (value,), pos = struct.unpack_from("!I", buf, pos), pos + 4
        elif kind == "varint":
            value, pos = decode_varint(buf, pos)
        elif kind == "str":
            value, pos = _read_str(buf, pos)
        elif kind == "bin":
            value, pos = _read_bytes(buf, pos)
        else:
            key, pos = _read_str(buf, pos)
            val, pos = _read_str(buf, pos)
            value = (key, val)
        if name in _MULTIPLE:
            props.setdefault(name, []).append(value)
        elif name in props:
            raise ProtocolError(f"property {name} included twice")
        else:
            props[name] = value
    if pos != end:
        raise ProtocolError("property block length mismatch")
    return props, pos


def packet(ptype: int, flags: int, body: bytes) -> bytes:
    return bytes([(ptype << 4) | flags]) + encode_varint(len(body)) + body


def connect_packet(
    client_id: str,
    *,
    version: int = V311,
    clean: bool = True,
    keepalive: int = 60,
    props: dict[str, Any] | None = None,
    will: Will | None = None,
    username: str | None = None,
    password: bytes | None = None,
    protocol_name: str = "MQTT",
    level: int | None = None,
) -> bytes:
    flags = 0x02 if clean else 0
    if will is not None:
        flags |= 0x04 | (will.qos << 3) | (0x20 if will.retain else 0)
    if password is not None:
        flags |= 0x40
    if username is not None:
        flags |= 0x80
    body = bytearray(encode_str(protocol_name))
    body.append(version if level is None else level)
    body.append(flags)
    body += struct.pack("!H", keepalive)
    if version == V5:
        body += encode_properties(props)
    body += encode_str(client_id)
    if will is not None:
        if version == V5:
            body += encode_properties(will.props)
        body += encode_str(will.topic) + encode_bytes(will.payload)
    if username is not None:
        body += encode_str(username)
    if password is not None:
        body += encode_bytes(password)
    return packet(CONNECT, 0, bytes(body))


def publish_packet(
    topic: str,
    payload: bytes = b"",
    *,
    version: int = V311,
    qos: int = 0,
    retain: bool = False,
    dup: bool = False,
    pid: int | None = None,
    props: dict[str, Any] | None = None,
) -> bytes:
    flags = (0x08 if dup else 0) | (qos << 1) | (0x01 if retain else 0)
    body = bytearray(encode_str(topic))
    if qos:
        if pid is None:
            raise ValueError("QoS > 0 needs a packet identifier")
        body += struct.pack("!H", pid)
    if version == V5:
        body += encode_properties(props)
    body += payload
    return packet(PUBLISH, flags, bytes(body))


def sub_options(qos: int, *, no_local: bool = False, retain_as_published: bool = False,
                retain_handling: int = 0) -> int:
    return qos | (0x04 if no_local else 0) | (0x08 if retain_as_published else 0) | (
        retain_handling << 4)


def subscribe_packet(
    pid: int,
    filters: Iterable[tuple[str, int]],
    *,
    version: int = V311,
    props: dict[str, Any] | None = None,
    flags: int = 0x02,
) -> bytes:
    """filters: (topic filter, options byte) - in 3.1.1 the options byte is the QoS."""
    body = bytearray(struct.pack("!H", pid))
    if version == V5:
        body += encode_properties(props)
    for topic_filter, options in filters:
        body += encode_str(topic_filter) + bytes([options])
    return packet(SUBSCRIBE, flags, bytes(body))


def unsubscribe_packet(pid: int, filters: Iterable[str], *, version: int = V311) -> bytes:
    body = bytearray(struct.pack("!H", pid))
    if version == V5:
        body += encode_properties(None)
    for topic_filter in filters:
        body += encode_str(topic_filter)
    return packet(UNSUBSCRIBE, 0x02, bytes(body))


def ack_packet(ptype: int, pid: int, *, version: int = V311, reason: int = 0,
               props: dict[str, Any] | None = None) -> bytes:
    """PUBACK / PUBREC / PUBREL / PUBCOMP."""
    body = struct.pack("!H", pid)
    if version == V5 and (reason or props):
        body += bytes([reason]) + encode_properties(props)
    return packet(ptype, 0x02 if ptype == PUBREL else 0, body)


def pingreq_packet() -> bytes:
    return packet(PINGREQ, 0, b"")


def disconnect_packet(*, version: int = V311, reason: int = 0,
                      props: dict[str, Any] | None = None) -> bytes:
    if version == V5 and (reason or props):
        return packet(DISCONNECT, 0, bytes([reason]) + encode_properties(props))
    return packet(DISCONNECT, 0, b"")


@dataclass
class Packet:
    type: int
    flags: int
    body: bytes
    size: int  # total bytes on the wire, fixed header included

    @property
    def name(self) -> str:
        return PACKET_NAMES.get(self.type, f"type {self.type}")

    def __repr__(self) -> str:
        return f"<{self.name} flags={self.flags:#x} size={self.size} body={self.body[:40]!r}>"


@dataclass
class RawPublish:
    topic: str
    payload: bytes
    qos: int
    retain: bool
    dup: bool
    pid: int | None
    props: dict[str, Any]
    size: int


@dataclass
class RawAck:
    """CONNACK, PUBACK..PUBCOMP, SUBACK, UNSUBACK or DISCONNECT, decoded."""

    pid: int | None
    codes: list[int]  # one reason code (or SUBACK/UNSUBACK: one per filter)
    props: dict[str, Any]
    session_present: bool = False

    @property
    def code(self) -> int:
        return self.codes[0] if self.codes else 0


def parse_publish(pkt: Packet, version: int) -> RawPublish:
    assert pkt.type == PUBLISH, pkt
    qos = (pkt.flags >> 1) & 0x03
    if qos == 3:
        raise ProtocolError("PUBLISH with QoS 3")
    topic, pos = _read_str(pkt.body, 0)
    pid = None
    if qos:
        (pid,) = struct.unpack_from("!H", pkt.body, pos)
        pos += 2
    props: dict[str, Any] = {}
    if version == V5:
        props, pos = decode_properties(pkt.body, pos)
    return RawPublish(topic, bytes(pkt.body[pos:]), qos, bool(pkt.flags & 0x01),
                      bool(pkt.flags & 0x08), pid, props, pkt.size)


def parse_ack(pkt: Packet, version: int) -> RawAck:
    body = pkt.body
    if pkt.type == CONNACK:
        props: dict[str, Any] = {}
        if version == V5 and len(body) > 2:
            props, _ = decode_properties(body, 2)
        return RawAck(None, [body[1]], props, session_present=bool(body[0] & 0x01))
    if pkt.type == DISCONNECT:
        if version != V5 or not body:
            return RawAck(None, [0] if version == V5 else [], {})
        props = decode_properties(body, 1)[0] if len(body) > 1 else {}
        return RawAck(None, [body[0]], props)
    (pid,) = struct.unpack_from("!H", body, 0)
    if pkt.type in (SUBACK, UNSUBACK):
        pos = 2
        props = {}
        if version == V5:
            props, pos = decode_properties(body, pos)
        return RawAck(pid, list(body[pos:]), props)
    # PUBACK, PUBREC, PUBREL, PUBCOMP
    if version != V5 or len(body) == 2:
        return RawAck(pid, [0], {})
    props = decode_properties(body, 3)[0] if len(body) > 3 else {}
    return RawAck(pid, [body[2]], props)


class Closed(Exception):
    """The broker closed the connection."""


class RawClient:
    """A TCP connection speaking hand-encoded MQTT, one packet at a time."""

    def __init__(self, host: str, port: int, version: int = V311) -> None:
        self.version = version
        self.sock = socket.create_connection((host, port), timeout=TIMEOUT)
        self.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._buf = bytearray()
        self._next_pid = 0

    def pid(self) -> int:
        self._next_pid = self._next_pid % 65535 + 1
        return self._next_pid

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def _take_packet(self) -> Packet | None:
        buf = self._buf
        if len(buf) < 2:
            return None
        length = 0
        for i in range(1, 5):
            if i >= len(buf):
                return None
            length += (buf[i] & 0x7F) << (7 * (i - 1))
            if not buf[i] & 0x80:
                header = i + 1
                break
        else:
            raise ProtocolError("remaining length longer than 4 bytes")
        if len(buf) < header + length:
            return None
        pkt = Packet(buf[0] >> 4, buf[0] & 0x0F, bytes(buf[header:header + length]),
                     header + length)
        del buf[:header + length]
        return pkt

    def recv(self, timeout: float = TIMEOUT) -> Packet:
        """The next packet. Raises TimeoutError if none in time, Closed on end of stream."""
        deadline = time.monotonic() + timeout
        while True:
            pkt = self._take_packet()
            if pkt is not None:
                return pkt
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"no packet from the broker within {timeout}s")
            self.sock.settimeout(remaining)
            try:
                data = self.sock.recv(65536)
            except TimeoutError:
                continue
            except (ConnectionResetError, BrokenPipeError) as exc:
                raise Closed(str(exc)) from exc
            if not data:
                raise Closed("end of stream")
            self._buf += data

    def expect(self, ptype: int, timeout: float = TIMEOUT) -> Packet:
        pkt = self.recv(timeout)
        assert pkt.type == ptype, f"expected {PACKET_NAMES[ptype]}, got {pkt}"
        return pkt

    def nothing(self, within: float = QUIET) -> None:
        """Assert the broker sends nothing for `within` seconds (and keeps the connection)."""
        try:
            pkt = self.recv(within)
        except TimeoutError:
            return
        raise AssertionError(f"expected silence, got {pkt}")

    def collect(self, within: float = QUIET) -> list[Packet]:
        """Every packet that arrives in the next `within` seconds."""
        deadline = time.monotonic() + within
        out: list[Packet] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return out
            try:
                out.append(self.recv(remaining))
            except TimeoutError:
                return out

    def wait_closed(self, timeout: float = TIMEOUT) -> list[Packet]:
        """Wait until the broker closes the connection; return what it sent before that."""
        deadline = time.monotonic() + timeout
        seen: list[Packet] = []
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise AssertionError(f"connection still open after {timeout}s; got {seen}")
            try:
                seen.append(self.recv(remaining))
            except Closed:
                return seen
            except TimeoutError:
                continue

    def closed_within(self, timeout: float) -> tuple[bool, list[Packet]]:
        """Like wait_closed, but report instead of failing: (closed?, packets seen)."""
        try:
            return True, self.wait_closed(timeout)
        except AssertionError:
            return False, []

    # -- conveniences -------------------------------------------------------------------

    def connect(self, client_id: str, **kwargs: Any) -> RawAck:
        self.send(connect_packet(client_id, version=self.version, **kwargs))
        return parse_ack(self.expect(CONNACK), self.version)

    def subscribe(self, filters: Iterable[tuple[str, int]],
                  props: dict[str, Any] | None = None) -> RawAck:
        pid = self.pid()
        self.send(subscribe_packet(pid, filters, version=self.version, props=props))
        ack = parse_ack(self.expect(SUBACK), self.version)
        assert ack.pid == pid, f"SUBACK for {ack.pid}, expected {pid}"
        return ack

    def publish(self, topic: str, payload: bytes = b"", qos: int = 0, retain: bool = False,
                pid: int | None = None, dup: bool = False,
                props: dict[str, Any] | None = None) -> int | None:
        if qos and pid is None:
            pid = self.pid()
        self.send(publish_packet(topic, payload, version=self.version, qos=qos, retain=retain,
                                 dup=dup, pid=pid, props=props))
        return pid

    def ack(self, ptype: int, pid: int) -> None:
        self.send(ack_packet(ptype, pid, version=self.version))

    def recv_publish(self, timeout: float = TIMEOUT) -> RawPublish:
        return parse_publish(self.expect(PUBLISH, timeout), self.version)

    def disconnect(self) -> None:
        with contextlib.suppress(OSError):
            self.send(disconnect_packet(version=self.version))
        self.close()

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.close()
