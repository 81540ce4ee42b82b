"""The spool on a real SQLite file: order, paging the backlog through a small memory window,
resends, bounds and their policies, expiry, and what survives reopening the file."""

import asyncio
import time
from pathlib import Path

from gateway.config import SpoolSettings
from gateway.mqtt.durability import REFUSED
from gateway.spool.queue import Spool
from gateway.spool.store import SpoolDB


def make(path: Path, **kw) -> Spool:
    return Spool(SpoolSettings(**kw), SpoolDB(path))


async def settle(spool: Spool, turns: int = 50) -> None:
    """Let the writer thread answer reads (bounded)."""
    await spool.db.flush()
    for _ in range(turns):
        await asyncio.sleep(0.01)
        if not spool._loading:
            return


async def drain(spool: Spool, limit: int = 100_000) -> list:
    """Take and acknowledge everything, in order, as an always-up cloud would."""
    out = []
    for _ in range(limit):
        batch = spool.take(50)
        if not batch:
            await settle(spool)
            if not spool.has_unsent:
                return out
            continue
        for e in batch:
            out.append((e.topic, e.payload))
            spool.ack(e.seq)
    raise AssertionError("spool did not drain")


def offer(spool: Spool, topic: str, payload: bytes, qos: int = 1, expiry_at=None):
    return spool.offer("r", topic, payload, 1, {}, expiry_at, qos)


def test_order_kept_across_the_disk_backlog(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", memory_window=100)
        spool.open(asyncio.get_running_loop())
        sent = [(f"t/{i % 7}", str(i).encode()) for i in range(1000)]
        for topic, payload in sent:
            wait = offer(spool, topic, payload)  # the ack waits for the spool's commit
            assert wait is spool.committed and wait.sources == [spool.db]
        assert len(spool._queue) == 100 and spool._disk_backlog
        got = await drain(spool)
        assert got == sent
        assert spool.count == 0 and spool.bytes == 0
        await spool.close()

    asyncio.run(main())


def test_unacknowledged_survive_reopen_and_come_first(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", memory_window=100)
        spool.open(asyncio.get_running_loop())
        for i in range(300):
            offer(spool, "t", str(i).encode())
        taken = spool.take(10)
        for e in taken[:5]:
            spool.ack(e.seq)        # 0-4 acknowledged; 5-9 in flight when we "crash"
        await spool.close()

        again = make(tmp_path / "s.db", memory_window=100)
        again.open(asyncio.get_running_loop())
        assert again.count == 295
        await settle(again)
        got = await drain(again)
        assert [int(p) for _, p in got] == list(range(5, 300))
        await again.close()

    asyncio.run(main())


def test_failed_sends_go_first_again_in_order(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db")
        spool.open(asyncio.get_running_loop())
        for i in range(10):
            offer(spool, "t", str(i).encode())
        first = spool.take(6)
        spool.ack(first[1].seq)
        assert spool.retry([first[4].seq, first[2].seq]) == 2
        # the link dropped: the rest fails back, in any order, and merges with the above
        assert spool.retry([first[5].seq, first[0].seq, first[3].seq]) == 3
        assert spool.retry([first[0].seq]) == 0     # not in flight any more
        order = [int(e.payload) for e in spool.take(100)]
        assert order == [0, 2, 3, 4, 5, 6, 7, 8, 9]
        # a late ack from the old connection for a resent message is not lost or doubled
        spool.ack(first[0].seq)
        spool.ack(first[0].seq)
        assert spool.count == 8
        await spool.close()

    asyncio.run(main())


def test_oldest_waiting_message(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db")
        spool.open(asyncio.get_running_loop())
        assert spool.oldest_spooled_at() is None
        for i in range(4):
            offer(spool, "t", str(i).encode())
        at = [e.spooled_at for e in spool._queue]
        taken = spool.take(2)
        assert spool.oldest_spooled_at() == at[0]     # in flight counts: not acknowledged
        spool.ack(taken[0].seq)
        assert spool.oldest_spooled_at() == at[1]
        spool.retry([taken[1].seq])
        assert spool.oldest_spooled_at() == at[1]     # back in the queue, still the oldest
        for e in spool.take(10):
            spool.ack(e.seq)
        assert spool.oldest_spooled_at() is None
        await spool.close()

    asyncio.run(main())


def test_full_refuses_new_messages(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", max_messages=5)
        spool.open(asyncio.get_running_loop())
        for _ in range(5):
            assert offer(spool, "t", b"x") is not REFUSED
        assert offer(spool, "t", b"late") is REFUSED
        assert spool.stats.refused_full == 1 and spool.count == 5
        spool.ack(spool.take(1)[0].seq)
        assert offer(spool, "t", b"room again") is not REFUSED
        await spool.close()

    asyncio.run(main())


def test_full_by_bytes_drops_oldest(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", max_bytes=1024, when_full="drop-oldest")
        spool.open(asyncio.get_running_loop())
        for i in range(30):
            assert offer(spool, "t", f"{i:02d}".encode() * 50) is not REFUSED  # 101 bytes
        assert spool.bytes <= 1024 and spool.count == 10
        assert spool.stats.dropped_oldest == 20
        got = await drain(spool)
        assert [int(p[:2]) for _, p in got] == list(range(20, 30))
        await spool.close()
        reopened = make(tmp_path / "s.db")
        assert reopened.db.totals().count == 0   # dropped rows are gone from disk too
        reopened.db.close()

    asyncio.run(main())


def test_expired_messages_are_not_sent(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db")
        spool.open(asyncio.get_running_loop())
        offer(spool, "t", b"stale", expiry_at=time.time() - 1)
        offer(spool, "t", b"fresh", expiry_at=time.time() + 60)
        assert [e.payload for e in spool.take(10)] == [b"fresh"]
        assert spool.stats.dropped_expired == 1
        await spool.close()

    asyncio.run(main())


def test_qos0_in_memory_only(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", memory_window=100)
        spool.open(asyncio.get_running_loop())
        for i in range(150):
            assert offer(spool, "t", str(i).encode(), qos=0) is None  # nothing to wait for
        assert spool.stats.dropped_qos0 == 50   # past the memory window
        await spool.close()
        reopened = make(tmp_path / "s.db")
        assert reopened.db.totals().count == 0  # never written
        reopened.db.close()

        disk = make(tmp_path / "d.db", qos0="disk")
        disk.open(asyncio.get_running_loop())
        offer(disk, "t", b"kept", qos=0)
        await disk.close()
        reopened = make(tmp_path / "d.db")
        assert reopened.db.totals().count == 1
        reopened.db.close()

    asyncio.run(main())


def test_acknowledged_runs_are_deleted_as_ranges():
    from gateway.spool.store import seq_ranges

    assert seq_ranges([5, 3, 4, 9, 10, 12, 4]) == [(3, 5), (9, 10), (12, 12)]
    assert seq_ranges([]) == []


def test_many_rows_in_one_turn_all_land(tmp_path):
    async def main():
        spool = make(tmp_path / "s.db", memory_window=100)
        spool.open(asyncio.get_running_loop())
        for i in range(1234):    # 256 + 32 + 4 + 1-row statements, in one loop turn
            offer(spool, "t", str(i).encode())
        await spool.db.flush()
        assert spool.db.totals().count == 1234
        got = await drain(spool)
        assert [int(p) for _, p in got] == list(range(1234))
        await spool.close()

    asyncio.run(main())
