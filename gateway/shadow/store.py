"""Shadows in SQLite: one row per (thing, shadow name) with its version and document, and a
history of past versions to a configured depth.

All SQLite work happens on one writer thread, never on the event loop. Jobs (functions of a
`Txn`) are queued from the loop with `submit`; the thread takes every job waiting, runs them
one after the other in one transaction (each staging its writes, which the next ones see),
writes what they staged, COMMITs once for the whole batch, and only then hands the results
back to the loop, in order. So a reply built from a result (an /accepted) is never sent
before what it reports is on disk, and a burst of updates costs one commit.

A deleted shadow stays as a tombstone that keeps its version for 48 hours, as AWS IoT does:
an update within that time continues the version; later the shadow starts afresh. An expired
tombstone goes, with its history, when its shadow is next asked for or the store next opens.
"""

from __future__ import annotations

import asyncio
import logging
import queue
import sqlite3
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

from ..sqlite_schema import Schema, ensure_schema, query_readonly
from .document import CLASSIC, Shadow

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger("lichen.shadow")

SHADOW_DB = "shadows.sqlite3"
TOMBSTONE_SECONDS = 48 * 3600
MAX_BATCH = 512          # jobs per transaction
CACHE_SIZE = 1024        # shadows kept decoded by the writer (8 KB of state at most each)

T = TypeVar("T")

# WITHOUT ROWID and a partial index: DDL that sqlite-utils' create() cannot express.
_CURRENT = """
CREATE TABLE shadows (
    thing      TEXT NOT NULL,
    name       TEXT NOT NULL,       -- '' for the classic shadow
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,                -- set: a tombstone that keeps the version
    document   TEXT,                -- {"state": ..., "metadata": ...}; NULL once deleted
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
-- Tombstones only (a live shadow's row is not in it), for the purge at open.
CREATE INDEX shadows_tombstones ON shadows (deleted_at) WHERE deleted_at IS NOT NULL;
CREATE TABLE shadow_history (
    thing      TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    document   TEXT NOT NULL,
    PRIMARY KEY (thing, name, version)
) WITHOUT ROWID;
"""


def _create(db: Database) -> None:
    """The current schema (version 2), on a new file."""
    db.executescript(_CURRENT)


def _v2_tombstone_index(db: Database) -> None:
    """Version 1 forgot a tombstone only when its shadow was next asked for, so one never
    asked for again kept its history for ever; the purge at open finds them by this."""
    db.execute("CREATE INDEX shadows_tombstones ON shadows (deleted_at) "
               "WHERE deleted_at IS NOT NULL")


SCHEMA = Schema("shadow store", _create, (_v2_tombstone_index,))


class StoreError(RuntimeError):
    """The transaction holding a job could not be committed: nothing it did happened."""


@dataclass(slots=True)
class Record:
    thing: str
    name: str
    version: int
    shadow: Shadow | None            # None: deleted (a tombstone keeping its version)
    deleted_at: float | None = None
    updated_at: float = 0.0


@dataclass(slots=True)
class Batch:
    """What the jobs of one transaction wrote, staged until the batch writes it at once."""

    records: dict = field(default_factory=dict)     # (thing, name) -> Record | None
    history: list = field(default_factory=list)     # shadow_history rows


