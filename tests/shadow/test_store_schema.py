"""The shadow store's schema versions: a file from before versioning keeps its shadows,
history and tombstones and becomes version 2 (an index of tombstones, by which tombstones
past their 48 hours are purged, history and all, at open); a newer file is refused with one
line and left as it was."""

from __future__ import annotations

import sqlite3
import time

import pytest

from gateway.errors import UserError
from gateway.shadow import ops
from gateway.shadow.document import Limits, parse_update
from gateway.shadow.store import TOMBSTONE_SECONDS, ShadowStore, list_named_readonly
from gateway.sqlite_schema import SchemaTooNew
from tests.sqlite_files import build, query_plan, schema_of, user_version

# Exactly what the shadow store ran on every open before files had versions (version 1).
V1 = """
CREATE TABLE IF NOT EXISTS shadows (
    thing      TEXT NOT NULL,
    name       TEXT NOT NULL,       -- '' for the classic shadow
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    deleted_at REAL,                -- set: a tombstone that keeps the version
    document   TEXT,                -- {"state": ..., "metadata": ...}; NULL once deleted
    PRIMARY KEY (thing, name)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS shadow_history (
    thing      TEXT NOT NULL,
    name       TEXT NOT NULL,
    version    INTEGER NOT NULL,
    updated_at REAL NOT NULL,
    document   TEXT NOT NULL,
    PRIMARY KEY (thing, name, version)
) WITHOUT ROWID;
"""

DOC = '{"state":{"desired":{"on":%s}},"metadata":{"desired":{"on":{"timestamp":1700000000}}}}'
PURGE = "SELECT thing, name FROM shadows WHERE deleted_at IS NOT NULL AND deleted_at < ?"


def rows(now: float) -> str:
    """Live shadows with history, a tombstone within its 48 hours and one past them."""
    expired, recent = now - TOMBSTONE_SECONDS - 3600, now - 3600
    on, off = DOC % "true", DOC % "false"
    return f"""
INSERT INTO shadows VALUES ('lamp', '', 3, 1700000000.0, NULL, '{on}');
INSERT INTO shadows VALUES ('lamp', 'cfg', 1, 1700000000.0, NULL, '{off}');
INSERT INTO shadow_history VALUES ('lamp', '', 2, 1699999999.0, '{off}');
INSERT INTO shadow_history VALUES ('lamp', '', 3, 1700000000.0, '{on}');
INSERT INTO shadows VALUES ('old', '', 5, {expired}, {expired}, NULL);
INSERT INTO shadow_history VALUES ('old', '', 4, 1700000000.0, '{on}');
INSERT INTO shadow_history VALUES ('old', '', 5, 1700000000.0, '{off}');
INSERT INTO shadows VALUES ('recent', '', 7, {recent}, {recent}, NULL);
INSERT INTO shadow_history VALUES ('recent', '', 7, 1700000000.0, '{on}');
"""


def count(path, sql: str) -> int:
    db = sqlite3.connect(path)
    try:
        return db.execute(sql).fetchone()[0]
    finally:
        db.close()


def test_a_version_1_shadow_store_keeps_its_data_and_becomes_version_2(tmp_path):
    path = tmp_path / "shadows.sqlite3"
    build(path, V1, rows(time.time()))
    store = ShadowStore(path, history_depth=10).open()
    try:
        doc = store.run(lambda txn: ops.get(txn, "lamp"))
        assert (doc["version"], doc["state"]["desired"]) == (3, {"on": True})
        assert store.run(lambda txn: ops.list_named(txn, "lamp"))["results"] == ["cfg"]
        assert [v for v, _, _ in store.run(lambda txn: txn.history("lamp"))] == [2, 3]
        # The tombstone within its 48 hours still keeps its version for the next shadow.
        request = parse_update(b'{"state": {"reported": {"on": true}}}')
        store.run(lambda txn: ops.update(txn, "recent", "", request, Limits(), None))
        assert store.run(lambda txn: ops.get(txn, "recent"))["version"] == 8
    finally:
        store.close_sync()
    assert user_version(path) == 2


def test_tombstones_past_48_hours_are_purged_with_their_history_at_open(tmp_path):
    path = tmp_path / "shadows.sqlite3"
    build(path, V1, rows(time.time()))
    ShadowStore(path).open().close_sync()
    assert count(path, "SELECT count(*) FROM shadows WHERE thing = 'old'") == 0
    assert count(path, "SELECT count(*) FROM shadow_history WHERE thing = 'old'") == 0
    assert count(path, "SELECT count(*) FROM shadows WHERE thing = 'recent'") == 1
    assert count(path, "SELECT count(*) FROM shadow_history WHERE thing = 'lamp'") == 2
    plan = query_plan(path, PURGE, (time.time(),))
    assert "shadows_tombstones" in plan, plan  # found by the index, not a scan of documents


def test_a_new_shadow_store_is_version_2_with_the_schema_of_a_migrated_one(tmp_path):
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    build(old, V1, rows(time.time()))
    ShadowStore(old).open().close_sync()
    ShadowStore(new).open().close_sync()
    assert user_version(new) == 2
    assert schema_of(old) == schema_of(new)


def test_a_shadow_store_from_a_newer_lichen_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "shadows.sqlite3"
    before = build(path, V1, rows(time.time()), version=3, wal=False)
    message = (f"{path}: this shadow store was written by a newer Lichen (schema 3, this "
               "one knows up to 2): upgrade Lichen or restore a backup")
    with pytest.raises(SchemaTooNew) as err:
        ShadowStore(path).open()
    assert isinstance(err.value, UserError)
    assert str(err.value) == message
    with pytest.raises(SchemaTooNew, match="newer Lichen"):  # nor read behind a gateway
        list_named_readonly(path, "lamp")
    assert path.read_bytes() == before
