"""The shadow store: real SQLite files, its writer thread, batched commits, history and the
48-hour tombstone of a deleted shadow."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from gateway.shadow import ops
from gateway.shadow.document import CLASSIC, Limits, ShadowError, parse_update
from gateway.shadow.store import TOMBSTONE_SECONDS, ShadowStore, StoreError, list_named_readonly


def upd(doc: bytes | str):
    return parse_update(doc.encode() if isinstance(doc, str) else doc)


def do_update(store: ShadowStore, thing: str, doc: str, name: str = CLASSIC, most=None):
    return store.run(lambda txn: ops.update(txn, thing, name, upd(doc), Limits(), most))


@pytest.fixture
def store(tmp_path):
    s = ShadowStore(tmp_path / "shadows.sqlite3", history_depth=3).open()
    yield s
    s.close_sync()


def test_documents_survive_reopening(tmp_path, store):
    do_update(store, "lamp", '{"state": {"desired": {"on": true}}}')
    do_update(store, "lamp", '{"state": {"reported": {"on": false}}}', "cfg")
    store.close_sync()
    again = ShadowStore(tmp_path / "shadows.sqlite3").open()
    try:
        doc = again.run(lambda txn: ops.get(txn, "lamp"))
        assert doc["state"] == {"desired": {"on": True}, "delta": {"on": True}}
        assert doc["version"] == 1
        assert again.run(lambda txn: ops.list_named(txn, "lamp"))["results"] == ["cfg"]
    finally:
        again.close_sync()


def test_history_is_kept_to_its_depth(store):
    for i in range(1, 6):
        do_update(store, "t", f'{{"state": {{"reported": {{"n": {i}}}}}}}')
    history = store.run(lambda txn: txn.history("t"))
    assert [v for v, _, _ in history] == [3, 4, 5]
    assert [s.state["reported"]["n"] for _, _, s in history] == [3, 4, 5]


def test_no_history_at_depth_zero(tmp_path):
    s = ShadowStore(tmp_path / "h0.sqlite3", history_depth=0).open()
    do_update(s, "t", '{"state": {"reported": {"n": 1}}}')
    assert s.run(lambda txn: txn.history("t")) == []
    s.close_sync()


def test_delete_keeps_the_version_for_the_next_shadow(store):
    do_update(store, "t", '{"state": {"reported": {"n": 1}}}')
    do_update(store, "t", '{"state": {"reported": {"n": 2}}}')
    assert store.run(lambda txn: ops.delete(txn, "t", CLASSIC, "d")) == \
        {"version": 2, "timestamp": pytest.approx(time.time(), abs=5), "clientToken": "d"}
    with pytest.raises(ShadowError) as info:
        store.run(lambda txn: ops.get(txn, "t"))
    assert info.value.code == 404
    with pytest.raises(ShadowError) as info:
        store.run(lambda txn: ops.delete(txn, "t"))
    assert info.value.code == 404
    assert do_update(store, "t", '{"state": {"reported": {"n": 3}}}').shadow.version == 3


def test_a_tombstone_older_than_48_hours_is_forgotten(store):
    do_update(store, "t", '{"state": {"reported": {"n": 1}}}')
    do_update(store, "t", '{"state": {"reported": {"n": 2}}}')
    store.run(lambda txn: ops.delete(txn, "t"))
    later = time.time() + TOMBSTONE_SECONDS + 60
    assert store.run(lambda txn: txn.load("t", CLASSIC, later)) is None
    assert store.run(lambda txn: txn.history("t")) == []
    assert do_update(store, "t", '{"state": {"reported": {"n": 1}}}').shadow.version == 1


def test_named_shadows_per_thing_are_bounded(store):
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "one", most=2)
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "two", most=2)
    do_update(store, "t", '{"state": {"reported": {"a": 2}}}', "two", most=2)  # existing: ok
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', most=2)  # classic: not counted
    with pytest.raises(ShadowError) as info:
        do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "three", most=2)
    assert info.value.code == 400 and "maximum is 2" in info.value.message
    store.run(lambda txn: ops.delete(txn, "t", "one"))
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "three", most=2)
    assert store.run(lambda txn: ops.list_named(txn, "t"))["results"] == ["three", "two"]


def test_list_reads_a_store_another_connection_writes(tmp_path, store):
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "b")
    do_update(store, "t", '{"state": {"reported": {"a": 1}}}', "a")
    assert list_named_readonly(tmp_path / "shadows.sqlite3", "t") == ["a", "b"]
    assert list_named_readonly(tmp_path / "missing.sqlite3", "t") == []


async def _in_loop(store: ShadowStore, jobs):
    store.start(asyncio.get_running_loop())
    try:
        return await asyncio.wait_for(
            asyncio.gather(*(store.call(j) for j in jobs), return_exceptions=True), 10)
    finally:
        await store.close()


def test_writer_thread_batches_a_burst_into_few_commits(tmp_path):
    store = ShadowStore(tmp_path / "b.sqlite3").open()
    jobs = [lambda txn, i=i: ops.update(txn, "t", CLASSIC,
                                        upd(f'{{"state": {{"reported": {{"n": {i}}}}}}}'),
                                        Limits()) for i in range(300)]
    results = asyncio.run(_in_loop(store, jobs))
    assert [r.shadow.version for r in results] == list(range(1, 301))
    assert store.commits < 300
    again = ShadowStore(tmp_path / "b.sqlite3").open()
    assert again.run(lambda txn: ops.get(txn, "t"))["version"] == 300
    again.close_sync()


def test_a_failing_job_changes_nothing_and_others_commit(tmp_path):
    store = ShadowStore(tmp_path / "f.sqlite3").open()

    def half_then_fail(txn):
        ops.update(txn, "t", CLASSIC, upd('{"state": {"reported": {"bad": 1}}}'), Limits())
        raise RuntimeError("boom")

    jobs = [lambda txn: ops.update(txn, "t", CLASSIC, upd('{"state": {"reported": {"a": 1}}}'),
                                   Limits()),
            half_then_fail,
            lambda txn: ops.update(txn, "t", CLASSIC, upd('{"state": {"reported": {"b": 2}}}'),
                                   Limits())]
    first, failed, third = asyncio.run(_in_loop(store, jobs))
    assert isinstance(failed, RuntimeError)
    assert third.shadow.version == 2
    assert third.shadow.state == {"reported": {"a": 1, "b": 2}}


def test_a_batch_whose_commit_fails_reports_every_job_failed(tmp_path):
    store = ShadowStore(tmp_path / "c.sqlite3").open()

    def sabotage(txn):  # the batch's writes will fail, as on a full or failing disk
        txn._db.execute("PRAGMA query_only = ON")

    jobs = [lambda txn: ops.update(txn, "t", CLASSIC, upd('{"state": {"reported": {"a": 1}}}'),
                                   Limits()),
            sabotage]
    results = asyncio.run(_in_loop(store, jobs))
    assert all(isinstance(r, StoreError) for r in results)
    again = ShadowStore(tmp_path / "c.sqlite3").open()
    with pytest.raises(ShadowError):
        again.run(lambda txn: ops.get(txn, "t"))
    again.close_sync()


def test_in_memory_store(tmp_path):
    store = ShadowStore(None).open()
    assert do_update(store, "t", '{"state": {"reported": {"a": 1}}}').shadow.version == 1
    store.close_sync()


def test_schema(tmp_path, store):
    db = sqlite3.connect(tmp_path / "shadows.sqlite3")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"shadows", "shadow_history"} <= tables
    assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    db.close()


def test_limits_and_lists_see_earlier_jobs_of_the_same_batch(tmp_path):
    store = ShadowStore(tmp_path / "n.sqlite3").open()

    def create(name):
        return lambda txn: ops.update(txn, "t", name, upd('{"state": {"reported": {"a": 1}}}'),
                                      Limits(), 2)

    jobs = [create("a"), create("b"), create("c"), lambda txn: ops.delete(txn, "t", "a"),
            create("c"), lambda txn: ops.list_named(txn, "t"),
            lambda txn: [v for v, _, _ in txn.history("t", "c")]]
    results = asyncio.run(_in_loop(store, jobs))
    assert isinstance(results[2], ShadowError) and results[2].code == 400
    assert results[4].shadow.version == 1
    assert results[5]["results"] == ["b", "c"]
    assert results[6] == [1]
    assert store.commits == 1
