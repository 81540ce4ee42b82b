"""AWS IoT Device Shadow over MQTT, the device's side, as pure code: topic names, request
documents, and the reply documents read into typed values.

Topics, for the classic shadow and for a named one:

    $aws/things/THING/shadow/{get,update,delete}[/accepted|/rejected]
    $aws/things/THING/shadow/name/NAME/{get,update,delete}[/accepted|/rejected]
    .../update/delta          desired differs from reported: the difference
    .../update/documents      previous and current state after every accepted update

Every request carries a clientToken; the reply that echoes it is the answer.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ShadowRejected, shadow_rejection
from .names import SHADOW_NAME, SHADOW_NAME_RULE

OPERATIONS = ("get", "update", "delete")


def check_shadow_name(name: str | None) -> None:
    if name is not None and not SHADOW_NAME.fullmatch(name):
        raise ValueError(f"invalid shadow name {name!r}: {SHADOW_NAME_RULE}")


def shadow_prefix(thing: str, name: str | None = None) -> str:
    """`$aws/things/THING/shadow`, or `.../shadow/name/NAME` for a named shadow."""
    base = f"$aws/things/{thing}/shadow"
    return base if name is None else f"{base}/name/{name}"


def reply_topics(prefix: str) -> list[str]:
    """The /accepted and /rejected topics of get, update and delete."""
    return [f"{prefix}/{op}/{outcome}" for op in OPERATIONS
            for outcome in ("accepted", "rejected")]


def new_client_token() -> str:
    return uuid.uuid4().hex  # 32 characters: within the 64-byte limit


def request_payload(client_token: str, state: Mapping[str, Any] | None = None, *,
                    with_state: bool = False, version: int | None = None) -> bytes:
    doc: dict[str, Any] = {}
    if with_state:
        doc["state"] = state
    if version is not None:
        doc["version"] = version
    doc["clientToken"] = client_token
    return json.dumps(doc, separators=(",", ":")).encode()


def parse_reply(payload: bytes) -> dict[str, Any] | None:
    """A reply document, or None when it is not a JSON object."""
    try:
        doc = json.loads(payload)
    except ValueError:
        return None
    return doc if isinstance(doc, dict) else None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


@dataclass(frozen=True, slots=True)
class ShadowDocument:
    """A shadow as /get/accepted returns it."""

    desired: dict[str, Any]
    reported: dict[str, Any]
    delta: dict[str, Any]              # desired fields that reported does not match yet
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None

    @classmethod
    def from_reply(cls, doc: Mapping[str, Any]) -> ShadowDocument:
        state = _dict(doc.get("state"))
        return cls(_dict(state.get("desired")), _dict(state.get("reported")),
                   _dict(state.get("delta")), _int(doc.get("version")) or 0,
                   _dict(doc.get("metadata")), _int(doc.get("timestamp")))


@dataclass(frozen=True, slots=True)
class UpdateAccepted:
    """/update/accepted: what the update set, and the shadow's new version."""

    state: dict[str, Any] | None       # as sent: desired and/or reported (None: cleared)
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None

    @classmethod
    def from_reply(cls, doc: Mapping[str, Any]) -> UpdateAccepted:
        state = doc.get("state")
        return cls(state if isinstance(state, dict) else None, _int(doc.get("version")) or 0,
                   _dict(doc.get("metadata")), _int(doc.get("timestamp")))


@dataclass(frozen=True, slots=True)
class ShadowDelta:
    """/update/delta: the desired fields reported does not match, at `version`."""

    state: dict[str, Any]
    version: int
    metadata: dict[str, Any] = field(default_factory=dict)
    timestamp: int | None = None
    client_token: str | None = None    # the token of the update that caused it

    @classmethod
    def from_message(cls, doc: Mapping[str, Any]) -> ShadowDelta | None:
        version = _int(doc.get("version"))
        state = doc.get("state")
        if version is None or not isinstance(state, dict):
            return None
        token = doc.get("clientToken")
        return cls(state, version, _dict(doc.get("metadata")), _int(doc.get("timestamp")),
                   token if isinstance(token, str) else None)


@dataclass(frozen=True, slots=True)
class ShadowUpdated:
    """/update/documents: the shadow before (None if it was new) and after an update."""

    previous: ShadowDocument | None
    current: ShadowDocument
    timestamp: int | None = None

    @classmethod
    def from_message(cls, doc: Mapping[str, Any]) -> ShadowUpdated | None:
        current = doc.get("current")
        if not isinstance(current, dict):
            return None
        previous = doc.get("previous")
        return cls(ShadowDocument.from_reply(previous) if isinstance(previous, dict) else None,
                   ShadowDocument.from_reply(current), _int(doc.get("timestamp")))


def rejection(doc: Mapping[str, Any], thing: str, name: str | None,
              operation: str) -> ShadowRejected:
    """The exception for a /rejected document."""
    code = _int(doc.get("code")) or 0
    message = doc.get("message")
    token = doc.get("clientToken")
    return shadow_rejection(code, message if isinstance(message, str) else "no message",
                            thing=thing, shadow=name or "", operation=operation,
                            client_token=token if isinstance(token, str) else None)
