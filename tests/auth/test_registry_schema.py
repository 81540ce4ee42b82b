"""The device registry's schema versions: a file from before versioning opens with its data
and becomes version 2 (certificates indexed on (thing, created)); a newer file is refused
with one line and left as it was."""

from __future__ import annotations

import pytest

from gateway.auth.registry import Registry
from gateway.errors import UserError
from gateway.sqlite_schema import SchemaTooNew
from tests.sqlite_files import build, query_plan, schema_of, user_version

# Exactly what the registry ran on every open before files had versions (version 1).
V1 = """
CREATE TABLE IF NOT EXISTS things (
    name TEXT PRIMARY KEY, attributes TEXT NOT NULL DEFAULT '{}',
    policies TEXT NOT NULL DEFAULT '[]', created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS certificates (
    id TEXT PRIMARY KEY, thing TEXT NOT NULL, serial TEXT NOT NULL, pem TEXT NOT NULL,
    status TEXT NOT NULL, source TEXT NOT NULL, not_after REAL NOT NULL,
    created REAL NOT NULL, revoked_at REAL);
CREATE INDEX IF NOT EXISTS certificates_thing ON certificates (thing);
CREATE TABLE IF NOT EXISTS cas (
    id TEXT PRIMARY KEY, name TEXT NOT NULL, pem TEXT NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS policies (
    name TEXT PRIMARY KEY, document TEXT NOT NULL, created REAL NOT NULL);
"""

ROWS = """
INSERT INTO things VALUES ('lamp', '{"room": "hall"}', '["device"]', 1700000000.0);
INSERT INTO things (name, created) VALUES ('bare', 1700000002.0);
INSERT INTO policies VALUES ('device', '{"Version": "2012-10-17", "Statement": []}',
                             1700000000.0);
INSERT INTO certificates VALUES ('aa11', 'lamp', '1f', 'PEM-A', 'active', 'issued',
                                 1800000000.0, 1700000005.0, NULL);
INSERT INTO certificates VALUES ('bb22', 'lamp', '20', 'PEM-B', 'revoked', 'registered',
                                 1800000000.0, 1700000001.0, 1700000100.0);
INSERT INTO cas VALUES ('cc33', 'factory CA', 'PEM-CA', 1700000000.0);
"""

BY_THING = ("SELECT id, thing, serial, status, source, not_after, created, revoked_at, pem "
            "FROM certificates WHERE thing = ? ORDER BY created")


def test_a_version_1_registry_keeps_its_data_and_becomes_version_2(tmp_path):
    path = tmp_path / "registry.sqlite3"
    build(path, V1, ROWS)
    reg = Registry(path)
    try:
        lamp = reg.get_thing("lamp")
        assert (lamp.attributes, lamp.policies, lamp.created) == \
            ({"room": "hall"}, ["device"], 1700000000.0)
        assert reg.get_thing("bare").attributes == {}
        certs = reg.certificates("lamp")
        assert [(c.id, c.status, c.revoked_at) for c in certs] == \
            [("bb22", "revoked", 1700000100.0), ("aa11", "active", None)]
        assert reg.cas() == [("cc33", "factory CA", "PEM-CA")]
        assert reg.policies() == {"device": '{"Version": "2012-10-17", "Statement": []}'}
        reg.add_thing("new", {"k": "v"}, ["device"])  # and it takes writes as before
        assert reg.revoke("lamp") == 1
    finally:
        reg.close()
    assert user_version(path) == 2


def test_a_migrated_registry_has_the_schema_of_a_new_one(tmp_path):
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    build(old, V1, ROWS)
    Registry(old).close()
    Registry(new).close()
    assert user_version(new) == 2
    assert schema_of(old) == schema_of(new)


def test_version_2_lists_a_things_certificates_from_the_index_without_a_sort(tmp_path):
    path = tmp_path / "registry.sqlite3"
    build(path, V1, ROWS)
    assert "TEMP B-TREE" in query_plan(path, BY_THING, ("lamp",))  # version 1 sorted
    Registry(path).close()
    plan = query_plan(path, BY_THING, ("lamp",))
    assert "certificates_thing_created" in plan and "TEMP B-TREE" not in plan, plan


def test_a_registry_from_a_newer_lichen_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "registry.sqlite3"
    before = build(path, V1, ROWS, version=3, wal=False)
    with pytest.raises(SchemaTooNew) as err:
        Registry(path)
    assert isinstance(err.value, UserError)
    assert str(err.value) == (f"{path}: this device registry was written by a newer Lichen "
                              "(schema 3, this one knows up to 2): upgrade Lichen or restore "
                              "a backup")
    assert path.read_bytes() == before
