"""Shadow: a thing's classic or named Device Shadow, through its DeviceClient.

Requests are answered by matching clientToken on the operation's /accepted or /rejected
topic; /rejected raises ShadowRejected (ShadowNotFound for 404, ShadowVersionConflict for
409). Deltas go to on_delta callbacks, each version once and in order: older or repeated
versions are dropped, and after every (re)connection the shadow is fetched, so a device
that was offline while its desired state changed still hears about it.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from .errors import (
    DeviceSDKError,
    NotConnected,
    ShadowNotFound,
    ShadowTimeout,
    ShadowVersionConflict,
)
from .handles import Subscription
from .message import Message
from .shadow_protocol import (
    ShadowDelta,
    ShadowDocument,
    ShadowUpdated,
    UpdateAccepted,
    check_shadow_name,
    new_client_token,
    parse_reply,
    rejection,
    reply_topics,
    request_payload,
    shadow_prefix,
)

if TYPE_CHECKING:
    from .client import DeviceClient

log = logging.getLogger("device_sdk")

State = Mapping[str, Any]


class Shadow:
    """The classic shadow of the client's thing, or its named shadow `name`.

    >>> lamp = Shadow(client)                                  # doctest: +SKIP
    >>> lamp.on_delta(lambda d: lamp.report(d.state))          # doctest: +SKIP
    >>> lamp.report({"on": False}).version                     # doctest: +SKIP
    """

    def __init__(self, client: DeviceClient, name: str | None = None, *,
                 timeout: float = 10.0) -> None:
        check_shadow_name(name)
        self.client = client
        self.thing = client.thing_name
        self.name = name
        self.timeout = timeout
        self.prefix = shadow_prefix(self.thing, name)
        self._cond = threading.Condition()
        self._pending: dict[str, tuple[str, tuple[str, dict] | None]] = {}
        self._replies: list[Subscription] = []
        self._version: int | None = None
        self._delta_version = 0
        self._delta_callbacks: list[Callable[[ShadowDelta], None]] = []
        self._updated_callbacks: list[Callable[[ShadowUpdated], None]] = []
        self._event_subs: dict[str, Subscription] = {}

    @property
    def version(self) -> int | None:
        """The newest version this client has seen (None before any reply)."""
        return self._version

    # ------------------------------------------------------------------ operations

    def get(self, timeout: float | None = None) -> ShadowDocument:
        """The shadow's state, delta and version. Raises ShadowNotFound if it has none."""
        token = new_client_token()
        return ShadowDocument.from_reply(self._request("get", token, request_payload(token),
                                                       timeout))

    def update(self, state: State, *, version: int | None = None,
               timeout: float | None = None) -> UpdateAccepted:
        """Send `{"state": state}`: `state` holds "desired" and/or "reported"; a field set
        to None is removed, as in AWS IoT. With `version`, the update applies only if the
        shadow is still at that version (else ShadowVersionConflict)."""
        if not isinstance(state, Mapping):
            raise TypeError(f"state must be a mapping like {{'reported': {{...}}}}, not "
                            f"{type(state).__name__}")
        return self._update(dict(state), version, timeout)

    def report(self, reported: State | None, *, version: int | None = None,
               timeout: float | None = None) -> UpdateAccepted:
        """Update the reported state (merged; None removes the whole section)."""
        return self._update({"reported": _plain(reported)}, version, timeout)

    def desire(self, desired: State | None, *, version: int | None = None,
               timeout: float | None = None) -> UpdateAccepted:
        """Update the desired state (merged; None removes the whole section)."""
        return self._update({"desired": _plain(desired)}, version, timeout)

    def delete(self, timeout: float | None = None) -> int:
        """Delete the shadow; the version it had. Raises ShadowNotFound if there is none."""
        token = new_client_token()
        doc = self._request("delete", token, request_payload(token), timeout)
        version = doc.get("version")
        return version if isinstance(version, int) else 0

    def modify(self, change: Callable[[ShadowDocument | None], State | None], *,
               attempts: int = 5, timeout: float | None = None) -> UpdateAccepted | None:
        """Read-modify-write with optimistic locking: get the shadow, `change(document)`
        (None when there is no shadow yet) returns the state to send (None: nothing to do),
        and the update is sent with the version read. When someone else updated the shadow
        in between (409), get it again and call `change` again, at most `attempts` times.
        """
        if attempts < 1:
            raise ValueError(f"attempts must be >= 1, got {attempts}")
        conflict: ShadowVersionConflict | None = None
        for _ in range(attempts):
            try:
                current: ShadowDocument | None = self.get(timeout)
            except ShadowNotFound:
                current = None
            state = change(current)
            if state is None:
                return None
            try:
                return self.update(state, version=current.version if current else None,
                                   timeout=timeout)
            except ShadowVersionConflict as exc:
                conflict = exc
                log.info("%s: shadow changed during modify (version conflict); retrying",
                         self.thing)
        raise ShadowVersionConflict(
            409, f"{conflict.message if conflict else 'Version conflict'}, still after "
                 f"{attempts} attempts", thing=self.thing, shadow=self.name or "",
            operation="update")

    # ------------------------------------------------------------------ events

    def on_delta(self, callback: Callable[[ShadowDelta], None]) -> None:
        """Call `callback(delta)` (on the callback thread) when desired differs from
        reported: for each /update/delta newer than the last one delivered, and after
        every (re)connection if the shadow has a delta then."""
        with self._cond:
            self._delta_callbacks.append(callback)
        if "update/delta" not in self._event_subs:
            self._subscribe_event("update/delta", self._on_delta_message)
        if self._catch_up not in self.client._connect_hooks:
            self.client._connect_hooks.append(self._catch_up)
            if self.client.connected:
                self.client._call_soon(self._catch_up)

    def on_updated(self, callback: Callable[[ShadowUpdated], None]) -> None:
        """Call `callback(updated)` after every accepted update (/update/documents)."""
        with self._cond:
            self._updated_callbacks.append(callback)
        if "update/documents" not in self._event_subs:
            self._subscribe_event("update/documents", self._on_documents_message)

    def remove_callback(self, callback: Callable[..., None]) -> None:
        """Stop calling `callback` (given to on_delta or on_updated)."""
        with self._cond:
            for callbacks in (self._delta_callbacks, self._updated_callbacks):
                if callback in callbacks:
                    callbacks.remove(callback)

    def close(self) -> None:
        """Stop the callbacks and drop this shadow's subscriptions."""
        with self._cond:
            self._delta_callbacks.clear()
            self._updated_callbacks.clear()
            subs = self._replies + list(self._event_subs.values())
            self._replies, self._event_subs = [], {}
        if self._catch_up in self.client._connect_hooks:
            self.client._connect_hooks.remove(self._catch_up)
        for sub in subs:
            sub.unsubscribe()

    # ------------------------------------------------------------------ machinery

    def _update(self, state: dict[str, Any], version: int | None,
                timeout: float | None) -> UpdateAccepted:
        if version is not None and (isinstance(version, bool) or not isinstance(version, int)
                                    or version < 0):
            raise ValueError(f"version must be a non-negative int, got {version!r}")
        token = new_client_token()
        payload = request_payload(token, state, with_state=True, version=version)
        return UpdateAccepted.from_reply(self._request("update", token, payload, timeout))

    def _subscribe_event(self, suffix: str, handler: Callable[[Message], None]) -> None:
        sub = Subscription(self.client, f"{self.prefix}/{suffix}", handler, inline=True)
        self.client._add_subscriptions([sub], 1, self.timeout)
        self._event_subs[suffix] = sub

    def _ensure_replies(self, timeout: float) -> None:
        with self._cond:
            if self._replies:
                return
            self._replies = [Subscription(self.client, t, self._on_reply, inline=True)
                             for t in reply_topics(self.prefix)]
            subs = self._replies
        try:
            self.client._add_subscriptions(subs, 1, timeout)
        except DeviceSDKError:
            with self._cond:
                self._replies = []
            for sub in subs:
                sub.unsubscribe()
            raise

    def _request(self, op: str, token: str, payload: bytes,
                 timeout: float | None) -> dict[str, Any]:
        timeout = self.timeout if timeout is None else timeout
        deadline = time.monotonic() + timeout
        self._ensure_replies(timeout)
        session = self.client._live_session(max(0.0, deadline - time.monotonic()))
        topic = f"{self.prefix}/{op}"
        with self._cond:
            self._pending[token] = (op, None)
        try:
            if session.publish(topic, payload, 1, False) is None:
                raise NotConnected(f"the connection closed before the shadow {op} was sent")
            with self._cond:
                while self._pending[token][1] is None:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        raise ShadowTimeout(
                            f"no answer to the shadow {op} of thing {self.thing!r} on "
                            f"{topic}/accepted or /rejected within {timeout:g} s (is the "
                            "gateway's shadow service on?)")
                    if session.closed:
                        raise NotConnected(
                            f"the connection closed before the gateway answered the shadow "
                            f"{op}" + ("; it may or may not have been applied"
                                       if op != "get" else ""))
                    self._cond.wait(min(left, 0.25))  # short: also notice a lost connection
                outcome, doc = self._pending[token][1]
        finally:
            with self._cond:
                self._pending.pop(token, None)
        if outcome == "rejected":
            raise rejection(doc, self.thing, self.name, op)
        return doc

    def _note_version(self, version: Any) -> None:
        if isinstance(version, int) and not isinstance(version, bool) and \
                (self._version is None or version > self._version):
            self._version = version

    # paho's network thread: quick, never blocking.

    def _on_reply(self, message: Message) -> None:
        doc = parse_reply(message.payload)
        if doc is None:
            return
        op, _, outcome = message.topic[len(self.prefix) + 1:].partition("/")
        token = doc.get("clientToken")
        with self._cond:
            if outcome == "accepted" and op in ("get", "update"):
                self._note_version(doc.get("version"))
            pending = self._pending.get(token) if isinstance(token, str) else None
            if pending is not None and pending[0] == op and pending[1] is None:
                self._pending[token] = (op, (outcome, doc))
                self._cond.notify_all()

    def _on_delta_message(self, message: Message) -> None:
        doc = parse_reply(message.payload)
        delta = ShadowDelta.from_message(doc) if doc is not None else None
        if delta is None:
            log.warning("%s: ignored a malformed shadow delta on %s", self.thing, message.topic)
            return
        with self._cond:
            self._note_version(delta.version)
            if delta.version <= self._delta_version:
                return  # seen already, or older than what was delivered: out of date
            self._delta_version = delta.version
            callbacks = list(self._delta_callbacks)
        for callback in callbacks:
            self.client._call_soon(callback, delta)

    def _on_documents_message(self, message: Message) -> None:
        doc = parse_reply(message.payload)
        updated = ShadowUpdated.from_message(doc) if doc is not None else None
        if updated is None:
            return
        with self._cond:
            self._note_version(updated.current.version)
            callbacks = list(self._updated_callbacks)
        for callback in callbacks:
            self.client._call_soon(callback, updated)

    # the callback thread

    def _catch_up(self) -> None:
        """After a (re)connection: the delta the device may have missed while away."""
        if not self._delta_callbacks:
            return
        try:
            doc = self.get()
        except ShadowNotFound:
            return
        except DeviceSDKError as exc:
            log.warning("%s: could not fetch the shadow after connecting: %s", self.thing, exc)
            return
        with self._cond:
            if doc.version <= self._delta_version:
                return
            self._delta_version = doc.version
            callbacks = list(self._delta_callbacks)
        if doc.delta:
            delta = ShadowDelta(doc.delta, doc.version, _dict(doc.metadata.get("desired")),
                                doc.timestamp)
            for callback in callbacks:
                self.client._call_soon(callback, delta)

    def __repr__(self) -> str:
        which = f"named {self.name!r}" if self.name else "classic"
        return f"<Shadow {self.thing} {which} version={self._version}>"


def _plain(section: State | None) -> dict[str, Any] | None:
    if section is None:
        return None
    if not isinstance(section, Mapping):
        raise TypeError(f"expected a mapping of fields, not {type(section).__name__}")
    return dict(section)


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}
