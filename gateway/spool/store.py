"""The spool's SQLite file: one row per message bound for the cloud, in arrival order.

Written through a group-commit thread (gateway.group_commit): inserts and deletes from the
loop are batched, and reads of the backlog run on the same thread after every write queued
before them, so a read never misses a message the loop already spooled.
"""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ..group_commit import GroupCommitWriter, open_wal
from ..mqtt.store import props_from_json, props_to_json
from ..sqlite_schema import Schema, stamp

if TYPE_CHECKING:
    from sqlite_utils import Database


def _create(db: Database) -> None:
    """The current schema (version 2), on a new file."""
    # seq is the rowid (ordered reads and range deletes); inserts are positional.
    db.table("spool").create(
        {"seq": int, "route": str, "topic": str, "payload": bytes, "qos": int,
         "properties": str, "expiry_at": float, "size": int, "spooled_at": float}, pk="seq",
        not_null={"route", "topic", "payload", "qos", "size", "spooled_at"})
    stamp(db, "created")


def _v2_meta(db: Database) -> None:
    """A `meta` table saying which Lichen created or upgraded the file, and when. (An index
    would only slow the inserts and deletes: every query goes by seq, the rowid.)"""
    stamp(db, "upgraded")


SCHEMA = Schema("spool", _create, (_v2_meta,))


class Entry:
    """One spooled message, as the uplink sends it (topic already rewritten for the cloud)."""

    __slots__ = ("seq", "route", "topic", "payload", "qos", "properties", "expiry_at",
                 "size", "spooled_at", "durable", "done")

    def __init__(self, seq: int, route: str, topic: str, payload: bytes, qos: int,
                 properties: dict, expiry_at: float | None, spooled_at: float,
                 durable: bool) -> None:
        self.seq = seq
        self.route = route
        self.topic = topic
        self.payload = payload
        self.qos = qos
        self.properties = properties
        self.expiry_at = expiry_at
        self.size = len(topic) + len(payload)
        self.spooled_at = spooled_at
        self.durable = durable       # has a row on disk
        self.done = False            # acknowledged by the cloud or dropped

    def __repr__(self) -> str:
        return f"Entry({self.seq}, {self.topic!r}, {len(self.payload)} bytes)"


@dataclass(frozen=True, slots=True)
class Totals:
    count: int
    bytes: int
    last_seq: int


_COLUMNS = 9
_CHUNKS = (256, 32, 4, 1)   # rows per INSERT statement: few distinct statements, all cached


def _insert_sql(rows: int) -> str:
    return "INSERT INTO spool VALUES " + ",".join(["(?,?,?,?,?,?,?,?,?)"] * rows)


_INSERT_SQL = {n: _insert_sql(n) for n in _CHUNKS}


def seq_ranges(seqs: list[int]) -> list[tuple[int, int]]:
    """Sorted, merged runs of consecutive numbers: acks mostly come in order."""
    ranges: list[tuple[int, int]] = []
    for seq in sorted(seqs):
        if ranges and seq <= ranges[-1][1] + 1:
            if seq > ranges[-1][1]:
                ranges[-1] = (ranges[-1][0], seq)
        else:
            ranges.append((seq, seq))
    return ranges


class SpoolDB:
    """Rows are gathered on the loop and handed to the writer once per loop turn (or
    before anyone waits for a commit) as multi-row INSERTs: each SQLite call releases and
    retakes the GIL, so one call per row would make the writer thread fight the event
    loop thousands of times a second."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_wal(self.path, sync, SCHEMA)
        self.writer = GroupCommitWriter(self._db, "lichen-spool")
        self._rows: list = []      # flattened columns of rows not yet handed over
        self._loop: asyncio.AbstractEventLoop | None = None

    def after_commit(self, fn: Callable[[], None]) -> None:
        self._hand_over()
        self.writer.after_commit(fn)

    async def flush(self) -> None:
        self._hand_over()
        await self.writer.flush()

    def totals(self) -> Totals:
        """What the file holds (call before start)."""
        count, size, last = self._db.execute(
            "SELECT count(*), coalesce(sum(size), 0), coalesce(max(seq), 0) FROM spool"
        ).fetchone()
        return Totals(count, size, last)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.writer.start(loop)

    def insert(self, e: Entry) -> None:
        rows = self._rows
        if not rows and self._loop is not None:
            self._loop.call_soon(self._hand_over)
        rows += (e.seq, e.route, e.topic, e.payload, e.qos, props_to_json(e.properties),
                 e.expiry_at, e.size, e.spooled_at)

    def _hand_over(self) -> None:
        rows = self._rows
        if not rows:
            return
        self._rows = []
        count = len(rows) // _COLUMNS
        start = 0
        for chunk in _CHUNKS:
            while count >= chunk:
                end = start + chunk * _COLUMNS
                self.writer.write(_INSERT_SQL[chunk], tuple(rows[start:end]))
                start = end
                count -= chunk

    def delete_many(self, seqs: list[int]) -> None:
        self._hand_over()  # a row must be inserted before it can be deleted
        self.writer.write_many("DELETE FROM spool WHERE seq BETWEEN ? AND ?",
                               seq_ranges(seqs))

    def load(self, after_seq: int, limit: int,
             done: Callable[[list[Entry] | Exception], None]) -> None:
        """The next `limit` messages after `after_seq`, once earlier writes are in."""
        def read(db: sqlite3.Connection) -> list[Entry]:
            rows = db.execute("SELECT seq, route, topic, payload, qos, properties, expiry_at, "
                              "spooled_at FROM spool WHERE seq > ? ORDER BY seq LIMIT ?",
                              (after_seq, limit)).fetchall()
            return [Entry(seq, route, topic, payload, qos, props_from_json(props), expiry,
                          at, True)
                    for seq, route, topic, payload, qos, props, expiry, at in rows]

        self._hand_over()
        self.writer.call(read, done)

    def close(self) -> None:
        self._hand_over()
        self.writer.close()
