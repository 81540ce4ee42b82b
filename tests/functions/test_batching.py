"""Micro-batching (batch_max > 1) with real worker processes behind a real gateway: batches
fill up to batch_max, a window flushes fewer, results and errors go out per event, and a
failing batch leaves the worker serving."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BrokerProcess
from tests.functions.conftest import fresh_functions_status

from .conftest import Collector, write_code

CODE = {
    "batched": """
        import os, time
        from pathlib import Path

        def handler(events, context):
            flags = {k for e in events if isinstance(e, dict) for k in e}
            if "boom" in flags:
                raise RuntimeError(f"boom in a batch of {len(events)}")
            if "wrong" in flags:
                return [1]
            if "gate" in flags:  # hold the worker until the test opens the gate
                gate = Path(next(e["gate"] for e in events if "gate" in e))
                deadline = time.monotonic() + 20
                while not gate.exists() and time.monotonic() < deadline:
                    time.sleep(0.01)
            if "sleep" in flags:
                time.sleep(max(e.get("sleep", 0) for e in events))
            out = []
            for i, e in enumerate(events):
                if isinstance(e, dict) and "bad" in e:
                    out.append(ValueError(f"bad event {e['bad']}"))
                    continue
                out.append({"event": e, "n": len(events), "i": i, "pid": os.getpid(),
                            "topic": context.topics[i], "id": context.request_ids[i],
                            "batch": context.request_ids[0], "ctx_topic": context.topic,
                            "ctx_id": context.aws_request_id})
            return out

        def caller(event, context):
            return context.invoke(event["target"], {"via": "caller"})
    """,
}


def fn(name: str, handler: str, code: Path, triggers: list[str] | None = None,
       **extra: object) -> str:
    lines = [f'[[functions]]\nname = "{name}"\ncode = "{code}"\nhandler = "batched.{handler}"',
             f"triggers = {json.dumps(triggers or [f'in/{name}'])}",
             f'result_topic = "out/{name}"\nerror_topic = "err/{name}"']
    lines += [f"{key} = {json.dumps(value)}" for key, value in extra.items()]
    return "\n".join(lines) + "\n"


PINNED = {"lifecycle": "pinned"}


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Collector]]:
    tmp = tmp_path_factory.mktemp("batching")
    code = write_code(tmp / "code", CODE)
    config = "".join([
        # a partial batch would wait 10 s: full ones must go as soon as they fill
        fn("full", "handler", code, ["in/full/+"], batch_max=4, batch_window_ms=10_000,
           **PINNED),
        fn("window", "handler", code, batch_max=50, batch_window_ms=1500, **PINNED),
        fn("adaptive", "handler", code, batch_max=8, **PINNED),   # window 0
        fn("slow", "handler", code, batch_max=4, timeout_s=1, **PINNED),
        fn("caller", "caller", code),
    ])
    b = BrokerProcess(tmp / "state", config=config, tls=False).start()
    col = Collector(b.port)
    col.subscribe("out/#", "err/#")
    yield b, col
    col.close()
    assert b.stop() == 0


def results(col: Collector, topic: str, n: int) -> list[dict]:
    return [col.expect_json(topic, timeout=8) for _ in range(n)]


def queued(b: BrokerProcess, name: str, want: int) -> None:
    """Wait (bounded) until status.json shows `want` invocations queued for `name`."""
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            st = json.loads((b.state_dir / "status.json").read_text())
            if st["functions"][name]["queued"] == want:
                return
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.05)
    raise AssertionError(f"{name}: never {want} queued")


def test_full_batches_go_without_waiting_for_the_window(gw) -> None:
    _b, col = gw
    sent = [{"k": i} for i in range(8)]
    for i, event in enumerate(sent):
        col.publish(f"in/full/s{i}", event)
    got = results(col, "out/full", 8)   # well inside the 10 s window
    assert sorted(r["event"]["k"] for r in got) == list(range(8))
    assert all(r["n"] == 4 for r in got)
    batches = {r["batch"] for r in got}
    assert len(batches) == 2
    for r in got:                       # each result is its own event's
        k = r["event"]["k"]
        assert r["topic"] == f"in/full/s{k}"
        assert r["ctx_topic"] is None and r["ctx_id"] is None
    assert len({r["id"] for r in got}) == 8
    assert len({r["pid"] for r in got}) == 1


def test_window_flushes_a_partial_batch(gw) -> None:
    _b, col = gw
    for i in range(3):
        col.publish("in/window", {"k": i})
    got = results(col, "out/window", 3)
    assert [r["n"] for r in got] == [3, 3, 3]   # one call, fewer than batch_max
    assert sorted(r["i"] for r in got) == [0, 1, 2]


def test_batches_form_while_the_worker_is_busy(gw, tmp_path: Path) -> None:
    b, col = gw
    gate = tmp_path / "gate"
    col.publish("in/adaptive", {"gate": str(gate)})    # holds the worker
    queued(b, "adaptive", 0)
    for i in range(6):
        col.publish("in/adaptive", {"k": i})
    queued(b, "adaptive", 5)   # one waits in the dispatcher for the worker, five queued
    gate.touch()
    first = col.expect_json("out/adaptive", timeout=8)
    assert first["n"] == 1
    got = results(col, "out/adaptive", 6)
    assert [r["event"]["k"] for r in got] == list(range(6))   # in order
    assert all(r["n"] == 6 for r in got)


def test_an_error_result_fails_only_its_own_event(gw) -> None:
    _b, col = gw
    for i in range(4):
        col.publish(f"in/full/e{i}", {"bad": i} if i == 2 else {"k": i})
    ok = results(col, "out/full", 3)
    assert sorted(r["event"]["k"] for r in ok) == [0, 1, 3]
    err = col.expect_json("err/full", timeout=8)
    assert err["errorType"] == "ValueError" and err["errorMessage"] == "bad event 2"
    assert err["topic"] == "in/full/e2" and err["kind"] == "error"
    assert err["requestId"] not in {r["id"] for r in ok}


def test_handler_exception_fails_every_event_and_the_worker_carries_on(gw) -> None:
    b, col = gw
    for i in range(4):
        col.publish(f"in/full/a{i}", {"k": i})
    pid = results(col, "out/full", 4)[0]["pid"]
    for i in range(4):
        col.publish(f"in/full/b{i}", {"boom": True} if i == 1 else {"k": i})
    errors = [col.expect_json("err/full", timeout=8) for _ in range(4)]
    assert {e["errorType"] for e in errors} == {"RuntimeError"}
    assert {e["errorMessage"] for e in errors} == {"boom in a batch of 4"}
    assert {e["topic"] for e in errors} == {f"in/full/b{i}" for i in range(4)}
    assert len({e["requestId"] for e in errors}) == 4
    for i in range(4):   # the same worker serves the next batch
        col.publish(f"in/full/c{i}", {"k": i})
    assert {r["pid"] for r in results(col, "out/full", 4)} == {pid}
    log = (b.state_dir / "functions" / "full.log").read_text()
    assert log.count("and the 3 others in its batch failed: RuntimeError") == 1  # once
    assert "raise RuntimeError" in log


def test_a_result_list_of_the_wrong_length_fails_the_batch(gw) -> None:
    _b, col = gw
    for i in range(4):
        col.publish(f"in/full/w{i}", {"wrong": True})
    errors = [col.expect_json("err/full", timeout=8) for _ in range(4)]
    assert {e["errorType"] for e in errors} == {"TypeError"}
    assert "must return a list of 4 results, one per event, in order; got 1 results" in \
        errors[0]["errorMessage"]


def test_timeout_fails_the_batch_and_a_new_worker_serves(gw) -> None:
    b, col = gw
    col.publish("in/slow", {"k": 0})
    before = col.expect_json("out/slow", timeout=8)["pid"]
    col.publish("in/slow", {"sleep": 30})
    err = col.expect_json("err/slow", timeout=8)
    assert err["errorType"] == "TimeoutError" and err["kind"] == "timeout"
    col.publish("in/slow", {"k": 1})
    after = col.expect_json("out/slow", timeout=15)
    assert after["pid"] != before


def test_control_topic_and_nested_invoke_of_a_batching_function(gw) -> None:
    _b, col = gw
    col.subscribe("$lichen/functions/+/response/#")
    col.publish("$lichen/functions/adaptive/invoke/r1", {"k": "ctl"})
    reply = col.expect_json("$lichen/functions/adaptive/response/r1")
    assert reply["ok"] is True and reply["result"]["event"] == {"k": "ctl"}
    assert reply["result"]["id"] == "r1" and reply["result"]["n"] == 1
    col.publish("in/caller", {"target": "adaptive"})
    assert col.expect_json("out/caller")["event"] == {"via": "caller"}


def test_status_counts_batches(gw) -> None:
    b, _col = gw
    full = fresh_functions_status(b)["full"]
    assert full["batch_max"] == 4
    assert 2 <= full["batches"] < full["invocations"]
