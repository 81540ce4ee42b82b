"""The offline queue end to end: readings published while the gateway is down, or in flight
when it dies, or left behind by a device process that is killed, all reach a subscriber
after the restart, in order, none lost."""

from __future__ import annotations

import os
import queue
import select
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from tests.conftest import ROOT
from tests.device_sdk.conftest import WAIT, lichen

DEVICE_PROC = Path(__file__).with_name("device_proc.py")


class Watcher:
    """A loopback subscriber with a persistent session: what arrives while it is away
    (the gateway restarting) is kept for it by the gateway."""

    def __init__(self, port: int, topic_filter: str) -> None:
        self.received: list[str] = []
        self._cond = threading.Condition()
        self._subscribed = threading.Event()
        self.client = mqtt.Client(CallbackAPIVersion.VERSION2,
                                  client_id=f"watcher-{uuid.uuid4().hex[:8]}",
                                  protocol=mqtt.MQTTv311, clean_session=False)
        self.client.reconnect_delay_set(0.05, 0.5)
        self.client.on_message = self._on_message
        self.client.on_subscribe = lambda *_: self._subscribed.set()
        self.client.connect("127.0.0.1", port, 30)
        self.client.loop_start()
        self.client.subscribe(topic_filter, 1)
        assert self._subscribed.wait(WAIT)

    def _on_message(self, _c, _u, msg) -> None:
        with self._cond:
            self.received.append(msg.payload.decode())
            self._cond.notify_all()

    def wait_for(self, expected: list[str]) -> list[str]:
        """Everything received once all of `expected` has been (bounded by WAIT)."""
        deadline = time.monotonic() + WAIT
        with self._cond:
            while not set(expected) <= set(self.received):
                left = deadline - time.monotonic()
                if left <= 0:
                    missing = sorted(set(expected) - set(self.received), key=int)
                    raise AssertionError(f"never received {missing}; got {self.received}")
                self._cond.wait(left)
            return list(self.received)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def in_order_none_lost(received: list[str], count: int) -> None:
    """QoS 1 may repeat a message (sent again when its PUBACK was lost), but never lose one
    or reorder first deliveries."""
    assert list(dict.fromkeys(received)) == [str(i) for i in range(count)], received


def wait_until(condition, what: str) -> None:
    deadline = time.monotonic() + WAIT
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.02)


@pytest.mark.parametrize("hard", [False, True], ids=["sigterm", "kill-9"])
def test_queue_survives_a_gateway_restart(own_gateway, tmp_path, hard):
    gw = own_gateway
    creds = gw.enrol("meter-1")
    watcher = Watcher(gw.port, "things/meter-1/#")
    client = gw.client(creds, offline_queue=tmp_path / "meter-1.sqlite3")
    try:
        client.connect(WAIT)
        topic = "things/meter-1/reading"
        first = [client.publish(topic, str(i)) for i in range(10)]
        if hard:
            gw.proc.kill()         # some of those may still be in flight
        else:
            assert all(d.wait(WAIT) for d in first)
            gw.proc.stop()
        wait_until(lambda: not client.connected, "the client never noticed the outage")
        later = [client.publish(topic, str(i)) for i in range(10, 30)]
        assert len(client.queue) >= 20 and not any(d.done for d in later)

        gw.proc.start()
        assert client.flush(WAIT), f"{len(client.queue)} left in the queue"
        assert all(d.delivered for d in first + later)
        assert client.connected
        in_order_none_lost(watcher.wait_for([str(i) for i in range(30)]), 30)
    finally:
        client.close()
        watcher.close()


def spawn(procs: list[subprocess.Popen], *args: str) -> subprocess.Popen:
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    proc = subprocess.Popen([sys.executable, str(DEVICE_PROC), *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs.append(proc)
    return proc


def read_line(proc: subprocess.Popen) -> str:
    ready, _, _ = select.select([proc.stdout], [], [], WAIT)
    line = proc.stdout.readline().strip() if ready else ""
    if not line:
        kill(proc)
        raise AssertionError(f"no output from the device process: {proc.stderr.read()}")
    return line


def kill(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.kill()   # SIGKILL: no chance to close anything
        proc.wait(WAIT)


def test_queue_survives_device_process_restarts(own_gateway, tmp_path):
    gw = own_gateway
    creds = gw.enrol("meter-2")
    device = [creds.thing, str(creds.cert), str(creds.key), str(creds.ca), str(gw.tls_port),
              str(tmp_path / "meter-2.sqlite3")]
    watcher = Watcher(gw.port, "things/meter-2/#")
    procs: list[subprocess.Popen] = []
    try:
        # 1. a device process queues 20 readings and is killed: some sent, some maybe not
        p1 = spawn(procs, "publish", *device, "0", "20")
        assert read_line(p1) == "queued"
        kill(p1)
        # 2. with the gateway down, the next process queues 20 more and is killed too
        gw.proc.stop()
        p2 = spawn(procs, "publish", *device, "20", "20")
        assert read_line(p2) == "queued"
        kill(p2)
        # 3. the gateway is back; a third process reopens the queue and sends what is left
        gw.proc.start()
        p3 = spawn(procs, "flush", *device, str(WAIT))
        out, err = p3.communicate(timeout=WAIT + 10)
        assert p3.returncode == 0, err
        assert out.strip() == "left 0"
        in_order_none_lost(watcher.wait_for([str(i) for i in range(40)]), 40)
    finally:
        for proc in procs:
            kill(proc)
            proc.stdout.close()
            proc.stderr.close()
        watcher.close()


def test_a_delta_missed_during_an_outage_arrives_after_reconnecting(own_gateway):
    gw = own_gateway
    client = gw.client(gw.enrol("relay-out"))
    events: queue.SimpleQueue = queue.SimpleQueue()
    client.on_connect = lambda: events.put("connected")
    client.on_disconnect = lambda reason: events.put("disconnected")
    try:
        client.connect(WAIT)
        shadow = client.shadow()
        shadow.report({"on": False})
        deltas: queue.SimpleQueue = queue.SimpleQueue()
        shadow.on_delta(deltas.put)
        gw.proc.stop()
        # the gateway is down: an operator changes the shadow in its store directly
        lichen("shadow", "update", "relay-out", '{"state": {"desired": {"on": true}}}',
               "--state-dir", str(gw.proc.state_dir))
        gw.proc.start()
        delta = deltas.get(timeout=WAIT)
        assert delta.state == {"on": True} and delta.version == 2
        assert [events.get(timeout=WAIT) for _ in range(3)] == \
            ["connected", "disconnected", "connected"]
    finally:
        client.close()