class Txn:
    """What one job may do, inside the writer's transaction. Its writes are staged in
    memory: later jobs of the batch see them, a job that raises leaves none of them, and the
    batch writes them all with a few statements before it commits. (Every sqlite3 call gives
    up the GIL and may wait a whole switch interval to get it back while the event loop is
    busy, so a statement per job would cost far more than the SQL itself.)"""

    def __init__(self, store: ShadowStore, batch: Batch) -> None:
        self._store = store
        self._db = store._db
        self._batch = batch
        self.written: dict = {}       # records this job wrote
        self.history_rows: list = []

    def load(self, thing: str, name: str, now: float) -> Record | None:
        key = (thing, name)
        for layer in (self.written, self._batch.records, self._store._cache):
            if key in layer:
                rec = layer[key]
                break
        else:
            row = self._db.execute("SELECT version, deleted_at, updated_at, document "
                                   "FROM shadows WHERE thing = ? AND name = ?", key).fetchone()
            if row is None:
                return None
            version, deleted_at, updated_at, document = row
            shadow = Shadow.from_json(document, version) if document is not None else None
            rec = Record(thing, name, version, shadow, deleted_at, updated_at)
            self._store._remember(key, rec)  # committed data: safe to keep
        if rec is not None and rec.shadow is None and rec.deleted_at is not None \
                and now - rec.deleted_at > TOMBSTONE_SECONDS:
            self._forget(thing, name)
            return None
        return rec

    def _forget(self, thing: str, name: str) -> None:
        """Drop an expired tombstone and its history: the next shadow starts afresh. (Done
        at once: harmless even if the job then fails.)"""
        self._db.execute("DELETE FROM shadows WHERE thing = ? AND name = ?", (thing, name))
        self._db.execute("DELETE FROM shadow_history WHERE thing = ? AND name = ?",
                         (thing, name))
        self.written[(thing, name)] = None

    def save(self, thing: str, name: str, shadow: Shadow, now: float) -> None:
        self.written[(thing, name)] = Record(thing, name, shadow.version, shadow, None, now)
        if self._store.history_depth:
            self.history_rows.append((thing, name, shadow.version, now, shadow.to_json()))

    def delete(self, thing: str, name: str, version: int, now: float) -> None:
        self.written[(thing, name)] = Record(thing, name, version, None, now, now)

    def list_named(self, thing: str) -> list[str]:
        """Live named shadows of a thing, this batch's changes included."""
        names = {name for (name,) in self._db.execute(
            "SELECT name FROM shadows WHERE thing = ? AND name != '' AND document IS NOT NULL",
            (thing,))}
        for layer in (self._batch.records, self.written):
            for (t, name), rec in layer.items():
                if t == thing and name:
                    if rec is not None and rec.shadow is not None:
                        names.add(name)
                    else:
                        names.discard(name)
        return sorted(names)

    def versions(self) -> dict[tuple[str, str], int | None]:
        """Every shadow's version (None: deleted), this batch's changes included."""
        out = {(t, n): (v if live else None) for t, n, v, live in self._db.execute(
            "SELECT thing, name, version, document IS NOT NULL FROM shadows")}
        for layer in (self._batch.records, self.written):
            for key, rec in layer.items():
                out[key] = rec.version if rec is not None and rec.shadow is not None else None
        return out

    def count_named(self, thing: str) -> int:
        return len(self.list_named(thing))

    def history(self, thing: str, name: str = CLASSIC) -> list[tuple[int, float, Shadow]]:
        """Kept past versions, oldest first: (version, updated_at, shadow)."""
        rows = {v: (at, doc) for v, at, doc in self._db.execute(
            "SELECT version, updated_at, document FROM shadow_history "
            "WHERE thing = ? AND name = ?", (thing, name))}
        for t, n, v, at, doc in self._batch.history + self.history_rows:
            if (t, n) == (thing, name):
                rows[v] = (at, doc)
        return [(v, rows[v][0], Shadow.from_json(rows[v][1], v)) for v in sorted(rows)]


Job = Callable[[Txn], Any]
Done = Callable[[Any], None]     # gets the job's result, or the exception it raised
_STOP = object()


