"""kill -9 during a burst of shadow updates from several clients: after the restart every
version that was announced on /accepted is in the store with what it reported, and versions
never repeat or go back."""

from __future__ import annotations

import json
import sqlite3
import threading
from collections import defaultdict

import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import BrokerProcess
from tests.shadow.helpers import TIMEOUT, Peer

THING = "crash"
TOPIC = f"$aws/things/{THING}/shadow/update"
CLIENTS = 4
WINDOW = 5             # below the 10 in-flight requests a client may have
KILL_AFTER = 200       # accepted updates, all clients together


class Burster:
    """A client that keeps WINDOW updates in flight, each reporting its own next number."""

    def __init__(self, port: int, index: int, book: Book) -> None:
        self.name = f"c{index}"
        self.book = book
        self.seq = 0
        self.lock = threading.Lock()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=f"burster-{index}")
        self.subscribed = threading.Event()
        self.client.on_subscribe = lambda *_a: self.subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.client.subscribe([(f"{TOPIC}/accepted", 1), (f"{TOPIC}/rejected", 1)])
        assert self.subscribed.wait(TIMEOUT)

    def send(self) -> None:
        # called from the test thread and paho's: numbers must go out in order
        with self.lock:
            if self.book.stop.is_set():
                return
            self.seq += 1
            doc = {"state": {"reported": {self.name: self.seq}},
                   "clientToken": f"{self.name}-{self.seq}"}
            self.client.publish(TOPIC, json.dumps(doc), 1)

    def _on_message(self, _c, _u, msg: mqtt.MQTTMessage) -> None:
        doc = json.loads(msg.payload)
        owner, _, seq = doc.get("clientToken", "").partition("-")
        if owner != self.name:
            return
        if msg.topic.endswith("/accepted"):
            self.book.accepted(self.name, int(seq), doc["version"],
                               doc["state"]["reported"][self.name])
        else:
            self.book.rejected.append(doc)
        self.send()

    def close(self) -> None:
        self.client.loop_stop()
        self.client.disconnect()


class Book:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.by_client: dict[str, list[tuple[int, int]]] = defaultdict(list)  # (seq, version)
        self.rejected: list[dict] = []
        self.count = 0
        self.stop = threading.Event()
        self.enough = threading.Event()

    def accepted(self, client: str, seq: int, version: int, reported: int) -> None:
        assert reported == seq
        with self.lock:
            self.by_client[client].append((seq, version))
            self.count += 1
            if self.count >= KILL_AFTER:
                self.enough.set()


def test_kill_9_during_a_burst_keeps_every_accepted_version(tmp_path):
    gw = BrokerProcess(tmp_path / "state", tls=False,
                       config="[shadow]\nhistory_depth = 1000000\n").start()
    book = Book()
    bursters = [Burster(gw.port, i, book) for i in range(CLIENTS)]
    try:
        for b in bursters:
            for _ in range(WINDOW):
                b.send()
        assert book.enough.wait(30), f"only {book.count} updates accepted"
        gw.kill()  # mid-burst: every client still has updates in flight
        book.stop.set()
    finally:
        for b in bursters:
            b.close()
    assert not book.rejected
    with book.lock:
        announced = {c: list(v) for c, v in book.by_client.items()}
    versions = [v for pairs in announced.values() for _, v in pairs]
    assert len(versions) == len(set(versions)), "a version was announced twice"
    for pairs in announced.values():
        assert [s for s, _ in pairs] == sorted(s for s, _ in pairs)
        assert [v for _, v in pairs] == sorted(v for _, v in pairs)

    gw.start()
    peer = Peer(gw.port, "after-restart").connect()
    try:
        db = sqlite3.connect(f"file:{gw.state_dir / 'shadows.sqlite3'}?mode=ro", uri=True)
        stored = {v: json.loads(doc)["state"]["reported"] for v, doc in db.execute(
            "SELECT version, document FROM shadow_history WHERE thing = ? AND name = ''",
            (THING,))}
        current = db.execute("SELECT version FROM shadows WHERE thing = ?",
                             (THING,)).fetchone()[0]
        db.close()
        for client, pairs in announced.items():
            for seq, version in pairs:
                assert stored[version][client] == seq, (client, seq, version)
        assert current >= max(versions)
        assert sorted(stored) == list(range(1, current + 1))  # no gap, no repeat
        # the shadow goes on from where it was: no version is handed out twice
        peer.subscribe(f"{TOPIC}/accepted")
        peer.publish(TOPIC, {"state": {"reported": {"after": True}}, "clientToken": "after"})
        assert peer.until(f"{TOPIC}/accepted")[0]["version"] == current + 1
    finally:
        peer.close()
        gw.stop()
