"""A lane (gateway.cloud.lane): batching per cloud topic, the window, failed sends first
again in order. Pure: sends are recorded, not made."""

from __future__ import annotations

from gateway.cloud.batch import BatchSettings, unpack
from gateway.cloud.lane import SOURCE_TOPIC, Batch, Lane, lane_of
from gateway.spool.store import Entry


def entry(seq: int, topic: str, source: str | None = None, at: float = 100.0) -> Entry:
    props = {SOURCE_TOPIC: source} if source else {}
    return Entry(seq, "r", topic, str(seq).encode(), 1, props, None, at, True)


def seqs(units) -> list[list[int]]:
    return [u.seqs if type(u) is Batch else [u.seq] for u in units]


def test_batches_per_topic_close_when_full_or_due():
    sent = []
    lane = Lane(0, 10, sent.append)
    lane.connected = True
    b = BatchSettings(max_messages=3, max_bytes=1024, max_delay_ms=500)
    for i, topic in enumerate(["a", "b", "a", "a", "b", "a"], start=1):
        lane.add(entry(i, topic, f"local/{topic}"), b)
    assert seqs(lane.ready) == [[1, 3, 4]]           # "a" filled up
    assert lane.close_due(100.2) == 100.5            # the rest waits for its delay
    assert lane.close_due(100.5) is None
    assert seqs(lane.ready) == [[1, 3, 4], [2, 5], [6]]
    assert lane.pump(10) == 3 and lane.held == 6
    first = unpack(sent[0].payload)
    assert [(m.topic, m.payload) for m in first] == [("local/a", 1), ("local/a", 3),
                                                     ("local/a", 4)]
    assert lane.done(sent[0]) is sent[0] and lane.held == 3


def test_window_and_failed_sends_go_first_in_order_across_several_failures():
    sent = []
    lane = Lane(0, 3, sent.append)
    lane.connected = True
    for i in range(1, 7):
        lane.add(entry(i, "t"), None)
    assert lane.pump(10) == 3                        # the window
    lane.failed([2])                                 # failures come back in two batches
    lane.failed([1, 3])
    assert seqs(lane.ready) == [[1], [2], [3], [4], [5], [6]]
    assert lane.resent == 3 and lane.held == 6
    sent.clear()
    assert lane.pump(10) == 3 and [e.seq for e in sent] == [1, 2, 3]


def test_nothing_goes_while_disconnected():
    lane = Lane(0, 3, lambda u: None)
    lane.add(entry(1, "t"), None)
    assert lane.pump(10) == 0 and not lane.can_send


def test_topics_are_pinned_stably():
    assert lane_of("dt/a", 1) == 0
    assert {lane_of(f"dt/{i}", 4) for i in range(100)} == {0, 1, 2, 3}
    assert lane_of("dt/x", 4) == 3   # CRC32 of the topic: the same in every process
