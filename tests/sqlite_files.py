"""SQLite files as an older or a newer Lichen left them, and what their schema is.

A store's version-1 DDL lives in its test as literal SQL (what the code on main ran before
files had versions): the test must keep building those files whatever the code becomes.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import sqlite_utils


def build(path: Path, ddl: str, rows: str = "", version: int = 0, wal: bool = True) -> bytes:
    """A file made by running `ddl` then `rows` (SQL), with user_version `version`, in WAL
    mode as Lichen's files are (or not: a file restored from a backup may not be).
    Returns its bytes."""
    db = sqlite3.connect(path, isolation_level=None)
    if wal:
        db.execute("PRAGMA journal_mode=WAL")
    db.executescript(ddl + rows)
    if version:
        db.execute(f"PRAGMA user_version = {version:d}")
    db.close()  # the last connection: checkpoints, so everything is in the file itself
    return path.read_bytes()


def user_version(path: Path) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA user_version").fetchone()[0]
    finally:
        db.close()


def schema_of(path: Path) -> dict[str, tuple]:
    """Every table's columns (primary key included), indexes and rowid-ness, as sqlite-utils reads
    them: equal for two files when the same statements work the same on both, whatever
    the CREATE statements' spelling."""
    db = sqlite_utils.Database(path)
    try:
        out = {}
        for table in db.tables:
            columns = tuple((c.name, c.type.upper(), c.notnull, c.default_value, c.is_pk)
                            for c in table.columns)
            indexes = tuple(sorted((i.name, tuple(i.columns), i.unique, i.partial)
                                   for i in table.indexes if i.origin == "c"))
            out[table.name] = (columns, indexes, "WITHOUT ROWID" in table.schema.upper())
        return out
    finally:
        db.close()


def query_plan(path: Path, sql: str, args: tuple = ()) -> str:
    db = sqlite3.connect(path)
    try:
        return " / ".join(row[-1] for row in db.execute("EXPLAIN QUERY PLAN " + sql, args))
    finally:
        db.close()
