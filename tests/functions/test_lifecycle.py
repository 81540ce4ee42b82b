"""Real worker processes behind a real gateway: lifecycles, limits and every way a function
can fail, each reported on its error topic while the gateway carries on."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import BrokerProcess
from tests.functions.conftest import fresh_functions_status

from .conftest import Collector, write_code

CODE = {
    "handlers": """
        import os, time, threading

        STARTED = time.time()
        calls = 0

        def echo(event, context):
            global calls
            calls += 1
            print("echo got", event)
            return {"event": event, "pid": os.getpid(), "calls": calls,
                    "topic": context.topic, "name": context.function_name,
                    "version": context.function_version,
                    "request_id": context.aws_request_id,
                    "remaining_ms": context.get_remaining_time_in_millis(),
                    "env": os.environ.get("GREETING")}

        def binary(event, context):
            return {"type": type(event).__name__, "len": len(event)}

        def slow(event, context):
            t0 = time.time()
            time.sleep(event["sleep"])
            return {"pid": os.getpid(), "start": t0, "end": time.time()}

        def hang(event, context):
            if event.get("hang"):
                import subprocess, sys
                child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(3600)"])
                with open(event["pidfile"], "w") as f:
                    f.write(str(child.pid))
                time.sleep(3600)
            return {"ok": True, "pid": os.getpid()}

        def hog(event, context):
            if event.get("hog"):
                blob = bytearray(event["mb"] << 20)
                return {"len": len(blob)}
            return {"ok": True, "pid": os.getpid()}

        def boom(event, context):
            if event.get("boom"):
                raise ValueError("bad reading: " + str(event["boom"]))
            return {"ok": True}

        def die(event, context):
            if event.get("die"):
                os._exit(7)
            return {"ok": True, "pid": os.getpid()}

        def relay(event, context):
            context.publish("relay/out", {"seen": event}, qos=1)
            doubled = context.invoke("doubler", {"n": event["n"]})
            return {"doubled": doubled}

        async def doubler(event, context):  # async handlers work too
            return event["n"] * 2
    """,
}


def fn(name: str, handler: str, code: Path, **extra: object) -> str:
    lines = [f'[[functions]]\nname = "{name}"\ncode = "{code}"\nhandler = "handlers.{handler}"',
             f'triggers = ["in/{name}"]\nresult_topic = "out/{name}"\nerror_topic = "err/{name}"']
    for key, value in extra.items():
        if isinstance(value, dict):
            value = "{" + ", ".join(f"{k} = {json.dumps(v)}" for k, v in value.items()) + "}"
        else:
            value = json.dumps(value)
        lines.append(f"{key} = {value}")
    return "\n".join(lines) + "\n"


@pytest.fixture(scope="module")
def gw(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[BrokerProcess, Collector]]:
    tmp = tmp_path_factory.mktemp("functions")
    code = write_code(tmp / "code", CODE)
    config = "".join([
        fn("echo", "echo", code, idle_timeout_s=1.0, environment={"GREETING": "hi"},
           version="3"),
        fn("binary", "binary", code),
        fn("pinned", "echo", code, lifecycle="pinned", instances=2),
        fn("slow", "slow", code, max_concurrency=2, queue_size=50),
        fn("tiny", "slow", code, max_concurrency=1, queue_size=1),
        fn("hang", "hang", code, timeout_s=1.0),
        fn("hog", "hog", code, memory_mb=256),
        fn("boom", "boom", code),
        fn("die", "die", code, lifecycle="pinned"),
        fn("relay", "relay", code),
        fn("doubler", "doubler", code),
    ])
    b = BrokerProcess(tmp / "state", config=config, tls=False).start()
    col = Collector(b.port)
    col.subscribe("out/#", "err/#", "relay/#")
    yield b, col
    col.close()
    assert b.stop() == 0


def _proc_state(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return "gone"


status = fresh_functions_status


def test_on_demand_event_context_and_idle_retirement(gw) -> None:
    b, col = gw
    col.publish("in/echo", {"x": 1})
    r = col.expect_json("out/echo")
    assert r["event"] == {"x": 1} and r["topic"] == "in/echo" and r["name"] == "echo"
    assert r["version"] == "3" and r["env"] == "hi" and 0 < r["remaining_ms"] <= 10_000
    col.publish("in/echo", {"x": 2})
    r2 = col.expect_json("out/echo")
    assert r2["pid"] == r["pid"] and r2["calls"] == 2      # the warm worker served again
    assert r2["request_id"] != r["request_id"]
    time.sleep(2.5)                                        # > idle_timeout_s: retired
    col.publish("in/echo", {"x": 3})
    r3 = col.expect_json("out/echo")
    assert r3["pid"] != r["pid"] and r3["calls"] == 1
    log = (b.state_dir / "functions" / "echo.log").read_text()
    assert "echo got {'x': 1}" in log


def test_binary_payload_is_bytes(gw) -> None:
    _b, col = gw
    col.publish("in/binary", b"\x00\xffnot json")
    assert col.expect_json("out/binary") == {"type": "bytes", "len": 10}


def test_pinned_workers_run_from_start(gw) -> None:
    b, col = gw
    st = status(b)
    assert st["pinned"]["workers"] == 2 and st["pinned"]["workers_started"] == 2
    pids = set()
    for i in range(6):
        col.publish("in/pinned", {"i": i})
        pids.add(col.expect_json("out/pinned")["pid"])
    assert 1 <= len(pids) <= 2
    assert status(b)["pinned"]["workers_started"] == 2     # no new worker was needed


def test_concurrency_limit_respected(gw) -> None:
    _b, col = gw
    for _ in range(6):
        col.publish("in/slow", {"sleep": 0.4})
    spans = [col.expect_json("out/slow") for _ in range(6)]
    assert len({s["pid"] for s in spans}) == 2
    edges = sorted([(s["start"], 1) for s in spans] + [(s["end"], -1) for s in spans])
    running = peak = 0
    for _, step in edges:
        running += step
        peak = max(peak, running)
    assert peak == 2


def test_queue_full_is_reported_and_counted(gw) -> None:
    b, col = gw
    for _ in range(5):  # one runs, one waits, the rest find the queue full
        col.publish("in/tiny", {"sleep": 0.5})
    errors = [col.expect_json("err/tiny") for _ in range(2)]
    assert all(e["errorType"] == "QueueFull" for e in errors)
    col.expect_json("out/tiny")
    assert status(b)["tiny"]["queue_full"] >= 2
    assert "queue full" in b.log()


def test_timeout_kills_worker_and_next_is_served(gw, tmp_path: Path) -> None:
    b, col = gw
    pidfile = tmp_path / "child.pid"
    col.publish("in/hang", {"hang": True, "pidfile": str(pidfile)})
    err = col.expect_json("err/hang")
    child = int(pidfile.read_text())
    deadline = time.monotonic() + 5  # what the handler started went with the worker
    while Path(f"/proc/{child}").exists() and "Z" not in _proc_state(child):
        assert time.monotonic() < deadline, "the handler's child outlived the timeout"
        time.sleep(0.05)
    assert err["errorType"] == "TimeoutError" and err["kind"] == "timeout"
    assert "timed out after 1 seconds" in err["errorMessage"]
    col.publish("in/hang", {})
    assert col.expect_json("out/hang")["ok"] is True
    assert status(b)["hang"]["timeouts"] == 1


def test_memory_limit(gw) -> None:
    b, col = gw
    col.publish("in/hog", {"hog": True, "mb": 1024})
    err = col.expect_json("err/hog")
    assert err["errorType"] == "MemoryError" and err["kind"] == "oom"
    col.publish("in/hog", {"hog": True, "mb": 16})          # within the limit: fine
    assert col.expect_json("out/hog") == {"len": 16 << 20}
    assert status(b)["hog"]["out_of_memory"] == 1


def test_exception_is_reported_with_traceback(gw) -> None:
    b, col = gw
    col.publish("in/boom", {"boom": 42})
    err = col.expect_json("err/boom")
    assert err == {"function": "boom", "requestId": err["requestId"], "topic": "in/boom",
                   "errorType": "ValueError", "errorMessage": "bad reading: 42",
                   "kind": "error"}
    col.publish("in/boom", {})
    assert col.expect_json("out/boom") == {"ok": True}
    log = (b.state_dir / "functions" / "boom.log").read_text()
    assert "Traceback" in log and "raise ValueError" in log
    assert "ValueError: bad reading: 42" in b.log()


def test_os_exit_is_reported_and_pinned_worker_restarts(gw) -> None:
    b, col = gw
    col.publish("in/die", {})
    first = col.expect_json("out/die")["pid"]
    col.publish("in/die", {"die": True})
    err = col.expect_json("err/die")
    assert err["errorType"] == "WorkerDied" and "exited with status 7" in err["errorMessage"]
    col.publish("in/die", {})
    assert col.expect_json("out/die")["pid"] != first
    assert status(b)["die"]["crashes"] == 1


def test_publish_and_invoke_from_a_handler(gw) -> None:
    _b, col = gw
    col.publish("in/relay", {"n": 21})
    assert col.expect_json("relay/out") == {"seen": {"n": 21}}
    assert col.expect_json("out/relay") == {"doubled": 42}


def test_control_topic_invoke(gw) -> None:
    _b, col = gw
    col.subscribe("$lichen/functions/+/response/#")
    col.publish("$lichen/functions/doubler/invoke/r1", {"n": 5})
    assert col.expect_json("$lichen/functions/doubler/response/r1") == {
        "ok": True, "result": 10, "requestId": "r1"}
    col.publish("$lichen/functions/nope/invoke/r2", 5)
    reply = col.expect_json("$lichen/functions/nope/response/r2")
    assert reply["ok"] is False and reply["errorType"] == "ResourceNotFound"


def test_gateway_still_routes(gw) -> None:
    _b, col = gw
    col.subscribe("plain/t")
    col.publish("plain/t", {"still": "here"})
    assert col.expect_json("plain/t") == {"still": "here"}


def test_pinned_worker_that_cannot_start_backs_off(gateway_with, tmp_path: Path) -> None:
    code = write_code(tmp_path / "bad", {"bad": """
        raise RuntimeError("no sensor attached")

        def handler(event, context):
            return 1
    """})
    b, col = gateway_with(fn("bad", "handler", code, lifecycle="pinned", timeout_s=1).replace(
        "handlers.handler", "bad.handler"))
    col.subscribe("err/bad")
    t0 = time.monotonic()
    deadline = t0 + 15
    while "(retry in 4.0s)" not in b.log():   # the 4th failed start: 0.5 + 1 + 2 s later
        assert time.monotonic() < deadline, b.log()
        time.sleep(0.05)
    assert time.monotonic() - t0 >= 3.0      # backing off, not spinning
    col.publish("in/bad", {})
    err = col.expect_json("err/bad")
    assert err["errorType"] == "InitError"
    assert "RuntimeError: no sensor attached" in err["errorMessage"]
    assert "next attempt in" in err["errorMessage"]           # failed fast, in backoff
    assert 4 <= status(b)["bad"]["init_failures"] <= 5
    assert "Traceback" in (b.state_dir / "functions" / "bad.log").read_text()
    assert "cannot load handler bad.handler" in b.log()


def test_results_numpy_and_unserializable(gateway_with, tmp_path: Path) -> None:
    code = write_code(tmp_path / "np", {"npfn": """
        import numpy as np

        class Reading:
            pass

        def handler(event, context):
            if event.get("odd"):
                return Reading()
            if event.get("nested"):
                return context.invoke("npfn", {"arr": np.arange(3)})
            return {"mean": np.float32(1.5), "arr": np.arange(3), "echo": event}
    """})
    b, col = gateway_with(fn("npfn", "handler", code, max_concurrency=2).replace(
        "handlers.handler", "npfn.handler"))
    col.subscribe("out/npfn", "err/npfn")
    col.publish("in/npfn", {})
    assert col.expect_json("out/npfn") == {"mean": 1.5, "arr": [0, 1, 2], "echo": {}}
    col.publish("in/npfn", {"nested": True})     # numpy in a nested event arrives as JSON
    assert col.expect_json("out/npfn") == {"mean": 1.5, "arr": [0, 1, 2],
                                           "echo": {"arr": [0, 1, 2]}}
    col.publish("in/npfn", {"odd": True})
    err = col.expect_json("err/npfn")
    assert err["errorType"] == "TypeError" and "Reading" in err["errorMessage"]


def test_mqtt5_response_topic_and_correlation(gw) -> None:
    import paho.mqtt.client as mqtt
    from paho.mqtt.packettypes import PacketTypes
    from paho.mqtt.properties import Properties

    b, _col = gw
    got = []
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="v5", protocol=mqtt.MQTTv5)
    c.on_message = lambda cl, u, m: got.append((m.topic, m.payload,
                                                getattr(m.properties, "CorrelationData", None)))
    subscribed = threading.Event()
    c.on_subscribe = lambda *_a: subscribed.set()
    c.connect("127.0.0.1", b.port)
    c.loop_start()
    try:
        c.subscribe("replies/me", qos=1)
        assert subscribed.wait(10)
        props = Properties(PacketTypes.PUBLISH)
        props.ResponseTopic = "replies/me"
        props.CorrelationData = b"req-7"
        c.publish("$lichen/functions/doubler/invoke", json.dumps({"n": 4}), qos=1,
                  properties=props).wait_for_publish(5)
        deadline = time.monotonic() + 20
        while not got and time.monotonic() < deadline:
            time.sleep(0.02)
        assert got, "no reply on the response topic"
        topic, payload, corr = got[0]
        assert topic == "replies/me" and corr == b"req-7"
        assert json.loads(payload)["result"] == 8
    finally:
        c.loop_stop()
        c.disconnect()
