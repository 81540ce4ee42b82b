"""The Device Shadow service on the broker's reserved topics, as AWS IoT Core serves it.

Requests arrive on `$aws/things/THING/shadow[/name/SHADOW]/{get,update,delete}` through one
internal subscription; replies are published, as the gateway, on the matching `/accepted`
and `/rejected` topics, plus `/update/delta` and `/update/documents` after an accepted
update. Replies go to the reserved topics for every subscriber, and the broker's receive
checks decide who gets them, so a device sees only what its policy lets it receive.

Only the request topics are handled: the replies this service publishes match the same
subscription but are never requests, so nothing loops.

Every reply is published at QoS 1 (subscribers get min(1, their QoS)), after the change it
reports is committed to the store. The async methods (`get`, `update`, `delete`, `list`) are
the in-process API for local functions and cloud sync: they raise ShadowError instead of
publishing /rejected, and an update or delete through them is announced on the same topics
(/accepted, /delta, /documents) as one made over MQTT.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import time
from collections import Counter
from functools import partial
from pathlib import Path
from typing import Any

from ..config import GatewayConfig, ShadowSettings
from ..mqtt.broker import Broker, InternalSubscriber
from ..mqtt.message import Message
from . import ops
from .document import (
    CLASSIC,
    FORBIDDEN,
    INTERNAL_FAILURE,
    TOO_MANY_REQUESTS,
    Limits,
    ShadowError,
    check_names,
    encode,
    error_document,
    parse_token,
    parse_update,
)
from .store import SHADOW_DB, ShadowStore, StoreError
from .topics import REQUEST_FILTER, parse_topic, topic_prefix

log = logging.getLogger("lichen.shadow")

REPLY_QOS = 1


def _encode(doc: dict[str, Any]) -> bytes:
    return encode(doc).encode()


class ShadowService:
    def __init__(self, broker: Broker, store: ShadowStore,
                 settings: ShadowSettings | None = None) -> None:
        self.broker = broker
        self.store = store
        self.settings = settings or ShadowSettings()
        self.limits = Limits(max_document_bytes=self.settings.max_document_bytes,
                             max_depth=self.settings.max_depth)
        self.stats: Counter[str] = Counter()
        self._inflight: Counter[str] = Counter()   # per client id: requests not answered
        self._sub: InternalSubscriber | None = None

    async def start(self) -> None:
        self.store.start(asyncio.get_running_loop())
        self._sub = self.broker.subscribe_callback(REQUEST_FILTER, self._on_message)

    async def stop(self) -> None:
        """Stop taking requests, answer those already taken, close the store."""
        if self._sub is not None:
            self.broker.unsubscribe_callback(self._sub)
            self._sub = None
        await self.store.close()

    def status(self) -> dict[str, Any]:
        return {"commits": self.store.commits, "requests_pending": sum(self._inflight.values()),
                **dict(sorted(self.stats.items()))}

    # ================================================================ MQTT requests

    def _on_message(self, msg: Message) -> None:
        request = parse_topic(msg.topic)
        if request is None:
            return
        thing, name, op = request
        prefix = msg.topic
        token = None
        try:
            self._authorise(msg)
            if op == "update":
                parsed = parse_update(msg.payload, self.limits)
                token = parsed.client_token
            else:
                token = parse_token(msg.payload, self.limits)
            check_names(thing, name)
            origin = msg.origin
            if origin is not None:
                if self._inflight[origin] >= self.settings.max_inflight_per_client:
                    raise ShadowError(429, TOO_MANY_REQUESTS)
                self._inflight[origin] += 1
        except ShadowError as err:
            if err.client_token is None:
                err.client_token = token
            self._reject(prefix, err)
            return
        if op == "update":
            job = partial(ops.update, thing=thing, name=name, request=parsed,
                          limits=self.limits,
                          max_named_shadows=self.settings.max_named_shadows_per_thing)
        else:
            job = partial(ops.get if op == "get" else ops.delete, thing=thing, name=name,
                          client_token=token)

        def done(result: Any) -> None:
            if origin is not None:
                self._release(origin)
            if isinstance(result, BaseException):
                self._reject(prefix, self._as_shadow_error(result, token))
            else:
                self._announce(prefix, op, result)

        self.store.submit(job, done)

    def _authorise(self, msg: Message) -> None:
        """The broker checked iot:Publish already; checked again so that a request reaching
        this service some other way cannot skip the policy."""
        if msg.origin is None:
            return
        session = self.broker.sessions.get(msg.origin)
        info = session.info if session is not None else None
        perms = info.permissions if info is not None else None
        if perms is not None and not perms.can_publish(msg.topic):
            raise ShadowError(403, FORBIDDEN)

    def _release(self, origin: str) -> None:
        left = self._inflight[origin] - 1
        if left > 0:
            self._inflight[origin] = left
        else:
            del self._inflight[origin]

    @staticmethod
    def _as_shadow_error(exc: BaseException, token: str | None) -> ShadowError:
        if isinstance(exc, ShadowError):
            return exc
        if not isinstance(exc, StoreError):  # the store logged its own failure once
            log.error("shadow request failed: %r", exc, exc_info=exc)
        return ShadowError(500, INTERNAL_FAILURE, token)

    def _reject(self, prefix: str, err: ShadowError) -> None:
        self.stats[f"rejected_{err.code}"] += 1
        self.broker.publish(f"{prefix}/rejected",
                            _encode(error_document(err.code, err.message, int(time.time()),
                                                   err.client_token)), REPLY_QOS)

    def _announce(self, prefix: str, op: str, result: Any) -> None:
        """Publish what an accepted request produced: /accepted, then for an update its
        /delta (when desired and reported differ) and /documents."""
        self.stats[f"{op}_accepted"] += 1
        publish = self.broker.publish
        if op != "update":
            publish(f"{prefix}/accepted", _encode(result), REPLY_QOS)
            return
        publish(f"{prefix}/accepted", _encode(result.accepted), REPLY_QOS)
        if result.delta is not None:
            publish(f"{prefix}/delta", _encode(result.delta), REPLY_QOS)
        publish(f"{prefix}/documents", result.documents_json().encode(), REPLY_QOS)

    # ================================================================ in-process API

    async def get(self, thing: str, name: str | None = None) -> dict[str, Any]:
        """The shadow document as /get/accepted carries it; ShadowError 404 if none."""
        shadow = name or CLASSIC
        check_names(thing, shadow)
        return await self.store.call(lambda txn: ops.get(txn, thing, shadow))

    async def update(self, thing: str, document: dict[str, Any] | str | bytes,
                     name: str | None = None) -> dict[str, Any]:
        """Apply a request state document ({"state": ...}); returns the /accepted document
        and publishes /accepted, /delta and /documents as an MQTT update would."""
        shadow = name or CLASSIC
        if isinstance(document, dict):
            document = _encode(document)
        elif isinstance(document, str):
            document = document.encode()
        request = parse_update(document, self.limits)
        check_names(thing, shadow)
        limits, most = self.limits, self.settings.max_named_shadows_per_thing
        result = await self.store.call(
            lambda txn: ops.update(txn, thing, shadow, request, limits, most))
        self._announce(f"{topic_prefix(thing, shadow)}/update", "update", result)
        return result.accepted

    async def delete(self, thing: str, name: str | None = None) -> dict[str, Any]:
        """Delete a shadow (its version is kept for the next one); publishes
        /delete/accepted. ShadowError 404 if there is none."""
        shadow = name or CLASSIC
        check_names(thing, shadow)
        result = await self.store.call(lambda txn: ops.delete(txn, thing, shadow))
        self._announce(f"{topic_prefix(thing, shadow)}/delete", "delete", result)
        return result

    async def history(self, thing: str, name: str | None = None) -> list[dict[str, Any]]:
        """The kept past versions (shadow.history_depth), oldest first, each with its
        version, the time it was written, state and metadata."""
        shadow = name or CLASSIC
        check_names(thing, shadow)
        rows = await self.store.call(lambda txn: txn.history(thing, shadow))
        return [{**s.snapshot(), "timestamp": int(at)} for _, at, s in rows]

    async def list(self, thing: str) -> list[str]:
        """Names of the thing's named shadows (the classic shadow is not listed)."""
        check_names(thing)
        doc = await self.store.call(lambda txn: ops.list_named(txn, thing))
        return doc["results"]


async def start_shadow_service(broker: Broker, cfg: GatewayConfig,
                               state_dir: Path) -> ShadowService:
    """The gateway's shadow service: STATE_DIR/shadows.sqlite3 (in memory when
    persistence is off), attached to `broker`."""
    path = state_dir / SHADOW_DB if cfg.persistence.enabled else None
    store = ShadowStore(path, cfg.persistence.sync, cfg.shadow.history_depth)
    try:
        await asyncio.get_running_loop().run_in_executor(None, store.open)
    except sqlite3.Error as exc:  # start-up reports OSErrors as one line
        raise OSError(f"shadow store {path}: {exc}") from None
    service = ShadowService(broker, store, cfg.shadow)
    await service.start()
    return service
