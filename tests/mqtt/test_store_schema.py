"""The broker store's schema versions: a file from before versioning keeps its retained
messages and sessions and becomes version 2 (a `meta` table saying who upgraded it); a
newer file is refused with one line and left as it was."""

from __future__ import annotations

import asyncio
import sqlite3

import pytest

from gateway.errors import UserError
from gateway.mqtt.message import Message
from gateway.mqtt.store import AWAITING_PUBCOMP, QUEUED, BrokerStore
from gateway.sqlite_schema import SchemaTooNew
from tests.sqlite_files import build, schema_of, user_version

# Exactly what the broker store ran on every open before files had versions (version 1).
V1 = """
CREATE TABLE IF NOT EXISTS retained (
    topic TEXT PRIMARY KEY, payload BLOB NOT NULL, qos INTEGER NOT NULL,
    properties TEXT, expiry_at REAL);
CREATE TABLE IF NOT EXISTS sessions (
    client_id TEXT PRIMARY KEY, expiry_interval INTEGER NOT NULL,
    disconnected_at REAL, subscriptions TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS session_messages (
    client_id TEXT NOT NULL, seq INTEGER NOT NULL, topic TEXT NOT NULL, payload BLOB NOT NULL,
    qos INTEGER NOT NULL, retain INTEGER NOT NULL, properties TEXT, expiry_at REAL,
    sub_ids TEXT, packet_id INTEGER, state INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (client_id, seq));
"""

ROWS = """
INSERT INTO retained VALUES ('lights/hall', X'6f6e', 1, '{"content_type": "text/plain"}', NULL);
INSERT INTO retained VALUES ('gone', X'00', 0, NULL, 1.0);
INSERT INTO sessions VALUES ('dev1', 3600, 1700000000.0, '{"cmd/#": {"qos": 1}}');
INSERT INTO session_messages VALUES ('dev1', 1, 'cmd/a', X'6869', 1, 0, NULL, NULL, '[3]',
                                     NULL, 0);
INSERT INTO session_messages VALUES ('dev1', 2, 'cmd/b', X'01', 2, 1, NULL, NULL, NULL, 7, 2);
"""


def meta(path) -> dict[str, str]:
    db = sqlite3.connect(path)
    try:
        return dict(db.execute("SELECT key, value FROM meta"))
    finally:
        db.close()


def test_a_version_1_broker_store_keeps_its_data_and_becomes_version_2(tmp_path):
    path = tmp_path / "broker.sqlite3"
    build(path, V1, ROWS)
    store = BrokerStore(path)
    try:
        (hall,) = store.load_retained()  # the expired one is skipped, as before
        assert (hall.topic, hall.payload, hall.qos, hall.properties) == \
            ("lights/hall", b"on", 1, {"content_type": "text/plain"})
        (dev1,) = store.load_sessions()
        assert (dev1.client_id, dev1.expiry_interval, dev1.subscriptions) == \
            ("dev1", 3600, {"cmd/#": {"qos": 1}})
        assert [(m.seq, m.message.payload, m.qos, m.retain, m.sub_ids, m.packet_id, m.state)
                for m in dev1.messages] == [(1, b"hi", 1, False, (3,), None, QUEUED),
                                            (2, b"\x01", 2, True, (), 7, AWAITING_PUBCOMP)]

        async def write() -> None:  # the positional inserts still fit the table
            store.start(asyncio.get_running_loop())
            store.put_retained(Message("lights/porch", b"off", 1, True))
            store.add_message("dev1", 3, Message("cmd/c", b"x", 1), 1, False, ())
            await store.flush()

        asyncio.run(write())
        assert store.failed is None
    finally:
        store.close()
    assert user_version(path) == 2
    upgraded = meta(path)
    assert set(upgraded) == {"upgraded_by", "upgraded_at"}  # when it was created is unknown
    assert upgraded["upgraded_by"].startswith("lichen ")
    again = BrokerStore(path)
    try:
        assert {m.topic for m in again.load_retained()} == {"lights/hall", "lights/porch"}
        assert [m.seq for m in again.load_sessions()[0].messages] == [1, 2, 3]
    finally:
        again.close()


def test_a_new_broker_store_is_version_2_with_the_schema_of_a_migrated_one(tmp_path):
    old, new = tmp_path / "old.sqlite3", tmp_path / "new.sqlite3"
    build(old, V1, ROWS)
    BrokerStore(old).close()
    BrokerStore(new).close()
    assert user_version(new) == 2
    assert set(meta(new)) == {"created_by", "created_at"}
    assert schema_of(old) == schema_of(new)


def test_a_broker_store_from_a_newer_lichen_is_refused_and_left_as_it_was(tmp_path):
    path = tmp_path / "broker.sqlite3"
    before = build(path, V1, ROWS, version=3, wal=False)
    with pytest.raises(SchemaTooNew) as err:
        BrokerStore(path)
    assert isinstance(err.value, UserError)
    assert str(err.value) == (f"{path}: this broker store was written by a newer Lichen "
                              "(schema 3, this one knows up to 2): upgrade Lichen or restore "
                              "a backup")
    assert path.read_bytes() == before
