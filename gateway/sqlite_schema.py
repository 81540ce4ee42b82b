"""Schema versions of Lichen's SQLite files.

Every file records its schema version in PRAGMA user_version. Opening one creates the
current schema on a new file, brings an older file up to date one migration at a time (one
transaction each), and refuses a newer file with one line, leaving it untouched: a later
Lichen may have stored what this one would misread or break. A file from before
versioning (user_version 0 with tables in it) is version 1.

Creating and migrating use sqlite-utils, imported only then (it takes longer to import
than opening a current file, which is one PRAGMA); the stores' own reads and writes stay
on plain sqlite3.
"""

from __future__ import annotations

import sqlite3
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:
    from sqlite_utils import Database

Step = Callable[["Database"], None]


class SchemaTooNew(UserError):
    """A file written by a newer Lichen: refused, and left as it is."""

    def __init__(self, path: str | Path, kind: str, found: int, known: int) -> None:
        super().__init__(f"{path}: this {kind} was written by a newer Lichen (schema {found}, "
                         f"this one knows up to {known}): upgrade Lichen or restore a backup")
        self.path = str(path)
        self.found = found
        self.known = known


@dataclass(frozen=True)
class Schema:
    """One kind of file: its name in messages, how to create its current schema on an empty
    file, and the migrations that bring an older file there (migrations[0] takes version 1
    to 2, migrations[1] 2 to 3, ...). Each step gets the file as a sqlite-utils Database
    inside a transaction that the step must not end."""

    kind: str
    create: Step
    migrations: tuple[Step, ...] = ()

    @property
    def version(self) -> int:
        return 1 + len(self.migrations)


def file_version(db: sqlite3.Connection) -> int:
    """The file's schema version: 0 for an empty file, 1 for one from before versioning."""
    version = db.execute("PRAGMA user_version").fetchone()[0]
    if version == 0 and db.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' LIMIT 1").fetchone():
        return 1
    return version


def check_version(db: sqlite3.Connection, path: str | Path, schema: Schema) -> int:
    """The file's version; SchemaTooNew if it is newer than `schema` (nothing written)."""
    version = file_version(db)
    if version > schema.version:
        raise SchemaTooNew(path, schema.kind, version, schema.version)
    return version


def query_readonly(path: Path, schema: Schema, sql: str, params: tuple = ()) -> list[tuple]:
    """The rows of `sql` from a file another process may be writing (a WAL reader sees only
    committed rows), for commands that must work beside a running gateway: [] when the file
    or its tables do not exist yet; SchemaTooNew when it is newer than `schema`."""
    if not path.exists():
        return []
    db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    try:
        db.execute("PRAGMA busy_timeout=5000")
        check_version(db, path, schema)
        return db.execute(sql, params).fetchall()
    except sqlite3.OperationalError:  # no tables yet
        return []
    finally:
        db.close()


def ensure_schema(db: sqlite3.Connection, path: str | Path, schema: Schema) -> int:
    """Bring the file `db` has open to `schema.version`; returns the version it had (0 for
    a new file). `db` must be in autocommit mode (isolation_level=None), outside a
    transaction. Call it before anything else writes: a refused file stays byte for byte as
    it was (switching it to WAL would already change its header)."""
    found = check_version(db, path, schema)
    version = found
    while version < schema.version:
        version = _step(db, path, schema)
    return found


def _sqlite_utils_database() -> type[Database]:
    """sqlite-utils, imported without numpy and pandas: it loads them, when installed, only to
    map their column types, which Lichen never passes; numpy alone would add about 15 MB to
    the daemon's RSS for the rest of its life after a first start."""
    blocked = [name for name in ("numpy", "pandas") if name not in sys.modules]
    for name in blocked:
        sys.modules[name] = None  # type: ignore[assignment]  # `import` raises ImportError
    try:
        from sqlite_utils import Database
    finally:
        for name in blocked:
            del sys.modules[name]
    return Database


def _step(db: sqlite3.Connection, path: str | Path, schema: Schema) -> int:
    """Create the schema, or apply the next migration, in one transaction."""
    Database = _sqlite_utils_database()  # noqa: N806 - the class, under its own name

    db.execute("BEGIN IMMEDIATE")
    try:
        # Again under the write lock: another process may have got here first.
        version = check_version(db, path, schema)
        if version < schema.version:
            target = Database(db, recursive_triggers=False, execute_plugins=False)
            if version == 0:
                schema.create(target)
                version = schema.version
            else:
                schema.migrations[version - 1](target)
                version += 1
            db.execute(f"PRAGMA user_version = {version:d}")
        db.execute("COMMIT")
    except BaseException:
        if db.in_transaction:  # a failed COMMIT or a full disk may have rolled back already
            db.execute("ROLLBACK")
        raise
    return version


def stamp(db: Database, event: str) -> None:
    """Note in the file's `meta` table which Lichen `event`-ed it ("created", "upgraded")
    and when: what someone looking at a file from a field device wants to know first."""
    meta = db.table("meta")
    if not meta.exists():
        meta.create({"key": str, "value": str}, pk="key", not_null={"value"})
    meta.upsert_all([{"key": f"{event}_by", "value": f"lichen {_lichen_version()}"},
                     {"key": f"{event}_at",
                      "value": datetime.now(UTC).isoformat(timespec="seconds")}],
                    pk="key")


def _lichen_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("lichen")
    except PackageNotFoundError:  # run from a source tree that was never installed
        return "unknown"
