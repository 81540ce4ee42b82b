"""Durable broker state in SQLite: retained messages and persistent sessions.

Writes are queued from the event loop and committed by one writer thread in batches (group
commit). `after_commit(fn)` runs `fn` on the loop once everything queued so far is on disk,
which is how the broker acknowledges a publish only after it is durable.
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from ..group_commit import GroupCommitWriter, open_wal
from ..sqlite_schema import Schema, stamp
from .message import Message

if TYPE_CHECKING:
    from sqlite_utils import Database

log = logging.getLogger("lichen.mqtt.store")


def _create(db: Database) -> None:
    """The current schema (version 2), on a new file."""
    db.table("retained").create(
        {"topic": str, "payload": bytes, "qos": int, "properties": str, "expiry_at": float},
        pk="topic", not_null={"payload", "qos"})
    db.table("sessions").create(
        {"client_id": str, "expiry_interval": int, "disconnected_at": float,
         "subscriptions": str}, pk="client_id", not_null={"expiry_interval", "subscriptions"})
    # Column order matters: the writes below insert positionally.
    db.table("session_messages").create(
        {"client_id": str, "seq": int, "topic": str, "payload": bytes, "qos": int,
         "retain": int, "properties": str, "expiry_at": float, "sub_ids": str,
         "packet_id": int, "state": int}, pk=("client_id", "seq"),
        not_null={"client_id", "seq", "topic", "payload", "qos", "retain", "state"},
        defaults={"state": 0})
    stamp(db, "created")


def _v2_meta(db: Database) -> None:
    """A `meta` table saying which Lichen created or upgraded the file, and when (the
    queries need nothing new: every one goes by primary key or reads everything)."""
    stamp(db, "upgraded")


SCHEMA = Schema("broker store", _create, (_v2_meta,))

# session_messages.state
QUEUED, AWAITING_PUBCOMP = 0, 2


def props_to_json(props: dict) -> str | None:
    if not props:
        return None
    out = dict(props)
    if "correlation_data" in out:
        out["correlation_data"] = base64.b64encode(out["correlation_data"]).decode()
    return json.dumps(out)


def props_from_json(text: str | None) -> dict:
    if not text:
        return {}
    props = json.loads(text)
    if "correlation_data" in props:
        props["correlation_data"] = base64.b64decode(props["correlation_data"])
    if "user_property" in props:
        props["user_property"] = [tuple(p) for p in props["user_property"]]
    return props


@dataclass
class StoredMessage:
    seq: int
    message: Message
    qos: int
    retain: bool
    sub_ids: tuple[int, ...]
    packet_id: int | None
    state: int


@dataclass
class StoredSession:
    client_id: str
    expiry_interval: int
    disconnected_at: float | None
    subscriptions: dict[str, dict]
    messages: list[StoredMessage] = field(default_factory=list)


class BrokerStore:
    """SQLite file of retained messages and sessions, written by a group-commit thread."""

    def __init__(self, path: Path, sync: str = "normal") -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = open_wal(self.path, sync, SCHEMA)
        self._writer = GroupCommitWriter(self._db, "lichen-store")
        self._queue = self._writer.write
        self.after_commit = self._writer.after_commit
        self.flush = self._writer.flush

    @property
    def commits(self) -> int:
        return self._writer.commits

    @property
    def failed(self) -> BaseException | None:
        return self._writer.failed

    # ---------------------------------------------------------------- loading (at start-up)

    def load_retained(self) -> list[Message]:
        now = time.time()
        out = []
        for topic, payload, qos, props, expiry_at in self._db.execute(
                "SELECT topic, payload, qos, properties, expiry_at FROM retained"):
            if expiry_at is not None and expiry_at <= now:
                continue
            out.append(Message(topic, bytes(payload), qos, True, props_from_json(props),
                               expiry_at))
        return out

    def load_sessions(self) -> list[StoredSession]:
        sessions: dict[str, StoredSession] = {}
        for client_id, expiry, disc, subs in self._db.execute(
                "SELECT client_id, expiry_interval, disconnected_at, subscriptions FROM sessions"):
            sessions[client_id] = StoredSession(client_id, expiry, disc, json.loads(subs))
        for row in self._db.execute(
                "SELECT client_id, seq, topic, payload, qos, retain, properties, expiry_at, "
                "sub_ids, packet_id, state FROM session_messages ORDER BY client_id, seq"):
            cid, seq, topic, payload, qos, retain, props, expiry_at, sub_ids, pid, state = row
            s = sessions.get(cid)
            if s is None:
                continue
            msg = Message(topic, bytes(payload), qos, bool(retain), props_from_json(props),
                          expiry_at)
            ids = tuple(json.loads(sub_ids)) if sub_ids else ()
            s.messages.append(StoredMessage(seq, msg, qos, bool(retain), ids, pid, state))
        return list(sessions.values())

    # ---------------------------------------------------------------- writes (from the loop)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._writer.start(loop)

    def put_retained(self, msg: Message) -> None:
        self._queue("INSERT OR REPLACE INTO retained VALUES (?, ?, ?, ?, ?)",
                    (msg.topic, msg.payload, msg.qos, props_to_json(msg.properties),
                     msg.expiry_at))

    def delete_retained(self, topic: str) -> None:
        self._queue("DELETE FROM retained WHERE topic = ?", (topic,))

    def save_session(self, client_id: str, expiry_interval: int, disconnected_at: float | None,
                     subscriptions: dict[str, dict]) -> None:
        self._queue("INSERT OR REPLACE INTO sessions VALUES (?, ?, ?, ?)",
                    (client_id, expiry_interval, disconnected_at, json.dumps(subscriptions)))

    def delete_session(self, client_id: str) -> None:
        self._queue("DELETE FROM sessions WHERE client_id = ?", (client_id,))
        self._queue("DELETE FROM session_messages WHERE client_id = ?", (client_id,))

    def add_message(self, client_id: str, seq: int, msg: Message, qos: int, retain: bool,
                    sub_ids: tuple[int, ...]) -> None:
        self._queue("INSERT OR REPLACE INTO session_messages VALUES "
                    "(?, ?, ?, ?, ?, ?, ?, ?, ?, NULL, 0)",
                    (client_id, seq, msg.topic, msg.payload, qos, int(retain),
                     props_to_json(msg.properties), msg.expiry_at,
                     json.dumps(sub_ids) if sub_ids else None))

    def set_message_state(self, client_id: str, seq: int, packet_id: int, state: int) -> None:
        self._queue("UPDATE session_messages SET packet_id = ?, state = ? "
                    "WHERE client_id = ? AND seq = ?", (packet_id, state, client_id, seq))

    def delete_message(self, client_id: str, seq: int) -> None:
        self._queue("DELETE FROM session_messages WHERE client_id = ? AND seq = ?",
                    (client_id, seq))

    def close(self) -> None:
        self._writer.close()
