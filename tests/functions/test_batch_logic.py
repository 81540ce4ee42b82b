"""The pure parts of running handlers, in-process: decoding events and encoding results,
collecting a batch from the queue, its timeout, and turning one handler call into a result
or an error per event."""

from __future__ import annotations

import asyncio
import time

import pytest

from gateway.functions.batching import batch_timeout, fill_batch
from gateway.functions.context import LambdaContext
from gateway.functions.handling import decode_event, result_json, run_batch, run_one
from gateway.functions.intake import Intake
from gateway.functions.worker import item_outcome


def ctx(n: int) -> LambdaContext:
    return LambdaContext(None, None, None, time.monotonic() + 5, "f", "1", 128,  # type: ignore[arg-type]
                         topics=[f"t/{i}" for i in range(n)],
                         request_ids=[f"r{i}" for i in range(n)])


def frame(payloads: list[bytes | None], events: list | None = None) -> dict:
    n = len(payloads)
    return {"op": "invoke_batch", "ids": [f"r{i}" for i in range(n)],
            "topics": [f"t/{i}" for i in range(n)], "payloads": payloads,
            "events": events or [None] * n, "timeout_ms": 5000}


def test_decode_event_json_or_bytes() -> None:
    assert decode_event(b'{"a": [1, 2.5]}') == {"a": [1, 2.5]}
    assert decode_event(b' [1]') == [1] and decode_event(b"-3") == -3
    assert decode_event(b'\xef\xbb\xbf{"bom": true}') == {"bom": True}
    image = bytes(range(256))                 # a tensor: starts with a NUL byte
    assert decode_event(image) == image
    assert decode_event(b"{not json") == b"{not json"
    assert decode_event(b"") == b""


def test_result_json() -> None:
    import numpy as np

    assert result_json({"p": np.float32(0.5), "a": np.arange(2)}) == b'{"p": 0.5, "a": [0, 1]}'
    assert result_json(None) is None and result_json(bytearray(b"x")) == b"x"
    with pytest.raises(TypeError, match="not JSON serializable: object"):
        result_json({"x": object()})


def test_run_batch_one_call_results_in_order() -> None:
    calls = []

    def handler(events, context):
        calls.append(events)
        return [{"x": e["x"] * 2, "topic": context.topics[i]} if isinstance(e, dict) else None
                for i, e in enumerate(events)]

    reply = run_batch(handler, frame([b'{"x": 1}', None, b"\x00raw"],
                                     [None, {"x": 5}, None]), ctx(3))
    assert calls == [[{"x": 1}, {"x": 5}, b"\x00raw"]]    # decoded here, in one call
    assert reply["ok"] is True
    assert reply["results"] == [b'{"x": 2, "topic": "t/0"}', b'{"x": 10, "topic": "t/1"}',
                                None]


def test_run_batch_per_event_errors() -> None:
    class Odd:
        pass

    def handler(events, context):
        return [ValueError("no"), Odd(), b"raw", {"ok": 1}]

    reply = run_batch(handler, frame([b"1"] * 4), ctx(4))
    bad, odd, raw, ok = reply["results"]
    assert bad["error_type"] == "ValueError" and bad["error_message"] == "no"
    assert odd["error_type"] == "TypeError" and "Odd" in odd["error_message"]
    assert raw == b"raw" and ok == b'{"ok": 1}'
    outcomes = [item_outcome(r) for r in reply["results"]]
    assert [o.ok for o in outcomes] == [False, False, True, True]
    assert outcomes[0].kind == "error" and outcomes[2].result == b"raw"
    assert item_outcome(["junk"]).kind == "crash"            # not what a worker sends


@pytest.mark.parametrize(("returns", "got"), [
    (None, "got NoneType"), ([1], "got 1 results"), ({"a": 1}, "got dict")])
def test_run_batch_wrong_return_fails_the_batch(returns, got) -> None:
    reply = run_batch(lambda events, context: returns, frame([b"1", b"2"]), ctx(2))
    assert reply["ok"] is False and reply["error_type"] == "TypeError"
    assert "must return a list of 2 results" in reply["error_message"]
    assert got in reply["error_message"]


def test_run_batch_exception_and_async_handler() -> None:
    def boom(events, context):
        raise KeyError("pixels")

    reply = run_batch(boom, frame([b"1"]), ctx(1))
    assert reply["ok"] is False and reply["error_type"] == "KeyError"
    assert "Traceback" in reply["traceback"] and reply["restart"] is False

    async def doubled(events, context):
        return [e * 2 for e in events]

    assert run_batch(doubled, frame([b"1", b"2"]), ctx(2))["results"] == [b"2", b"4"]


def test_single_context_has_lists_of_one() -> None:
    seen = {}

    def handler(event, context):
        seen.update(topics=context.topics, ids=context.request_ids, topic=context.topic)
        return event

    c = LambdaContext(None, "a/b", "r9", time.monotonic() + 5, "f", "1", 128)  # type: ignore[arg-type]
    reply = run_one(handler, {"id": "r9", "payload": b'{"v": 1}'}, c)
    assert reply["result"] == b'{"v": 1}'
    assert seen == {"topics": ["a/b"], "ids": ["r9"], "topic": "a/b"}


def test_fill_batch_takes_what_is_queued_up_to_batch_max() -> None:
    async def main() -> None:
        q: Intake = Intake(100)
        for i in range(1, 10):
            q.put_nowait(i)
        batch = [0]
        await fill_batch(q, batch, 4, deadline=0.0)       # window already over
        assert batch == [0, 1, 2, 3] and q.qsize() == 6
        batch = [0]
        q2: Intake = Intake(100)
        await fill_batch(q2, batch, 4, deadline=0.0)      # nothing queued: no wait
        assert batch == [0]

    asyncio.run(asyncio.wait_for(main(), 10))


def test_fill_batch_waits_within_the_window() -> None:
    async def main() -> None:
        q: Intake = Intake(100)
        loop = asyncio.get_running_loop()
        loop.call_soon(q.put_nowait, 1)
        loop.call_soon(q.put_nowait, 2)
        batch = [0]
        # a full batch returns at once, however long the window
        await asyncio.wait_for(fill_batch(q, batch, 3, time.monotonic() + 60), 10)
        assert batch == [0, 1, 2]
        batch = [0]
        await fill_batch(q, batch, 3, time.monotonic() + 0.05)   # nothing comes: flush
        assert batch == [0]

    asyncio.run(main())


def test_batch_timeout_is_cut_by_nested_callers() -> None:
    assert batch_timeout(5.0, [None, None]) == 5.0
    assert batch_timeout(5.0, [None, 2.0, 3.0]) == 2.0
    assert batch_timeout(5.0, [9.0]) == 5.0
    assert batch_timeout(5.0, [0.0]) == 0.01


def test_intake_is_bounded_fifo_and_wakes_its_reader() -> None:
    async def main() -> None:
        q: Intake = Intake(2)
        assert q.put_nowait("a") and q.put_nowait("b")
        assert not q.put_nowait("c") and q.qsize() == 2      # full: refused, not queued
        assert await q.get() == "a" and q.get_nowait() == "b" and q.empty()
        reader = asyncio.ensure_future(q.get())
        await asyncio.sleep(0)
        q.put_nowait("d")
        assert await asyncio.wait_for(reader, 5) == "d"
        waiting = asyncio.ensure_future(q.get())              # a reader given up on
        await asyncio.sleep(0)
        waiting.cancel()
        q.put_nowait("e")
        assert await asyncio.wait_for(q.get(), 5) == "e"

    asyncio.run(main())
