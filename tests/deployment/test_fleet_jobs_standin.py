"""deploy/jobs_standin*.py: the IoT Jobs MQTT device API, as a pure store and behind the
mosquitto cloud stand-in with a real paho device client over mutual TLS."""

from __future__ import annotations

import json
import os
import queue
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest

from deploy.jobs_standin import JobsStandin
from deploy.jobs_standin_store import JobStore
from gateway.cloud.standin import Standin
from tests.conftest import ROOT

T = "$aws/things/gw1/jobs"
DOC = {"schemaVersion": 1, "config": {}}


def body(messages, topic):
    found = [b for t, b in messages if t == topic]
    assert len(found) == 1, messages
    return found[0]


def request(store: JobStore, topic: str, payload: dict, now: int = 100):
    return store.handle(topic, json.dumps(payload).encode(), now)


def test_a_device_starts_runs_and_finishes_a_job():
    store = JobStore()
    notes = store.add_job("j1", DOC, ["gw1", "gw2"], now=10)
    assert [t for t, _ in notes] == [f"{T}/notify-next", "$aws/things/gw2/jobs/notify-next"]
    assert body(notes, f"{T}/notify-next")["execution"]["jobDocument"] == DOC

    out = request(store, f"{T}/get", {"clientToken": "c1"})
    pending = body(out, f"{T}/get/accepted")
    assert pending["clientToken"] == "c1" and pending["inProgressJobs"] == []
    assert [j["jobId"] for j in pending["queuedJobs"]] == ["j1"]

    out = request(store, f"{T}/start-next", {"statusDetails": {"step": "download"}})
    execution = body(out, f"{T}/start-next/accepted")["execution"]
    assert execution["status"] == "IN_PROGRESS" and execution["versionNumber"] == 2
    assert execution["statusDetails"] == {"step": "download"}
    assert all(t != f"{T}/notify-next" for t, _ in out)  # still the same next job

    out = request(store, f"{T}/j1/update", {"status": "SUCCEEDED", "expectedVersion": 2,
                                            "includeJobExecutionState": True})
    accepted = body(out, f"{T}/j1/update/accepted")
    assert accepted["executionState"]["status"] == "SUCCEEDED"
    assert body(out, f"{T}/notify-next") == {"timestamp": 100}  # nothing pending now
    assert store.status("j1") == {"gw1": "SUCCEEDED", "gw2": "QUEUED"}

    out = request(store, f"{T}/j1/update", {"status": "FAILED"})
    assert body(out, f"{T}/j1/update/rejected")["code"] == "InvalidStateTransition"
    out = request(store, f"{T}/start-next", {})
    assert "execution" not in body(out, f"{T}/start-next/accepted")


def test_bad_requests_are_rejected_as_iot_jobs_does():
    store = JobStore()
    store.add_job("j1", DOC, ["gw1"], now=10)
    assert body(request(store, f"{T}/j1/update", {"status": "IN_PROGRESS",
                                                 "expectedVersion": 7}),
                f"{T}/j1/update/rejected")["code"] == "VersionMismatch"
    assert body(request(store, f"{T}/j1/update", {"status": "CANCELED"}),
                f"{T}/j1/update/rejected")["code"] == "InvalidRequest"
    assert body(request(store, f"{T}/nope/get", {}),
                f"{T}/nope/get/rejected")["code"] == "ResourceNotFound"
    assert body(store.handle(f"{T}/start-next", b"[1]", 1),
                f"{T}/start-next/rejected")["code"] == "InvalidRequest"
    nxt = body(request(store, f"{T}/$next/get", {"includeJobDocument": False}),
               f"{T}/$next/get/accepted")["execution"]
    assert nxt["jobId"] == "j1" and "jobDocument" not in nxt
    assert store.handle(f"{T}/notify-next", b"{}", 1) == []


def test_cancelling_a_job_notifies_the_next_one():
    store = JobStore()
    store.add_job("j1", DOC, ["gw1"], now=10)
    store.add_job("j2", DOC, ["gw1"], now=11)
    notes = store.cancel_job("j1", now=12)
    assert body(notes, f"{T}/notify-next")["execution"]["jobId"] == "j2"
    assert store.status("j1") == {"gw1": "CANCELED"}


