"""One SQLite connection written by one thread in batches (group commit).

Writes are queued from the event loop and committed together, so a burst of thousands of
small writes costs a handful of fsyncs. `after_commit(fn)` runs `fn` on the loop once
everything queued so far is on disk: that is how a component acknowledges something only
after it is durable. `call(fn, done)` runs `fn(db)` on the writer thread after every write
queued before it, so a read sees them all; `done(result)` then runs on the loop.
"""

from __future__ import annotations

import asyncio
import logging
import sqlite3
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .sqlite_schema import Schema, ensure_schema

log = logging.getLogger("lichen.store")

# An op is (sql, args), (sql, [args, ...]) for executemany, or a read (fn, done).
_MANY = object()


def open_wal(path: Path, sync: str, schema: Schema) -> sqlite3.Connection:
    """A WAL-mode connection usable from the writer thread, its file created or migrated
    to `schema` (SchemaTooNew if a newer Lichen wrote it)."""
    db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
    try:
        ensure_schema(db, path, schema)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute(f"PRAGMA synchronous={'FULL' if sync == 'full' else 'NORMAL'}")
    except BaseException:
        db.close()
        raise
    return db


class GroupCommitWriter:
    def __init__(self, db: sqlite3.Connection, name: str) -> None:
        self.db = db
        self.name = name
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._ops: list[tuple] = []
        self._callbacks: list[Callable[[], None]] = []
        self._closing = False
        self._committing = False
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self.commits = 0
        self.failed: BaseException | None = None

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
        self._thread.start()

    # ---------------------------------------------------------------- from the loop

    def write(self, sql: str, args: tuple) -> None:
        self._put((sql, args))

    def write_many(self, sql: str, rows: list[tuple]) -> None:
        self._put((_MANY, sql, rows))

    def call(self, fn: Callable[[sqlite3.Connection], Any],
             done: Callable[[Any], None]) -> None:
        """fn(db) on the writer thread after the writes queued so far; done(result) on the
        loop (with the exception instead, if fn raised)."""
        self._put((fn, done))

    def _put(self, op: tuple) -> None:
        with self._lock:
            self._ops.append(op)
            if len(self._ops) == 1:
                self._wake.notify()

    def after_commit(self, fn: Callable[[], None]) -> None:
        """Run fn on the event loop once every write queued so far is committed."""
        with self._lock:
            if not self._ops and not self._callbacks and not self._committing:
                pending = False
            else:
                self._callbacks.append(fn)
                pending = True
        if not pending:
            fn()

    async def flush(self) -> None:
        """Wait until everything queued so far is committed."""
        assert self._loop is not None
        done = self._loop.create_future()
        self.after_commit(lambda: done.done() or done.set_result(None))
        await done

    # ---------------------------------------------------------------- the writer thread

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._ops and not self._callbacks and not self._closing:
                    self._wake.wait()
                if self._closing and not self._ops and not self._callbacks:
                    return
                ops, self._ops = self._ops, []
                callbacks, self._callbacks = self._callbacks, []
                self._committing = bool(ops)
            results: list[tuple[Callable, Any]] = []
            if ops:
                try:
                    self._commit(ops, results)
                except sqlite3.Error as exc:
                    # A failed commit (full disk, I/O error) must not be acknowledged:
                    # callbacks are dropped so whatever waits on them is never confirmed.
                    self.failed = exc
                    log.error("%s: commit failed, %d writes not acknowledged: %s",
                              self.name, len(ops), exc)
                    try:
                        self.db.execute("ROLLBACK")
                    except sqlite3.Error:
                        pass
                    # Reads in the failed batch still get an answer: the error.
                    callbacks = []
                    results = [(op[1], exc) for op in ops
                               if len(op) == 2 and type(op[0]) is not str]
                finally:
                    with self._lock:
                        self._committing = False
            if (callbacks or results) and self._loop is not None and not self._loop.is_closed():
                try:
                    self._loop.call_soon_threadsafe(_run_all, results, callbacks)
                except RuntimeError:
                    return

    def _commit(self, ops: list[tuple], results: list) -> None:
        db = self.db
        db.execute("BEGIN")
        for op in ops:
            if len(op) == 2:
                first, second = op
                if type(first) is str:
                    db.execute(first, second)
                else:
                    try:
                        results.append((second, first(db)))
                    except Exception as exc:  # a failed read is reported, the batch goes on
                        results.append((second, exc))
            else:
                db.executemany(op[1], op[2])
        db.execute("COMMIT")
        self.commits += 1

    def close(self) -> None:
        with self._lock:
            self._closing = True
            self._wake.notify()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.db.close()


def _run_all(results: list, callbacks: list[Callable[[], None]]) -> None:
    for done, value in results:
        try:
            done(value)
        except Exception:
            log.exception("read callback failed")
    for fn in callbacks:
        try:
            fn()
        except Exception:  # a callback's failure must not stop the others
            log.exception("after-commit callback failed")
