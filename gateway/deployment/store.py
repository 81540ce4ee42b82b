"""The deployments' state machine in STATE_DIR/deployments.sqlite3.

    RECEIVED -> VALIDATED -> STAGED -> SWITCHED -> HEALTH_CHECK -> SUCCEEDED
    any step before SWITCHED -> REJECTED (bad document) or FAILED (an artifact, the disk)
    SWITCHED / HEALTH_CHECK -> FAILED (rolled back to the version before, reason says so)
    SUCCEEDED -> ROLLED_BACK (`lichen deploy rollback` went back past it)

Each change is one committed transaction (synchronous=FULL: deployments are rare, and a
restart must find the state the switch left). `events` keeps every step for history.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ..sqlite_schema import Schema, ensure_schema

if TYPE_CHECKING:
    from sqlite_utils import Database

DB_NAME = "deployments.sqlite3"

RECEIVED, VALIDATED, STAGED = "RECEIVED", "VALIDATED", "STAGED"
SWITCHED, HEALTH_CHECK = "SWITCHED", "HEALTH_CHECK"
SUCCEEDED, FAILED, REJECTED, ROLLED_BACK = "SUCCEEDED", "FAILED", "REJECTED", "ROLLED_BACK"
BEFORE_SWITCH = (RECEIVED, VALIDATED, STAGED)
AFTER_SWITCH = (SWITCHED, HEALTH_CHECK)
FINAL = (SUCCEEDED, FAILED, REJECTED, ROLLED_BACK)


def _create(db: Database) -> None:
    db.execute("""CREATE TABLE deployments (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        kind TEXT NOT NULL,              -- 'apply' or 'rollback'
        job_id TEXT,
        state TEXT NOT NULL,
        reason TEXT,
        version INTEGER,                 -- the version it switches to (apply: its own id)
        previous_version INTEGER,        -- what `current` was before its switch
        document TEXT,
        base_dir TEXT,                   -- where relative artifact paths start
        attempts INTEGER NOT NULL DEFAULT 0,
        boots INTEGER NOT NULL DEFAULT 0,
        created_at REAL NOT NULL,
        updated_at REAL NOT NULL)""")
    db.execute("""CREATE TABLE events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        deployment_id INTEGER NOT NULL REFERENCES deployments(id),
        state TEXT NOT NULL,
        detail TEXT,
        at REAL NOT NULL)""")
    db.execute("CREATE INDEX events_by_deployment ON events(deployment_id, id)")


def _add_job_reports(db: Database) -> None:
    """Version 2: what the IoT Jobs agent last reported for each job, so a restart finishes
    the job's report without sending it twice (the job's deployment: deployments.job_id)."""
    db.execute("""CREATE TABLE job_reports (
        job_id TEXT PRIMARY KEY,
        execution_version INTEGER,       -- the execution's versionNumber as last known
        reported TEXT,                   -- the last status the cloud accepted (or settled)
        note TEXT,
        updated_at REAL NOT NULL)""")
    db.execute("CREATE INDEX deployments_by_job ON deployments(job_id) "
               "WHERE job_id IS NOT NULL")


def _create_current(db: Database) -> None:
    _create(db)
    _add_job_reports(db)


SCHEMA = Schema("deployment store", _create_current, migrations=(_add_job_reports,))


@dataclass(slots=True)
class Deployment:
    id: int
    kind: str
    job_id: str | None
    state: str
    reason: str | None
    version: int | None
    previous_version: int | None
    document: dict | None
    base_dir: str | None
    attempts: int
    boots: int
    created_at: float
    updated_at: float

    @property
    def final(self) -> bool:
        return self.state in FINAL

    def as_dict(self, document: bool = False) -> dict[str, Any]:
        d = asdict(self)
        if not document:
            d.pop("document")
        return d


class DeploymentStore:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / DB_NAME
        self.db = sqlite3.connect(self.path, isolation_level=None, timeout=30,
                                  check_same_thread=False)
        try:
            ensure_schema(self.db, self.path, SCHEMA)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=FULL")
        except BaseException:
            self.db.close()
            raise

    def close(self) -> None:
        self.db.close()

    def _row(self, row: tuple | None) -> Deployment | None:
        if row is None:
            return None
        d = Deployment(*row)
        d.document = json.loads(d.document) if d.document else None
        return d

    _COLUMNS = ("id, kind, job_id, state, reason, version, previous_version, document, "
                "base_dir, attempts, boots, created_at, updated_at")

    def add(self, kind: str, document: dict | None, *, job_id: str | None = None,
            base_dir: str | None = None, version: int | None = None) -> int:
        now = time.time()
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            cur = self.db.execute(
                "INSERT INTO deployments (kind, job_id, state, version, document, base_dir, "
                "created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (kind, job_id, RECEIVED, version,
                 json.dumps(document) if document is not None else None, base_dir, now, now))
            dep_id = cur.lastrowid
            self.db.execute("INSERT INTO events (deployment_id, state, detail, at) "
                            "VALUES (?, ?, ?, ?)", (dep_id, RECEIVED, None, now))
        return dep_id

    def get(self, dep_id: int) -> Deployment | None:
        return self._row(self.db.execute(
            f"SELECT {self._COLUMNS} FROM deployments WHERE id = ?", (dep_id,)).fetchone())

    def all(self, limit: int = 1000) -> list[Deployment]:
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM deployments ORDER BY id DESC "
                               "LIMIT ?", (limit,)).fetchall()
        return [self._row(r) for r in rows]

    def in_states(self, states: tuple[str, ...]) -> list[Deployment]:
        marks = ", ".join("?" * len(states))
        rows = self.db.execute(f"SELECT {self._COLUMNS} FROM deployments WHERE state IN "
                               f"({marks}) ORDER BY id", states).fetchall()
        return [self._row(r) for r in rows]

    def last_switched_to(self, version: int) -> Deployment | None:
        """The latest deployment that made `version` current."""
        return self._row(self.db.execute(
            f"SELECT {self._COLUMNS} FROM deployments WHERE version = ? AND state IN "
            "(?, ?, ?, ?) ORDER BY id DESC LIMIT 1",
            (version, SWITCHED, HEALTH_CHECK, SUCCEEDED, ROLLED_BACK)).fetchone())

    # --- IoT Jobs: the job <-> deployment link and the last status reported -------------

    def by_job(self, job_id: str) -> Deployment | None:
        """The latest deployment of the job."""
        return self._row(self.db.execute(
            f"SELECT {self._COLUMNS} FROM deployments WHERE job_id = ? ORDER BY id DESC "
            "LIMIT 1", (job_id,)).fetchone())

    def job_report(self, job_id: str) -> tuple[int | None, str | None]:
        """(execution version, last status reported) of a job; (None, None) if unknown."""
        row = self.db.execute("SELECT execution_version, reported FROM job_reports "
                              "WHERE job_id = ?", (job_id,)).fetchone()
        return (row[0], row[1]) if row else (None, None)

    def set_job_report(self, job_id: str, *, version: int | None = None,
                       reported: str | None = None, note: str | None = None) -> None:
        """Record what is known; a field given as None keeps its value."""
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(
                "INSERT INTO job_reports (job_id, execution_version, reported, note, "
                "updated_at) VALUES (?, ?, ?, ?, ?) ON CONFLICT(job_id) DO UPDATE SET "
                "execution_version = coalesce(excluded.execution_version, execution_version), "
                "reported = coalesce(excluded.reported, reported), "
                "note = coalesce(excluded.note, note), updated_at = excluded.updated_at",
                (job_id, version, reported, note, time.time()))

    def jobs_to_finish(self, settled: tuple[str, ...]) -> list[Deployment]:
        """Deployments of jobs, oldest first, that are not final, or final with an outcome
        not yet reported (no report in `settled` recorded for their job)."""
        marks = ", ".join("?" * len(settled))
        rows = self.db.execute(
            f"SELECT {', '.join('d.' + c for c in self._COLUMNS.split(', '))} "
            "FROM deployments d LEFT JOIN job_reports r ON r.job_id = d.job_id "
            "WHERE d.job_id IS NOT NULL AND d.id = (SELECT max(id) FROM deployments "
            f"WHERE job_id = d.job_id) AND (r.reported IS NULL OR r.reported NOT IN ({marks})) "
            "ORDER BY d.id", settled).fetchall()
        return [self._row(r) for r in rows]

    def events(self, dep_id: int) -> list[dict[str, Any]]:
        rows = self.db.execute("SELECT state, detail, at FROM events WHERE deployment_id = ? "
                               "ORDER BY id", (dep_id,)).fetchall()
        return [{"state": s, "detail": d, "at": a} for s, d, a in rows]

    def set_state(self, dep_id: int, state: str, detail: str | None = None,
                  **fields: Any) -> None:
        """One transaction: the new state, its event, and any of reason, version,
        previous_version, attempts, boots."""
        allowed = {"reason", "version", "previous_version", "attempts", "boots"}
        assert set(fields) <= allowed, fields
        now = time.time()
        sets = "".join(f", {k} = ?" for k in fields)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"UPDATE deployments SET state = ?, updated_at = ?{sets} "
                            "WHERE id = ?", (state, now, *fields.values(), dep_id))
            self.db.execute("INSERT INTO events (deployment_id, state, detail, at) "
                            "VALUES (?, ?, ?, ?)", (dep_id, state, detail, now))

    def update(self, dep_id: int, **fields: Any) -> None:
        """Fields without a change of state (a reason noted before a rollback, a boot)."""
        allowed = {"reason", "previous_version", "attempts", "boots"}
        assert fields and set(fields) <= allowed, fields
        sets = ", ".join(f"{k} = ?" for k in fields)
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            self.db.execute(f"UPDATE deployments SET {sets}, updated_at = ? WHERE id = ?",
                            (*fields.values(), time.time(), dep_id))
