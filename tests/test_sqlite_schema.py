"""gateway.sqlite_schema on real files: a new file gets the current schema, an older one is
migrated one step (one transaction) at a time, a file from before versioning counts as
version 1, and a newer one is refused with one line and left byte for byte as it was."""

from __future__ import annotations

import sqlite3
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from gateway.errors import UserError
from gateway.sqlite_schema import Schema, SchemaTooNew, check_version, ensure_schema, stamp
from tests.conftest import ROOT
from tests.sqlite_files import build, user_version

V1 = "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL);"
ROWS = "INSERT INTO notes VALUES (1, 'one'), (2, 'two');"


def _create(db) -> None:
    db.table("notes").create({"id": int, "body": str, "tag": str}, pk="id",
                             not_null={"body"})
    db.table("notes").create_index(["tag"], index_name="notes_tag")


def _v2_tag(db) -> None:
    db.table("notes").add_column("tag", str)


def _v3_tag_index(db) -> None:
    db.table("notes").create_index(["tag"], index_name="notes_tag")


SCHEMA = Schema("notebook", _create, (_v2_tag, _v3_tag_index))


def connect(path: Path) -> sqlite3.Connection:
    return sqlite3.connect(path, isolation_level=None)


def open_file(path: Path, schema: Schema = SCHEMA) -> int:
    db = connect(path)
    try:
        return ensure_schema(db, path, schema)
    finally:
        db.close()


def test_version_is_one_more_than_the_migrations():
    assert SCHEMA.version == 3
    assert Schema("x", _create).version == 1


def test_a_new_file_gets_the_current_schema(tmp_path):
    path = tmp_path / "new.db"
    assert open_file(path) == 0
    assert user_version(path) == 3
    db = connect(path)
    assert [r[1] for r in db.execute("PRAGMA table_info(notes)")] == ["id", "body", "tag"]
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == \
        [("notes_tag",)]
    db.close()
    assert open_file(path) == 3  # and opening it again changes nothing


def test_a_file_from_before_versioning_is_version_1_and_is_migrated(tmp_path):
    path = tmp_path / "old.db"
    build(path, V1, ROWS)
    assert check_version(connect(path), path, SCHEMA) == 1
    assert open_file(path) == 1
    assert user_version(path) == 3
    db = connect(path)
    assert db.execute("SELECT id, body, tag FROM notes ORDER BY id").fetchall() == \
        [(1, "one", None), (2, "two", None)]
    assert db.execute("SELECT name FROM sqlite_master WHERE type = 'index'").fetchall() == \
        [("notes_tag",)]
    db.close()


def test_only_the_pending_migrations_run(tmp_path):
    path = tmp_path / "v2.db"
    build(path, "CREATE TABLE notes (id INTEGER PRIMARY KEY, body TEXT NOT NULL, tag TEXT);",
          "INSERT INTO notes VALUES (1, 'one', 'a');", version=2)
    assert open_file(path) == 2  # _v2_tag again would fail: the column exists
    assert user_version(path) == 3


def test_each_migration_commits_on_its_own(tmp_path):
    def v3_fails(db) -> None:
        db.execute("CREATE TABLE half_done (x)")
        raise RuntimeError("migration 3 broke")

    path = tmp_path / "old.db"
    build(path, V1, ROWS)
    with pytest.raises(RuntimeError, match="migration 3 broke"):
        open_file(path, Schema("notebook", _create, (_v2_tag, v3_fails)))
    assert user_version(path) == 2  # step 1 -> 2 kept, step 2 -> 3 rolled back whole
    db = connect(path)
    assert db.execute("SELECT name FROM sqlite_master WHERE name = 'half_done'").fetchone() \
        is None
    assert db.execute("SELECT count(*) FROM notes").fetchone() == (2,)
    db.close()
    assert open_file(path) == 2  # the fixed Lichen carries on from there
    assert user_version(path) == 3


def test_a_failed_creation_leaves_an_empty_file(tmp_path):
    def create_fails(db) -> None:
        db.table("notes").create({"id": int}, pk="id")
        raise RuntimeError("disk on fire")

    path = tmp_path / "new.db"
    with pytest.raises(RuntimeError):
        open_file(path, Schema("notebook", create_fails))
    assert user_version(path) == 0
    assert open_file(path) == 0  # created from scratch on the next try
    assert user_version(path) == 3


@pytest.mark.parametrize("wal", [True, False], ids=["wal", "rollback-journal"])
def test_a_newer_file_is_refused_with_one_line_and_left_untouched(tmp_path, wal):
    path = tmp_path / "future.db"
    before = build(path, V1 + "CREATE TABLE from_the_future (x);", ROWS, version=7, wal=wal)
    db = connect(path)
    with pytest.raises(SchemaTooNew) as err:
        ensure_schema(db, path, SCHEMA)
    db.close()
    assert isinstance(err.value, UserError)  # the CLI prints it as one line
    message = str(err.value)
    assert message == (f"{path}: this notebook was written by a newer Lichen (schema 7, this "
                       "one knows up to 3): upgrade Lichen or restore a backup")
    assert "\n" not in message
    assert (err.value.found, err.value.known) == (7, 3)
    assert path.read_bytes() == before


def test_stamp_says_which_lichen_and_when(tmp_path):
    def create(db) -> None:
        db.table("notes").create({"id": int}, pk="id")
        stamp(db, "created")

    path = tmp_path / "new.db"
    open_file(path, Schema("notebook", create))
    db = connect(path)
    meta = dict(db.execute("SELECT key, value FROM meta"))
    db.close()
    assert set(meta) == {"created_by", "created_at"}
    assert meta["created_by"].startswith("lichen ")
    assert datetime.fromisoformat(meta["created_at"]).tzinfo is not None


def test_opening_a_current_file_does_not_import_sqlite_utils(tmp_path):
    # sqlite-utils takes longer to import than the gateway takes to open its files.
    path = tmp_path / "broker.sqlite3"
    code = ("import sys; from gateway.mqtt.store import BrokerStore; "
            f"BrokerStore({str(path)!r}).close(); print('sqlite_utils' in sys.modules)")
    run = [sys.executable, "-c", code]
    first = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert first.stdout.strip() == "True", first.stderr  # created: sqlite-utils did that
    again = subprocess.run(run, cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert again.stdout.strip() == "False", again.stderr
