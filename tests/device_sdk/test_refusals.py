"""A publish the thing's policy denies is an error the device hears about, on both MQTT
versions: MQTT 5 in the PUBACK (0x87), MQTT 3.1.1 by the gateway closing the connection
(as AWS IoT Core does), which the SDK turns into PublishRefused; `lichen-device publish`
exits 1 with one line either way. The default policy lets a thing publish only under
things/THING/ and $aws/things/THING/."""

from __future__ import annotations

import queue
import time

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from device_sdk import PublishRefused
from device_sdk.close_watch import CloseWatch
from tests.device_sdk.conftest import WAIT
from tests.device_sdk.test_cli import common, lichen_device


def test_close_watch_gives_up_a_message_after_closes_in_a_row():
    watch = CloseWatch(limit=2)
    assert watch.closed(7) == 0
    assert watch.closed(7) == 2            # the same message at the head twice: refused
    assert watch.closed(7) == 0            # counting starts again
    assert watch.closed(8) == 0
    assert watch.closed(None) == 0         # a close with nothing in flight breaks the run
    assert watch.closed(8) == 0
    assert watch.closed(9) == 0            # another message at the head: a new run
    assert watch.closed(9) == 2
    with pytest.raises(ValueError):
        CloseWatch(limit=0)


def wait_for_log(gateway, text: str) -> None:
    deadline = time.monotonic() + WAIT
    while text not in gateway.log():
        assert time.monotonic() < deadline, f"{text!r} not in the gateway's log"
        time.sleep(0.05)


def paho_device(gateway, creds, protocol: int) -> tuple[mqtt.Client, queue.Queue]:
    """A bare paho client for the thing; the queue gets "connected" and "gone"."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=creds.thing,
                         protocol=protocol, reconnect_on_failure=False)
    client.tls_set(ca_certs=str(creds.ca), certfile=str(creds.cert), keyfile=str(creds.key))
    events: queue.Queue = queue.Queue()
    client.on_connect = lambda *_a: events.put("connected")
    client.on_disconnect = lambda *_a: events.put("gone")
    client.connect("127.0.0.1", gateway.tls_port, 30)
    client.loop_start()
    assert events.get(timeout=WAIT) == "connected"
    return client, events


@pytest.mark.parametrize("qos", [0, 1])
def test_gateway_closes_a_311_connection_over_a_denied_publish(gateway, qos):
    creds = gateway.enrol(f"closed-311-q{qos}")
    client, events = paho_device(gateway, creds, mqtt.MQTTv311)
    try:
        client.publish("things/someone-else/x", b"no", qos)
        assert events.get(timeout=WAIT) == "gone"
        wait_for_log(gateway, f"denied PUBLISH by {creds.thing} to things/someone-else/x: "
                              "closing its MQTT 3.1.1 connection")
    finally:
        client.loop_stop()


def test_gateway_answers_0x87_and_keeps_an_mqtt5_connection(gateway):
    creds = gateway.enrol("kept-5")
    client, events = paho_device(gateway, creds, mqtt.MQTTv5)
    acks: queue.Queue = queue.Queue()
    client.on_publish = lambda _c, _u, _mid, reason, _p: acks.put(reason.value)
    try:
        client.publish("things/someone-else/x", b"no", 1)
        assert acks.get(timeout=WAIT) == 0x87
        client.publish(f"things/{creds.thing}/x", b"yes", 1)
        assert acks.get(timeout=WAIT) in (0x00, 0x10)   # 0x10: no matching subscribers
        assert events.empty()
    finally:
        client.disconnect()
        client.loop_stop()


def test_sdk_311_publish_refused_by_closing_is_an_error(gateway, clients):
    creds = gateway.enrol("refused-311")
    client = gateway.client(creds, protocol="3.1.1")
    clients.append(client)
    client.connect(WAIT)
    refused = client.publish("things/someone-else/x", "no")
    after = client.publish(f"things/{creds.thing}/x", "yes")
    with pytest.raises(PublishRefused, match="closed the connection instead of "
                                             "acknowledging it") as exc:
        refused.wait(WAIT)
    assert exc.value.topic == "things/someone-else/x"
    assert "policy allow iot:Publish" in str(exc.value)
    assert after.wait(WAIT)            # the queue behind it moves on
    assert len(client.queue) == 0
    assert client.wait_connected(WAIT)


@pytest.mark.parametrize("version, reason", [
    ("5", "reason code 0x87, Not authorized"),
    ("3.1.1", "closed the connection instead of acknowledging it"),
])
def test_cli_publish_refused_exits_1_with_one_line(gateway, version, reason):
    creds = gateway.enrol(f"cli-refused-{version.replace('.', '')}")
    result = lichen_device("publish", "things/someone-else/x", "no", "--mqtt", version,
                           *common(gateway, creds))
    assert result.returncode == 1, result.stderr
    lines = result.stderr.splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("lichen-device: the gateway refused the publish to "
                               "'things/someone-else/x'")
    assert reason in lines[0] and "iot:Publish" in lines[0]
    # and what the policy allows still exits 0
    result = lichen_device("publish", f"things/{creds.thing}/x", "ok", "--mqtt", version,
                           *common(gateway, creds))
    assert result.returncode == 0, result.stderr
