"""Past IoT Core's 100 publishes/s per connection (issue #13 item 5), against the stand-in
through the real awsiotsdk client: batched routes and several cloud connections. Delivery
stays at least once, in per-topic order, across cuts; duplicates are bounded as in
test_bridge.py (what was in flight when a connection ended, once per cut)."""

from __future__ import annotations

import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt

from gateway.cloud.batch import unpack
from gateway.cloud.standin import Standin
from tests.cloud.conftest import read_status, wait_cloud_state, wait_cloud_status
from tests.cloud.test_bridge import MAX_INFLIGHT, Device, check_arrived_in_order, cloud_topic

THING = "lichen-gateway"
BATCHED = {"name": "batched", "direction": "up", "filter": "sensors/#",
           "topic": "dt/{thing}/batch",
           "batch": {"max_messages": 20, "max_bytes": 1024, "max_delay_ms": 100}}
PLAIN = {"name": "telemetry", "direction": "up", "filter": "sensors/#",
         "topic": "dt/{thing}/{topic}"}


def unbatched(got: list[tuple[str, bytes]]) -> tuple[list[tuple[str, bytes]], int]:
    """The observer's batches as (cloud topic the message would have had, payload), in
    arrival order; and how many publishes there were."""
    out = []
    batches = 0
    for topic, data in got:
        assert topic == f"dt/{THING}/batch", topic
        assert len(data) <= 1024 or len(unpack(data)) == 1
        batches += 1
        for m in unpack(data):
            payload = str(m.payload).encode() if m.is_json else m.payload
            out.append((cloud_topic(m.topic), payload))
    return out, batches


def stream(dev: Device, n: int, topics: int, pause_every: int = 0) -> None:
    for i in range(n):
        dev.publish(f"sensors/s{i % topics}", str(i).encode())
        if pause_every and i % pause_every == 0:
            time.sleep(0.01)


def test_batched_route_delivers_every_message_in_order(make_gateway, observer):
    gw = make_gateway([BATCHED])
    wait_cloud_state(gw, "connected")
    dev = Device(gw.port, "batcher")
    n = 1000
    stream(dev, n, 4)
    dev.settle(60)
    acked = dev.acked()
    assert len(acked) == n

    def complete(got):
        return {(cloud_topic(t), p) for t, p in acked} <= set(unbatched(got)[0])

    assert observer.wait_for(complete, 60), read_status(gw)
    got, batches = unbatched(list(observer.messages))
    assert check_arrived_in_order(acked, got) == 0
    assert batches <= n // 10, f"{batches} publishes for {n} messages: not batched"
    wait_cloud_status(gw, lambda c: c["spool"]["sent_acknowledged"] == n
                      and c["spool"]["messages"] == 0)
    dev.close()


def test_batched_route_across_a_cut_loses_nothing(make_gateway, observer, link):
    gw = make_gateway([BATCHED])
    wait_cloud_state(gw, "connected")
    dev = Device(gw.port, "batch-cut")
    n = 2000
    feeder = threading.Thread(target=stream, args=(dev, n, 5, 50))
    feeder.start()
    time.sleep(0.5)
    link.cut()
    time.sleep(1.0)
    link.restore()
    feeder.join(60)
    dev.settle(60)
    acked = dev.acked()
    assert len(acked) == n

    def complete(got):
        return {(cloud_topic(t), p) for t, p in acked} <= set(unbatched(got)[0])

    assert observer.wait_for(complete, 60), read_status(gw)
    time.sleep(0.5)   # late copies, if any, arrive too
    got, _ = unbatched(list(observer.messages))
    dups = check_arrived_in_order(acked, got)
    cuts = wait_cloud_status(gw, lambda c: c["connects"] >= 2)["connects"] - 1
    # a lost batch PUBACK resends the whole batch: the window is in batches
    assert dups <= n // 200 + MAX_INFLIGHT * 20 * cuts
    dev.close()


def kick(standin: Standin, client_id: str) -> None:
    """Connect to the stand-in as client_id: mosquitto drops the connection that had it,
    as IoT Core does; then leave, so the gateway takes it back."""
    f = standin.files
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id)
    c.tls_set(ca_certs=str(f.ca), certfile=str(f.cert("observer")), keyfile=str(f.key("observer")))
    connected = threading.Event()
    c.on_connect = lambda *a: connected.set()
    c.connect("127.0.0.1", standin.port)
    c.loop_start()
    assert connected.wait(10), "could not take over the client id"
    time.sleep(0.2)
    c.disconnect()
    c.loop_stop()


def test_two_connections_keep_per_topic_order_across_a_cut_of_one(
        make_gateway, observer, standin):
    gw = make_gateway([PLAIN], cloud={"connections": 2})
    status = wait_cloud_status(gw, lambda c: [x["state"] for x in c["connections"]]
                               == ["connected", "connected"])
    assert [x["client_id"] for x in status["connections"]] == [THING, f"{THING}-2"]
    dev = Device(gw.port, "two-conns")
    n, topics = 3000, 24
    feeder = threading.Thread(target=stream, args=(dev, n, topics, 60))
    feeder.start()
    time.sleep(0.5)
    kick(standin, f"{THING}-2")      # the second connection alone goes down
    feeder.join(60)
    dev.settle(60)
    acked = dev.acked()
    assert len(acked) == n
    want = {(cloud_topic(t), p) for t, p in acked}
    assert observer.wait_for(lambda got: want <= set(got), 60), read_status(gw)
    time.sleep(0.5)
    got = list(observer.messages)
    dups = check_arrived_in_order(acked, got)
    status = wait_cloud_status(gw, lambda c: c["spool"]["messages"] == 0 and all(
        x["state"] == "connected" for x in c["connections"]) and c["sent"] >= n)
    lanes = status["connections"]
    assert all(x["sent"] > 0 for x in lanes), lanes     # both carried topics
    assert [x["connects"] for x in lanes] == [1, 2], lanes   # the second one was cut
    assert lanes[1]["resent"] <= MAX_INFLIGHT and lanes[0]["resent"] == 0, lanes
    assert dups <= n // 200 + MAX_INFLIGHT
    # each topic went over one connection only: its messages never overtook each other
    per_topic = Counter(t for t, _ in got)
    assert len(per_topic) == topics
    dev.close()
