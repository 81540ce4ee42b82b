"""The on-device offline queue: QoS 1 publishes in a SQLite file (WAL), in order, bounded.

A message goes in when the application publishes it and comes out only when the gateway has
acknowledged it (PUBACK), so a gateway outage, a lost connection or a device process that
dies loses nothing: the next process to open the file sends what is left, oldest first.

Bounds are on the number of messages and on their bytes (topic + payload). When one is
reached the queue either refuses the new message (`when_full="reject"`, raising QueueFull)
or evicts the oldest ones to make room (`when_full="drop-oldest"`).

One process at a time: the file is locked (flock on FILE.lock) while open, since two
clients draining one queue would each send every message.
"""

from __future__ import annotations

import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Literal, NamedTuple

from .errors import QueueError, QueueFull, QueueLocked

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no cross-process lock
    fcntl = None  # type: ignore[assignment]

SCHEMA_VERSION = 1
MEMORY = ":memory:"
WhenFull = Literal["reject", "drop-oldest"]

_SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: the order of publishing
    topic    TEXT    NOT NULL,
    payload  BLOB    NOT NULL,
    qos      INTEGER NOT NULL,
    retain   INTEGER NOT NULL,
    created  REAL    NOT NULL,
    size     INTEGER NOT NULL
)
"""


@dataclass(frozen=True, slots=True)
class QueuedMessage:
    id: int
    topic: str
    payload: bytes
    qos: int
    retain: bool
    created: float


class Enqueued(NamedTuple):
    id: int                 # the new message's id (ids only grow)
    evicted: list[int]      # ids dropped to make room (when_full="drop-oldest")


def _size(topic: str, payload: bytes) -> int:
    return len(topic.encode()) + len(payload)


class OfflineQueue:
    """A bounded, ordered, durable queue of messages waiting for their PUBACK.

    `path` is a file (created if missing, with its directory) or ":memory:" (the same
    behaviour without surviving the process). Thread-safe.
    """

    def __init__(self, path: str | os.PathLike[str] = MEMORY, *, max_messages: int = 10_000,
                 max_bytes: int = 16 * 1024 * 1024, when_full: WhenFull = "reject",
                 synchronous: Literal["normal", "full"] = "normal") -> None:
        if max_messages < 1:
            raise ValueError(f"max_messages must be >= 1, got {max_messages}")
        if max_bytes < 1:
            raise ValueError(f"max_bytes must be >= 1, got {max_bytes}")
        if when_full not in ("reject", "drop-oldest"):
            raise ValueError(f"when_full must be 'reject' or 'drop-oldest', got {when_full!r}")
        if synchronous not in ("normal", "full"):
            raise ValueError(f"synchronous must be 'normal' or 'full', got {synchronous!r}")
        self.path = str(path)
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self.when_full: WhenFull = when_full
        self.evicted_total = 0
        self._lock = threading.Lock()
        self._lock_file: IO[bytes] | None = None
        self._db: sqlite3.Connection | None = None
        if self.path != MEMORY:
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
            self._lock_file = self._take_lock()
        try:
            self._db = sqlite3.connect(self.path, check_same_thread=False,
                                       isolation_level=None)
            self._setup(synchronous)
        except sqlite3.DatabaseError as exc:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_lock()
            raise QueueError(f"cannot open the offline queue {self.path}: {exc} (delete the "
                             "file to start an empty queue)") from None

    def _take_lock(self) -> IO[bytes] | None:
        if fcntl is None:
            return None
        lock = open(self.path + ".lock", "ab")  # noqa: SIM115 - held while the queue is open
        try:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            lock.close()
            raise QueueLocked(f"the offline queue {self.path} is in use by another process "
                              "(or another client in this one): give each device process "
                              "its own queue file") from None
        return lock

    def _release_lock(self) -> None:
        if self._lock_file is not None:
            self._lock_file.close()  # closing drops the flock
            self._lock_file = None

    def _setup(self, synchronous: str) -> None:
        db = self._db
        version = db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(f"made by a newer device SDK (schema {version})")
        if self.path != MEMORY:
            mode = db.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if mode.lower() != "wal":
                raise sqlite3.DatabaseError(f"cannot use WAL mode (got {mode})")
        # NORMAL in WAL mode survives a process crash; FULL also survives power loss.
        db.execute(f"PRAGMA synchronous={synchronous.upper()}")
        db.execute(_SCHEMA)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        count, size = db.execute("SELECT count(*), coalesce(sum(size), 0) FROM messages") \
            .fetchone()
        self._count = int(count)
        self._bytes = int(size)

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # ------------------------------------------------------------------ the queue

    def put(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False) -> Enqueued:
        """Append a message; durable when this returns. Raises QueueFull when a bound is
        reached and the policy is "reject", or when the message alone is over max_bytes."""
        size = _size(topic, payload)
        if size > self.max_bytes:
            raise QueueFull(f"a message of {size} bytes cannot fit in the offline queue "
                            f"{self.path} (max_bytes={self.max_bytes})")
        with self._lock:
            self._check_open()
            evicted: list[int] = []
            with self._transaction() as db:
                count, total = self._count, self._bytes
                if count + 1 > self.max_messages or total + size > self.max_bytes:
                    if self.when_full == "reject":
                        raise QueueFull(self._full_message(size))
                    for row_id, row_size in db.execute(
                            "SELECT id, size FROM messages ORDER BY id"):
                        if count + 1 <= self.max_messages and total + size <= self.max_bytes:
                            break
                        evicted.append(row_id)
                        count -= 1
                        total -= row_size
                    db.executemany("DELETE FROM messages WHERE id = ?",
                                   [(i,) for i in evicted])
                cur = db.execute(
                    "INSERT INTO messages (topic, payload, qos, retain, created, size) "
                    "VALUES (?, ?, ?, ?, ?, ?)",
                    (topic, payload, qos, int(retain), time.time(), size))
            self._count, self._bytes = count + 1, total + size
            self.evicted_total += len(evicted)
            return Enqueued(int(cur.lastrowid), evicted)

    def _full_message(self, size: int) -> str:
        which = (f"{self._count} of max_messages={self.max_messages}"
                 if self._count + 1 > self.max_messages else
                 f"{self._bytes} + {size} bytes over max_bytes={self.max_bytes}")
        return (f"the offline queue {self.path} is full ({which}) and when_full='reject': "
                "the gateway has not acknowledged what is queued; wait for it to come back, "
                "raise the bound, or use when_full='drop-oldest' to keep the newest")

    def peek(self, after: int = 0, limit: int = 100) -> list[QueuedMessage]:
        """Up to `limit` messages with an id greater than `after`, oldest first."""
        with self._lock:
            self._check_open()
            rows = self._db.execute(
                "SELECT id, topic, payload, qos, retain, created FROM messages "
                "WHERE id > ? ORDER BY id LIMIT ?", (after, limit)).fetchall()
        return [QueuedMessage(r[0], r[1], bytes(r[2]), r[3], bool(r[4]), r[5]) for r in rows]

    def remove(self, message_id: int) -> bool:
        """Delete a message (its PUBACK came); False if it was not there (evicted)."""
        with self._lock:
            self._check_open()
            row = self._db.execute("SELECT size FROM messages WHERE id = ?",
                                   (message_id,)).fetchone()
            if row is None:
                return False
            self._db.execute("DELETE FROM messages WHERE id = ?", (message_id,))
            self._count -= 1
            self._bytes -= row[0]
            return True

    def __len__(self) -> int:
        return self._count

    @property
    def size_bytes(self) -> int:
        """Bytes held (topics and payloads)."""
        return self._bytes

    @property
    def closed(self) -> bool:
        return self._db is None

    def _check_open(self) -> None:
        if self._db is None:
            raise QueueError(f"the offline queue {self.path} is closed")

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
                self._db = None
            self._release_lock()

    def __enter__(self) -> OfflineQueue:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (f"OfflineQueue({self.path!r}, {self._count} messages, {self._bytes} bytes, "
                f"when_full={self.when_full!r})")
