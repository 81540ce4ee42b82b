"""AWS IoT Device Shadow documents as pure code: no I/O and no clock (callers pass `now`).

What it follows, from the AWS IoT Core developer guide ("Device Shadow service documents",
"Device Shadow MQTT topics", "Interacting with shadows", "Device Shadow error messages") and
the Device Shadow quotas:

* A shadow holds `state.desired` and `state.reported`; a section exists only while it has
  fields. `metadata` mirrors the state with a `{"timestamp": t}` for every leaf value (array
  elements included, as AWS IoT returns them) and does not count towards the size limit.
* An update merges: nested objects are merged field by field, arrays and other values are
  replaced whole, `null` removes a field and its metadata (an object left empty by removals
  goes too), a section set to `null` is removed, and `"state": null` empties the shadow.
* `version` starts at 1 and grows by one per accepted update; a request that names a
  `version` is applied only if it equals the current one (409 Version conflict). A deleted
  shadow keeps its version for 48 hours (the store's concern): the next one continues it.
* The delta holds the desired fields that differ from the reported ones, recursively into
  objects, arrays compared whole; its metadata is the desired fields' metadata.
* Limits: the state (desired + reported, compact JSON) at most 8 KB; at most 6 levels of
  nesting under desired/reported; clientToken at most 64 bytes; thing names of 1-128
  characters `[a-zA-Z0-9:_-]`, shadow names of 1-64 `[$a-zA-Z0-9:_-]`; a request payload at
  most 128 KB (the AWS IoT message size).
* Every bad request gets the documented error document: code, message, timestamp and,
  when the request carried a valid one, the clientToken.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from ..names import SHADOW_NAME, THING_NAME

CLASSIC = ""  # the store's name for the classic (unnamed) shadow


# The documented error messages (Device Shadow error messages), by HTTP code.
INVALID_JSON = "Invalid JSON"
MISSING_STATE = "Missing required node: state"
STATE_NOT_OBJECT = "State node must be an object"
DESIRED_NOT_OBJECT = "Desired node must be an object"
REPORTED_NOT_OBJECT = "Reported node must be an object"
INVALID_VERSION = "Invalid version"
INVALID_CLIENT_TOKEN = "Invalid clientToken"
TOO_DEEP = "JSON contains too many levels of nesting; maximum is {}"
INVALID_NODE = "State contains an invalid node"
UNAUTHORIZED = "Unauthorized"
FORBIDDEN = "Forbidden"
THING_NOT_FOUND = "Thing not found"
NO_SHADOW = "No shadow exists with name: {}"
VERSION_CONFLICT = "Version conflict"
PAYLOAD_TOO_LARGE = "The payload exceeds the maximum size allowed"
UNSUPPORTED_ENCODING = "Unsupported documented encoding; supported encoding is UTF-8"
TOO_MANY_REQUESTS = "Too Many Requests"
INTERNAL_FAILURE = "Internal service failure"


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


# One encoder and one decoder for every document: json.dumps/loads with options would
# build a new one per call, which costs more than encoding a small document.
_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False)
_DECODER = json.JSONDecoder(parse_constant=_reject_constant)


def encode(doc: Any) -> str:
    """Compact JSON, as the shadow service publishes and stores documents."""
    return _ENCODER.encode(doc)


@dataclass(frozen=True, slots=True)
class Limits:
    max_document_bytes: int = 8192        # state.desired + state.reported, compact JSON
    max_depth: int = 6                    # levels of nesting under desired / reported
    max_client_token_bytes: int = 64
    max_request_bytes: int = 131_072      # a whole request payload (AWS IoT message size)


class ShadowError(Exception):
    """A request the shadow service refuses: becomes the AWS error response document."""

    def __init__(self, code: int, message: str, client_token: str | None = None) -> None:
        super().__init__(f"{code} {message}")
        self.code = code
        self.message = message
        self.client_token = client_token

    def document(self, now: int) -> dict[str, Any]:
        return error_document(self.code, self.message, now, self.client_token)


def error_document(code: int, message: str, now: int,
                   client_token: str | None = None) -> dict[str, Any]:
    doc: dict[str, Any] = {"code": code, "message": message, "timestamp": now}
    if client_token is not None:
        doc["clientToken"] = client_token
    return doc


def check_names(thing: str, shadow: str = CLASSIC) -> None:
    """Raise 400 for a thing or shadow name AWS IoT would not accept."""
    if not THING_NAME.fullmatch(thing):
        raise ShadowError(400, "Invalid thing name: must be 1-128 characters of a-z, A-Z, "
                               "0-9, ':', '_' and '-'")
    if shadow != CLASSIC and not SHADOW_NAME.fullmatch(shadow):
        raise ShadowError(400, "Invalid shadow name: must be 1-64 characters of a-z, A-Z, "
                               "0-9, '$', ':', '_' and '-'")


# ================================================================ the stored shadow


@dataclass(slots=True)
class Shadow:
    """One shadow as stored: state, its metadata and its version."""

    state: dict[str, Any]        # {"desired": {...}, "reported": {...}}, sections only if set
    metadata: dict[str, Any]     # the same shape, {"timestamp": t} at every leaf
    version: int
    _json: str | None = field(default=None, repr=False, compare=False)

    def snapshot(self) -> dict[str, Any]:
        """The `previous` / `current` part of an /update/documents message."""
        return {"state": self.state, "metadata": self.metadata, "version": self.version}

    def to_json(self) -> str:
        """{"state": ..., "metadata": ...}, encoded once (a shadow never changes)."""
        if self._json is None:
            self._json = _ENCODER.encode({"state": self.state, "metadata": self.metadata})
        return self._json

    def snapshot_json(self) -> str:
        return f'{self.to_json()[:-1]},"version":{self.version}}}'

    @classmethod
    def from_json(cls, text: str, version: int) -> Shadow:
        data = json.loads(text)
        return cls(data["state"], data["metadata"], version, text)


def state_size(state: dict[str, Any]) -> int:
    """Bytes of the state as the size limit counts them (metadata excluded)."""
    return len(_ENCODER.encode(state).encode())


# ================================================================ requests


@dataclass(slots=True)
class UpdateRequest:
    state: dict[str, Any] | None     # None: the request said "state": null
    client_token: str | None = None
    version: int | None = None


def _load_json(payload: bytes, limits: Limits) -> Any:
    if len(payload) > limits.max_request_bytes:
        raise ShadowError(413, PAYLOAD_TOO_LARGE)
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError:
        raise ShadowError(415, UNSUPPORTED_ENCODING) from None
    try:
        return _DECODER.decode(text)
    except RecursionError:
        raise ShadowError(400, TOO_DEEP.format(limits.max_depth)) from None
    except ValueError:
        raise ShadowError(400, INVALID_JSON) from None


def _client_token(doc: dict[str, Any], limits: Limits) -> str | None:
    if "clientToken" not in doc:
        return None
    token = doc["clientToken"]
    if not isinstance(token, str) or len(token.encode()) > limits.max_client_token_bytes:
        raise ShadowError(400, INVALID_CLIENT_TOKEN)
    return token


def parse_update(payload: bytes, limits: Limits = Limits()) -> UpdateRequest:
    """Validate an /update request payload; raise ShadowError with the AWS error."""
    doc = _load_json(payload, limits)
    if not isinstance(doc, dict):
        raise ShadowError(400, INVALID_JSON)
    token = _client_token(doc, limits)
    version = doc.get("version")
    if "version" in doc and (type(version) is not int or version < 0):
        raise ShadowError(400, INVALID_VERSION, token)
    if "state" not in doc:
        raise ShadowError(400, MISSING_STATE, token)
    state = doc["state"]
    if state is None:
        return UpdateRequest(None, token, version)
    if not isinstance(state, dict):
        raise ShadowError(400, STATE_NOT_OBJECT, token)
    for key, value in state.items():
        if key == "desired":
            wrong = DESIRED_NOT_OBJECT
        elif key == "reported":
            wrong = REPORTED_NOT_OBJECT
        else:
            raise ShadowError(400, INVALID_NODE, token)
        if value is None:
            continue
        if not isinstance(value, dict):
            raise ShadowError(400, wrong, token)
        _check_value(value, limits.max_depth, limits.max_depth, token)
    # Other top-level fields (metadata, timestamp, ... echoed back from a GET) are ignored,
    # as AWS IoT ignores everything outside state.desired and state.reported.
    return UpdateRequest(state, token, version)


def _check_value(value: Any, levels_left: int, limit: int, token: str | None) -> None:
    """Depth (objects and arrays under desired/reported) and no null inside an array."""
    if isinstance(value, dict):
        items: Any = value.values()
    elif isinstance(value, list):
        items = value
        if any(item is None for item in value):  # "Arrays can't have null values"
            raise ShadowError(400, INVALID_JSON, token)
    else:
        return
    if levels_left <= 0:
        raise ShadowError(400, TOO_DEEP.format(limit), token)
    for item in items:
        _check_value(item, levels_left - 1, limit, token)


def parse_token(payload: bytes, limits: Limits = Limits()) -> str | None:
    """The clientToken of a /get or /delete request. Their content is otherwise ignored (an
    empty or non-JSON payload is a valid request); only a bad clientToken is refused."""
    if not payload:
        return None
    try:
        doc = _load_json(payload, limits)
    except ShadowError:
        return None
    return _client_token(doc, limits) if isinstance(doc, dict) else None


# ================================================================ semantics


def metadata_for(value: Any, now: int) -> Any:
    """Metadata mirroring `value`: objects and arrays keep their shape, leaves get a time."""
    if isinstance(value, dict):
        return {k: metadata_for(v, now) for k, v in value.items()}
    if isinstance(value, list):
        return [metadata_for(v, now) for v in value]
    return {"timestamp": now}


def _merge(value: dict, meta: dict, patch: dict, now: int) -> tuple[dict, dict]:
    """`patch` merged into `value` (and `meta`), as new dicts; the inputs stay untouched."""
    out, out_meta = dict(value), dict(meta)
    for key, new in patch.items():
        if new is None:
            out.pop(key, None)
            out_meta.pop(key, None)
        elif isinstance(new, dict):
            old, old_meta = out.get(key), out_meta.get(key)
            if not isinstance(old, dict) or not isinstance(old_meta, dict):
                old, old_meta = {}, {}
            merged, merged_meta = _merge(old, old_meta, new, now)
            if merged or not new:  # an explicit {} stays; one emptied by nulls goes
                out[key], out_meta[key] = merged, merged_meta
            else:
                out.pop(key, None)
                out_meta.pop(key, None)
        else:
            out[key] = new
            out_meta[key] = metadata_for(new, now)
    return out, out_meta


def merge_state(state: dict, metadata: dict, patch: dict | None,
                now: int) -> tuple[dict, dict]:
    """The state and metadata after an update's `state` (None empties the shadow)."""
    if patch is None:
        return {}, {}
    out, out_meta = dict(state), dict(metadata)
    for section in ("desired", "reported"):
        if section not in patch:
            continue
        if patch[section] is not None:
            merged, merged_meta = _merge(state.get(section, {}), metadata.get(section, {}),
                                         patch[section], now)
            if merged:
                out[section], out_meta[section] = merged, merged_meta
                continue
        out.pop(section, None)  # set to null, or left with no fields
        out_meta.pop(section, None)
    return out, out_meta


