"""Per-client session state: subscriptions, the outbound QoS 1/2 window and queue, inbound
QoS 2 packet ids, will and expiry. Pure data and bookkeeping; the broker does the I/O."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass

from .message import Message

NEVER_EXPIRES = 0xFFFFFFFF


@dataclass(slots=True)
class SubOptions:
    """One subscription of one session, as stored in the trie."""

    qos: int
    no_local: bool = False
    retain_as_published: bool = False
    retain_handling: int = 0
    sub_id: int | None = None

    def to_json(self) -> dict:
        return {"qos": self.qos, "nl": self.no_local, "rap": self.retain_as_published,
                "rh": self.retain_handling, "id": self.sub_id}

    @classmethod
    def from_json(cls, d: dict) -> SubOptions:
        return cls(d["qos"], d["nl"], d["rap"], d["rh"], d["id"])


class Outgoing:
    """A QoS 1/2 delivery to this session: queued, then in flight under a packet id."""

    __slots__ = ("message", "qos", "retain", "sub_ids", "packet_id", "awaiting_pubcomp", "seq",
                 "sent")

    def __init__(self, message: Message, qos: int, retain: bool, sub_ids: tuple[int, ...],
                 seq: int | None) -> None:
        self.message = message
        self.qos = qos
        self.retain = retain
        self.sub_ids = sub_ids
        self.packet_id: int | None = None
        self.awaiting_pubcomp = False
        self.seq = seq            # row in the store, None when the session is not persistent
        self.sent = False         # sent at least once: resend with DUP


class Session:
    """State that outlives a connection when the session is persistent."""

    def __init__(self, client_id: str, max_queued: int) -> None:
        self.client_id = client_id
        self.conn = None                       # the live Connection, or None when offline
        self.info = None                       # ClientInfo of the last connection
        self.perms = None                      # its Permissions; None = unrestricted
        self.stored = False                    # has a row in the store
        self.expiry_interval = 0               # seconds after disconnect; NEVER_EXPIRES
        self.disconnected_at: float | None = None
        self.subscriptions: dict[str, SubOptions] = {}    # full filter (incl. $share/...)
        self.inflight: dict[int, Outgoing] = {}            # packet id -> delivery, in order
        self.queue: deque[Outgoing] = deque()
        self.max_queued = max_queued
        self.awaiting_pubrel: set[int] = set()             # inbound QoS 2 packet ids
        self.will = None                                   # pending delayed will (Message)
        self.will_due: float | None = None
        self._next_packet_id = 1
        self._next_seq = 1
        self.dropped = 0

    @property
    def persistent(self) -> bool:
        return self.expiry_interval > 0

    def next_seq(self) -> int:
        seq = self._next_seq
        self._next_seq += 1
        return seq

    def note_seq(self, seq: int) -> None:
        if seq >= self._next_seq:
            self._next_seq = seq + 1

    def allocate_packet_id(self) -> int:
        """A packet id not in flight. Caller guarantees the window is below 65,535."""
        pid = self._next_packet_id
        inflight = self.inflight
        while pid in inflight:
            pid = pid + 1 if pid < 65535 else 1
        self._next_packet_id = pid + 1 if pid < 65535 else 1
        return pid

    def enqueue(self, item: Outgoing, force: bool = False) -> bool:
        """Queue a delivery for later; False (and counted) when the queue is full.
        `force` is for retained messages sent on subscribe: the retained store's own bound
        (max_retained_messages) limits those, not the live-traffic queue."""
        if len(self.queue) >= self.max_queued and not force:
            self.dropped += 1
            return False
        self.queue.append(item)
        return True

    def subscriptions_json(self) -> dict[str, dict]:
        return {f: o.to_json() for f, o in self.subscriptions.items()}
