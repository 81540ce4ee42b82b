"""The offline queue on its own: a real SQLite file in WAL mode, bounds, policies, order,
reopening, and one process at a time."""

import sqlite3
import subprocess
import sys

import pytest

from device_sdk import OfflineQueue, QueueError, QueueFull, QueueLocked
from tests.conftest import ROOT


def topics(q: OfflineQueue) -> list[str]:
    return [m.topic for m in q.peek(limit=1000)]


def test_messages_come_out_in_order_and_leave_only_when_removed(tmp_path):
    with OfflineQueue(tmp_path / "q.sqlite3") as q:
        ids = [q.put(f"t/{i}", b"x" * i).id for i in range(5)]
        assert ids == sorted(ids) and len(set(ids)) == 5
        assert len(q) == 5
        assert q.size_bytes == sum(len(f"t/{i}") + i for i in range(5))
        first = q.peek(limit=2)
        assert [m.topic for m in first] == ["t/0", "t/1"]
        assert [m.topic for m in q.peek(after=first[-1].id, limit=10)] == ["t/2", "t/3", "t/4"]
        assert q.remove(ids[1]) is True
        assert q.remove(ids[1]) is False
        assert topics(q) == ["t/0", "t/2", "t/3", "t/4"]
        msg = q.peek(limit=1)[0]
        assert (msg.payload, msg.qos, msg.retain) == (b"", 1, False)


def test_the_file_is_wal_and_survives_reopening(tmp_path):
    path = tmp_path / "q.sqlite3"
    with OfflineQueue(path) as q:
        q.put("a", b"1")
        q.put("b", b"2", retain=True)
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    with OfflineQueue(path) as q:
        assert len(q) == 2 and q.size_bytes == 4
        assert [(m.topic, m.payload, m.retain) for m in q.peek()] == \
            [("a", b"1", False), ("b", b"2", True)]
        newer = q.put("c", b"3").id
        assert newer > max(m.id for m in q.peek(limit=2))   # ids are never reused


def test_a_killed_writer_loses_nothing_it_had_put(tmp_path):
    path = tmp_path / "q.sqlite3"
    code = ("import os, sys; from device_sdk import OfflineQueue\n"
            f"q = OfflineQueue({str(path)!r})\n"
            "for i in range(50): q.put(f't/{i}', b'p')\n"
            "os._exit(0)\n")   # no close, no clean shutdown
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=30)
    with OfflineQueue(path) as q:
        assert topics(q) == [f"t/{i}" for i in range(50)]


def test_reject_policy_raises_queue_full_with_the_bound(tmp_path):
    with OfflineQueue(tmp_path / "q.sqlite3", max_messages=3) as q:
        for i in range(3):
            q.put(f"t/{i}", b"")
        with pytest.raises(QueueFull, match="max_messages=3") as exc:
            q.put("t/3", b"")
        assert "drop-oldest" in str(exc.value)   # says what to do
        assert topics(q) == ["t/0", "t/1", "t/2"]
    with OfflineQueue(tmp_path / "b.sqlite3", max_bytes=10) as q:
        q.put("ab", b"123456")
        with pytest.raises(QueueFull, match="max_bytes=10"):
            q.put("ab", b"123")
        assert len(q) == 1 and q.size_bytes == 8


def test_drop_oldest_policy_evicts_to_make_room(tmp_path):
    with OfflineQueue(tmp_path / "q.sqlite3", max_messages=3, when_full="drop-oldest") as q:
        ids = [q.put(f"t/{i}", b"").id for i in range(3)]
        result = q.put("t/3", b"")
        assert result.evicted == [ids[0]]
        assert topics(q) == ["t/1", "t/2", "t/3"]
        assert q.evicted_total == 1
    with OfflineQueue(tmp_path / "b.sqlite3", max_bytes=20, when_full="drop-oldest") as q:
        for i in range(4):
            q.put(f"t{i}", b"12")          # 4 bytes each
        assert q.put("big", b"x" * 13).evicted != []   # 16 bytes: needs three to go
        assert topics(q) == ["t3", "big"] and q.size_bytes == 20


def test_a_message_larger_than_the_queue_is_refused_whatever_the_policy(tmp_path):
    with OfflineQueue(tmp_path / "q.sqlite3", max_bytes=8, when_full="drop-oldest") as q:
        q.put("a", b"1")
        with pytest.raises(QueueFull, match="cannot fit"):
            q.put("topic", b"123456789")
        assert topics(q) == ["a"]


def test_one_process_at_a_time(tmp_path):
    path = tmp_path / "q.sqlite3"
    with OfflineQueue(path):
        with pytest.raises(QueueLocked, match="in use by another process"):
            OfflineQueue(path)
        code = ("from device_sdk import OfflineQueue, QueueLocked\n"
                f"try:\n    OfflineQueue({str(path)!r})\nexcept QueueLocked:\n    print('locked')")
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                             text=True, timeout=30)
        assert out.stdout.strip() == "locked", out.stderr
    with OfflineQueue(path):   # free again once closed
        pass


def test_a_file_that_is_not_a_queue_is_a_clear_error(tmp_path):
    path = tmp_path / "q.sqlite3"
    path.write_bytes(b"this is not sqlite" * 100)
    for _ in range(2):   # the second time too: the failed open let go of its lock
        with pytest.raises(QueueError, match="cannot open the offline queue") as exc:
            OfflineQueue(path)
        assert not isinstance(exc.value, QueueLocked)


def test_a_closed_queue_refuses_use(tmp_path):
    q = OfflineQueue(tmp_path / "q.sqlite3")
    q.close()
    q.close()
    with pytest.raises(QueueError, match="closed"):
        q.put("a", b"")


def test_memory_queue_works_the_same():
    with OfflineQueue(max_messages=2) as q:
        q.put("a", b"")
        q.put("b", b"")
        with pytest.raises(QueueFull):
            q.put("c", b"")


@pytest.mark.parametrize("kwargs", [{"max_messages": 0}, {"max_bytes": 0},
                                    {"when_full": "drop-newest"}, {"synchronous": "off"}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(ValueError):
        OfflineQueue(**kwargs)
