"""The application message as the broker routes it, and its PUBLISH encodings."""

from __future__ import annotations

import math
import time

from .packets import encode_publish
from .properties import encode_properties

# PUBLISH properties that travel with the message from publisher to subscribers
# (MQTT 5 section 3.3.2.3); topic alias, subscription ids and expiry are per hop.
FORWARDED_PROPERTIES = ("payload_format_indicator", "content_type", "response_topic",
                        "correlation_data", "user_property")


class Message:
    """One application message. Shared, never mutated, by every session it is delivered to."""

    __slots__ = ("topic", "topic_bytes", "payload", "qos", "retain", "properties", "expiry_at",
                 "_v5_props", "origin", "_plain")

    def __init__(self, topic: str, payload: bytes, qos: int = 0, retain: bool = False,
                 properties: dict | None = None, expiry_at: float | None = None,
                 topic_bytes: bytes | None = None, origin: str | None = None) -> None:
        self.topic = topic
        self.topic_bytes = topic_bytes if topic_bytes is not None else topic.encode()
        self.payload = payload
        self.qos = qos
        self.retain = retain
        self.properties = properties or {}
        self.expiry_at = expiry_at
        self.origin = origin          # client id of the publisher, None for the gateway itself
        self._v5_props: bytes | None = None
        self._plain: list[bytes | None] | None = None

    @classmethod
    def from_publish_properties(cls, topic: str, payload: bytes, qos: int, retain: bool,
                                props: dict, topic_bytes: bytes | None = None,
                                origin: str | None = None) -> Message:
        forwarded = {k: props[k] for k in FORWARDED_PROPERTIES if k in props}
        expiry = props.get("message_expiry_interval")
        expiry_at = time.time() + expiry if expiry is not None else None
        return cls(topic, payload, qos, retain, forwarded, expiry_at, topic_bytes, origin)

    def expired(self, now: float | None = None) -> bool:
        return self.expiry_at is not None and (now or time.time()) >= self.expiry_at

    def remaining_expiry(self) -> int | None:
        if self.expiry_at is None:
            return None
        return max(0, math.ceil(self.expiry_at - time.time()))

    def v5_properties(self, sub_ids: tuple[int, ...] = (), topic_alias: int | None = None) -> bytes:
        """Encoded properties for one hop to an MQTT 5 subscriber."""
        if not sub_ids and topic_alias is None and self.expiry_at is None:
            if self._v5_props is None:
                self._v5_props = encode_properties(self.properties)
            return self._v5_props
        props = dict(self.properties)
        if self.expiry_at is not None:
            props["message_expiry_interval"] = self.remaining_expiry()
        if topic_alias is not None:
            props["topic_alias"] = topic_alias
        if sub_ids:
            props["subscription_identifier"] = list(sub_ids)
        return encode_properties(props)

    def encode(self, v5: bool, qos: int, retain: bool, packet_id: int | None = None,
               dup: bool = False, sub_ids: tuple[int, ...] = (), topic_alias: int | None = None,
               send_topic: bool = True) -> bytes:
        props = self.v5_properties(sub_ids, topic_alias) if v5 else None
        topic = self.topic_bytes if send_topic else b""
        return encode_publish(topic, self.payload, qos, retain, dup, packet_id, props)

    def encode_qos0(self, v5: bool, retain: bool) -> bytes:
        """The QoS 0 PUBLISH without per-subscriber parts, encoded once and shared."""
        plain = self._plain
        if plain is None:
            plain = self._plain = [None, None, None, None]
        idx = (2 if v5 else 0) + (1 if retain else 0)
        data = plain[idx]
        if data is None or self.expiry_at is not None:
            data = plain[idx] = self.encode(v5, 0, retain)
        return data

    def seed_qos0(self, v5: bool, retain: bool, frame: bytes) -> None:
        plain = self._plain = [None, None, None, None]
        plain[(2 if v5 else 0) + (1 if retain else 0)] = frame

    def with_retain(self, retain: bool) -> Message:
        if retain == self.retain:
            return self
        return Message(self.topic, self.payload, self.qos, retain, self.properties,
                       self.expiry_at, self.topic_bytes, self.origin)

    def __repr__(self) -> str:
        return f"Message({self.topic!r}, {self.payload[:32]!r}, qos={self.qos})"
