"""What the shadow sync remembers per shadow, in STATE_DIR/shadow_sync.sqlite3.

One row per (thing, shadow): the state both sides last agreed on (the base of the three-way
merge), the local and cloud versions it was agreed at, whether a change is known to be
waiting, and the last error. The rows are small and few (one per synced shadow), so all of
them are kept in memory and written through one group-commit writer; the CLI reads the file
read-only (`lichen shadow sync-status`).

Its own file, not tables in shadows.sqlite3: the shadow store's writer batches device
requests, and the sync's bookkeeping has nothing to commit together with them.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..group_commit import GroupCommitWriter, open_wal
from ..sqlite_schema import Schema, query_readonly

if TYPE_CHECKING:
    from sqlite_utils import Database

SYNC_DB = "shadow_sync.sqlite3"

_CURRENT = """
CREATE TABLE sync_state (
    thing         TEXT NOT NULL,
    name          TEXT NOT NULL,     -- '' for the classic shadow
    base          TEXT,              -- the state last synced (JSON); NULL: never synced
    base_exists   INTEGER NOT NULL,  -- both sides held the shadow then
    local_version INTEGER,           -- the local shadow's version at the base (NULL: none)
    cloud_version INTEGER,           -- the cloud shadow's version at the base (NULL: none)
    pending       INTEGER NOT NULL,  -- a change is known and not synced yet
    last_error    TEXT,
    error_at      REAL,
    synced_at     REAL,
    syncs         INTEGER NOT NULL,  -- syncs that changed either side
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
"""


def _create(db: Database) -> None:
    db.executescript(_CURRENT)


SCHEMA = Schema("shadow sync state", _create)


@dataclass(slots=True)
class SyncRecord:
    thing: str
    name: str
    base: dict[str, Any] | None = None
    base_exists: bool = False
    local_version: int | None = None
    cloud_version: int | None = None
    pending: bool = False
    last_error: str | None = None
    error_at: float | None = None
    synced_at: float | None = None
    syncs: int = 0

    def row(self) -> tuple:
        return (self.thing, self.name,
                json.dumps(self.base, separators=(",", ":")) if self.base is not None else None,
                int(self.base_exists), self.local_version, self.cloud_version,
                int(self.pending), self.last_error, self.error_at, self.synced_at, self.syncs)

    @classmethod
    def from_row(cls, row: tuple) -> SyncRecord:
        thing, name, base, exists, lv, cv, pending, err, err_at, synced_at, syncs = row
        return cls(thing, name, json.loads(base) if base is not None else None, bool(exists),
                   lv, cv, bool(pending), err, err_at, synced_at, syncs)

    def as_status(self) -> dict[str, Any]:
        return {"thing": self.thing, "shadow": self.name or "$classic",
                "local_version": self.local_version, "cloud_version": self.cloud_version,
                "pending": self.pending, "last_error": self.last_error,
                "synced_at": self.synced_at, "syncs": self.syncs}


_UPSERT = "INSERT OR REPLACE INTO sync_state VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
_SELECT = ("SELECT thing, name, base, base_exists, local_version, cloud_version, pending, "
           "last_error, error_at, synced_at, syncs FROM sync_state")


class SyncStore:
    """The rows in memory, written behind through a group-commit writer."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = path
        self.sync = sync
        self.records: dict[tuple[str, str], SyncRecord] = {}
        self._writer: GroupCommitWriter | None = None

    def open(self) -> SyncStore:
        """Open (create, migrate) and load every row. Blocking: call from an executor."""
        db = open_wal(self.path, self.sync, SCHEMA)
        self.records = {(r[0], r[1]): SyncRecord.from_row(r) for r in db.execute(_SELECT)}
        self._writer = GroupCommitWriter(db, "lichen-shadow-sync")
        return self

    def start(self, loop) -> None:
        assert self._writer is not None
        self._writer.start(loop)

    def save(self, record: SyncRecord) -> None:
        self.records[(record.thing, record.name)] = record
        if self._writer is not None:
            self._writer.write(_UPSERT, record.row())

    async def flush(self) -> None:
        if self._writer is not None:
            await self._writer.flush()

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None


def read_records(path: Path) -> list[SyncRecord]:
    """Every row, from a file the gateway may be writing (WAL readers see committed rows)."""
    return [SyncRecord.from_row(r)
            for r in query_readonly(path, SCHEMA, _SELECT + " ORDER BY thing, name")]
