"""The spool file's schema versions: a file from before versioning keeps its messages, in
order, and becomes version 2 (a `meta` table saying who upgraded it); a newer file is
refused with one line and left as it was."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.errors import UserError
from gateway.spool.store import Entry, SpoolDB, Totals
from gateway.sqlite_schema import SchemaTooNew
from tests.sqlite_files import build, schema_of, user_version

# Exactly what the spool ran on every open before files had versions (version 1).
V1 = """
CREATE TABLE IF NOT EXISTS spool (
    seq INTEGER PRIMARY KEY, route TEXT NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, properties TEXT, expiry_at REAL, size INTEGER NOT NULL,
    spooled_at REAL NOT NULL);
"""

ROWS = """
INSERT INTO spool VALUES (4, 'telemetry', 'dt/gw/t/1', X'6f6e65', 1, NULL, NULL, 12,
                          1700000000.0);
INSERT INTO spool VALUES (9, 'telemetry', 'dt/gw/t/2', X'74776f', 1,
                          '{"content_type": "text/plain"}', 1900000000.0, 12, 1700000001.0);
"""


async def load(db: SpoolDB, after: int) -> list[Entry]:
    loop = asyncio.get_running_loop()
    done: asyncio.Future = loop.create_future()
    db.load(after, 100, done.set_result)
    result = await done
    assert not isinstance(result, Exception), result
    return result


def test_a_version_1_spool_keeps_its_messages_and_becomes_version_2(tmp_path):
    path = tmp_path / "spool.db"
    build(path, V1, ROWS)

    async def main() -> None:
        db = SpoolDB(path)
        assert db.totals() == Totals(2, 24, 9)
        db.start(asyncio.get_running_loop())
        got = await load(db, 0)
        assert [(e.seq, e.topic, e.payload, e.properties, e.expiry_at) for e in got] == \
            [(4, "dt/gw/t/1", b"one", {}, None),
             (9, "dt/gw/t/2", b"two", {"content_type": "text/plain"}, 1900000000.0)]
        # The positional inserts and range deletes still fit the table.
        db.insert(Entry(10, "telemetry", "dt/gw/t/3", b"three", 1, {}, None, 1700000002.0,
                        False))
        db.delete_many([4])
        await db.flush()
        assert [e.seq for e in await load(db, 0)] == [9, 10]
        db.close()

    asyncio.run(main())
    assert user_version(path) == 2
    conn = sqlite3.connect(path)
    assert {k for (k,) in conn.execute("SELECT key FROM meta")} == {"upgraded_by",
                                                                   "upgraded_at"}
    conn.close()


def test_a_new_spool_is_version_2_with_the_schema_of_a_migrated_one(tmp_path):
    old, new = tmp_path / "old.db", tmp_path / "new.db"
    build(old, V1, ROWS)
    SpoolDB(old).close()
    SpoolDB(new).close()
    assert user_version(new) == 2
    assert schema_of(old) == schema_of(new)


def test_a_spool_from_a_newer_lichen_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "spool.db"
    before = build(path, V1, ROWS, version=3, wal=False)
    with pytest.raises(SchemaTooNew) as err:
        SpoolDB(path)
    assert isinstance(err.value, UserError)
    assert str(err.value) == (f"{path}: this spool was written by a newer Lichen (schema 3, "
                              "this one knows up to 2): upgrade Lichen or restore a backup")
    assert path.read_bytes() == before