class ShadowStore:
    """The shadow database and its writer thread."""

    def __init__(self, path: str | Path | None, sync: str = "normal",
                 history_depth: int = 10) -> None:
        self.path = Path(path) if path is not None else None   # None: in memory
        self.sync = "FULL" if sync == "full" else "NORMAL"
        self.history_depth = history_depth
        self.commits = 0
        self._db: sqlite3.Connection = None  # type: ignore[assignment]
        self._cache: OrderedDict[tuple[str, str], Record | None] = OrderedDict()
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False

    def open(self) -> ShadowStore:
        """Open (and create) the database. Blocking: call it from an executor."""
        target = ":memory:"
        if self.path is not None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            target = str(self.path)
        db = sqlite3.connect(target, check_same_thread=False, isolation_level=None)
        try:
            db.execute("PRAGMA busy_timeout=5000")
            ensure_schema(db, target, SCHEMA)
            db.execute("PRAGMA journal_mode=WAL")
            db.execute(f"PRAGMA synchronous={self.sync}")
            purge_tombstones(db, time.time())
        except BaseException:
            db.close()
            raise
        self._db = db
        return self

    # ---------------------------------------------------------------- from the event loop

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._writer, name="lichen-shadow", daemon=True)
        self._thread.start()

    def submit(self, job: Job, done: Done) -> None:
        """Run `job` on the writer thread; `done(result or exception)` runs on the loop once
        the transaction holding it has committed (or failed: StoreError)."""
        if self._closed:
            raise StoreError("the shadow store is closed")
        self._queue.put((job, done))

    def call(self, job: Job) -> asyncio.Future:
        """`submit` as a future, for callers that await."""
        assert self._loop is not None
        fut = self._loop.create_future()

        def done(result: Any) -> None:
            if fut.done():
                return
            if isinstance(result, BaseException):
                fut.set_exception(result)
            else:
                fut.set_result(result)

        self.submit(job, done)
        return fut

    async def close(self) -> None:
        """Finish every job queued so far, deliver its result, and close the database."""
        self._closed = True
        if self._thread is not None:
            self._queue.put(_STOP)
            await asyncio.to_thread(self._thread.join, 30)
            await asyncio.sleep(0)  # let the last batch's results reach their callbacks
            self._thread = None
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- without a loop

    def run(self, job: Callable[[Txn], T]) -> T:
        """Run one job in its own transaction on this thread (the CLI with no gateway
        running; tests). Not while the writer thread runs."""
        assert self._thread is None, "run() is for a store without its writer thread"
        (result,) = self._run_batch([job])
        if isinstance(result, BaseException):
            raise result
        return result

    def close_sync(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None  # type: ignore[assignment]

    # ---------------------------------------------------------------- the writer thread

    def _writer(self) -> None:
        stop = False
        while not stop:
            item = self._queue.get()
            if item is _STOP:
                break
            batch = [item]
            while len(batch) < MAX_BATCH:
                try:
                    item = self._queue.get_nowait()
                except queue.Empty:
                    break
                if item is _STOP:
                    stop = True
                    break
                batch.append(item)
            results = self._run_batch([job for job, _ in batch])
            loop = self._loop
            if loop is None or loop.is_closed():
                return
            try:
                loop.call_soon_threadsafe(_deliver, [done for _, done in batch], results)
            except RuntimeError:  # the loop closed meanwhile
                return

    def _run_batch(self, jobs: list[Job]) -> list[Any]:
        db = self._db
        results: list[Any] = []
        batch = Batch()
        try:
            db.execute("BEGIN")
            for job in jobs:
                txn = Txn(self, batch)
                try:
                    result = job(txn)
                except Exception as exc:  # the job's own answer (e.g. 409), or a bug
                    results.append(exc)
                    continue
                batch.records.update(txn.written)
                batch.history.extend(txn.history_rows)
                results.append(result)
            self._write(batch)
            db.execute("COMMIT")
        except Exception as exc:  # sqlite3.Error above all; anything else fails it as well
            # Nothing of the batch happened: no job's result may be reported as done.
            log.error("shadow store commit failed, %d requests refused: %r", len(jobs), exc)
            try:
                db.execute("ROLLBACK")
            except sqlite3.Error:
                pass
            self._cache.clear()
            failure = StoreError(f"shadow store commit failed: {exc}")
            return [failure] * len(jobs)
        self.commits += 1
        for key, rec in batch.records.items():
            self._remember(key, rec)
        return results

    def _write(self, batch: Batch) -> None:
        """The batch's staged writes, in three statements whatever their number."""
        rows = [(r.thing, r.name, r.version, r.updated_at, r.deleted_at,
                 r.shadow.to_json() if r.shadow is not None else None)
                for r in batch.records.values() if r is not None]
        if rows:
            self._db.executemany("INSERT OR REPLACE INTO shadows VALUES (?, ?, ?, ?, ?, ?)",
                                 rows)
        if batch.history:
            self._db.executemany("INSERT OR REPLACE INTO shadow_history VALUES (?, ?, ?, ?, ?)",
                                 batch.history)
            newest: dict[tuple[str, str], int] = {}
            for thing, name, version, _, _ in batch.history:
                newest[(thing, name)] = max(version, newest.get((thing, name), 0))
            self._db.executemany("DELETE FROM shadow_history WHERE thing = ? AND name = ? "
                                 "AND version <= ?",
                                 [(t, n, v - self.history_depth) for (t, n), v in newest.items()])

    def _remember(self, key: tuple[str, str], rec: Record | None) -> None:
        cache = self._cache
        cache[key] = rec
        cache.move_to_end(key)
        if len(cache) > CACHE_SIZE:
            cache.popitem(last=False)


def purge_tombstones(db: sqlite3.Connection, now: float) -> int:
    """Drop the tombstones older than TOMBSTONE_SECONDS, with their history, as `load` would
    on the next request for them; returns how many."""
    expired = db.execute("SELECT thing, name FROM shadows WHERE deleted_at IS NOT NULL "
                         "AND deleted_at < ?", (now - TOMBSTONE_SECONDS,)).fetchall()
    if expired:
        db.execute("BEGIN")
        try:
            db.executemany("DELETE FROM shadows WHERE thing = ? AND name = ?", expired)
            db.executemany("DELETE FROM shadow_history WHERE thing = ? AND name = ?", expired)
            db.execute("COMMIT")
        except BaseException:
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
    return len(expired)


def _deliver(callbacks: list[Done], results: list[Any]) -> None:
    for done, result in zip(callbacks, results, strict=True):
        try:
            done(result)
        except Exception:  # one reply's failure must not stop the others
            log.exception("shadow reply failed")


def list_named_readonly(path: Path, thing: str) -> list[str]:
    """Named shadows of a thing from a store another process may be writing (WAL readers
    see only committed data)."""
    return [name for (name,) in query_readonly(
        path, SCHEMA, "SELECT name FROM shadows WHERE thing = ? AND name != '' AND "
        "document IS NOT NULL ORDER BY name", (thing,))]
