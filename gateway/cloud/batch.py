"""The batch format: several messages bound for one cloud topic in one publish (pure).

AWS IoT Core takes at most 100 publishes/s per connection; a route with
`batch = { max_messages, max_bytes, max_delay_ms }` packs what it sends to one cloud topic
into one publish whose payload is a JSON object:

    {"batch":1,"messages":[
      {"topic":"sensors/1/temp","timestamp":1733330000123,"payload":{"t":21.5}},
      {"topic":"sensors/1/raw","timestamp":1733330000125,"payload_b64":"AAEC"}]}

- `topic`: the local topic the device published on (the batch's cloud topic is the route's
  template applied to it, shared by every message in the batch);
- `timestamp`: when the gateway spooled it, in ms since the epoch;
- `payload`: the payload itself when it is JSON (UTF-8, no NaN/Infinity), embedded as it
  came; otherwise `payload_b64`, its bytes in base64.

An AWS IoT rule splits it again, e.g. `SELECT VALUE messages FROM 'dt/+/batch'` with a
Firehose or IoT Events action with `batchMode = true`: each array element is one record.

Sizes are exact: an element's bytes are built once and a batch is HEAD + elements joined by
"," + TAIL, so `batch_size` is the payload's length and a batch of two or more messages never
exceeds max_bytes. A message too big to share a batch goes alone, as a batch of one.
"""

from __future__ import annotations

import base64
import json
from dataclasses import dataclass
from typing import Any

MAX_PAYLOAD = 131_072          # AWS IoT Core's payload limit (128 KB)
HEAD = b'{"batch":1,"messages":['
TAIL = b"]}"
OVERHEAD = len(HEAD) + len(TAIL)


@dataclass(frozen=True, slots=True)
class BatchSettings:
    max_messages: int = 100
    max_bytes: int = MAX_PAYLOAD
    max_delay_ms: int = 1000


def _no_constant(name: str) -> Any:
    raise ValueError(name)   # NaN and Infinity are not JSON


def is_json(payload: bytes) -> bool:
    """Whether payload is one JSON value in UTF-8 (so it can be embedded as it is)."""
    if not payload or payload[0] in b"\xef\xfe\xff":   # empty, or a BOM json would refuse
        return False
    try:
        json.loads(payload.decode("utf-8"), parse_constant=_no_constant)
    except ValueError:   # UnicodeDecodeError and JSONDecodeError are ValueErrors
        return False
    return True


def element(topic: str, timestamp_ms: int, payload: bytes) -> bytes:
    """One message as it appears in a batch."""
    head = b'{"topic":' + json.dumps(topic).encode() + b',"timestamp":' + \
        str(timestamp_ms).encode()
    if is_json(payload):
        return head + b',"payload":' + payload + b"}"
    return head + b',"payload_b64":"' + base64.b64encode(payload) + b'"}'


def batch_size(element_bytes: int, count: int) -> int:
    """The payload size of a batch of `count` elements of `element_bytes` in total."""
    return OVERHEAD + element_bytes + max(0, count - 1)


def pack(elements: list[bytes]) -> bytes:
    return HEAD + b",".join(elements) + TAIL


@dataclass(frozen=True, slots=True)
class Unpacked:
    topic: str
    timestamp_ms: int
    payload: Any          # the JSON value, or bytes for payload_b64
    is_json: bool


def unpack(data: bytes) -> list[Unpacked]:
    """A batch's messages, in order (as the cloud side would read it)."""
    doc = json.loads(data)
    if not isinstance(doc, dict) or doc.get("batch") != 1:
        raise ValueError("not a Lichen batch")
    out = []
    for m in doc["messages"]:
        if "payload_b64" in m:
            out.append(Unpacked(m["topic"], m["timestamp"], base64.b64decode(m["payload_b64"]),
                                False))
        else:
            out.append(Unpacked(m["topic"], m["timestamp"], m["payload"], True))
    return out


class Packer:
    """Gathers elements for one batch within max_messages and max_bytes."""

    __slots__ = ("settings", "elements", "tokens", "bytes", "first_at")

    def __init__(self, settings: BatchSettings, first_at: float) -> None:
        self.settings = settings
        self.elements: list[bytes] = []
        self.tokens: list = []
        self.bytes = 0
        self.first_at = first_at   # when the oldest message was spooled (wall clock)

    def fits(self, elem: bytes) -> bool:
        """An empty packer takes anything (a batch of one); else within both limits."""
        n = len(self.elements)
        if n == 0:
            return True
        return n < self.settings.max_messages and \
            batch_size(self.bytes + len(elem), n + 1) <= self.settings.max_bytes

    def add(self, elem: bytes, token: object) -> None:
        self.elements.append(elem)
        self.tokens.append(token)
        self.bytes += len(elem)

    @property
    def full(self) -> bool:
        return len(self.elements) >= self.settings.max_messages

    def payload(self) -> bytes:
        return pack(self.elements)