class Device:
    """A paho client with the gateway's stand-in certificate, recording what it gets."""

    def __init__(self, standin: Standin, thing: str) -> None:
        self.messages: list[tuple[str, dict]] = []
        self.cond = threading.Condition()
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"device-{thing}")
        c.tls_set(ca_certs=str(standin.files.ca), certfile=str(standin.files.cert("gateway")),
                  keyfile=str(standin.files.key("gateway")))
        c.on_message = self._on_message
        subscribed = threading.Event()
        c.on_subscribe = lambda *a: subscribed.set()
        c.connect("127.0.0.1", standin.port)
        c.loop_start()
        c.subscribe(f"$aws/things/{thing}/jobs/#", 1)
        assert subscribed.wait(10)
        self.client = c

    def _on_message(self, client, userdata, m) -> None:
        with self.cond:
            self.messages.append((m.topic, json.loads(m.payload)))
            self.cond.notify_all()

    def wait_for(self, topic: str, timeout: float = 10.0) -> dict:
        deadline = time.monotonic() + timeout
        with self.cond:
            while True:
                for t, b in self.messages:
                    if t == topic:
                        self.messages.remove((t, b))
                        return b
                left = deadline - time.monotonic()
                assert left > 0, f"nothing on {topic} within {timeout} s: {self.messages}"
                self.cond.wait(left)

    def publish(self, topic: str, payload: dict) -> None:
        self.client.publish(topic, json.dumps(payload), 1).wait_for_publish(10)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[Standin]:
    try:
        s = Standin(tmp_path / "standin")
    except RuntimeError as exc:  # no mosquitto on this machine
        pytest.skip(str(exc))
    s.start()
    yield s
    s.stop()


def test_a_device_runs_a_job_over_mqtt_through_the_cloud_standin(cloud):
    changes: list[tuple[str, str, str]] = []
    jobs = JobsStandin(cloud.port, cloud.files.ca, cloud.files.cert("observer"),
                       cloud.files.key("observer"), on_change=lambda *c: changes.append(c))
    jobs.start()
    device = Device(cloud, "lichen-gateway")
    base = "$aws/things/lichen-gateway/jobs"
    try:
        jobs.add_job("deploy-7", DOC, ["lichen-gateway"])
        assert device.wait_for(f"{base}/notify-next")["execution"]["jobId"] == "deploy-7"

        device.publish(f"{base}/start-next", {"clientToken": "t1"})
        started = device.wait_for(f"{base}/start-next/accepted")
        assert started["clientToken"] == "t1"
        assert started["execution"]["jobDocument"] == DOC
        assert started["execution"]["status"] == "IN_PROGRESS"

        device.publish(f"{base}/deploy-7/update",
                       {"status": "SUCCEEDED", "statusDetails": {"version": "7"}})
        device.wait_for(f"{base}/deploy-7/update/accepted")
        assert set(device.wait_for(f"{base}/notify-next")) == {"timestamp"}  # none pending
        assert jobs.store.status("deploy-7") == {"lichen-gateway": "SUCCEEDED"}
        assert [c[2] for c in changes] == ["QUEUED", "IN_PROGRESS", "SUCCEEDED"]
    finally:
        device.close()
        jobs.stop()


def test_the_script_queues_jobs_and_prints_each_change(cloud, tmp_path):
    jobs_file = tmp_path / "jobs.json"
    jobs_file.write_text(json.dumps([{"jobId": "deploy-8", "document": DOC,
                                      "things": ["lichen-gateway"]}]))
    device = Device(cloud, "lichen-gateway")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "deploy" / "jobs_standin.py"), "--dir",
         str(cloud.files.dir), "--port", str(cloud.port), "--jobs", str(jobs_file)],
        stdout=subprocess.PIPE, text=True, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    lines: queue.Queue[str] = queue.Queue()
    threading.Thread(target=lambda: [lines.put(x) for x in proc.stdout], daemon=True).start()
    base = "$aws/things/lichen-gateway/jobs"
    try:
        assert json.loads(lines.get(timeout=20)) == {"jobId": "deploy-8",
                                                     "thing": "lichen-gateway",
                                                     "status": "QUEUED"}
        device.wait_for(f"{base}/notify-next")
        device.publish(f"{base}/start-next", {})
        device.wait_for(f"{base}/start-next/accepted")
        assert json.loads(lines.get(timeout=10))["status"] == "IN_PROGRESS"
    finally:
        device.close()
        proc.terminate()
        assert proc.wait(10) == 0
