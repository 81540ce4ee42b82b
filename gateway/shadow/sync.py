"""Shadow sync with AWS IoT Core, both ways, over the gateway's cloud connection.

Which shadows: [shadow_sync] things x shadows (names, patterns, $gateway, $registered,
$classic). Per shadow the sync keeps (sync_store.py) the state both sides last agreed on and
the local and cloud versions it was agreed at. Whenever either version moves, the two
states are merged against that base (merge.py) and each side gets only what it lacks, with
a version-conditional update; then the new base and versions are recorded.

* Local changes are seen on the broker (/update/documents, /delete/accepted, published by
  the shadow service after its commit), and at start by comparing the store's versions with
  the recorded ones (edits made while the gateway was down).
* Cloud changes arrive on `$aws/things/+/shadow/...` (update/documents, update/delta,
  get/accepted, delete/accepted): two wildcard subscriptions however many shadows sync.
  On every connection each synced shadow is read again (GET): what changed while the link
  was down is not otherwise known.
* No loops: our own updates carry a clientToken with this process's prefix, and their
  echoes (documents on either side) are recognised by it; any other echo finds versions
  equal to the recorded ones and costs nothing.
* Re-sends are idempotent: a cloud update names the cloud version it was merged against, so
  one that was applied before a crash (and not recorded) comes back 409; the sync reads the
  shadow again, the merge finds both sides equal, and nothing is applied twice. A local
  update is conditional on the local version in the same way.
* Plain topics through the bridge (subscribe_cloud, publish_direct), not awsiotsdk's
  IotShadowClientV2: its streams are one subscription per thing and shadow (IoT Core allows
  50 per connection; a gateway syncs hundreds), its request-response client subscribes and
  unsubscribes around requests (two more round trips each), and it replaces the request's
  clientToken with its own, so echoes could not be told from other clients' changes.
* Limits: at most `max_inflight` unanswered requests (IoT Core answers 429 past 10 per
  connection), `rate`/`burst` per second overall and `thing_rate` per thing (ratelimit.py);
  a merged state over AWS IoT's size or depth limit is not sent, and the error names the
  thing and shadow.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import os
import sqlite3
import time
from collections import Counter, OrderedDict
from collections.abc import Callable
from dataclasses import dataclass
from fnmatch import fnmatchcase
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..config import ShadowSyncSettings
from .document import (
    CLASSIC,
    Limits,
    ShadowError,
    encode,
    merge_state,
    metadata_for,
    parse_update,
    state_size,
)
from .merge import SECTIONS, Action, Rules, plan
from .ratelimit import Limiter
from .sync_store import SYNC_DB, SyncRecord, SyncStore
from .topics import topic_prefix

if TYPE_CHECKING:
    from ..cloud.bridge import CloudBridge
    from ..cloud.link import Incoming
    from ..mqtt.broker import Broker, InternalSubscriber
    from ..mqtt.message import Message
    from .service import ShadowService

log = logging.getLogger("lichen.shadow.sync")

Key = tuple[str, str]
CLOUD_FILTERS = ("$aws/things/+/shadow/+/+", "$aws/things/+/shadow/name/+/+/+")
LOCAL_FILTERS = ("$aws/things/+/shadow/update/documents",
                 "$aws/things/+/shadow/name/+/update/documents",
                 "$aws/things/+/shadow/delete/accepted",
                 "$aws/things/+/shadow/name/+/delete/accepted")
RETRY_S = 2.0
MAX_STATUS_SHADOWS = 100


class CloudUnavailable(Exception):
    """The connection went: the shadow is synced again on the next one."""


class Later(Exception):
    """Try again after `delay` seconds (throttled, no answer, a busy service)."""

    def __init__(self, why: str, delay: float = RETRY_S) -> None:
        super().__init__(why)
        self.delay = delay


class SyncFailed(Exception):
    """This shadow cannot sync as it is; retried once either side changes again."""


class _Conflict(Exception):
    """A side moved while we merged: merge again."""


@dataclass(slots=True)
class CloudView:
    state: dict[str, Any] | None      # None: no shadow in the cloud
    version: int | None

    @property
    def mark(self) -> int | None:
        return self.version if self.state is not None else None


def parse_reply(topic: str) -> tuple[str, str, str, str] | None:
    """(thing, shadow, operation, reply) of `$aws/things/T/shadow[/name/N]/OP/REPLY`."""
    parts = topic.split("/")
    if len(parts) == 6 and parts[3] == "shadow":
        return parts[2], CLASSIC, parts[4], parts[5]
    if len(parts) == 8 and parts[3] == "shadow" and parts[4] == "name":
        return parts[2], parts[5], parts[6], parts[7]
    return None


def _sections(state: Any) -> dict[str, Any]:
    """desired and reported of a state (a GET's also holds the delta)."""
    if not isinstance(state, dict):
        return {}
    return {k: v for k, v in state.items() if k in SECTIONS and isinstance(v, dict)}


def _label(key: Key) -> str:
    return f"thing {key[0]} shadow {key[1] or '$classic'}"


class ShadowSync:
    def __init__(self, settings: ShadowSyncSettings, broker: Broker,
                 service: Callable[[], ShadowService | None], state_dir: Path | None,
                 gateway_thing: str | None, sync: str = "normal") -> None:
        self.settings = settings
        self.broker = broker
        self._service = service          # the current shadow service (a deployment may
        self.state_dir = state_dir       # replace it)
        self.gateway_thing = gateway_thing
        path = state_dir / SYNC_DB if state_dir is not None else Path(":memory:")
        self.store = SyncStore(path, sync)
        self.rules = Rules(settings.direction, settings.desired_conflict == "local",
                           settings.reported_conflict == "local")
        self.limits = Limits(max_document_bytes=settings.max_document_bytes,
                             max_depth=settings.max_depth)
        self.limiter = Limiter(settings.rate, settings.burst, settings.thing_rate,
                               time.monotonic())
        self.stats: Counter[str] = Counter()
        self._bridge: CloudBridge | None = None
        self._connected = False
        self._cloud: dict[Key, CloudView] = {}
        self._need_get: set[Key] = set()
        self._tracked: set[Key] = set()
        self._queue: OrderedDict[Key, None] = OrderedDict()
        self._running: set[Key] = set()
        self._again: set[Key] = set()
        self._failed: dict[Key, tuple] = {}
        self._waiting: dict[str, asyncio.Future] = {}
        self._wake = asyncio.Event()
        self._workers: list[asyncio.Task] = []
        self._timers: set[asyncio.TimerHandle] = set()
        self._subs: list[InternalSubscriber] = []
        self._registered: set[str] = set()
        self._prefix = f"lsync-{os.urandom(4).hex()}-"   # this process's requests
        self._seq = itertools.count(1)

    # ================================================================ life cycle

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, self.store.open)
        self.store.start(loop)
        await loop.run_in_executor(None, self._read_registry)
        for topic_filter in LOCAL_FILTERS:
            self._subs.append(self.broker.subscribe_callback(topic_filter, self._on_local))
        await self._scan_local()
        self._workers = [loop.create_task(self._worker())
                         for _ in range(self.settings.max_inflight)]

    def attach(self, bridge: CloudBridge) -> None:
        """Sync over `bridge` (the daemon calls this for each bridge it starts)."""
        self._bridge = bridge
        bridge.add_state_listener(partial(self._on_cloud_state, bridge))
        for topic_filter in CLOUD_FILTERS:
            bridge.subscribe_cloud(topic_filter, 1, partial(self._on_cloud_message, bridge))
        if bridge.state == "connected":
            self._on_cloud_state(bridge, "connected")

    async def stop(self) -> None:
        for sub in self._subs:
            self.broker.unsubscribe_callback(sub)
        self._subs.clear()
        self._connected = False
        for timer in self._timers:
            timer.cancel()
        for task in self._workers:
            task.cancel()
        await asyncio.gather(*self._workers, return_exceptions=True)
        self._workers.clear()
        await self.store.flush()
        await asyncio.get_running_loop().run_in_executor(None, self.store.close)

    # ================================================================ what syncs

    def _read_registry(self) -> None:
        if "$registered" not in self.settings.things or self.state_dir is None:
            return
        path = self.state_dir / "registry.sqlite3"
        if not path.exists():
            return
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            self._registered = {n for (n,) in db.execute("SELECT name FROM things")}
        except sqlite3.Error as exc:
            log.warning("shadow sync: cannot read the registry's things: %s", exc)
        finally:
            db.close()

    def selected(self, thing: str, name: str) -> bool:
        s = self.settings
        if name == CLASSIC:
            if "$classic" not in s.shadows:
                return False
        elif not any(p != "$classic" and fnmatchcase(name, p) for p in s.shadows):
            return False
        for entry in s.things:
            if entry == "$gateway":
                if thing == self.gateway_thing:
                    return True
            elif entry == "$registered":
                if thing in self._registered:
                    return True
            elif fnmatchcase(thing, entry):
                return True
        return False

    def _explicit(self) -> set[Key]:
        """Shadows named outright: read from the cloud even if neither side has them yet."""
        s = self.settings
        wild = set("*?[")
        things = set()
        for entry in s.things:
            if entry == "$gateway" and self.gateway_thing:
                things.add(self.gateway_thing)
            elif entry == "$registered":
                things |= self._registered
            elif not wild & set(entry):
                things.add(entry)
        names = {CLASSIC if p == "$classic" else p for p in s.shadows if not wild & set(p)}
        return {(t, n) for t in things for n in names}

    async def _scan_local(self) -> None:
        """Local shadows changed since they were last synced (while the gateway was down,
        or by `lichen shadow` with no gateway running) are pending."""
        service = self._service()
        if service is None:
            return
        versions = await service.store.call(lambda txn: txn.versions())
        for key, version in versions.items():
            if self.selected(*key):
                self._tracked.add(key)
                rec = self.store.records.get(key)
                if rec is None or rec.local_version != version:
                    self._mark_pending(key)
        for key, rec in self.store.records.items():
            self._tracked.add(key)
            if key not in versions and rec.local_version is not None:
                self._mark_pending(key)
        self._tracked |= self._explicit()

    # ================================================================ changes

    def _mark_pending(self, key: Key) -> None:
        rec = self.store.records.get(key)
        if rec is None:
            rec = SyncRecord(*key)
        elif rec.pending:
            return
        rec.pending = True
        self.store.save(rec)

    def _changed(self, key: Key) -> None:
        self._tracked.add(key)
        self._mark_pending(key)
        self._enqueue(key)

    def _enqueue(self, key: Key) -> None:
        if key in self._running:
            self._again.add(key)
        else:
            self._queue[key] = None
            self._wake.set()

    def _ours(self, doc: Any) -> bool:
        token = doc.get("clientToken") if isinstance(doc, dict) else None
        return isinstance(token, str) and token.startswith(self._prefix)

    def _on_local(self, msg: Message) -> None:
        reply = parse_reply(msg.topic)
        if reply is None:
            return
        thing, name, op, _ = reply
        key = (thing, name)
        if not self.selected(thing, name):
            return
        try:
            doc = json.loads(msg.payload)
        except ValueError:
            return
        if self._ours(doc):   # our own write, announced by the shadow service
            return
        mark = None
        if op == "update":
            current = doc.get("current") if isinstance(doc, dict) else None
            mark = current.get("version") if isinstance(current, dict) else None
        rec = self.store.records.get(key)
        if rec is None or rec.local_version != mark or op == "delete":
            self._changed(key)

    def _on_cloud_state(self, bridge: CloudBridge, state: str) -> None:
        if bridge is not self._bridge:
            return
        if state == "connected":
            self._connected = True
            self._read_registry()  # cheap, and a thing may have been registered meanwhile
            self._tracked |= self._explicit()
            for key in sorted(self._tracked):
                self._need_get.add(key)
                self._enqueue(key)
        else:
            self._connected = False
            for future in self._waiting.values():
                if not future.done():
                    future.set_exception(CloudUnavailable(f"connection {state}"))

    def _on_cloud_message(self, bridge: CloudBridge, incoming: Incoming) -> None:
        reply = parse_reply(incoming.topic)
        if reply is None or bridge is not self._bridge:
            return
        thing, name, op, kind = reply
        try:
            doc = json.loads(incoming.payload)
        except ValueError:
            return
        if not isinstance(doc, dict):
            return
        token = doc.get("clientToken")
        future = self._waiting.get(token) if isinstance(token, str) else None
        if future is not None and kind in ("accepted", "rejected"):
            if not future.done():
                future.set_result((kind, doc))
            return
        key = (thing, name)
        if not self.selected(thing, name):
            return
        version = doc.get("version")
        if op == "update" and kind == "documents":
            current = doc.get("current")
            if isinstance(current, dict):
                self._saw_cloud(key, _sections(current.get("state")), current.get("version"),
                                self._ours(doc))
        elif op == "get" and kind == "accepted":
            self._saw_cloud(key, _sections(doc.get("state")), version, False)
        elif op == "delete" and kind == "accepted":
            self._saw_cloud(key, None, version, self._ours(doc))
        elif op == "update" and kind == "delta":
            known = self._cloud.get(key)
            if known is None or known.version is None or \
                    (isinstance(version, int) and version > known.version):
                self._need_get.add(key)
                self._changed(key)

    def _saw_cloud(self, key: Key, state: dict | None, version: Any, ours: bool) -> None:
        if not isinstance(version, int):
            return
        known = self._cloud.get(key)
        if known is not None and known.version is not None and version < known.version:
            return  # older news than what we have
        self._cloud[key] = CloudView(state, version)
        self._need_get.discard(key)
        if ours:
            return
        rec = self.store.records.get(key)
        if rec is None or rec.cloud_version != self._cloud[key].mark:
            self._changed(key)

    # ================================================================ the workers

    async def _worker(self) -> None:
        while True:
            if not (self._connected and self._queue):
                self._wake.clear()
                await self._wake.wait()
                continue
            key, _ = self._queue.popitem(last=False)
            self._running.add(key)
            try:
                await self._sync(key)
            except CloudUnavailable:
                pass  # every shadow is read again on the next connection
            except Later as exc:
                self._note_error(key, str(exc), pending=True)
                self._retry(key, exc.delay)
            except SyncFailed as exc:
                self._note_error(key, str(exc), pending=True)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a bug: say so, keep the other shadows syncing
                log.exception("shadow sync of %s failed", _label(key))
                self._note_error(key, f"internal error: {exc!r}", pending=True)
            finally:
                self._running.discard(key)
                if key in self._again:
                    self._again.discard(key)
                    self._enqueue(key)

    def _retry(self, key: Key, delay: float) -> None:
        loop = asyncio.get_running_loop()
        timer: asyncio.TimerHandle

        def fire() -> None:
            self._timers.discard(timer)
            self._enqueue(key)

        timer = loop.call_later(delay, fire)
        self._timers.add(timer)

    def _note_error(self, key: Key, why: str, pending: bool) -> None:
        message = f"{_label(key)}: {why}"
        rec = self.store.records.get(key) or SyncRecord(*key)
        if rec.last_error != message:
            log.warning("shadow sync: %s", message)
        self.stats["errors"] += 1
        rec.last_error, rec.error_at, rec.pending = message, time.time(), pending
        self.store.save(rec)

    async def _sync(self, key: Key) -> None:
        thing, name = key
        for _ in range(4):
            rec = self.store.records.get(key) or SyncRecord(thing, name)
            local_state, local_mark = await self._local(key)
            if key in self._need_get or key not in self._cloud:
                await self._cloud_get(key)
            view = self._cloud[key]
            marks = (local_mark, view.mark)
            if rec.synced_at is not None and marks == (rec.local_version, rec.cloud_version):
                if rec.pending or rec.last_error:
                    rec.pending, rec.last_error = False, None
                    self.store.save(rec)
                return
            if self._failed.get(key) == marks:
                return  # refused as it is: wait for either side to change
            p = plan(rec.base, rec.base_exists, local_state, view.state, self.rules)
            try:
                self._check_cloud_limits(view, p.cloud, marks, key)
                new_local = await self._apply_local(key, p.local, local_mark)
                new_cloud = await self._apply_cloud(key, p.cloud, view)
            except _Conflict:
                continue
            self._failed.pop(key, None)
            changed = p.local is not None or p.cloud is not None
            self.stats["syncs"] += 1
            self.store.save(SyncRecord(thing, name, p.base, p.base_exists, new_local,
                                       new_cloud, False, None, None, time.time(),
                                       rec.syncs + changed))
            return
        raise Later("both sides kept changing while merging")

    def _check_cloud_limits(self, view: CloudView, action: Action | None, marks: tuple,
                            key: Key) -> None:
        if action is None or action.op != "update":
            return
        try:
            parse_update(encode({"state": action.state}).encode(), self.limits)
        except ShadowError as err:
            self._failed[key] = marks
            raise SyncFailed(f"cannot go up to the cloud: {err.message}") from None
        base = view.state or {}
        after, _ = merge_state(base, metadata_for(base, 0), action.state, 0)
        size = state_size(after)
        if size > self.limits.max_document_bytes:
            self._failed[key] = marks
            raise SyncFailed(f"cannot go up to the cloud: its state would be {size} bytes, "
                             f"over AWS IoT's limit of {self.limits.max_document_bytes}")

    # ---------------------------------------------------------------- the local side

    def _token(self) -> str:
        return f"{self._prefix}{next(self._seq)}"

    async def _local(self, key: Key) -> tuple[dict | None, int | None]:
        service = self._service()
        if service is None:
            raise Later("the shadow service is restarting")
        try:
            doc = await service.get(key[0], key[1] or None)
        except ShadowError as err:
            if err.code == 404:
                return None, None
            raise Later(f"local shadow: {err.code} {err.message}") from None
        return _sections(doc.get("state")), doc.get("version")

    async def _apply_local(self, key: Key, action: Action | None,
                           mark: int | None) -> int | None:
        if action is None:
            return mark
        service = self._service()
        if service is None:
            raise Later("the shadow service is restarting")
        thing, name = key
        try:
            if action.op == "delete":
                self.stats["local_deletes"] += 1
                await service.delete(thing, name or None)
                return None
            doc: dict[str, Any] = {"state": action.state, "clientToken": self._token()}
            if mark is not None:
                doc["version"] = mark
            accepted = await service.update(thing, doc, name or None)
        except ShadowError as err:
            if err.code == 409:
                raise _Conflict() from None
            if err.code == 404:   # deleted meanwhile
                return None
            raise SyncFailed(f"the local shadow refused the cloud's state: {err.code} "
                             f"{err.message}") from None
        self.stats["local_updates"] += 1
        return accepted["version"]

    # ---------------------------------------------------------------- the cloud side

    async def _request(self, key: Key, op: str, body: dict[str, Any]) -> tuple[str, dict]:
        thing, name = key
        bridge = self._bridge
        if bridge is None or not self._connected:
            raise CloudUnavailable("not connected")
        while True:  # the token buckets: overall and this thing's
            wait = self.limiter.wait(thing, time.monotonic())
            if not wait:
                break
            await asyncio.sleep(wait)
        if not self._connected:
            raise CloudUnavailable("not connected")
        self.limiter.take(thing, time.monotonic())
        token = self._token()
        body["clientToken"] = token
        future = asyncio.get_running_loop().create_future()
        self._waiting[token] = future
        self.stats[f"cloud_{op}"] += 1
        try:
            ok, why = await bridge.publish_direct(f"{topic_prefix(thing, name)}/{op}",
                                                  encode(body).encode(), 1)
            if not ok:
                raise CloudUnavailable(why)
            timeout = self.settings.response_timeout_s
            try:
                return await asyncio.wait_for(future, timeout)
            except TimeoutError:
                raise Later(f"no answer from the cloud to {op} within {timeout:g} s",
                            0.1) from None
        finally:
            self._waiting.pop(token, None)

    def _refused(self, op: str, doc: dict) -> Exception:
        code, message = doc.get("code"), doc.get("message")
        if code == 409:
            return _Conflict()
        if code in (429, 500, 503):
            return Later(f"the cloud answered {op} with {code} {message}")
        return SyncFailed(f"the cloud refused {op}: {code} {message}")

    async def _cloud_get(self, key: Key) -> None:
        kind, doc = await self._request(key, "get", {})
        if kind == "accepted":
            self._cloud[key] = CloudView(_sections(doc.get("state")), doc.get("version"))
        elif doc.get("code") == 404:
            self._cloud[key] = CloudView(None, None)
        else:
            error = self._refused("get", doc)
            raise error if not isinstance(error, _Conflict) else Later("get: 409")
        self._need_get.discard(key)

    async def _apply_cloud(self, key: Key, action: Action | None,
                           view: CloudView) -> int | None:
        if action is None:
            return view.mark
        if action.op == "delete":
            kind, doc = await self._request(key, "delete", {})
            if kind == "accepted" or doc.get("code") == 404:
                self._cloud[key] = CloudView(None, doc.get("version", view.version))
                return None
            self._need_get.add(key)
            raise self._refused("delete", doc)
        body: dict[str, Any] = {"state": action.state}
        if view.state is not None and view.version is not None:
            body["version"] = view.version   # applied once: a re-send comes back 409
        kind, doc = await self._request(key, "update", body)
        if kind != "accepted":
            self._need_get.add(key)
            raise self._refused("update", doc)
        base = view.state or {}
        after, _ = merge_state(base, metadata_for(base, 0), action.state, 0)
        self._cloud[key] = CloudView(after, doc["version"])
        return doc["version"]

    # ================================================================ status

    def status(self) -> dict[str, Any]:
        records = self.store.records.values()
        pending = [r for r in records if r.pending]
        errors = [r for r in records if r.last_error]
        shown = sorted({(r.thing, r.name): r for r in pending + errors}.values(),
                       key=lambda r: (r.thing, r.name))[:MAX_STATUS_SHADOWS]
        return {"connected": self._connected, "tracked": len(self._tracked),
                "pending": len(pending), "queued": len(self._queue),
                "in_flight": len(self._waiting), "with_errors": len(errors),
                **dict(sorted(self.stats.items())),
                "shadows": [r.as_status() for r in shown]}
