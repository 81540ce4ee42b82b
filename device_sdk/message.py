"""Messages and the checks made before anything is sent or queued (pure)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

# one definition of the MQTT topic rules for the gateway and its devices (stdlib only)
from .topic_rules import topic_matches, validate_topic_filter, validate_topic_name

# What publish() takes: raw bytes, text (UTF-8), or a JSON object/array (compact JSON).
Payload = bytes | bytearray | memoryview | str | dict | list

MAX_PAYLOAD_BYTES = 268_435_455 - 65_537   # the MQTT remaining-length limit, less a header


@dataclass(frozen=True, slots=True)
class Message:
    """A message received on a subscription."""

    topic: str
    payload: bytes
    qos: int = 0
    retain: bool = False

    def text(self) -> str:
        """The payload as UTF-8 text."""
        return self.payload.decode()

    def json(self) -> Any:
        """The payload parsed as JSON (raises ValueError if it is not)."""
        return json.loads(self.payload)


def encode_payload(payload: Payload) -> bytes:
    """bytes as they are, str as UTF-8, dict/list as compact JSON."""
    if isinstance(payload, bytes):
        data = payload
    elif isinstance(payload, (bytearray, memoryview)):
        data = bytes(payload)
    elif isinstance(payload, str):
        data = payload.encode()
    elif isinstance(payload, (dict, list)):
        data = json.dumps(payload, separators=(",", ":")).encode()
    else:
        raise TypeError(f"payload must be bytes, str, dict or list, not "
                        f"{type(payload).__name__} (encode numbers yourself, e.g. "
                        "str(21.5) or {\"celsius\": 21.5})")
    if len(data) > MAX_PAYLOAD_BYTES:
        raise ValueError(f"payload of {len(data)} bytes is over the MQTT limit")
    return data


def check_topic(topic: str) -> None:
    """Raise ValueError (InvalidTopic) for a topic name no broker accepts for PUBLISH.
    Checked before a message is queued: a bad one at the head of the queue would block it
    for good."""
    if not isinstance(topic, str):
        raise TypeError(f"topic must be str, not {type(topic).__name__}")
    validate_topic_name(topic)


def check_filter(topic_filter: str) -> None:
    """Raise ValueError (InvalidTopic) for a topic filter no broker accepts for SUBSCRIBE."""
    if not isinstance(topic_filter, str):
        raise TypeError(f"topic filter must be str, not {type(topic_filter).__name__}")
    validate_topic_filter(topic_filter)


def check_qos(qos: int) -> None:
    # QoS 2 is left out on purpose, as AWS IoT Core leaves it out: a device written for one
    # works with the other.
    if qos not in (0, 1):
        raise ValueError(f"qos must be 0 or 1, got {qos!r}")


def filter_matches(topic_filter: str, topic: str) -> bool:
    """Whether `topic` matches `topic_filter` (MQTT rules: + one level, # the rest, and
    topics starting with $ are not matched by a leading wildcard). A shared subscription
    ($share/GROUP/filter) matches as its filter."""
    if topic_filter.startswith("$share/"):
        topic_filter = topic_filter.split("/", 2)[2] if topic_filter.count("/") >= 2 else ""
    return topic_matches(topic_filter, topic)