def _same(a: Any, b: Any) -> bool:
    """JSON equality: unlike Python's, true is not 1 and an object is not an array."""
    if type(a) is bool or type(b) is bool:
        return type(a) is type(b) and a == b
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and \
            all(_same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return isinstance(b, list) and len(a) == len(b) and all(map(_same, a, b))
    if isinstance(a, int | float):
        return isinstance(b, int | float) and a == b
    return type(a) is type(b) and a == b


def delta(desired: dict, reported: dict, desired_meta: dict | None = None) -> tuple[dict, dict]:
    """(delta, its metadata): desired fields that differ from reported, recursing into
    objects present on both sides; arrays and other values compared whole."""
    desired_meta = desired_meta or {}
    out: dict = {}
    out_meta: dict = {}
    for key, want in desired.items():
        meta = desired_meta.get(key)
        if key in reported:
            have = reported[key]
            if isinstance(want, dict) and isinstance(have, dict):
                sub, sub_meta = delta(want, have, meta if isinstance(meta, dict) else None)
                if sub:
                    out[key], out_meta[key] = sub, sub_meta
                continue
            if _same(want, have):
                continue
        out[key] = want
        if meta is not None:
            out_meta[key] = meta
    return out, out_meta


def shadow_delta(shadow: Shadow) -> tuple[dict, dict]:
    desired = shadow.state.get("desired")
    if not desired:
        return {}, {}
    return delta(desired, shadow.state.get("reported", {}), shadow.metadata.get("desired"))


# ================================================================ operations


@dataclass(slots=True)
class UpdateResult:
    shadow: Shadow                    # the new stored shadow
    accepted: dict[str, Any]          # /update/accepted
    delta: dict[str, Any] | None      # /update/delta, when desired and reported differ
    documents: dict[str, Any]         # /update/documents
    previous: Shadow | None = None

    def documents_json(self) -> str:
        """`documents` encoded from the two shadows' stored JSON, not encoded again."""
        previous = self.previous.snapshot_json() if self.previous is not None else "null"
        tail = f',"timestamp":{self.documents["timestamp"]}'
        if "clientToken" in self.documents:
            tail += f',"clientToken":{_ENCODER.encode(self.documents["clientToken"])}'
        return f'{{"previous":{previous},"current":{self.shadow.snapshot_json()}{tail}}}'


def _with_token(doc: dict[str, Any], token: str | None) -> dict[str, Any]:
    if token is not None:
        doc["clientToken"] = token
    return doc


def apply_update(current: Shadow | None, base_version: int, request: UpdateRequest, now: int,
                 limits: Limits = Limits()) -> UpdateResult:
    """Apply an update to `current` (None: no shadow yet, or a deleted one whose version
    `base_version` the new shadow continues). Raises 409 or 413 as AWS IoT does."""
    token = request.client_token
    if request.version is not None and request.version != base_version:
        raise ShadowError(409, VERSION_CONFLICT, token)
    state, meta = (current.state, current.metadata) if current is not None else ({}, {})
    new_state, new_meta = merge_state(state, meta, request.state, now)
    if state_size(new_state) > limits.max_document_bytes:
        raise ShadowError(413, PAYLOAD_TOO_LARGE, token)
    new = Shadow(new_state, new_meta, base_version + 1)
    if request.state is None:
        accepted: dict[str, Any] = {"state": None}
    else:
        accepted = {"state": request.state,
                    "metadata": {k: metadata_for(v, now) for k, v in request.state.items()}}
    accepted.update(version=new.version, timestamp=now)
    _with_token(accepted, token)
    delta_doc = None
    diff, diff_meta = shadow_delta(new)
    if diff:
        delta_doc = _with_token({"version": new.version, "timestamp": now, "state": diff,
                                 "metadata": diff_meta}, token)
    documents = _with_token({"previous": current.snapshot() if current is not None else None,
                             "current": new.snapshot(), "timestamp": now}, token)
    return UpdateResult(new, accepted, delta_doc, documents, current)


def get_document(shadow: Shadow, now: int, client_token: str | None = None) -> dict[str, Any]:
    """/get/accepted: the whole state with its delta, the metadata, version and time."""
    state = dict(shadow.state)
    diff, _ = shadow_delta(shadow)
    if diff:
        state["delta"] = diff
    return _with_token({"state": state, "metadata": shadow.metadata,
                        "version": shadow.version, "timestamp": now}, client_token)


def delete_document(version: int, now: int, client_token: str | None = None) -> dict[str, Any]:
    """/delete/accepted: the version the deleted shadow had, and the time."""
    return _with_token({"version": version, "timestamp": now}, client_token)


def list_document(names: list[str], now: int, next_token: str | None = None) -> dict[str, Any]:
    """The shadow name list response document (named shadows only, as AWS IoT lists)."""
    doc: dict[str, Any] = {"results": names, "timestamp": now}
    if next_token is not None:
        doc["nextToken"] = next_token
    return doc


def not_found(thing: str, shadow: str, client_token: str | None = None) -> ShadowError:
    return ShadowError(404, NO_SHADOW.format(shadow if shadow != CLASSIC else thing),
                       client_token)
